"""The communication formulas against a real SPMD compiler: JAX/XLA on 8 host CPU devices.

Each program is compiled once (module fixture); the collectives are read from the optimized HLO
(``flopsbook.reference.xla``) and their bytes, summed with ``fb.collective_bytes``, are held
against ``fb.data_parallel_bytes`` for the model's exact parameter count. Where XLA does not do
what the textbook algorithm does, the test says what it does instead and why the bytes still
add up (or by how much they do not). ``tests/conftest.py`` sets XLA_FLAGS for 8 devices.
"""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import flopsbook as fb


class _OnFirstUse:
    """A module imported when a test first uses it. pytest-xdist's workers each collect every
    file, and starting JAX costs about a second and a half: the worker that never runs these
    tests should not pay it."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        # pytest's collection probes every module attribute for fixture markers (names that
        # start with an underscore); answering those would start JAX in every worker.
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)


jax = _OnFirstUse("jax")
xla = _OnFirstUse("flopsbook.reference.xla")

N = 8                       # devices
D_MODEL, D_FF, LAYERS = 64, 256, 2
# 2 layers x (W1 64x256 + W2 256x64 + b1 256 + g 64), counted by hand from the shapes.
PSI = 2 * (64 * 256 + 256 * 64 + 256 + 64)
F32 = 4                     # bytes per value: the programs train in float32
LOSS = 4                    # the f32[] loss, all-reduced so every device returns it


def sent(records, kind=None):
    """Bytes each device sends in the records (of one kind), by the ring formulas."""
    return sum(fb.collective_bytes(r.kind, r.n_bytes, r.group_size) * r.count
               for r in records if kind is None or r.kind == kind)


def of(records, kind):
    return [r for r in records if r.kind == kind]


# LLVM's optimisations shape machine code, not the HLO passes that place and combine
# collectives: level 0, and XLA CPU's older elemental emitters for the fused loops instead of its
# MLIR fusion emitters, compile about four times as fast with the same collectives (checked: the
# collectives of every program below are the same with the defaults) and the same numbers.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@pytest.fixture(scope="module")
def programs():
    mesh = xla.mesh(N)
    params = xla.mlp_params(D_MODEL, D_FF, LAYERS)
    x, y = xla.example_batch(32, D_MODEL)
    reference = jax.jit(xla.reference_step).lower(params, x, y).compile(FAST)(params, x, y)
    out = {}
    for name, step in [("dp", xla.data_parallel_step(mesh)), ("fsdp", xla.fsdp_step(mesh)),
                       ("zero3", xla.zero3_step(mesh)),
                       ("zero3_cse", xla.zero3_step(mesh, keep_remat=False))]:
        options = dict(FAST, **({"xla_disable_hlo_passes": "cse_barrier_expander"}
                                if name == "zero3" else {}))
        compiled = step.lower(params, x, y).compile(options)
        out[name] = (xla.compiled_collectives(compiled), compiled(params, x, y))
    return out, reference


def test_the_model_has_the_stated_parameter_count():
    params = xla.mlp_params(D_MODEL, D_FF, LAYERS)
    assert sum(a.size for p in params for a in p.values()) == PSI == 66_176
    assert xla.mlp_param_count(D_MODEL, D_FF, LAYERS) == PSI


@pytest.mark.parametrize("name", ["dp", "fsdp", "zero3", "zero3_cse"])
def test_every_program_takes_the_same_sgd_step(programs, name):
    # The collectives counted below belong to a correct training step: new parameters and loss
    # equal one device's step on the whole batch (float32 sums in a different order).
    out, (ref_params, ref_loss) = programs
    new_params, loss = out[name][1]
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-5)
    for got, want in zip(jax.tree.leaves(new_params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_data_parallelism_all_reduces_the_gradients_once(programs):
    records = programs[0]["dp"][0]
    # XLA's CPU all-reduce combiner merges the 8 gradient all-reduces and the loss's into ONE
    # tuple-shaped all-reduce (the whole model is far under its size threshold).
    [ar] = records
    assert ar.kind == "all-reduce" and ar.group_size == N and ar.n_groups == 1
    assert sorted(ar.operand_shapes) == sorted(
        [(256,), (64,), (64, 256), (256, 64)] * LAYERS + [()])
    assert set(ar.operand_dtypes) == {"f32"}
    assert ar.n_bytes == F32 * PSI + LOSS == 264_708
    dp = fb.data_parallel_bytes(PSI, N, zero_stage=0, bytes_per_value=F32)
    assert sent(records) == dp.gradients + fb.collective_bytes("all-reduce", LOSS, N)
    assert sent(records) == 2 * 7 / 8 * 264_708 and dp.parameters == 0


def test_fsdp_by_jit_gathers_once_and_all_reduces_the_gradients(programs):
    records = programs[0]["fsdp"][0]
    gathers, reduces = of(records, "all-gather"), of(records, "all-reduce")
    assert {r.kind for r in records} == {"all-gather", "all-reduce"}
    # One all-gather per parameter tensor (the CPU pipeline has no all-gather combiner), each
    # from its 1/8 shard to the whole tensor, and only in the forward: with no remat the
    # gathered parameters stay alive for the backward, so XLA never gathers them again.
    assert len(gathers) == 4 * LAYERS
    assert sorted(r.result_shapes[0] for r in gathers) == sorted(
        [(256,), (64,), (64, 256), (256, 64)] * LAYERS)
    assert all(r.operand_shapes[0][0] * N == r.result_shapes[0][0] for r in gathers)
    assert sum(r.n_bytes for r in gathers) == F32 * PSI
    # No reduce-scatter: the CPU pipeline has no reduce-scatter creator, so the partitioner's
    # "sum the gradients, keep my shard" stays an all-reduce of the whole gradient (one tuple,
    # with the loss) followed by each device slicing its own shard for the update.
    [ar] = reduces
    assert ar.n_bytes == F32 * PSI + LOSS and ar.group_size == N
    # So each field is a different stage's: the parameters travel as ZeRO-1/2's (gathered
    # once), the gradients as plain data parallelism's (all-reduced), and the total is exactly
    # ZeRO-3's 3 (n - 1)/n Psi: one gather fewer, one all-reduce (= 2 ring passes) instead of a
    # reduce-scatter (1 pass).
    zero1 = fb.data_parallel_bytes(PSI, N, zero_stage=1, bytes_per_value=F32)
    zero0 = fb.data_parallel_bytes(PSI, N, zero_stage=0, bytes_per_value=F32)
    zero3 = fb.data_parallel_bytes(PSI, N, zero_stage=3, bytes_per_value=F32)
    loss = fb.collective_bytes("all-reduce", LOSS, N)
    assert sent(records, "all-gather") == zero1.parameters
    assert sent(records, "all-reduce") == zero0.gradients + loss
    assert sent(records) == zero3.total + loss == 3 * 7 / 8 * F32 * PSI + loss


def test_zero3_by_hand_gathers_twice_and_reduce_scatters(programs):
    records = programs[0]["zero3"][0]
    gathers = of(records, "all-gather")
    scatters = of(records, "reduce-scatter")
    # Forward: 4 gathers per block; backward: jax.checkpoint recomputes each block, so its 4
    # gathers run again (every parameter's value is needed there: no output bias).
    assert len(gathers) == 2 * 4 * LAYERS
    assert sum(r.n_bytes for r in gathers) == 2 * F32 * PSI
    # The gather's custom backward: one explicit psum_scatter per tensor (not combined), from
    # the whole gradient to this device's shard.
    assert len(scatters) == 4 * LAYERS
    assert sum(r.n_bytes for r in scatters) == F32 * PSI
    assert all(r.result_shapes[0][0] * N == r.operand_shapes[0][0] for r in scatters)
    # The reported loss is a psum of each device's share.
    [loss] = of(records, "all-reduce")
    assert loss.n_bytes == LOSS and loss.operand_shapes == ((),)
    assert {r.group_size for r in records} == {N}
    zero3 = fb.data_parallel_bytes(PSI, N, zero_stage=3, bytes_per_value=F32)
    assert sent(records, "all-gather") == zero3.parameters == 2 * 7 / 8 * F32 * PSI
    assert sent(records, "reduce-scatter") == zero3.gradients == 7 / 8 * F32 * PSI
    assert sent(records) == zero3.total + fb.collective_bytes("all-reduce", LOSS, N)


def test_xla_cpu_undoes_zero3s_rematerialised_gathers(programs):
    # With the default CPU pipeline, cse_barrier_expander strips the optimization barriers
    # jax.checkpoint puts on the recomputation and the CSE after it merges each backward gather
    # into its forward twin (same operand, same replica groups): the gathered parameters are
    # kept alive instead, the memory ZeRO-3 meant to save. Half the parameter traffic.
    records = programs[0]["zero3_cse"][0]
    zero3 = fb.data_parallel_bytes(PSI, N, zero_stage=3, bytes_per_value=F32)
    assert len(of(records, "all-gather")) == 4 * LAYERS
    assert sent(records, "all-gather") == zero3.parameters / 2
    assert sent(records, "reduce-scatter") == zero3.gradients


def test_a_collective_in_a_loop_counts_its_trip_count():
    from jax.sharding import PartitionSpec as P

    def body(v):
        return jax.lax.fori_loop(0, 3, lambda i, c: jax.lax.psum(c, "data") / N, v)

    fn = jax.jit(jax.shard_map(body, mesh=xla.mesh(N), in_specs=P("data"), out_specs=P("data"),
                               check_vma=False))
    [r] = xla.compiled_collectives(fn, np.ones(64, np.float32))
    assert (r.kind, r.operand_shapes, r.n_bytes, r.group_size, r.count) == \
        ("all-reduce", ((8,),), 32, N, 3)


# A GPU-style module: async pairs (counted once), a combined all-reduce-start, iota and
# explicit replica groups, operand shapes printed inline (an older printer).
GPU_HLO = """\
HloModule jit_f, is_scheduled=true, num_partitions=8

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add = f32[] add(f32[] %x, f32[] %y)
}

