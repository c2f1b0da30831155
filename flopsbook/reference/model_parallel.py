"""Tensor, sequence, pipeline and expert parallelism of the reference transformer, counted.

The model-parallel communication formulas (``flopsbook.tensor_parallel_bytes``,
``pipeline_p2p_bytes``, ``pipeline_bubble``, ``expert_parallel_bytes``) are derived from where
a split model must exchange data; this module splits the reference model
(:class:`~flopsbook.reference.ReferenceTransformer`) over simulated devices, runs a training
step with the collectives of :mod:`flopsbook.reference.collectives` (every message counted) and
returns the loss and the gradients, which must equal the single-device ``train_step``'s, so
the tests can hold the counts against the formulas. Like the rest of ``flopsbook.reference`` it
imports no formula module.

**Tensor parallelism** (:func:`tensor_parallel_step`, Megatron-LM's layout, Shoeybi et al.
2019). In every layer device r of t holds:

- of the attention: query heads ``r*n_heads/t .. (r+1)*n_heads/t - 1`` and the key/value heads
  they read (``n_kv_heads/t`` of them: query heads ``j*g .. j*g + g - 1`` share key/value head
  j, so consecutive query heads go with consecutive key/value heads): the matching columns of
  ``w_q``, ``w_k``, ``w_v`` and their biases (column-parallel) and rows of ``w_o``
  (row-parallel);
- of the FFN: columns ``r*d_ff/t ..`` of ``w_in`` (``w_gate`` and ``w_up``) and their biases,
  the same rows of ``w_out`` (``w_down``);
- whole: the two norms and the row-parallel projections' output biases (``b_o``, ``b_out`` /
  ``b_down``), which are added once, after the partial outputs are summed.

Each device computes with its own slices only (it runs the reference model's attention and FFN
with n_heads/t heads and d_ff/t hidden units), so each sublayer's output on a device is a
partial sum of the (b, s, d) result. Without sequence parallelism the layer's input is
replicated: the forward pass all-reduces each sublayer's partial output (Megatron's g), the
backward pass the partial gradient of each sublayer's input (its f). With sequence parallelism
(Korthikanti et al. 2022) the tokens, flattened in (batch, seq) order to b*s rows, are cut in
t equal consecutive slices (b*s must be a multiple of t; Megatron cuts its (s, b) layout along
s, the same thing in its order): device r keeps rows ``r*b*s/t ..`` of the residual stream and
runs the norms and residual adds on them. Forward: an all-gather of the norm's output before
each sublayer, a reduce-scatter of its partial output after; backward: an all-gather of the
sublayer output's gradient, a reduce-scatter of the partial gradient of its input, and, once
per layer, an all-reduce of the gradients of the parameters each device applied to its own
slice (the norms' gains and biases and the output biases, one buffer in that order), which are
partial sums. The sublayer keeps the gathered input for its backward pass (nothing is
gathered again).

Outside the layers nothing is split: every device holds the embeddings, the final norm and the
output layer and computes them on the whole batch (no vocabulary-parallel traffic). Without
sequence parallelism that costs no communication at all; with it the last layer's output
slices are all-gathered for the output layer (label ``"output forward"``) and the first
layer's input-gradient slices for the embedding's gradient (``"embedding backward"``).

**Pipeline parallelism** (:func:`pipeline_parallel_step`). The layers are cut in ``stages``
consecutive groups of n_layers/stages (stage 0 also holds the embeddings, the last stage the
final norm and the output layer, and with tied embeddings its own copy of the token
embedding, whose gradient the two stages all-reduce at the end of the step). The batch is cut
in ``micro_batches`` pieces; each forward sends the boundary activation to the next stage,
each backward its gradient to the previous one, one counted :class:`Message` each. Operations
run on a clock: a forward of one micro-batch on one stage takes ``forward_time`` units, a
backward ``backward_time``; each stage runs its operations in the schedule's order, each as
soon as the stage is free and its input has arrived (sends take no time). GPipe (Huang et al.
2019) runs all forwards, then all backwards; 1F1B (PipeDream-flush, Narayanan et al. 2021)
runs ``min(stages - 1 - i, micro_batches)`` forwards on stage i, then alternates one forward
and one backward, then finishes the backwards. The computation is carried out in the clock's
order, each stage keeping a micro-batch's activations from its forward to its backward, so
the peak number held (``peak_in_flight``) is counted, not assumed.

**Expert parallelism** (:func:`expert_parallel_dispatch`): the all-to-all dispatch and combine
of one MoE layer's tokens for a given routing, sizes as the routing makes them (an
all-to-all-v), counted.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .collectives import (Collective, Message, _count, _labelled, _Wire, all_gather, all_reduce,
                          reduce_scatter)
from .model import ReferenceTransformer, _sum_over_tokens, norm_backward, norm_forward

# Fields of the spec this module does not split (it handles the dense family only), with what
# makes them unsupported.
_UNSUPPORTED = (
    ("n_experts", lambda m: m.n_experts > 1, "a mixture of experts"),
    ("kv_lora_rank", lambda m: m.is_mla, "multi-head latent attention"),
    ("window", lambda m: m.window is not None, "local attention"),
    ("qk_norm", lambda m: m.qk_norm, "q/k norms"),
    ("post_norms", lambda m: m.post_norms, "post-norms"),
    ("attention_sinks", lambda m: m.attention_sinks, "attention sinks"),
)

# Layer parameters split over the tensor-parallel devices, by short name, and the axis cut:
# -1 for the column-parallel matrices and their biases (heads, hidden units), 0 for the
# row-parallel matrices. Everything else in a layer (norms, output biases) is held whole.
_SPLIT_AXIS = {"attn.w_q": -1, "attn.b_q": -1, "attn.w_k": -1, "attn.b_k": -1,
               "attn.w_v": -1, "attn.b_v": -1, "attn.w_o": 0,
               "ffn.w_in": -1, "ffn.b_in": -1, "ffn.w_out": 0,
               "ffn.w_gate": -1, "ffn.b_gate": -1, "ffn.w_up": -1, "ffn.b_up": -1,
               "ffn.w_down": 0}
# Row-parallel output biases: added once after the partial outputs are summed.
_OUTPUT_BIASES = ("attn.b_o", "ffn.b_out", "ffn.b_down")
_NORM_PARAMS = ("norm1.gain", "norm1.bias", "norm2.gain", "norm2.bias")


# -- input checks ----------------------------------------------------------------------------

def _check_model(model, name="model"):
    if not isinstance(model, ReferenceTransformer):
        raise ValueError(f"{name} must be a flopsbook.reference.ReferenceTransformer, "
                         f"got {type(model).__name__}")
    m = model.m
    for field, unsupported, what in _UNSUPPORTED:
        if unsupported(m):
            raise ValueError(f"model: {field}={getattr(m, field)!r} ({what}) is not simulated; "
                             "model parallelism is simulated for the dense family only (gelu, "
                             "swiglu, geglu; layernorm, rmsnorm; MHA, GQA; learned, rope or no "
                             "positions; tied or untied embeddings)")
    return m


def _check_batch(model, tokens, targets):
    tokens = model._check_tokens(tokens)
    targets = model._check_tokens(targets, "targets")
    if targets.shape != tokens.shape:
        raise ValueError(f"targets must have the shape of tokens {tokens.shape}, "
                         f"got {targets.shape}")
    model._check_positions(tokens.shape[1] - 1)
    return tokens, targets


def _bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _labelled_bytes(collectives, label, n, ranks=None):
    """Bytes each of n devices sent in the collectives whose label starts with ``label``;
    ``ranks[k]`` maps collective k's devices to the n (default: the same numbering)."""
    total = np.zeros(n, dtype=np.int64)
    for k, c in enumerate(collectives):
        if label is None or c.label.startswith(label):
            where = list(range(c.n_devices)) if ranks is None else list(ranks[k])
            np.add.at(total, where, c.bytes_sent())
    return total


