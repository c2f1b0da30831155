"""Shared by the reference-model tests: random token batches and the finite-difference check of
the hand-written backward pass (tests/test_reference.py, tests/test_reference_architectures.py).
"""

import numpy as np

# Central differences at eps = 1e-5 carry rounding noise of about 1e-16 * loss / eps ~ 1e-11.
# Below NOISE both sides are zero: the key bias has an exactly zero gradient (adding the same
# q.b_k to every score of a row leaves the softmax unchanged).
NOISE = 1e-9
EPS = 1e-5


def batch(m, b, s, seed=1):
    """Random (tokens, targets), each (b, s), for the spec ``m``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, m.vocab_size, (b, s)), rng.integers(0, m.vocab_size, (b, s))


def rel_err(num, ana):
    """Relative error of the vectors num and ana (0 when both are within rounding of zero)."""
    num, ana = np.atleast_1d(num), np.atleast_1d(ana)
    scale = max(np.linalg.norm(num), np.linalg.norm(ana))
    return 0.0 if scale < NOISE else np.linalg.norm(num - ana) / scale


def assert_gradients_match(model, tokens, targets, *, entries=0, tol=1e-6):
    """Every parameter's gradient from ``model.train_step`` against central differences: along
    a random direction (checks every entry at once: d/dt L(p + t v) = <grad, v>) and, with
    ``entries``, at that many single entries too."""
    _, grads = model.train_step(tokens, targets)
    assert grads.keys() == model.params.keys()
    rng = np.random.default_rng(0)

    def loss_at(pname, delta):
        model.params[pname] += delta
        try:
            return model.forward(tokens, targets)
        finally:
            model.params[pname] -= delta

    for pname, p in model.params.items():
        g = grads[pname]
        assert g.shape == p.shape
        v = rng.standard_normal(p.shape)
        v /= np.linalg.norm(v)
        num = (loss_at(pname, EPS * v) - loss_at(pname, -EPS * v)) / (2 * EPS)
        assert rel_err(num, np.sum(g * v)) < tol, (pname, "direction", num, np.sum(g * v))
        if not entries:
            continue
        nums, anas = [], []
        for flat in rng.choice(p.size, size=min(entries, p.size), replace=False):
            e = np.zeros(p.size)
            e[flat] = EPS
            e = e.reshape(p.shape)
            nums.append((loss_at(pname, e) - loss_at(pname, -e)) / (2 * EPS))
            anas.append(g.flat[flat])
        assert rel_err(np.array(nums), np.array(anas)) < tol, (pname, "entries")
