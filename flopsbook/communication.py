"""Communication between devices: collectives, the alpha-beta model and data parallelism.

Derived in the chapter "Many devices I: collectives, the alpha-beta model and data parallelism"
(``notebooks/collectives``) and held against two independent checks: a counted simulation of
devices exchanging numpy shards
(``flopsbook.reference.collectives``) and the collectives that a real SPMD compiler (JAX/XLA on
host CPU devices) emits. Conventions: ``n_bytes`` is the full buffer of the collective (an
all-reduce's input on each device, an all-gather's output, a reduce-scatter's input, an
all-to-all's input on each device, a broadcast's buffer); bytes "sent" are what one device puts
on its links, the maximum over devices where they differ; bandwidths are bytes/s in ONE
direction per device (a ring sends and receives at once, each at that rate); times are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._validate import as_array, as_bool, as_hardware, choice, formula, result
from .memory import _zero_stage

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast")
ALGORITHMS = ("ring", "tree")
# NCCL's trees serve all-reduce (its other collectives are rings); one tree from each end cannot
# broadcast from a single root, so broadcast is a ring (a pipelined chain) here.
_TREE_KINDS = ("all-reduce",)
LINKS = ("intra", "inter", "node")


def _kind_and_algorithm(kind, algorithm):
    choice("kind", kind, COLLECTIVES)
    choice("algorithm", algorithm, ALGORITHMS)
    if algorithm == "tree" and kind not in _TREE_KINDS:
        raise ValueError(f"algorithm='tree' is modelled for {' and '.join(_TREE_KINDS)} only "
                         f"(NCCL runs {kind} as a ring); allowed for {kind}: 'ring'")


def _sent_fraction(kind, algorithm, n):
    """Bytes each device sends, as a multiple of the full buffer."""
    if algorithm == "tree":
        # A double binary tree (NCCL's idea; NCCL's trees.cc builds in-order trees of a slightly
        # different shape): half the buffer over a heap-ordered binary tree of the ranks 0..n-1,
        # half over the same tree of the ranks in reverse, so that a rank is an inner node of at
        # most one. Each half is reduced up (every rank but a root sends it
        # once) and broadcast down (an inner node sends it to each child). The busiest rank,
        # an inner node with two children and a parent in one tree and a leaf in the other,
        # sends (1 + 2 + 1)/2 = 2 buffers once n >= 5; 1.5 for n = 3, 4; 1 for n = 2.
        return np.select([n >= 5, n >= 3, n == 2], [2.0, 1.5, 1.0], 0.0)
    if kind == "all-reduce":       # reduce-scatter then all-gather, n - 1 chunks of 1/n each
        return 2 * (n - 1) / n
    if kind == "broadcast":        # a pipelined chain: every device but the last forwards it
        return np.where(n > 1, 1.0, 0.0)
    return (n - 1) / n             # all-gather, reduce-scatter, all-to-all: n - 1 chunks


@formula
def collective_bytes(kind, n_bytes, n_devices, *, algorithm="ring"):
    """Bytes each device sends in one collective over ``n_devices`` (the maximum over devices).

    A ring splits the buffer into n chunks and passes them n - 1 times round the ring:
    all-gather, reduce-scatter and all-to-all send (n - 1)/n of the buffer from every device,
    all-reduce (a reduce-scatter then an all-gather) 2(n - 1)/n, and a pipelined broadcast the
    whole buffer from every device but the last. ``algorithm="tree"`` (all-reduce only: a
    double binary tree as NCCL uses, here heap-ordered: half the buffer over a binary tree of the
    ranks and half over the same tree of the ranks reversed; NCCL's own in-order trees differ in
    shape, by a step or half a buffer at some n) sends about as much, 2 buffers from the busiest
    rank once n >= 5 (1.5 for n = 3 or 4, 1 for n = 2), in 2 floor(log2 n) steps instead of
    2(n - 1): a tree changes the latency term, not the bandwidth term. The ZeRO paper's
    "2 Psi" per all-reduce is the ring's large-n limit. Broadcasts over ``n_bytes`` and
    ``n_devices``.

    Args:
        kind (str): ``"all-reduce"``, ``"all-gather"``, ``"reduce-scatter"``, ``"all-to-all"``
            or ``"broadcast"``.
        n_bytes (float | str | array-like): The full buffer, bytes, >= 0 (an all-reduce's input
            on each device, an all-gather's output, a reduce-scatter's input, an all-to-all's
            input on each device), or one text size such as ``"1GB"``.
        n_devices (int | str | array-like): Devices taking part, a whole number > 0.

    Keyword Args:
        algorithm (str): ``"ring"`` (the default) or ``"tree"`` (all-reduce).

    Returns:
        float | numpy.ndarray: Bytes sent by one device: a float, or an array when an argument
        is one.

    Raises:
        ValueError: If ``kind`` or ``algorithm`` is not one of its values (or ``"tree"`` for a
            kind without one), or a size is not valid; the message names the argument.
    """
    _kind_and_algorithm(kind, algorithm)
    b = as_array("n_bytes", n_bytes, allow_zero=True, kind="bytes")
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    return result(_sent_fraction(kind, algorithm, n) * b)


@formula
def collective_steps(kind, n_devices, *, algorithm="ring"):
    """Sequential message steps of one collective: the number of latencies (alpha) it pays.

    Ring: all-reduce 2(n - 1), the others n - 1 (all-to-all as n - 1 pairwise exchanges, a
    broadcast as a chain of n - 1 hops). Tree (all-reduce): up and down the heap-ordered trees,
    2 floor(log2 n), both trees at once. One device: 0.

    Args:
        kind (str): One of ``COLLECTIVES`` (as :func:`collective_bytes`).
        n_devices (int | str | array-like): Devices taking part, a whole number > 0.

    Keyword Args:
        algorithm (str): ``"ring"`` (the default) or ``"tree"``.

    Returns:
        float | numpy.ndarray: The number of steps.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    _kind_and_algorithm(kind, algorithm)
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    if algorithm == "tree":  # the depth of heap position n - 1, up then down
        return result(2 * np.floor(np.log2(n)))
    return result(2 * (n - 1) if kind == "all-reduce" else n - 1)