ENTRY %main (p0: bf16[8,256], p1: f32[1024], p2: f32[16]) -> (bf16[64,256], f32[1024]) {
  %p0 = bf16[8,256]{1,0} parameter(0)
  %p1 = f32[1024]{0} parameter(1)
  %p2 = f32[16]{0} parameter(2)
  %all-gather-start = (bf16[8,256]{1,0}, bf16[64,256]{1,0}) all-gather-start(bf16[8,256]{1,0} %p0), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %all-gather-done = bf16[64,256]{1,0} all-gather-done((bf16[8,256]{1,0}, bf16[64,256]{1,0}) %all-gather-start)
  %all-reduce-start = (f32[1024]{0}, f32[16]{0}) all-reduce-start(f32[1024]{0} %p1, f32[16]{0} %p2), channel_id=2, replica_groups={{0,1,2,3},{4,5,6,7}}, use_global_device_ids=true, to_apply=%add
  %all-reduce-done = (f32[1024]{0}, f32[16]{0}) all-reduce-done((f32[1024]{0}, f32[16]{0}) %all-reduce-start)
  %reduce-scatter = f32[128]{0} reduce-scatter(f32[1024]{0} %p1), channel_id=3, replica_groups={}, use_global_device_ids=true, dimensions={0}, to_apply=%add
  ROOT %tuple = (bf16[64,256]{1,0}, f32[1024]{0}) tuple(bf16[64,256]{1,0} %all-gather-done, f32[1024]{0} %p1)
}
"""


def test_async_pairs_and_combined_collectives_are_read_once():
    ag, ar, rs = xla.parse_collectives(GPU_HLO)
    assert (ag.kind, ag.operand_shapes, ag.result_shapes, ag.operand_dtypes) == \
        ("all-gather", ((8, 256),), ((64, 256),), ("bf16",))
    assert (ag.n_bytes, ag.group_size, ag.n_groups) == (64 * 256 * 2, 8, 1)
    assert (ar.kind, ar.operand_shapes, ar.n_bytes) == ("all-reduce", ((1024,), (16,)), 4160)
    assert (ar.group_size, ar.n_groups) == (4, 2)
    # Empty replica groups: every device of the module (num_partitions).
    assert (rs.kind, rs.n_bytes, rs.result_shapes, rs.group_size) == \
        ("reduce-scatter", 4096, ((128,),), 8)


def test_unreadable_input_raises():
    with pytest.raises(ValueError, match="hlo_text"):
        xla.parse_collectives(b"HloModule")
    with pytest.raises(ValueError, match="fn"):
        xla.compiled_collectives(42)
    with pytest.raises(ValueError, match="XLA_FLAGS=--xla_force_host_platform_device_count"):
        xla.cpu_devices(N + 1)
    with pytest.raises(ValueError, match="^n must"):
        xla.cpu_devices(0)


@pytest.mark.parametrize("relative", [False, True])
def test_fit_alpha_beta_recovers_the_line_exactly(relative):
    sizes = np.array([0, 1e6, 4e6, 16e6, 64e6])
    fit = xla.fit_alpha_beta(sizes, 25e-6 + sizes / 5e9, relative=relative)
    assert fit.alpha == pytest.approx(25e-6, rel=1e-9)
    assert fit.beta == pytest.approx(5e9, rel=1e-9)


def test_fit_alpha_beta_of_flat_times_has_no_bandwidth_term():
    assert xla.fit_alpha_beta([1, 2, 4], [3.0, 3.0, 3.0]) == xla.AlphaBeta(3.0, float("inf"))


@pytest.mark.parametrize("sizes, times, arg", [
    ([1, 1], [1.0, 2.0], "sizes"), ([1, 2], [1.0], "times"), ([1, -2], [1.0, 2.0], "sizes"),
    ([1, 2], [1.0, float("nan")], "times"), ("ab", [1.0, 2.0], "sizes")])
def test_fit_alpha_beta_names_the_bad_argument(sizes, times, arg):
    with pytest.raises(ValueError, match=f"^{arg}"):
        xla.fit_alpha_beta(sizes, times)


def test_fit_alpha_beta_names_relative():
    with pytest.raises(ValueError, match="^relative"):
        xla.fit_alpha_beta([1, 2], [1.0, 2.0], relative="yes")
    with pytest.raises(ValueError, match="^times.*relative"):
        xla.fit_alpha_beta([1, 2], [0.0, 2.0], relative=True)


@pytest.mark.parametrize("kind", ["all-reduce", "all-gather", "reduce-scatter"])
def test_time_collective_runs_the_real_collective(kind):
    # time_collective itself checks that XLA compiled exactly this collective; the seconds are
    # only checked to be a time (never against a value: wall time is not a test).
    seconds = xla.time_collective(kind, 4 * N * 256, N, repeats=2)
    assert np.isfinite(seconds) and seconds > 0


@pytest.mark.parametrize("args, arg", [
    (("broadcast", 4096), "kind"), (("all-reduce", 4097), "n_bytes"),
    (("all-reduce", 0), "n_bytes"), (("all-reduce", 4096, 1), "n_devices"),
    (("all-reduce", 4096, 8, 0), "repeats")])
def test_time_collective_names_the_bad_argument(args, arg):
    kind, n_bytes, *rest = args
    kwargs = {"repeats": rest[1]} if len(rest) > 1 else {}
    with pytest.raises(ValueError, match=f"^{arg}"):
        xla.time_collective(kind, n_bytes, *rest[:1], **kwargs)


# --- Megatron tensor and sequence parallelism of one transformer layer ------------------------

B, S, HEADS, TP = 2, 16, 8, N       # batch, sequence, heads; the layer's d_model, d_ff as above
ACT = B * S * D_MODEL * F32         # one b x s x d_model float32 activation: 8192 bytes
SPEC = fb.Transformer(n_layers=1, d_model=D_MODEL, n_heads=HEADS, d_ff=D_FF, vocab_size=256,
                      seq_len=S, norm="rmsnorm", bias=False, positional="none", ffn="gelu")


def numpy_layer(p, x):
    """The layer again, in float64 numpy, from the parameter layout megatron_layer_params states."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(x, np.float64)

    def norm(h, g):
        return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + 1e-6) * g

    def gelu(u):                    # the tanh approximation (jax.nn.gelu's default)
        return 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u ** 3)))

    z = norm(x, p["g1"])
    q, k, v = (np.einsum("bsd,dhk->bshk", z, p["wqkv"][:, i]) for i in range(3))
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    scores[..., np.triu(np.ones((S, S), bool), 1)] = -np.inf      # no looking ahead
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    heads = np.einsum("bhqs,bshk->bqhk", weights, v)
    h = x + np.einsum("bqhk,hkd->bqd", heads, p["wo"])
    return h + gelu(norm(h, p["g2"]) @ p["w1"]) @ p["w2"]


