"""The measurement machinery (flopsbook.measure, flopsbook.measure_gpu): counts, not times.

Nothing here asserts on a wall-clock time: FLOP and byte counts are written out from the shapes
by hand, gradients are checked against finite differences, Timing's statistics run on a fake
clock, and the GPU script is tested without torch (its refusal and its JSON writer).
"""

import json
import sys
import time

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import measure, measure_gpu
from flopsbook.reference import counter
from flopsbook.reference.model import ReferenceTransformer


# -- Timing on a fake clock ------------------------------------------------------------------

def test_timed_runs_warmup_untimed_and_reports_median_min_max(monkeypatch):
    ticks = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # three timed calls: 3 s, 1 s, 2 s
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(ticks))
    calls = []
    t = measure.timed(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5  # 2 warm-up + 3 timed
    assert t.times == (3.0, 1.0, 2.0)
    assert (t.median, t.low, t.high, t.repeats, t.warmup) == (2.0, 1.0, 3.0, 3, 2)
    assert t.spread == pytest.approx((3.0 - 1.0) / 2.0)


def test_timing_from_times_even_count_and_errors():
    t = measure.Timing.from_times([4.0, 1.0, 2.0, 3.0])
    assert t.median == 2.5 and t.low == 1.0 and t.high == 4.0
    with pytest.raises(ValueError, match="times"):
        measure.Timing.from_times([])
    with pytest.raises(ValueError, match="repeats"):
        measure.timed(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure.timed(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="fn"):
        measure.timed(3)


def test_blas_threads_is_a_positive_count_or_none():
    n = measure.blas_threads()
    assert n is None or (isinstance(n, int) and n >= 1)


# -- matmul and triad ------------------------------------------------------------------------

def test_differs_compares_ranges_not_medians():
    fast = measure.Timing.from_times([1.0, 1.1, 1.2])
    slow = measure.Timing.from_times([2.0, 2.5, 3.0])
    wide = measure.Timing.from_times([0.9, 1.5, 2.4])
    assert measure.differs(fast, slow) == -1 and measure.differs(slow, fast) == 1
    assert measure.differs(fast, wide) == 0 and measure.differs(wide, slow) == 0
    assert measure.differs((1.0, 1.2), (1.3, 1.4)) == -1
    assert measure.differs(fast, (1.2, 5.0)) == 0                 # touching ranges overlap
    with pytest.raises(ValueError, match="low <= high"):
        measure.differs((2.0, 1.0), fast)


def test_best_rates_use_the_fastest_run():
    (p,) = measure.matmul_throughput([(3, 5, 7)], repeats=3)
    assert p.best_rate == p.flops / p.timing.low >= p.rate
    bw = measure.memory_bandwidth(24 * 100, repeats=3)
    assert bw.best_rate == bw.bytes_moved / bw.timing.low >= bw.rate
    rungs = measure.mlp_ladder(2, d_model=3, d_ff=4, repeats=3)
    assert all(r.best_rate == r.weight_flops / r.timing.low >= r.rate for r in rungs)


def test_matmul_points_count_flops_and_bytes_from_the_shape():
    (p,) = measure.matmul_throughput([(3, 5, 7)], repeats=1)
    assert (p.m, p.k, p.n, p.flops) == (3, 5, 7, 2 * 3 * 5 * 7)
    assert p.bytes == (3 * 5 + 5 * 7 + 3 * 7) * 4
    assert p.rate == p.flops / p.timing.median
    with pytest.raises(ValueError, match="shapes"):
        measure.matmul_throughput([(3, 5)])
    with pytest.raises(ValueError, match="dtype"):
        measure.matmul_throughput([(3, 5, 7)], dtype="float16")


def test_triad_result_and_bytes_counted():
    a, b, c = np.zeros(10), np.arange(10.0), np.arange(10.0) ** 2
    assert measure.triad(a, b, c, 3.0) is a
    np.testing.assert_allclose(a, b + 3.0 * c)
    bw = measure.memory_bandwidth(24 * 1000, repeats=2)
    assert bw.n_elements == 1000
    assert bw.bytes_moved == 5 * 1000 * 8  # c read, a written; a, b read, a written
    assert bw.rate == bw.bytes_moved / bw.timing.median
    with pytest.raises(ValueError, match="n_bytes"):
        measure.memory_bandwidth(8)


# -- the ladder --------------------------------------------------------------------------------

B, D, F = 3, 4, 5  # tiny shapes for counts and gradients
P = 2 * D * F


def test_ladder_bytes_by_hand_float32():
    s = 4
    expected = {
        "matmul": {},
        "linear MLP step": {"loss gradient": 3 * s * B * D, "sgd update": 5 * s * P},
    }
    relu = 2 * s * B * F + (s + 1 + s + 1 + s) * B * F  # fwd r/w; mask r/w; dz*mask r, r, w
    expected["+ activation"] = {**expected["linear MLP step"], "relu": relu}
    expected["+ residual"] = {**expected["+ activation"], "residual": 2 * 3 * s * B * D}
    expected["+ layer norm"] = {**expected["+ residual"], "layer norm": (9 + 16) * s * B * D}
    master = dict(expected["+ layer norm"])
    del master["sgd update"]
    master["master weights"] = (8 + 4) * P + (4 + 4) * P + (8 + 4 + 8) * P  # cast, scale, update
    expected["fp32 weights, fp64 master"] = master
    for name in measure.LADDER_RUNGS:
        assert measure.ladder_bytes(name, B, D, F) == expected[name], name
    assert measure.ladder_bytes("+ residual", B, D, F, "float64")["residual"] == 6 * 8 * B * D
    with pytest.raises(ValueError, match="name"):
        measure.ladder_bytes("relu", B, D, F)


def test_ladder_rungs_flops_bytes_and_fractions():
    rungs = measure.mlp_ladder(B, d_model=D, d_ff=F, repeats=1)
    assert [r.name for r in rungs] == list(measure.LADDER_RUNGS)
    assert rungs[0].weight_flops == 2 * B * D * F
    for r in rungs[1:]:
        assert r.weight_flops == 6 * B * P
    for r in rungs:
        assert r.rate == r.weight_flops / r.timing.median
        assert r.elementwise_bytes == sum(measure.ladder_bytes(r.name, B, D, F).values())
        assert r.fraction == pytest.approx(r.rate / rungs[0].rate)
        assert r.fraction_of(rungs[0]) == pytest.approx(r.fraction)
    assert [r.name for r in measure.mlp_ladder(B, d_model=D, d_ff=F, dtype="float64",
                                               repeats=1)] == list(measure.LADDER_RUNGS[:-1])
    with pytest.raises(ValueError, match="batch"):
        measure.mlp_ladder(0)
    with pytest.raises(ValueError, match="d_ff"):
        measure.mlp_ladder(2, d_ff=1.5)


def _loss(x, t, w1, w2, gain, *, activation, residual, norm):
    """The rung's loss written plainly: sum((y - t)^2) / 2."""
    h = x
    if norm:
        c = x - x.mean(axis=1, keepdims=True)
        h = c / np.sqrt((c ** 2).mean(axis=1, keepdims=True) + 1e-5) * gain
    z = h @ w1
    if activation:
        z = np.maximum(z, 0)
    y = z @ w2 + (x if residual else 0)
    return 0.5 * np.sum((y - t) ** 2)


@pytest.mark.parametrize("name", measure.LADDER_RUNGS[1:5])
def test_ladder_gradients_match_finite_differences(name):
    params = measure._ladder_params(B, D, F, np.dtype(np.float64), seed=1)
    block = measure._block(name, params)
    block.gradients()
    options = {k: getattr(block, k) for k in ("activation", "residual", "norm")}
    x, t, w1, w2, gain = params
    grads = {"x": block.dx, "w1": block.dw1, "w2": block.dw2}
    if block.norm:
        grads["gain"] = block.dgain
    arrays = {"x": x, "w1": w1, "w2": w2, "gain": gain}
    eps = 1e-6
    for key, grad in grads.items():
        arr = arrays[key]
        numeric = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = _loss(x, t, w1, w2, gain, **options)
            arr[i] = old - eps
            down = _loss(x, t, w1, w2, gain, **options)
            arr[i] = old
            numeric[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=key)


def test_master_rung_updates_the_float64_master_and_casts_it():
    params = measure._ladder_params(B, D, F, np.dtype(np.float32), seed=2)
    block = measure._block("fp32 weights, fp64 master", params)
    m1, m2 = block.master
    assert m1.dtype == np.float64 and block.w1.dtype == np.float32
    before = m1.copy()
    block.step()
    np.testing.assert_array_equal(block.w1, before.astype(np.float32))  # cast before the step
    np.testing.assert_array_equal(m1, before - block.dw1.astype(np.float64))  # dw1 holds lr*grad
    assert not np.array_equal(m1, before)


# -- the timing hook and the step breakdown --------------------------------------------------

def test_hook_is_off_by_default():
    assert counter._TIMERS == []
    a = np.ones((2, 3))
    counter.matmul(a, a.T)  # no timer open: nothing to charge, nothing raised
    with counter.timing(time.perf_counter) as t:
        counter.matmul(a, a.T, component="ffn")
        counter.elementwise("gelu", 6)
    assert counter._TIMERS == []
    assert set(t.matmul) == {("forward", "ffn")} and set(t.elementwise) == {("forward", "gelu")}
    assert t.total() >= sum(t.matmul.values()) + sum(t.elementwise.values())


def test_hook_charges_on_a_fake_clock():
    ticks = iter([0.0,            # timing() opens
                  1.0, 3.0, 3.5,  # matmul: start, stop, mark
                  6.0, 6.5,       # elementwise: charged 6.0 - 3.5, mark
                  10.0])          # timing() closes
    a = np.ones((2, 2))
    with counter.timing(lambda: next(ticks)) as t:
        counter.matmul(a, a, component="scores")
        counter.elementwise("softmax", 4)
    assert t.matmul == {("forward", "scores"): 2.0}
    assert t.elementwise == {("forward", "softmax"): 2.5}
    assert t.total() == 10.0 and t.unattributed() == 10.0 - 2.0 - 2.5
    with pytest.raises(ValueError, match="clock"):
        with counter.timing(None):
            pass


SPEC = fb.Transformer(n_layers=2, d_model=16, n_heads=2, vocab_size=50, seq_len=8, d_ff=32,
                      positional="rope", norm="rmsnorm", ffn="swiglu", bias=False)


def test_step_breakdown_sums_and_matches_the_counter():
    model = ReferenceTransformer(SPEC, seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, SPEC.vocab_size, (2, SPEC.seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    bd = measure.step_breakdown(model, x, y, repeats=2)
    assert tuple(bd) == measure.PARTS and tuple(bd.flops) == measure.PARTS
    assert sum(bd.values()) == pytest.approx(bd.total)
    assert bd.timing.repeats == 2 and bd.total in bd.timing.times
    with fb.count_flops() as c:
        model.train_step(x, y)
    by = c.by_component()
    assert bd.flops["matmuls"] == sum(v for k, v in by.items()
                                      if k not in ("scores", "weighted_values"))
    assert bd.flops["attention products"] == by["scores"] + by["weighted_values"]
    other = c.other_by_kind()
    assert bd.flops["softmax"] == other["softmax"] + other["cross_entropy"]
    assert bd.flops["norms"] == other["rmsnorm"]
    assert bd.flops["elementwise"] == (other["swiglu"] + other["rope"] + other["residual"]
                                       + other["embedding"])  # the lookup's gradient
    assert bd.flops["other"] == 0
    n = x.size
    assert bd.flops["matmuls"] + bd.flops["attention products"] == \
        n * fb.flops_per_token(SPEC, SPEC.seq_len)
    assert bd.flops["matmuls"] == n * fb.flops_per_token(SPEC, SPEC.seq_len,
                                                         include_attention=False)
    assert sum(bd.flop_fractions().values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="model"):
        measure.step_breakdown(object(), x, y)


# -- the GPU script, without torch ---------------------------------------------------------

def test_gpu_script_refuses_without_torch(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert measure_gpu.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "torch" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_gpu_script_refuses_without_cuda(monkeypatch, capsys, tmp_path):
    class FakeCuda:
        @staticmethod
        def is_available():
            return False

    class FakeTorch:
        cuda = FakeCuda()
        __version__ = "0.0"

    monkeypatch.setitem(sys.modules, "torch", FakeTorch())
    assert measure_gpu.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_gpu_report_schema_from_fake_results(tmp_path):
    fake = {
        "matmul": [{"m": 8192, "k": 1600, "n": 6400, "dtype": "bf16",
                    "times": [0.0010, 0.0011, 0.0012]}],
        "ladder": [{"name": "linear MLP step", "dtype": "bf16", "batch": 8192,
                    "d_model": 1600, "d_ff": 6400, "weight_flops": 6 * 8192 * 2 * 1600 * 6400,
                    "times": [0.01, 0.02, 0.03]}],
    }
    report = measure_gpu.build_report(
        fake, device="NVIDIA H200", driver="550.0", cuda="12.4", torch_version="2.4.0",
        command=["python", "-m", "flopsbook.measure_gpu", "--out", "x.json"], repeats=3,
        warmup=2, date="2025-01-01T00:00:00+00:00")
    path = tmp_path / "gpu.json"
    measure_gpu.write_report(report, path)
    data = json.loads(path.read_text())
    prov = data["provenance"]
    assert prov["device"] == "NVIDIA H200" and prov["registry_name"] == "h200"
    assert prov["peak_flops"]["bf16"] == fb.hardware("h200").peak("bf16")
    assert {"driver", "cuda", "torch", "date", "command", "repeats", "warmup",
            "python", "flopsbook"} <= set(prov)
    (mm,) = data["matmul"]
    assert mm["flops"] == 2 * 8192 * 1600 * 6400
    assert mm["median_s"] == 0.0011 and mm["spread"] == pytest.approx(0.0002 / 0.0011)
    assert mm["rate"] == pytest.approx(mm["flops"] / 0.0011)
    assert mm["fraction_of_peak"] == pytest.approx(mm["rate"] / fb.hardware("h200").peak("bf16"))
    (rung,) = data["ladder"]
    assert rung["rate"] == pytest.approx(rung["weight_flops"] / 0.02)
    assert rung["fraction_of_peak"] == pytest.approx(rung["rate"] / 989.4e12)


def test_gpu_registry_names():
    assert measure_gpu.registry_name("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert measure_gpu.registry_name("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert measure_gpu.registry_name("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert measure_gpu.registry_name("NVIDIA H100 PCIe") is None  # other peaks than the SXM
    assert measure_gpu.registry_name("NVIDIA GeForce RTX 4090") is None



@pytest.mark.parametrize("call, word", [
    (lambda: measure.matmul_throughput((4, 4, 4)), "list of \\(m, k, n\\) triples"),
    (lambda: measure.matmul_throughput(None), "list of \\(m, k, n\\) triples"),
    (lambda: measure.matmul_throughput(["abc"]), "list of \\(m, k, n\\) triples"),
    (lambda: measure.matmul_throughput([(4, 4)]), "triples"),
    # 3 x 10^12 float32 values: refused before numpy tries to allocate 11 TiB.
    (lambda: measure.matmul_throughput([(10**6,) * 3]), "GiB, above"),
    (lambda: measure.memory_bandwidth(2**60), "GiB, above"),
    (lambda: measure.mlp_ladder(10**9), "GiB, above"),
    (lambda: measure.differs(None, (0, 1)), "Timing or a \\(low, high\\)"),
    (lambda: measure.differs((1, 2, 3), (0, 1)), "Timing or a \\(low, high\\)"),
    (lambda: measure.differs((-5, -1), (0, 1)), "0 <= low <= high"),
])
def test_bad_sizes_and_ranges_are_refused_before_any_work(call, word):
    with pytest.raises(ValueError, match=word):
        call()
