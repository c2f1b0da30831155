"""Choosing the training context: a small real experiment (chapter "Choosing the context length").

Buckman and Gelada ("On Context Scaling", the book's seed 001) argue that the training context
should be chosen by scaling laws, like width and depth; that the average training loss misleads
when models of different contexts are compared; that the loss at the end of the training context
(the *best-context loss*) is the metric to use; and that at a fixed budget the loss draws a U in
the context. This module makes that real at a scale a laptop runs in minutes.

**Data with a known useful context.** Every document draws its own word frequencies,
``p ~ Dirichlet(ALPHA)`` over ``N_WORDS`` words, and then its words independently from ``p``. A
reader who has seen ``n`` words of the document, ``n_w`` of them word ``w``, predicts the next
with the Bayes posterior ``(ALPHA + n_w) / (N_WORDS * ALPHA + n)``: more context always helps,
with diminishing returns (about (k - 1)/(2n) nats for a document that uses k words), up to the
document's end. Documents of the ``"long"`` set are longer than any context trained or
evaluated; the ``"control"`` set concatenates short documents (a geometric number of words, mean
``CONTROL_MEAN_WORDS``), each after a separator, as OpenWebText's short documents are
concatenated in the seed: context beyond the current document buys nothing. Token 0 is the
separator (every sequence starts with it), words are tokens 1 .. N_WORDS. ``bayes_losses``
gives the optimal loss of every prediction on the very tokens a model is scored on: the floor
every curve is drawn against.

**Models and training.** The reference transformer (``flopsbook.reference.model``, float64
numpy, its hand-written backward; no counter is open, so nothing is counted) with rotary
positions (so it can be evaluated beyond its training context), RMSNorm, no biases, GELU FFN,
``N_LAYERS`` layers and heads of ``D_HEAD`` features; Adam (``ADAM``) with a linear warm-up and a
constant learning rate after it, gradients clipped to norm 1. Every step sees
``TOKENS_PER_STEP`` tokens whatever the context (``TOKENS_PER_STEP // context`` fresh sequences),
as the seed held tokens per update fixed. The FLOPs of a step are
``flops_per_token(m, causal=True) * TOKENS_PER_STEP`` (training, causal, logits included): the
compute axis is FLOPs, not GPU-hours or updates as in the seed. Budgets are checkpoints along
one run per (context, width), not separate runs: with a constant learning rate an early
checkpoint is close to, but not the same as, a run planned for that budget (a decayed schedule
would end lower; Hoffmann et al. 2022).

**Measured at each budget** on ``EVAL_DOCS`` held-out documents (the same for every model): the
contextwise loss (mean loss at each position), the average training loss (the mean batch loss
of the last ``TRAIN_LOSS_STEPS`` steps) and the best-context loss (the mean of the contextwise
curve over the last ``ceil(5% of the context)`` positions of the training context, at least one;
the seed's footnote 7). At the last budget the curve runs to ``EVAL_LEN`` positions, beyond every
training context.

``python -m flopsbook.experiments.context`` runs the sweep (``SWEEP``; about 7 minutes on two
cores) and writes ``RESULTS`` with its provenance; ``--check`` re-runs ``CHECK`` from scratch,
single-threaded, and compares it with the numbers stored there.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_WORDS = 31                # words are tokens 1..31; token 0 separates documents
VOCAB_SIZE = N_WORDS + 1
ALPHA = 0.1                 # Dirichlet concentration of a document's word frequencies
CONTROL_MEAN_WORDS = 8      # mean words in a control document (geometric, at least one)
N_LAYERS = 2
D_HEAD = 8
TOKENS_PER_STEP = 2048
ADAM = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "warmup_steps": 20,
        "clip_norm": 1.0}
TRAIN_LOSS_STEPS = 20
EVAL_DOCS = 64
EVAL_LEN = 512              # the longest curve beyond a training context (4x it, at most this)
EVAL_CHUNK = 16             # documents per evaluation forward (the attention matrices' memory)
BEST_CONTEXT_FRACTION = 0.05

# The sweep: for each width the contexts trained and the FLOPs of its last checkpoint; the
# budgets are a common grid, every run evaluated at each budget it reaches.
SWEEP = {
    "widths": {16: 5e10, 32: 2e11, 64: 5e11},
    "contexts": [8, 16, 32, 64, 128, 256],
    "budgets": [2e9, 5e9, 1e10, 2e10, 5e10, 1e11, 2e11, 5e11],
    "control": {"width": 32, "contexts": [8, 32, 128], "max_budget": 1e11},
    "seed": 0,
}
CHECK = {"width": 16, "context": 16, "steps": 12, "kind": "long", "seed": 0}
CHECK_RTOL = 1e-8
RESULTS = Path(__file__).resolve().parent.parent / "data" / "context_sweep.json"
KINDS = ("long", "control")


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _check_count(value, name, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


# -- data ------------------------------------------------------------------------------------------
def documents(n: int, length: int, *, kind: str = "long", seed=0) -> np.ndarray:
    """``n`` held-out or training sequences of ``length`` tokens, (n, length) int64.

    ``kind="long"``: one document per sequence (the separator, then words of one document).
    ``kind="control"``: short documents, each after a separator, concatenated and cut at
    ``length``. ``seed`` is an int or a ``numpy.random.Generator`` (then it is advanced).
    """
    n, length, kind = _check_count(n, "n"), _check_count(length, "length", 2), _check_kind(kind)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if kind == "long":
        freqs = rng.dirichlet(np.full(N_WORDS, ALPHA), size=n)
        words = _draw(rng, freqs, np.repeat(np.arange(n)[:, None], length - 1, axis=1))
        return np.concatenate([np.zeros((n, 1), np.int64), words], axis=1)
    # A geometric number of words per document: after each word the document ends (the next
    # token is a separator) with probability 1/CONTROL_MEAN_WORDS.
    ends = rng.random((n, length)) < 1.0 / CONTROL_MEAN_WORDS
    tokens = np.zeros((n, length), np.int64)
    separator = np.zeros((n, length), bool)
    separator[:, 0] = True
    for j in range(1, length):  # a separator follows a word that ended its document
        separator[:, j] = ~separator[:, j - 1] & ends[:, j - 1]
    doc_index = np.cumsum(separator, axis=1) - 1
    n_docs = int(doc_index.max()) + 1
    freqs = rng.dirichlet(np.full(N_WORDS, ALPHA), size=n * n_docs)
    words = _draw(rng, freqs, np.arange(n)[:, None] * n_docs + doc_index)
    tokens[~separator] = words[~separator]
    return tokens


def _draw(rng, freqs, rows) -> np.ndarray:
    """Words 1..N_WORDS, one per entry of ``rows``, drawn from row ``rows[...]`` of ``freqs``
    (R, N_WORDS): inverse-CDF sampling, all rows in one sorted search (row r's CDF shifted by
    r)."""
    u = rng.random(rows.shape)
    cdf = np.cumsum(freqs, axis=1)
    cdf[:, -1] = 1.0  # rounding must not leave a u above the last word
    shifted = (cdf + np.arange(len(freqs))[:, None]).ravel()
    k = np.searchsorted(shifted, u + rows, side="right") - rows * N_WORDS
    return np.minimum(k, N_WORDS - 1) + 1


def bayes_losses(tokens, *, kind: str = "long") -> np.ndarray:
    """The optimal loss (nats) of predicting each token from all before it, (n, length - 1).

    Column j - 1 is the prediction with j tokens of context (token j from tokens 0 .. j-1),
    the same indexing as :func:`contextwise_loss`. The optimum knows the data's law (ALPHA, the
    control documents' ending probability) but not a document's frequencies: it uses the
    Dirichlet posterior of the words seen so far in the current document.
    """
    kind = _check_kind(kind)
    x = np.asarray(tokens)
    if x.ndim != 2 or x.shape[1] < 2 or not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"tokens must be a (n, length >= 2) integer array, got shape {x.shape}")
    if x.min() < 0 or x.max() > N_WORDS:
        raise ValueError(f"tokens must lie in [0, {N_WORDS}], got {x.min()} .. {x.max()}")
    n, length = x.shape
    rows = np.arange(n)
    counts = np.zeros((n, VOCAB_SIZE))
    seen = np.zeros(n)
    end = 1.0 / CONTROL_MEAN_WORDS if kind == "control" else 0.0
    out = np.empty((n, length - 1))
    for j in range(1, length):
        prev, nxt = x[:, j - 1], x[:, j]
        new_doc = prev == 0
        counts[new_doc] = 0.0
        seen[new_doc] = 0.0
        counts[rows[~new_doc], prev[~new_doc]] += 1.0
        seen[~new_doc] += 1.0
        p_word = (ALPHA + counts[rows, nxt]) / (N_WORDS * ALPHA + seen)
        # Right after a separator a word comes for sure; after a word the document may end.
        p_end = np.where(new_doc, 0.0, end)
        p = np.where(nxt == 0, p_end, (1.0 - p_end) * p_word)
        if np.any(p <= 0):
            raise ValueError(f"tokens are not {kind!r} data: token {j} has probability 0")
        out[:, j - 1] = -np.log(p)
    return out


# -- models ----------------------------------------------------------------------------------------
def model_spec(width: int, context: int):
    """The experiment's transformer of ``width`` (d_model) trained at ``context`` tokens."""
    from ..spec import Transformer
    width, context = _check_count(width, "width"), _check_count(context, "context")
    if width % D_HEAD:
        raise ValueError(f"width must be a multiple of D_HEAD={D_HEAD}, got {width}")
    return Transformer(n_layers=N_LAYERS, d_model=width, n_heads=width // D_HEAD,
                       vocab_size=VOCAB_SIZE, seq_len=context, positional="rope",
                       norm="rmsnorm", bias=False, ffn="gelu",
                       name=f"context-d{width}-s{context}")


