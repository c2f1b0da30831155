"""The counted device simulation (flopsbook.reference.collectives) against the formulas.

Every collective is checked twice: its result against numpy's direct sum or concatenation (the
devices compute the right thing), and the bytes its busiest device sent and its steps against
``fb.collective_bytes`` and ``fb.collective_steps`` (the formulas count what the algorithm
sends). Sizes that n does not divide are padded to a multiple of n, as ``data_parallel_bytes``
pads Psi, so the formula is evaluated on the padded buffer. A few logs are written out by hand
from the algorithms' definitions, independent of both the code and the formulas.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flopsbook as fb
from flopsbook.reference import ReferenceTransformer
from flopsbook.reference import collectives as C
from flopsbook.spec import Transformer

RING_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast")
SIZES = (0, 1, 7, 12, 13, 30)  # values per buffer: empty, fewer than n, divisible or not


def run_ring(kind, buffers, **kw):
    """The simulated collective of ``kind`` on one buffer per device."""
    n = len(buffers)
    if kind == "all-reduce":
        return C.all_reduce(buffers, **kw)
    if kind == "reduce-scatter":
        return C.reduce_scatter(buffers)
    if kind == "all-to-all":
        return C.all_to_all(buffers)
    if kind == "all-gather":
        return C.all_gather(C.shard(buffers[0], n))
    return C.broadcast(buffers[0], n, **kw)


def expected(kind, buffers):
    """What each device must hold, computed directly (no messages)."""
    n, flat = len(buffers), [np.ravel(b) for b in buffers]
    size = flat[0].size
    per = -(-size // n)
    if kind == "all-reduce":
        return [sum(buffers)] * n
    padded_sum = np.zeros(per * n, dtype=flat[0].dtype)
    padded_sum[:size] = sum(flat)
    if kind == "reduce-scatter":
        return [padded_sum[i * per:(i + 1) * per] for i in range(n)]
    if kind == "all-to-all":
        pads = [np.concatenate([f, np.zeros(per * n - size, f.dtype)]) for f in flat]
        return [np.concatenate([p[j * per:(j + 1) * per] for p in pads]) for j in range(n)]
    if kind == "all-gather":
        return [np.concatenate([flat[0], np.zeros(per * n - size, flat[0].dtype)])] * n
    return [buffers[0]] * n


def check_collective(kind, buffers, *, exact, **kw):
    n = len(buffers)
    run = run_ring(kind, buffers, **kw)
    want = expected(kind, buffers)
    assert len(run.outputs) == n
    for got, ref in zip(run.outputs, want):
        assert got.shape == np.shape(ref)
        if exact:
            np.testing.assert_array_equal(got, ref)
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    algorithm = kw.get("algorithm", "ring")
    # The buffer padded to a multiple of n values (the tree: of 2; a chunked broadcast: of k).
    multiple = 2 if algorithm == "tree" else kw.get("chunks", 1) if kind == "broadcast" else n
    size, item = np.size(buffers[0]), np.asarray(buffers[0]).itemsize
    assert run.padded_bytes == -(-size // multiple) * multiple * item
    assert run.max_bytes_sent == fb.collective_bytes(kind, run.padded_bytes, n,
                                                     algorithm=algorithm)
    steps = fb.collective_steps(kind, n, algorithm=algorithm)
    if kind == "broadcast" and n > 1:
        steps += kw.get("chunks", 1) - 1  # pipelining adds a step per extra chunk
    assert run.n_steps == steps
    # Conservation: what is sent is received.
    assert run.bytes_sent().sum() == run.bytes_received().sum()
    return run


@pytest.mark.parametrize("n", range(1, 10))
@pytest.mark.parametrize("kind", RING_KINDS)
def test_ring_collectives_compute_the_direct_result_and_send_what_the_formula_says(kind, n):
    rng = np.random.default_rng(n)
    for size in SIZES:
        ints = [rng.integers(-100, 100, size) for _ in range(n)]
        check_collective(kind, ints, exact=True)
        floats = [rng.normal(size=(size,)) for _ in range(n)]
        check_collective(kind, floats, exact=False)
    # Shapes other than 1-D: the whole buffer is what counts, in any shape.
    if kind in ("all-reduce", "broadcast"):
        check_collective(kind, [rng.integers(0, 9, (3, 5)) for _ in range(n)], exact=True)


@pytest.mark.parametrize("n", range(1, 10))
def test_tree_all_reduce_sums_and_sends_what_the_formula_says(n):
    rng = np.random.default_rng(100 + n)
    for size in SIZES:
        check_collective("all-reduce", [rng.integers(-9, 9, size) for _ in range(n)],
                         exact=True, algorithm="tree")
        check_collective("all-reduce", [rng.normal(size=size) for _ in range(n)], exact=False,
                         algorithm="tree")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 16, 17, 33])
def test_the_two_trees_span_every_rank_and_share_no_inner_node(n):
    parents = C.tree_parents(n)
    inner = []
    for tree in parents:
        assert tree.count(-1) == 1  # one root
        for r in range(n):  # every rank reaches the root
            seen, p = 0, r
            while tree[p] >= 0:
                p, seen = tree[p], seen + 1
                assert seen <= n
        children = [sum(1 for q in tree if q == r) for r in range(n)]
        assert max(children) <= 2
        inner.append({r for r in range(n) if children[r]})
    assert not inner[0] & inner[1]  # why the busiest rank sends 2 buffers, not 3


def test_hand_written_logs():
    # Ring all-reduce of 8 float64 over 4 devices: chunks of 2 values (16 bytes), each device
    # sends 3 in the reduce-scatter and 3 in the all-gather: 96 bytes in 6 steps.
    run = C.all_reduce([np.arange(8.0) * (d + 1) for d in range(4)])
    assert run.bytes_sent().tolist() == [96, 96, 96, 96]
    assert run.n_steps == 6
    ring = [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert run.arrows() == [ring] * 6
    # Step 0: device 0 sends its own chunk 3 (values 6, 7) to device 1.
    first = run.messages[0]
    assert (first.step, first.sender, first.receiver, first.n_bytes, first.chunk) == \
        (0, 0, 1, 16, 3)
    assert "partial sum" in first.what
    np.testing.assert_array_equal(run.outputs[2], np.arange(8.0) * 10)

    # All-to-all over 3: step t, device i sends to i + t + 1.
    a2a = C.all_to_all([np.arange(3) + 10 * d for d in range(3)])
    assert a2a.arrows() == [[(0, 1), (1, 2), (2, 0)], [(0, 2), (1, 0), (2, 1)]]
    np.testing.assert_array_equal(a2a.outputs[1], [1, 11, 21])

    # Broadcast of 4 int64 from device 2 over 4 devices in 2 pieces: the chain 2, 3, 0, 1;
    # piece c leaves hop h at step h + c: 4 steps, the last device (1) sends nothing.
    b = C.broadcast(np.arange(4), 4, root=2, chunks=2)
    assert b.arrows() == [[(2, 3)], [(2, 3), (3, 0)], [(3, 0), (0, 1)], [(0, 1)]]
    assert b.bytes_sent().tolist() == [32, 0, 32, 32]

    # Tree all-reduce over 5 of 2 float64 (halves of 8 bytes). Tree 0: 0 -> 1, 2; 1 -> 3, 4.
    # Tree 1 (ranks reversed): 4 -> 3, 2; 3 -> 1, 0. Rank 1 sends its half 0 up (8) and down
    # to 3 and 4 (16) and its half 1 up (8): 32 bytes, 2 buffers; rank 2 only sends up twice.
    assert C.tree_parents(5) == ([-1, 0, 0, 1, 1], [3, 3, 4, 4, -1])
    t = C.all_reduce([np.array([1.0, 2.0]) * (d + 1) for d in range(5)], algorithm="tree")
    assert t.bytes_sent().tolist() == [24, 32, 16, 32, 24]
    assert t.n_steps == 4
    for out in t.outputs:
        np.testing.assert_array_equal(out, [15.0, 30.0])


@pytest.mark.parametrize("kind", ["all-reduce", "all-gather", "reduce-scatter", "all-to-all"])
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_ring_steps_in_sequence_take_the_alpha_beta_time(kind, n):
    # 40 float64 per buffer; 1 us per message, 1 GB/s.
    run = run_ring(kind, [np.ones(40) for _ in range(n)])
    assert run.step_time(1e-6, 1e9) == pytest.approx(
        fb.collective_time(kind, run.padded_bytes, n, 1e9, latency=1e-6), rel=1e-12)


def test_a_chain_that_is_not_pipelined_pays_the_buffer_at_every_hop():
    # 4 devices, 80 bytes: 3 hops of (1 us + 80 ns) unchunked; 4 chunks: 6 hops of 20 ns.
    # (fb.collective_time charges 3 us + 80 ns: the pipelining limit, reached by neither.)
    one = C.broadcast(np.ones(10), 4)
    assert one.step_time(1e-6, 1e9) == pytest.approx(3 * (1e-6 + 80e-9), rel=1e-12)
    four = C.broadcast(np.ones(12), 4, chunks=4)  # 96 bytes in pieces of 24
    assert four.step_time(1e-6, 1e9) == pytest.approx(6 * (1e-6 + 24e-9), rel=1e-12)


def test_every_ring_step_sends_one_message_per_device():
    run = C.reduce_scatter([np.ones(10) for _ in range(5)])
    for arrows in run.arrows():
        assert sorted(s for s, _ in arrows) == list(range(5))
        assert sorted(r for _, r in arrows) == list(range(5))
    assert all(isinstance(m, C.Message) for m in run.messages)
    with pytest.raises(AttributeError):  # records are immutable
        run.messages[0].n_bytes = 0


def test_one_device_sends_nothing():
    for kind in RING_KINDS:
        run = run_ring(kind, [np.arange(5)])
        assert run.messages == () and run.n_steps == 0 and run.max_bytes_sent == 0
        assert run.arrows() == []


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(RING_KINDS + ("tree",)), n=st.integers(1, 12),
       size=st.integers(0, 40), floats=st.booleans(), seed=st.integers(0, 2**16))
def test_property_collectives_match_numpy_and_the_formulas(kind, n, size, floats, seed):
    rng = np.random.default_rng(seed)
    make = (lambda: rng.normal(size=size)) if floats else (lambda: rng.integers(-50, 50, size))
    buffers = [make() for _ in range(n)]
    if kind == "tree":
        check_collective("all-reduce", buffers, exact=not floats, algorithm="tree")
    elif kind == "broadcast":
        k = int(rng.integers(1, 5))
        check_collective(kind, buffers, exact=not floats, chunks=k)
        b = C.broadcast(buffers[0], n, root=int(rng.integers(0, n)), chunks=k)
        assert all(np.array_equal(o, buffers[0]) for o in b.outputs)
    else:
        check_collective(kind, buffers, exact=not floats)


# -- data parallelism ------------------------------------------------------------------------

SPEC = Transformer(n_layers=1, d_model=4, n_heads=2, vocab_size=7, seq_len=4, d_ff=8)
MODEL = ReferenceTransformer(SPEC, seed=0)
RNG = np.random.default_rng(7)
TOKENS = RNG.integers(0, 7, (7, 4))   # 7 sequences: no n > 1 splits them evenly
TARGETS = RNG.integers(0, 7, (7, 4))
LOSS, GRADS = MODEL.train_step(TOKENS, TARGETS)
LR = 0.1


def check_step(n, stage, k):
    before = {name: v.copy() for name, v in MODEL.params.items()}
    step = C.data_parallel_step(MODEL, TOKENS, TARGETS, n, zero_stage=stage, micro_batches=k,
                                lr=LR)
    # The model is left as it was.
    for name in before:
        np.testing.assert_array_equal(MODEL.params[name], before[name])
    # The combined gradient is the whole batch's (the loss is a mean over its 28 tokens).
    assert step.loss == pytest.approx(LOSS, rel=1e-13)
    for name, g in GRADS.items():
        np.testing.assert_allclose(step.grads[name], g, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(step.params[name], before[name] - LR * g, rtol=1e-10,
                                   atol=1e-14)
    # Bytes: the formula at 8 bytes per value (float64), padding included.
    want = fb.data_parallel_bytes(MODEL.n_params, n, zero_stage=stage, bytes_per_value=8,
                                  micro_batches=k)
    assert step.max_bytes_sent == want.total
    assert step.bytes_sent("gradients").max() == want.gradients
    assert step.bytes_sent("parameters").max() == want.parameters
    assert step.n_params == MODEL.n_params
    # What the devices hold: identical replicas (0-2), or shards that make the whole (3).
    padded = -(-MODEL.n_params // n) * n
    flat = np.concatenate([step.params[name].ravel() for name in MODEL.params])
    if stage < 3:
        for held in step.device_params:
            np.testing.assert_array_equal(held, step.device_params[0])
            np.testing.assert_allclose(held[:MODEL.n_params], flat, rtol=0, atol=0)
            assert held.size == padded
    else:
        assert all(s.size == padded // n for s in step.device_params)
        np.testing.assert_array_equal(np.concatenate(step.device_params)[:MODEL.n_params],
                                      flat)
    return step


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (3, 2), (2, 3), (7, 1)])
def test_data_parallel_step_equals_the_single_device_step(stage, n, k):
    check_step(n, stage, k)


def test_the_collectives_of_each_stage_in_order():
    labels = {stage: [c.label for c in check_step(2, stage, 3).collectives]
              for stage in range(4)}
    assert labels[0] == ["gradients"]
    assert labels[1] == ["gradients", "parameters"]
    assert labels[2] == ["gradients"] * 3 + ["parameters"]
    assert labels[3] == ["parameters (forward)", "parameters (backward)", "gradients"] * 3
    kinds = [c.kind for c in check_step(2, 3, 1).collectives]
    assert kinds == ["all-gather", "all-gather", "reduce-scatter"]


def test_hand_counted_zero3_bytes():
    # Psi = 224 (token and position embeddings 7*4 + 4*4, three LayerNorms 3*(4 + 4),
    # attention 4*(4*4 + 4), FFN 4*8 + 8 + 8*4 + 4)
    # over 3 devices: padded to 225, shards of 75; one micro-batch all-gathers twice and
    # reduce-scatters once, 2 * 75 values each time: 3 * 150 * 8 bytes.
    assert MODEL.n_params == 224
    step = C.data_parallel_step(MODEL, TOKENS, TARGETS, 3, zero_stage=3)
    assert step.bytes_sent().tolist() == [3600, 3600, 3600]


def test_the_backward_reads_the_gathered_parameters():
    # Why ZeRO-3 gathers again for the backward: the backward computes with the weights
    # (dX = dY W^T), here read from model.params after the forward has run.
    model = ReferenceTransformer(SPEC, seed=0)
    model.forward(TOKENS, TARGETS)
    model.params = {name: np.full_like(v, np.nan) for name, v in model.params.items()}
    grads = model.backward()
    assert np.isnan(grads["layers.0.attn.w_q"]).all()


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 4), k=st.integers(1, 2), stage=st.sampled_from([0, 1, 2, 3]),
       batch=st.integers(1, 7))
def test_property_data_parallel(n, k, stage, batch):
    if batch < n * k:
        with pytest.raises(ValueError, match="tokens"):
            C.data_parallel_step(MODEL, TOKENS[:batch], TARGETS[:batch], n, zero_stage=stage,
                                 micro_batches=k)
        return
    loss, grads = MODEL.train_step(TOKENS[:batch], TARGETS[:batch])
    step = C.data_parallel_step(MODEL, TOKENS[:batch], TARGETS[:batch], n, zero_stage=stage,
                                micro_batches=k)
    assert step.loss == pytest.approx(loss, rel=1e-13)
    for name, g in grads.items():
        np.testing.assert_allclose(step.grads[name], g, rtol=1e-10, atol=1e-14)
    assert step.max_bytes_sent == fb.data_parallel_bytes(
        MODEL.n_params, n, zero_stage=stage, bytes_per_value=8, micro_batches=k).total


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: C.all_reduce([]), "buffers"),
    (lambda: C.all_reduce(np.ones((2, 3))), "buffers"),
    (lambda: C.all_reduce([np.ones(3), np.ones(4)]), "buffers"),
    (lambda: C.all_reduce([np.ones(3), np.ones(3, dtype=int)]), "buffers"),
    (lambda: C.all_reduce([np.array(["a"])]), "buffers"),
    (lambda: C.all_reduce([np.array([True])]), "buffers"),
    (lambda: C.all_reduce([np.ones(3)], algorithm="star"), "algorithm"),
    (lambda: C.reduce_scatter([np.ones(2), np.ones((2, 1))]), "buffers"),
    (lambda: C.all_gather([]), "shards"),
    (lambda: C.all_gather([np.ones(2), np.ones(3)]), "shards"),
    (lambda: C.all_to_all([np.ones(2), "x"]), "buffers"),
    (lambda: C.broadcast(np.ones(3), 0), "n_devices"),
    (lambda: C.broadcast(np.ones(3), True), "n_devices"),
    (lambda: C.broadcast(np.ones(3), 2.0), "n_devices"),
    (lambda: C.broadcast(np.ones(3), 3, root=3), "root"),
    (lambda: C.broadcast(np.ones(3), 3, root=-1), "root"),
    (lambda: C.broadcast(np.ones(3), 3, chunks=0), "chunks"),
    (lambda: C.broadcast(np.array(["a"]), 3), "buffer"),
    (lambda: C.shard(np.ones(3), 0), "n_devices"),
    (lambda: C.tree_parents(0), "n_devices"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 2, zero_stage=4), "zero_stage"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 2, zero_stage=True), "zero_stage"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 2, micro_batches=0),
     "micro_batches"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 0), "n_devices"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 4, micro_batches=2), "tokens"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS[:3], 2), "targets"),
    (lambda: C.data_parallel_step(MODEL, TOKENS[0], TARGETS[0], 1), "tokens"),
    (lambda: C.data_parallel_step(MODEL, TOKENS, TARGETS, 2, lr=float("nan")), "lr"),
    (lambda: C.data_parallel_step(object(), TOKENS, TARGETS, 2), "model"),
])
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_tree_is_simulated_for_all_reduce_only():
    # As the formula: NCCL runs the other collectives as rings.
    with pytest.raises(ValueError, match="algorithm"):
        C.broadcast(np.ones(3), 3, algorithm="tree")
    with pytest.raises(ValueError, match="tree"):
        fb.collective_bytes("broadcast", 8, 3, algorithm="tree")
