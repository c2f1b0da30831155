"""The context-length experiment (flopsbook.experiments.context): its data, its optimum, its
metric, its optimizer and its stored results.

Expected values are worked out by hand or by an independent route (Monte Carlo of the data
against the closed-form optimum; the counting reference model against ``step_flops``); the
stored sweep is re-run in part (``--check``) rather than trusted.
"""

import json
import math

import numpy as np
import pytest

from flopsbook.experiments import context as C
from flopsbook.reference.counter import count_flops
from flopsbook.reference.model import ReferenceTransformer


# -- data ------------------------------------------------------------------------------------

def test_long_documents_are_one_document_per_sequence():
    x = C.documents(50, 40, seed=1)
    assert x.shape == (50, 40) and x.dtype == np.int64
    assert (x[:, 0] == 0).all()                       # every sequence opens with a separator
    assert x[:, 1:].min() >= 1 and x[:, 1:].max() <= C.N_WORDS  # ... and then only words


def test_control_documents_average_the_stated_length():
    x = C.documents(400, 400, kind="control", seed=2)
    assert (x[:, 0] == 0).all()
    assert not ((x[:, 1:] == 0) & (x[:, :-1] == 0)).any()  # no empty document
    # Words per document are geometric with mean CONTROL_MEAN_WORDS: count complete documents.
    seps = np.flatnonzero(x.ravel() == 0)
    lengths = np.diff(seps) - 1
    lengths = lengths[lengths > 0][: 10_000]
    assert lengths.mean() == pytest.approx(C.CONTROL_MEAN_WORDS, rel=0.05)


def test_same_seed_same_documents_and_words_follow_their_document():
    a, b = C.documents(3, 20, seed=7), C.documents(3, 20, seed=7)
    assert (a == b).all()
    # With ALPHA = 0.1 a document uses few of the 31 words: far fewer distinct ones than a
    # uniform draw of 500 would show (all 31).
    x = C.documents(20, 501, seed=3)
    distinct = [len(set(row[1:])) for row in x]
    assert np.mean(distinct) < 20


def test_bayes_loss_is_log_n_words_with_no_words_seen():
    x = C.documents(5, 10, seed=0)
    assert C.bayes_losses(x)[:, 0] == pytest.approx(math.log(C.N_WORDS))
    assert C.expected_bayes_curve("long", 4)[0] == pytest.approx(math.log(31))
    assert C.word_losses(1)[0] == pytest.approx(math.log(31))


def test_bayes_loss_by_hand_after_two_words():
    # Tokens 0, 5, 5, 9: after one 5 the posterior of a second 5 is (0.1 + 1)/(3.1 + 1), then
    # of a 9 after two 5s is 0.1/(3.1 + 2).
    got = C.bayes_losses(np.array([[0, 5, 5, 9]]))[0]
    assert got == pytest.approx([math.log(31), -math.log(1.1 / 4.1), -math.log(0.1 / 5.1)])


def test_control_bayes_loss_prices_the_document_ending():
    # 0, 3, 0, 3: the separator after a word has probability 1/8; the word after a separator
    # is a fresh document's first word, 1/31 (what came before is forgotten).
    got = C.bayes_losses(np.array([[0, 3, 0, 3]]), kind="control")[0]
    assert got == pytest.approx([math.log(31), math.log(8), math.log(31)])
    with pytest.raises(ValueError, match="probability 0"):
        C.bayes_losses(np.array([[0, 3, 0, 3]]), kind="long")  # a long document never ends


@pytest.mark.parametrize("kind", C.KINDS)
def test_expected_optimum_matches_monte_carlo(kind):
    length = 64
    exact = C.expected_bayes_curve(kind, length)
    draws = np.concatenate([C.bayes_losses(C.documents(2000, length + 1, kind=kind, seed=s),
                                           kind=kind) for s in range(4)])
    se = draws.std(axis=0) / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - exact) < 5 * se + 1e-12)


