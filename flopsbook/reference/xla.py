"""A real SPMD compiler as a second reference: the collectives JAX/XLA emits on host CPU devices.

The formulas of ``flopsbook.communication`` say how many bytes data parallelism, ZeRO and FSDP
send. This module asks a real compiler: it compiles small training steps for 8 host CPU devices
(XLA's SPMD partitioner, the same one that partitions for TPUs and GPUs), reads the collectives
out of the optimized HLO and reports each one's full buffer in the book's convention, so that
``sum(fb.collective_bytes(r.kind, r.n_bytes, r.group_size) * r.count for r in records)`` is the
bytes each device sends. Like the rest of ``flopsbook.reference`` it never imports the formulas.

It is opt-in: neither ``import flopsbook`` nor ``flopsbook.reference`` loads it, because it
imports JAX (about a second). XLA fixes the number of host devices when JAX starts, so set
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before anything imports ``jax``
(``tests/conftest.py`` does it for the test suite).

The three programs (the model is :func:`mlp_params`, a stack of pre-norm MLP blocks):

- :func:`data_parallel_step`: batch sharded, parameters replicated (plain ``jax.jit``);
- :func:`fsdp_step`: parameters sharded along the data axis by ``jax.jit`` shardings, gathered
  by sharding constraints (how MaxText-style FSDP is written);
- :func:`zero3_step`: ZeRO-3 by hand under ``jax.shard_map``: ``all_gather`` per layer in the
  forward, ``jax.checkpoint`` so the backward gathers again, ``psum_scatter`` of the gradients.

And one transformer layer under Megatron tensor parallelism (:func:`megatron_layer_params`,
weights laid out by :func:`megatron_param_specs` over a mesh axis ``"model"``), held against
``flopsbook.tensor_parallel_bytes``:

- :func:`megatron_forward` and :func:`megatron_train_step`: the weights sharded by ``jax.jit``
  shardings, the partitioner placing the all-reduces (Megatron's g after each sublayer, and f
  for each sublayer's input gradient in the backward);
- :func:`megatron_forward` with ``sequence_parallel=True``: the residual stream constrained to
  be split along the sequence; XLA's CPU pipeline all-gathers before each sublayer but
  all-reduces (and slices) after it instead of reduce-scattering, 1.5 times Megatron's bytes;
- :func:`megatron_sequence_parallel_forward` and :func:`megatron_sequence_parallel_train_step`:
  Megatron's sequence parallelism by hand under ``jax.shard_map``, an explicit ``all_gather``
  and ``psum_scatter`` per sublayer, exactly Megatron's bytes.

One more CPU substitution, seen while writing this module and not kept as a test (it costs a
second compile in bf16): the CPU pipeline's all-reduce-promotion pass runs a bf16 all-reduce in
f32, so 16-bit gradients cost 32-bit traffic on host devices (GPUs and TPUs reduce in bf16).
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["AXIS", "AlphaBeta", "Collective", "TP_AXIS", "compiled_collectives", "cpu_devices",
           "data_parallel_step", "example_batch", "fit_alpha_beta", "fsdp_step",
           "megatron_example", "megatron_forward", "megatron_layer", "megatron_layer_param_count",
           "megatron_layer_params", "megatron_loss", "megatron_param_specs",
           "megatron_sequence_parallel_forward", "megatron_sequence_parallel_train_step",
           "megatron_train_step", "mesh", "mlp_loss", "mlp_param_count", "mlp_params",
           "parse_collectives", "reference_step", "time_collective", "zero3_step"]

AXIS = "data"
DEVICE_FLAG = "--xla_force_host_platform_device_count"

# Bits per element of each HLO element type (sub-byte types are packed).
_BITS = {"pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
         "s32": 32, "u32": 32, "s64": 64, "u64": 64, "f16": 16, "bf16": 16, "f32": 32, "f64": 64,
         "c64": 64, "c128": 128, "f4e2m1fn": 4, "f8e3m4": 8, "f8e4m3": 8, "f8e4m3fn": 8,
         "f8e4m3fnuz": 8, "f8e4m3b11fnuz": 8, "f8e5m2": 8, "f8e5m2fnuz": 8, "f8e8m0fnu": 8,
         "token": 0}

# HLO opcodes of the collectives, and which side of each is its "full buffer" (the book's
# convention: an all-reduce's input on each device, an all-gather's output, a reduce-scatter's
# input, an all-to-all's input on each device; a permute or broadcast sends its operand).
_FULL_BUFFER = {"all-reduce": "operands", "all-gather": "results", "reduce-scatter": "operands",
                "all-to-all": "operands", "ragged-all-to-all": "first operand",
                "collective-permute": "operands", "collective-broadcast": "operands"}
COLLECTIVE_KINDS = tuple(_FULL_BUFFER)


# --- devices --------------------------------------------------------------------------------

def cpu_devices(n=8):
    """The first ``n`` host CPU devices of JAX.

    Args:
        n (int): Devices wanted, a whole number > 0. Default 8.

    Returns:
        list[jax.Device]: ``n`` CPU devices.

    Raises:
        ValueError: If ``n`` is not a whole number > 0, or JAX has fewer CPU devices (XLA fixes
            their number when JAX starts: set ``XLA_FLAGS`` before importing ``jax``).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number > 0, got {n!r}")
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ValueError(
            f"n={n} CPU devices asked, but JAX has {len(devices)}: set "
            f"XLA_FLAGS={DEVICE_FLAG}={n} in the environment before anything imports jax "
            f"(XLA reads it once, when JAX starts; XLA_FLAGS is now "
            f"{os.environ.get('XLA_FLAGS', '')!r})")
    return devices[:n]


