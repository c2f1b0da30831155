"""The counted model-parallel simulation (flopsbook.reference.model_parallel) against the formulas.

Each split step is checked twice: its loss and gradients against the single-device
``train_step`` (the devices compute the right thing), and the bytes its busiest device sent
against ``fb.tensor_parallel_bytes``, ``fb.pipeline_p2p_bytes``, ``fb.pipeline_bubble`` and
``fb.expert_parallel_bytes`` at 8 bytes per value (the reference computes in float64). A few
counts and schedules are written out by hand from the layouts' definitions.
"""

import numpy as np
import pytest

import flopsbook as fb
from flopsbook.reference import ReferenceTransformer
from flopsbook.reference import model_parallel as MP
from flopsbook.spec import Transformer

from gradcheck import batch

F64 = 8


def tiny(**kw):
    base = dict(n_layers=2, d_model=16, n_heads=4, vocab_size=13, seq_len=8, d_ff=32)
    return Transformer(**{**base, **kw})


# The dense family the simulation splits: every FFN kind, norm kind, positional kind, with and
# without biases, MHA and GQA, tied and untied.
CONFIGS = {
    "gpt2-like": tiny(),                                           # gelu, layernorm+bias, tied
    "llama-like-gqa": tiny(n_kv_heads=2, ffn="swiglu", positional="rope", norm="rmsnorm",
                           bias=False, tied_embeddings=False),
    "geglu-rms-bias": tiny(ffn="geglu", positional="none", norm="rmsnorm"),
    "layernorm-no-bias-gqa": tiny(n_kv_heads=2, bias=False),
    "three-heads": tiny(n_heads=3, d_head=4, d_ff=24, tied_embeddings=False),  # tp=3 pads
}
MODELS = {name: ReferenceTransformer(m, seed=1) for name, m in CONFIGS.items()}


def assert_same_step(step_loss, step_grads, model, tokens, targets):
    loss, grads = model.train_step(tokens, targets)
    assert step_loss == pytest.approx(loss, rel=1e-12)
    assert list(step_grads) == list(grads)
    for name, g in grads.items():
        assert step_grads[name].shape == g.shape, name
        # atol: the key bias's gradient is exactly 0 in one order of summation, ~1e-17 in another
        np.testing.assert_allclose(step_grads[name], g, rtol=1e-10, atol=1e-13, err_msg=name)


# -- tensor and sequence parallelism ---------------------------------------------------------

TP_CASES = [(name, tp, sp) for name in CONFIGS
            for tp in ((1, 3) if name == "three-heads" else (1, 2, 4) if "gqa" not in name
                       else (2,))
            for sp in (False, True)]


