"""The calling convention of every public function, and a fuzz-style property suite.

Every public function takes a model as a Transformer or a registry name, a device as a Hardware
or a registry name, and scalar text quantities where it takes a number; bad input of any kind
raises a ValueError that names the argument, never a TypeError, an AttributeError, a NaN or a
numpy traceback. VALID gives one good call of each function; the fuzz replaces one argument at a
time with hostile values.
"""

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flopsbook as fb

M, HW = "gpt2-small", "a100-80gb"

# One good call per public function: (args, kwargs).
VALID = {
    "activation_breakdown": ((M, 2, 128), {}),
    "activation_memory": ((M, 2, 128), dict(recompute="selective", tensor_parallel=2)),
    "check": (("ex-inference-palm", 1e9), dict(part="a")),
    "chinchilla_loss": ((1e9, 2e10), {}),
    "chinchilla_optimal": ((1e21,), {}),
    "collective_bytes": (("all-reduce", 1e9, 8), dict(algorithm="tree")),
    "collective_steps": (("all-gather", 8), dict(algorithm="ring")),
    "collective_time": (("all-reduce", 1e9, 16, "h100-sxm"), dict(latency=1e-5, algorithm="ring",
                                                                  rings=8)),
    "context_flops_ratio": ((768, 8192), dict(old_context=4096)),
    "data_parallel_bytes": ((1e9, 8), dict(zero_stage=3, bytes_per_value=4,
                                           param_bytes_per_value=2, micro_batches=2)),
    "dp_overlap_tokens": ((9.9e14, 4.5e11), dict(bytes_per_value=2, n_devices=8)),
    "critical_batch": ((M, HW, 1024), dict(bytes_per_param=1, n_devices=2)),
    "crossover_seq_len": ((M,), dict(against="layer", causal=True)),
    "decode_step_time": ((M, HW, 8, 1024), dict(kv_bytes_per_value=1, n_devices=2)),
    "expected_experts": ((8, 2, 16), {}),
    "expert_parallel_bytes": (("mixtral-8x7b", 4096, 4), dict(bytes_per_value=1)),
    "flops_per_token": ((M, 512), dict(training=False, causal=True)),
    "format_bytes": ((1.5e9,), dict(binary=True, digits=4)),
    "format_count": ((1.5e9,), dict(digits=2)),
    "format_duration": ((4000.0,), dict(digits=2)),
    "format_flops": ((3e14,), dict(per_second=True, digits=2)),
    "format_rate": ((3.35e12,), dict(digits=2)),
    "format_sci": ((5.76e23, "FLOPs"), dict(digits=2)),
    "generation_flops": ((M, 16, 8), dict(kv_cache=False, causal=False)),
    "hardware": ((HW,), {}),
    "hardwares": ((), {}),
    "hfu": ((1e3, 1e9, 2, 1e15), {}),
    "inference_aware_optimal": ((2.2, 1e12), {}),
    "kv_cache_bytes": ((M, 2, 128), dict(bytes_per_value=1)),
    "largest_micro_batch": ((M, 512, HW), dict(zero_stage=1, n_devices=2)),
    "layer_flops": ((M, 128), dict(batch=2, causal=True, layer=3)),
    "linear_attention_flops": ((M, 128), dict(batch=2)),
    "linear_attention_state_bytes": ((M, 2), dict(bytes_per_value=1)),
    "matmul_bytes": ((8, 16, 32), dict(bytes_per_value=2, batch=2)),
    "matmul_flops": ((8, 16, 32), dict(batch=2)),
    "max_batch": ((M, HW, 1024), dict(bytes_per_param=1, n_devices=2)),
    "memory_budget": ((M, 2, 512), dict(zero_stage=2, n_devices=4, recompute="full",
                                        buffers=0.1)),
    "mfu": ((1e3, 1e9, 2, 1e15), {}),
    "model": ((M,), {}),
    "models": ((), {}),
    "parallel_layouts": ((M, HW, 8), dict(seq_len=1024, global_batch_tokens=8 * 1024,
                                          zero_stages=(0, 1), recompute="none", top=3)),
    "param_breakdown": ((M,), {}),
    "param_count": ((M,), dict(embeddings=False, active=True)),
    "parse_bytes": (("80GiB",), {}),
    "parse_flop_rate": (("989 TFLOP/s",), {}),
    "parse_quantity": (("15T",), {}),
    "parse_rate": (("3.35 TB/s",), {}),
    "pipeline_bubble": ((8, 32), dict(interleave=2, relative_to="step")),
    "pipeline_bubble_time": ((16, 1.0, 2.0), dict(schedule="dualpipe", weight_backward=1.0,
                                                  overlapped=2.5)),
    "pipeline_p2p_bytes": ((M, 2, 128), dict(tensor_parallel=2, sequence_parallel=True)),
    "ring_attention_block": ((HW,), dict(link="inter")),
    "roofline_time": ((1e12, 1e9, 1e14, 1e12), {}),
    "scaling_fit": (("hoffmann2022",), {}),
    "scaling_fits": ((), {}),
    "serving_cost": ((M, HW, 8, 1024, 2.0), dict(n_devices=2)),
    "tensor_parallel_bytes": ((M, 2, 128, 4), dict(sequence_parallel=True, bytes_per_value=4)),
    "tokens_for_loss": ((1e9, 2.5), {}),
    "training_flops": ((1e9, 2e10), {}),
    "training_memory": ((1e9,), dict(zero_stage=3, n_devices=8)),
    "training_time": ((1e21, 8, 1e15, 0.4), {}),
    "training_run": (("palm-540b",), {}),
    "training_runs": ((), {}),
}
NEEDS_MOE = {"expert_parallel_bytes"}   # refuses a dense model (its VALID call names an MoE)
NOT_FORMULAS = {"Hardware", "Layout", "ScalingFit", "Transformer", "TrainingRun",
                "count_flops"}  # classes, a context
