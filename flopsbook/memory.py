"""Memory budgets for training. Derived in the chapter "Memory budgets for training".

Two formulas: the *model states* (weights, fp32 master weights, gradients, optimizer states) of
``training_memory``, per device, with ZeRO sharding; and the *activations* kept for the
backward pass of ``activation_memory`` (per layer, by tensor, in ``activation_breakdown``),
following Korthikanti et al. (2022). ``memory_budget`` adds them up for one training step,
with the logits and an allowance for buffers, and ``largest_micro_batch`` finds the largest
micro-batch that fits a device. All results are bytes, float64.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ._validate import as_array, as_bool, as_spec, choice, formula, result, shown
from .spec import GATED_FFN_KINDS

# Bytes per value of each storage format.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# precision -> (bytes of the working weights, bytes of the master copy, bytes of each optimizer
# state). "mixed" is Micikevicius et al. (2018) as ZeRO counts it: 16-bit weights for forward and
# backward, an fp32 master copy that the optimizer updates, fp32 optimizer states. "bf16" is
# pure 16-bit training: no master copy, 16-bit optimizer states too.
PRECISIONS = {"fp32": (4, 0, 4), "mixed": (2, 4, 4), "bf16": (2, 0, 2)}

# Optimizer states per parameter (values, not bytes): Adam keeps two moments, momentum SGD and
# Lion one, plain SGD none.
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "lion": 1, "sgd": 0}

ZERO_STAGES = (0, 1, 2, 3)
RECOMPUTE = ("none", "selective", "full")

# Dropout masks are kept as one byte per element whatever the activation dtype (Korthikanti et
# al. 2022 count "a mask with size as^2b" bytes beside 2-byte activations).
MASK_BYTES = 1


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of the model states on one device; ``total`` is their sum.

    Fields are float64 scalars, or arrays when an argument was an array. Returned by
    :func:`~flopsbook.training_memory`.

    Attributes:
        weights (float | numpy.ndarray): Bytes of the weights forward and backward read (16-bit
            in "mixed").
        master_weights (float | numpy.ndarray): Bytes of the fp32 copy the optimizer updates
            ("mixed" only; 0 otherwise).
        gradients (float | numpy.ndarray): Bytes of the gradients.
        optimizer_states (float | numpy.ndarray): Bytes of the optimizer states (Adam's two
            moments, or the momentum).
    """

    weights: object           # the weights forward and backward read (16-bit in "mixed")
    master_weights: object    # the fp32 copy the optimizer updates ("mixed" only)
    gradients: object
    optimizer_states: object  # Adam's two moments, or the momentum

    @property
    def total(self):
        """float | numpy.ndarray: Bytes of the four parts together."""
        return result(sum(np.asarray(getattr(self, f.name)) for f in fields(self)))

    def as_dict(self) -> dict:
        """The four parts (and ``total``) by name, for tables and stacked bars.

        Returns:
            dict[str, float | numpy.ndarray]: Bytes by part name, and ``total``.
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out


def _zero_stage(value) -> int:
    # choice() compares by type: True is not stage 1, an array is not a stage.
    return int(choice("zero_stage", value, ZERO_STAGES))


@formula
def training_memory(n_params, *, precision="mixed", optimizer="adamw", zero_stage=0,
                    n_devices=1, grad_dtype=None):
    """Per-device bytes of weights, master weights, gradients and optimizer states.

    Derived in the chapter "Memory budgets for training". ``precision`` is "mixed" (16-bit
    weights, fp32 master copy and optimizer states), "fp32" or "bf16" (everything 16-bit, no
    master copy); ``optimizer`` one of "adamw", "adam", "sgd-momentum", "lion", "sgd".
    ``grad_dtype`` ("fp32", "bf16", "fp16") overrides the gradients' dtype, which by default is
    that of the working weights. The two mixed-precision Adam conventions:

    - ``precision="mixed"``: 2 + 4 + 2 + 8 = **16 bytes per parameter** (ZeRO's count, with
      16-bit gradients; its K = 12 is the master copy plus the two moments);
    - ``precision="mixed", grad_dtype="fp32"``: 2 + 4 + 4 + 8 = **18 bytes per parameter**
      (fp32 gradients, as the book's seed textbook chapter counts).

    ZeRO (Rajbhandari et al. 2020) shards over ``n_devices`` data-parallel devices: stage 1 the
    optimizer states *and* the fp32 master copy, stage 2 also the gradients, stage 3 also the
    working weights. Broadcasts over ``n_params`` and ``n_devices``.

    Args:
        n_params (float | str | Transformer | array-like): Parameters, a count > 0, one text
            count such as ``"7B"``, or a :class:`Transformer` or model name (its
            ``param_count``).

    Keyword Args:
        precision (str): ``"mixed"`` (the default), ``"fp32"`` or ``"bf16"``.
        optimizer (str): ``"adamw"`` (the default), ``"adam"``, ``"sgd-momentum"``,
            ``"lion"`` or ``"sgd"``: 2, 2, 1, 1 and 0 states per parameter.
        zero_stage (int): ZeRO stage: 0 (the default, no sharding), 1, 2 or 3.
        n_devices (int | str | array-like): The devices the job spans, a whole number > 0,
            default 1. This function has no tensor or pipeline parallelism, so they are all
            data-parallel and ZeRO shards over all of them; :func:`memory_budget` takes the
            same ``n_devices`` and splits it with ``tensor_parallel``.
        grad_dtype (str | None): ``"fp32"``, ``"bf16"`` or ``"fp16"``; None (the default) is
            the dtype of the working weights.

    Returns:
        TrainingMemory: Bytes per device, by part.

    Raises:
        ValueError: If ``n_params`` or ``n_devices`` is not valid, ``precision``, ``optimizer``
            or ``grad_dtype`` is not one of its values, or ``zero_stage`` is not the int 0, 1,
            2 or 3 (True is not stage 1); the message names the argument.
    """
    n = as_array("n_params", n_params, kind="params")
    d = as_array("n_devices", n_devices, integer=True, kind="count")
    choice("precision", precision, tuple(PRECISIONS))
    choice("optimizer", optimizer, tuple(OPTIMIZER_STATES))
    stage = _zero_stage(zero_stage)
    if grad_dtype is not None:
        choice("grad_dtype", grad_dtype, tuple(DTYPE_BYTES))
    weight_b, master_b, state_b = PRECISIONS[precision]
    grad_b = weight_b if grad_dtype is None else DTYPE_BYTES[grad_dtype]
    n, d = np.broadcast_arrays(n, d)

    def sharded(bytes_per_param, from_stage):
        return result(bytes_per_param * n / (d if stage >= from_stage else 1.0))

    return TrainingMemory(
        weights=sharded(weight_b, 3),
        master_weights=sharded(master_b, 1),
        gradients=sharded(grad_b, 2),
        optimizer_states=sharded(OPTIMIZER_STATES[optimizer] * state_b, 1),
    )


def _activation_terms(m, batch, seq_len, recompute, tensor_parallel, sequence_parallel,
                      flash_attention, dropout, bytes_per_value):
    """The tensors each kind of layer keeps, as ``(kinds, bases)``.

    ``kinds`` maps a kind of layer (False: a dense FFN, True: an MoE FFN) to its
    ``(how many layers, terms)``, each term ``(name, width, base)`` with bytes = width *
    bases[base]. A few base arrays carry the broadcasting and the per-device split, so that a
    sum over the tensors costs a handful of array operations (10^6 configurations in well under
    0.1 s). Local (windowed) layers keep what global ones keep: the reference model keeps the
    full masked s x s probabilities.
    """
    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    t = as_array("tensor_parallel", tensor_parallel, integer=True, kind="count")
    v = as_array("bytes_per_value", bytes_per_value)
    choice("recompute", recompute, RECOMPUTE)
    sp = as_bool("sequence_parallel", sequence_parallel)
    flash = as_bool("flash_attention", flash_attention)
    drop = as_bool("dropout", dropout)

    tokens = b * s
    # Tensors outside the tensor-parallel region are replicated on every device unless the
    # sequence is split too.
    outside = tokens / t if sp else tokens
    bases = {"outside": outside * v, "inside": tokens * v / t}
    h = m.d_model
    counts = {False: m.n_layers - m.n_moe_layers, True: m.n_moe_layers}
    if recompute == "full":
        terms = [("layer_input", h, "outside")]
        return {kind: (n, terms) for kind, n in counts.items() if n}, bases

    terms = [("norm1_input", h, "outside"),
             ("norm1_output", h, "outside")]                 # the shared input of q, k, v
    if m.qk_norm:                                            # the q/k norms' inputs
        terms += [("q_norm_input", m.d_attn, "inside"), ("k_norm_input", m.d_kv, "inside")]
    if m.is_mla:
        # The latents come from the whole residual stream, before the heads are split: every
        # tensor-parallel device computes (and keeps) them.
        if m.q_lora_rank is not None:
            terms += [("q_a_norm_input", m.q_lora_rank, "outside"),
                      ("q_a_norm_output", m.q_lora_rank, "outside")]
        terms += [("kv_a_norm_input", m.kv_lora_rank, "outside"),
                  ("kv_a_norm_output", m.kv_lora_rank, "outside")]
    # MLA's k and v are the up-projected (naive) keys and values.
    terms += [("q", m.d_attn, "inside"), ("k", m.d_kv, "inside"), ("v", m.d_v, "inside")]
    if recompute == "none" and not flash:
        scores = b * s * s / t                               # per head, per device
        bases["scores"] = scores * v
        terms.append(("attention_probs", m.n_heads, "scores"))
        if drop:
            bases["scores_mask"] = scores * MASK_BYTES
            terms += [("attention_dropout_mask", m.n_heads, "scores_mask"),
                      ("attention_dropout_output", m.n_heads, "scores")]  # what multiplies V
    terms.append(("attention_output", m.d_attn_output, "inside"))  # the output projection's
    if drop:
        bases["outside_mask"] = outside * MASK_BYTES
        terms.append(("attention_out_dropout_mask", h, "outside_mask"))
    if m.post_norms:
        terms.append(("post_attn_norm_input", h, "outside"))
    terms += [("norm2_input", h, "outside"),
              ("norm2_output", h, "outside")]                # the first FFN matmuls' input
    inner = ["gate", "up", "act"] if m.ffn in GATED_FFN_KINDS else ["preact", "act"]
    after = [("ffn_dropout_mask", h, "outside_mask")] if drop else []
    if m.post_norms:
        after.append(("post_ffn_norm_input", h, "outside"))
    kinds = {False: terms + [(f"ffn_{name}", m.d_ff, "inside") for name in inner] + after}
    if m.is_moe:
        # Per token: its top_k routing weights (the router is replicated), top_k rows of every
        # inner tensor of the routed experts, the top_k expert outputs (after the tensor-parallel
        # reduction) for the routing weights' gradient, and every shared expert's inner tensors.
        moe = [("router_weights", m.top_k, "outside")]
        moe += [(f"expert_{name}", m.top_k * m.d_ff_expert, "inside") for name in inner]
        moe.append(("expert_output", m.top_k * h, "outside"))
        if m.n_shared_experts:
            moe += [(f"shared_{name}", m.n_shared_experts * m.d_ff_expert, "inside")
                    for name in inner]
        kinds[True] = terms + moe + after
    return {kind: (counts[kind], kinds[kind]) for kind in kinds if counts[kind]}, bases


@formula
def activation_breakdown(m, batch, seq_len, *, recompute="none", tensor_parallel=1,
                         sequence_parallel=False, flash_attention=False, dropout=True,
                         bytes_per_value=2, layer=None):
    """Bytes one layer keeps for the backward pass, by tensor (per device).

    Derived in the chapter "Memory budgets for training". Keys are the tensor names of the
    reference model (``norm1_input``, ``q``, ``attention_probs``, ``ffn_act``, ...) plus the
    dropout tensors (``attention_dropout_output`` and three ``*_dropout_mask``); a tensor that
    the configuration does not keep is absent. With MHA, GELU and d_ff = 4h and 2-byte values
    the sum is Korthikanti et al. (2022)'s s*b*h*(34 + 5*a*s/h).

    What it assumes: a pre-norm block (two norms, each keeping its input and its output, the
    latter being the next matmul's input); activations of ``bytes_per_value`` bytes; dropout
    after the softmax, the attention block and the FFN, with 1-byte masks; per-token norm
    statistics and FlashAttention's softmax statistics left out (a few values per token, not per
    feature). Tensor parallelism over ``tensor_parallel`` devices splits everything between the
    first and the last matmul of each block (q, k, v, the score tensors, the attention output,
    the FFN's inner tensors); ``sequence_parallel`` splits the rest (norms, residual-side
    dropout masks) along the sequence. ``recompute="selective"`` and ``flash_attention`` drop
    the s^2 tensors (softmax output, its dropout mask and output); ``recompute="full"`` keeps
    only each layer's input.

    The chapter "Beyond the dense transformer" adds the tensors of its architectures, named as
    the reference model keeps them: q/k norms' inputs (``q_norm_input``, ``k_norm_input``);
    MLA's latents (``q_a_norm_input``/``_output`` with a query latent, ``kv_a_norm_input``/
    ``_output``) beside its up-projected ``q``, ``k``, ``v`` (``d_attn``, ``d_kv``, ``d_v``
    wide); the post-norms' inputs (``post_attn_norm_input``, ``post_ffn_norm_input``); GeGLU's
    ``ffn_gate``, ``ffn_up``, ``ffn_act`` (as SwiGLU); and in an MoE layer, instead of the
    dense FFN's tensors, ``router_weights`` (top_k per token), the routed experts' inner
    tensors (``expert_gate``, ``expert_up``, ``expert_act`` or ``expert_preact``,
    ``expert_act``: top_k*d_ff_expert per token), ``expert_output`` (top_k*d_model per token,
    for the routing weights' gradient) and the shared experts' (``shared_*``,
    n_shared*d_ff_expert per token). The experts' inputs are not kept (they are rows of
    ``norm2_output``), nor the routing choices (integers, a few per token, left out with the
    norm statistics). A local (windowed) layer keeps the same tensors as a global one
    (``attention_probs`` is the full masked s x s matrix, as the reference keeps it).

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        batch (int | str | array-like): Sequences per device (the micro-batch), a whole number
            > 0, an array of them, or one text count.
        seq_len (int | str | array-like): Tokens per sequence, as ``batch`` (e.g. ``"4k"``).

    Keyword Args:
        recompute (str): Activation recomputation: ``"none"`` (the default), ``"selective"``
            or ``"full"``.
        tensor_parallel (int | str | array-like): Devices the layers are split over by tensor
            parallelism, a whole number > 0. Default 1.
        sequence_parallel (bool): Also split the tensors outside the tensor-parallel region
            along the sequence. Default False.
        flash_attention (bool): A fused attention kernel that keeps no s^2 tensors. Default
            False.
        dropout (bool): Whether the model uses dropout (its masks and outputs are kept).
            Default True.
        bytes_per_value (float | array-like): Bytes per activation value (2 for 16-bit, 4 for
            fp32), > 0; numbers only. Default 2.
        layer (int | None): Which layer, counting from 1 (as :func:`~flopsbook.layer_flops`),
            for stacks whose layers differ (dense and MoE FFNs). None (the default) is the
            average layer: each tensor's bytes over the stack divided by ``n_layers`` (a
            uniform stack's every layer).

    Returns:
        dict[str, float | numpy.ndarray]: Bytes of one layer on one device, by tensor name; each
        a float, or an array when an argument is one.

    Raises:
        ValueError: If ``m`` is not a model, a count is not a positive whole number,
            ``recompute`` is not one of its values, a switch is not True or False, or ``layer``
            is not a layer of ``m`` (1 to n_layers); the message names the argument.
    """
    m = as_spec(m)
    kinds, bases = _activation_terms(m, batch, seq_len, recompute, tensor_parallel,
                                     sequence_parallel, flash_attention, dropout,
                                     bytes_per_value)
    if layer is not None:
        moe = m.layer_is_moe(layer)
        kinds = {k: (1, terms) for k, (_, terms) in kinds.items() if k == moe}
        n = 1
    else:
        n = m.n_layers
    widths = {}  # name -> (width summed over the layers that keep it, base)
    for count, terms in kinds.values():
        for name, width, base in terms:
            widths[name] = (widths.get(name, (0, base))[0] + count * width, base)
    return {name: result(width * bases[base] / n) for name, (width, base) in widths.items()}


@formula
def activation_memory(m, batch, seq_len, *, recompute="none", tensor_parallel=1,
                      sequence_parallel=False, flash_attention=False, dropout=True,
                      bytes_per_value=2):
    """Bytes of activations the layers keep for the backward pass, per device, all layers.

    Derived in the chapter "Memory budgets for training": ``m.n_layers`` times the sum of
    ``activation_breakdown`` (see it for the tensors and what is assumed; a stack of dense and
    MoE layers adds each layer's own tensors). Under Korthikanti et
    al. (2022)'s assumptions (MHA, GELU, d_ff = 4h, 2-byte activations, 1-byte dropout masks)
    one layer holds, in bytes:

    - no parallelism, no recomputation: ``s*b*h*(34 + 5*a*s/h)``;
    - tensor parallel: ``s*b*h*(10 + 24/t + 5*a*s/(h*t))``; with sequence parallel:
      ``s*b*h*(34/t + 5*a*s/(h*t))``;
    - selective recomputation (or FlashAttention): the ``5*a*s/h`` terms vanish;
    - full recomputation: ``2*s*b*h`` (divided by t with sequence parallel).

    The embedding and the output layer (logits) are not included, nor the transient working set
    of the layer being recomputed or differentiated. Broadcasts over ``batch``, ``seq_len``,
    ``tensor_parallel`` and ``bytes_per_value``.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        batch (int | str | array-like): Sequences per device (the micro-batch), a whole number
            > 0, an array of them, or one text count.
        seq_len (int | str | array-like): Tokens per sequence, as ``batch`` (e.g. ``"4k"``).

    Keyword Args:
        recompute (str): Activation recomputation: ``"none"`` (the default), ``"selective"``
            or ``"full"``.
        tensor_parallel (int | str | array-like): Devices the layers are split over by tensor
            parallelism, a whole number > 0. Default 1.
        sequence_parallel (bool): Also split the tensors outside the tensor-parallel region
            along the sequence. Default False.
        flash_attention (bool): A fused attention kernel that keeps no s^2 tensors. Default
            False.
        dropout (bool): Whether the model uses dropout (its masks and outputs are kept).
            Default True.
        bytes_per_value (float | array-like): Bytes per activation value (2 for 16-bit, 4 for
            fp32), > 0; numbers only. Default 2.

    Returns:
        float | numpy.ndarray: Bytes per device: a float, or an array when an argument is one.

    Raises:
        ValueError: If ``m`` is not a model, a count is not a positive whole number,
            ``recompute`` is not one of its values or a switch is not True or False; the
            message names the argument.
    """
    m = as_spec(m)
    kinds, bases = _activation_terms(m, batch, seq_len, recompute, tensor_parallel,
                                     sequence_parallel, flash_attention, dropout,
                                     bytes_per_value)
    widths = dict.fromkeys(bases, 0)
    for count, terms in kinds.values():  # add widths first: one multiply per base array
        for _, width, base in terms:
            widths[base] += count * width
    return result(sum(widths[k] * bases[k] for k in bases))


# --- Will it fit? -------------------------------------------------------------------------

LOGITS_DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class MemoryBudget:
    """Per-device bytes of a training step, by part (see :func:`~flopsbook.memory_budget`).

    Fields are float64 scalars, or arrays when an argument was an array. ``total`` is their sum;
    ``fits(hardware)`` compares it with a device's memory.

    Attributes:
        weights (float | numpy.ndarray): Bytes of the working weights (16-bit in "mixed").
        gathered_weights (float | numpy.ndarray): With ZeRO-3, the bytes of the layer being
            computed that other devices hold and this one gathers (one layer; an FSDP that
            prefetches the next layer holds two). 0 for stages 0-2.
        master_weights (float | numpy.ndarray): Bytes of the fp32 copy the optimizer updates
            ("mixed" only).
        gradients (float | numpy.ndarray): Bytes of the gradients.
        optimizer_states (float | numpy.ndarray): Bytes of the optimizer states.
        activations (float | numpy.ndarray): Bytes the layers keep for the backward pass.
        recompute_working_set (float | numpy.ndarray): Bytes of the transient of the layer
            being recomputed.
        logits (float | numpy.ndarray): Bytes of the output layer's logits (in their stated
            dtype).
        buffers (float | numpy.ndarray): Bytes of framework buffers and fragmentation: the
            caller's allowance.
    """

    weights: object                # working weights (16-bit in "mixed")
    gathered_weights: object       # ZeRO-3: the rest of the layer being computed
    master_weights: object         # fp32 copy the optimizer updates ("mixed" only)
    gradients: object
    optimizer_states: object
    activations: object            # what the layers keep for the backward pass
    recompute_working_set: object  # the transient of the layer being recomputed
    logits: object                 # the output layer's logits (its stated dtype)
    buffers: object                # framework buffers, fragmentation: the caller's allowance

    @property
    def total(self):
        """float | numpy.ndarray: Bytes of all the parts together."""
        return result(sum(np.asarray(getattr(self, f.name)) for f in fields(self)))

    def as_dict(self) -> dict:
        """Every part (and ``total``) by name, for tables and stacked bars.

        Returns:
            dict[str, float | numpy.ndarray]: Bytes by part name, and ``total``.
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out

    def fits(self, hardware):
        """Whether ``total`` is at most the device memory of ``hardware``.

        Args:
            hardware (Hardware | str): A :class:`~flopsbook.Hardware` or its registry name, whose
                ``memory_bytes`` is compared.

        Returns:
            bool | numpy.ndarray: True where the step fits; an array of booleans when broadcasting.

        Raises:
            ValueError: If ``hardware`` is neither a ``Hardware`` nor a registry name.
        """
        from ._validate import as_hardware

        ok = np.asarray(self.total) <= as_hardware(hardware).memory_bytes
        return bool(ok) if ok.ndim == 0 else ok


