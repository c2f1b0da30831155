"""Measured throughput on this machine: timings, matmul rates, bandwidth, seed 004's ladder.

The machinery of the chapter "Measured throughput": numpy on the CPU (``flopsbook.measure_gpu``
runs the same ladder with PyTorch on a CUDA device). Not imported by ``import flopsbook``: use
``from flopsbook import measure``.

- :func:`timed` runs a function ``warmup`` times untimed, then ``repeats`` times timed with
  ``time.perf_counter``: a :class:`Timing` (median, min, max, spread).
- :func:`blas_threads` says how many threads numpy's BLAS uses now; :func:`set_blas_threads`
  changes it while running (OpenBLAS only).
- :func:`matmul_throughput` times ``np.matmul`` on given shapes (:class:`MatmulPoint`);
  :func:`memory_bandwidth` times a STREAM-like triad (:class:`Bandwidth`).
- :func:`mlp_ladder` times seed 004's ladder, from one matmul to an MLP block's training step
  with a layer norm and a float64 master copy of the weights (:class:`Rung`).
- :func:`step_breakdown` times a training step of the reference transformer by part (matmuls,
  attention products, softmax, norms, elementwise work, the rest) next to its FLOPs by the
  same parts, using the counter's timing hook (``flopsbook.reference.counter.timing``).

**Threads.** OpenBLAS starts its threads when numpy is imported, reading
``OPENBLAS_NUM_THREADS`` (or ``OMP_NUM_THREADS``). To measure single-threaded, set the variable
before the first ``import numpy`` of the process (a notebook's first cell, before any import of
numpy, flopsbook or matplotlib)::

    import os
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

or, once numpy is loaded, call ``set_blas_threads(1)``; ``blas_threads()`` reports the count
in use either way. Elementwise numpy work is single-threaded whatever the setting.

**Never assert on a time.** Every count here (FLOPs, bytes) follows from the shapes and is
tested; every time depends on the machine and on its other load.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Bandwidth", "LADDER_BATCH", "LADDER_RUNGS", "LADDER_SIZES", "MatmulPoint", "PARTS",
           "Rung", "StepBreakdown", "Timing", "blas_threads", "ladder_bytes", "matmul_throughput",
           "memory_bandwidth", "mlp_ladder", "set_blas_threads", "step_breakdown", "timed",
           "triad", "differs"]

# The sizes for the chapter: the seed's widths divided by 4 (d_ff = 4 d_model kept) and a batch
# of 256, mlp_ladder(**LADDER_SIZES, repeats=3): about 2 GFLOP a step, compute-bound, about
# 0.4 s for the whole ladder on a quiet two-core CPU.
LADDER_SIZES = {"batch": 256, "d_model": 400, "d_ff": 1600}
# A batch for the seed's own widths (d_model=1600, d_ff=6400): the smallest sensible one. Even
# so, mlp_ladder(LADDER_BATCH, repeats=3) takes about 3 s here: every step moves the 82 MB of
# float32 weights several times (the SGD update alone 410 MB), so it is memory-bound.
LADDER_BATCH = 8

LADDER_RUNGS = ("matmul", "linear MLP step", "+ activation", "+ residual", "+ layer norm",
                "fp32 weights, fp64 master")

# The parts of step_breakdown, in the order the chapter draws them.
PARTS = ("matmuls", "attention products", "softmax", "norms", "elementwise", "other")


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Timing:
    """Seconds of repeated runs of one function.

    Attributes:
        times (tuple[float, ...]): Seconds of each timed run, in order.
        median (float): Their median, seconds: the figure to report.
        low (float): The fastest run (the minimum), seconds.
        high (float): The slowest run (the maximum), seconds.
        repeats (int): Timed runs.
        warmup (int): Untimed runs before them.
    """

    times: tuple
    median: float
    low: float
    high: float
    repeats: int
    warmup: int

    @classmethod
    def from_times(cls, times, warmup: int = 0) -> "Timing":
        """A Timing from measured seconds.

        Args:
            times (Sequence[float]): Seconds of each timed run (at least one).
            warmup (int): Untimed runs that came before. Default 0.

        Returns:
            Timing: Median, min and max of ``times``.

        Raises:
            ValueError: If ``times`` is empty.
        """
        times = tuple(float(t) for t in times)
        if not times:
            raise ValueError("times must hold at least one time")
        return cls(times, float(np.median(times)), min(times), max(times), len(times),
                   int(warmup))

    @property
    def spread(self) -> float:
        """float: (max - min) / median: the relative range of the runs (0 for one run)."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.median * 1e3:.3g} ms (median of {self.repeats}, "
                f"spread {100 * self.spread:.0f}%)")