PUBLIC = sorted(name for name in fb.__all__ if name not in NOT_FORMULAS)


def call(name, args, kwargs):
    return getattr(fb, name)(*args, **kwargs)


def parameters(name):
    """(position or None, parameter name) of every argument of the VALID call."""
    args, kwargs = VALID[name]
    names = list(inspect.signature(getattr(fb, name)).parameters)
    return [(i, names[i]) for i in range(len(args))] + [(None, k) for k in kwargs]


def replaced(name, slot, value):
    args, kwargs = VALID[name]
    args, kwargs = list(args), dict(kwargs)
    position, key = slot
    if position is None:
        kwargs[key] = value
    else:
        args[position] = value
    return args, kwargs


def finite_everywhere(out):
    """No NaN anywhere in a result (inf is allowed: an unreachable loss needs inf tokens)."""
    if isinstance(out, dict):
        return all(finite_everywhere(v) for v in out.values())
    if hasattr(out, "__dataclass_fields__"):
        return all(finite_everywhere(getattr(out, f)) for f in out.__dataclass_fields__)
    if isinstance(out, (str, list, bool, int)) or out is None:
        return True
    arr = np.asarray(out)
    return arr.dtype.kind not in "fc" or not np.isnan(arr).any()


def test_every_public_function_has_a_valid_call():
    assert sorted(VALID) == PUBLIC


@pytest.mark.parametrize("name", PUBLIC)
def test_valid_call_works(name):
    assert finite_everywhere(call(name, *VALID[name]))


# --- models and hardware by name, everywhere -----------------------------------------------

MODEL_ARGS = {"m", "m_or_d_model"}
HARDWARE_ARGS = {"hardware", "peak_flops", "peak_flops_per_device"}


MATRIX_SHAPES = {"matmul_flops", "matmul_bytes"}  # their m is a matrix's rows, not a model


def _slots(names):
    return [(fn, slot) for fn in sorted(set(PUBLIC) - MATRIX_SHAPES) for slot in parameters(fn)
            if slot[1] in names]


