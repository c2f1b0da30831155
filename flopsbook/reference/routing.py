"""A Monte Carlo router: how many distinct experts a batch of tokens hits in one MoE layer.

The formula ``flopsbook.expected_experts`` is derived under uniform routing; this module
routes tokens the way a mixture of experts does and counts, so the tests can hold the two
against each other. Like the rest of ``flopsbook.reference`` it imports no formula module.

Each token gets one logit per expert, drawn i.i.d. standard normal, and meets the ``top_k``
experts with the largest logits (a softmax would not change the order, so it is left out).
I.i.d. continuous logits put the experts in a uniformly random order, so a token's ``top_k``
experts are a uniformly random set of ``top_k`` distinct experts, the tokens independent:
exactly the uniform routing the formula assumes.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

# Logits drawn per chunk of trials (float64: 32 MiB): large batches of experts stay in memory.
_CHUNK_VALUES = 1 << 22


class HitEstimate(NamedTuple):
    """The Monte Carlo estimate of :func:`simulate_experts_hit`.

    Attributes:
        mean (float): Mean number of distinct experts hit, over the trials.
        stderr (float): Standard error of ``mean``: the trials' sample standard deviation
            over sqrt(n_trials) (0 when every trial hits as many, e.g. one token).
        n_trials (int): Trials run.
    """

    mean: float
    stderr: float
    n_trials: int


def _count(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def simulate_experts_hit(n_experts: int, top_k: int, batch: int, n_trials: int = 1000,
                         seed: int = 0) -> HitEstimate:
    """Route ``batch`` tokens ``n_trials`` times; the mean number of distinct experts hit.

    In each trial every token draws ``n_experts`` standard normal logits and is routed to the
    ``top_k`` largest (see the module docstring); the trial's count is the number of experts
    at least one of the ``batch`` tokens meets. Seeded, so the same arguments give the same
    estimate.

    Args:
        n_experts (int): Routed experts E, > 0.
        top_k (int): Experts each token meets, 1 <= top_k <= n_experts.
        batch (int): Tokens routed together (a decode step's batch), > 0.
        n_trials (int): Independent trials, >= 2 (for a standard error). Default 1000.
        seed (int): Seed of ``numpy.random.default_rng``, >= 0. Default 0.

    Returns:
        HitEstimate: ``(mean, stderr, n_trials)``.

    Raises:
        ValueError: If an argument is not a positive int (``seed`` an int >= 0),
            ``top_k`` exceeds ``n_experts``, or ``n_trials`` is below 2; the message names
            the argument.
    """
    e, k, b, n = (_count(name, v) for name, v in (("n_experts", n_experts), ("top_k", top_k),
                                                   ("batch", batch), ("n_trials", n_trials)))
    if k > e:
        raise ValueError(f"top_k={k} must be at most n_experts={e}")
    if n < 2:
        raise ValueError(f"n_trials must be at least 2 (for a standard error), got {n}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    rng = np.random.default_rng(seed)
    counts = np.empty(n)
    chunk = max(1, _CHUNK_VALUES // (b * e))
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        logits = rng.standard_normal((c, b, e))
        # The k largest logits of each token: argpartition puts them in the last k places.
        chosen = np.argpartition(logits, e - k, axis=-1)[..., e - k:]
        hit = np.zeros((c, e), dtype=bool)
        hit[np.arange(c)[:, None], chosen.reshape(c, b * k)] = True
        counts[start:start + c] = hit.sum(axis=1)
    return HitEstimate(float(counts.mean()), float(counts.std(ddof=1) / math.sqrt(n)), n)