def _buffers(value, others):
    """``buffers`` as bytes: a fraction (0 <= x < 1) of the other parts, or bytes (x >= 1)."""
    b = as_array("buffers", value, allow_zero=True, kind="bytes")
    return np.where(b < 1, b * others, b)


def _largest_layer_params(m, expert_parallel=1):
    """Matmul weights of the largest layer: the one ZeRO-3 gathers at its peak. An MoE layer
    holds its router and every expert (plain ZeRO-3 gathers them all), or with expert
    parallelism its 1/ep of the routed experts."""
    from .spec import _attention_params, _router_params, ffn_params

    attention = _attention_params(m)
    dense = ffn_params(m, m.d_ff) if m.n_moe_layers < m.n_layers else 0
    moe = 0
    if m.is_moe:
        moe = _router_params(m) + (m.n_experts / expert_parallel + m.n_shared_experts) \
            * ffn_params(m, m.d_ff_expert)
    return attention + np.maximum(dense, moe)


def _stage_shares(m, pp):
    """Shares of ``param_count(m)`` held by the first and the last pipeline stage, and the
    share that is routed experts on each (the same on both).

    A stage holds ceil(L / pp) layers (the busiest, when pp does not divide L); the first also
    the input embeddings, the last the final norm and the output layer (with tied embeddings a
    copy of the table, whose gradient the two stages sum). With pp = 1 one stage holds it all.
    """
    from .spec import _norm_params, param_breakdown

    parts = param_breakdown(m)
    total = parts["total"]
    inputs = parts["token_embedding"] + parts["position_embedding"] + parts["extra"]
    output = parts["output_embedding"] or parts["token_embedding"]
    final_norm = _norm_params(m)
    layers = total - inputs - parts["output_embedding"] - final_norm
    per_stage = np.ceil(m.n_layers / pp) / m.n_layers
    whole = pp == 1
    first = np.where(whole, total, inputs + per_stage * layers) / total
    last = np.where(whole, total, output + final_norm + per_stage * layers) / total
    experts = np.where(whole, 1.0, per_stage) * parts["experts"] / total
    return first, last, experts