@pytest.mark.parametrize("fn, slot", _slots(MODEL_ARGS), ids=str)
def test_a_model_is_a_spec_or_a_name(fn, slot):
    name = VALID[fn][0][0] if fn in NEEDS_MOE else M
    by_name = call(fn, *replaced(fn, slot, name))
    by_spec = call(fn, *replaced(fn, slot, fb.model(name)))
    assert repr(by_name) == repr(by_spec)
    with pytest.raises(ValueError, match=slot[1]):
        call(fn, *replaced(fn, slot, [name]))
    with pytest.raises(ValueError, match=rf"{slot[1]}: unknown model name 'gpt-2'"):
        call(fn, *replaced(fn, slot, "gpt-2"))


@pytest.mark.parametrize("fn", ["critical_batch", "decode_step_time", "max_batch",
                                "serving_cost", "largest_micro_batch"])
def test_a_device_is_a_hardware_or_a_name(fn):
    slot = next(s for s in parameters(fn) if s[1] == "hardware")
    assert repr(call(fn, *replaced(fn, slot, HW))) == \
        repr(call(fn, *replaced(fn, slot, fb.hardware(HW))))
    for bad in ([HW], "a100", 3.0):
        with pytest.raises(ValueError, match="hardware"):
            call(fn, *replaced(fn, slot, bad))


@pytest.mark.parametrize("fn", ["mfu", "hfu", "training_time", "roofline_time"])
def test_a_peak_is_a_number_or_a_device(fn):
    slot = next(s for s in parameters(fn) if s[1].startswith("peak"))
    h = fb.hardware("h100-sxm")
    as_number = call(fn, *replaced(fn, slot, h.peak_16bit))
    as_device = call(fn, *replaced(fn, slot, "h100-sxm"))
    assert np.isclose(as_number, as_device)
    args, kwargs = replaced(fn, slot, h)
    assert np.isclose(call(fn, args, kwargs | dict(dtype="fp8")),
                      call(fn, *replaced(fn, slot, h.peak("fp8"))))
    with pytest.raises(ValueError, match="dtype"):  # a dtype needs a device to choose from
        call(fn, *replaced(fn, slot, 1e15)[:1], replaced(fn, slot, 1e15)[1] | dict(dtype="fp8"))


def test_roofline_time_takes_the_bandwidth_from_the_device():
    h = fb.hardware("h100-sxm")
    assert fb.roofline_time(1e12, 1e10, "h100-sxm") == fb.roofline_time(1e12, 1e10, h.peak_16bit,
                                                                        h.bandwidth)
    assert fb.roofline_time(1e12, "10GB", h, "3.35 TB/s") == fb.roofline_time(1e12, 1e10, h)
    with pytest.raises(ValueError, match="bandwidth"):
        fb.roofline_time(1e12, 1e10, 1e15)


# --- text quantities: scalars only ---------------------------------------------------------

TEXT = [  # (function, argument, text, the number it means)
    ("training_flops", "n_tokens", "15T", 15e12), ("training_flops", "n_params", "7B", 7e9),
    ("training_flops", "n_params", "llama2-13b", 13_015_864_320),  # the released checkpoint
    ("kv_cache_bytes", "seq_len", "128k", 128e3), ("decode_step_time", "batch", "1K", 1e3),
    ("training_time", "n_devices", "1k", 1e3), ("roofline_time", "bytes_moved", "80GB", 80e9),
    ("roofline_time", "bandwidth", "3.35 TB/s", 3.35e12),
    ("roofline_time", "peak_flops", "989.4 TFLOP/s", 989.4e12),
    ("chinchilla_optimal", "compute", "5.76e23", 5.76e23),
    ("memory_budget", "buffers", "2GB", 2e9), ("serving_cost", "context", "1k", 1e3),
]