def _link(hw, name, which, argument="hardware_or_bandwidth"):
    value = getattr(hw, f"{which}_node_{name}")
    if value is None:
        fix = ("pass latency= (seconds per message)" if name == "latency"
               else "pass bandwidth= (bytes/s, one direction)")
        raise ValueError(f"{argument}: {hw.name} has no {which}_node_{name} in the "
                         f"registry (unknown); {fix}")
    return value


def _link_bandwidth(hardware_or_peak, bandwidth, link):
    """One-direction bytes/s of ``link`` (``LINKS``) of a ``Hardware``, or ``bandwidth`` given.

    ``"node"`` is across nodes with every card of the node at work: the network leg runs at
    ``devices_per_node`` times one card's share, but every byte still crosses the intra-node
    link, so the smaller of the two.
    """
    choice("link", link, LINKS)
    hw = _registry_hardware(hardware_or_peak, "hardware_or_peak")
    if hw is None or bandwidth is not None:
        if bandwidth is None:
            raise ValueError("bandwidth is needed (bytes/s, one direction) when "
                             "hardware_or_peak is a number")
        return as_array("bandwidth", bandwidth, kind="rate")
    if link == "intra":
        return _link(hw, "bandwidth", "intra", "hardware_or_peak")
    w = _link(hw, "bandwidth", "inter", "hardware_or_peak")
    if link == "node":
        if hw.devices_per_node is None:
            raise ValueError(f"hardware_or_peak: {hw.name} has no devices_per_node")
        w = min(w * hw.devices_per_node, _link(hw, "bandwidth", "intra", "hardware_or_peak"))
    return w


def _registry_hardware(value, name):
    """``value`` as a :class:`Hardware` if it is one or names one, else None (a number or text
    that the caller reads as a quantity; a misspelt name is told its closest names there)."""
    from .registry import _HARDWARE, Hardware

    if isinstance(value, Hardware) or (isinstance(value, str) and value.strip() in _HARDWARE):
        return as_hardware(value.strip() if isinstance(value, str) else value, name)
    return None


def _alpha_beta(kind, n_bytes, n, bandwidth, latency, algorithm):
    return collective_steps(kind, n, algorithm=algorithm) * latency \
        + collective_bytes(kind, n_bytes, n, algorithm=algorithm) / bandwidth


