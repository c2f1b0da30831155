"""Scaling laws: the compute-optimal split of a training budget between parameters and tokens.

Derived in the chapter "Scaling laws" (notebooks/scaling-laws). The loss law is Chinchilla's
parametric fit (Hoffmann et al. 2022, Approach 3),

    L(N, D) = E + A / N**alpha + B / D**beta,

and the budget constraint is C = 6 N D (chapter "Weight FLOPs"). Minimising L along C = 6 N D
gives N_opt = G (C/6)**a, D_opt = G**-1 (C/6)**b with G = (alpha A / (beta B))**(1/(alpha+beta)),
a = beta / (alpha + beta), b = alpha / (alpha + beta). Solving the law for D at a fixed loss
gives the tokens a model of N parameters needs to reach it (``tokens_for_loss``). Fits are named
and carry their sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_array, formula, result, shown


@dataclass(frozen=True)
class ScalingFit:
    """A named scaling law: the five constants of L = E + A/N^alpha + B/D^beta, or a fixed ratio.

    The fixed ratio of tokens to parameters is a rule of thumb, which has no loss law: its
    ``E``, ``A``, ``B``, ``alpha`` and ``beta`` are None. N and D are counts (parameters and
    tokens, not billions); the loss is cross-entropy per token, in nats, on the fit's data and
    tokenizer. Chapter "Scaling laws".

    Attributes:
        name (str): The fit's name, as :func:`~flopsbook.scaling_fits` lists it.
        source (str): Key of ``book/references.bib``.
        E (float | None): The irreducible loss, nats per token.
        A (float | None): Coefficient of the parameter term A/N^alpha.
        B (float | None): Coefficient of the data term B/D^beta.
        alpha (float | None): Exponent of N.
        beta (float | None): Exponent of D.
        tokens_per_param (float | None): D / N of a ratio rule (20 for Chinchilla's rule of
            thumb); None for a loss law.
        notes (str): Where the constants come from.
    """

    name: str
    source: str
    E: float | None = None
    A: float | None = None
    B: float | None = None
    alpha: float | None = None
    beta: float | None = None
    tokens_per_param: float | None = None
    notes: str = ""

    @property
    def has_loss(self) -> bool:
        """bool: Whether the fit has a loss law (``E`` is set), not only a ratio rule."""
        return self.E is not None

    @property
    def G(self) -> float:
        """float: (alpha A / (beta B))^(1/(alpha+beta)): N_opt at C/6 = 1.

        For a ratio rule of r tokens per parameter, 1/sqrt(r).
        """
        if not self.has_loss:
            return 1.0 / np.sqrt(self.tokens_per_param)
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    @property
    def a(self) -> float:
        """float: Exponent of N_opt in C: beta / (alpha + beta) (1/2 for a ratio rule)."""
        return 0.5 if not self.has_loss else self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """float: Exponent of D_opt in C: alpha / (alpha + beta) (1/2 for a ratio rule)."""
        return 0.5 if not self.has_loss else self.alpha / (self.alpha + self.beta)


_FITS = {f.name: f for f in [
    ScalingFit("hoffmann2022", "hoffmann2022chinchilla", E=1.69, A=406.4, B=410.7,
               alpha=0.34, beta=0.28,
               notes="Approach 3 as printed in the paper (App. D.2, rounded). Fitted on "
                     "MassiveText: losses are cross-entropy per token of its tokenizer."),
    ScalingFit("hoffmann2022-tex", "besiroglu2024chinchilla", E=1.6934, A=406.4, B=410.7,
               alpha=0.3392, beta=0.2849,
               notes="Hoffmann et al.'s Approach 3 with the unrounded E and exponents of the "
                     "paper's TeX source, as quoted by Besiroglu et al. (2024); A and B as "
                     "printed. Gives the paper's '40B parameters' at Gopher's budget (Figure 4)."),
    ScalingFit("besiroglu2024", "besiroglu2024chinchilla", E=1.8172, A=482.01, B=2085.43,
               alpha=0.3478, beta=0.3658,
               notes="Refit of Approach 3 to data reconstructed from Hoffmann et al.'s "
                     "Figure 4 (Huber loss summed, optimizer run to convergence)."),
    ScalingFit("tokens-per-param-20", "hoffmann2022chinchilla", tokens_per_param=20.0,
               notes="Rule of thumb read off Approach 1 (Table 3): D = 20 N. Has no loss law."),
]}


def scaling_fit(fit) -> ScalingFit:
    """A named fit (see ``scaling_fits()``), or a ``ScalingFit`` passed through unchanged.

    Args:
        fit (str | ScalingFit): A fit name, exactly as :func:`scaling_fits` lists it, or a
            :class:`ScalingFit`.

    Returns:
        ScalingFit: The fit.

    Raises:
        ValueError: If ``fit`` is neither a ``ScalingFit`` nor a fit name; the message names
            ``fit`` and lists the names.
    """
    if isinstance(fit, ScalingFit):
        return fit
    if isinstance(fit, str) and fit in _FITS:
        return _FITS[fit]
    options = " | ".join(repr(name) for name in _FITS)
    raise ValueError(f"fit must be one of {options} (or a ScalingFit), got {fit!r:.60}")


def scaling_fits() -> list[str]:
    """Names of every fit, in the order the chapter introduces them.

    Returns:
        list[str]: The fit names, each accepted wherever a ``fit`` argument is.
    """
    return list(_FITS)


@formula
def chinchilla_loss(n_params, n_tokens, fit="hoffmann2022"):
    """Predicted final training loss L = E + A/N^alpha + B/D^beta (cross-entropy per token).

    ``n_params`` and ``n_tokens`` are counts (not billions) and broadcast. A fit without a loss
    law (the ``"tokens-per-param-20"`` rule) raises ``ValueError``. Chapter "Scaling laws".

    Args:
        n_params (float | str | Transformer | array-like): Parameters N, a count > 0, one text
            count such as ``"70B"``, or a :class:`Transformer` or model name (its
            ``param_count``).
        n_tokens (float | str | array-like): Training tokens D, a count > 0, or one text count
            such as ``"1.4T"``.
        fit (str | ScalingFit): A fit name (see :func:`scaling_fits`) or a
            :class:`ScalingFit` with a loss law. Default ``"hoffmann2022"``.

    Returns:
        float | numpy.ndarray: The loss, nats per token (of the fit's data and tokenizer): a
        float, or an array when an argument is one.

    Raises:
        ValueError: If ``fit`` is unknown or has no loss law, or a count is not valid; the
            message names the argument.
    """
    f = _loss_law(fit)
    n = as_array("n_params", n_params, kind="params")
    d = as_array("n_tokens", n_tokens, kind="count")
    return result(f.E + f.A / n**f.alpha + f.B / d**f.beta)


@formula
def tokens_for_loss(n_params, loss, fit="hoffmann2022"):
    """Training tokens D at which a model of ``n_params`` parameters reaches ``loss``.

    The loss law solved for D: B / D^beta = loss - E - A/N^alpha, so
    D = (B / (loss - E - A/N^alpha))^(1/beta). A model too small to reach ``loss`` with any
    number of tokens (loss <= E + A/N^alpha) needs infinitely many: ``inf``. Counts, not
    billions; broadcasts. Chapter "Scaling laws" (inference-aware model size).

    Args:
        n_params (float | str | Transformer | array-like): Parameters N, a count > 0, one text
            count such as ``"7B"``, or a :class:`Transformer` or model name (its
            ``param_count``).
        loss (float | array-like): The target loss, nats per token, > 0; numbers only.
        fit (str | ScalingFit): A fit name (see :func:`scaling_fits`) or a
            :class:`ScalingFit` with a loss law. Default ``"hoffmann2022"``.

    Returns:
        float | numpy.ndarray: Tokens D (``inf`` where the loss is out of reach): a float, or
        an array when an argument is one.

    Raises:
        ValueError: If ``fit`` is unknown or has no loss law, or ``n_params`` or ``loss`` is
            not valid; the message names the argument.
    """
    f = _loss_law(fit)
    n = as_array("n_params", n_params, kind="params")
    target = as_array("loss", loss)
    gap = target - f.E - f.A / n**f.alpha            # what the data term may still contribute
    reachable = gap > 0
    with np.errstate(over="ignore"):                 # a gap near 0 needs ~inf tokens: inf is right
        d = (f.B / np.where(reachable, gap, 1.0)) ** (1.0 / f.beta)
    return result(np.where(reachable, d, np.inf), allow_inf=True)


def _loss_law(fit) -> ScalingFit:
    f = scaling_fit(fit)
    if not f.has_loss:
        with_loss = " | ".join(repr(name) for name, g in _FITS.items() if g.has_loss)
        raise ValueError(f"fit {f.name!r} is a tokens-per-parameter rule with no loss law; "
                         f"use one of {with_loss}")
    return f


@formula
def chinchilla_optimal(compute, fit="hoffmann2022"):
    """(N_opt, D_opt): the split of ``compute`` training FLOPs (C = 6 N D) that minimises the loss.

    N_opt = G (C/6)^a and D_opt = G^-1 (C/6)^b with G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta); the ``"tokens-per-param-20"`` rule gives
    N = sqrt(C / 120), D = 20 N. Broadcasts over arrays of budgets. Chapter "Scaling laws".

    Args:
        compute (float | str | array-like): The training budget C in FLOPs, > 0, or one text
            count such as ``"5.76e23"``.
        fit (str | ScalingFit): A fit name (see :func:`scaling_fits`) or a
            :class:`ScalingFit` (a ratio rule too). Default ``"hoffmann2022"``.

    Returns:
        tuple: ``(n_params, n_tokens)``: N_opt parameters and D_opt tokens (counts), each a
        float, or an array when ``compute`` is one; 6 N D = C to rounding.

    Raises:
        ValueError: If ``fit`` is unknown or ``compute`` is not valid; the message names the
            argument.
    """
    f = scaling_fit(fit)
    c6 = as_array("compute", compute, kind="count") / 6.0
    n = f.G * c6**f.a
    # D from the constraint rather than G^-1 (C/6)^b: the same number, and 6ND = C to rounding.
    return result(n), result(c6 / n)


@dataclass(frozen=True)
class InferenceAwareOptimum:
    """The model that reaches a loss for the fewest lifetime FLOPs.

    Returned by :func:`~flopsbook.inference_aware_optimal`. Fields are floats, or arrays when
    broadcasting; where the loss is unreachable every count is ``inf`` and ``flops_saved`` is 0.

    Attributes:
        n_params (float | numpy.ndarray): N, the parameters of the cheapest model over its
            lifetime.
        n_tokens (float | numpy.ndarray): D_train, the tokens it trains on to reach the loss.
        flops (float | numpy.ndarray): Its lifetime FLOPs, 6 N D_train + 2 N D_inference.
        chinchilla_n_params (float | numpy.ndarray): Parameters of the compute-optimal model of
            the same loss.
        chinchilla_n_tokens (float | numpy.ndarray): The tokens that model trains on.
        chinchilla_flops (float | numpy.ndarray): Its training plus the same inference, FLOPs.
        flops_saved (float | numpy.ndarray): ``chinchilla_flops - flops`` (>= 0), FLOPs.
    """

    n_params: object              # N: parameters of the cheapest model over its lifetime
    n_tokens: object              # D_train: the tokens it trains on to reach the loss
    flops: object                 # 6 N D_train + 2 N D_inference
    chinchilla_n_params: object   # the compute-optimal model of the same loss
    chinchilla_n_tokens: object
    chinchilla_flops: object      # its training plus the same inference
    flops_saved: object           # chinchilla_flops - flops (>= 0)


@formula
def inference_aware_optimal(loss, inference_tokens, fit="hoffmann2022"):
    """Parameters and training tokens that reach ``loss`` for the fewest lifetime FLOPs.

    After Sardana et al. (2024): minimise 6 N D_train + 2 N D_inf over N subject to
    L(N, D_train) = ``loss`` (so D_train = ``tokens_for_loss(N, loss)``), with 2N forward FLOPs
    per inference token and ``inference_tokens`` = D_inf tokens served over the model's life
    (prompt and generated alike; 0 gives the Chinchilla-optimal model). Setting the derivative
    to zero gives 6 D (1 - alpha A N^-alpha / (beta g)) + 2 D_inf = 0 with
    g = loss - E - A N^-alpha, whose root lies between the smallest model that can reach the
    loss, (A / (loss - E))^(1/alpha), and the compute-optimal one,
    (A (alpha + beta) / (beta (loss - E)))^(1/alpha): found by bisection in log N. A loss at or
    below E is unreachable: every count is ``inf`` and ``flops_saved`` is 0. Returns an
    :class:`~flopsbook.scaling.InferenceAwareOptimum`; broadcasts over ``loss`` and
    ``inference_tokens``. Chapter "Scaling laws" (inference-aware model size).

    Args:
        loss (float | array-like): The target loss, nats per token, > 0; numbers only.
        inference_tokens (float | str | array-like): D_inf, the tokens served over the model's
            life, >= 0, or one text count such as ``"2T"``.
        fit (str | ScalingFit): A fit name (see :func:`scaling_fits`) or a
            :class:`ScalingFit` with a loss law. Default ``"hoffmann2022"``.

    Returns:
        InferenceAwareOptimum: The cheapest model and the compute-optimal one, with their
        tokens and lifetime FLOPs.

    Raises:
        ValueError: If ``fit`` is unknown or has no loss law, an argument is not valid, or
            ``loss`` is so high that a model of under one parameter reaches it; the message
            names the argument.
    """
    f = _loss_law(fit)
    target = as_array("loss", loss)
    d_inf = as_array("inference_tokens", inference_tokens, allow_zero=True, kind="count")
    target, d_inf = np.broadcast_arrays(target, d_inf)
    gap = target - f.E
    ok = gap > 0
    safe_gap = np.where(ok, gap, 1.0)
    lo = np.log((f.A / safe_gap) ** (1.0 / f.alpha))
    n_chin = (f.A * (f.alpha + f.beta) / (f.beta * safe_gap)) ** (1.0 / f.alpha)
    hi = np.log(n_chin)

    def slope(log_n):
        n = np.exp(log_n)
        g = safe_gap - f.A * n ** -f.alpha
        d = (f.B / g) ** (1.0 / f.beta)
        return 6 * d * (1 - f.alpha * f.A * n ** -f.alpha / (f.beta * g)) + 2 * d_inf

    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        for _ in range(200):   # the bracket is narrower than a few decades: 200 halvings
            mid = 0.5 * (lo + hi)
            up = slope(mid) > 0  # the lifetime cost rises past mid: the root is below it
            hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    n = np.exp(hi)
    if np.any(ok & ~(n >= 1)):
        raise ValueError(f"loss={shown(loss)} is so high that a model of under one parameter "
                         "reaches it: the law says nothing there (losses are cross-entropy "
                         "per token, a few nats)")
    d = np.asarray(tokens_for_loss(n, np.where(ok, target, f.E + 1.0), f))
    d_chin = np.asarray(tokens_for_loss(n_chin, np.where(ok, target, f.E + 1.0), f))
    flops = 6 * n * d + 2 * n * d_inf
    flops_chin = 6 * n_chin * d_chin + 2 * n_chin * d_inf
    def field(values, unreachable=np.inf):
        return result(np.where(ok, values, unreachable), allow_inf=True)

    return InferenceAwareOptimum(
        n_params=field(n), n_tokens=field(d), flops=field(flops),
        chinchilla_n_params=field(n_chin), chinchilla_n_tokens=field(d_chin),
        chinchilla_flops=field(flops_chin),
        flops_saved=field(np.maximum(flops_chin - flops, 0.0), 0.0))
