"""Chapter "Collectives and data parallelism": ring and tree collectives, the alpha-beta model,
data parallelism's traffic and the overlap threshold, derived by hand.

The counted device simulation (tests/test_collectives_reference.py) and XLA's compiled
collectives (tests/test_xla.py) check the same formulas independently.
"""

import numpy as np
import pytest

import flopsbook as fb
from flopsbook import Hardware

GB = 1e9


@pytest.mark.parametrize("kind, factor", [
    # nccl-tests' bus-bandwidth factors: what each device sends per byte of the buffer.
    ("all-reduce", lambda n: 2 * (n - 1) / n),
    ("all-gather", lambda n: (n - 1) / n),
    ("reduce-scatter", lambda n: (n - 1) / n),
    ("all-to-all", lambda n: (n - 1) / n),
    ("broadcast", lambda n: 1.0),
])
def test_ring_bytes_are_the_bus_bandwidth_factors(kind, factor):
    for n in (2, 3, 8, 1024):
        assert fb.collective_bytes(kind, 3 * GB, n) == pytest.approx(factor(n) * 3 * GB,
                                                                    rel=1e-15)
    assert fb.collective_bytes(kind, 3 * GB, 1) == 0          # alone, nothing to send


def test_ring_all_reduce_is_a_reduce_scatter_then_an_all_gather():
    n = np.arange(1, 100)
    np.testing.assert_array_equal(fb.collective_bytes("all-reduce", 1e6, n),
                                  fb.collective_bytes("reduce-scatter", 1e6, n)
                                  + fb.collective_bytes("all-gather", 1e6, n))
    np.testing.assert_array_equal(fb.collective_steps("all-reduce", n),
                                  2 * fb.collective_steps("all-gather", n))


def test_a_tree_changes_the_steps_not_the_bytes():
    n = np.array([1, 2, 3, 4, 5, 8, 1024])
    np.testing.assert_array_equal(fb.collective_steps("all-reduce", n, algorithm="tree"),
                                  [0, 2, 2, 4, 4, 6, 20])
    np.testing.assert_array_equal(fb.collective_steps("all-reduce", n)[-3:], [8, 14, 2046])
    ring = fb.collective_bytes("all-reduce", GB, n)
    tree = fb.collective_bytes("all-reduce", GB, n, algorithm="tree")
    np.testing.assert_array_equal(tree / GB, [0, 1, 1.5, 1.5, 2, 2, 2])
    assert (tree >= ring).all() and (tree[1:] / ring[1:] <= 1.5).all()
    with pytest.raises(ValueError, match="ring"):
        fb.collective_bytes("all-gather", GB, 8, algorithm="tree")


def test_alpha_beta_with_a_bare_bandwidth():
    # 1 GB all-reduce over 8 devices at 100 GB/s, 10 us per message: 14 steps + 1.75 GB.
    t = fb.collective_time("all-reduce", GB, 8, 100 * GB, latency=10e-6)
    assert t == pytest.approx(14 * 10e-6 + 2 * 7 / 8 * GB / (100 * GB), rel=1e-15)
    assert fb.collective_time("all-gather", GB, 8, "100 GB/s") == pytest.approx(
        7 / 8 * GB / (100 * GB))
    with pytest.raises(ValueError, match="hierarchical"):
        fb.collective_time("all-reduce", GB, 16, 100 * GB, hierarchical=True)


TOY = Hardware("toy", {"bf16": 1e15}, 80e9, 3e12, intra_node_bandwidth=400e9,
               inter_node_bandwidth=50e9, devices_per_node=8, intra_node_latency=2e-6,
               inter_node_latency=8e-6)


def test_the_link_follows_devices_per_node():
    inside = fb.collective_time("all-reduce", GB, 8, TOY)
    assert inside == pytest.approx(14 * 2e-6 + 1.75 * GB / 400e9, rel=1e-15)
    across = fb.collective_time("all-reduce", GB, 16, TOY)
    assert across == pytest.approx(30 * 8e-6 + 2 * 15 / 16 * GB / 50e9, rel=1e-15)
    both = fb.collective_time("all-reduce", GB, np.array([8, 16]), TOY)
    np.testing.assert_allclose(both, [inside, across], rtol=1e-15)


def test_hierarchical_all_reduce_by_hand():
    # 4 nodes of 8: reduce-scatter and all-gather in the node, all-reduce of 1/8 across nodes.
    t = fb.collective_time("all-reduce", GB, 32, TOY, hierarchical=True)
    inside = 2 * (7 * 2e-6 + 7 / 8 * GB / 400e9)
    across = 6 * 8e-6 + 2 * 3 / 4 * (GB / 8) / 50e9
    assert t == pytest.approx(inside + across, rel=1e-15)
    assert t < fb.collective_time("all-reduce", GB, 32, TOY)   # the flat ring crosses nodes
    gather = fb.collective_time("all-gather", GB, 32, TOY, hierarchical=True)
    assert gather == pytest.approx(7 * 2e-6 + 7 / 8 * GB / 400e9 + 3 * 8e-6
                                   + 3 / 4 * (GB / 8) / 50e9, rel=1e-15)
    with pytest.raises(ValueError, match="whole number of nodes"):
        fb.collective_time("all-reduce", GB, 12, TOY, hierarchical=True)
    with pytest.raises(ValueError, match="all-to-all"):
        fb.collective_time("all-to-all", GB, 16, TOY, hierarchical=True)