@pytest.fixture(scope="module")
def megatron():
    mesh = xla.mesh(TP, xla.TP_AXIS)
    params = xla.megatron_layer_params(D_MODEL, HEADS, D_FF)
    x = xla.megatron_example(B, S, D_MODEL)
    reference = jax.jit(jax.value_and_grad(xla.megatron_loss, argnums=(0, 1)))
    out = {"reference": (None, reference.lower(params, x).compile(FAST)(params, x))}
    for name, program in [("tp", xla.megatron_forward(mesh)),
                          ("tp_step", xla.megatron_train_step(mesh)),
                          ("sp_jit", xla.megatron_forward(mesh, sequence_parallel=True)),
                          ("sp", xla.megatron_sequence_parallel_forward(mesh)),
                          ("sp_step", xla.megatron_sequence_parallel_train_step(mesh))]:
        compiled = program.lower(params, x).compile(FAST)
        out[name] = (xla.compiled_collectives(compiled), compiled(params, x))
    return out, params, x


def tp_bytes(sequence_parallel=False):
    return fb.tensor_parallel_bytes(SPEC, B, S, TP, sequence_parallel=sequence_parallel,
                                    bytes_per_value=F32)


def test_the_megatron_layer_has_the_spec_layer_s_parameters():
    params = xla.megatron_layer_params(D_MODEL, HEADS, D_FF)
    assert {k: v.shape for k, v in params.items()} == {
        "g1": (64,), "wqkv": (64, 3, 8, 8), "wo": (8, 8, 64), "g2": (64,), "w1": (64, 256),
        "w2": (256, 64)}
    # 4 d^2 attention + 2 d d_ff FFN + 2 d norm gains, counted by hand: the spec's layer.
    assert sum(v.size for v in params.values()) == 4 * 64 ** 2 + 2 * 64 * 256 + 2 * 64 == 49_280
    assert xla.megatron_layer_param_count(D_MODEL, D_FF) == 49_280
    parts = fb.param_breakdown(SPEC)
    assert (parts["attention"], parts["ffn"]) == (4 * 64 ** 2, 2 * 64 * 256)