def step_flops(width: int, context: int) -> float:
    """Training FLOPs of one optimizer step (``TOKENS_PER_STEP`` tokens, causal attention)."""
    from ..flops import flops_per_token
    return float(flops_per_token(model_spec(width, context), causal=True)) * TOKENS_PER_STEP


def contextwise_loss(model, tokens) -> np.ndarray:
    """Loss (nats) of ``model`` at every position of ``tokens``, (n, length - 1).

    Column j - 1 predicts token j from tokens 0 .. j-1. Positions past the model's training
    context are allowed (rotary positions extrapolate, well or not: that is measured).
    """
    x = np.asarray(tokens)
    out = []
    for start in range(0, len(x), EVAL_CHUNK):
        chunk = x[start:start + EVAL_CHUNK]
        logits = model.logits(chunk[:, :-1])
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        out.append(log_z - np.take_along_axis(logits, chunk[:, 1:, None], axis=-1)[..., 0])
    return np.concatenate(out)


def best_context_positions(context) -> int:
    """How many final positions of the training context the best-context loss averages."""
    context = _check_count(context, "context")
    return max(1, math.ceil(BEST_CONTEXT_FRACTION * context))


def _floats(value, name) -> np.ndarray:
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {value!r}") from None


def best_context_loss(curve, context: int) -> float:
    """Mean of a contextwise ``curve`` (per-position losses, position 1 first) over the last
    ``best_context_positions(context)`` positions of the training ``context``."""
    curve = _floats(curve, "curve")
    context = _check_count(context, "context")
    if curve.ndim != 1 or len(curve) < context:
        raise ValueError(f"curve must be 1-D with at least context={context} positions, "
                         f"got shape {curve.shape}")
    k = best_context_positions(context)
    return float(curve[context - k:context].mean())