@formula
def memory_budget(m, batch, seq_len, *, n_params=None, precision="mixed", optimizer="adamw",
                  grad_dtype=None, zero_stage=0, n_devices=1, tensor_parallel=1,
                  sequence_parallel=False, pipeline_parallel=1, micro_batches_in_flight=None,
                  context_parallel=1, expert_parallel=1, recompute="none",
                  flash_attention=False, dropout=True, logits_dtype="fp32", buffers=0.0):
    """Per-device bytes of one training step: will it fit?

    Returns a :class:`~flopsbook.memory.MemoryBudget`. Derived in the chapters "Memory budgets
    for training" and "Many devices II". ``n_devices`` is the devices the job spans: the model
    is split ``tensor_parallel`` (t) ways inside each layer, ``pipeline_parallel`` (p) ways
    into stages of consecutive layers, each sequence ``context_parallel`` (c) ways, and the
    rest are data-parallel copies; ZeRO's ``zero_stage`` shards the model states over the
    n / (t p) devices that hold the same part of the model (data- and context-parallel, as
    Megatron's distributed optimizer does). With ``expert_parallel`` (e) the routed experts are
    further split e ways within that group (and ZeRO shards each expert's states over the
    remaining n / (t p e)).

    - Model states from :func:`training_memory` (``n_params`` defaults to ``param_count(m)``;
      ``precision``, ``optimizer``, ``grad_dtype`` as there), divided by ``tensor_parallel``;
      with pipeline stages the stage's share (ceil(L / p) layers, plus the embeddings on the
      first stage and the output layer on the last).
    - ``gathered_weights``: with ZeRO-3, the part of one layer's working weights (its
      tensor-parallel and expert-parallel share) that is gathered from the other devices while
      the layer runs (one layer, no prefetch).
    - ``activations``: :func:`activation_memory` of the stage's layers for a micro-batch of
      ``seq_len / context_parallel`` tokens per sequence (Ring Attention holds one block of
      scores at a time), times the micro-batches in flight: a 1F1B pipeline's first stage holds
      ``micro_batches_in_flight`` (default p; GPipe holds all m, the last stage one).
    - ``recompute_working_set``: recomputation rebuilds, for the layer being differentiated,
      what it dropped: with full recomputation one whole layer's activations, with selective
      that layer's s^2 tensors (nothing with FlashAttention, which never materialises them).
    - ``logits``: the b*s*V logits of the output layer (on the last stage), kept in
      ``logits_dtype`` ("fp32", as a loss computed in fp32 keeps them; "bf16"/"fp16"; or None
      to leave them out), split over the vocabulary by tensor parallelism.
    - ``buffers``: an allowance for the framework (communication buffers, fragmentation): a
      fraction (0 <= x < 1) of all the other parts, or bytes (x >= 1, or text "2GB").

    With pipeline stages the budget is the busier of the first stage (embeddings, most
    micro-batches in flight) and the last (the output layer and the logits). Broadcasts over
    ``batch``, ``seq_len``, ``n_params``, ``n_devices`` and the parallel sizes.

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        batch (int | str | array-like): The per-device micro-batch, in sequences: a whole number
            > 0, an array of them, or one text count.
        seq_len (int | str | array-like): Tokens per sequence, as ``batch`` (e.g. ``"4k"``).

    Keyword Args:
        n_params (float | str | Transformer | array-like | None): Parameters of the model
            states, a count > 0, text such as ``"7B"``, or a model; None (the default) is
            ``param_count(m)``. Its stage and expert shares are those of ``m``.
        precision (str): ``"mixed"`` (the default), ``"fp32"`` or ``"bf16"`` (as
            :func:`training_memory`).
        optimizer (str): As :func:`training_memory`; default ``"adamw"``.
        grad_dtype (str | None): As :func:`training_memory`; default None.
        zero_stage (int): ZeRO stage 0 (the default), 1, 2 or 3.
        n_devices (int | str | array-like): The devices the job spans, a whole number > 0.
            Default 1.
        tensor_parallel (int | str | array-like): Tensor-parallel ways t, a whole number > 0.
            Default 1.
        sequence_parallel (bool): Sequence parallelism (see :func:`activation_breakdown`).
            Default False.
        pipeline_parallel (int | str | array-like): Pipeline stages p, a whole number > 0.
            Default 1.
        micro_batches_in_flight (int | array-like | None): Micro-batches whose activations the
            first stage holds at once, > 0; None (the default) is p, the 1F1B schedule's.
        context_parallel (int | str | array-like): Context-parallel ways c, a whole number > 0
            dividing ``seq_len``. Default 1.
        expert_parallel (int | str | array-like): Expert-parallel ways e, a whole number > 0
            dividing ``n_experts`` and n / (t p); 1 for a dense model. Default 1.
        recompute (str): ``"none"`` (the default), ``"selective"`` or ``"full"``.
        flash_attention (bool): A fused attention kernel (no s^2 tensors). Default False.
        dropout (bool): Whether the model uses dropout. Default True.
        logits_dtype (str | None): ``"fp32"`` (the default), ``"bf16"``, ``"fp16"``, or None
            to leave the logits out.
        buffers (float | str | array-like): A fraction (0 <= x < 1) of the other parts, or
            bytes (x >= 1, or one text size such as ``"2GB"``). Default 0.

    Returns:
        MemoryBudget: Bytes per device, by part.

    Raises:
        ValueError: If t p c does not divide ``n_devices``, c does not divide ``seq_len``, e
            does not divide the experts or n / (t p), or any argument is not valid (as for
            :func:`training_memory` and :func:`activation_memory`); the message names the
            argument.
    """
    from ._validate import as_spec
    from .spec import param_count

    m = as_spec(m)
    b = as_array("batch", batch, integer=True, kind="count")
    s = as_array("seq_len", seq_len, integer=True, kind="count")
    n = as_array("n_params", param_count(m) if n_params is None else n_params, kind="params")
    devices = as_array("n_devices", n_devices, integer=True, kind="count")
    tp = as_array("tensor_parallel", tensor_parallel, integer=True, kind="count")
    pp = as_array("pipeline_parallel", pipeline_parallel, integer=True, kind="count")
    cp = as_array("context_parallel", context_parallel, integer=True, kind="count")
    ep = as_array("expert_parallel", expert_parallel, integer=True, kind="count")
    in_flight = pp if micro_batches_in_flight is None else as_array(
        "micro_batches_in_flight", micro_batches_in_flight, integer=True, kind="count")
    from .parallelism import check_tensor_parallel

    check_tensor_parallel(m, tp, "tensor_parallel")
    if np.any(pp > m.n_layers):
        raise ValueError(f"pipeline_parallel={shown(pipeline_parallel)} must be at most the "
                         f"{m.n_layers} layers of {m.name} (a stage holds at least one)")
    if micro_batches_in_flight is not None and np.any((pp == 1) & (in_flight != 1)):
        raise ValueError("micro_batches_in_flight counts a pipeline's micro-batches: with "
                         "pipeline_parallel=1 one is in flight (accumulated micro-batches "
                         "free their activations); leave it None")
    if np.any(devices % tp):
        raise ValueError(f"tensor_parallel={shown(tensor_parallel)} must divide "
                         f"n_devices={shown(n_devices)} (the devices the job spans)")
    if np.any(devices % (tp * pp * cp)):
        raise ValueError(f"pipeline_parallel={shown(pipeline_parallel)} and context_parallel="
                         f"{shown(context_parallel)} times tensor_parallel must divide "
                         f"n_devices={shown(n_devices)}")
    if np.any(cp != 1) and np.any(s % cp):
        raise ValueError(f"context_parallel={shown(context_parallel)} must divide "
                         f"seq_len={shown(seq_len)} (each device takes an equal slice)")
    shards = devices / (tp * pp)         # the devices holding the same part of the model
    if not m.is_moe and np.any(ep != 1):
        raise ValueError(f"expert_parallel={shown(expert_parallel)} needs a mixture of experts; "
                         f"{m.name} is dense: use 1")
    if m.is_moe and (np.any(m.n_experts % ep) or np.any(shards % ep)):
        raise ValueError(f"expert_parallel={shown(expert_parallel)} must divide n_experts="
                         f"{m.n_experts} and n_devices / (tensor_parallel * pipeline_parallel)")
    choice("recompute", recompute, RECOMPUTE)
    stage_number = _zero_stage(zero_stage)
    if logits_dtype is not None:
        choice("logits_dtype", logits_dtype, LOGITS_DTYPES)
    first_share, last_share, expert_share = _stage_shares(m, pp)

    def states(share):
        dense = training_memory(n * (share - expert_share) / tp, precision=precision,
                                optimizer=optimizer, grad_dtype=grad_dtype,
                                zero_stage=zero_stage, n_devices=shards)
        if not m.is_moe:
            return dense
        experts = training_memory(n * expert_share / (tp * ep), precision=precision,
                                  optimizer=optimizer, grad_dtype=grad_dtype,
                                  zero_stage=zero_stage, n_devices=shards / ep)
        return {f.name: getattr(dense, f.name) + getattr(experts, f.name)
                for f in fields(dense)}

    kw = dict(tensor_parallel=tp, sequence_parallel=sequence_parallel,
              flash_attention=flash_attention, dropout=dropout,
              bytes_per_value=4 if precision == "fp32" else 2)
    tokens = s if np.all(cp == 1) else s / cp
    kept = activation_memory(m, b, tokens, recompute=recompute, **kw)   # all layers, one
    working = 0.0
    if recompute != "none":
        whole = activation_memory(m, b, tokens, **kw) / m.n_layers
        # Full: the whole layer is rebuilt before its backward (its kept input is counted
        # again, a conservative round-up). Selective: only what it dropped, the s^2 tensors.
        working = whole if recompute == "full" else whole - kept / m.n_layers

    def held(in_flight):
        """The activations a stage keeps: its layers' share, for each micro-batch in flight."""
        share = np.ceil(m.n_layers / pp) / m.n_layers * in_flight
        return kept if np.all(share == 1) else kept * share
    logits = 0.0 if logits_dtype is None else \
        b * tokens * m.vocab_size * DTYPE_BYTES[logits_dtype] / tp
    gathered = 0.0
    if stage_number == 3:
        # Stage 3 keeps 1/dp of every layer; computing a layer needs all of it, so the other
        # (dp - 1)/dp of one layer's working weights (its share of the tensor- and
        # expert-parallel split) are gathered and held while that layer runs.
        layer_params = _largest_layer_params(m, ep) * n / param_count(m)
        gathered = layer_params / tp * PRECISIONS[precision][0] * (1 - 1 / shards)

    def stage(share, in_flight, logits):
        st = states(share)
        st = st if isinstance(st, dict) else {f.name: getattr(st, f.name) for f in fields(st)}
        parts = dict(weights=st["weights"], gathered_weights=gathered,
                     master_weights=st["master_weights"], gradients=st["gradients"],
                     optimizer_states=st["optimizer_states"],
                     activations=held(in_flight),
                     recompute_working_set=working, logits=logits)
        others = sum(np.asarray(v, dtype=np.float64) for v in parts.values())
        parts["buffers"] = _buffers(buffers, others)
        full = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in parts.values()))
        return dict(zip(parts, full))

    single = pp == 1
    if np.all(single):
        first = stage(first_share, in_flight, logits)
        return MemoryBudget(**{k: result(v) for k, v in first.items()})
    first = stage(first_share, in_flight, np.where(single, logits, 0.0))
    last = stage(last_share, 1.0, logits)
    busier = sum(first.values()) >= sum(last.values())
    return MemoryBudget(**{k: result(np.where(busier, first[k], last[k])) for k in first})