@pytest.mark.parametrize("name", ["tp", "sp_jit", "sp"])
def test_every_sharded_forward_computes_the_unsharded_layer(megatron, name):
    out, params, x = megatron
    got = np.asarray(out[name][1])
    assert got.shape == (B, S, D_MODEL)
    np.testing.assert_allclose(got, numpy_layer(params, x), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["tp_step", "sp_step"])
def test_every_sharded_backward_takes_the_unsharded_gradients(megatron, name):
    out, params, x = megatron
    ref_loss, (ref_grads, ref_dx) = out["reference"][1]
    assert float(ref_loss) == pytest.approx(0.5 * np.sum(numpy_layer(params, x) ** 2), rel=1e-5)
    loss, grads, dx = out[name][1]
    # sp_step returns each device's share of the loss.
    assert float(np.sum(np.asarray(loss))) == pytest.approx(float(ref_loss), rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for key in ref_grads:
        np.testing.assert_allclose(np.asarray(grads[key]), np.asarray(ref_grads[key]),
                                   rtol=1e-4, atol=1e-4, err_msg=key)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-4, atol=1e-5)


def test_tensor_parallel_forward_all_reduces_once_per_sublayer(megatron):
    records = megatron[0]["tp"][0]
    # Megatron's g: the partial sums of the attention's wo and the FFN's w2, b x s x d each.
    assert [(r.kind, r.operand_shapes, r.n_bytes, r.group_size, r.count) for r in records] == \
        [("all-reduce", ((B, S, D_MODEL),), ACT, TP, 1)] * 2
    assert ACT == 8192
    assert sent(records) == tp_bytes().forward == 2 * 2 * 7 / 8 * 8192 == 28_672