class Adam:
    """Adam with bias correction, a linear warm-up, a constant rate after it, and the gradient
    clipped to a global norm (Kingma and Ba 2015)."""

    def __init__(self, params: dict, *, lr, beta1, beta2, eps, warmup_steps, clip_norm):
        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta1, beta2, eps
        self.warmup, self.clip = warmup_steps, clip_norm
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict) -> None:
        self.t += 1
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
        scale = min(1.0, self.clip / norm) if norm > 0 else 1.0
        lr = self.lr * min(1.0, self.t / self.warmup)
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        for k, p in self.params.items():
            g = grads[k] * scale
            m, v = self.m[k], self.v[k]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            p -= lr * (m / c1) / (np.sqrt(v / c2) + self.eps)


# -- one run ---------------------------------------------------------------------------------------
def _run_seed(base: int, kind: str, width: int, context: int) -> int:
    # One data stream per run, independent of which runs share a process or their order.
    return int(np.random.SeedSequence([base, KINDS.index(kind), width, context])
               .generate_state(1)[0])


def _init_seed(base: int, width: int) -> int:
    # Rotary positions leave no parameter that depends on the context: every context of one
    # width starts from the same weights, so their differences are not the luck of the draw.
    return int(np.random.SeedSequence([base, width]).generate_state(1)[0])


def beyond_length(context: int) -> int:
    """Positions of the curve measured beyond the training context: 4x it, at most EVAL_LEN."""
    return min(EVAL_LEN, 4 * _check_count(context, "context"))