def mesh(n_devices=8, axis=AXIS):
    """A one-axis mesh of ``n_devices`` CPU devices named ``axis`` (default ``"data"``)."""
    return Mesh(np.array(cpu_devices(n_devices)), (axis,))


# --- reading the collectives out of optimized HLO -------------------------------------------

@dataclass(frozen=True)
class Collective:
    """One collective of a compiled program.

    Attributes:
        kind (str): The HLO opcode: ``"all-reduce"``, ``"all-gather"``, ``"reduce-scatter"``,
            ``"all-to-all"``, ``"collective-permute"``, ... (async ``-start``/``-done`` pairs are
            one record under the plain name).
        name (str): The HLO instruction's name (the ``-start`` of an async pair).
        operand_shapes (tuple[tuple[int, ...], ...]): One shape per operand (a combined
            collective has several).
        operand_dtypes (tuple[str, ...]): HLO element types of the operands (``"f32"``, ...).
        result_shapes (tuple[tuple[int, ...], ...]): One shape per result.
        result_dtypes (tuple[str, ...]): Element types of the results.
        group_size (int): Devices in each replica group (those that take part together).
        n_groups (int): Replica groups (independent collectives running at once).
        n_bytes (int): The full buffer in the book's convention, summed over a combined
            collective's buffers: all-reduce, reduce-scatter, all-to-all, permute: the operands
            on one device; all-gather: the results.
        count (int): How many times it runs per execution of the program (the known trip
            counts of the while loops around it; 1 outside loops).
    """

    kind: str
    name: str
    operand_shapes: tuple
    operand_dtypes: tuple
    result_shapes: tuple
    result_dtypes: tuple
    group_size: int
    n_groups: int
    n_bytes: int
    count: int = 1


_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,<=]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def _arrays(shape_text):
    """The (dtype, dims) of every array in an HLO shape (a tuple is flattened in order)."""
    out = []
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in _BITS:
            continue
        out.append((dtype, tuple(int(d.replace("<=", "")) for d in dims.split(",") if d)))
    return out


def _nbytes(arrays):
    return sum(math.ceil(math.prod(dims) * _BITS[dtype] / 8) for dtype, dims in arrays)