# -- tensor (and sequence) parallelism -------------------------------------------------------

class TensorParallelStep(NamedTuple):
    """One training step (loss and gradients) of a tensor-parallel reference model.

    Attributes:
        loss (float): The mean loss over the batch (every device computes it whole).
        grads (dict[str, numpy.ndarray]): The full gradient, keyed like ``model.params``: the
            split parameters' gradients put together from the devices' slices, the others
            (identical on every device) from device 0.
        collectives (tuple[Collective, ...]): Every collective in order, labelled
            ``"layer {i} forward"`` or ``"layer {i} backward"`` (i from 0, as in the
            parameters' names ``layers.{i}.``), and with sequence parallelism
            ``"output forward"`` and ``"embedding backward"``.
        device_grads (tuple[dict, ...]): What each device ends the step holding: the
            gradients of its slices (keyed like ``model.params``, slices of the split ones)
            and of every parameter it holds whole.
        tp (int): Tensor-parallel devices.
        sequence_parallel (bool): Whether the tokens were split between the sublayers.
    """

    loss: float
    grads: dict
    collectives: tuple
    device_grads: tuple
    tp: int
    sequence_parallel: bool

    def bytes_sent(self, label=None) -> np.ndarray:
        """Bytes each device sent (only collectives whose label starts with ``label`` when
        given; ``"layer 0 "`` with the space, since ``"layer 1"`` also starts ``"layer 10"``)."""
        return _labelled_bytes(self.collectives, label, self.tp)

    @property
    def max_bytes_sent(self) -> int:
        """The busiest device's bytes over the whole step."""
        return int(self.bytes_sent().max(initial=0))

    def layer_bytes(self, layer) -> tuple[int, int]:
        """(forward, backward): the busiest device's bytes in layer ``layer`` (from 0), what
        ``tensor_parallel_bytes`` gives."""
        return tuple(int(self.bytes_sent(f"layer {layer} {kind}").max(initial=0))
                     for kind in ("forward", "backward"))


def _tp_device_params(layer_params, tp):
    """Each device's parameters of one layer (short names): its slices of the split ones and
    the norms whole; the output biases are left out (they are added after the reduction)."""
    devices = [{} for _ in range(tp)]
    for name, value in layer_params.items():
        if name in _OUTPUT_BIASES:
            continue
        if name in _SPLIT_AXIS:
            pieces = np.split(value, tp, axis=_SPLIT_AXIS[name])
        else:
            pieces = [value] * tp
        for d in range(tp):
            devices[d][name] = pieces[d].copy()  # a device's own memory: nothing shared
    return devices


