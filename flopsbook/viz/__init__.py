"""The notebooks' face: plot style, glue, and one interactive calculator per chapter.

Imported lazily (``flopsbook.viz``) because matplotlib and ipywidgets are slow to import and the
formulas do not need them. Each calculator lives in the module of its chapter's topic.
"""

from __future__ import annotations

import keyword
import types

import numpy as np


SEED = 0


def setup(seed: int = SEED):
    """Book-wide plot style and a seeded random generator; returns the generator."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6), "figure.dpi": 110, "savefig.dpi": 110,
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 10,
    })
    return np.random.default_rng(seed)


class _Text(str):
    """A string that displays without quotes, so glued text reads as prose."""

    def __repr__(self) -> str:
        return str(self)


# The glued texts by name, for ``{eval}`g.name``` in the prose: jupyterlab-myst evaluates that
# expression in the kernel, where a notebook's setup cell has imported ``g``; the website pastes the
# glued value (book/_ext/eval_role.py). A namespace, because many keys equal code variables' names.
g = types.SimpleNamespace()


def glue(name: str, value, fmt: str | None = None):
    """Glue ``value`` (formatted with ``fmt``, e.g. ``"{:,.0f}"``) for ``{eval}`g.name``` in text.

    The text is glued for the website (myst-nb) and kept as ``g.<name>`` for JupyterLab. Outside
    a Jupyter Book build (Colab, JupyterLab without myst-nb) the glue part does nothing, so
    notebooks run anywhere. Returns ``value``.

    Raises:
        ValueError: ``name`` is not a Python identifier (``g.<name>`` must be an expression).
    """
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"name must be a Python identifier, got {name!r}")
    text = _Text(fmt.format(value) if fmt else str(value))
    setattr(g, name, text)
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    _glue(name, text, display=False)
    return value


def registry_notes(names, *, kind="model") -> str:
    """What each registry entry does not model, as a Markdown list to print under a table.

    ``names`` are model names (``kind="model"``) or hardware names (``kind="hardware"``); an
    entry without notes is left out. The registry's ``notes`` say where a spec departs from the
    published model (a parameter it cannot hold, an assumption), so every table that lists
    registry entries shows them.
    """
    from .. import registry

    lookup = {"model": registry.model, "hardware": registry.hardware}[kind]
    lines = [f"- **{name}**: {lookup(name).notes}" for name in names if lookup(name).notes]
    return ("Notes from the registry:\n\n" + "\n".join(lines)) if lines else ""


def plain_log_ticks(ax, which="xy"):
    """Label the log axes ``which`` of ``ax`` in plain text — large and small powers of ten as
    10¹⁸, everything else (0.1, 1, 10, 100, or 2, 4, 8 on a base-2 axis) as a plain number — and
    drop their minor ticks: the look of matplotlib's default,
    without its mathtext labels and dozens of minor ticks, which make up most of the time it
    takes to draw a log-log figure."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    from ..units import power_of_ten

    def power(x, _pos):
        if x <= 0:
            return ""
        exponent = round(np.log10(x))
        is_power = np.isclose(x, 10.0**exponent)
        return power_of_ten(exponent) if is_power and abs(exponent) >= 3 else f"{x:g}"

    for axis in [ax.xaxis] * ("x" in which) + [ax.yaxis] * ("y" in which):
        axis.set_major_formatter(FuncFormatter(power))
        axis.set_minor_locator(NullLocator())
    return ax


from .matmul import matmul_calculator  # noqa: E402
from .training import training_calculator  # noqa: E402
from .attention import attention_explorer  # noqa: E402
from .inference import inference_calculator  # noqa: E402
from .scaling import scaling_explorer  # noqa: E402
from .memory import memory_calculator  # noqa: E402
from .architectures import architectures_calculator, architectures_figure  # noqa: E402
from .collectives import collectives_calculator, collectives_figure  # noqa: E402
from .parallelism import parallelism_calculator, parallelism_figure  # noqa: E402
from .throughput import throughput_calculator, throughput_figure  # noqa: E402
from .context import context_calculator, context_figure  # noqa: E402

__all__ = ["architectures_calculator", "architectures_figure", "attention_explorer", "collectives_calculator",
           "collectives_figure", "context_calculator", "context_figure", "g", "glue",
           "inference_calculator", "matmul_calculator", "memory_calculator",
           "parallelism_calculator", "parallelism_figure", "plain_log_ticks",
           "registry_notes", "scaling_explorer", "setup", "throughput_calculator",
           "throughput_figure", "training_calculator"]
