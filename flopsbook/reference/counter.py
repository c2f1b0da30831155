"""A counter that records every matrix product made through :func:`matmul`.

Usage::

    with count_flops() as c:
        y = matmul(x, w, component="ffn")
    c.total("forward")

What it records, and the conventions it uses:

**Matrix products** (``c.total()``, ``c.by_component()``). Every product ``a @ b`` is recorded
as ``2*m*k*n`` FLOPs (one multiply and one add per term of each dot product), tagged with a
component (what it computes; the reference model uses ``COMPONENTS``) and a pass:

- ``"forward"``: the forward pass;
- ``"backward_input"``: gradients with respect to activations, ``dX = dY @ W.T``, and every
  backward product of attention (``Q @ K.T`` and ``A @ V`` involve no weights);
- ``"backward_weight"``: gradients with respect to weights, ``dW = X.T @ dY``;
- ``"recompute"``: forward work repeated during the backward pass by activation recomputation.

**Causal attention.** The attention products (and their backward products) are given the
boolean causal ``mask`` of the attention they belong to (``True`` = the query may see the key).
numpy always computes the full masked matrix; only the *count* depends on the counter:

- ``count_flops(causal=False)`` counts every (query, key) pair: what a dense kernel computes and
  what PyTorch's ``FlopCounterMode`` reports;
- ``count_flops(causal=True)`` counts only the unmasked pairs: what a kernel that skips masked
  blocks computes (``s*(s+1)/2`` pairs per head for a full sequence; ``q*(k-q) + q*(q+1)/2`` for
  ``q`` new queries at the end of ``k`` keys).

**Other work** (``c.other``, ``c.other_total()``), not part of ``total()``: softmax, norms,
activations, residual adds, rotary embeddings, biases, embeddings, the loss and a mixture of
experts' routing softmax and weighted sum, recorded by kind
with the per-element FLOPs of ``ELEMENTWISE_FLOPS`` (a convention, stated there). Passes are
``"forward"``, ``"backward"`` and ``"recompute"``.

**Saved tensors** (``c.saved_bytes``, ``c.saved_total()``, ``c.saved_by_name()``,
``c.saved_by_layer()``): every tensor a training forward pass keeps for the backward pass, by
(layer, name), with its size in bytes.

**By layer** (``c.by_component(pass_, layer=i)``, ``c.total(pass_, layer=i)``): every product
made inside ``with in_layer(i):`` is also recorded under that layer: the reference model's
layer index ``i`` counts from 0 (as ``saved_by_layer`` does; the spec's ``layer_window`` and
``layer_is_moe`` count from 1, so layer ``i`` here is the spec's layer ``i + 1``), and the
logits are under ``"head"``. Products made outside any ``in_layer`` are under None.

Counters nest: a product is recorded by every counter that is open, each with its own causal
setting.

**Timing** (``with timing(time.perf_counter) as t:``, off by default). While a timer is open,
every product is timed around its ``np.matmul`` (``t.matmul``, by pass and component), and each
call of :func:`elementwise` charges its kind with the clock's seconds since the previous
recorded operation ended (``t.elementwise``, by pass and kind): the reference model records each
piece of non-matmul work right after computing it, so that is the work's own time (and any small
reshape or copy made just before it). Time before a product that follows other work (the copies
that regroup attention heads, for instance), and the counters' own bookkeeping, is charged to
nothing: ``t.unattributed()``, the block's time less every charge. With no timer open, the cost
is one test of an empty list per recorded operation. (The clock is an argument, so that the
reference imports nothing beyond numpy and the spec; ``flopsbook.measure`` passes
``time.perf_counter``.)
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import numpy as np

PASSES = ("forward", "backward_input", "backward_weight", "recompute")
BACKWARD_PASSES = ("backward_input", "backward_weight")
# What the reference model tags its products with.
COMPONENTS = ("qkv", "scores", "weighted_values", "out_proj", "router", "ffn", "logits")
OTHER_PASSES = ("forward", "backward", "recompute")

# FLOPs per element of the non-matmul work, as (forward, backward). A convention: each +, -, *,
# /, exp, tanh or square root in the formula as the reference model writes it is 1 FLOP, a sum
# over an axis is 1 FLOP per element summed, a max (a comparison) is 0. Per-token work (the
# square root of a norm, the log of the loss) is left out: it is 1/d_model of the rest.
ELEMENTWISE_FLOPS = {
    # per attention score (one query-key pair of one head of one sequence).
    # fwd: scale by 1/sqrt(d_head), subtract the row max, exp, row sum, divide.
    # bwd: dA*A, row sum, subtract, times A, scale.
    # An attention sink adds per-row work only (its exp, the add to the row sum, its gradient):
    # left out, like the other per-token work.
    "softmax": (5, 5),
    # per element of the normalised (tokens x d_model) tensor; the bias add is under "bias".
    # fwd: mean (sum), subtract mean, square, variance (sum), times rstd, times gain.
    # bwd: d_gain (multiply, sum), dxhat = dy*gain, mean(dxhat), mean(dxhat*xhat) (multiply,
    #      sum), xhat*that, two subtractions, times rstd.
    "layernorm": (6, 10),
    # fwd: square, mean (sum), times rstd, times gain.
    # bwd: d_gain (2), dxhat (1), mean(dxhat*xhat) (2), xhat*that, subtract, times rstd.
    "rmsnorm": (4, 8),
    # per output element of a linear layer. fwd: add; bwd: the sum of dY over tokens.
    "bias": (1, 1),
    # per element of the (tokens x d_ff) pre-activation; tanh approximation
    # 0.5*x*(1 + tanh(c*(x + 0.044715*x^3))).
    # fwd: x^3 (2), times 0.044715, plus x, times c, tanh, plus 1, times x, times 0.5.
    # bwd: recompute tanh (6), 0.5*(1+t) (2), derivative of the tanh branch (8), add, times dy.
    "gelu": (9, 18),
    # per element of the (tokens x d_ff) gate: silu(g) * u with silu(g) = g / (1 + exp(-g)).
    # fwd: exp(-g), plus 1, divide, times u.
    # bwd: recompute sigmoid (3), silu = g*sigmoid, du = dh*silu, silu' = s*(1 + g*(1 - s)) (4),
    #      dg = dh*u*silu' (2).
    "swiglu": (4, 11),
    # per element of the (tokens x d_ff) gate: gelu(g) * u, GELU's tanh approximation.
    # fwd: gelu(g) as "gelu" (9), times u.
    # bwd: recompute tanh (6), 0.5*(1 + t) (2), gelu(g) = g*that (1), du = dh*gelu(g) (1), the
    #      derivative of the tanh branch (8), add (gelu'(g)), dh*u, times gelu'(g).
    "geglu": (10, 21),
    # per routing weight (one of a token's top_k router logits): softmax over the top_k.
    # fwd: subtract the max, exp, row sum, divide (choosing the top_k compares: 0).
    # bwd: dw*w, row sum, subtract, times w.
    "router_softmax": (4, 4),
    # per element of the (tokens*top_k x d_model) routed experts' outputs. fwd: times the
    # routing weight, add into the token's sum. bwd: dy*w (the expert's output gradient) and
    # the routing weight's gradient sum(dy*y) (multiply, sum).
    "moe_combine": (2, 3),
    # per rotated element of q and k: x*cos + rotate(x)*sin. bwd: the inverse rotation.
    "rope": (3, 3),
    # per element of the residual stream. fwd: the add; bwd: the two paths' gradients summed.
    "residual": (1, 1),
    # per element of a (tokens x d_model) embedding. fwd: adding the position row (learned
    # positions only; the token lookup is a copy). bwd: accumulating into each table's rows.
    "embedding": (1, 1),
    # per logit. fwd: subtract the row max, exp, row sum, divide (the probabilities are kept).
    # bwd: subtract the one-hot target, divide by the number of tokens.
    "cross_entropy": (4, 2),
}

_QUERIES = (None, "backward") + PASSES  # what total() and by_component() accept
_ACTIVE: list["FlopCounter"] = []
_TIMERS: list["OpTimer"] = []  # open timers (see timing); empty, timing costs one test
_LAYER: list = [None]  # the layer that products are made in (see in_layer)


def _check_pass(pass_: str, allowed) -> None:
    if pass_ not in allowed:
        raise ValueError(f"pass_ must be one of {', '.join(map(str, allowed))}, got {pass_!r}")


def _in_pass(p: str, pass_: str | None) -> bool:
    """Whether a record of pass ``p`` belongs to the query ``pass_`` (None = every pass)."""
    if pass_ is None:
        return True
    if pass_ == "backward":  # both backward passes; never recomputation
        return p in BACKWARD_PASSES or p == "backward"
    return p == pass_


class FlopCounter:
    """Totals of matmul FLOPs by (pass, component), of other work by kind, and saved bytes.

    Made by :func:`~flopsbook.count_flops`, which also says what is recorded and how. Passes
    are ``"forward"``, ``"backward_input"``, ``"backward_weight"`` and ``"recompute"`` for
    matrix products, ``"forward"``, ``"backward"`` and ``"recompute"`` for other work.

    Args:
        causal (bool): Count only the (query, key) pairs a causal mask keeps. Default False.

    Attributes:
        causal (bool): Whether attention products count only the unmasked pairs.
        matmul (dict[tuple[str, str], int]): Matmul FLOPs by (pass, component).
        matmul_by_layer (dict[tuple[object, str, str], int]): Matmul FLOPs by (layer, pass,
            component); layer as in ``in_layer`` (None outside every layer).
        other (dict[str, int]): Non-matmul FLOPs by kind (softmax, layernorm, ...), all passes.
        other_by_pass (dict[tuple[str, str], int]): Non-matmul FLOPs by (pass, kind).
        saved_bytes (dict[tuple[object, str], int]): Bytes kept for the backward pass, by
            (layer, name).
        stat_names (set[str]): The saved names that are per-token statistics.

    Raises:
        ValueError: If ``causal`` is not True or False.
    """

    def __init__(self, causal: bool = False):
        if not isinstance(causal, bool):
            raise ValueError(f"causal must be True or False, got {causal!r}")
        self.causal = causal
        self.matmul = defaultdict(int)         # (pass, component) -> FLOPs
        self.matmul_by_layer = defaultdict(int)  # (layer, pass, component) -> FLOPs
        self.other = defaultdict(int)          # kind (softmax, layernorm, ...) -> FLOPs, all passes
        self.other_by_pass = defaultdict(int)  # (pass, kind) -> FLOPs
        self.saved_bytes = defaultdict(int)    # (layer, name) -> bytes kept for the backward pass
        self.stat_names: set[str] = set()      # saved names that are per-token statistics

    # -- matrix products ---------------------------------------------------------------------
    def add(self, flops: int, component: str, pass_: str = "forward", layer=None) -> None:
        _check_pass(pass_, PASSES)
        self.matmul[(pass_, component)] += int(flops)
        self.matmul_by_layer[(layer, pass_, component)] += int(flops)

    def _records(self, layer):
        """(pass, component, FLOPs) of every layer (layer None) or of one layer."""
        if layer is None:
            return ((p, c, v) for (p, c), v in self.matmul.items())
        return ((p, c, v) for (where, p, c), v in self.matmul_by_layer.items() if where == layer)

    def total(self, pass_: str | None = None, component: str | None = None, *,
              layer=None) -> int:
        r"""Matmul FLOPs: all passes (None), one pass, or "backward" (both backward passes).

        Args:
            pass\_ (str | None): None (all passes, the default), one pass, or ``"backward"`` (both
                backward passes, never recomputation).
            component (str | None): Only this component (e.g. ``"ffn"``); None (the default) is
                all.

        Keyword Args:
            layer (int | str | None): Only the products of this layer (0-based, or ``"head"``;
                see ``in_layer``); None (the default) is every product.

        Returns:
            int: FLOPs (exact).

        Raises:
            ValueError: If ``pass_`` is not one of its values.
        """
        _check_pass(pass_, _QUERIES)
        return sum(v for p, c, v in self._records(layer)
                   if _in_pass(p, pass_) and (component is None or c == component))

    def by_component(self, pass_: str | None = None, *, layer=None) -> dict[str, int]:
        r"""Matmul FLOPs by component, for the passes selected as in :meth:`total`.

        Args:
            pass\_ (str | None): None (all passes, the default), one pass, or ``"backward"`` (both
                backward passes, never recomputation).

        Keyword Args:
            layer (int | str | None): Only the products of this layer (0-based, or ``"head"``;
                see ``in_layer``); None (the default) is every product.

        Returns:
            dict[str, int]: FLOPs by component.

        Raises:
            ValueError: If ``pass_`` is not one of its values.
        """
        _check_pass(pass_, _QUERIES)
        out = defaultdict(int)
        for p, c, v in self._records(layer):
            if _in_pass(p, pass_):
                out[c] += v
        return dict(out)

    # -- other work ----------------------------------------------------------------------------
    def add_other(self, flops: int, kind: str, pass_: str = "forward") -> None:
        _check_pass(pass_, OTHER_PASSES)
        self.other[kind] += int(flops)
        self.other_by_pass[(pass_, kind)] += int(flops)

    def other_total(self, pass_: str | None = None) -> int:
        r"""Non-matmul FLOPs (``ELEMENTWISE_FLOPS``) of one pass, or of all (None).

        Args:
            pass\_ (str | None): ``"forward"``, ``"backward"``, ``"recompute"``, or None (all, the
                default).

        Returns:
            int: FLOPs.

        Raises:
            ValueError: If ``pass_`` is not one of its values.
        """
        _check_pass(pass_, (None,) + OTHER_PASSES)
        return sum(v for (p, _), v in self.other_by_pass.items() if _in_pass(p, pass_))

    def other_by_kind(self, pass_: str | None = None) -> dict[str, int]:
        r"""Non-matmul FLOPs by kind, of one pass or of all (None).

        Args:
            pass\_ (str | None): ``"forward"``, ``"backward"``, ``"recompute"``, or None (all, the
                default).

        Returns:
            dict[str, int]: FLOPs by kind (softmax, layernorm, ...).

        Raises:
            ValueError: If ``pass_`` is not one of its values.
        """
        _check_pass(pass_, (None,) + OTHER_PASSES)
        out = defaultdict(int)
        for (p, kind), v in self.other_by_pass.items():
            if _in_pass(p, pass_):
                out[kind] += v
        return dict(out)

    # -- saved tensors -------------------------------------------------------------------------
    def save(self, layer, name: str, nbytes: int, *, stat: bool = False) -> None:
        """Record ``nbytes`` kept for the backward pass by ``layer`` (an int, or a part such as
        "embedding" or "head") under ``name``; ``stat`` marks per-token statistics."""
        self.saved_bytes[(layer, name)] += int(nbytes)
        if stat:
            self.stat_names.add(name)

    def _saved(self, layer, stats: bool):
        for (where, name), v in self.saved_bytes.items():
            if (layer is None or where == layer) and (stats or name not in self.stat_names):
                yield where, name, v

    def saved_total(self, layer=None, *, stats: bool = True) -> int:
        """Bytes saved for the backward pass, by one layer (or part) or all (None).

        ``stats=False`` leaves out the per-token statistics (norm means and rstds).

        Args:
            layer (int | str | None): A layer index, a part (``"embedding"``, ``"head"``), or None
                (all, the default).

        Keyword Args:
            stats (bool): Include the per-token statistics (norm means and rstds). Default True.

        Returns:
            int: Bytes.
        """
        return sum(v for _, _, v in self._saved(layer, stats))

    def saved_by_name(self, layer=None, *, stats: bool = True) -> dict[str, int]:
        """Saved bytes by tensor name, summed over layers (or for one layer or part).

        Args:
            layer (int | str | None): A layer index, a part (``"embedding"``, ``"head"``), or None
                (all layers, the default).

        Keyword Args:
            stats (bool): Include the per-token statistics (norm means and rstds). Default True.

        Returns:
            dict[str, int]: Bytes by tensor name.
        """
        out = defaultdict(int)
        for _, name, v in self._saved(layer, stats):
            out[name] += v
        return dict(out)

    def saved_by_layer(self, *, stats: bool = True) -> dict:
        """Saved bytes by layer index (and by "embedding" and "head" for the rest).

        Keyword Args:
            stats (bool): Include the per-token statistics (norm means and rstds). Default True.

        Returns:
            dict: Bytes by layer index, ``"embedding"`` and ``"head"``.
        """
        out = defaultdict(int)
        for where, _, v in self._saved(None, stats):
            out[where] += v
        return dict(out)

    def __repr__(self) -> str:
        parts = ", ".join(f"{p}={self.total(p):,}" for p in PASSES if self.total(p))
        causal = ", causal" if self.causal else ""
        return f"FlopCounter({parts or 'empty'}{causal})"


@contextmanager
def count_flops(causal: bool = False):
    """Count the FLOPs of a ``with`` block: a context manager that yields a new FlopCounter.

    Open a :class:`~flopsbook.reference.FlopCounter` for the block; every
    ``flopsbook.reference.matmul`` inside is recorded, as ``2*m*k*n`` FLOPs per product, by
    every counter that is open (counters nest). With ``causal=True`` attention products count
    only the (query, key) pairs the causal mask keeps; with ``causal=False`` (the default) they
    count every pair, as a dense kernel does. The conventions are stated in the docstring of
    ``flopsbook.reference.counter``.

    Args:
        causal (bool): Count only the (query, key) pairs a causal mask keeps. Default False.

    Yields:
        FlopCounter: The counter, to read during or after the block (``total()``,
        ``by_component()``, ``saved_total()``, ...).

    Raises:
        ValueError: If ``causal`` is not True or False.
    """
    counter = FlopCounter(causal=causal)
    _ACTIVE.append(counter)
    try:
        yield counter
    finally:
        _ACTIVE.remove(counter)


class OpTimer:
    """Seconds of the recorded operations of a ``with timing():`` block (see the module
    docstring for what is charged where).

    Attributes:
        matmul (dict[tuple[str, str], float]): Seconds inside ``np.matmul``, by (pass,
            component), passes as for :class:`FlopCounter`'s products.
        elementwise (dict[tuple[str, str], float]): Seconds charged to non-matmul work, by
            (pass, kind), passes and kinds as for :class:`FlopCounter`'s other work.
        clock (Callable[[], float]): The clock, seconds (e.g. ``time.perf_counter``).
        start (float): The clock when the block began.
        stop (float | None): ... when it ended (None while it is open).
    """

    def __init__(self, clock):
        self.clock = clock
        self.matmul = defaultdict(float)
        self.elementwise = defaultdict(float)
        self.start = clock()
        self.stop = None
        self._mark = self.start  # when the last recorded operation ended (or the block began)

    def total(self) -> float:
        """Seconds of the block (so far, while it is open)."""
        return (self.clock() if self.stop is None else self.stop) - self.start

    def matmul_by_component(self) -> dict[str, float]:
        """Seconds of the products by component, all passes.

        Returns:
            dict[str, float]: Seconds by component.
        """
        out = defaultdict(float)
        for (_, component), v in self.matmul.items():
            out[component] += v
        return dict(out)

    def elementwise_by_kind(self) -> dict[str, float]:
        """Seconds charged to non-matmul work by kind, all passes.

        Returns:
            dict[str, float]: Seconds by kind (softmax, layernorm, ...).
        """
        out = defaultdict(float)
        for (_, kind), v in self.elementwise.items():
            out[kind] += v
        return dict(out)

    def unattributed(self) -> float:
        """Seconds of the block charged to no operation: total less every charge."""
        return self.total() - sum(self.matmul.values()) - sum(self.elementwise.values())

    def __repr__(self) -> str:
        return (f"OpTimer(matmul={sum(self.matmul.values()):.4g} s, "
                f"elementwise={sum(self.elementwise.values()):.4g} s, "
                f"total={self.total():.4g} s)")


def _mark_timers() -> None:
    for timer in _TIMERS:
        timer._mark = timer.clock()


@contextmanager
def timing(clock):
    """Time the recorded operations of a ``with`` block: yields a new :class:`OpTimer`.

    Off unless a block is open: outside one, ``matmul`` and ``elementwise`` only test that no
    timer is open. Timers nest, like counters. The charging rule is in the docstring of
    ``flopsbook.reference.counter``.

    Args:
        clock (Callable[[], float]): Seconds now, e.g. ``time.perf_counter`` (a fake clock in
            tests).

    Yields:
        OpTimer: The timer, to read after the block (``matmul``, ``elementwise``,
        ``total()``, ``unattributed()``).
    """
    if not callable(clock):
        raise ValueError(f"clock must be callable (e.g. time.perf_counter), got {clock!r}")
    timer = OpTimer(clock)
    _TIMERS.append(timer)
    try:
        yield timer
    finally:
        timer.stop = clock()
        _TIMERS.remove(timer)


def current_counters() -> tuple[FlopCounter, ...]:
    return tuple(_ACTIVE)


@contextmanager
def in_layer(layer):
    """Record the products made inside the ``with`` block under ``layer`` too (an int layer
    index from 0, or a part such as ``"head"``), for ``by_component(..., layer=)``."""
    previous = _LAYER[0]
    _LAYER[0] = layer
    try:
        yield
    finally:
        _LAYER[0] = previous


def _masked_count(full: int, mask: np.ndarray | None) -> int:
    """``full`` scaled to the unmasked fraction of ``mask``, exactly (integers)."""
    if mask is None:
        return full
    pairs = int(np.count_nonzero(mask))
    if full % mask.size:
        raise ValueError(f"the mask of shape {mask.shape} does not fit this work ({full} FLOPs)")
    return full // mask.size * pairs


def matmul(a: np.ndarray, b: np.ndarray, *, component: str = "other",
           pass_: str = "forward", mask: np.ndarray | None = None) -> np.ndarray:
    """``a @ b``, recorded as 2*m*k*n FLOPs per product (leading axes are a batch).

    ``mask`` (attention products only) is the boolean (queries x keys) causal mask; two of the
    product's three sizes m, k, n must be its two sizes, in either order (``Q @ K.T``: m x n;
    ``A @ V``: m x k; ``A.T @ dO``: k x m ...). Causal counters then count
    ``2 * (batch) * (third size) * (unmasked pairs)``; the others count every pair.
    """
    _check_pass(pass_, PASSES)
    if _TIMERS:
        starts = [timer.clock() for timer in _TIMERS]
        out = np.matmul(a, b)
        for timer, start in zip(_TIMERS, starts):
            timer.matmul[(pass_, component)] += timer.clock() - start
    else:
        out = np.matmul(a, b)
    m, k, n = a.shape[-2] if a.ndim > 1 else 1, a.shape[-1], b.shape[-1] if b.ndim > 1 else 1
    full = 2 * k * out.size  # each output element is a length-k dot product
    masked = full
    if mask is not None:
        if sorted(mask.shape) not in (sorted((m, k)), sorted((m, n)), sorted((k, n))):
            raise ValueError(f"mask of shape {mask.shape} does not match a product of sizes "
                             f"m={m}, k={k}, n={n}")
        masked = _masked_count(full, mask)
    for counter in _ACTIVE:
        counter.add(masked if counter.causal else full, component, pass_, _LAYER[0])
    if _TIMERS:
        _mark_timers()
    return out


def elementwise(kind: str, n_elements: int, pass_: str = "forward",
                mask: np.ndarray | None = None) -> None:
    """Record ``n_elements`` of non-matmul work of ``kind`` (FLOPs per element from
    ``ELEMENTWISE_FLOPS``). ``mask`` as in :func:`matmul`: causal counters count only the
    unmasked fraction (the softmax of causal attention)."""
    _check_pass(pass_, OTHER_PASSES)
    for timer in _TIMERS:
        timer.elementwise[(pass_, kind)] += timer.clock() - timer._mark
    forward, backward = ELEMENTWISE_FLOPS[kind]
    full = int(n_elements) * (backward if pass_ == "backward" else forward)
    masked = _masked_count(full, mask)
    for counter in _ACTIVE:
        counter.add_other(masked if counter.causal else full, kind, pass_)
    if _TIMERS:
        _mark_timers()


def save_for_backward(layer, name: str, array: np.ndarray, *, stat: bool = False) -> None:
    """Record in every open counter that ``array`` is kept for the backward pass."""
    for counter in _ACTIVE:
        counter.save(layer, name, array.nbytes, stat=stat)