def _balanced(text, start):
    """Index just past the bracket that closes the one at ``text[start]``."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = []
    for i in range(start, len(text)):
        c = text[i]
        if c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    raise ValueError(f"hlo_text: unbalanced brackets in {text[start:start + 80]!r}")


def _split_top(text):
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
    if "".join(cur).strip():
        parts.append("".join(cur).strip())
    return parts


def _groups(attrs, n_total, opcode):
    """(group size, number of groups) from an instruction's attributes."""
    m = re.search(r"replica_groups=", attrs)
    if m is None:
        pairs = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
        if pairs:  # a permute: the devices that appear in its pairs
            ids = {int(i) for i in re.findall(r"\d+", pairs.group(1))}
            return len(ids), 1
        return n_total, 1
    rest = attrs[m.end():]
    if rest.startswith("{"):                         # explicit: {{0,1,2,3},{4,5,6,7}} or {}
        body = rest[:_balanced(rest, 0)]
        groups = re.findall(r"\{([\d,\s]*)\}", body[1:-1])
        if not groups:
            return n_total, 1
        sizes = {len([i for i in g.split(",") if i.strip()]) for g in groups}
        if len(sizes) != 1:
            raise ValueError(f"hlo_text: {opcode} has replica groups of sizes {sorted(sizes)}")
        return sizes.pop(), len(groups)
    iota = re.match(r"\[(\d+),(\d+)\]<=", rest)      # iota: [groups,size]<=[...]
    if iota:
        return int(iota.group(2)), int(iota.group(1))
    named = re.match(r"mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)  # mesh['x'=8,'y'=1] {'x'}
    if named:
        axes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", named.group(1))}
        used = re.findall(r"'([^']+)'(?::\((\d+)\)(\d+))?", named.group(2))
        if not used or any(a not in axes or sub for a, sub, _ in used):
            raise ValueError(f"hlo_text: cannot read replica groups {rest[:80]!r}")
        size = math.prod(axes[a] for a, _, _ in used)
        return size, math.prod(axes.values()) // size
    raise ValueError(f"hlo_text: cannot read replica groups {rest[:80]!r}")


def parse_collectives(hlo_text):
    """The collectives of an HLO module's text (``compiled.as_text()``), in program order.

    Tuple-shaped (combined) collectives are one record whose ``n_bytes`` sums their buffers;
    an async ``-start``/``-done`` pair is one record (the start's operands, the done's result);
    a collective wrapped by a generic ``async-start`` is read in the computation it calls.
    A collective inside a while loop gets ``count`` from the loop's known trip count.

    Args:
        hlo_text (str): The text of an HLO module.

    Returns:
        list[Collective]: One record per collective instruction.

    Raises:
        ValueError: If ``hlo_text`` is not a string, or has a collective whose replica groups
            cannot be read, or a loop around a collective has no known trip count.
    """
    if not isinstance(hlo_text, str):
        raise ValueError(f"hlo_text must be the text of an HLO module, got "
                         f"{type(hlo_text).__name__}")
    header = re.search(r"^HloModule\s.*$", hlo_text, re.M)
    header = header.group(0) if header else ""
    n_total = (int(m.group(1)) if (m := re.search(r"num_partitions=(\d+)", header)) else 1) * \
              (int(m.group(1)) if (m := re.search(r"replica_count=(\d+)", header)) else 1)
    text = re.sub(r"/\*.*?\*/", "", hlo_text)       # /*index=5*/ comments inside tuples
    found, starts, calls = [], {}, []   # calls: (caller, callee, trip count or None)
    shapes, computation = {}, None
    for line in text.splitlines():
        if (c := _COMPUTATION.match(line)) and "=" not in line.split("{")[0].split("(")[0]:
            computation, shapes = c.group(1), {}
            continue
        m = _INSTRUCTION.match(line)
        if m is None or computation is None:
            continue
        name, rest = m.groups()
        end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
        shape, rest = rest[:end], rest[end:].lstrip()
        shapes[name] = shape
        op = re.match(r"([\w\-]+)\(", rest)
        if op is None:
            continue
        opcode = op.group(1)
        close = _balanced(rest, op.end() - 1)
        operands = [o.split()[-1].lstrip("%") for o in _split_top(rest[op.end():close - 1])]
        attrs = rest[close:]
        for key in ("calls", "to_apply", "body", "condition", "branch_computations",
                    "true_computation", "false_computation"):
            for callee in re.findall(rf"\b{key}=\{{?([^,}}]*(?:,\s*%[\w.\-]+)*)\}}?", attrs):
                trip = None
                if opcode == "while":
                    t = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
                    trip = int(t.group(1)) if t else -1
                for cname in re.findall(r"%?([\w.\-]+)", callee):
                    calls.append((computation, cname, trip if key == "body" else None))
        base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
        if opcode.endswith("-done") and operands and operands[0] in starts:
            record = starts.pop(operands[0])   # the result of an async pair is the done's
            found[record] = found[record] | {"results": _arrays(shape), "async": False}
            continue
        if base not in _FULL_BUFFER or opcode.endswith(("-done", "-update")):
            continue
        operand_arrays = [a for o in operands for a in _arrays(shapes.get(o, ""))]
        size, n_groups = _groups(attrs, n_total, base)
        found.append({"kind": base, "name": name, "operands": operand_arrays,
                      "results": _arrays(shape), "group_size": size, "n_groups": n_groups,
                      "computation": computation, "async": opcode.endswith("-start")})
        if opcode.endswith("-start"):
            starts[name] = len(found) - 1
    return [_record(r, _multiplicity(r["computation"], calls)) for r in found]


def _multiplicity(computation, calls, seen=()):
    callers = [(a, t) for a, b, t in calls if b == computation]
    if not callers:
        return 1
    total = 0
    for caller, trip in callers:
        if caller in seen:
            continue
        if trip == -1:
            raise ValueError(f"hlo_text: a collective in {computation} runs in a while loop "
                             f"with no known trip count")
        total += (trip or 1) * _multiplicity(caller, calls, seen + (computation,))
    return total


def _record(r, count):
    kind, operands, results = r["kind"], r["operands"], r["results"]
    if r["async"] and len(results) > len(operands):
        # A -start with no -done in sight: its shape is (operands, results[, contexts]).
        results = results[len(operands):2 * len(operands)]
    full = {"results": results, "first operand": operands[:1]}.get(_FULL_BUFFER[kind], operands)
    return Collective(kind=kind, name=r["name"],
                      operand_shapes=tuple(d for _, d in operands),
                      operand_dtypes=tuple(t for t, _ in operands),
                      result_shapes=tuple(d for _, d in results),
                      result_dtypes=tuple(t for t, _ in results),
                      group_size=r["group_size"], n_groups=r["n_groups"],
                      n_bytes=_nbytes(full), count=count)


def compiled_collectives(fn, *args, compiler_options=None, **kwargs):
    """Compile ``fn(*args, **kwargs)`` with XLA and list the collectives of its optimized HLO.

    Args:
        fn: A function (jitted here), a jitted function, a ``jax.stages.Lowered``, a
            ``jax.stages.Compiled``, or the text of an HLO module.
        *args: Arguments to lower ``fn`` with (arrays or ``jax.ShapeDtypeStruct``), when ``fn``
            is a function.
        compiler_options (dict | None): XLA options for this compile only (e.g.
            ``{"xla_disable_hlo_passes": "cse_barrier_expander"}``).
        **kwargs: Keyword arguments to lower ``fn`` with.

    Returns:
        list[Collective]: The collectives, in program order (see :func:`parse_collectives`).

    Raises:
        ValueError: If ``fn`` is none of these, or the HLO cannot be read.
    """
    if isinstance(fn, str):
        return parse_collectives(fn)
    if isinstance(fn, jax.stages.Compiled):
        return parse_collectives(fn.as_text())
    if isinstance(fn, jax.stages.Lowered):
        return parse_collectives(fn.compile(compiler_options).as_text())
    if not callable(fn):
        raise ValueError(f"fn must be a function, a jitted function, a Lowered, a Compiled or "
                         f"HLO text, got {type(fn).__name__}")
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return parse_collectives(jitted.lower(*args, **kwargs).compile(compiler_options).as_text())


# --- the model: pre-norm MLP blocks ----------------------------------------------------------

def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number > 0, got {value!r}")
    return int(value)


def mlp_param_count(d_model=64, d_ff=256, n_layers=2):
    """Parameters of :func:`mlp_params`: ``n_layers * (2 d_model d_ff + d_ff + d_model)``.

    Each block is ``h + W2 gelu(W1 (g * rmsnorm(h)) + b1)``: W1 (d_model x d_ff), W2
    (d_ff x d_model), the bias b1 (d_ff) and the norm's gain g (d_model). No output bias, so
    that the backward pass needs every parameter's value (ZeRO-3 then gathers all of them
    twice; an output bias's gradient does not need the bias, and XLA would skip its
    re-gather).
    """
    d, f, n = (_positive_int(k, v) for k, v in
               (("d_model", d_model), ("d_ff", d_ff), ("n_layers", n_layers)))
    return n * (2 * d * f + f + d)


def mlp_params(d_model=64, d_ff=256, n_layers=2, *, seed=0, dtype=np.float32):
    """Seeded parameters of a stack of pre-norm MLP blocks (a list of dicts of numpy arrays).

    Keys per block: ``g`` (d_model,), ``w1`` (d_model, d_ff), ``b1`` (d_ff,), ``w2``
    (d_ff, d_model). To shard every tensor along its first axis over n devices, d_model and
    d_ff must be multiples of n.

    Raises:
        ValueError: If a size is not a whole number > 0.
    """
    mlp_param_count(d_model, d_ff, n_layers)   # validates the sizes
    rng = np.random.default_rng(seed)
    return [{"g": (1 + 0.1 * rng.standard_normal(d_model)).astype(dtype),
             "w1": (rng.standard_normal((d_model, d_ff)) / np.sqrt(d_model)).astype(dtype),
             "b1": (0.1 * rng.standard_normal(d_ff)).astype(dtype),
             "w2": (rng.standard_normal((d_ff, d_model)) / np.sqrt(d_ff)).astype(dtype)}
            for _ in range(n_layers)]


def example_batch(batch=32, d_model=64, *, seed=1, dtype=np.float32):
    """A seeded regression batch ``(x, y)``, each (batch, d_model)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((_positive_int("batch", batch), d_model)).astype(dtype),
            rng.standard_normal((batch, d_model)).astype(dtype))


def _block(p, h):
    z = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * p["g"]
    return h + jax.nn.gelu(z @ p["w1"] + p["b1"]) @ p["w2"]


def mlp_loss(params, x, y):
    """Mean squared error of the stack's output against ``y`` (mean over batch and features)."""
    h = x
    for p in params:
        h = _block(p, h)
    return jnp.mean((h - y) ** 2)


def _sgd(params, grads, lr):
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def reference_step(params, x, y, lr=0.1):
    """One SGD step on one device (no collectives): what the three programs must reproduce."""
    loss, grads = jax.value_and_grad(mlp_loss)(params, x, y)
    return _sgd(params, grads, lr), loss


def data_parallel_step(mesh, lr=0.1):
    """Plain data parallelism: the batch sharded over ``mesh``'s axis, parameters replicated.

    The partitioner computes each device's gradient of its slice of the batch and all-reduces
    them (and the loss); the SGD update then runs on every device, replicated.

    Returns:
        A jitted ``step(params, x, y) -> (new_params, loss)``.
    """
    axis = mesh.axis_names[0]
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(axis))
    return jax.jit(lambda params, x, y: reference_step(params, x, y, lr),
                   in_shardings=(replicated, batch, batch),
                   out_shardings=(replicated, replicated))