def test_tensor_parallel_backward_adds_one_all_reduce_per_sublayer(megatron):
    records = megatron[0]["tp_step"][0]
    # The forward's two and, in the backward, Megatron's f: the gradient of each sublayer's
    # normed input, a partial sum over the devices' heads (one, as QKV is one fused matmul)
    # or hidden units. Not combined: each waits on the one before it (the loss reads the
    # output, so even the FFN's backward waits for the forward's last all-reduce).
    assert [(r.kind, r.operand_shapes, r.n_bytes, r.group_size, r.count) for r in records] == \
        [("all-reduce", ((B, S, D_MODEL),), ACT, TP, 1)] * 4
    forward = sent(megatron[0]["tp"][0])
    assert sent(records) - forward == tp_bytes().backward == 28_672
    assert sent(records) == tp_bytes().total


def test_sequence_parallelism_by_jit_all_gathers_then_all_reduces(megatron):
    records = megatron[0]["sp_jit"][0]
    # Before each sublayer the normed token slices are all-gathered along the sequence, as
    # Megatron does; after it XLA all-reduces the whole partial sum and each device slices out
    # its tokens: the CPU pipeline has no pass that makes a reduce-scatter of them.
    assert [(r.kind, r.operand_shapes, r.result_shapes) for r in records] == \
        [("all-gather", ((B, S // TP, D_MODEL),), ((B, S, D_MODEL),)),
         ("all-reduce", ((B, S, D_MODEL),), ((B, S, D_MODEL),))] * 2
    assert {(r.n_bytes, r.group_size, r.count) for r in records} == {(ACT, TP, 1)}
    # Per sublayer (t-1)/t + 2(t-1)/t = 3 * 7/8 buffers sent, not Megatron's 2 * 7/8: 1.5 times.
    megatron_sp = tp_bytes(sequence_parallel=True).forward
    assert sent(records, "all-gather") == 2 * 7 / 8 * 8192 == 14_336
    assert sent(records, "all-reduce") == 2 * 2 * 7 / 8 * 8192 == 28_672
    assert sent(records) == 1.5 * megatron_sp == 43_008


def test_sequence_parallelism_by_hand_all_gathers_and_reduce_scatters(megatron):
    records = megatron[0]["sp"][0]
    assert [(r.kind, r.operand_shapes, r.result_shapes) for r in records] == \
        [("all-gather", ((B, S // TP, D_MODEL),), ((B, S, D_MODEL),)),
         ("reduce-scatter", ((B, S, D_MODEL),), ((B, S // TP, D_MODEL),))] * 2
    assert {(r.n_bytes, r.group_size, r.count) for r in records} == {(ACT, TP, 1)}
    # (t-1)/t each: together the bytes of the all-reduce they replace.
    assert sent(records, "all-gather") == sent(records, "reduce-scatter") == 2 * 7 / 8 * 8192
    assert sent(records) == tp_bytes(sequence_parallel=True).forward == tp_bytes().forward


def test_sequence_parallel_backward_swaps_them_and_all_reduces_the_norm_gains(megatron):
    records = megatron[0]["sp_step"][0]
    gathers, scatters = of(records, "all-gather"), of(records, "reduce-scatter")
    # Forward 2 + backward 2 of each kind: an all-gather's transpose is a reduce-scatter and
    # the other way round, all of one b x s x d buffer.
    assert len(gathers) == len(scatters) == 4
    assert {(r.n_bytes, r.group_size, r.count) for r in gathers + scatters} == {(ACT, TP, 1)}
    # The two gains saw only this device's tokens: their gradients (reduced over batch and
    # tokens to 1 x 1 x d_model) are summed over the devices, in one combined all-reduce.
    [gains] = of(records, "all-reduce")
    assert gains.operand_shapes == ((1, 1, D_MODEL),) * 2 and gains.group_size == TP
    assert gains.n_bytes == 2 * D_MODEL * F32 == 512
    assert {r.kind for r in records} == {"all-gather", "reduce-scatter", "all-reduce"}
    sp = tp_bytes(sequence_parallel=True)
    assert sent(records) - sent(megatron[0]["sp"][0]) == sp.backward
    assert sp.backward - sp.forward == fb.collective_bytes("all-reduce", 512, TP) == 896
    assert sent(records) == sp.total == 58_240


def test_importing_flopsbook_does_not_import_jax():
    code = "import sys, flopsbook, flopsbook.reference; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