@pytest.mark.parametrize("fn, arg, text, number", TEXT, ids=lambda v: str(v))
def test_text_quantities(fn, arg, text, number):
    slot = next(s for s in parameters(fn) if s[1] == arg)
    assert repr(call(fn, *replaced(fn, slot, text))) == repr(call(fn, *replaced(fn, slot, number)))
    with pytest.raises(ValueError, match=arg):  # a list of strings stays an error
        call(fn, *replaced(fn, slot, [text]))
    with pytest.raises(ValueError, match=arg):
        call(fn, *replaced(fn, slot, "lots"))


# --- n_devices means the devices the job spans ---------------------------------------------

def test_serving_splits_over_n_devices():
    m, hw = fb.model("llama2-7b"), fb.hardware("a100-80gb")
    one = fb.decode_step_time(m, hw, 8, 2048)
    four = fb.decode_step_time(m, hw, 8, 2048, n_devices=4)
    assert np.isclose(four.time, one.time / 4) and four.flops == one.flops
    assert fb.critical_batch(m, hw, 2048, n_devices=4) == fb.critical_batch(m, hw, 2048)
    assert fb.max_batch(m, hw, 2048, n_devices=2) > 2 * fb.max_batch(m, hw, 2048)
    with pytest.raises(ValueError, match="does not fit"):
        fb.serving_cost("llama2-70b", hw, 1, 4096, 2.0)
    assert np.isfinite(fb.serving_cost("llama2-70b", hw, 1, 4096, 2.0, n_devices=2))


# --- the fuzz ------------------------------------------------------------------------------

HOSTILE = [None, True, np.True_, "", "junk", b"8", ["8"], [True, False], 1j, [1j],
           np.array(["a"]), {}, {"a": 1}, set(), object(), -1, 0, -0.5, 1.5, float("nan"),
           float("inf"), -float("inf"), 10**400, [10**400], [1, None], [[1, 2], [3]], [],
           np.array([]), np.array([1.0, np.nan]), np.array([[2, -1]]), "15Q", "1e400",
           ("gpt2-small",), np.float32("nan"), 2**63]

values = st.one_of(
    st.sampled_from(HOSTILE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10**30, max_value=10**30),
    st.text(max_size=8),
    st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3), st.booleans()),
             max_size=3),
    st.complex_numbers(max_magnitude=1e6),
)
SLOTS = [(fn, slot) for fn in PUBLIC for slot in parameters(fn)]


@pytest.mark.filterwarnings("error")  # formula() keeps numpy quiet; result() raises instead
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=st.sampled_from(SLOTS), value=values)
def test_bad_input_is_a_value_error_naming_the_argument(case, value):
    fn, slot = case
    args, kwargs = replaced(fn, slot, value)
    try:
        out = call(fn, args, kwargs)
    except ValueError as err:
        # The message names the argument (a dtype or fit lookup names its own argument).
        # (or, for a value that overflows float64 inside the formula, says so)
        named = slot[1] in str(err) or fn.startswith("parse_") and "cannot read" in str(err) \
            or "overflows float64" in str(err)
        assert named, (fn, slot, value, str(err))
        assert len(str(err)) < 600, "messages stay readable"
    else:
        assert finite_everywhere(out), (fn, slot, value, out)


def _default(fn, arg):
    params = inspect.signature(getattr(fb, fn)).parameters
    if arg not in params:  # largest_micro_batch passes **budget_kwargs on to memory_budget
        params = inspect.signature(fb.memory_budget).parameters
    return params[arg].default


HOLES = {"strings": ["8"], "bools": [True], "complex": [1j], "None": None, "object": object(),
         "huge": 10**400}
# None is a few arguments' documented default ("use the model's own seq_len"): not a hole there.
HOLE_CASES = [(fn, slot, kind) for fn, slot in SLOTS for kind in HOLES
              if not (kind == "None" and _default(fn, slot[1]) is None)]


@pytest.mark.parametrize("fn, slot, kind", HOLE_CASES, ids=str)
def test_each_class_of_hole_is_closed(fn, slot, kind):
    """The classes found by the first fuzz: strings, bools or complex numbers inside lists
    passing as numbers, None or objects reaching numpy, huge ints overflowing."""
    args, kwargs = replaced(fn, slot, HOLES[kind])
    with pytest.raises(ValueError, match=slot[1] if not fn.startswith("parse_") else "text"):
        call(fn, args, kwargs)