def test_unknown_links_are_refused_clearly():
    bare = Hardware("bare", {"bf16": 1e15}, 80e9, 3e12)
    with pytest.raises(ValueError, match="devices_per_node"):
        fb.collective_time("all-reduce", GB, 8, bare)
    with pytest.raises(ValueError, match="intra_node_bandwidth"):
        fb.dp_overlap_tokens(bare)


# --- data parallelism ---------------------------------------------------------------------

def test_zero_stages_by_hand():
    psi, n = 1_000_000, 8
    ring = 7 / 8 * psi
    z0 = fb.data_parallel_bytes(psi, n)
    assert (z0.gradients, z0.parameters, z0.total) == (2 * ring * 2, 0, 2 * ring * 2)
    z1 = fb.data_parallel_bytes(psi, n, zero_stage=1)
    assert (z1.gradients, z1.parameters) == (ring * 2, ring * 2)       # the same 2 Psi
    z3 = fb.data_parallel_bytes(psi, n, zero_stage=3)
    assert z3.total == 3 * ring * 2                                    # ZeRO's 3 Psi, 1.5x
    # Llama 3: fp32 gradients, bf16 parameters.
    mixed = fb.data_parallel_bytes(psi, n, zero_stage=3, bytes_per_value=4,
                                   param_bytes_per_value=2)
    assert (mixed.gradients, mixed.parameters) == (ring * 4, 2 * ring * 2)


def test_gradient_accumulation_multiplies_only_what_cannot_accumulate():
    psi, n, k = 1_000_000, 8, 4
    one = {z: fb.data_parallel_bytes(psi, n, zero_stage=z) for z in range(4)}
    acc = {z: fb.data_parallel_bytes(psi, n, zero_stage=z, micro_batches=k) for z in range(4)}
    assert acc[0].total == one[0].total and acc[1].total == one[1].total
    assert acc[2].gradients == k * one[2].gradients and acc[2].parameters == one[2].parameters
    assert acc[3].total == k * one[3].total


def test_uneven_shards_are_padded():
    # 10 values over 4 devices: padded to 12, shards of 3; a ring sends 3 of them.
    assert fb.data_parallel_bytes(10, 4, bytes_per_value=1).total == 2 * 3 * 3
    assert fb.data_parallel_bytes(12, 4, bytes_per_value=1).total == 2 * 3 * 3


def test_a_model_is_all_its_parameters():
    n = fb.param_count("mixtral-8x7b")                 # every expert's gradient travels
    assert fb.data_parallel_bytes("mixtral-8x7b", 2).total == 2 * n * 2 / 2


def test_overlap_threshold_is_peak_over_bandwidth():
    # 4 N T / C >= 2 N b / W  =>  T >= (C / W)(b / 2).
    assert fb.dp_overlap_tokens(989e12, 450e9) == pytest.approx(989e12 / 450e9, rel=1e-15)
    assert fb.dp_overlap_tokens(989e12, 450e9, bytes_per_value=4) == pytest.approx(
        2 * 989e12 / 450e9, rel=1e-15)
    assert fb.dp_overlap_tokens(989e12, 450e9, n_devices=8) == pytest.approx(
        7 / 8 * 989e12 / 450e9, rel=1e-15)
    assert fb.dp_overlap_tokens(TOY, link="node") == pytest.approx(1e15 / 400e9)
    assert fb.dp_overlap_tokens(TOY, link="inter") == pytest.approx(1e15 / 50e9)
    with pytest.raises(ValueError, match="bandwidth"):
        fb.dp_overlap_tokens(989e12)


@pytest.mark.parametrize("call, word", [
    (lambda: fb.collective_bytes("allreduce", 1, 2), "kind"),
    (lambda: fb.collective_bytes("all-reduce", 1, 2, algorithm="rings"), "algorithm"),
    (lambda: fb.collective_bytes("all-reduce", -1, 2), "n_bytes"),
    (lambda: fb.collective_bytes("all-reduce", 1, 0), "n_devices"),
    (lambda: fb.collective_time("all-reduce", 1, 2, 0), "hardware_or_bandwidth"),
    (lambda: fb.collective_time("all-reduce", 1, 2, 1e9, latency=-1), "latency"),
    (lambda: fb.data_parallel_bytes(1e9, 8, zero_stage=4), "zero_stage"),
    (lambda: fb.data_parallel_bytes(1e9, 8, micro_batches=0), "micro_batches"),
    (lambda: fb.dp_overlap_tokens(1e15, 1e9, link="nvlink"), "link"),
])
def test_bad_input_names_the_argument(call, word):
    with pytest.raises(ValueError, match=word):
        call()