def test_long_optimum_decreases_towards_the_document_entropy():
    curve = C.word_losses(512)
    assert np.all(np.diff(curve) < 0)
    # E[H(p)] of p ~ Dirichlet(a, ..., a) over W words is psi(W a + 1) - psi(a + 1).
    def digamma(x, terms=60):  # recurrence up to a large argument, then the asymptotic series
        shift = sum(1.0 / (x + i) for i in range(terms))
        y = x + terms
        return math.log(y) - 1 / (2 * y) - 1 / (12 * y ** 2) + 1 / (120 * y ** 4) - shift
    entropy = digamma(C.N_WORDS * C.ALPHA + 1) - digamma(C.ALPHA + 1)
    assert 0 < curve[-1] - entropy < 0.03


def test_control_optimum_flattens_after_a_few_documents():
    curve = C.expected_bayes_curve("control", 512)
    # Past a few documents the context holds the current one and finished ones, which are idle:
    # only documents longer than 64 words (a fraction (7/8)**64 of them) still gain.
    assert 0 <= curve[63] - curve[511] < 1e-5
    assert curve[0] - curve[15] > 0.5


# -- the metric ------------------------------------------------------------------------------

@pytest.mark.parametrize("context, positions", [(8, 1), (20, 1), (21, 2), (64, 4), (256, 13)])
def test_best_context_averages_the_last_five_percent(context, positions):
    assert C.best_context_positions(context) == positions
    curve = np.arange(1.0, 2 * context + 1)        # loss = position, beyond the context too
    expect = np.mean(np.arange(context - positions + 1, context + 1))
    assert C.best_context_loss(curve, context) == pytest.approx(expect)


def test_best_context_loss_refuses_a_short_curve():
    with pytest.raises(ValueError, match="context=8"):
        C.best_context_loss(np.ones(5), 8)
    with pytest.raises(ValueError, match="context"):
        C.best_context_loss(np.ones(5), 0)


# -- model, FLOPs, optimizer -----------------------------------------------------------------