def fsdp_step(mesh, lr=0.1):
    """FSDP by ``jax.jit`` shardings: every parameter sharded along its first axis.

    Inside the step each block's parameters are constrained to be replicated (the gather) and
    the activations to stay batch-sharded. Without these constraints the partitioner is free to
    shard the matmuls along the parameters' sharded axis instead, and on CPU it then reshards
    activations with all-to-alls in the backward: a different program from FSDP.

    Returns:
        A jitted ``step(params, x, y) -> (new_params, loss)``, new parameters sharded.
    """
    axis = mesh.axis_names[0]
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(axis))
    constrain = jax.lax.with_sharding_constraint

    def loss(params, x, y):
        h = x
        for p in params:
            h = constrain(_block(jax.tree.map(lambda w: constrain(w, replicated), p), h),
                          sharded)
        return jnp.mean((h - y) ** 2)

    def step(params, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        return _sgd(params, grads, lr), value

    return jax.jit(step, in_shardings=(sharded, sharded, sharded),
                   out_shardings=(sharded, replicated))


def zero3_step(mesh, lr=0.1, *, keep_remat=True):
    """ZeRO-3 written by hand under ``jax.shard_map``.

    Each device holds 1/n of every parameter (its first axis). A block gathers its parameters
    (``all_gather``) just before it runs; the block is ``jax.checkpoint``-ed, so the backward
    recomputes it and gathers them again instead of keeping them; the gather's backward is an
    explicit ``psum_scatter`` (reduce-scatter) of the gradient, which leaves each device the
    summed gradient of its own shard to update. The loss is ``psum``-ed for reporting.

    Args:
        mesh: A one-axis mesh.
        lr (float): SGD learning rate.
        keep_remat (bool): XLA's CPU pipeline removes the optimization barriers that
            ``jax.checkpoint`` puts around the recomputation (pass ``cse_barrier_expander``)
            before a late CSE, which then merges each backward gather with its forward twin:
            the gathered parameters are kept, gathered once. True (the default) compiles with
            that pass disabled so the program gathers twice, as written; False shows what the
            default CPU pipeline does.

    Returns:
        A jitted ``step(params, x, y) -> (new_params, loss)``, new parameters sharded.
    """
    axis = mesh.axis_names[0]

    @jax.custom_vjp
    def gather(shard):
        return jax.lax.all_gather(shard, axis, axis=0, tiled=True)

    def gather_fwd(shard):
        return gather(shard), None

    def gather_bwd(_, grad):
        # Reduce-scatter: sum the gathered parameter's gradient over devices, keep own shard.
        return (jax.lax.psum_scatter(grad, axis, scatter_dimension=0, tiled=True),)

    gather.defvjp(gather_fwd, gather_bwd)

    @jax.checkpoint
    def block(p, h):
        return _block(jax.tree.map(gather, p), h)

    def local_loss(params, x, y):
        h = x
        for p in params:
            h = block(p, h)
        # This device's share of the global mean: the reduce-scatter sums the shares.
        return jnp.mean((h - y) ** 2) / jax.lax.axis_size(axis)

    def step(params, x, y):
        value, grads = jax.value_and_grad(local_loss)(params, x, y)
        return _sgd(params, grads, lr), jax.lax.psum(value, axis)

    mapped = jax.shard_map(step, mesh=mesh, in_specs=(P(axis), P(axis), P(axis)),
                           out_specs=(P(axis), P()), check_vma=False)
    options = {"xla_disable_hlo_passes": "cse_barrier_expander"} if keep_remat else None
    return jax.jit(mapped, compiler_options=options)


# --- Megatron tensor parallelism: one transformer layer --------------------------------------

TP_AXIS = "model"


def megatron_layer_param_count(d_model=64, d_ff=256):
    """Parameters of :func:`megatron_layer_params`: ``4 d_model^2 + 2 d_model d_ff + 2 d_model``.

    The fused query/key/value projection (3 d_model^2), the output projection (d_model^2), the
    FFN's two matrices (2 d_model d_ff) and the two RMSNorm gains (2 d_model); no biases.

    Raises:
        ValueError: If a size is not a whole number > 0.
    """
    d, f = (_positive_int(k, v) for k, v in (("d_model", d_model), ("d_ff", d_ff)))
    return 4 * d * d + 2 * d * f + 2 * d


def megatron_layer_params(d_model=64, n_heads=8, d_ff=256, *, seed=0, dtype=np.float32):
    """Seeded parameters of one pre-norm transformer layer with no biases (a dict of numpy arrays).

    Keys:

    - ``g1``, ``g2`` (d_model,): the RMSNorm gains before the attention and before the FFN;
    - ``wqkv`` (d_model, 3, n_heads, d_head): the query, key and value projections fused into
      one matrix, head by head, as Megatron's ``query_key_value`` is (one matmul, so its
      backward is ONE partial sum to all-reduce; see :func:`megatron_train_step`);
    - ``wo`` (n_heads, d_head, d_model): the attention's output projection;
    - ``w1`` (d_model, d_ff), ``w2`` (d_ff, d_model): the GELU FFN.

    :func:`megatron_layer` reads the number of heads back from the shapes, so the same code
    runs on one device's shard of the heads under ``shard_map``. To shard over t devices
    (:func:`megatron_param_specs`), n_heads and d_ff must be multiples of t.

    Args:
        d_model (int): Model width, a multiple of ``n_heads``. Default 64.
        n_heads (int): Attention heads (d_head = d_model / n_heads). Default 8.
        d_ff (int): FFN hidden width. Default 256.

    Keyword Args:
        seed (int): Seed of the numpy generator. Default 0.
        dtype: numpy dtype of the arrays. Default float32.

    Returns:
        dict[str, numpy.ndarray]: The parameters, ``megatron_layer_param_count`` values in all.

    Raises:
        ValueError: If a size is not a whole number > 0, or ``n_heads`` does not divide
            ``d_model``.
    """
    megatron_layer_param_count(d_model, d_ff)  # validates the sizes
    h = _positive_int("n_heads", n_heads)
    if d_model % h:
        raise ValueError(f"n_heads={h} must divide d_model={d_model}")
    d, f, k = d_model, d_ff, d_model // h
    rng = np.random.default_rng(seed)

    def matrix(shape, fan_in):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)

    return {"g1": (1 + 0.1 * rng.standard_normal(d)).astype(dtype),
            "wqkv": matrix((d, 3, h, k), d), "wo": matrix((h, k, d), d),
            "g2": (1 + 0.1 * rng.standard_normal(d)).astype(dtype),
            "w1": matrix((d, f), d), "w2": matrix((f, d), f)}