# --- the registry's links -------------------------------------------------------------------

def test_every_link_figure_cites_bib_keys():
    import re
    from pathlib import Path

    bib = set(re.findall(r"@\w+\{([^,]+),", (Path(__file__).parents[1] / "book"
                                            / "references.bib").read_text()))
    for name in fb.hardwares():
        h = fb.hardware(name)
        if h.intra_node_bandwidth is not None:
            keys = h.link_source.split()
            assert keys and set(keys) <= bib, name


@pytest.mark.parametrize("name, both_ways", [
    # Datasheets add both directions: V100 "300 GB/s", A100 "600 GB/s", H100 and H200 "900 GB/s".
    ("v100", 300e9), ("a100-80gb", 600e9), ("h100-sxm", 900e9), ("h200", 900e9),
    # The scaling book's TPU v5p ICI link: 9e10 one way, 1.8e11 both.
    ("tpu-v5p", 1.8e11),
])
def test_link_bandwidths_are_one_direction(name, both_ways):
    assert fb.hardware(name).intra_node_bandwidth == both_ways / 2


def test_the_scaling_books_per_device_batches():
    # Austin et al. (2025): TPU v5p "C=4.6e14 and W=2 * 9e10 ... at least 2,550"; H100
    # "990e12 / 450e9 = 2200" in a node and "990e12 / 400e9 = 2475" across nodes.
    v5p = fb.hardware("tpu-v5p")
    assert round(fb.dp_overlap_tokens(v5p, 2 * v5p.intra_node_bandwidth)) == 2550
    h100 = fb.hardware("h100-sxm")
    assert round(fb.dp_overlap_tokens(990e12, h100.intra_node_bandwidth)) == 2200
    assert round(fb.dp_overlap_tokens(990e12, 8 * h100.inter_node_bandwidth)) == 2475
    # With the registry's 989.4 TFLOP/s and the node's whole egress ("node"):
    assert fb.dp_overlap_tokens(h100, link="node") == pytest.approx(989.4e12 / 400e9)
    # One GPU's own card is 8x slower than the node's egress.
    assert fb.dp_overlap_tokens(h100, link="inter") == 8 * fb.dp_overlap_tokens(h100, link="node")


def test_several_rings_leave_the_node_through_several_cards():
    one = fb.collective_time("all-reduce", GB, 16, TOY)
    eight = fb.collective_time("all-reduce", GB, 16, TOY, rings=8)
    sent = 2 * 15 / 16 * GB
    assert one == pytest.approx(30 * 8e-6 + sent / 50e9, rel=1e-15)
    # 8 cards of 50 GB/s = 400 GB/s, the same as NVLink here: the slower of the two governs.
    assert eight == pytest.approx(30 * 8e-6 + sent / 400e9, rel=1e-15)
    four = fb.collective_time("all-reduce", GB, 16, TOY, rings=4)
    assert four == pytest.approx(30 * 8e-6 + sent / 200e9, rel=1e-15)
    # Inside a node the rings change nothing.
    assert fb.collective_time("all-reduce", GB, 8, TOY, rings=8) == \
        fb.collective_time("all-reduce", GB, 8, TOY)
    with pytest.raises(ValueError, match="rings"):
        fb.collective_time("all-reduce", GB, 16, TOY, rings=9)
    with pytest.raises(ValueError, match="rings"):
        fb.collective_time("all-reduce", GB, 16, TOY, rings=2, hierarchical=True)
    with pytest.raises(ValueError, match="rings"):
        fb.collective_time("all-reduce", GB, 16, 50e9, rings=8)


def test_across_nodes_every_byte_still_crosses_the_intra_node_link():
    # link="node": the network leg at the node's egress, but never faster than NVLink/ICI.
    assert fb.dp_overlap_tokens("h800", link="node") == fb.dp_overlap_tokens("h800")
    assert fb.dp_overlap_tokens("tpu-v5p", link="node") == fb.dp_overlap_tokens("tpu-v5p")
    assert fb.dp_overlap_tokens("h100-sxm", link="node") > fb.dp_overlap_tokens("h100-sxm")  # 400 < 450


@pytest.mark.parametrize("call, names", [
    (lambda: fb.collective_time("all-reduce", "1GB", 2, "h100"), "h100-sxm"),
    (lambda: fb.dp_overlap_tokens("h100", link="inter"), "h100-sxm"),
    (lambda: fb.data_parallel_bytes("llama3-70", 8), "llama3-70b"),
    (lambda: fb.decode_step_time("mistral-7b", "h100", 1, 10), "Closest: h100-sxm"),
])
def test_a_misspelt_name_is_told_the_closest_names(call, names):
    with pytest.raises(ValueError, match=names):
        call()


def test_a_missing_latency_says_to_pass_one():
    with pytest.raises(ValueError, match="pass latency="):
        fb.collective_time("all-reduce", GB, 2 * 8960, "tpu-v5p")
    assert fb.collective_time("all-reduce", GB, 2 * 8960, "tpu-v5p", latency=1e-5) > 0