def test_step_flops_equal_the_counted_training_step():
    m = C.model_spec(16, 16)
    model = ReferenceTransformer(m, seed=0)
    x = C.documents(C.TOKENS_PER_STEP // 16, 17, seed=0)
    with count_flops(causal=True) as c:
        model.train_step(x[:, :-1], x[:, 1:])
    assert c.total() == C.step_flops(16, 16)


def test_model_spec_and_its_refusals():
    m = C.model_spec(32, 64)
    assert (m.n_layers, m.d_model, m.n_heads, m.d_head, m.vocab_size, m.positional) == \
        (2, 32, 4, 8, 32, "rope")
    with pytest.raises(ValueError, match="multiple of D_HEAD"):
        C.model_spec(12, 8)
    with pytest.raises(ValueError, match="context"):
        C.train_run(16, 24, steps=1)  # 24 does not divide 2,048 tokens per step
    with pytest.raises(ValueError, match="kind"):
        C.documents(2, 4, kind="web")


def test_adam_first_step_moves_each_weight_by_lr_over_warmup():
    # After one step m/c1 = g and sqrt(v/c2) = |g|: every weight moves lr * (1/warmup) against
    # its gradient's sign, whatever the gradient's size (here below the clipping norm).
    params = {"w": np.array([1.0, -2.0, 0.5])}
    opt = C.Adam(params, **{**C.ADAM, "eps": 0.0})
    opt.step({"w": np.array([0.3, -0.01, 0.0004])})
    step = C.ADAM["lr"] / C.ADAM["warmup_steps"]
    assert params["w"] == pytest.approx([1.0 - step, -2.0 + step, 0.5 - step])


def test_adam_clips_the_global_gradient_norm():
    params = {"a": np.zeros(1), "b": np.zeros(1)}
    opt = C.Adam(params, **{**C.ADAM, "eps": 0.0, "beta1": 0.0, "beta2": 0.0})
    opt.step({"a": np.array([30.0]), "b": np.array([40.0])})  # norm 50, clipped to 1
    # Both moments see the clipped gradient: the step is still lr/warmup per weight.
    assert params["a"][0] == pytest.approx(-C.ADAM["lr"] / C.ADAM["warmup_steps"])


# -- the stored sweep ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results():
    return C.load_results()


def test_stored_results_carry_their_provenance(results):
    p = results["provenance"]
    for key in ("package_version", "date", "seed", "numpy", "command", "sweep", "data"):
        assert key in p
    assert p["sweep"]["contexts"] == C.SWEEP["contexts"]
    assert p["data"] == {"n_words": C.N_WORDS, "alpha": C.ALPHA,
                         "control_mean_words": C.CONTROL_MEAN_WORDS}


@pytest.fixture(scope="module")
def fresh_check(results):
    return C.check_reproduces(results)   # trains the check configuration once, from scratch


def test_check_run_reproduces_the_stored_numbers(fresh_check):
    assert len(fresh_check["losses"]) == C.CHECK["steps"]
    assert len(fresh_check["curve"]) == C.CHECK["context"]


def test_check_fails_on_a_tampered_results_file(results, fresh_check):
    tampered = json.loads(json.dumps(results["check"]))
    tampered["losses"][3] *= 1 + 1e-6
    with pytest.raises(ValueError, match=r"losses\[3\]"):
        C.compare_check(fresh_check, tampered)


def test_every_run_reached_the_budgets_of_its_width(results):
    for run in results["runs"]:
        if run["kind"] == "long":
            top = C.SWEEP["widths"][run["width"]]
        else:
            top = C.SWEEP["control"]["max_budget"]
        expected = [b for b in C.SWEEP["budgets"] if b <= top]
        assert [c["budget"] for c in run["checkpoints"]] == expected
        for c in run["checkpoints"]:
            assert c["flops"] >= c["budget"] > c["flops"] - run["step_flops"]
            assert len(c["curve"]) == run["context"]
        assert len(run["curve_beyond"]) == C.beyond_length(run["context"])


def test_stored_best_context_losses_follow_from_the_stored_curves(results):
    for run in results["runs"]:
        for c in run["checkpoints"]:
            assert c["best_context_loss"] == pytest.approx(
                C.best_context_loss(c["curve"], run["context"]), abs=1e-4)


def test_curves_lie_above_the_optimum(results):
    # Each stored curve estimates the model's expected loss; a model cannot beat the Bayes
    # optimum in expectation (allow the estimator's noise).
    for run in results["runs"]:
        floor = np.asarray(results["expected_bayes"][run["kind"]])
        curve = np.asarray(run["checkpoints"][-1]["curve"])
        assert np.mean(curve - floor[:len(curve)]) > -0.01


def test_predicted_best_context_interpolates_and_refuses_to_extrapolate(results):
    w = C.widths(results)[0]
    opt = C.optimal_context(results, w)
    assert C.predicted_best_context(opt.budgets[0], w, results=results) == \
        pytest.approx(opt.fitted[0])
    both = C.predicted_best_context(opt.budgets[:2], w, results=results)
    assert both.shape == (2,)
    with pytest.raises(ValueError, match="budget must lie within"):
        C.predicted_best_context(opt.budgets[-1] * 10, w, results=results)
    with pytest.raises(ValueError, match="width must be one of"):
        C.predicted_best_context(opt.budgets[0], 24, results=results)


def test_cli_check_passes(capsys):
    assert C.main(["--check"]) == 0
    assert "check passed" in capsys.readouterr().out


def test_optimal_context_leaves_out_budgets_still_in_warm_up(results):
    warmup = results["provenance"]["training"]["adam"]["warmup_steps"]
    for w in C.widths(results):
        budgets, _, steps = C.grid(results, w, metric="steps")
        kept = C.comparable_budgets(results, w)
        for b, row in zip(budgets, steps):
            assert (b in kept) == bool(not np.isnan(row).any() and row.min() >= warmup)
        assert list(C.optimal_context(results, w).budgets) == list(kept)
    with pytest.raises(ValueError, match="min_steps"):
        C.optimal_context(results, C.widths(results)[0], min_steps=10**6)