# --- constructors and switches ---------------------------------------------------------------

def _hw(**change):
    fields = dict(name="toy", peak_flops={"bf16": 1e15}, memory_bytes=8e10, bandwidth=2e12,
                  source="nvidia2022h100")
    return fb.Hardware(**(fields | change))


@pytest.mark.parametrize("change, word", [
    (dict(memory_bytes=-1), "memory_bytes"), (dict(bandwidth=0), "bandwidth"),
    (dict(bandwidth=float("inf")), "bandwidth"), (dict(memory_bytes="80GB!"), "memory_bytes"),
    (dict(peak_flops={}), "peak_flops"), (dict(peak_flops={"bf16": -1}), "peak_flops"),
    (dict(peak_flops={"fp32": 1e13}), "16-bit"), (dict(peak_flops=[1e15]), "peak_flops"),
    (dict(name=3), "name"), (dict(source=None), "source"),
])
def test_hardware_is_validated(change, word):
    with pytest.raises(ValueError, match=word):
        _hw(**change)


def test_hardware_accepts_text_and_numpy_numbers():
    h = _hw(memory_bytes="80GiB", bandwidth="2 TB/s", peak_flops={"bf16": np.float32(1e15)})
    assert h.memory_bytes == 80 * 2**30 and h.bandwidth == 2e12
    assert isinstance(h.peak("bf16"), float)


def test_numpy_ints_and_bools_are_accepted_alike():
    a = fb.Transformer(n_layers=np.int64(2), d_model=np.int32(64), n_heads=4, vocab_size=100,
                       seq_len=16, bias=np.True_, tied_embeddings=np.False_)
    b = fb.Transformer(n_layers=2, d_model=64, n_heads=4, vocab_size=100, seq_len=16, bias=True,
                       tied_embeddings=False)
    assert a == b and type(a.n_layers) is int and type(a.bias) is bool
    assert fb.memory_budget(b, 1, 16, zero_stage=np.int64(2)).total == \
        fb.memory_budget(b, 1, 16, zero_stage=2).total
    assert fb.flops_per_token(b, causal=np.True_) == fb.flops_per_token(b, causal=True)
    for flag in (1, "True", None):
        with pytest.raises(ValueError, match="causal"):
            fb.flops_per_token(b, causal=flag)


def test_mfu_at_exactly_peak_is_one():
    # 1,000 devices at 312 TFLOP/s running 6 * 1e9 FLOPs per token: 52 million tokens/s is the peak.
    assert fb.mfu(52_000_000, 6e9, 1000, 312e12) == 1.0
    assert fb.mfu(52_000_000 * (1 + 1e-9), 6e9, 1000, 312e12) == 1.0   # rounding of quoted figures
    with pytest.raises(ValueError, match="implied MFU"):
        fb.mfu(52_000_000 * 1.01, 6e9, 1000, 312e12)
    with pytest.raises(ValueError, match="hardware_flops_per_token"):
        fb.hfu(52_000_000 * 1.01, 6e9, 1000, 312e12)


def test_shapes_that_do_not_broadcast_are_named():
    with pytest.raises(ValueError, match=r"matmul_flops: .*m \(3,\), k \(2,\)"):
        fb.matmul_flops([1, 2, 3], [1, 2], 4)
    with pytest.raises(ValueError, match=r"decode_step_time: .*batch \(2,\), context \(3,\)"):
        fb.decode_step_time(M, HW, [1, 2], [8, 16, 32])


@pytest.mark.filterwarnings("error")
def test_overflow_is_an_error_not_a_warning():
    with pytest.raises(ValueError, match="overflows float64"):
        fb.training_flops(1e300, 1e300)
    with pytest.raises(ValueError, match="overflows float64"):
        fb.critical_batch("llama2-7b", "h100-sxm", 1e300)