def megatron_param_specs(axis=TP_AXIS):
    """Megatron's layout of :func:`megatron_layer_params` as ``PartitionSpec`` s over ``axis``.

    Column-parallel (split by output columns): ``wqkv`` by heads and ``w1`` by hidden units;
    row-parallel (split by input rows): ``wo`` by heads and ``w2`` by hidden units; the norm
    gains replicated. Each sublayer then computes its own heads or hidden units with no
    communication and ends in a partial sum of ``b x s x d_model`` over the devices.
    """
    return {"g1": P(), "wqkv": P(None, None, axis, None), "wo": P(axis, None, None),
            "g2": P(), "w1": P(None, axis), "w2": P(axis, None)}


def _rmsnorm(h, g):
    return h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + 1e-6) * g


def _attention(p, z):
    q, k, v = jnp.einsum("bsd,dchk->cbshk", z, p["wqkv"])   # one matmul: Megatron's fused QKV
    s = z.shape[1]
    scores = jnp.einsum("bqhk,bshk->bhqs", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(np.tril(np.ones((s, s), bool)), scores, -jnp.inf)   # causal
    o = jnp.einsum("bhqs,bshk->bqhk", jax.nn.softmax(scores, axis=-1), v)
    return jnp.einsum("bqhk,hkd->bqd", o, p["wo"])


def _ffn(p, z):
    return jax.nn.gelu(z @ p["w1"]) @ p["w2"]


def _identity(v):
    return v


def _layer(p, x, enter=_identity, leave=_identity, between=_identity):
    # enter: on each sublayer's normed input; leave: on its output before the residual add;
    # between: on the residual stream around the sublayers.
    x = between(x)
    h = between(x + leave(_attention(p, enter(_rmsnorm(x, p["g1"])))))
    return between(h + leave(_ffn(p, enter(_rmsnorm(h, p["g2"])))))


def megatron_layer(params, x):
    """One pre-norm layer: ``h = x + attn(rmsnorm(x))``, ``out = h + ffn(rmsnorm(h))``.

    Multi-head causal self-attention (softmax of ``q k^T / sqrt(d_head)``) and a GELU FFN
    (tanh approximation, ``jax.nn.gelu``'s default), in ``jax.numpy``. Unsharded on its own;
    the sharded programs below run this same code.

    Args:
        params (dict): As :func:`megatron_layer_params` makes them (numpy or JAX arrays).
        x: The layer's input, (batch, seq_len, d_model).

    Returns:
        jax.Array: The output, (batch, seq_len, d_model).
    """
    return _layer(params, x)


def megatron_loss(params, x):
    """Half the sum of squares of :func:`megatron_layer`'s output (its gradient is the output).

    A loss that reads the output, rather than the output times a fixed tensor, makes the
    backward pass wait for the forward's last all-reduce: with a fixed tensor the output's
    gradient does not depend on the output, and XLA's all-reduce combiner (seen while writing
    this) then merges the FFN's forward all-reduce with the backward's first one into a
    single tuple-shaped all-reduce, the same bytes in one instruction fewer.
    """
    return 0.5 * jnp.sum(megatron_layer(params, x) ** 2)


def megatron_example(batch=2, seq_len=16, d_model=64, *, seed=1, dtype=np.float32):
    """A seeded input for :func:`megatron_layer`: (batch, seq_len, d_model) standard normals.

    Raises:
        ValueError: If a size is not a whole number > 0.
    """
    shape = tuple(_positive_int(k, v) for k, v in
                  (("batch", batch), ("seq_len", seq_len), ("d_model", d_model)))
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _megatron_shardings(mesh, sequence_parallel):
    axis = mesh.axis_names[0]
    params = {k: NamedSharding(mesh, s) for k, s in megatron_param_specs(axis).items()}
    acts = NamedSharding(mesh, P(None, axis, None) if sequence_parallel else P())
    return params, acts


def megatron_forward(mesh, *, sequence_parallel=False):
    """The layer's forward pass, sharded by ``jax.jit`` shardings: XLA places the collectives.

    The weights are laid out as :func:`megatron_param_specs`; the residual stream (input,
    output, and the activations between the sublayers, by ``with_sharding_constraint``) is
    replicated, or with ``sequence_parallel`` split along the sequence axis.

    What XLA 0.10.2's CPU pipeline emits for 8 devices (``tests/test_xla.py`` holds it):

    - tensor parallel: Megatron's program, one all-reduce of ``b x s x d_model`` after each
      sublayer (Megatron's g: the partial sums of ``wo`` and ``w2``), 2 (t - 1)/t of the
      buffer sent per device;
    - ``sequence_parallel``: an all-gather along the sequence of the normed
      ``b x s/t x d_model`` slices before each sublayer, as Megatron does (Korthikanti et al.'s
      g), but after it, where Megatron reduce-scatters (their g-bar), an all-reduce of the whole
      ``b x s x d_model`` partial sum followed by each device slicing out its tokens (a
      ``dynamic-slice``): the CPU pipeline has no pass that turns all-reduce + dynamic-slice
      into a reduce-scatter (the GPU pipeline's ``ReduceScatterCreator`` does). An all-reduce
      sends 2 (t - 1)/t of its buffer, a reduce-scatter (t - 1)/t, so per sublayer each device
      sends (t - 1)/t + 2 (t - 1)/t = 3 (t - 1)/t buffers instead of Megatron's 2 (t - 1)/t:
      1.5 times the bytes (for b, s, d = 2, 16, 64 in float32 and t = 8: 21 504 instead of
      14 336 bytes per sublayer, 43 008 instead of 28 672 per layer), half as much again as
      plain tensor parallelism, which it was meant to match.
      :func:`megatron_sequence_parallel_forward` writes Megatron's program by hand.

    Args:
        mesh: A one-axis mesh (its axis is the tensor-parallel one).

    Keyword Args:
        sequence_parallel (bool): Split the residual stream along the sequence. Default False.

    Returns:
        A jitted ``forward(params, x) -> out``.
    """
    params, acts = _megatron_shardings(mesh, sequence_parallel)

    def forward(p, x):
        return _layer(p, x, between=lambda v: jax.lax.with_sharding_constraint(v, acts))

    return jax.jit(forward, in_shardings=(params, acts), out_shardings=acts)


def megatron_train_step(mesh):
    """Loss and gradients of :func:`megatron_loss`, tensor-parallel by ``jax.jit`` shardings.

    The backward pass of each sublayer ends in the gradient of its normed input, a partial sum
    over the devices' heads or hidden units (``dz = dqkv wqkv^T`` summed over heads): one more
    all-reduce of ``b x s x d_model`` per sublayer (Megatron's f), so the step has four, each
    run once. The gradient of the input ``x`` is returned too (the layer below needs it), and
    the weights' gradients come out sharded like the weights (the SGD update on them is local).

    Written with separate ``wq``, ``wk``, ``wv`` matrices (seen while writing this, not kept),
    the partitioner all-reduces each of the three partial products ``dq wq^T``, ``dk wk^T``,
    ``dv wv^T`` before adding them: a combined all-reduce of three buffers in the attention's
    backward, 3 times Megatron's bytes there. Fusing QKV, as Megatron does, leaves one.

    Args:
        mesh: A one-axis mesh.

    Returns:
        A jitted ``step(params, x) -> (loss, grads, dx)``: ``grads`` a dict like ``params``,
        ``dx`` the gradient of ``x``.
    """
    params, acts = _megatron_shardings(mesh, False)

    def step(p, x):
        loss, (grads, dx) = jax.value_and_grad(megatron_loss, argnums=(0, 1))(p, x)
        return loss, grads, dx

    return jax.jit(step, in_shardings=(params, acts), out_shardings=(acts, params, acts))


def _sequence_parallel_body(axis):
    def enter(z):       # g: gather every device's tokens before the sublayer
        return jax.lax.all_gather(z, axis, axis=1, tiled=True)

    def leave(y):       # g-bar: sum the partial outputs over the devices, keep my tokens
        return jax.lax.psum_scatter(y, axis, scatter_dimension=1, tiled=True)

    return lambda p, x: _layer(p, x, enter, leave)


def megatron_sequence_parallel_forward(mesh):
    """Megatron's sequence parallelism written by hand under ``jax.shard_map``.

    Each device holds ``x[:, its s/t tokens, :]`` and its shards of the weights
    (:func:`megatron_param_specs`). Before each sublayer it normalises its own tokens and
    ``all_gather`` s the normed slices along the sequence (``tiled=True``: b x s x d_model);
    after it, ``psum_scatter`` (``scatter_dimension=1``, ``tiled=True``) sums the partial
    outputs over the devices and leaves each its own tokens, for the residual add. XLA compiles
    exactly one all-gather and one reduce-scatter of a ``b x s x d_model`` buffer per sublayer,
    (t - 1)/t of it sent per device each: the 2 (t - 1)/t of the all-reduce they replace.

    Args:
        mesh: A one-axis mesh.

    Returns:
        A jitted ``forward(params, x) -> out``, ``x`` and ``out`` split along the sequence.
    """
    axis = mesh.axis_names[0]
    seq = P(None, axis, None)
    return jax.jit(jax.shard_map(_sequence_parallel_body(axis), mesh=mesh,
                                 in_specs=(megatron_param_specs(axis), seq), out_specs=seq,
                                 check_vma=True))


def megatron_sequence_parallel_train_step(mesh):
    """Loss and gradients of :func:`megatron_loss` under the by-hand sequence parallelism.

    Differentiating :func:`megatron_sequence_parallel_forward` turns each all-gather into a
    reduce-scatter and each reduce-scatter into an all-gather (each other's transposes). The
    norm gains are replicated but every device applies them to its own tokens only, so their
    gradients are partial sums: ``shard_map``'s replication tracking (``check_vma``) inserts
    the all-reduce (a ``psum``) of them; XLA combines the two into one all-reduce of
    2 d_model values, the term ``tensor_parallel_bytes`` adds to the backward with
    ``sequence_parallel``. Each device's share of the loss comes back on its own (no scalar
    all-reduce).

    Args:
        mesh: A one-axis mesh.

    Returns:
        A jitted ``step(params, x) -> (losses, grads, dx)``: ``losses`` (t,) one share per
        device (their sum is the loss), ``grads`` sharded like ``params``, ``dx`` like ``x``.
    """
    axis = mesh.axis_names[0]
    seq, specs = P(None, axis, None), megatron_param_specs(axis)
    body = _sequence_parallel_body(axis)

    def step(p, x):
        share = lambda p, x: 0.5 * jnp.sum(body(p, x) ** 2)  # noqa: E731
        loss, (grads, dx) = jax.value_and_grad(share, argnums=(0, 1))(p, x)
        return loss[None], grads, dx

    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(specs, seq),
                                 out_specs=(P(axis), specs, seq), check_vma=True))