def _device_model(m, tp):
    """A reference model whose shapes are one device's: n_heads/t query and n_kv_heads/t
    key/value heads of the full d_head, d_ff/t hidden units. Only its layer functions are used,
    always given a device's parameters; its own parameters are dropped."""
    shape = dataclasses.replace(m, n_heads=m.n_heads // tp, n_kv_heads=m.n_kv_heads // tp,
                                d_head=m.d_head, d_ff=m.d_ff // tp)
    device = ReferenceTransformer(shape)
    device.params = {}
    return device


def _embedding_backward(m, params, tokens, dx, grads):
    """The embeddings' gradients from the gradient dx (b, s, d) of the first layer's input, as
    :meth:`ReferenceTransformer.backward` computes them; adds to a tied table's head gradient."""
    d_tok = np.zeros_like(params["token_embedding"])
    np.add.at(d_tok, tokens, dx)
    grads["token_embedding"] = d_tok + grads.get("token_embedding", 0.0)
    if m.positional == "learned":
        d_pos = np.zeros_like(params["position_embedding"])
        d_pos[:tokens.shape[1]] = dx.sum(axis=0)
        grads["position_embedding"] = grads.get("position_embedding", 0.0) + d_pos


def tensor_parallel_step(model, tokens, targets, tp, *, sequence_parallel=False):
    """The loss and gradients of ``model`` on a batch, its layers split over ``tp`` devices.

    The layout is Megatron-LM's (see the module docstring): attention split by heads, the FFN
    by hidden units, one all-reduce after each sublayer in the forward pass and one for each
    sublayer's input gradient in the backward pass; with ``sequence_parallel`` an all-gather
    before and a reduce-scatter after each sublayer instead (and the reverse in the backward
    pass), plus one all-reduce per layer of the gradients of the norms and output biases. The
    embeddings, final norm and output layer are replicated. ``model`` is only read.

    Args:
        model (ReferenceTransformer): A dense reference model (gelu, swiglu or geglu FFN;
            layernorm or rmsnorm; MHA or GQA; learned, rope or no positions; biases or not;
            tied or untied embeddings).
        tokens (array-like): (batch, seq) token ids.
        targets (array-like): (batch, seq) next tokens.
        tp (int): Tensor-parallel devices t, a whole number >= 1 dividing ``n_heads``,
            ``n_kv_heads`` and ``d_ff``.

    Keyword Args:
        sequence_parallel (bool): Split the tokens between the sublayers (then batch * seq
            must be a multiple of ``tp``). Default False.

    Returns:
        TensorParallelStep: The loss, the gradients and every collective, labelled by layer.

    Raises:
        ValueError: If an argument is not valid, the model has a feature this simulation does
            not split (the message names the spec field), ``tp`` does not divide the heads or
            the FFN, or with ``sequence_parallel`` the tokens do not split evenly.
    """
    m = _check_model(model)
    t = _count("tp", tp)
    sp = _bool("sequence_parallel", sequence_parallel)
    for field in ("n_heads", "n_kv_heads", "d_ff"):
        if getattr(m, field) % t:
            raise ValueError(f"tp={t} must divide {field}={getattr(m, field)} (each device "
                             f"takes an equal share)")
    tokens, targets = _check_batch(model, tokens, targets)
    b, s = tokens.shape
    n_tok, d = b * s, m.d_model
    if sp and n_tok % t:
        raise ValueError(f"tokens: with sequence_parallel=True batch * seq = {n_tok} must be a "
                         f"multiple of tp={t} (each device takes an equal slice)")
    rows = n_tok // t
    positions = np.arange(s)
    params, kind = model.params, m.norm
    dev = _device_model(m, t)
    collectives = []
    device_grads = [{} for _ in range(t)]

    def full(x):  # a device's (b*s, d) rows as the (b, s, d) the sublayers take
        return x.reshape(b, s, d)

    def before_sublayer(h, label):
        """The sublayer's input on every device: h itself, or the gathered slices."""
        if not sp:
            return h
        ag = all_gather(h)
        collectives.append(_labelled(ag, label))
        return [full(o) for o in ag.outputs]

    def after_sublayer(partial, label):
        """The summed output: all of it on every device, or each device's slice."""
        if not sp:
            ar = all_reduce(partial)
            collectives.append(_labelled(ar, label))
            return list(ar.outputs)
        rs = reduce_scatter(partial)
        collectives.append(_labelled(rs, label))
        return [o.reshape(rows, d) for o in rs.outputs]

    # Embeddings: every device looks the whole batch up; with sequence parallelism it keeps its
    # own slice of the rows (cut locally, nothing sent).
    x_full = [model._embed(tokens, positions) for _ in range(t)]
    xs = ([x.reshape(n_tok, d)[r * rows:(r + 1) * rows] for r, x in enumerate(x_full)] if sp
          else x_full)

    tapes = []
    for i in range(m.n_layers):
        label = f"layer {i} forward"
        lp = model._layer(i)
        dp = _tp_device_params(lp, t)
        tape = {"params": dp, "x": xs}
        # Attention: norm (on the slice with SP), gather, heads, reduce (scatter).
        n1 = [norm_forward(kind, x, lp["norm1.gain"], lp.get("norm1.bias"), "forward")
              for x in xs]
        h1 = before_sublayer([h for h, _ in n1], label)
        attn = [dev._attention_forward(i, dp[r], h1[r], positions, "forward") for r in range(t)]
        for r, (_, attn_tape) in enumerate(attn):
            attn_tape["norm1_output"] = h1[r]  # the q, k, v weights' gradient reads it
        a = after_sublayer([out for out, _ in attn], label)
        if "attn.b_o" in lp:
            a = [y + lp["attn.b_o"] for y in a]
        x2 = [x + y for x, y in zip(xs, a)]
        # FFN: the same pattern.
        n2 = [norm_forward(kind, x, lp["norm2.gain"], lp.get("norm2.bias"), "forward")
              for x in x2]
        h2 = before_sublayer([h for h, _ in n2], label)
        ffn = [dev._ffn_forward(dp[r], h2[r], "ffn", "forward") for r in range(t)]
        f = after_sublayer([out for out, _ in ffn], label)
        bias = lp.get("ffn.b_out", lp.get("ffn.b_down"))
        if bias is not None:
            f = [y + bias for y in f]
        xs = [x + y for x, y in zip(x2, f)]
        tape.update(n1=[st for _, st in n1], h1=h1, attn=[own for _, own in attn], x2=x2,
                    n2=[st for _, st in n2], h2=h2, ffn=[own for _, own in ffn])
        tapes.append(tape)

    # The output layer, on every device, on the whole batch.
    if sp:
        ag = all_gather(xs)
        collectives.append(_labelled(ag, "output forward"))
        xs = [full(o) for o in ag.outputs]
    heads = [model._head_forward(x, targets) for x in xs]
    loss = heads[0][0]
    dxs = [model._head_backward(head_tape, device_grads[r])
           for r, (_, head_tape) in enumerate(heads)]
    if sp:
        dxs = [dx.reshape(n_tok, d)[r * rows:(r + 1) * rows] for r, dx in enumerate(dxs)]

    def before_sublayer_backward(dy, label):
        """The sublayer output's gradient whole on every device (gathered with SP)."""
        if not sp:
            return dy
        ag = all_gather(dy)
        collectives.append(_labelled(ag, label))
        return [full(o) for o in ag.outputs]

    for i in reversed(range(m.n_layers)):
        pre, label, tape = f"layers.{i}.", f"layer {i} backward", tapes[i]
        lp, dp = model._layer(i), tape["params"]
        # Each device's gradients of the parameters it holds whole, under short names; with
        # SP they are partial sums over its own slice of the tokens.
        whole = [{} for _ in range(t)]

        def through_norm(norm, inputs, stats, dh, residual):
            """Each device's gradient through a block's norm, added to the residual path's; the
            norm's own gradients go to ``whole``."""
            out = []
            for r in range(t):
                dn, dgain, dbias = norm_backward(kind, inputs[r], stats[r], lp[f"{norm}.gain"],
                                                 f"{norm}.bias" in lp, dh[r])
                whole[r][f"{norm}.gain"] = dgain
                if dbias is not None:
                    whole[r][f"{norm}.bias"] = dbias
                out.append(residual[r] + dn)
            return out
        # FFN: out = x2 + ffn(norm2(x2)) + bias.
        if "ffn.b_out" in lp or "ffn.b_down" in lp:
            name = "ffn.b_out" if "ffn.b_out" in lp else "ffn.b_down"
            for r in range(t):
                whole[r][name] = _sum_over_tokens(dxs[r])
        dff = before_sublayer_backward(dxs, label)
        dh2 = after_sublayer([dev._ffn_backward(dp[r], "ffn", tape["h2"][r], tape["ffn"][r],
                                                dff[r], device_grads[r], pre)
                              for r in range(t)], label)
        dx2 = through_norm("norm2", tape["x2"], tape["n2"], dh2, dxs)
        # Attention: x2 = x + attention(norm1(x)) + b_o.
        if "attn.b_o" in lp:
            for r in range(t):
                whole[r]["attn.b_o"] = _sum_over_tokens(dx2[r])
        da = before_sublayer_backward(dx2, label)
        dh1 = after_sublayer([dev._attention_backward(i, dp[r], tape["attn"][r], da[r],
                                                      positions, device_grads[r], pre)
                              for r in range(t)], label)
        dxs = through_norm("norm1", tape["x"], tape["n1"], dh1, dx2)
        names = [n for n in _NORM_PARAMS + _OUTPUT_BIASES if n in whole[0]]
        if sp:
            # Partial sums over the slices: one all-reduce of them all, in a fixed order.
            ar = all_reduce([np.concatenate([w[n] for n in names]) for w in whole])
            collectives.append(_labelled(ar, label))
            sizes = np.cumsum([whole[0][n].size for n in names])[:-1]
            whole = [dict(zip(names, np.split(o, sizes))) for o in ar.outputs]
        for r in range(t):
            device_grads[r].update({pre + n: whole[r][n] for n in names})

    if sp:
        ag = all_gather(dxs)
        collectives.append(_labelled(ag, "embedding backward"))
        dxs = [full(o) for o in ag.outputs]
    for r in range(t):
        _embedding_backward(m, params, tokens, dxs[r], device_grads[r])
        device_grads[r] = {k: device_grads[r][k] for k in params}  # the params' order

    grads = {}
    for name in params:
        short = name.split(".", 2)[-1] if name.startswith("layers.") else name
        if name.startswith("layers.") and short in _SPLIT_AXIS:
            grads[name] = np.concatenate([g[name] for g in device_grads],
                                         axis=_SPLIT_AXIS[short])
        else:
            grads[name] = device_grads[0][name].copy()
    return TensorParallelStep(float(loss), grads, tuple(collectives), tuple(device_grads), t, sp)


# -- pipeline parallelism --------------------------------------------------------------------

PIPELINE_SCHEDULES = ("gpipe", "1f1b")


class PipelineOp(NamedTuple):
    """One operation of a stage: the forward ("F") or backward ("B") of one micro-batch.

    Attributes:
        kind (str): ``"F"`` or ``"B"``.
        micro_batch (int): The micro-batch, from 0.
        start (int): Clock time it starts.
        end (int): Clock time it ends.
    """

    kind: str
    micro_batch: int
    start: int
    end: int


class PipelineStep(NamedTuple):
    """One training step (loss and gradients) of a pipeline-parallel reference model.

    Attributes:
        loss (float): The batch's mean loss (the micro-batches' means weighted by their
            tokens).
        grads (dict[str, numpy.ndarray]): The full gradient, keyed like ``model.params``
            (each parameter from the stage that holds it; the tied embedding after its
            all-reduce).
        messages (tuple[Message, ...]): The point-to-point sends in clock order: ``what`` is
            ``"forward micro-batch j"`` (activations, stage i to i + 1) or
            ``"backward micro-batch j"`` (their gradients, i + 1 to i); ``step`` is the clock
            time of the send, ``chunk`` the micro-batch.
        collectives (tuple[Collective, ...]): The tied embedding's gradient all-reduce
            between the first and the last stage (label ``"embedding"``), if any.
        collective_stages (tuple[tuple[int, ...], ...]): For each collective, the stage of
            each of its devices.
        schedule (tuple[tuple[PipelineOp, ...], ...]): For each stage, its operations in the
            order run, with their clock times.
        peak_in_flight (tuple[int, ...]): For each stage, the most micro-batches whose
            activations it held at once (forward started, backward not finished).
        stage_layers (tuple[range, ...]): The layers of each stage.
        forward_time (int): Clock units of one micro-batch's forward on one stage.
        backward_time (int): Clock units of one micro-batch's backward on one stage.
    """

    loss: float
    grads: dict
    messages: tuple
    collectives: tuple
    collective_stages: tuple
    schedule: tuple
    peak_in_flight: tuple
    stage_layers: tuple
    forward_time: int
    backward_time: int

    @property
    def stages(self) -> int:
        """Pipeline stages p."""
        return len(self.schedule)

    def bytes_sent(self, label=None) -> np.ndarray:
        """Bytes each stage sent: its messages (``what`` starting with ``label`` when given:
        ``"forward"``, ``"backward"``, ``"forward micro-batch 0"``) and collectives (label
        ``"embedding"``)."""
        total = np.zeros(self.stages, dtype=np.int64)
        for msg in self.messages:
            if label is None or msg.what.startswith(label):
                total[msg.sender] += msg.n_bytes
        return total + _labelled_bytes(self.collectives, label, self.stages,
                                       self.collective_stages)

    @property
    def max_bytes_sent(self) -> int:
        """The busiest stage's bytes over the whole step."""
        return int(self.bytes_sent().max(initial=0))

    @property
    def makespan(self) -> int:
        """Clock time from the first operation's start to the last one's end."""
        return max(op.end for ops in self.schedule for op in ops)

    @property
    def busy_time(self) -> np.ndarray:
        """Time each stage computes: micro_batches * (forward_time + backward_time)."""
        return np.array([sum(op.end - op.start for op in ops) for ops in self.schedule])

    @property
    def idle_time(self) -> np.ndarray:
        """Time each stage waits within the step (the makespan less its busy time)."""
        return self.makespan - self.busy_time

    @property
    def bubble(self) -> np.ndarray:
        """Each stage's idle time over its busy time: the bubble relative to the ideal."""
        return self.idle_time / self.busy_time


def stage_order(schedule, stages, stage, micro_batches):
    """The order a stage runs its operations in: a list of ("F" | "B", micro_batch).

    Args:
        schedule (str): ``"gpipe"`` (every forward, then every backward, micro-batches in
            order) or ``"1f1b"`` (``w = min(stages - 1 - stage, micro_batches)`` forwards, then
            forward w + k and backward k for k = 0, 1, ..., then the remaining backwards).
        stages (int): Pipeline stages p, >= 1.
        stage (int): The stage, 0 <= stage < stages.
        micro_batches (int): Micro-batches m, >= 1.

    Returns:
        list[tuple[str, int]]: The stage's 2m operations.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    if not isinstance(schedule, str) or schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule must be one of {PIPELINE_SCHEDULES}, got {schedule!r}")
    p, k = _count("stages", stages), _count("micro_batches", micro_batches)
    i = _count("stage", stage, minimum=0)
    if i >= p:
        raise ValueError(f"stage must be a stage, 0 <= stage < stages={p}, got {stage!r}")
    if schedule == "gpipe":
        return [("F", j) for j in range(k)] + [("B", j) for j in range(k)]
    warmup = min(p - 1 - i, k)
    ops = [("F", j) for j in range(warmup)]
    for j in range(k - warmup):
        ops += [("F", warmup + j), ("B", j)]
    return ops + [("B", j) for j in range(k - warmup, k)]


def pipeline_schedule(schedule, stages, micro_batches, *, forward_time=1, backward_time=2):
    """Every stage's operations with their clock times (no computation: the timing alone).

    Each stage runs its operations in :func:`stage_order`'s order, each as soon as the stage
    is free and its input is there: a forward needs the previous stage's forward of the
    micro-batch, a backward the next stage's backward (on the last stage its own forward).
    Sends take no time. With p stages, m micro-batches, forward F and backward B units, both
    schedules end at (m + p - 1)(F + B): each stage idles (p - 1)(F + B) against its m(F + B)
    of work, the bubble (p - 1)/m of ``pipeline_bubble`` (the tests check this over a grid).

    Args:
        schedule (str): ``"gpipe"`` or ``"1f1b"``.
        stages (int): Pipeline stages p, >= 1.
        micro_batches (int): Micro-batches m, >= 1.

    Keyword Args:
        forward_time (int): Clock units of one forward, >= 1. Default 1.
        backward_time (int): Clock units of one backward, >= 1. Default 2.

    Returns:
        tuple[tuple[PipelineOp, ...], ...]: For each stage, its operations in the order run.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    p = _count("stages", stages)
    forward_time = _count("forward_time", forward_time)
    backward_time = _count("backward_time", backward_time)
    orders = [stage_order(schedule, p, i, micro_batches) for i in range(p)]
    end, free, nxt = {}, [0] * p, [0] * p
    schedule = [[] for _ in range(p)]
    while any(nxt[i] < len(orders[i]) for i in range(p)):
        progressed = False
        for i in range(p):
            while nxt[i] < len(orders[i]):
                kind, j = orders[i][nxt[i]]
                if kind == "F":
                    dep = (i - 1, "F", j) if i > 0 else None
                else:
                    dep = (i + 1, "B", j) if i < p - 1 else (i, "F", j)
                if dep is not None and dep not in end:
                    break  # wait for the input; the other stages go on
                start = max(free[i], end[dep] if dep else 0)
                free[i] = end[(i, kind, j)] = start + (forward_time if kind == "F"
                                                       else backward_time)
                schedule[i].append(PipelineOp(kind, j, start, free[i]))
                nxt[i] += 1
                progressed = True
        if not progressed:
            raise AssertionError("the schedule deadlocks")  # a bug in stage_order, not input
    return tuple(tuple(ops) for ops in schedule)


def pipeline_parallel_step(model, tokens, targets, stages, *, micro_batches, schedule="1f1b",
                           forward_time=1, backward_time=2):
    """The loss and gradients of ``model`` on a batch, its layers split over ``stages``.

    Stage i holds layers ``i*L/p .. (i+1)*L/p - 1`` (stage 0 the embeddings too, the last the
    final norm and output layer). The batch's sequences are cut in ``micro_batches`` pieces
    (``np.array_split``, as :func:`~flopsbook.reference.collectives.data_parallel_step`
    does), each micro-batch's gradient (of its own mean loss) weighted by its share of the
    tokens, so the sum is the gradient of the whole batch's mean loss. The clock, the
    schedules and what is counted are described in the module docstring. ``model`` is
    restored afterwards (its ``params`` are swapped for each stage's own while the stage
    computes, so a stage can read no other stage's parameters).

    Args:
        model (ReferenceTransformer): A dense reference model (as for
            :func:`tensor_parallel_step`).
        tokens (array-like): (batch, seq) token ids.
        targets (array-like): (batch, seq) next tokens.
        stages (int): Pipeline stages p, a whole number >= 1 dividing ``n_layers``.

    Keyword Args:
        micro_batches (int): Micro-batches m, 1 <= m <= batch.
        schedule (str): ``"1f1b"`` (the default) or ``"gpipe"``.
        forward_time (int): Clock units of one micro-batch's forward on a stage, >= 1.
            Default 1.
        backward_time (int): Clock units of its backward, >= 1. Default 2.

    Returns:
        PipelineStep: Loss, gradients, the messages, the schedule and the activations held.

    Raises:
        ValueError: If an argument is not valid, the model has a feature this simulation does
            not split, ``stages`` does not divide the layers, or the batch has fewer sequences
            than ``micro_batches``; the message names the argument.
    """
    m = _check_model(model)
    p = _count("stages", stages)
    k = _count("micro_batches", micro_batches)
    if not isinstance(schedule, str) or schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"schedule must be one of {PIPELINE_SCHEDULES}, got {schedule!r}")
    f_time, b_time = _count("forward_time", forward_time), _count("backward_time", backward_time)
    if m.n_layers % p:
        raise ValueError(f"stages={p} must divide n_layers={m.n_layers} (equal stages)")
    tokens, targets = _check_batch(model, tokens, targets)
    if tokens.shape[0] < k:
        raise ValueError(f"tokens: a batch of {tokens.shape[0]} sequences cannot feed "
                         f"micro_batches={k} micro-batches")
    s = tokens.shape[1]
    positions = np.arange(s)
    per = m.n_layers // p
    layers = tuple(range(i * per, (i + 1) * per) for i in range(p))
    pieces = list(zip(np.array_split(tokens, k), np.array_split(targets, k)))
    weights = [x.size / tokens.size for x, _ in pieces]

    # Each stage's own parameters (copies): a tied table lives on the first and last stages.
    original = model.params
    owned = [{} for _ in range(p)]
    for name, value in original.items():
        if name.startswith("layers."):
            owners = [int(name.split(".")[1]) // per]
        elif name in ("token_embedding", "position_embedding"):
            owners = [0] + ([p - 1] if name == "token_embedding" and m.tied_embeddings else [])
        else:  # final norm, output embedding
            owners = [p - 1]
        for i in set(owners):
            owned[i][name] = value.copy()

    timed = pipeline_schedule(schedule, p, k, forward_time=f_time, backward_time=b_time)
    grads = [{} for _ in range(p)]
    held = [{} for _ in range(p)]   # micro-batch -> its tapes, from forward to backward
    peak = [0] * p
    inbox, messages, loss = {}, [], 0.0

    def accumulate(stage, new, weight=1.0):
        for name, g in new.items():
            grads[stage][name] = grads[stage].get(name, 0.0) + weight * g

    # Operations in clock order: an input is always computed before it is needed.
    events = sorted((op.start, i, op) for i, ops in enumerate(timed) for op in ops)
    try:
        for _, i, op in events:
            j = op.micro_batch
            x_tok, y_tok = pieces[j]
            model.params = owned[i]
            if op.kind == "F":
                x = model._embed(x_tok, positions) if i == 0 else inbox.pop((i, "F", j))
                tapes = []
                for layer in layers[i]:
                    x, tape = model._layer_forward(layer, x, positions)
                    tapes.append(tape)
                if i == p - 1:
                    mb_loss, head = model._head_forward(x, y_tok)
                    loss += weights[j] * mb_loss
                    tapes.append(head)
                else:
                    inbox[(i + 1, "F", j)] = _send(messages, op.end, i, i + 1, x,
                                                   f"forward micro-batch {j}", j)
                held[i][j] = tapes
                peak[i] = max(peak[i], len(held[i]))
            else:
                tapes = held[i].pop(j)
                if i == p - 1:
                    head_grads = {}
                    dx = weights[j] * model._head_backward(tapes.pop(), head_grads)
                    accumulate(i, head_grads, weights[j])
                else:
                    dx = inbox.pop((i, "B", j))
                for layer, tape in zip(reversed(layers[i]), reversed(tapes)):
                    layer_grads = {}
                    dx = model._layer_backward(layer, tape, dx, positions, layer_grads)
                    accumulate(i, layer_grads)
                if i == 0:
                    emb = {}
                    _embedding_backward(m, owned[0], x_tok, dx, emb)
                    accumulate(0, emb)
                else:
                    inbox[(i - 1, "B", j)] = _send(messages, op.end, i, i - 1, dx,
                                                   f"backward micro-batch {j}", j)
    finally:
        model.params = original

    collectives, collective_stages = [], []
    if m.tied_embeddings and p > 1:
        # The first stage's gradient (the lookup) and the last's (the logits) are two parts of
        # one table's gradient: both stages hold the table, so both need the sum.
        ar = all_reduce([grads[0]["token_embedding"], grads[p - 1]["token_embedding"]])
        collectives.append(_labelled(ar, "embedding"))
        collective_stages.append((0, p - 1))
        grads[0]["token_embedding"] = ar.outputs[0]
        grads[p - 1]["token_embedding"] = ar.outputs[1]
    full = {}
    for name in original:
        owner = next(i for i in range(p) if name in owned[i])
        full[name] = np.asarray(grads[owner][name], dtype=original[name].dtype)
    messages.sort(key=lambda msg: msg.step)
    return PipelineStep(float(loss), full, tuple(messages), tuple(collectives),
                        tuple(collective_stages),
                        timed, tuple(peak), layers, f_time, b_time)


def _send(messages, time, sender, receiver, array, what, micro_batch):
    """A point-to-point send between stages: the receiver's own copy, the message counted."""
    messages.append(Message(int(time), sender, receiver, int(array.nbytes), what, micro_batch))
    return array.copy()


def schedule_table(step):
    """A pipeline step's schedule as rows for a diagram (a Gantt chart: one row per stage).

    Args:
        step (PipelineStep): A result of :func:`pipeline_parallel_step`.

    Returns:
        list[tuple[int, str, int, int, int]]: ``(stage, kind, micro_batch, start, end)`` for
        every operation, by stage and then by start time.

    Raises:
        ValueError: If ``step`` is not a :class:`PipelineStep`.
    """
    if not isinstance(step, PipelineStep):
        raise ValueError(f"step must be a PipelineStep, got {type(step).__name__}")
    return [(i, op.kind, op.micro_batch, op.start, op.end)
            for i, ops in enumerate(step.schedule) for op in ops]


# -- expert parallelism ----------------------------------------------------------------------

class ExpertParallelStep(NamedTuple):
    """One MoE layer's tokens sent to their experts' devices and back, every message counted.

    Attributes:
        outputs (tuple[numpy.ndarray, ...]): Each device's combined output, (tokens, d): every
            token's sum of routing weight times its experts' outputs.
        input_grads (tuple[numpy.ndarray, ...] | None): Each device's gradient of its tokens,
            (tokens, d), when ``grad_output`` was given.
        collectives (tuple[Collective, ...]): The all-to-alls in order, labelled
            ``"forward dispatch"`` (token rows to the experts), ``"forward combine"`` (expert
            outputs back), and with ``grad_output`` ``"backward combine"`` (the outputs'
            gradients to the experts) and ``"backward dispatch"`` (the rows' gradients back).
        ep (int): Expert-parallel devices.
    """

    outputs: tuple
    input_grads: tuple | None
    collectives: tuple
    ep: int

    def bytes_sent(self, label=None) -> np.ndarray:
        """Bytes each device sent (only collectives whose label starts with ``label`` when
        given: ``"forward"``, ``"backward"``, ``"forward dispatch"``, ...)."""
        return _labelled_bytes(self.collectives, label, self.ep)

    @property
    def max_bytes_sent(self) -> int:
        """The busiest device's bytes over the layer, forward and backward."""
        return int(self.bytes_sent().max(initial=0))


def _all_to_all_v(pieces, label):
    """An all-to-all of uneven pieces (``pieces[r][q]``: the rows device r sends device q; it
    keeps its own), pairwise as :func:`~flopsbook.reference.collectives.all_to_all`: in step
    t device r sends straight to device (r + t + 1) mod n. Returns what each device received
    (``received[q][r]``, from device r) and the counted :class:`Collective`."""
    n = len(pieces)
    wire = _Wire(n)
    received = [[pieces[q][q] if r == q else None for r in range(n)] for q in range(n)]
    for t in range(n - 1):
        for r in range(n):
            q = (r + t + 1) % n
            received[q][r] = wire.send(t, r, q, pieces[r][q], f"rows for device {q}", q)
    largest = max(sum(int(a.nbytes) for a in row) for row in pieces)
    outputs = tuple(np.concatenate(row) for row in received)
    return received, Collective("all-to-all", "ring", n, largest, largest, outputs,
                                tuple(wire.messages), label)


def _stacked(name, value, shape, integer=False):
    arr = np.asarray(value)
    kind_ok = (np.issubdtype(arr.dtype, np.integer) if integer
               else np.issubdtype(arr.dtype, np.floating))
    if not kind_ok or arr.dtype == np.bool_:
        raise ValueError(f"{name} must hold {'integers' if integer else 'floats'}, "
                         f"got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def expert_parallel_dispatch(x, experts, weights, expert_weights, ep, *, grad_output=None):
    """One MoE layer over ``ep`` devices: dispatch, the experts, combine (and the backward).

    Device r holds the tokens ``x[r]`` and the experts ``r*E/ep .. (r+1)*E/ep - 1`` (E =
    ``len(expert_weights)``). Each token's ``top_k`` (token, expert) slots are sent, one row of
    d values each, to the devices of their experts (an all-to-all with pieces as large as the
    routing makes them; a device keeps the rows for its own experts), each expert applies its
    matrix (a linear expert, ``y = row @ expert_weights[e]``: the communication, not the FFN,
    is the point), and the outputs go back the same way to be summed with the routing weights.
    With ``grad_output`` the backward pass follows: each slot's output gradient (times its
    weight) goes to its expert's device, the expert computes the row's gradient and it comes
    back, the reverse of the forward's two all-to-alls. The routing itself (which rows are
    for which expert, a few integers per row) travels with the rows and is not counted, as
    the formula counts activations only; the routing weights' gradient is local and left out.

    With every device's slots spread evenly over the devices, each device sends (ep - 1)/ep
    of its tokens * top_k rows in each all-to-all: ``expert_parallel_bytes``. An unbalanced
    routing makes the busiest device send (or receive, and then send back) more.

    Args:
        x (array-like): (ep, tokens, d) floats: each device's tokens.
        experts (array-like): (ep, tokens, top_k) integers in [0, E): each slot's expert.
        weights (array-like): (ep, tokens, top_k) floats: each slot's routing weight.
        expert_weights (array-like): (E, d, d) floats: each expert's matrix; ep divides E.
        ep (int): Expert-parallel devices, a whole number >= 1.

    Keyword Args:
        grad_output (array-like | None): (ep, tokens, d) floats, the gradient of the combined
            outputs: run the backward pass too. Default None.

    Returns:
        ExpertParallelStep: The outputs, the input gradients and the all-to-alls.

    Raises:
        ValueError: If an argument is not valid or ``ep`` does not divide the experts; the
            message names the argument.
    """
    n = _count("ep", ep)
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] != n:
        raise ValueError(f"x must be an (ep={n}, tokens, d) array, got shape {x.shape}")
    x = _stacked("x", x, x.shape)
    _, n_tok, d = x.shape
    experts = np.asarray(experts)
    if experts.ndim != 3 or experts.shape[:2] != (n, n_tok) or experts.shape[2] < 1:
        raise ValueError(f"experts must be an (ep, tokens, top_k) = ({n}, {n_tok}, k) array, "
                         f"got shape {experts.shape}")
    experts = _stacked("experts", experts, experts.shape, integer=True)
    weights = _stacked("weights", weights, experts.shape)
    w_exp = np.asarray(expert_weights)
    if w_exp.ndim != 3 or w_exp.shape[1:] != (d, d):
        raise ValueError(f"expert_weights must be an (n_experts, d, d) array with d={d}, "
                         f"got shape {w_exp.shape}")
    w_exp = _stacked("expert_weights", w_exp, w_exp.shape)
    n_experts = w_exp.shape[0]
    if n_experts % n:
        raise ValueError(f"ep={n} must divide the n_experts={n_experts} of expert_weights")
    if experts.min(initial=0) < 0 or experts.max(initial=0) >= n_experts:
        raise ValueError(f"experts must be in [0, n_experts={n_experts})")
    if grad_output is not None:
        grad_output = _stacked("grad_output", grad_output, x.shape)
    per = n_experts // n
    top_k = experts.shape[2]

    # Device r's slots, grouped by destination device (by expert inside, tokens in order).
    routes = []
    for r in range(n):
        flat = experts[r].reshape(-1)
        order = np.argsort(flat, kind="stable")
        dest = flat[order] // per
        routes.append([order[dest == q] for q in range(n)])  # slot indices for device q

    def rows_of(r, q, values):  # values: (tokens, d); one row per slot (token = slot // top_k)
        return values[routes[r][q] // top_k]

    collectives = []
    received, c = _all_to_all_v([[rows_of(r, q, x[r]) for q in range(n)] for r in range(n)],
                                "forward dispatch")
    collectives.append(c)
    # The experts of device q on the rows it received from each device r.
    slot_expert = [[experts[r].reshape(-1)[routes[r][q]] for r in range(n)] for q in range(n)]
    y = [[np.einsum("nd,nde->ne", received[q][r], w_exp[slot_expert[q][r]])
          for r in range(n)] for q in range(n)]
    back, c = _all_to_all_v([[y[q][r] for r in range(n)] for q in range(n)], "forward combine")
    collectives.append(c)
    outputs = []
    for r in range(n):
        out = np.zeros((n_tok, d), dtype=x.dtype)
        for q in range(n):
            slots = routes[r][q]
            np.add.at(out, slots // top_k, weights[r].reshape(-1)[slots][:, None] * back[r][q])
        outputs.append(out)

    input_grads = None
    if grad_output is not None:
        # d out / d y_slot = weight: each slot's output gradient goes to its expert's device.
        dy = [[weights[r].reshape(-1)[routes[r][q]][:, None] * rows_of(r, q, grad_output[r])
               for q in range(n)] for r in range(n)]
        got, c = _all_to_all_v(dy, "backward combine")
        collectives.append(c)
        drows = [[np.einsum("ne,nde->nd", got[q][r], w_exp[slot_expert[q][r]])
                  for r in range(n)] for q in range(n)]
        back, c = _all_to_all_v([[drows[q][r] for r in range(n)] for q in range(n)],
                                "backward dispatch")
        collectives.append(c)
        input_grads = []
        for r in range(n):
            dx = np.zeros((n_tok, d), dtype=x.dtype)
            for q in range(n):
                np.add.at(dx, routes[r][q] // top_k, back[r][q])
            input_grads.append(dx)
        input_grads = tuple(input_grads)
    return ExpertParallelStep(tuple(outputs), input_grads, tuple(collectives), n)