def word_losses(n_words_seen) -> np.ndarray:
    """Expected optimal loss (nats) of the next word after ``n`` words of a document, n = 0, 1, ...

    A document's frequencies are Dirichlet(ALPHA) over N_WORDS words; after n words the count k
    of a given word is beta-binomial(n, ALPHA, (N_WORDS - 1) ALPHA), and the next word is that
    word with probability (ALPHA + k)/(N_WORDS ALPHA + n), the posterior it is predicted with:

        loss(n) = sum_k N_WORDS * P(k) * q_k * (-log q_k),   q_k = (ALPHA + k)/(N_WORDS ALPHA + n)

    ``loss(0) = log N_WORDS``; about (k - 1)/(2n) nats above the document's entropy later.
    """
    n_max = _check_count(n_words_seen, "n_words_seen")
    a, b = ALPHA, (N_WORDS - 1) * ALPHA
    # log-gamma tables over 0 .. n_max - 1, indexed below: n_max**2 calls of lgamma took 0.4 s
    i = np.arange(n_max, dtype=float)
    lgamma = np.vectorize(math.lgamma, otypes=[float])
    lg_1, lg_a, lg_b, lg_ab = lgamma(i + 1), lgamma(i + a), lgamma(i + b), lgamma(i + a + b)
    n = np.arange(n_max)[:, None]
    k = np.arange(n_max)[None, :]
    valid = k <= n
    kk, nk = np.where(valid, k, 0), np.where(valid, n - k, 0)
    log_pmf = (lg_1[n] - lg_1[kk] - lg_1[nk] + lg_a[kk] + lg_b[nk] - lg_ab[n]
               + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    q = (a + k) / (N_WORDS * a + n)
    terms = np.where(valid, N_WORDS * np.exp(log_pmf) * q * -np.log(q), 0.0)
    return terms.sum(axis=1)


def expected_bayes_curve(kind: str = "long", length: int = EVAL_LEN) -> np.ndarray:
    """The optimal loss at each context 1 .. ``length``, in expectation over documents, exactly.

    The floor of every contextwise curve, and the control variate of the measured ones (see
    :func:`train_run`). ``"long"``: :func:`word_losses` of the j - 1 words seen. ``"control"``:
    the same averaged over how many words of the current document the context holds (a
    renewal chain: after a separator a word; after a word the document ends with probability
    1/CONTROL_MEAN_WORDS), the document's ending priced in.
    """
    kind, length = _check_kind(kind), _check_count(length, "length")
    words = word_losses(length)
    if kind == "long":
        return words
    h = 1.0 / CONTROL_MEAN_WORDS
    after_word = h * -math.log(h) + (1.0 - h) * (-math.log(1.0 - h) + words)
    loss_at = np.concatenate([[math.log(N_WORDS)], after_word[1:]])  # k = 0 words, 1, 2, ...
    state = np.zeros(length)
    state[0] = 1.0                 # context 1: the separator alone
    out = np.empty(length)
    for j in range(length):
        out[j] = state @ loss_at
        nxt = np.zeros(length)
        nxt[1:] = state[:-1] * np.concatenate([[1.0], np.full(length - 2, 1.0 - h)])
        nxt[0] = h * state[1:].sum()
        state = nxt
    return out


def eval_set(kind: str = "long", *, seed: int = 0):
    """The held-out documents every model of a sweep is scored on, and the correction that
    turns a curve measured on them into the estimate :func:`train_run` stores.

    Returns ``(tokens, correction)``: ``EVAL_DOCS`` sequences of ``EVAL_LEN + 1`` tokens and
    ``expected_bayes_curve - (the optimal loss on these very tokens)``, per position.
    """
    tokens = documents(EVAL_DOCS, EVAL_LEN + 1, kind=kind,
                       seed=np.random.default_rng([seed, 5, KINDS.index(kind)]))
    on_these = bayes_losses(tokens, kind=kind).mean(axis=0)
    return tokens, expected_bayes_curve(kind, EVAL_LEN) - on_these


def train_run(width: int, context: int, *, kind: str = "long", budgets=(), steps=None,
              seed: int = 0, evaluation=None) -> dict:
    """Train one model and measure it at each FLOP budget it reaches (or after ``steps``).

    ``evaluation`` is :func:`eval_set`'s ``(tokens, correction)`` (computed when not given).
    Each curve is the model's mean loss per position on those tokens plus the correction: the
    model's excess over the optimum on the same tokens, added to the optimum's expectation. The
    two estimate the same thing, but the first carries the luck of 64 documents (about 0.1 nats
    per position) and the second mostly cancels it, since the model and the optimum are
    surprised by the same tokens (a control variate).

    Returns a dict: ``width``, ``context``, ``kind``, ``step_flops``, ``n_params``,
    ``checkpoints`` (one per budget reached: ``budget``, ``steps``, ``tokens``, ``flops``,
    ``train_loss`` — the mean batch loss of the last TRAIN_LOSS_STEPS steps —,
    ``best_context_loss``, ``curve`` over the training context), ``curve_beyond`` (after the
    last step, to ``beyond_length(context)`` positions) and ``seconds``.
    """
    from ..reference.model import ReferenceTransformer
    kind = _check_kind(kind)
    m = model_spec(width, context)
    if TOKENS_PER_STEP % context:
        raise ValueError(f"context must divide TOKENS_PER_STEP={TOKENS_PER_STEP}, got {context}")
    per_step = step_flops(width, context)
    if steps is None:
        budgets = sorted(float(b) for b in budgets)
        if not budgets or budgets[0] <= 0:
            raise ValueError(f"budgets must be FLOP counts > 0, got {budgets!r}")
        stops = [max(1, math.ceil(b / per_step)) for b in budgets]
    else:
        stops, budgets = [_check_count(steps, "steps")], [None]
    tokens, correction = eval_set(kind, seed=seed) if evaluation is None else evaluation

    def curve(length):
        return contextwise_loss(model, tokens[:, :length + 1]).mean(axis=0) \
            + correction[:length]

    rng = np.random.default_rng(_run_seed(seed, kind, width, context))
    model = ReferenceTransformer(m, seed=_init_seed(seed, width))
    opt = Adam(model.params, **ADAM)
    batch = TOKENS_PER_STEP // context
    losses, checkpoints = [], []
    start = time.perf_counter()
    for step in range(1, stops[-1] + 1):
        x = documents(batch, context + 1, kind=kind, seed=rng)
        loss, grads = model.train_step(x[:, :-1], x[:, 1:])
        opt.step(grads)
        losses.append(loss)
        if step in stops:
            c = curve(context)
            for budget, stop in zip(budgets, stops):
                if stop == step:
                    checkpoints.append({
                        "budget": budget, "steps": step, "tokens": step * TOKENS_PER_STEP,
                        "flops": step * per_step,
                        "train_loss": float(np.mean(losses[-TRAIN_LOSS_STEPS:])),
                        "best_context_loss": best_context_loss(c, context),
                        "curve": _rounded(c)})
    return {"width": width, "context": context, "kind": kind, "step_flops": per_step,
            "n_params": int(sum(p.size for p in model.params.values())),
            "checkpoints": checkpoints, "curve_beyond": _rounded(curve(beyond_length(context))),
            "seconds": round(time.perf_counter() - start, 2)}


def _rounded(values, digits: int = 5) -> list:
    return [round(float(v), digits) for v in values]


# -- the sweep -------------------------------------------------------------------------------------
def _plan(sweep: dict) -> list[dict]:
    """Every run of ``sweep`` with its budgets, the slowest first (so two workers finish
    together)."""
    runs = []
    for width, top in sweep["widths"].items():
        for context in sweep["contexts"]:
            runs.append({"width": int(width), "context": context, "kind": "long",
                         "budgets": [b for b in sweep["budgets"] if b <= top]})
    control = sweep["control"]
    for context in control["contexts"]:
        runs.append({"width": control["width"], "context": context, "kind": "control",
                     "budgets": [b for b in sweep["budgets"] if b <= control["max_budget"]]})
    # Time per step grows with width and, through the attention matrices, with context.
    return sorted(runs, key=lambda r: -r["budgets"][-1] / step_flops(r["width"], r["context"])
                  * r["width"] * (1 + r["context"] / 16))


def _worker(job):
    from ..measure import set_blas_threads
    set_blas_threads(1)  # reproducible (one BLAS kernel order) and two workers on two cores
    run, seed, evaluation = job
    return train_run(run["width"], run["context"], kind=run["kind"], budgets=run["budgets"],
                     seed=seed, evaluation=evaluation[run["kind"]])


def _provenance(config: dict) -> dict:
    from .. import __version__
    return {"package_version": __version__, "date": datetime.date.today().isoformat(),
            "python": platform.python_version(), "numpy": np.__version__,
            "machine": platform.machine(), "seed": config["seed"],
            "command": "python -m flopsbook.experiments.context",
            "data": {"n_words": N_WORDS, "alpha": ALPHA,
                     "control_mean_words": CONTROL_MEAN_WORDS},
            "model": {"n_layers": N_LAYERS, "d_head": D_HEAD, "positional": "rope",
                      "norm": "rmsnorm", "ffn": "gelu", "bias": False},
            "training": {"tokens_per_step": TOKENS_PER_STEP, "adam": ADAM,
                         "train_loss_steps": TRAIN_LOSS_STEPS},
            "evaluation": {"eval_docs": EVAL_DOCS, "eval_len": EVAL_LEN,
                           "best_context_fraction": BEST_CONTEXT_FRACTION},
            "sweep": {**config, "widths": {str(k): v for k, v in config["widths"].items()}}}


@contextlib.contextmanager
def _one_blas_thread():
    """One BLAS thread while the block runs (one kernel order: the check's last digits), then
    the count from before."""
    from ..measure import set_blas_threads
    previous = set_blas_threads(1)
    try:
        yield
    finally:
        if previous:
            set_blas_threads(previous)


def run_check(seed: int | None = None) -> dict:
    """The short ``CHECK`` configuration, from scratch: its losses after each step."""
    c = CHECK if seed is None else {**CHECK, "seed": seed}
    from ..reference.model import ReferenceTransformer
    rng = np.random.default_rng(_run_seed(c["seed"], c["kind"], c["width"], c["context"]))
    model = ReferenceTransformer(model_spec(c["width"], c["context"]),
                                 seed=_init_seed(c["seed"], c["width"]))
    opt = Adam(model.params, **ADAM)
    losses = []
    for _ in range(c["steps"]):
        x = documents(TOKENS_PER_STEP // c["context"], c["context"] + 1, kind=c["kind"],
                      seed=rng)
        loss, grads = model.train_step(x[:, :-1], x[:, 1:])
        opt.step(grads)
        losses.append(loss)
    held_out = documents(8, c["context"] + 1, kind=c["kind"], seed=c["seed"])
    return {**c, "losses": losses,
            "curve": contextwise_loss(model, held_out).mean(axis=0).tolist()}


def sweep(config: dict | None = None, *, jobs: int = 2, progress=None) -> dict:
    """Run every training run of ``config`` (default ``SWEEP``) on ``jobs`` processes.

    Returns the results (what ``RESULTS`` holds): ``provenance``, ``expected_bayes`` (the
    optimal curve of each kind), ``runs`` and ``check`` (:func:`run_check`'s numbers).
    """
    import multiprocessing
    config = SWEEP if config is None else config
    plan = _plan(config)
    evaluation = {kind: eval_set(kind, seed=config["seed"]) for kind in KINDS}
    jobs_ = [(run, config["seed"], evaluation) for run in plan]
    start = time.perf_counter()
    runs = []
    if jobs == 1:
        iterator = map(_worker, jobs_)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(jobs)
        iterator = pool.imap_unordered(_worker, jobs_)
    try:
        for run in iterator:
            runs.append(run)
            if progress:
                progress(f"{len(runs)}/{len(plan)}  {run['kind']:7s} d={run['width']:<3d} "
                         f"s={run['context']:<4d} {run['seconds']:6.1f} s  "
                         f"({time.perf_counter() - start:.0f} s)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    runs.sort(key=lambda r: (KINDS.index(r["kind"]), r["width"], r["context"]))
    with _one_blas_thread():
        check = run_check(config["seed"])
    return {"provenance": {**_provenance(config),
                           "wall_seconds": round(time.perf_counter() - start, 1),
                           "jobs": jobs},
            "expected_bayes": {kind: _rounded(expected_bayes_curve(kind, EVAL_LEN))
                               for kind in KINDS},
            "runs": runs, "check": check}


def compare_check(fresh: dict, stored: dict, *, rtol: float = CHECK_RTOL) -> None:
    """Raise ValueError naming the first of ``fresh``'s check numbers (:func:`run_check`) that
    differs from ``stored``'s by more than ``rtol`` (relative)."""
    for name in ("losses", "curve"):
        a, b = np.asarray(fresh[name], dtype=float), np.asarray(stored[name], dtype=float)
        if a.shape != b.shape:
            raise ValueError(f"the check run's {name} has shape {a.shape}, the stored {b.shape}")
        off = np.abs(a - b) > rtol * np.abs(b)
        if off.any():
            i = int(np.argmax(off))
            raise ValueError(f"the check run does not reproduce the stored {name} to "
                             f"rtol={rtol}: {name}[{i}] = {a[i]!r}, stored {b[i]!r}")


def check_reproduces(results: dict | None = None, *, rtol: float = CHECK_RTOL) -> dict:
    """Re-run the stored check configuration from scratch with one BLAS thread and compare
    (:func:`compare_check`). Returns the fresh numbers."""
    results = load_results() if results is None else results
    stored = results["check"]
    with _one_blas_thread():
        fresh = run_check(stored["seed"])
    compare_check(fresh, stored, rtol=rtol)
    return fresh


def load_results(path=None) -> dict:
    """The stored sweep (``RESULTS``), as :func:`sweep` returned it."""
    path = Path(RESULTS if path is None else path)
    if not path.is_file():
        raise ValueError(f"path: no results file at {path}; run "
                         f"`python -m flopsbook.experiments.context` to make one")
    return json.loads(path.read_text())


# -- reading the results --------------------------------------------------------------------------
def _runs(results, kind, width=None):
    kind = _check_kind(kind)
    runs = [r for r in results["runs"] if r["kind"] == kind
            and (width is None or r["width"] == width)]
    if not runs:
        widths = sorted({r["width"] for r in results["runs"] if r["kind"] == kind})
        raise ValueError(f"width must be one of the {kind!r} sweep's widths {widths}, "
                         f"got {width!r}")
    return sorted(runs, key=lambda r: r["context"])


def widths(results, kind: str = "long") -> list[int]:
    """The widths the sweep trained on ``kind`` data."""
    return sorted({r["width"] for r in _runs(results, kind)})


def grid(results, width: int, *, kind: str = "long", metric: str = "best_context_loss"):
    """One metric of every checkpoint of one width, as a table.

    Returns ``(budgets, contexts, values)``: the budgets some run of this width reached, the
    contexts, and ``values[i, j]`` of the run of context j at budget i (NaN where that run did
    not train so far). ``metric`` is a checkpoint's ``best_context_loss``, ``train_loss``,
    ``tokens`` or ``steps``.
    """
    metrics = ("best_context_loss", "train_loss", "tokens", "steps")
    if metric not in metrics:
        raise ValueError(f"metric must be one of {metrics}, got {metric!r}")
    runs = _runs(results, kind, width)
    budgets = sorted({c["budget"] for r in runs for c in r["checkpoints"]})
    contexts = [r["context"] for r in runs]
    values = np.full((len(budgets), len(contexts)), np.nan)
    for j, r in enumerate(runs):
        for c in r["checkpoints"]:
            values[budgets.index(c["budget"]), j] = c[metric]
    return np.array(budgets), np.array(contexts), values


@dataclass(frozen=True)
class OptimalContext:
    """The best training context of one width at each budget it reached.

    Attributes:
        width (int): d_model.
        budgets (numpy.ndarray): Training FLOPs.
        measured (numpy.ndarray): The trained context with the lowest best-context loss.
        fitted (numpy.ndarray): The minimum of a parabola in log2(context) through the three
            contexts around the measured best (the measured best where it is the shortest or
            longest context trained: the parabola would extrapolate).
        loss (numpy.ndarray): The lowest measured best-context loss (nats).
    """
    width: int
    budgets: np.ndarray
    measured: np.ndarray
    fitted: np.ndarray
    loss: np.ndarray


def comparable_budgets(results, width: int, *, kind: str = "long",
                       min_steps: int | None = None) -> np.ndarray:
    """The budgets at which every context of ``width`` trained and took at least ``min_steps``
    optimizer steps (default: the sweep's learning-rate warm-up). Before that a wide model has
    taken a handful of steps at a rate still ramping up, and its loss says nothing about its
    context."""
    if min_steps is None:
        min_steps = results["provenance"]["training"]["adam"]["warmup_steps"]
    min_steps = _check_count(min_steps, "min_steps", 0)
    budgets, _, steps = grid(results, width, kind=kind, metric="steps")
    keep = ~np.isnan(steps).any(axis=1)
    keep[keep] = steps[keep].min(axis=1) >= min_steps
    return budgets[keep]


def optimal_context(results, width: int, *, kind: str = "long",
                    min_steps: int | None = None) -> OptimalContext:
    """Where the U-curve of best-context loss against context bottoms out, budget by budget,
    at the :func:`comparable_budgets` of ``width`` (every context trained, warm-up over)."""
    budgets, contexts, values = grid(results, width, kind=kind)
    keep = np.isin(budgets, comparable_budgets(results, width, kind=kind, min_steps=min_steps))
    if not keep.any():
        raise ValueError(f"min_steps: no budget of width {width} has every context past "
                         f"{min_steps} steps")
    budgets, values = budgets[keep], values[keep]
    logs = np.log2(contexts)
    best = values.argmin(axis=1)
    fitted = []
    for i, j in enumerate(best):
        if 0 < j < len(contexts) - 1:
            c2, c1, _ = np.polyfit(logs[j - 1:j + 2], values[i, j - 1:j + 2], 2)
            fitted.append(2.0 ** (-c1 / (2 * c2)))  # a minimum between its neighbours
        else:
            fitted.append(float(contexts[j]))
    return OptimalContext(width, budgets, contexts[best], np.array(fitted),
                          values[np.arange(len(best)), best])


def predicted_best_context(budget, width: int, *, results=None, kind: str = "long"):
    """The training context this experiment's fitted curves pick for ``budget`` FLOPs.

    Interpolates log2 of :func:`optimal_context`'s ``fitted`` linearly in log10(budget) between
    the comparable budgets measured for ``width`` (warm-up left out); it does not extrapolate.

    Args:
        budget (float | array-like): Training FLOPs, within the measured budgets of ``width``.
        width (int): One of the sweep's widths.

    Keyword Args:
        results (dict | None): The sweep (default: the stored ``RESULTS``).
        kind (str): ``"long"`` (default) or ``"control"``.

    Returns:
        float | numpy.ndarray: Tokens of context.
    """
    results = load_results() if results is None else results
    opt = optimal_context(results, width, kind=kind)
    c = _floats(budget, "budget")
    lo, hi = opt.budgets[0], opt.budgets[-1]
    if not np.all(np.isfinite(c)) or np.any(c < lo * (1 - 1e-12)) or np.any(c > hi * (1 + 1e-12)):
        raise ValueError(f"budget must lie within the FLOPs measured for width {width}: "
                         f"[{lo:.3g}, {hi:.3g}], got {budget!r}")
    out = 2.0 ** np.interp(np.log10(c), np.log10(opt.budgets), np.log2(opt.fitted))
    return float(out) if out.ndim == 0 else out


def ranking_disagreements(results, width: int, budget: float, *, kind: str = "long"):
    """Pairs of contexts (a, b) at one budget whose average training loss ranks a above b
    (a lower) while their best-context loss ranks b above a: the training loss misleads."""
    budgets, contexts, best = grid(results, width, kind=kind)
    _, _, train = grid(results, width, kind=kind, metric="train_loss")
    hits = np.flatnonzero(np.isclose(budgets, budget))
    if not hits.size:
        raise ValueError(f"budget must be one of width {width}'s budgets "
                         f"{[float(b) for b in budgets]}, got {budget!r}")
    i = hits[0]
    pairs = []
    for a in range(len(contexts)):
        for b in range(len(contexts)):
            if (train[i, a] < train[i, b]) and (best[i, a] > best[i, b]):
                pairs.append((int(contexts[a]), int(contexts[b])))
    return pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flopsbook.experiments.context",
        description="Train the context-length sweep (about 7 minutes on two cores) and write "
                    "its results, or --check that the stored results reproduce.")
    parser.add_argument("--check", action="store_true",
                        help="re-run one short configuration from scratch and compare")
    parser.add_argument("--out", default=str(RESULTS), help="results file (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args(argv)
    if args.check:
        start = time.perf_counter()
        try:
            check_reproduces(load_results(args.out))
        except ValueError as err:
            print(f"check failed: {err}", file=sys.stderr)
            return 1
        print(f"check passed: {CHECK['steps']} steps of d={CHECK['width']}, "
              f"s={CHECK['context']} reproduce the stored losses to rtol={CHECK_RTOL} "
              f"({time.perf_counter() - start:.1f} s)")
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    results = sweep(jobs=args.jobs, progress=print)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) in "
          f"{results['provenance']['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
