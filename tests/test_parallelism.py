"""Model parallelism's formulas against hand counts, published figures and each other.

The counted simulation (tests/test_model_parallel_reference.py) and XLA (tests/test_xla.py)
check the bytes message by message; here are the closed forms' own values and properties, the
memory budget's new axes and the layout search's constraints and bookkeeping.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flopsbook as fb
from flopsbook.parallelism import Layout


def test_gpt3_tensor_parallel_bytes_by_hand():
    # GPT-3 175B: d = 12288. One micro-batch of one 2048-token sequence, bf16, 8 GPUs: each
    # sublayer all-reduces 2048 * 12288 values, a ring sending 2 * 7/8 of them per device.
    per_all_reduce = 2 * 7 / 8 * 2048 * 12288 * 2
    out = fb.tensor_parallel_bytes("gpt3-175b", 1, 2048, 8)
    assert out.forward == out.backward == 2 * per_all_reduce == 176_160_768
    assert out.total == 352_321_536


def test_one_device_sends_nothing_and_the_bytes_approach_4bsd_each_way():
    m = fb.model("llama3-8b")
    assert fb.tensor_parallel_bytes(m, 2, 1024, 1).total == 0
    big = fb.tensor_parallel_bytes(m, 2, 1024, np.array([2, 4, 8, 32]))
    limit = 4 * 2 * 1024 * m.d_model * 2           # 2 sublayers x 2 bsd values, 2 bytes
    assert np.allclose(big.forward / limit, [1 / 2, 3 / 4, 7 / 8, 31 / 32])


def test_sequence_parallelism_sends_the_same_activation_bytes_plus_the_slice_parameters():
    # Llama 3 8B: RMSNorm gains only, no biases: the two norms' 2 * 4096 gains are computed on
    # token slices, so their gradients are all-reduced: 2 * 7/8 * 8192 * 2 bytes.
    plain = fb.tensor_parallel_bytes("llama3-8b", 1, 2048, 8)
    sp = fb.tensor_parallel_bytes("llama3-8b", 1, 2048, 8, sequence_parallel=True)
    assert sp.forward == plain.forward
    assert sp.backward - plain.backward == 2 * 7 / 8 * 8192 * 2 == 28_672
    # GPT-2: LayerNorm gains and biases (4d) and the two row-parallel output biases (2d).
    d = 768
    gap = fb.tensor_parallel_bytes("gpt2-small", 1, 1024, 4, sequence_parallel=True).backward \
        - fb.tensor_parallel_bytes("gpt2-small", 1, 1024, 4).backward
    assert gap == 2 * 3 / 4 * 6 * d * 2


def test_shared_qk_norm_gains_are_all_reduced_with_or_without_sequence_parallelism():
    m = fb.model("qwen3-30b-a3b")                 # q/k RMSNorm gains of width d_head
    plain = fb.tensor_parallel_bytes(m, 1, 512, 4)
    assert plain.backward - plain.forward == 2 * 3 / 4 * (2 * m.d_head) * 2


def test_tensor_parallelism_must_split_the_heads_and_sequence_parallelism_the_tokens():
    with pytest.raises(ValueError, match="seq_len"):
        fb.tensor_parallel_bytes("gpt2-small", 1, 1023, 4, sequence_parallel=True)
    with pytest.raises(ValueError, match="seq_len"):
        fb.pipeline_p2p_bytes("gpt2-small", 1, 1023, tensor_parallel=4, sequence_parallel=True)
    # GPT-3's 96 heads split 8 ways, not 7; Llama 3 8B's 8 key/value heads are replicated
    # over 16 devices (a multiple of them) but cannot split 3 ways.
    with pytest.raises(ValueError, match="tp must divide n_heads=96"):
        fb.tensor_parallel_bytes("gpt3-175b", 1, 2048, 7)
    assert fb.tensor_parallel_bytes("llama3-8b", 1, 2048, 16).total > 0
    with pytest.raises(ValueError, match="tensor_parallel"):
        fb.memory_budget("llama3-8b", 1, 2048, tensor_parallel=3, n_devices=3)
    with pytest.raises(ValueError, match="tensor_parallel"):
        fb.pipeline_p2p_bytes("llama3-8b", 1, 2048, tensor_parallel=3)


def test_pipeline_p2p_bytes_are_the_boundary_activation_each_way():
    m = fb.model("gpt3-175b")
    out = fb.pipeline_p2p_bytes(m, 1, 2048)
    assert out.forward == out.backward == 2048 * 12288 * 2
    split = fb.pipeline_p2p_bytes(m, 1, 2048, tensor_parallel=8, sequence_parallel=True)
    assert split.total == out.total / 8
    assert fb.pipeline_p2p_bytes(m, 1, 2048, tensor_parallel=8).total == out.total


def test_pipeline_bubble_in_both_conventions():
    # 8 stages, 32 micro-batches: 7/32 of the ideal time, 7/39 of the whole step.
    assert fb.pipeline_bubble(8, 32) == 7 / 32
    assert fb.pipeline_bubble(8, 32, relative_to="step") == 7 / 39
    assert fb.pipeline_bubble(8, 32, interleave=4) == 7 / 128
    assert fb.pipeline_bubble(1, 5) == 0
    with pytest.raises(ValueError, match="relative_to"):
        fb.pipeline_bubble(8, 32, relative_to="total")


@given(st.integers(1, 64), st.integers(1, 256), st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_the_two_bubble_conventions_describe_the_same_idle_time(p, m, v):
    ideal = fb.pipeline_bubble(p, m, interleave=v)
    step = fb.pipeline_bubble(p, m, interleave=v, relative_to="step")
    assert step == pytest.approx(ideal / (1 + ideal))


def test_deepseek_v3_table_2_bubbles():
    # DeepSeek-V3's Table 2 with F = 1, B = 2, W = 1 (the backward for weights half of B) and
    # F&B = F + B, on 16 stages: 1F1B 15 * 3, ZB1P 15 * (3 - 2), DualPipe 7 * (3 + 2 - 3).
    kw = dict(weight_backward=1.0)
    assert fb.pipeline_bubble_time(16, 1.0, 2.0, schedule="1f1b") == 45
    assert fb.pipeline_bubble_time(16, 1.0, 2.0, schedule="zb1p", **kw) == 15
    assert fb.pipeline_bubble_time(16, 1.0, 2.0, schedule="dualpipe", **kw) == 14
    assert fb.pipeline_bubble_time(16, 1.0, 2.0, schedule="dualpipe", overlapped=2.0,
                                   **kw) == 7
    # The 1F1B bubble is pipeline_bubble's (p - 1)/m of the ideal m (F + B).
    assert fb.pipeline_bubble_time(8, 1.0, 2.0) / (32 * 3.0) == fb.pipeline_bubble(8, 32)
    with pytest.raises(ValueError, match="stages"):
        fb.pipeline_bubble_time(15, 1.0, 2.0, schedule="dualpipe")
    with pytest.raises(ValueError, match="weight_backward"):
        fb.pipeline_bubble_time(8, 1.0, 2.0, schedule="zb1p", weight_backward=3.0)
    with pytest.raises(ValueError, match="weight_backward"):
        fb.pipeline_bubble_time(8, 0.2, 1.0, schedule="zb1p", weight_backward=0.9)


def test_ring_attention_block_is_peak_over_one_direction_bandwidth():
    # Liu et al. (2023) Table 2, the A100 NVLink row: 312 TFLOPS over 300 GB/s = 1,040 tokens
    # (printed 1.0K), and 6c = 6,240 (printed 6.2K).
    out = fb.ring_attention_block(312e12, 300e9)
    assert out.block == 1040 and out.min_seq_len == 6240
    assert fb.ring_attention_block(312e12, 300e9, bytes_per_value=1).block == 520
    # The registry's A100 has the same peak and NVLink figure; across nodes its 25 GB/s card.
    assert fb.ring_attention_block("a100-80gb").block == 1040
    assert fb.ring_attention_block("a100-80gb", link="inter").block == 312e12 / 25e9
    with pytest.raises(ValueError, match="bandwidth"):
        fb.ring_attention_block(312e12)


def test_expert_parallel_bytes_by_hand():
    # Mixtral 8x7B: d = 4096, top-2 of 8. 4096 tokens on a device, experts over 8 devices:
    # 7/8 of 4096 * 2 rows of 4096 values leave (dispatch) and return (combine), 2 bytes each.
    one_way = 7 / 8 * 4096 * 2 * 4096 * 2
    out = fb.expert_parallel_bytes("mixtral-8x7b", 4096, 8)
    assert out.forward == out.backward == 2 * one_way
    assert fb.expert_parallel_bytes("mixtral-8x7b", 4096, 1).total == 0
    with pytest.raises(ValueError, match="ep"):
        fb.expert_parallel_bytes("mixtral-8x7b", 4096, 3)
    with pytest.raises(ValueError, match="dense"):
        fb.expert_parallel_bytes("llama3-8b", 4096, 8)


# --- the memory budget's new axes ---------------------------------------------------------

def _spec(**kw):
    base = dict(n_layers=8, d_model=64, n_heads=4, vocab_size=1000, seq_len=128,
                tied_embeddings=False, positional="rope", norm="rmsnorm", bias=False)
    return fb.Transformer(**{**base, **kw})


def test_a_pipeline_stage_holds_its_layers_and_its_end_of_the_model():
    m = _spec()
    d, L, V = 64, 8, 1000
    layer = 4 * d * d + 2 * d * 4 * d + 2 * d           # attention, GELU FFN, two norm gains
    assert fb.param_count(m) == 2 * V * d + L * layer + d
    kw = dict(precision="bf16", optimizer="sgd", logits_dtype=None, n_devices=4)
    one = fb.memory_budget(m, 1, 128, **kw)
    four = fb.memory_budget(m, 1, 128, pipeline_parallel=4, **kw)
    # The first stage: embedding + 2 layers; the last: 2 layers, the final norm, the output
    # layer: equal here, 2 bytes per weight (pure bf16, no optimizer state).
    assert four.weights == 2 * (V * d + 2 * layer)
    assert one.weights == 2 * fb.param_count(m)
    # 1F1B: the first stage keeps its 2 layers' activations for 4 micro-batches in flight.
    assert four.activations == pytest.approx(one.activations * 2 / 8 * 4)
    gpipe = fb.memory_budget(m, 1, 128, pipeline_parallel=4, micro_batches_in_flight=16, **kw)
    assert gpipe.activations == pytest.approx(one.activations * 2 / 8 * 16)


def test_the_busiest_stage_rounds_the_layers_up_and_the_last_holds_the_logits():
    m = _spec(n_layers=6)
    kw = dict(precision="bf16", optimizer="sgd", n_devices=4, logits_dtype="fp32")
    one = fb.memory_budget(m, 2, 128, **kw)
    four = fb.memory_budget(m, 2, 128, pipeline_parallel=4, micro_batches_in_flight=1, **kw)
    # ceil(6/4) = 2 layers; with one micro-batch in flight the last stage (logits) is busier.
    assert four.logits == one.logits == 2 * 128 * 1000 * 4
    assert four.activations == pytest.approx(one.activations * 2 / 6)


def test_context_parallelism_divides_the_tokens_of_each_device():
    m = fb.model("llama3-8b")
    kw = dict(flash_attention=True, dropout=False, n_devices=8)
    cp = fb.memory_budget(m, 1, 8192, context_parallel=4, **kw)
    short = fb.memory_budget(m, 1, 2048, **kw)
    assert cp.activations == short.activations and cp.logits == short.logits
    with pytest.raises(ValueError, match="context_parallel"):
        fb.memory_budget(m, 1, 8190, context_parallel=4, **kw)
    with pytest.raises(ValueError, match="n_devices"):
        fb.memory_budget(m, 1, 8192, context_parallel=16, **kw)


def test_expert_parallelism_divides_the_routed_experts_only():
    m = fb.model("mixtral-8x7b")
    parts = fb.param_breakdown(m)
    kw = dict(precision="bf16", optimizer="sgd", n_devices=8)
    one = fb.memory_budget(m, 1, 512, **kw)
    eight = fb.memory_budget(m, 1, 512, expert_parallel=8, **kw)
    assert one.weights - eight.weights == pytest.approx(2 * parts["experts"] * 7 / 8)
    # ZeRO already shards every state over the 8 devices: experts over 8 / 8 copies, the rest
    # over 8; the weights (stage 1 leaves them whole) are what expert parallelism saves.
    z1 = fb.memory_budget(m, 1, 512, zero_stage=1, precision="mixed", optimizer="adamw",
                          n_devices=8)
    z1e = fb.memory_budget(m, 1, 512, zero_stage=1, precision="mixed", optimizer="adamw",
                           n_devices=8, expert_parallel=8)
    assert z1.optimizer_states == pytest.approx(z1e.optimizer_states)
    with pytest.raises(ValueError, match="expert_parallel"):
        fb.memory_budget(m, 1, 512, expert_parallel=3, n_devices=24)
    with pytest.raises(ValueError, match="expert_parallel"):
        fb.memory_budget("llama3-8b", 1, 512, expert_parallel=2, n_devices=2)


# --- the layout search ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_layouts():
    return fb.parallel_layouts("llama3-8b", "h100-sxm", 64, seq_len=4096,
                               global_batch_tokens=256 * 4096)


def test_every_layout_uses_every_device_and_fits(llama_layouts):
    hw = fb.hardware("h100-sxm")
    assert llama_layouts
    for lay in llama_layouts:
        assert lay.dp * lay.tp * lay.pp * lay.cp == 64
        assert lay.tp <= hw.devices_per_node and 32 % lay.tp == 0
        assert lay.dp * lay.micro_batch * lay.micro_batches == 256
        assert lay.memory_per_device <= hw.memory_bytes
    times = [lay.step_time for lay in llama_layouts]
    assert times == sorted(times)


def test_a_layouts_memory_is_the_budgets_and_its_step_is_its_parts(llama_layouts):
    lay = llama_layouts[len(llama_layouts) // 2]
    budget = fb.memory_budget(
        "llama3-8b", lay.micro_batch, 4096, n_devices=64, tensor_parallel=lay.tp,
        sequence_parallel=True, pipeline_parallel=lay.pp, context_parallel=lay.cp,
        micro_batches_in_flight=min(lay.pp, lay.micro_batches), zero_stage=lay.zero_stage,
        recompute=lay.recompute, flash_attention=True, dropout=False)
    assert lay.memory_per_device == pytest.approx(budget.total)
    assert lay.step_time == pytest.approx(lay.compute + lay.bubble
                                          + sum(lay.communication.values()))
    assert lay.bubble == pytest.approx(fb.pipeline_bubble(lay.pp, lay.micro_batches)
                                       * lay.compute)


def test_pure_data_parallelism_by_hand():
    # GPT-2 small on 8 H100s, 8 sequences of 1024 per step, one per device: no bubble, no
    # model-parallel traffic; the gradient all-reduce (bf16, 2 * 7/8 * N values) runs on
    # NVLink and hides behind the last micro-batch's backward (2/3 of the compute) if it can.
    m, hw = fb.model("gpt2-small"), fb.hardware("h100-sxm")
    [lay] = fb.parallel_layouts(m, hw, 8, seq_len=1024, global_batch_tokens=8 * 1024, tp=1,
                                pp=1, cp=1, zero_stages=0, recompute="none", micro_batch=1)
    flops = 8 * 1024 * fb.flops_per_token(m, 1024, causal=True)
    compute = max(flops / (8 * hw.peak_16bit * 0.5),
                  3 * fb.param_count(m) * 2 / hw.bandwidth)       # the weights' reads
    assert lay.compute == pytest.approx(compute)
    sent = 2 * 7 / 8 * math.ceil(fb.param_count(m) / 8) * 8 * 2
    assert lay.communication["dp"] == pytest.approx(max(0, sent / hw.intra_node_bandwidth
                                                        - 2 / 3 * compute))
    assert lay.links["dp"] == "intra" and lay.bubble == 0
    assert lay.mfu == pytest.approx(flops / (lay.step_time * 8 * hw.peak_16bit))


def test_the_mesh_order_puts_the_inner_axes_on_the_fast_links():
    kw = dict(seq_len=4096, global_batch_tokens=256 * 4096, tp=8, pp=2, cp=1, top=1,
              zero_stages=1, recompute="full")
    [inner] = fb.parallel_layouts("llama3-8b", "h100-sxm", 64, **kw)
    assert inner.links["tp"] == "intra" and inner.links["pp"] == "inter"
    [outer] = fb.parallel_layouts("llama3-8b", "h100-sxm", 64, mesh_order=("dp", "pp", "cp", "tp"),
                                  **kw)
    assert outer.links["tp"] == "inter"
    assert outer.communication["tp"] > inner.communication["tp"]


def test_mixtures_search_expert_parallelism():
    out = fb.parallel_layouts("mixtral-8x7b", "h100-sxm", 64, seq_len=4096,
                              global_batch_tokens=512 * 4096, tp=(1, 8), pp=(1, 4), cp=1,
                              zero_stages=1, recompute="full")
    assert {lay.ep for lay in out} <= {1, 2, 4, 8} and any(lay.ep > 1 for lay in out)
    assert all(lay.communication["ep"] == 0 for lay in out if lay.ep == 1)
    assert all(lay.communication["ep"] > 0 for lay in out if lay.ep > 1)


def test_a_layout_is_a_table_row(llama_layouts):
    row = llama_layouts[0].as_dict()
    assert isinstance(llama_layouts[0], Layout)
    assert {"dp", "tp", "pp", "cp", "ep", "zero_stage", "recompute", "micro_batch",
            "memory_per_device", "step_time", "mfu", "comm_dp", "comm_tp"} <= set(row)


def test_layout_search_errors_name_the_argument():
    kw = dict(seq_len=1024, global_batch_tokens=8 * 1024)
    with pytest.raises(ValueError, match="global_batch_tokens"):
        fb.parallel_layouts("gpt2-small", "h100-sxm", 8, seq_len=1024, global_batch_tokens=1000)
    with pytest.raises(ValueError, match="mesh_order"):
        fb.parallel_layouts("gpt2-small", "h100-sxm", 8, mesh_order=("tp", "dp"), **kw)
    with pytest.raises(ValueError, match="n_devices"):
        fb.parallel_layouts("gpt2-small", "h100-sxm", 10**9, **kw)
    with pytest.raises(ValueError, match="hardware"):
        bare = fb.Hardware("bare", peak_flops={"bf16": 1e15}, memory_bytes=8e10,
                           bandwidth=3e12, source="nvidia2022h100")
        fb.parallel_layouts("gpt2-small", bare, 8, **kw)
    with pytest.raises(ValueError, match="ep"):
        fb.parallel_layouts("gpt2-small", "h100-sxm", 8, ep=2, **kw)
    # Sizes the model or the cluster cannot take are refused, not searched to nothing.
    for bad in (dict(tp=3), dict(tp=16), dict(pp=13), dict(cp=3), dict(interleave=13),
                dict(micro_batch=1000), dict(tp=np.array([[1, 2]]))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fb.parallel_layouts("gpt2-small", "h100-sxm", 8, **bad, **kw)
    [same] = fb.parallel_layouts("gpt2-small", "h100-sxm", 8, tp=np.array([2]), pp=1, cp=1,
                                 zero_stages=(1, 1), recompute="none", micro_batch=1, **kw)
    assert same.tp == 2 and same.zero_stage == 1       # listed twice, searched once


def test_pipeline_bubble_time_refuses_arguments_its_schedule_ignores():
    with pytest.raises(ValueError, match="weight_backward"):
        fb.pipeline_bubble_time(8, 1.0, 2.0, weight_backward=1.0)
    with pytest.raises(ValueError, match="overlapped"):
        fb.pipeline_bubble_time(8, 1.0, 2.0, schedule="zb1p", overlapped=2.0)


def test_memory_budget_refuses_impossible_pipelines():
    with pytest.raises(ValueError, match="pipeline_parallel"):
        fb.memory_budget("llama3-8b", 1, 2048, pipeline_parallel=64, n_devices=64)
    with pytest.raises(ValueError, match="micro_batches_in_flight"):
        fb.memory_budget("llama3-8b", 1, 2048, micro_batches_in_flight=8)


def test_overlapped_all_to_alls_expose_only_what_compute_cannot_hide():
    kw = dict(seq_len=4096, global_batch_tokens=512 * 4096, tp=1, pp=4, cp=1, ep=8,
              zero_stages=1, recompute="full", micro_batch=1)
    [plain] = fb.parallel_layouts("mixtral-8x7b", "h100-sxm", 64, **kw)
    [hidden] = fb.parallel_layouts("mixtral-8x7b", "h100-sxm", 64, ep_overlap=True, **kw)
    assert hidden.communication["ep"] == pytest.approx(
        max(0.0, plain.communication["ep"] - plain.compute))      # every layer is MoE
    assert hidden.step_time < plain.step_time