@formula
def collective_time(kind, n_bytes, n_devices, hardware_or_bandwidth, *, latency=None,
                    algorithm="ring", hierarchical=False, rings=1):
    """Seconds of one collective by the alpha-beta model: alpha * steps + bytes sent / beta.

    beta is the one-direction bandwidth of one device, alpha the time per message. For a ring
    each step moves one chunk, so this is exact; for the chain broadcast and the tree it is the
    pipelining limit (the buffer cut into many small pieces that follow each other), a lower
    bound: unpipelined, every hop pays the whole piece, (n - 1)(alpha + B/beta) for a chain.
    Given a
    :class:`Hardware` (or its name), a flat collective over at most ``devices_per_node`` devices
    uses the intra-node link and one that spans nodes the inter-node link: one ring is as fast
    as its slowest hop, one device's network card. ``rings=r`` runs r rings at once (NCCL's
    channels), each carrying 1/r of the buffer and leaving the node through its own card: the
    network leg then moves the bytes over r cards, while every byte still crosses each device's
    intra-node link, so the time is alpha * steps + max(bytes / beta_intra,
    bytes / (r * beta_inter)); with r = ``devices_per_node`` the network leg runs at the node's
    whole egress, the figure the JAX scaling book uses across nodes. ``hierarchical=True`` spans nodes in three phases (NCCL's and
    Megatron's layout): a reduce-scatter inside each node over the fast link, an all-reduce of
    the 1/p shards across nodes (one ring per local rank, all at once), an all-gather inside
    each node; all-gather and reduce-scatter alone use their two phases. ``n_devices`` must then
    be a whole number of nodes. Broadcasts over ``n_bytes`` and ``n_devices``.

    Args:
        kind (str): One of ``COLLECTIVES`` (as :func:`collective_bytes`).
        n_bytes (float | str | array-like): The full buffer, bytes, >= 0 (as
            :func:`collective_bytes`), or one text size such as ``"700MB"``.
        n_devices (int | str | array-like): Devices taking part, a whole number > 0.
        hardware_or_bandwidth (Hardware | str | float | array-like): A ``Hardware`` or registry
            name (its link fields), or a one-direction bandwidth in bytes/s (or text such as
            ``"450 GB/s"``).

    Keyword Args:
        latency (float | None): alpha, seconds per message, >= 0. None (the default) takes the
            hardware's latency of the link used, or 0 with a bare bandwidth (pure bandwidth
            term).
        algorithm (str): ``"ring"`` (the default) or ``"tree"`` (all-reduce).
        hierarchical (bool): In-node then across-node phases (all-reduce, all-gather,
            reduce-scatter; needs a ``Hardware``). Default False.
        rings (int | array-like): Rings run at once across nodes, each through its own network
            card: 1 (the default) to ``devices_per_node`` (needs a ``Hardware``; flat rings
            only).

    Returns:
        float | numpy.ndarray: Seconds.

    Raises:
        ValueError: If an argument is not valid, the hardware lacks a link figure that is
            needed, or ``hierarchical`` is asked without a ``Hardware`` or for an unmodelled
            kind, or over a number of devices that is not a whole number of nodes; the message
            names the argument.
    """
    _kind_and_algorithm(kind, algorithm)
    b = as_array("n_bytes", n_bytes, allow_zero=True, kind="bytes")
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    hierarchical = as_bool("hierarchical", hierarchical)
    alpha = None if latency is None else as_array("latency", latency, allow_zero=True)
    r = as_array("rings", rings, integer=True, kind="count")
    hw = _registry_hardware(hardware_or_bandwidth, "hardware_or_bandwidth")
    if hw is None:  # a bare bandwidth: one link, no nodes
        bw = as_array("hardware_or_bandwidth", hardware_or_bandwidth, kind="rate")
        if hierarchical or (r != 1).any():
            raise ValueError("hierarchical and rings need hardware_or_bandwidth to be a "
                             "Hardware (or its name): the in-node and across-node links differ")
        return result(_alpha_beta(kind, b, n, bw, 0.0 if alpha is None else alpha, algorithm))
    p = hw.devices_per_node
    if p is None:
        raise ValueError(f"hardware_or_bandwidth: {hw.name} has no devices_per_node in the "
                         "registry; pass a bandwidth instead")
    if (r > p).any():
        raise ValueError(f"rings must be at most devices_per_node={p} of {hw.name} (one network "
                         f"card per ring), got {float(r.max()):g}")
    if not hierarchical:
        inside = n <= p
        intra = _link(hw, "bandwidth", "intra") if inside.any() else np.inf
        if (~inside).any():
            inter = _link(hw, "bandwidth", "inter")
            if (r > 1).any() and algorithm != "ring":
                raise ValueError("rings > 1 is modelled for rings (algorithm='ring')")
            # r rings leave the node through r cards; every byte still crosses NVLink.
            across = 1.0 / np.maximum(1.0 / intra, 1.0 / (r * inter))
        else:
            across = 1.0
        bw = np.where(inside, intra, across)
        lat = alpha if alpha is not None else np.where(
            inside, _link(hw, "latency", "intra") if inside.any() else 0.0,
            _link(hw, "latency", "inter") if (~inside).any() else 0.0)
        return result(_alpha_beta(kind, b, n, bw, lat, algorithm))
    if (r != 1).any():
        raise ValueError("rings applies to flat rings; hierarchical=True already uses every "
                         "card of a node (one ring per local rank)")
    if kind not in ("all-reduce", "all-gather", "reduce-scatter"):
        raise ValueError(f"hierarchical=True is modelled for all-reduce, all-gather and "
                         f"reduce-scatter; got kind={kind!r}")
    if algorithm != "ring":
        raise ValueError("hierarchical=True composes rings; allowed algorithm: 'ring'")
    if (n % p != 0).any():
        raise ValueError(f"n_devices must be a whole number of nodes of {p} devices for "
                         f"hierarchical=True, got {n if n.ndim else float(n):g}")
    g = n // p
    bw_in, bw_out = _link(hw, "bandwidth", "intra"), _link(hw, "bandwidth", "inter")
    a_in = _link(hw, "latency", "intra") if alpha is None else alpha
    a_out = _link(hw, "latency", "inter") if alpha is None else alpha
    if kind == "all-reduce":
        inside = 2 * _alpha_beta("reduce-scatter", b, p, bw_in, a_in, "ring")
        across = _alpha_beta("all-reduce", b / p, g, bw_out, a_out, "ring")
    else:  # the shards cross nodes, then the node completes (or starts) the whole buffer
        inside = _alpha_beta(kind, b, p, bw_in, a_in, "ring")
        across = _alpha_beta(kind, b / p, g, bw_out, a_out, "ring")
    return result(inside + across)