@pytest.mark.parametrize("name,tp,sp", TP_CASES)
def test_tensor_parallel_step_equals_the_single_device_step_and_the_formula(name, tp, sp):
    m, model = CONFIGS[name], MODELS[name]
    b = 3 if tp == 3 else 2  # with SP the b*s = 24 tokens split in 3
    tokens, targets = batch(m, b, 8)
    step = MP.tensor_parallel_step(model, tokens, targets, tp, sequence_parallel=sp)
    assert_same_step(step.loss, step.grads, model, tokens, targets)
    want = fb.tensor_parallel_bytes(m, b, 8, tp, sequence_parallel=sp, bytes_per_value=F64)
    for layer in range(m.n_layers):
        assert step.layer_bytes(layer) == (want.forward, want.backward)
    # Outside the layers: nothing without SP; with it the output's gather and the
    # embedding gradient's, (t - 1)/t of b*s*d values each.
    outside = step.bytes_sent("output").max() + step.bytes_sent("embedding").max()
    assert outside == (2 * (tp - 1) * b * 8 * m.d_model // tp * F64 if sp else 0)
    assert step.max_bytes_sent == m.n_layers * want.total + outside


def test_hand_counted_tensor_parallel_bytes():
    # gpt2-like, b=2, s=8, d=16, t=2: a sublayer's all-reduce of 256 values sends
    # 2 * (1/2) * 256 * 8 = 2048 bytes per device; two sublayers: 4096 each way. With SP the
    # backward adds the all-reduce of 2 LayerNorms (gain + bias, 64 values) and the two output
    # biases (32): 96 values, 768 bytes.
    model = MODELS["gpt2-like"]
    tokens, targets = batch(model.m, 2, 8)
    plain = MP.tensor_parallel_step(model, tokens, targets, 2)
    seq = MP.tensor_parallel_step(model, tokens, targets, 2, sequence_parallel=True)
    assert plain.layer_bytes(0) == (4096, 4096)
    assert seq.layer_bytes(1) == (4096, 4096 + 768)
    # three-heads, t=3, no SP: 256 values pad to 258, 3 chunks of 86; a ring all-reduce sends
    # 2(t - 1) = 4 chunks per device, 4 * 86 * 8 = 2752 bytes; two sublayers: 5504.
    model = MODELS["three-heads"]
    tokens, targets = batch(model.m, 2, 8)
    assert MP.tensor_parallel_step(model, tokens, targets, 3).layer_bytes(0) == (5504, 5504)


def test_the_collectives_of_a_layer_in_order():
    model = MODELS["gpt2-like"]
    tokens, targets = batch(model.m, 2, 8)

    def kinds(step, label):
        return [c.kind for c in step.collectives if c.label == label]

    plain = MP.tensor_parallel_step(model, tokens, targets, 2)
    assert kinds(plain, "layer 0 forward") == ["all-reduce"] * 2
    assert kinds(plain, "layer 0 backward") == ["all-reduce"] * 2
    assert {c.label for c in plain.collectives} == {
        f"layer {i} {p}" for i in (0, 1) for p in ("forward", "backward")}
    seq = MP.tensor_parallel_step(model, tokens, targets, 2, sequence_parallel=True)
    assert kinds(seq, "layer 1 forward") == ["all-gather", "reduce-scatter"] * 2
    assert kinds(seq, "layer 1 backward") == ["all-gather", "reduce-scatter"] * 2 + [
        "all-reduce"]
    labels = [c.label for c in seq.collectives]
    assert labels[8] == "output forward" and labels[-1] == "embedding backward"
    assert labels[9:14] == ["layer 1 backward"] * 5


def test_each_device_holds_its_slices_and_the_shared_gradients_agree():
    m, model = CONFIGS["llama-like-gqa"], MODELS["llama-like-gqa"]
    tokens, targets = batch(m, 2, 8)
    step = MP.tensor_parallel_step(model, tokens, targets, 2, sequence_parallel=True)
    d0, d1 = step.device_grads
    # GQA, t=2: each device has 2 of the 4 query heads and 1 of the 2 kv heads (d_head 4).
    assert d0["layers.0.attn.w_q"].shape == (16, 8)
    assert d0["layers.0.attn.w_k"].shape == d0["layers.0.attn.w_v"].shape == (16, 4)
    assert d0["layers.0.attn.w_o"].shape == (8, 16)
    assert d0["layers.1.ffn.w_gate"].shape == (16, 16) and d1["layers.1.ffn.w_down"].shape == (
        16, 16)
    np.testing.assert_array_equal(np.concatenate([d0["layers.0.attn.w_k"],
                                                  d1["layers.0.attn.w_k"]], axis=1),
                                  step.grads["layers.0.attn.w_k"])
    # The norms' gradients were partial sums over each device's tokens: the all-reduce makes
    # them identical on both.
    for name in ("layers.0.norm1.gain", "layers.1.norm2.gain", "final_norm.gain",
                 "token_embedding", "output_embedding"):
        np.testing.assert_array_equal(d0[name], d1[name])


def test_a_device_computes_only_with_its_own_slices():
    # t=4: device r holds hidden units 8r .. 8r + 7 of the 32 and its gradient is exactly those
    # columns of the single-device gradient; a device whose weights are the others' is spoilt
    # (NaN) spoils only its own slice: nothing computes with another device's weights.
    m, model = CONFIGS["gpt2-like"], MODELS["gpt2-like"]
    tokens, targets = batch(m, 2, 8)
    step = MP.tensor_parallel_step(model, tokens, targets, 4)
    _, grads = model.train_step(tokens, targets)
    for r, held in enumerate(step.device_grads):
        assert held["layers.0.ffn.w_in"].shape == (16, 8)
        np.testing.assert_allclose(held["layers.0.ffn.w_in"],
                                   grads["layers.0.ffn.w_in"][:, 8 * r:8 * (r + 1)],
                                   rtol=1e-10, atol=1e-13)
    spoilt = ReferenceTransformer(m, seed=1)
    spoilt.params["layers.1.ffn.w_in"][:, 8:] = np.nan       # devices 1-3's columns
    spoilt.params["layers.1.ffn.b_in"][8:] = np.nan
    spoilt.params["layers.1.ffn.w_out"][8:] = np.nan         # and their rows
    # Not a whole-model step (the NaNs would reach the loss through the all-reduce): the
    # first device's slices, by hand, are all a device needs from the FFN's weights.
    shards = MP._tp_device_params(spoilt._layer(1), 4)
    assert not any(np.isnan(v).any() for v in shards[0].values())
    assert all(np.isnan(shards[r]["ffn.w_in"]).all() for r in (1, 2, 3))


def test_tensor_parallel_leaves_the_model_as_it_was():
    model = MODELS["gpt2-like"]
    before = {k: v.copy() for k, v in model.params.items()}
    MP.tensor_parallel_step(model, *batch(model.m, 2, 8), 2, sequence_parallel=True)
    assert list(model.params) == list(before)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)