def _range(x) -> tuple[float, float]:
    if isinstance(x, Timing):
        return x.low, x.high
    if not isinstance(x, (tuple, list)) or len(x) != 2 or not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in x):
        raise ValueError(f"a timing must be a Timing or a (low, high) pair of seconds, got "
                         f"{x!r}")
    low, high = float(x[0]), float(x[1])
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise ValueError(f"a (low, high) range must have 0 <= low <= high seconds, got {x!r}")
    return low, high


# Measurements here are meant to take a second, not a machine: refuse arrays beyond this before
# allocating them (numpy's own MemoryError comes after the attempt, or not at all with swap).
MAX_BYTES = 8 * 2**30


def _fits(name: str, n_bytes: float) -> None:
    if n_bytes > MAX_BYTES:
        raise ValueError(f"{name}: the arrays would take {n_bytes / 2**30:.3g} GiB, above this "
                         f"module's limit of {MAX_BYTES / 2**30:g} GiB (measure.MAX_BYTES)")


def differs(a, b) -> int:
    """Whether two timings differ beyond their spread, and which way.

    The runs of each span ``[low, high]`` (fastest to slowest). They differ only when these
    ranges do not overlap: a conservative test on a loaded machine, where one disturbed run
    widens a range.

    Args:
        a (Timing | tuple[float, float]): A timing, or a (low, high) range of seconds.
        b (Timing | tuple[float, float]): Another.

    Returns:
        int: -1 if ``a`` is faster (its slowest run beats ``b``'s fastest), 1 if slower (its
        fastest run is slower than ``b``'s slowest), 0 if the ranges overlap: within the noise.

    Raises:
        ValueError: If a range is not (low, high) with low <= high.
    """
    (a_low, a_high), (b_low, b_high) = _range(a), _range(b)
    if a_high < b_low:
        return -1
    if a_low > b_high:
        return 1
    return 0