# --- data parallelism ----------------------------------------------------------------------

@dataclass(frozen=True)
class DataParallelBytes:
    """Bytes one device sends per optimizer step of data parallelism (see
    :func:`~flopsbook.data_parallel_bytes`).

    Attributes:
        gradients (float | numpy.ndarray): Gradient traffic: the all-reduce (stages 0 and 1
            accumulate locally and communicate once), or the reduce-scatters (stage 1 once; 2
            and 3 once per micro-batch).
        parameters (float | numpy.ndarray): Parameter traffic: stages 1 and 2 all-gather the
            updated parameters once; stage 3 all-gathers every layer in the forward and again
            in the backward of every micro-batch.
        total (float | numpy.ndarray): ``gradients + parameters``.
    """

    gradients: object
    parameters: object
    total: object


@formula
def data_parallel_bytes(m_or_n_params, n_devices, *, zero_stage=0, bytes_per_value=2,
                        param_bytes_per_value=None, micro_batches=1):
    """Bytes each device sends per optimizer step of data parallelism over ``n_devices``.

    Ring collectives over Psi parameters, sharded in n equal pieces (Psi is padded up to a
    multiple of n, as ZeRO and FSDP pad their flat buffers; the padding is sent too):

    - stage 0 (plain data parallelism): one all-reduce of the gradients, 2(n - 1)/n Psi values;
    - stage 1 (optimizer states sharded): a reduce-scatter of the gradients and an all-gather
      of the updated parameters, (n - 1)/n Psi each: the same 2(n - 1)/n Psi;
    - stage 2 (and gradients sharded): the same, but with ``micro_batches`` > 1 the gradients
      are reduce-scattered after every micro-batch (a device no longer holds the whole gradient
      to accumulate in);
    - stage 3 (and parameters sharded; FSDP): every micro-batch all-gathers the parameters in
      the forward and again in the backward and reduce-scatters the gradients: 3(n - 1)/n Psi
      per micro-batch, the ZeRO paper's 3 Psi at large n.

    Gradients and parameters may travel at different sizes (Llama 3 reduce-scatters fp32
    gradients while gathering bf16 parameters). Broadcasts over the numeric arguments.

    Args:
        m_or_n_params (Transformer | str | float | array-like): A model or registry name (all
            its parameters: every expert of a mixture), or a parameter count Psi > 0 (text such
            as ``"70B"`` is read).
        n_devices (int | str | array-like): Data-parallel devices n, a whole number > 0.

    Keyword Args:
        zero_stage (int): 0, 1, 2 or 3. Default 0.
        bytes_per_value (float | array-like): Bytes per gradient value, > 0. Default 2.
        param_bytes_per_value (float | array-like | None): Bytes per communicated parameter,
            > 0; None (the default) is ``bytes_per_value``.
        micro_batches (int | array-like): Micro-batches accumulated per optimizer step, a whole
            number > 0. Default 1.

    Returns:
        DataParallelBytes: ``gradients``, ``parameters`` and ``total`` bytes sent by one device
        per optimizer step.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    psi = as_array("m_or_n_params", m_or_n_params, kind="params")
    n = as_array("n_devices", n_devices, integer=True, kind="count")
    stage = _zero_stage(zero_stage)
    g = as_array("bytes_per_value", bytes_per_value)
    p = g if param_bytes_per_value is None else as_array("param_bytes_per_value",
                                                         param_bytes_per_value)
    k = as_array("micro_batches", micro_batches, integer=True, kind="count")
    padded = np.ceil(psi / n) * n
    chunks = (n - 1) / n * padded            # values one device sends in one ring pass
    if stage == 0:
        grads, params = 2 * chunks * g, 0 * chunks
    elif stage == 1:
        grads, params = chunks * g, chunks * p
    elif stage == 2:
        grads, params = k * chunks * g, chunks * p
    else:
        grads, params = k * chunks * g, 2 * k * chunks * p
    grads, params = np.broadcast_arrays(grads, params)
    return DataParallelBytes(result(grads), result(params), result(grads + params))


@formula
def dp_overlap_tokens(hardware_or_peak, bandwidth=None, *, link="intra", bytes_per_value=2,
                      n_devices=None, dtype=None):
    """Tokens per device per step above which data parallelism's traffic hides behind compute.

    Per token a device's backward pass does 4 N FLOPs (gradients with respect to inputs and to
    weights, 2 N each), while the ring all-reduce sends 2(n - 1)/n N gradient values whatever
    the batch: compute at peak C covers the transfer at one-direction bandwidth W when
    4 N T / C >= 2 (n - 1)/n N b / W, i.e. T >= (C / W) (b / 2) (n - 1)/n, which for 16-bit
    gradients and large n is C / W, the "per-device batch" of the JAX scaling book. The same
    threshold holds for ZeRO-3/FSDP's per-layer gathers (a layer's forward does 2 N_l per token
    and gathers (n - 1)/n N_l values; its backward does 4 N_l and gathers and reduce-scatters
    twice as much). Multiply by the devices for the global batch. ``link`` picks W from a
    ``Hardware``: ``"intra"`` (NVLink, ICI), ``"inter"`` (one ring through one device's network
    card) or ``"node"`` (across nodes with every card of the node at work, hierarchically or
    with one ring per card: the network leg runs at ``devices_per_node`` times the share, but
    every byte still crosses the intra-node link, so W is the smaller of the two; for an H100
    the node's 400 GB/s egress, the scaling book's "across nodes" figure). Broadcasts over
    arrays.

    Args:
        hardware_or_peak (Hardware | str | float | array-like): A ``Hardware`` or name (its
            ``peak_16bit``, or ``peak(dtype)``, and its link), or a peak in FLOP/s.
        bandwidth (float | str | array-like | None): One-direction bytes/s; needed with a
            numeric peak; with a ``Hardware`` it replaces the link's figure (None, the default,
            takes the link's).

    Keyword Args:
        link (str): ``"intra"`` (the default), ``"inter"`` or ``"node"``.
        bytes_per_value (float | array-like): Bytes per gradient value, > 0. Default 2.
        n_devices (int | array-like | None): Data-parallel devices n for the exact ring factor
            (n - 1)/n; None (the default) is the large-n limit.
        dtype (str | None): With a ``Hardware``, the dtype whose peak is taken.

    Returns:
        float | numpy.ndarray: Tokens per device per step (a real number).

    Raises:
        ValueError: If an argument is not valid or the hardware lacks the link; the message
            names the argument.
    """
    from ._validate import as_peak

    choice("link", link, LINKS)
    peak = as_peak("hardware_or_peak", hardware_or_peak, dtype)
    w = _link_bandwidth(hardware_or_peak, bandwidth, link)
    b = as_array("bytes_per_value", bytes_per_value)
    ring = 1.0
    if n_devices is not None:  # the exact ring factor; None is the large-n limit
        n = as_array("n_devices", n_devices, integer=True, kind="count")
        ring = (n - 1) / n
    return result(peak / w * b / 2 * ring)
