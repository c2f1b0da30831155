"""Matrix-product formulas: values, broadcasting and bad input."""

import numpy as np
import pytest

import flopsbook as fb


def test_matmul_flops_is_two_per_multiply_add():
    assert fb.matmul_flops(2, 3, 4) == 48
    assert fb.matmul_flops(64, 32, 48, batch=8) == 2 * 8 * 64 * 32 * 48


def test_matmul_flops_counts_a_loop():
    # Count multiply-adds of C = A @ B directly.
    m, k, n = 3, 5, 4
    macs = sum(1 for i in range(m) for j in range(n) for l in range(k))
    assert fb.matmul_flops(m, k, n) == 2 * macs


def test_broadcasting_returns_float64_arrays():
    ms = np.arange(1, 1001)
    out = fb.matmul_flops(ms, 8, np.array([[1], [2]]))
    assert out.shape == (2, 1000) and out.dtype == np.float64
    assert out[1, 9] == 2 * 10 * 8 * 2
    scalar = fb.matmul_flops(2, 2, 2)
    assert isinstance(scalar, float) and np.ndim(scalar) == 0


def test_matmul_bytes_and_roofline():
    assert fb.matmul_bytes(2, 3, 4, bytes_per_value=2) == (6 + 12 + 8) * 2
    # Compute-bound: FLOPs / peak; memory-bound: bytes / bandwidth.
    assert fb.roofline_time(1e12, 1e6, 1e12, 1e9) == 1.0
    assert fb.roofline_time(1e6, 2e9, 1e12, 1e9) == 2.0
    t = fb.roofline_time(np.array([0, 1e12]), 0, 1e12, 1e9)
    assert list(t) == [0.0, 1.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(m=-1, k=2, n=2), "m must be > 0, got -1"),
    (dict(m=0, k=2, n=2), "m must be > 0, got 0"),
    (dict(m=2, k=2.5, n=2), "k must be a whole number"),
    (dict(m=2, k=2, n=float("nan")), "n must be finite"),
    (dict(m=2, k=2, n="4"), "n must be a number or an array of numbers"),
    (dict(m=2, k=2, n=2, batch=[1, -3]), "batch must be > 0, got -3"),
    (dict(m=[1, None], k=2, n=2), "m must be a number or an array of numbers"),
])
def test_matmul_flops_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fb.matmul_flops(**kwargs)


def test_roofline_rejects_bad_input():
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        fb.roofline_time(1, 1, 0, 1)
    with pytest.raises(ValueError, match="bytes_moved must be >= 0"):
        fb.roofline_time(1, -1, 1, 1)
    with pytest.raises(ValueError, match="bytes_per_value must be > 0"):
        fb.matmul_bytes(1, 1, 1, bytes_per_value=0)