def timed(fn, *, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` calls timed one by one.

    Each timed call is bracketed by ``time.perf_counter()``; the first calls (caches, page
    faults, thread start-up) are the warm-up and are not reported.

    Args:
        fn (Callable[[], object]): What to time, called with no arguments.

    Keyword Args:
        repeats (int): Timed calls, >= 1. Default 5.
        warmup (int): Untimed calls first, >= 0. Default 1.

    Returns:
        Timing: The seconds of each timed call, their median, min and max.

    Raises:
        ValueError: If ``fn`` is not callable, or ``repeats`` or ``warmup`` is not a whole
            number in range.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    repeats = _positive_int("repeats", repeats)
    warmup = _positive_int("warmup", warmup, 0)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Timing.from_times(times, warmup)


# --------------------------------------------------------------------------------------------
# BLAS threads
# --------------------------------------------------------------------------------------------

def _openblas():
    """The OpenBLAS library numpy loaded, as a ctypes handle, or None (not found, not Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {parts[-1] for parts in map(str.split, maps)
                     if len(parts) >= 6 and "openblas" in parts[-1].lower()
                     and ".so" in parts[-1] and parts[-1].startswith("/")}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def _openblas_function(suffix: str):
    lib = _openblas()
    if lib is None:
        return None
    for prefix in ("scipy_openblas", "openblas"):
        for tail in ("64_", ""):
            try:
                return getattr(lib, f"{prefix}_{suffix}{tail}")
            except AttributeError:
                continue
    return None


def blas_threads() -> int | None:
    """Threads numpy's BLAS uses now, or None where it cannot be found out.

    Asks, in order: ``threadpoolctl`` (if installed; not a dependency), the OpenBLAS library
    numpy loaded (its ``openblas_get_num_threads``, Linux), then the environment variables
    ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` that OpenBLAS read at import.

    Returns:
        int | None: The thread count.
    """
    try:  # pragma: no cover - threadpoolctl is not installed here
        from threadpoolctl import threadpool_info
        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    get = _openblas_function("get_num_threads")
    if get is not None:
        return int(get())
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.strip().isdigit():
            return int(value)
    return None


def set_blas_threads(n: int) -> int | None:
    """Make numpy's BLAS use ``n`` threads from now on (OpenBLAS only).

    More threads than the machine has cores only oversubscribe them, so ``n`` is capped at
    ``os.cpu_count()`` (OpenBLAS caps it again at the count it was built for).

    Args:
        n (int): Threads, >= 1.

    Returns:
        int | None: The count now in use (``blas_threads()``), or None where numpy's BLAS is not
        an OpenBLAS this can reach (then set ``OPENBLAS_NUM_THREADS`` before importing numpy).

    Raises:
        ValueError: If ``n`` is not a whole number >= 1.
    """
    n = min(_positive_int("n", n), os.cpu_count() or 1)
    set_ = _openblas_function("set_num_threads")
    if set_ is None:
        return None
    set_(ctypes.c_int(n))
    return blas_threads()


# --------------------------------------------------------------------------------------------
# Matmul throughput and memory bandwidth
# --------------------------------------------------------------------------------------------

def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64' (numpy's BLAS types), "
                         f"got {dtype!r}")
    return dt


@dataclass(frozen=True)
class MatmulPoint:
    """One measured ``(m x k) @ (k x n)`` product.

    Attributes:
        m (int): Rows of the left operand.
        k (int): The contracted dimension.
        n (int): Columns of the right operand.
        timing (Timing): Seconds of one product.
        flops (int): 2*m*k*n.
        rate (float): flops / timing.median, FLOP/s.
        dtype (str): The element type.
        bytes (int): The least traffic: each operand read once and the output written once,
            (m*k + k*n + m*n) * itemsize.
    """

    m: int
    k: int
    n: int
    timing: Timing
    flops: int
    rate: float
    dtype: str = "float32"
    bytes: int = 0

    @property
    def intensity(self) -> float:
        """float: flops / bytes, FLOP per byte (the roofline's x axis)."""
        return self.flops / self.bytes

    @property
    def best_rate(self) -> float:
        """float: flops / timing.low, FLOP/s: the rate of the fastest run (the least disturbed
        estimate on a loaded machine)."""
        return self.flops / self.timing.low


def matmul_throughput(shapes, *, dtype="float32", repeats: int = 5) -> list[MatmulPoint]:
    """Time ``np.matmul(a, b, out=c)`` for each (m, k, n) in ``shapes``.

    Operands are standard normal, made before timing; each shape gets one warm-up product.

    Args:
        shapes (Iterable[tuple[int, int, int]]): The (m, k, n) of each product.

    Keyword Args:
        dtype (str): ``"float32"`` (default) or ``"float64"``.
        repeats (int): Timed products per shape, >= 1. Default 5.

    Returns:
        list[MatmulPoint]: One per shape, in order.

    Raises:
        ValueError: If a shape is not three whole numbers >= 1, or ``dtype`` or ``repeats`` is
            not allowed.
    """
    dt = _float_dtype(dtype)
    repeats = _positive_int("repeats", repeats)
    if not isinstance(shapes, (list, tuple)) or not all(isinstance(x, (list, tuple))
                                                         for x in shapes):
        raise ValueError(f"shapes must be a list of (m, k, n) triples, e.g. [(1024, 1024, 1024)], "
                         f"got {shapes!r}")
    checked = []
    for shape in shapes:
        if len(shape) != 3:
            raise ValueError(f"shapes must hold (m, k, n) triples, got {shape!r}")
        m, k, n = (_positive_int("shapes", v) for v in shape)
        _fits("shapes", (m * k + k * n + m * n) * dt.itemsize)
        checked.append((m, k, n))
    rng = np.random.default_rng(0)
    out = []
    for m, k, n in checked:
        a = rng.standard_normal((m, k), dtype=np.float32).astype(dt, copy=False)
        b = rng.standard_normal((k, n), dtype=np.float32).astype(dt, copy=False)
        c = np.empty((m, n), dt)
        timing = timed(lambda: np.matmul(a, b, out=c), repeats=repeats)
        flops = 2 * m * k * n
        out.append(MatmulPoint(m, k, n, timing, flops, flops / timing.median, dt.name,
                               (m * k + k * n + m * n) * dt.itemsize))
    return out


@dataclass(frozen=True)
class Bandwidth:
    """A measured memory bandwidth.

    Attributes:
        timing (Timing): Seconds of one pass of the triad.
        bytes_moved (int): Bytes one pass reads and writes (see :func:`memory_bandwidth`).
        rate (float): bytes_moved / timing.median, bytes/s.
        n_elements (int): Elements of each array.
    """

    timing: Timing
    bytes_moved: int
    rate: float
    n_elements: int = 0

    @property
    def best_rate(self) -> float:
        """float: bytes_moved / timing.low, bytes/s: the fastest pass's rate."""
        return self.bytes_moved / self.timing.low


def triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, scalar: float) -> np.ndarray:
    """STREAM's triad ``a = b + scalar * c`` in place, without temporaries.

    Two numpy calls with ``out=``: ``a = scalar * c`` (reads c, writes a), then ``a = a + b``
    (reads a and b, writes a): five array-sized transfers in all.

    Args:
        a (numpy.ndarray): The output, overwritten.
        b (numpy.ndarray): An input, of a's shape and dtype.
        c (numpy.ndarray): The other input, of a's shape and dtype.
        scalar (float): The multiplier of c.

    Returns:
        numpy.ndarray: ``a``.
    """
    np.multiply(c, scalar, out=a)
    np.add(a, b, out=a)
    return a


def memory_bandwidth(n_bytes: int = 2**27, *, repeats: int = 5) -> Bandwidth:
    """This machine's memory bandwidth, from a STREAM-like triad ``a = b + s*c`` in numpy.

    Three float64 arrays together of ``n_bytes`` (each ``n_bytes // 24`` elements; the default
    128 MiB is larger than a CPU's last-level cache, so the arrays stream from memory). One pass
    is :func:`triad`: ``np.multiply(c, s, out=a)`` then ``np.add(a, b, out=a)``, no temporaries.
    **Bytes counted per pass: 5 * n * 8** (c read and a written by the multiply; a and b read and
    a written by the add). STREAM's fused triad moves 3 * n * 8 (and reports that); the
    write-allocate reads of a (the cache fetching a line before it is overwritten) are not
    counted, as STREAM does not count them.

    Args:
        n_bytes (int): Memory of the three arrays together, bytes, >= 24. Default 2**27.

    Keyword Args:
        repeats (int): Timed passes, >= 1 (one warm-up pass first). Default 5.

    Returns:
        Bandwidth: The timing of one pass, the bytes it moves and their rate in bytes/s.

    Raises:
        ValueError: If ``n_bytes`` or ``repeats`` is not a whole number in range.
    """
    n_bytes = _positive_int("n_bytes", n_bytes, 24)
    _fits("n_bytes", n_bytes)
    repeats = _positive_int("repeats", repeats)
    n = n_bytes // 24
    a = np.zeros(n)
    b = np.full(n, 1.0)
    c = np.full(n, 2.0)
    timing = timed(lambda: triad(a, b, c, 3.0), repeats=repeats)
    moved = 5 * n * 8
    return Bandwidth(timing, moved, moved / timing.median, n)


# --------------------------------------------------------------------------------------------
# Seed 004's ladder: from a matmul to an MLP block's training step
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rung:
    """One rung of :func:`mlp_ladder`.

    Attributes:
        name (str): One of ``LADDER_RUNGS``.
        timing (Timing): Seconds of one matmul (the first rung) or of one training step.
        weight_flops (int): The seed's weight FLOPs: 6 * batch * weights for a training step
            (weights = 2 * d_model * d_ff, the two matrices; the gain of the layer norm is not a
            weight matrix), 2 * batch * d_model * d_ff for the single matmul (its actual FLOPs).
        rate (float): weight_flops / timing.median, weight-FLOP/s.
        elementwise_bytes (int): Bytes the rung's non-matmul operations read and write, from
            the shapes (:func:`ladder_bytes` says how they are counted).
        fraction (float): rate / the first rung's rate (1.0 for the first rung).
        bytes_by_op (tuple[tuple[str, int], ...]): ``elementwise_bytes`` by operation.
    """

    name: str
    timing: Timing
    weight_flops: int
    rate: float
    elementwise_bytes: int
    fraction: float = 1.0
    bytes_by_op: tuple = field(default=(), compare=False)

    @property
    def best_rate(self) -> float:
        """float: weight_flops / timing.low, weight-FLOP/s of the fastest run."""
        return self.weight_flops / self.timing.low

    def fraction_of(self, other: "Rung") -> float:
        """This rung's rate as a fraction of ``other``'s.

        Args:
            other (Rung): The reference rung (usually the ladder's first).

        Returns:
            float: ``self.rate / other.rate``.
        """
        return self.rate / other.rate


def ladder_bytes(name: str, batch: int, d_model: int = 1600, d_ff: int = 6400,
                 dtype="float32") -> dict[str, int]:
    """Bytes of the non-matmul operations of one rung of :func:`mlp_ladder`, by operation.

    Counted from the shapes as numpy executes the rung: each array operand of a numpy call is
    read once and each output written once (``out=`` arguments: no temporaries). Per-row and
    per-feature vectors (length ``batch`` or ``d_model``: the norm's means and rstds, its gain
    and the gain's gradient and update) are left out: 1/d_model or 1/batch of the rest. With
    ``B = batch``, ``d = d_model``, ``f = d_ff``, ``P = 2*d*f`` weights and ``s`` the itemsize:

    - ``"loss gradient"``: ``dy = y - t`` (read y, t; write dy): 3*s*B*d.
    - ``"sgd update"``: ``dW *= lr``, ``W -= dW`` for both matrices (read dW, write dW; read W
      and dW, write W): 5*s*P.
    - ``"relu"`` (+ activation): forward in place (read z, write z): 2*s*B*f; backward
      ``mask = z > 0`` (read s, write 1 byte) and ``dz *= mask`` (read s + 1, write s):
      (3*s + 2)*B*f.
    - ``"residual"`` (+ residual): ``y += x`` and ``dx += dy``: 3*s*B*d each, 6*s*B*d.
    - ``"layer norm"`` (+ layer norm, a gain and no bias): forward 9*s*B*d (mean: 1; subtract
      it: 2; variance, a row dot product of the centred input with itself: 2; times rstd: 2;
      times gain: 2), backward 16*s*B*d (the gain's gradient: 2; times gain: 2; row mean: 1;
      row dot product with xhat: 2; xhat times it: 2; subtract: 3; subtract the mean: 2; times
      rstd: 2).
    - ``"master weights"`` (fp32 weights, fp64 master) replaces ``"sgd update"``: the cast of
      the float64 master to the working weights (read 8*P, write s*P), ``dW *= lr`` (2*s*P) and
      the master's update ``M -= dW`` (read 8*P and s*P, write 8*P): (24 + 4*s)*P, 40 bytes
      per weight in float32 against the plain update's 20.

    The matmul rung has none. Each rung adds to the one before (the last replaces the update).

    Args:
        name (str): A rung, one of ``LADDER_RUNGS``.
        batch (int): Rows of the batch, >= 1.
        d_model (int): Width of the input and output, >= 1. Default 1600.
        d_ff (int): Width of the hidden layer, >= 1. Default 6400.
        dtype (str): ``"float32"`` (default) or ``"float64"``.

    Returns:
        dict[str, int]: Bytes by operation (empty for the matmul).

    Raises:
        ValueError: If ``name`` is not a rung or a size is not a whole number >= 1.
    """
    if name not in LADDER_RUNGS:
        raise ValueError(f"name must be one of {', '.join(LADDER_RUNGS)}, got {name!r}")
    b = _positive_int("batch", batch)
    d = _positive_int("d_model", d_model)
    f = _positive_int("d_ff", d_ff)
    s = _float_dtype(dtype).itemsize
    p = 2 * d * f
    level = LADDER_RUNGS.index(name)
    out: dict[str, int] = {}
    if level >= 1:
        out["loss gradient"] = 3 * s * b * d
        out["sgd update"] = 5 * s * p
    if level >= 2:
        out["relu"] = 2 * s * b * f + (3 * s + 2) * b * f
    if level >= 3:
        out["residual"] = 6 * s * b * d
    if level >= 4:
        out["layer norm"] = (9 + 16) * s * b * d
    if level >= 5:
        del out["sgd update"]
        out["master weights"] = ((8 + s) + 2 * s + (16 + s)) * p
    return out


class _Block:
    """An MLP block with a hand-written backward pass and preallocated buffers.

    ``y = [x +] relu?(norm?(x) @ w1) @ w2``, loss ``L = sum((y - t)**2) / 2``. ``gradients()``
    fills ``dw1``, ``dw2``, ``dx`` (and ``dgain``) with the gradients of L; ``step()`` is one
    SGD step (with ``master``: the working weights are cast from float64 master copies first,
    and the masters are updated).
    """

    def __init__(self, x, t, w1, w2, gain, *, activation=False, residual=False, norm=False,
                 master=None, lr=None):
        self.x, self.t, self.w1, self.w2, self.gain = x, t, w1, w2, gain
        self.activation, self.residual, self.norm, self.master = activation, residual, norm, master
        # The loss sums over the batch: a step of 1e-3 / batch keeps the weights near their start.
        self.lr = 1e-3 / x.shape[0] if lr is None else lr
        dt = x.dtype
        (b, d), f = x.shape, w1.shape[1]
        self.z = np.empty((b, f), dt)       # pre-activation, then (in place) the activation
        self.y = np.empty((b, d), dt)
        self.dy = np.empty((b, d), dt)
        self.dz = np.empty((b, f), dt)
        self.mask = np.empty((b, f), bool)
        self.dw1, self.dw2 = np.empty_like(w1), np.empty_like(w2)
        self.dinp = np.empty((b, d), dt)    # gradient of the first matmul's input
        self.dx = self.dinp
        if norm:
            self.xhat = np.empty((b, d), dt)
            self.h = np.empty((b, d), dt)
            self.tmp = np.empty((b, d), dt)
            self.mean = np.empty((b, 1), dt)
            self.rstd = np.empty((b, 1), dt)
            self.row = np.empty(b, dt)
            self.dgain = np.empty(d, dt)
        if residual:
            self.dx = np.empty((b, d), dt)

    def _norm_forward(self):
        x, xhat, d = self.x, self.xhat, self.x.shape[1]
        np.mean(x, axis=1, keepdims=True, out=self.mean)
        np.subtract(x, self.mean, out=xhat)                       # centred, in xhat
        np.einsum("ij,ij->i", xhat, xhat, out=self.row)           # row sums of squares
        self.rstd[:, 0] = 1.0 / np.sqrt(self.row / d + 1e-5)
        np.multiply(xhat, self.rstd, out=xhat)
        np.multiply(xhat, self.gain, out=self.h)
        return self.h

    def _norm_backward(self, dh, out):
        """Gradient of the norm's input from dh (overwritten), into ``out``."""
        xhat, d = self.xhat, dh.shape[1]
        np.einsum("ij,ij->j", dh, xhat, out=self.dgain)
        np.multiply(dh, self.gain, out=dh)                        # dxhat
        np.mean(dh, axis=1, keepdims=True, out=self.mean)         # (mean reused as scratch)
        np.einsum("ij,ij->i", dh, xhat, out=self.row)
        self.row /= d
        np.multiply(xhat, self.row[:, None], out=self.tmp)
        np.subtract(dh, self.tmp, out=dh)
        np.subtract(dh, self.mean, out=dh)
        np.multiply(dh, self.rstd, out=out)
        return out

    def gradients(self):
        inp = self._norm_forward() if self.norm else self.x
        np.matmul(inp, self.w1, out=self.z)
        if self.activation:
            np.maximum(self.z, 0, out=self.z)
        np.matmul(self.z, self.w2, out=self.y)
        if self.residual:
            np.add(self.y, self.x, out=self.y)
        np.subtract(self.y, self.t, out=self.dy)                  # dL/dy
        np.matmul(self.z.T, self.dy, out=self.dw2)
        np.matmul(self.dy, self.w2.T, out=self.dz)
        if self.activation:
            np.greater(self.z, 0, out=self.mask)
            np.multiply(self.dz, self.mask, out=self.dz)
        np.matmul(inp.T, self.dz, out=self.dw1)
        # dx, as a layer inside a deeper network needs (the 6*batch*weights convention counts it)
        np.matmul(self.dz, self.w1.T, out=self.dinp)
        dx = self.dinp
        if self.norm:
            dx = self._norm_backward(self.dinp, self.tmp if self.residual else self.dinp)
        if self.residual:
            np.add(dx, self.dy, out=self.dx)

    def step(self):
        if self.master is not None:
            m1, m2 = self.master
            np.copyto(self.w1, m1, casting="same_kind")
            np.copyto(self.w2, m2, casting="same_kind")
        self.gradients()
        for w, dw, m in ((self.w1, self.dw1, 0), (self.w2, self.dw2, 1)):
            np.multiply(dw, self.lr, out=dw)
            if self.master is None:
                np.subtract(w, dw, out=w)
            else:
                np.subtract(self.master[m], dw, out=self.master[m])
        if self.norm:
            self.gain -= self.lr * self.dgain


def _ladder_params(batch, d_model, d_ff, dt, seed):
    rng = np.random.default_rng(seed)

    def normal(shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(
            dt, copy=False)

    x = normal((batch, d_model))
    t = normal((batch, d_model))
    w1 = normal((d_model, d_ff), 1 / math.sqrt(d_model))
    w2 = normal((d_ff, d_model), 1 / math.sqrt(d_ff))
    gain = (1.0 + normal(d_model, 0.1)).astype(dt)
    return x, t, w1, w2, gain


_RUNG_OPTIONS = {
    "linear MLP step": {},
    "+ activation": {"activation": True},
    "+ residual": {"activation": True, "residual": True},
    "+ layer norm": {"activation": True, "residual": True, "norm": True},
    "fp32 weights, fp64 master": {"activation": True, "residual": True, "norm": True,
                                  "master": True},
}


def _block(name, params, lr=None):
    x, t, w1, w2, gain = params
    options = dict(_RUNG_OPTIONS[name])
    if options.pop("master", False):
        options["master"] = (w1.astype(np.float64), w2.astype(np.float64))
    return _Block(x, t, w1, w2, gain, lr=lr, **options)


def mlp_ladder(batch: int, *, d_model: int = 1600, d_ff: int = 6400, dtype="float32",
               repeats: int = 5, seed: int = 0) -> list[Rung]:
    """Seed 004's ladder on this CPU: one matmul, then an MLP training step growing rung by rung.

    The rungs (``LADDER_RUNGS``), each timed with :func:`timed` (one warm-up):

    1. ``"matmul"``: the step's large product ``(batch x d_model) @ (d_model x d_ff)``.
    2. ``"linear MLP step"``: ``y = x W1 W2`` forward, loss ``sum((y - t)^2) / 2``, a hand-written
       backward (dW2, dh, dW1 and dx: six products, 6 * batch * weights FLOPs exactly) and an SGD
       update of both matrices.
    3. ``"+ activation"``: a ReLU between the two products, as in the seed.
    4. ``"+ residual"``: ``y = x + relu(x W1) W2``.
    5. ``"+ layer norm"``: a pre-norm block, ``y = x + relu(LN(x) W1) W2`` (LN with a gain).
    6. ``"fp32 weights, fp64 master"`` (``dtype="float32"`` only): the block of rung 5 with
       float64 master weights: each step casts the masters to the float32 working weights, and
       the SGD update is applied to the masters. The seed's mixed precision (bf16 compute, fp32
       master weights) is the same pattern one size up: numpy has no bfloat16, and its float16
       matmul does not use BLAS (it would be hundreds of times slower, measuring numpy's loop,
       not the precision), so float32 compute with a float64 master is the honest analogue. Its
       extra cost is the same kind as on the GPU: memory traffic proportional to the weights
       (the cast and the wider update), none to the batch.

    Every operation writes into preallocated buffers (``out=``), so a rung's time is its
    arithmetic and its memory traffic, not allocation. The rungs share one set of weights,
    which each step updates in place (a learning rate of 1e-3 / batch: they barely move).

    Weight FLOPs (the seed's WFLOP convention): **6 x batch x weights** per training step, with
    weights = 2 * d_model * d_ff (the two matrices); 2 x batch x d_model x d_ff for the matmul
    rung. ``Rung.rate`` is weight-FLOP/s and ``Rung.fraction`` the fraction of the matmul's rate.

    Sizes: at the seed's widths (the defaults) a step is 6 * batch * 20.48e6 FLOPs and touches
    the 82 MB of float32 weights several times, so the batch must be small for the ladder to
    fit a test suite, and even ``LADDER_BATCH`` (8) takes about 3 s at ``repeats=3`` on a
    two-core machine; so small a batch is memory-bound on a CPU too (the seed's small-batch
    penalty; the SGD update's 20 bytes per weight dominate). ``LADDER_SIZES`` (batch 256,
    d_model 400, d_ff 1600: ``mlp_ladder(**LADDER_SIZES, repeats=3)``, about 0.4 s) is
    compute-bound, as the seed's batch of 8192 is on the GPU: the chapter's ladder.

    Args:
        batch (int): Rows of the batch, >= 1 (the seed used 8192; ``LADDER_BATCH`` here).

    Keyword Args:
        d_model (int): Input and output width, >= 1. Default 1600 (the seed's).
        d_ff (int): Hidden width, >= 1. Default 6400 (the seed's).
        dtype (str): ``"float32"`` (default) or ``"float64"`` (the last rung is left out).
        repeats (int): Timed runs of each rung, >= 1. Default 5.
        seed (int): Seed of the random inputs and weights. Default 0.

    Returns:
        list[Rung]: The rungs in order, each with its timing, weight FLOPs, rate, fraction of the
        first rung's rate and elementwise bytes (:func:`ladder_bytes`).

    Raises:
        ValueError: If a size, ``repeats`` or ``seed`` is not a whole number in range, or
            ``dtype`` is not allowed.
    """
    b = _positive_int("batch", batch)
    d = _positive_int("d_model", d_model)
    f = _positive_int("d_ff", d_ff)
    dt = _float_dtype(dtype)
    repeats = _positive_int("repeats", repeats)
    seed = _positive_int("seed", seed, 0)
    # Weights (two matrices, their gradients, a float64 master) and the batch's activations.
    _fits("mlp_ladder sizes", 2 * d * f * (2 * dt.itemsize + 8) + 6 * b * (d + f) * dt.itemsize)
    params = _ladder_params(b, d, f, dt, seed)
    x, _, w1, _, _ = params
    names = LADDER_RUNGS if dt == np.float32 else LADDER_RUNGS[:-1]
    rungs: list[Rung] = []
    for name in names:
        if name == "matmul":
            out = np.empty((b, f), dt)
            timing = timed(lambda: np.matmul(x, w1, out=out), repeats=repeats)
            wflops = 2 * b * d * f
        else:
            block = _block(name, params)
            timing = timed(block.step, repeats=repeats)
            del block
            wflops = 6 * b * (2 * d * f)
        by_op = ladder_bytes(name, b, d, f, dt.name)
        rate = wflops / timing.median
        fraction = rate / rungs[0].rate if rungs else 1.0
        rungs.append(Rung(name, timing, wflops, rate, sum(by_op.values()), fraction,
                          tuple(by_op.items())))
    return rungs


# --------------------------------------------------------------------------------------------
# Where a training step's time goes
# --------------------------------------------------------------------------------------------

# The counter's components and kinds of work, by part of PARTS.
_COMPONENT_PART = {"qkv": "matmuls", "out_proj": "matmuls", "ffn": "matmuls",
                   "router": "matmuls", "logits": "matmuls", "scores": "attention products",
                   "weighted_values": "attention products"}
_KIND_PART = {"softmax": "softmax", "cross_entropy": "softmax", "router_softmax": "softmax",
              "layernorm": "norms", "rmsnorm": "norms"}  # every other kind: "elementwise"


def _part_of_component(component: str) -> str:
    return _COMPONENT_PART.get(component, "other")


def _part_of_kind(kind: str) -> str:
    return _KIND_PART.get(kind, "elementwise")


class StepBreakdown(dict):
    """Seconds of one training step by part (a dict over ``PARTS``), and its FLOPs by part.

    The dict's values are the parts of one step (the repeat whose total is the median), and sum
    to ``total``. ``"other"`` is total less the other parts: what the timing hook charges to no
    operation (copies that regroup attention heads, gathers, Python).

    Attributes:
        total (float): Seconds of the step (the median repeat).
        flops (dict[str, int]): FLOPs of the step by the same parts, from the counter
            (``"other"`` is 0: every counted FLOP belongs to a part).
        seconds_by_op (dict[str, float]): The finer charges of the median repeat: products by
            component (``"matmul:ffn"``, ...) and other work by kind (``"softmax"``, ...).
        flops_by_op (dict[str, int]): FLOPs by the same keys.
        timing (Timing): The totals of every repeat.
    """

    def __init__(self, seconds, total, flops, seconds_by_op, flops_by_op, timing):
        super().__init__(seconds)
        self.total = total
        self.flops = flops
        self.seconds_by_op = seconds_by_op
        self.flops_by_op = flops_by_op
        self.timing = timing

    def fractions(self) -> dict[str, float]:
        """Each part's share of the step's time.

        Returns:
            dict[str, float]: seconds / total by part.
        """
        return {k: v / self.total for k, v in self.items()}

    def flop_fractions(self) -> dict[str, float]:
        """Each part's share of the step's FLOPs (matmuls and other work together).

        Returns:
            dict[str, float]: FLOPs / all FLOPs by part.
        """
        whole = sum(self.flops.values())
        return {k: v / whole for k, v in self.flops.items()}


def step_breakdown(model, tokens, targets, *, repeats: int = 3) -> StepBreakdown:
    """Time one training step of the reference transformer by part, next to its FLOPs by part.

    Runs ``model.train_step(tokens, targets)`` once untimed, then ``repeats`` times inside
    ``flopsbook.reference.counter.timing(time.perf_counter)`` (and a FLOP counter): each
    product is timed around its ``np.matmul``, each piece of other work from the end of the
    previous recorded operation to its own record (the counter's docstring states the rule).
    The parts (``PARTS``):

    - ``"matmuls"``: products with weights (components qkv, out_proj, ffn, router, logits), every
      pass;
    - ``"attention products"``: ``q k^T`` and ``probs @ v`` and their backward products;
    - ``"softmax"``: attention's softmax, the loss's softmax (cross-entropy) and a router's;
    - ``"norms"``: LayerNorm and RMSNorm, forward and backward;
    - ``"elementwise"``: activations, residual adds, biases, rotary embeddings, embedding
      lookups' adds and gradients, a mixture of experts' combine;
    - ``"other"``: the step's time less the parts above.

    The repeat whose total is the median (the lower middle for an even count) gives the parts,
    so that they sum to its total. FLOPs are counted dense (``count_flops(causal=False)``: numpy
    computes every masked score too), so ``flops["matmuls"] + flops["attention products"]``
    equals ``tokens * flops_per_token(spec, seq)``.

    Args:
        model: The model, a ``flopsbook.reference.ReferenceTransformer`` (its parameters are
            not updated: train_step only computes the gradients).
        tokens (array-like): (batch, seq) token ids.
        targets (array-like): (batch, seq) next-token ids.

    Keyword Args:
        repeats (int): Timed steps, >= 1. Default 3.

    Returns:
        StepBreakdown: Seconds by part (a dict), with ``total``, ``flops`` and the finer
        ``seconds_by_op`` and ``flops_by_op``.

    Raises:
        ValueError: If ``model`` has no ``train_step`` or ``repeats`` is not a whole number
            >= 1 (the model raises for bad tokens).
    """
    from .reference.counter import count_flops, timing

    if not callable(getattr(model, "train_step", None)):
        raise ValueError(f"model must be a flopsbook.reference.ReferenceTransformer, got "
                         f"{type(model).__name__}")
    repeats = _positive_int("repeats", repeats)
    model.train_step(tokens, targets)  # warm-up
    runs = []
    for _ in range(repeats):
        with count_flops() as counter, timing(time.perf_counter) as timer:
            model.train_step(tokens, targets)
        runs.append((timer, counter))
    totals = [timer.total() for timer, _ in runs]
    order = sorted(range(repeats), key=totals.__getitem__)
    timer, counter = runs[order[(repeats - 1) // 2]]

    seconds = dict.fromkeys(PARTS, 0.0)
    flops = dict.fromkeys(PARTS, 0)
    seconds_by_op, flops_by_op = {}, {}
    for component, s in timer.matmul_by_component().items():
        seconds[_part_of_component(component)] += s
        seconds_by_op[f"matmul:{component}"] = s
    for kind, s in timer.elementwise_by_kind().items():
        seconds[_part_of_kind(kind)] += s
        seconds_by_op[kind] = s
    for component, v in counter.by_component().items():
        flops[_part_of_component(component)] += v
        flops_by_op[f"matmul:{component}"] = v
    for kind, v in counter.other_by_kind().items():
        flops[_part_of_kind(kind)] += v
        flops_by_op[kind] = v
    total = timer.total()
    seconds["other"] += total - sum(seconds.values())
    return StepBreakdown(seconds, total, flops, seconds_by_op, flops_by_op,
                         Timing.from_times(totals, warmup=1))