# --- timing real collectives ------------------------------------------------------------------

_TIMED = ("all-reduce", "all-gather", "reduce-scatter")


def _collective_program(kind, n_bytes, n_devices):
    m = mesh(n_devices)
    per_device = n_bytes // 4            # float32 elements of one device's full buffer
    if kind == "all-reduce":
        body, local = (lambda v: jax.lax.psum(v, AXIS)), per_device
    elif kind == "all-gather":
        body = lambda v: jax.lax.all_gather(v, AXIS, axis=0, tiled=True)  # noqa: E731
        local = per_device // n_devices
    else:
        body = lambda v: jax.lax.psum_scatter(v, AXIS, scatter_dimension=0,  # noqa: E731
                                              tiled=True)
        local = per_device
    fn = jax.jit(jax.shard_map(body, mesh=m, in_specs=P(AXIS), out_specs=P(AXIS),
                               check_vma=False))
    x = jax.device_put(np.ones(local * n_devices, np.float32), NamedSharding(m, P(AXIS)))
    return fn, x


def time_collective(kind, n_bytes, n_devices=8, *, repeats=5):
    """Best wall time (seconds) of one real collective among ``n_devices`` host CPU devices.

    The collective (a ``psum``, ``all_gather`` or ``psum_scatter`` of float32 under
    ``shard_map``) is compiled once, checked to be exactly one collective of ``kind`` in the
    optimized HLO, run once to warm up, then timed ``repeats`` times with
    ``block_until_ready``; the best time is returned. The CPU "devices" are threads of one
    process sharing memory: XLA's CPU collectives are memory copies and a rendezvous, not a
    network and not a ring, so the alpha and beta fitted to these times describe this machine's
    memory system and thread synchronisation, not any interconnect. Never assert on them.

    Args:
        kind (str): ``"all-reduce"``, ``"all-gather"`` or ``"reduce-scatter"``.
        n_bytes (int): The full buffer in bytes (an all-reduce's input on each device, an
            all-gather's output, a reduce-scatter's input), a multiple of 4 * n_devices.
        n_devices (int): Devices taking part, a whole number > 1. Default 8.

    Keyword Args:
        repeats (int): Timed runs, a whole number > 0. Default 5.

    Returns:
        float: Seconds of the fastest run.

    Raises:
        ValueError: If an argument is not valid (the message names it) or fewer CPU devices
            exist.
    """
    if kind not in _TIMED:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _TIMED))}, got {kind!r}")
    n_devices = _positive_int("n_devices", n_devices)
    if n_devices < 2:
        raise ValueError(f"n_devices must be > 1 for a collective, got {n_devices}")
    repeats = _positive_int("repeats", repeats)
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, np.integer)) or n_bytes <= 0 \
            or n_bytes % (4 * n_devices):
        raise ValueError(f"n_bytes must be a positive multiple of 4 * n_devices = "
                         f"{4 * n_devices} (float32 shards), got {n_bytes!r}")
    fn, x = _collective_program(kind, int(n_bytes), n_devices)
    compiled = fn.lower(x).compile()
    found = parse_collectives(compiled.as_text())
    if [(r.kind, r.n_bytes, r.group_size) for r in found] != [(kind, n_bytes, n_devices)]:
        raise RuntimeError(f"expected one {kind} of {n_bytes} bytes over {n_devices} devices, "
                           f"XLA compiled {found}")
    compiled(x).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        compiled(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass(frozen=True)
class AlphaBeta:
    """The alpha-beta model ``t = alpha + bytes / beta`` fitted by :func:`fit_alpha_beta`.

    Attributes:
        alpha (float): Seconds per collective at zero bytes (latency).
        beta (float): Bytes per second (inf when the times do not grow with the bytes).
    """

    alpha: float
    beta: float


def fit_alpha_beta(sizes, times, *, relative=False):
    """Least squares of ``t = alpha + bytes / beta`` to measured times.

    Pass as ``sizes`` the bytes each device sends (``fb.collective_bytes`` of each buffer) for
    beta to be a per-device bandwidth, or the buffers themselves for an "effective" one. Plain
    least squares is ruled by the largest sizes (their times are the largest); over sizes that
    span decades ``relative=True`` minimises the relative errors instead (weights 1/t^2), so
    the small sizes, which set alpha, count as much as the large ones, which set beta.

    Args:
        sizes (array-like): Bytes, >= 0, at least two different values.
        times (array-like): Seconds, >= 0 (> 0 with ``relative``), one per size.

    Keyword Args:
        relative (bool): Minimise relative rather than absolute errors. Default False.

    Returns:
        AlphaBeta: ``alpha`` (s; negative when the times curve upwards, as memory copies do
        once buffers leave the caches) and ``beta`` (bytes/s; inf for a zero or negative slope).

    Raises:
        ValueError: If ``sizes``, ``times`` or ``relative`` is not valid (the message names it).
    """
    def vector(name, value):
        try:
            v = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers, got {value!r}") from None
        if v.ndim != 1 or not np.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"{name} must be a 1-d sequence of finite numbers >= 0, "
                             f"got {value!r}")
        return v

    s, t = vector("sizes", sizes), vector("times", times)
    if not isinstance(relative, (bool, np.bool_)):
        raise ValueError(f"relative must be True or False, got {relative!r}")
    if len(s) != len(t):
        raise ValueError(f"times must have one value per size: {len(t)} times for "
                         f"{len(s)} sizes")
    if len(np.unique(s)) < 2:
        raise ValueError("sizes must hold at least two different values to fit a line")
    if relative and (t == 0).any():
        raise ValueError("times must be > 0 with relative=True (errors relative to them)")
    w = 1 / t ** 2 if relative else np.ones_like(t)
    # Closed form on (weighted) centred data, not np.polyfit, whose solver leaves a 1e-17
    # slope on flat times: slope = cov(s, t) / var(s), exactly 0 when the times do not change.
    s_mean, t_mean = (w @ s) / w.sum(), (w @ t) / w.sum()
    ds, dt = s - s_mean, t - t_mean
    slope = float((w * ds) @ dt / ((w * ds) @ ds))
    alpha = float(t_mean - slope * s_mean)
    return AlphaBeta(alpha=alpha, beta=1 / slope if slope > 0 else math.inf)