@formula
def largest_micro_batch(m, seq_len, hardware, **budget_kwargs):
    """The largest per-device micro-batch whose :func:`memory_budget` fits ``hardware``.

    The budget must fit within the device's ``memory_bytes``; 0 when not even one sequence
    fits. Every part but the model states grows linearly in the batch, so the answer is a floor
    of the free memory over the bytes of one sequence (a scalar ``seq_len``).

    Args:
        m (Transformer | str): The model: a :class:`Transformer` or a registry name.
        seq_len (int | str): Tokens per sequence: one whole number > 0 or one text count such
            as ``"4k"`` (not an array).
        hardware (Hardware | str): The device: a :class:`Hardware` or a registry name.
        **budget_kwargs: The keyword arguments of :func:`memory_budget` (``precision``,
            ``zero_stage``, ``n_devices``, ``recompute``, ...), each a single value.

    Returns:
        int: The number of sequences per device (a Python int, >= 0).

    Raises:
        ValueError: If an argument is not valid for :func:`memory_budget`, ``hardware`` is not
            a ``Hardware`` or registry name, or ``seq_len`` or a keyword argument is a list,
            tuple or array; the message names the argument.
    """
    from ._validate import as_hardware

    device = as_hardware(hardware).memory_bytes
    if "batch" in budget_kwargs:
        raise ValueError("batch is what largest_micro_batch finds: leave it out of the budget "
                         "arguments")
    zero = memory_budget(m, 1, seq_len, **budget_kwargs)      # validates every argument
    for name, value in [("seq_len", seq_len)] + sorted(budget_kwargs.items()):
        if isinstance(value, (list, tuple, np.ndarray)):  # one answer per call: scalar search
            raise ValueError(f"{name} must be a single value for largest_micro_batch, got "
                             f"{shown(value)}")
    two = memory_budget(m, 2, seq_len, **budget_kwargs)
    per_sequence = float(two.total - zero.total)
    fixed = float(zero.total) - per_sequence
    if fixed + per_sequence > device:
        return 0
    b = int((device - fixed) // per_sequence)
    # Guard the floor against rounding at the boundary.
    while memory_budget(m, b + 1, seq_len, **budget_kwargs).fits(hardware):
        b += 1
    while b > 0 and not memory_budget(m, b, seq_len, **budget_kwargs).fits(hardware):
        b -= 1
    return b