# -- pipeline parallelism --------------------------------------------------------------------

PP_SPEC = tiny(n_layers=4, d_model=8, n_heads=2, d_ff=16)          # tied: the embedding
PP_UNTIED = tiny(n_layers=4, d_model=8, n_heads=2, d_ff=16, ffn="swiglu", positional="rope",
                 norm="rmsnorm", bias=False, tied_embeddings=False)
PP_MODELS = {"tied": ReferenceTransformer(PP_SPEC, seed=2),
             "untied": ReferenceTransformer(PP_UNTIED, seed=2)}


@pytest.mark.parametrize("which", PP_MODELS)
@pytest.mark.parametrize("schedule", MP.PIPELINE_SCHEDULES)
@pytest.mark.parametrize("stages,k,b", [(1, 1, 2), (2, 3, 3), (4, 2, 3), (4, 4, 4)])
def test_pipeline_step_equals_the_single_device_step(which, schedule, stages, k, b):
    model = PP_MODELS[which]
    tokens, targets = batch(model.m, b, 8)
    step = MP.pipeline_parallel_step(model, tokens, targets, stages, micro_batches=k,
                                     schedule=schedule)
    assert_same_step(step.loss, step.grads, model, tokens, targets)
    assert step.stage_layers == tuple(range(i * 4 // stages, (i + 1) * 4 // stages)
                                      for i in range(stages))


@pytest.mark.parametrize("schedule", MP.PIPELINE_SCHEDULES)
def test_pipeline_messages_are_the_formulas_per_boundary_and_micro_batch(schedule):
    model = PP_MODELS["untied"]
    tokens, targets = batch(model.m, 4, 8)
    step = MP.pipeline_parallel_step(model, tokens, targets, 4, micro_batches=2,
                                     schedule=schedule)
    want = fb.pipeline_p2p_bytes(model.m, 2, 8, bytes_per_value=F64)   # 2 sequences each
    for i in range(3):  # boundaries
        for j in range(2):
            fwd = [msg for msg in step.messages if msg.what == f"forward micro-batch {j}"
                   and (msg.sender, msg.receiver) == (i, i + 1)]
            bwd = [msg for msg in step.messages if msg.what == f"backward micro-batch {j}"
                   and (msg.sender, msg.receiver) == (i + 1, i)]
            assert [msg.n_bytes for msg in fwd] == [want.forward]
            assert [msg.n_bytes for msg in bwd] == [want.backward]
    assert len(step.messages) == 2 * 3 * 2 and step.collectives == ()
    # 2 sequences * 8 tokens * 8 features * 8 bytes = 1024 per message: the first stage only
    # sends forward, the last only backward, the middle ones both.
    assert step.bytes_sent("forward").tolist() == [2048, 2048, 2048, 0]
    assert step.bytes_sent("backward").tolist() == [0, 2048, 2048, 2048]


def test_tied_embedding_gradient_is_all_reduced_between_the_first_and_last_stage():
    model = PP_MODELS["tied"]
    tokens, targets = batch(model.m, 2, 8)
    step = MP.pipeline_parallel_step(model, tokens, targets, 4, micro_batches=2)
    (ar,) = step.collectives
    assert ar.label == "embedding" and ar.kind == "all-reduce"
    assert step.collective_stages == ((0, 3),)
    # 13 x 8 table, two devices: each sends half twice, 13 * 8 * 8 bytes.
    assert step.bytes_sent("embedding").tolist() == [832, 0, 0, 832]
    single = MP.pipeline_parallel_step(model, tokens, targets, 1, micro_batches=2)
    assert single.collectives == ()


# GPipe and 1F1B, two stages, two micro-batches, F = 1, B = 2, written out by hand from the
# definitions: a stage runs its order, each op when the stage is free and its input is there.
HAND_SCHEDULES = {
    "gpipe": [[("F", 0, 0, 1), ("F", 1, 1, 2), ("B", 0, 5, 7), ("B", 1, 7, 9)],
              [("F", 0, 1, 2), ("F", 1, 2, 3), ("B", 0, 3, 5), ("B", 1, 5, 7)]],
    "1f1b": [[("F", 0, 0, 1), ("F", 1, 1, 2), ("B", 0, 4, 6), ("B", 1, 7, 9)],
             [("F", 0, 1, 2), ("B", 0, 2, 4), ("F", 1, 4, 5), ("B", 1, 5, 7)]],
}


@pytest.mark.parametrize("schedule", MP.PIPELINE_SCHEDULES)
def test_hand_written_schedules(schedule):
    timed = MP.pipeline_schedule(schedule, 2, 2)
    assert [[tuple(op) for op in ops] for ops in timed] == HAND_SCHEDULES[schedule]
    model = PP_MODELS["untied"]
    step = MP.pipeline_parallel_step(model, *batch(model.m, 2, 8), 2, micro_batches=2,
                                     schedule=schedule)
    assert MP.schedule_table(step) == [(i, *op) for i, ops in enumerate(
        HAND_SCHEDULES[schedule]) for op in ops]
    assert step.makespan == 9 and step.idle_time.tolist() == [3, 3]
    # Sends happen when the producing op ends.
    assert [(msg.step, msg.what) for msg in step.messages] == (
        [(1, "forward micro-batch 0"), (2, "forward micro-batch 1"),
         (5, "backward micro-batch 0"), (7, "backward micro-batch 1")] if schedule == "gpipe"
        else [(1, "forward micro-batch 0"), (2, "forward micro-batch 1"),
              (4, "backward micro-batch 0"), (7, "backward micro-batch 1")])


@pytest.mark.parametrize("schedule", MP.PIPELINE_SCHEDULES)
@pytest.mark.parametrize("f,b", [(1, 2), (1, 1), (2, 3)])
def test_every_stage_idles_the_formulas_bubble(schedule, f, b):
    for p in range(1, 6):
        for k in range(1, 9):
            timed = MP.pipeline_schedule(schedule, p, k, forward_time=f, backward_time=b)
            end = max(op.end for ops in timed for op in ops)
            for ops in timed:
                busy = sum(op.end - op.start for op in ops)
                assert busy == k * (f + b)
                assert (end - busy) / busy == pytest.approx(fb.pipeline_bubble(p, k),
                                                            rel=1e-15)
                assert end - busy == (p - 1) * (f + b)   # exact, in clock units
                starts = [op.start for op in ops]
                assert starts == sorted(starts)          # one op at a time, in order
                assert all(o.end <= n.start for o, n in zip(ops, ops[1:]))


@pytest.mark.parametrize("schedule", MP.PIPELINE_SCHEDULES)
def test_peak_activations_held(schedule):
    model = PP_MODELS["untied"]
    step = MP.pipeline_parallel_step(model, *batch(model.m, 6, 8), 4, micro_batches=6,
                                     schedule=schedule)
    # GPipe keeps every micro-batch; 1F1B p - i on stage i (p on the first).
    assert step.peak_in_flight == ((6, 6, 6, 6) if schedule == "gpipe" else (4, 3, 2, 1))
    assert step.bubble.tolist() == [3 / 6] * 4
    few = MP.pipeline_parallel_step(model, *batch(model.m, 2, 8), 4, micro_batches=2,
                                    schedule=schedule)
    assert few.peak_in_flight == ((2, 2, 2, 2) if schedule == "gpipe" else (2, 2, 2, 1))


def test_stage_orders():
    assert MP.stage_order("1f1b", 4, 1, 5) == [
        ("F", 0), ("F", 1), ("F", 2), ("B", 0), ("F", 3), ("B", 1), ("F", 4), ("B", 2),
        ("B", 3), ("B", 4)]
    assert MP.stage_order("gpipe", 3, 2, 2) == [("F", 0), ("F", 1), ("B", 0), ("B", 1)]


def test_pipeline_leaves_the_model_as_it_was():
    model = PP_MODELS["tied"]
    before = model.params
    copies = {k: v.copy() for k, v in before.items()}
    MP.pipeline_parallel_step(model, *batch(model.m, 2, 8), 2, micro_batches=2)
    assert model.params is before
    for k, v in copies.items():
        np.testing.assert_array_equal(model.params[k], v)


# -- expert parallelism ----------------------------------------------------------------------

EP, TOK, D, TOP_K, N_EXPERTS = 4, 8, 6, 2, 8
EP_RNG = np.random.default_rng(5)
EP_X = EP_RNG.normal(size=(EP, TOK, D))
EP_W = EP_RNG.normal(size=(N_EXPERTS, D, D))
EP_ROUTING = EP_RNG.random((EP, TOK, TOP_K))
EP_GRAD = EP_RNG.normal(size=(EP, TOK, D))
EP_SPEC = Transformer(n_layers=1, d_model=D, n_heads=2, vocab_size=5, seq_len=8,
                      n_experts=N_EXPERTS, top_k=TOP_K)


def direct(x, experts, weights, grad):
    """The MoE layer with linear experts on one device: outputs and input gradients."""
    w = EP_W[experts]                                   # (ep, tokens, top_k, d, d)
    out = np.einsum("rtk,rtke->rte", weights, np.einsum("rtd,rtkde->rtke", x, w))
    dx = np.einsum("rtk,rtkd->rtd", weights, np.einsum("rte,rtkde->rtkd", grad, w))
    return out, dx


def balanced():
    # Device r's slot (t, j) goes to device (2t + j) mod 4, expert 2 * device + t mod 2: each
    # device's 16 slots reach every device 4 times.
    return np.array([[[((2 * t + j) % EP) * 2 + t % 2 for j in range(TOP_K)]
                      for t in range(TOK)] for _ in range(EP)])


def test_balanced_routing_sends_the_formulas_bytes():
    experts = balanced()
    step = MP.expert_parallel_dispatch(EP_X, experts, EP_ROUTING, EP_W, EP,
                                       grad_output=EP_GRAD)
    out, dx = direct(EP_X, experts, EP_ROUTING, EP_GRAD)
    np.testing.assert_allclose(np.stack(step.outputs), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.stack(step.input_grads), dx, rtol=1e-12, atol=1e-12)
    want = fb.expert_parallel_bytes(EP_SPEC, TOK, EP, bytes_per_value=F64)
    assert step.bytes_sent("forward").tolist() == [want.forward] * EP
    assert step.bytes_sent("backward").tolist() == [want.backward] * EP
    # By hand: 12 of a device's 16 rows of 6 values leave, 576 bytes, in each all-to-all.
    assert step.bytes_sent("forward dispatch").tolist() == [576] * EP
    assert [c.label for c in step.collectives] == [
        "forward dispatch", "forward combine", "backward combine", "backward dispatch"]


def test_unbalanced_routing_sends_more_from_the_busiest_device():
    # Every token of every device picks experts 0 and 1, both on device 0: devices 1-3 send
    # all their 16 rows (768 bytes) there, and device 0 sends 3 * 16 rows back.
    experts = np.zeros((EP, TOK, TOP_K), dtype=int)
    experts[..., 1] = 1
    step = MP.expert_parallel_dispatch(EP_X, experts, EP_ROUTING, EP_W, EP)
    out, _ = direct(EP_X, experts, EP_ROUTING, EP_GRAD)
    np.testing.assert_allclose(np.stack(step.outputs), out, rtol=1e-12, atol=1e-12)
    assert step.input_grads is None
    assert step.bytes_sent("forward dispatch").tolist() == [0, 768, 768, 768]
    assert step.bytes_sent("forward combine").tolist() == [3 * 768, 0, 0, 0]
    want = fb.expert_parallel_bytes(EP_SPEC, TOK, EP, bytes_per_value=F64)
    assert step.max_bytes_sent == 3 * 768 > want.forward


# -- bad input -------------------------------------------------------------------------------

GPT2 = MODELS["gpt2-like"]
TOKENS, TARGETS = batch(CONFIGS["gpt2-like"], 2, 8)


@pytest.mark.parametrize("field,spec", [
    ("n_experts", tiny(n_experts=4, top_k=2, d_ff_expert=8)),
    ("kv_lora_rank", tiny(n_heads=2, d_head=4, kv_lora_rank=6, qk_rope_dim=2,
                          positional="rope", bias=False)),
    ("window", tiny(window=2)),
    ("qk_norm", tiny(qk_norm=True)),
    ("post_norms", tiny(post_norms=True)),
    ("attention_sinks", tiny(attention_sinks=True)),
])
def test_features_not_simulated_raise_naming_the_field(field, spec):
    model = ReferenceTransformer(spec)
    with pytest.raises(ValueError, match=field):
        MP.tensor_parallel_step(model, TOKENS, TARGETS, 1)
    with pytest.raises(ValueError, match=field):
        MP.pipeline_parallel_step(model, TOKENS, TARGETS, 1, micro_batches=1)


@pytest.mark.parametrize("call,match", [
    (lambda: MP.tensor_parallel_step(object(), TOKENS, TARGETS, 2), "model"),
    (lambda: MP.tensor_parallel_step(GPT2, TOKENS, TARGETS, 0), "tp"),
    (lambda: MP.tensor_parallel_step(GPT2, TOKENS, TARGETS, 3), "tp=3 must divide n_heads"),
    (lambda: MP.tensor_parallel_step(MODELS["llama-like-gqa"], TOKENS, TARGETS, 4),
     "n_kv_heads"),
    (lambda: MP.tensor_parallel_step(GPT2, TOKENS, TARGETS, 2, sequence_parallel=1),
     "sequence_parallel"),
    (lambda: MP.tensor_parallel_step(MODELS["three-heads"], TOKENS, TARGETS, 3,
                                     sequence_parallel=True), "tokens"),
    (lambda: MP.tensor_parallel_step(GPT2, TOKENS, TARGETS[:1], 2), "targets"),
    (lambda: MP.pipeline_parallel_step(GPT2, TOKENS, TARGETS, 3, micro_batches=1), "stages"),
    (lambda: MP.pipeline_parallel_step(GPT2, TOKENS, TARGETS, 2, micro_batches=3), "tokens"),
    (lambda: MP.pipeline_parallel_step(GPT2, TOKENS, TARGETS, 2, micro_batches=0),
     "micro_batches"),
    (lambda: MP.pipeline_parallel_step(GPT2, TOKENS, TARGETS, 2, micro_batches=1,
                                       schedule="zb1p"), "schedule"),
    (lambda: MP.pipeline_parallel_step(GPT2, TOKENS, TARGETS, 2, micro_batches=1,
                                       backward_time=0), "backward_time"),
    (lambda: MP.pipeline_schedule("1f1b", 2, 2, forward_time=1.5), "forward_time"),
    (lambda: MP.stage_order("1f1b", 2, 2, 1), "stage"),
    (lambda: MP.schedule_table(None), "step"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced(), EP_ROUTING, EP_W, 3), "x"),
    (lambda: MP.expert_parallel_dispatch(EP_X[:3], balanced()[:3], EP_ROUTING[:3], EP_W, 3),
     "ep=3 must divide"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced() + 8, EP_ROUTING, EP_W, EP),
     "experts"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced() * 1.0, EP_ROUTING, EP_W, EP),
     "experts"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced(), EP_ROUTING[..., :1], EP_W, EP),
     "weights"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced(), EP_ROUTING, EP_W[:, :2], EP),
     "expert_weights"),
    (lambda: MP.expert_parallel_dispatch(EP_X, balanced(), EP_ROUTING, EP_W, EP,
                                         grad_output=EP_GRAD[0]), "grad_output"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
