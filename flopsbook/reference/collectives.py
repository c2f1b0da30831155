"""Collectives by explicit sends between simulated devices, every message counted.

The communication formulas (``flopsbook.collective_bytes``, ``collective_steps``,
``data_parallel_bytes``) are derived from how the algorithms move data; this module moves the
data and counts, so the tests can hold the two against each other. Like the rest of
``flopsbook.reference`` it imports no formula module (only numpy): a device is a slot in a
list of numpy arrays, and the only way an array gets from one device to another is
:meth:`_Wire.send`, which copies it and records a :class:`Message`.

Conventions (the formulas' own; see ``flopsbook.communication``):

- A collective over n devices takes one array per device (``buffers``) and returns a
  :class:`Collective`: the arrays each device ends with (``outputs``) and the messages
  (``messages``), each with its 0-based ``step``. All messages of one step travel at once;
  a device may send one message and receive one in a ring step, or send to both its children
  in a tree step. ``n_steps`` is the number of steps (the latencies paid).
- **Padding.** A ring cuts its buffer (flattened, C order) into n equal chunks, so a buffer of
  L values is padded with zeros to ``ceil(L / n) * n`` values (as ZeRO and FSDP pad their flat
  buffers, and as ``data_parallel_bytes`` counts); the padding travels, so bytes sent are
  ``collective_bytes(kind, padded_bytes, n)``. The tree all-reduce pads to a multiple of 2 (two
  halves), a broadcast cut into ``chunks`` pieces to a multiple of ``chunks``. Outputs drop the
  padding where the result is a whole buffer (all-reduce, all-gather, broadcast) and keep it
  where it is a shard (reduce-scatter's output and all-to-all's pieces are padded chunks).
- Bytes are ``array.nbytes`` of what is sent. :meth:`Collective.bytes_sent` gives each device's
  total; the formulas quote the maximum over devices (:attr:`Collective.max_bytes_sent`).

Algorithms:

- **Ring all-reduce**: a reduce-scatter phase (n - 1 steps: in step t device i sends its partial
  sum of chunk (i - 1 - t) mod n to device i + 1, which adds its own) and an all-gather phase
  (n - 1 steps: device i forwards the finished chunk (i - t) mod n). Every device sends
  2(n - 1) chunks of L/n.
- **Ring reduce-scatter** and **ring all-gather**: one of those phases each; device i ends with
  chunk i of the sum (reduce-scatter), or every device with all n shards (all-gather).
- **All-to-all**: n - 1 pairwise steps; in step t device i sends the chunk it holds for device
  (i + t + 1) mod n straight to it (device j's output is the j-th chunk of every device, in
  device order).
- **Broadcast**: a chain from ``root`` through root + 1, root + 2, ... (mod n). Unchunked
  (``chunks=1``, the default and the formula's case) the whole buffer hops n - 1 times in
  n - 1 steps; pipelined in k chunks it takes n - 2 + k steps of B/k. Either way every device
  but the last sends the whole buffer once.
- **Tree all-reduce** (``algorithm="tree"``): the double binary tree of
  ``flopsbook.collective_bytes``: half the buffer over a heap-ordered binary tree of the ranks
  (rank r at position r, parent of position p at (p - 1) // 2), half over the same tree of the
  ranks reversed (rank r at position n - 1 - r), so that no rank is an inner node of both.
  Each half is reduced up level by level (floor(log2 n) steps, every rank but the root sends
  its partial sum once) and broadcast down (floor(log2 n) steps, an inner node sends the sum to
  each child). NCCL's own trees (``src/graph/trees.cc``: an in-order tree whose root has one
  child, mirrored or shifted by one) are a different shape, not modelled here.

:func:`data_parallel_step` runs one optimizer step of data parallelism (ZeRO stage 0 to 3) of a
reference model over simulated devices with these collectives.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "broadcast")
ALGORITHMS = ("ring", "tree")


class Message(NamedTuple):
    """One array sent from one device to another.

    Attributes:
        step (int): The step of its collective, from 0 (messages of a step travel at once).
        sender (int): The device that sends it.
        receiver (int): The device that receives it.
        n_bytes (int): Its size in bytes (padding included).
        what (str): What it carries, e.g. ``"chunk 2 (partial sum)"``.
        chunk (int): The chunk (ring, all-to-all, broadcast) or half (tree) it carries; -1 for
            none. For colouring arrows by what they carry.
    """

    step: int
    sender: int
    receiver: int
    n_bytes: int
    what: str
    chunk: int = -1


class Collective(NamedTuple):
    """One collective's result and its message log.

    Attributes:
        kind (str): One of ``KINDS``.
        algorithm (str): ``"ring"`` (ring, pairwise exchange, chain) or ``"tree"``.
        n_devices (int): Devices taking part.
        n_bytes (int): The full buffer (as ``collective_bytes`` counts it) before padding.
        padded_bytes (int): The full buffer after padding: what the bytes sent are counted on.
        outputs (tuple[numpy.ndarray, ...]): What each device holds at the end.
        messages (tuple[Message, ...]): Every message, in step order.
        label (str): Free text set by a caller (e.g. ``"gradients"`` in a training step).
    """

    kind: str
    algorithm: str
    n_devices: int
    n_bytes: int
    padded_bytes: int
    outputs: tuple
    messages: tuple
    label: str = ""

    @property
    def n_steps(self) -> int:
        """Steps taken: the number of latencies an alpha-beta model charges."""
        return 1 + max(msg.step for msg in self.messages) if self.messages else 0

    def bytes_sent(self) -> np.ndarray:
        """Bytes each device sent, an int64 array of length ``n_devices``."""
        return _bytes_by_device(self.messages, self.n_devices, "sender")

    def bytes_received(self) -> np.ndarray:
        """Bytes each device received, an int64 array of length ``n_devices``."""
        return _bytes_by_device(self.messages, self.n_devices, "receiver")

    @property
    def max_bytes_sent(self) -> int:
        """The busiest device's bytes sent: what ``collective_bytes`` gives."""
        return int(self.bytes_sent().max(initial=0))

    def step_time(self, latency, bandwidth) -> float:
        """Seconds if each step costs ``latency`` plus its busiest sender's bytes / bandwidth.

        Steps run one after another and a device sends at ``bandwidth`` bytes/s (a tree node
        sending to two children in one step sends both at that rate). For a ring every step
        moves one chunk per device, so this is the alpha-beta model's steps * alpha +
        bytes / beta; a chain or a tree that is not pipelined sends its whole piece at every
        step, and takes longer than that.
        """
        per_step = np.zeros(self.n_steps)
        sent = np.zeros((self.n_steps, self.n_devices))
        for msg in self.messages:
            sent[msg.step, msg.sender] += msg.n_bytes
        if self.n_steps:
            per_step = sent.max(axis=1)
        return float(self.n_steps * latency + per_step.sum() / bandwidth)

    def arrows(self) -> list[list[tuple[int, int]]]:
        """For each step, the (sender, receiver) pairs of its messages: what a figure draws."""
        out = [[] for _ in range(self.n_steps)]
        for msg in self.messages:
            out[msg.step].append((msg.sender, msg.receiver))
        return out


def _bytes_by_device(messages, n, field):
    total = np.zeros(n, dtype=np.int64)
    for msg in messages:
        total[getattr(msg, field)] += msg.n_bytes
    return total


class _Wire:
    """The only path between devices: copies an array and records the message."""

    def __init__(self, n_devices):
        self.n = n_devices
        self.messages = []

    def send(self, step, sender, receiver, array, what, chunk=-1):
        if sender == receiver or not (0 <= sender < self.n and 0 <= receiver < self.n):
            raise AssertionError(f"bad message {sender} -> {receiver}")  # a bug here, not input
        self.messages.append(Message(step, sender, receiver, int(array.nbytes), what, chunk))
        return array.copy()  # the receiver's own copy: nothing is shared between devices


# -- input checks ----------------------------------------------------------------------------

def _count(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _numeric(name, value):
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return arr


def _buffers(buffers, name="buffers"):
    """One numeric array per device, all of one shape and dtype."""
    if isinstance(buffers, np.ndarray) or not hasattr(buffers, "__len__") or len(buffers) == 0:
        raise ValueError(f"{name} must be a non-empty list with one array per device, "
                         f"got {type(buffers).__name__}")
    arrays = [_numeric(f"{name}[{i}]", b) for i, b in enumerate(buffers)]
    first = arrays[0]
    for i, arr in enumerate(arrays[1:], 1):
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise ValueError(f"{name}: every device's array must have the shape and dtype of "
                             f"device 0's {first.shape} {first.dtype}; device {i} has "
                             f"{arr.shape} {arr.dtype}")
    return arrays


def _algorithm(kind, algorithm):
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "tree" and kind != "all-reduce":
        raise ValueError(f"algorithm='tree' is simulated for all-reduce only; {kind}: 'ring'")


def pad_to_multiple(array, multiple):
    """``array`` flattened (C order) and padded with zeros to a multiple of ``multiple`` values."""
    flat = np.asarray(array).ravel()
    padded = -(-flat.size // multiple) * multiple
    return np.concatenate([flat, np.zeros(padded - flat.size, dtype=flat.dtype)])


def shard(array, n_devices):
    """Split ``array`` (flattened, zero-padded to a multiple of n) into n equal shards."""
    n = _count("n_devices", n_devices)
    return list(pad_to_multiple(_numeric("array", array), n).reshape(n, -1))


# -- ring collectives ------------------------------------------------------------------------

def _ring_reduce_scatter(wire, chunks, step0=0):
    """chunks[i][c]: device i's chunk c, summed in place; device i ends holding chunk i's sum."""
    n = wire.n
    for t in range(n - 1):
        # All devices send at once, then add what arrived: read every message before adding.
        arrived = [(i, (i - 1 - t) % n,
                    wire.send(step0 + t, i, (i + 1) % n, chunks[i][(i - 1 - t) % n],
                              f"chunk {(i - 1 - t) % n} (partial sum)", (i - 1 - t) % n))
                   for i in range(n)]
        for i, c, data in arrived:
            chunks[(i + 1) % n][c] = chunks[(i + 1) % n][c] + data


def _ring_all_gather(wire, chunks, step0=0, start=0):
    """Device i starts with chunk (i + start) mod n complete; every device ends with all."""
    n = wire.n
    for t in range(n - 1):
        arrived = [(i, (i + start - t) % n,
                    wire.send(step0 + t, i, (i + 1) % n, chunks[i][(i + start - t) % n],
                              f"chunk {(i + start - t) % n}", (i + start - t) % n))
                   for i in range(n)]
        for i, c, data in arrived:
            chunks[(i + 1) % n][c] = data


def _chunked(arrays, n):
    """Each device's buffer padded and cut into n chunks (a list per device)."""
    return [list(pad_to_multiple(a, n).reshape(n, -1)) for a in arrays]


def all_reduce(buffers, *, algorithm="ring"):
    """Every device ends with the sum of every device's buffer (same shape and dtype).

    Args:
        buffers (list of array-like): One array per device, all of one shape and numeric dtype.

    Keyword Args:
        algorithm (str): ``"ring"`` (reduce-scatter then all-gather) or ``"tree"`` (the double
            binary tree; see the module docstring).

    Returns:
        Collective: ``outputs[i]`` is the sum on device i.

    Raises:
        ValueError: If ``buffers`` or ``algorithm`` is not valid; the message names it.
    """
    arrays = _buffers(buffers)
    _algorithm("all-reduce", algorithm)
    if algorithm == "tree":
        return _tree_all_reduce(arrays)
    n, shape = len(arrays), arrays[0].shape
    wire, chunks = _Wire(n), _chunked(arrays, n)
    _ring_reduce_scatter(wire, chunks)
    # After the reduce-scatter device i holds chunk i complete: the all-gather starts there.
    _ring_all_gather(wire, chunks, step0=n - 1, start=0)
    size = arrays[0].size
    outputs = tuple(np.concatenate(c)[:size].reshape(shape) for c in chunks)
    return Collective("all-reduce", "ring", n, int(arrays[0].nbytes),
                      int(np.concatenate(chunks[0]).nbytes), outputs, tuple(wire.messages))


def reduce_scatter(buffers, *, algorithm="ring"):
    """Device i ends with chunk i of the sum (of the flattened buffers, zero-padded).

    Args:
        buffers (list of array-like): One array per device, all of one shape and numeric dtype.

    Keyword Args:
        algorithm (str): ``"ring"`` only (the tree is simulated for all-reduce, as modelled).

    Returns:
        Collective: ``outputs[i]``: a 1-D array of ``ceil(L / n)`` values, chunk i of the sum;
        ``np.concatenate(outputs)[:L]`` is the flattened sum.

    Raises:
        ValueError: If ``buffers`` or ``algorithm`` is not valid; the message names it.
    """
    arrays = _buffers(buffers)
    _algorithm("reduce-scatter", algorithm)
    n = len(arrays)
    wire, chunks = _Wire(n), _chunked(arrays, n)
    _ring_reduce_scatter(wire, chunks)
    outputs = tuple(chunks[i][i] for i in range(n))
    return Collective("reduce-scatter", "ring", n, int(arrays[0].nbytes),
                      int(np.concatenate(chunks[0]).nbytes), outputs, tuple(wire.messages))


def all_gather(shards, *, algorithm="ring"):
    """Every device ends with every device's shard, concatenated in device order (axis 0).

    Args:
        shards (list of array-like): One array per device, all of one shape and numeric dtype
            (use :func:`shard` to cut a buffer of any length into equal, padded shards).

    Keyword Args:
        algorithm (str): ``"ring"`` only (the tree is simulated for all-reduce, as modelled).

    Returns:
        Collective: ``outputs[i]`` is ``np.concatenate(shards)`` on device i. ``n_bytes`` is
        the gathered buffer (n shards).

    Raises:
        ValueError: If ``shards`` or ``algorithm`` is not valid; the message names it.
    """
    arrays = _buffers(shards, "shards")
    _algorithm("all-gather", algorithm)
    n = len(arrays)
    wire = _Wire(n)
    held = [[arrays[i] if c == i else None for c in range(n)] for i in range(n)]
    _ring_all_gather(wire, held, start=0)
    outputs = tuple(np.concatenate(h) if arrays[0].ndim else np.stack(h) for h in held)
    full = int(n * arrays[0].nbytes)
    return Collective("all-gather", "ring", n, full, full, outputs, tuple(wire.messages))


def all_to_all(buffers, *, algorithm="ring"):
    """Device j ends with chunk j of every device's buffer, in device order.

    Each buffer is flattened, zero-padded to a multiple of n values and cut into n chunks:
    chunk j is what the device sends to device j (it keeps its own).

    Args:
        buffers (list of array-like): One array per device, all of one shape and numeric dtype.

    Keyword Args:
        algorithm (str): ``"ring"`` only (the tree is simulated for all-reduce, as modelled).

    Returns:
        Collective: ``outputs[j]``: a 1-D array, the n chunks j (padded) of devices 0..n-1.

    Raises:
        ValueError: If ``buffers`` or ``algorithm`` is not valid; the message names it.
    """
    arrays = _buffers(buffers)
    _algorithm("all-to-all", algorithm)
    n = len(arrays)
    wire, chunks = _Wire(n), _chunked(arrays, n)
    received = [[chunks[j][j] if i == j else None for i in range(n)] for j in range(n)]
    for t in range(n - 1):
        for i in range(n):
            j = (i + t + 1) % n  # a different partner each step: every pair once, no waiting
            received[j][i] = wire.send(t, i, j, chunks[i][j], f"chunk for device {j}", j)
    outputs = tuple(np.concatenate(r) for r in received)
    return Collective("all-to-all", "ring", n, int(arrays[0].nbytes),
                      int(np.concatenate(chunks[0]).nbytes), outputs, tuple(wire.messages))


def broadcast(buffer, n_devices, *, root=0, chunks=1, algorithm="ring"):
    """Every device ends with ``root``'s buffer, passed down a chain root, root + 1, ...

    Args:
        buffer (array-like): The root's numeric array.
        n_devices (int): Devices, a whole number >= 1.

    Keyword Args:
        root (int): The device that holds the buffer, 0 <= root < n_devices. Default 0.
        chunks (int): Pieces the buffer is pipelined in, >= 1 (the buffer is zero-padded to a
            multiple of ``chunks`` values). Default 1: no pipelining, n - 1 steps (the
            formula's count); k chunks take n - 2 + k steps, each of 1/k of the buffer.
        algorithm (str): ``"ring"`` only (a chain), as the formula models it.

    Returns:
        Collective: ``outputs[i]`` is the buffer on device i.

    Raises:
        ValueError: If an argument is not valid; the message names it.
    """
    arr = _numeric("buffer", buffer)
    _algorithm("broadcast", algorithm)
    n = _count("n_devices", n_devices)
    k = _count("chunks", chunks)
    if isinstance(root, (bool, np.bool_)) or not isinstance(root, numbers.Integral) \
            or not 0 <= root < n:
        raise ValueError(f"root must be a device, 0 <= root < n_devices={n}, got {root!r}")
    pieces = pad_to_multiple(arr, k).reshape(k, -1)
    wire = _Wire(n)
    chain = [(root + h) % n for h in range(n)]
    held = {root: list(pieces)}
    for h in range(1, n):
        held[chain[h]] = [None] * k
    # Hop h forwards piece c at step h + c: piece c has reached hop h by then (pipelining).
    for step in range(n - 2 + k if n > 1 else 0):
        for h in range(n - 1):
            c = step - h
            if 0 <= c < k:
                held[chain[h + 1]][c] = wire.send(step, chain[h], chain[h + 1],
                                                  held[chain[h]][c], f"chunk {c}", c)
    outputs = tuple(np.concatenate(held[i])[:arr.size].reshape(arr.shape) for i in range(n))
    return Collective("broadcast", "ring", n, int(arr.nbytes), int(pieces.nbytes), outputs,
                      tuple(wire.messages))


# -- the double binary tree ------------------------------------------------------------------

def tree_parents(n_devices):
    """The two trees of the tree all-reduce: ``(parents_0, parents_1)``, lists of length n.

    ``parents_k[r]`` is rank r's parent in tree k (-1 at the root). Tree 0 is heap-ordered
    (rank r at position r); tree 1 is the same tree over the ranks reversed (rank r at
    position n - 1 - r).
    """
    n = _count("n_devices", n_devices)
    heap = [-1] + [(p - 1) // 2 for p in range(1, n)]  # parent position of each position
    first = heap
    second = [-1 if heap[n - 1 - r] < 0 else n - 1 - heap[n - 1 - r] for r in range(n)]
    return first, second


def _depths(parents):
    depth = [0] * len(parents)
    for r in range(len(parents)):  # walk up to the root: n is small, no memo needed
        p, d = parents[r], 0
        while p >= 0:
            p, d = parents[p], d + 1
        depth[r] = d
    return depth


def _tree_all_reduce(arrays):
    n, shape, size = len(arrays), arrays[0].shape, arrays[0].size
    wire = _Wire(n)
    halves = [list(pad_to_multiple(a, 2).reshape(2, -1)) for a in arrays]
    trees = tree_parents(n)
    depths = [_depths(t) for t in trees]
    height = max(max(d) for d in depths)
    # Up: in step t the ranks at depth height - t send their partial sums; both trees at once.
    for t in range(height):
        arrived = []
        for k, (parents, depth) in enumerate(zip(trees, depths)):
            for r in range(n):
                if depth[r] == height - t and parents[r] >= 0:
                    arrived.append((k, parents[r],
                                    wire.send(t, r, parents[r], halves[r][k],
                                              f"half {k} (partial sum)", k)))
        for k, p, data in arrived:
            halves[p][k] = halves[p][k] + data
    # Down: in step height + t the ranks at depth t send the finished half to their children.
    for t in range(height):
        for k, (parents, depth) in enumerate(zip(trees, depths)):
            for r in range(n):
                if depth[r] == t + 1:
                    halves[r][k] = wire.send(height + t, parents[r], r, halves[parents[r]][k],
                                             f"half {k} (sum)", k)
    outputs = tuple(np.concatenate(h)[:size].reshape(shape) for h in halves)
    return Collective("all-reduce", "tree", n, int(arrays[0].nbytes),
                      int(np.concatenate(halves[0]).nbytes), outputs, tuple(wire.messages))


# -- data parallelism ------------------------------------------------------------------------

class DataParallelStep(NamedTuple):
    """One optimizer step of data parallelism over simulated devices.

    Attributes:
        loss (float): The mean loss over every token of the batch (each micro-batch's mean
            weighted by its tokens; computed, not communicated).
        grads (dict[str, numpy.ndarray]): The combined gradient, keyed like ``model.params``
            (reassembled from the devices' shards for ZeRO stages 1 to 3).
        params (dict[str, numpy.ndarray]): The parameters after the SGD update, reassembled.
        device_params (tuple[numpy.ndarray, ...]): What each device holds after the step: the
            whole flat (padded) parameter buffer for stages 0 to 2, its shard for stage 3.
        collectives (tuple[Collective, ...]): Every collective, in order, labelled
            ``"gradients"`` or ``"parameters"`` (stage 3's are ``"parameters (forward)"`` and
            ``"parameters (backward)"``).
        n_params (int): Psi, the model's parameters (before padding).
    """

    loss: float
    grads: dict
    params: dict
    device_params: tuple
    collectives: tuple
    n_params: int

    def bytes_sent(self, label=None) -> np.ndarray:
        """Bytes each device sent in the step (only collectives whose label starts with
        ``label`` when given: ``"gradients"`` or ``"parameters"``)."""
        n = self.collectives[0].n_devices if self.collectives else 1
        total = np.zeros(n, dtype=np.int64)
        for c in self.collectives:
            if label is None or c.label.startswith(label):
                total += c.bytes_sent()
        return total

    @property
    def max_bytes_sent(self) -> int:
        """The busiest device's bytes: what ``data_parallel_bytes(...).total`` gives."""
        return int(self.bytes_sent().max(initial=0))


def _flatten(params, names):
    return np.concatenate([params[k].ravel() for k in names])


def _unflatten(flat, like):
    out, at = {}, 0
    for name, value in like.items():
        out[name] = flat[at:at + value.size].reshape(value.shape).copy()
        at += value.size
    return out


def _labelled(collective, label):
    return collective._replace(label=label)


def data_parallel_step(model, tokens, targets, n_devices, *, zero_stage=0, micro_batches=1,
                       lr=0.1):
    """One SGD step of ``model`` with its batch split over ``n_devices`` simulated devices.

    The batch's sequences are split in ``n_devices * micro_batches`` consecutive pieces
    (``np.array_split``: as equal as they go, the first ones a sequence longer): device d takes
    pieces ``d * micro_batches`` to ``(d + 1) * micro_batches - 1``, one micro-batch each. Each
    micro-batch's gradient (of its own mean loss) is weighted by its share of the batch's tokens,
    so the summed gradient is exactly the gradient of the whole batch's mean loss, however
    unevenly the batch splits. Parameters travel as one flat buffer in ``model.params`` order,
    padded with zeros to a multiple of n values (the padding's gradient is 0):

    - stage 0: gradients accumulated locally, one ring all-reduce, every device updates all;
    - stage 1: accumulated locally, one reduce-scatter; each device updates its shard (its
      optimizer state is the shard's); one all-gather of the updated parameters;
    - stage 2: a reduce-scatter after every micro-batch (a device keeps only its gradient
      shard), the shard update, one all-gather;
    - stage 3: every device keeps only its parameter shard; each micro-batch all-gathers the
      parameters before the forward and again before the backward (the forward's copy is
      dropped in between; the backward computes with the second copy), and reduce-scatters the
      gradient; each device updates its shard.

    ``model`` is used as the compute of every device in turn (its ``params`` are swapped for
    the device's copy and restored afterwards: the model is left as it was). It needs
    ``params`` (a dict of float arrays) and ``train_step(tokens, targets)`` returning
    ``(loss, grads)`` keyed like ``params``, as :class:`ReferenceTransformer` has.

    Args:
        model: A :class:`~flopsbook.reference.ReferenceTransformer` (or the like).
        tokens (array-like): (batch, seq) token ids.
        targets (array-like): (batch, seq) next tokens.
        n_devices (int): Data-parallel devices, a whole number >= 1.

    Keyword Args:
        zero_stage (int): 0, 1, 2 or 3. Default 0.
        micro_batches (int): Micro-batches per device (gradient accumulation), >= 1. Default 1.
        lr (float): SGD step size, a finite number. Default 0.1.

    Returns:
        DataParallelStep: The loss, combined gradient, updated parameters, the collectives.

    Raises:
        ValueError: If an argument is not valid, or the batch has fewer sequences than
            ``n_devices * micro_batches``; the message names the argument.
    """
    n = _count("n_devices", n_devices)
    k = _count("micro_batches", micro_batches)
    if isinstance(zero_stage, (bool, np.bool_)) or zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be one of 0, 1, 2, 3, got {zero_stage!r}")
    if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real) \
            or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite number, got {lr!r}")
    if not hasattr(model, "params") or not hasattr(model, "train_step"):
        raise ValueError("model must have params and train_step (a ReferenceTransformer)")
    tokens, targets = np.asarray(tokens), np.asarray(targets)
    if tokens.ndim != 2 or targets.shape != tokens.shape:
        raise ValueError(f"tokens and targets must be (batch, seq) arrays of one shape, got "
                         f"{tokens.shape} and {targets.shape}")
    if tokens.shape[0] < n * k:
        raise ValueError(f"tokens: a batch of {tokens.shape[0]} sequences cannot feed "
                         f"n_devices * micro_batches = {n * k} micro-batches")

    original = model.params
    names = list(original)
    n_params = sum(v.size for v in original.values())
    pieces = list(zip(np.array_split(tokens, n * k), np.array_split(targets, n * k)))
    weights = [p[0].size / tokens.size for p in pieces]
    flat0 = pad_to_multiple(_flatten(original, names), n)
    collectives, loss = [], 0.0

    def run(d, j, params):
        """Device d's micro-batch j on ``params``: its weighted loss and flat padded gradient."""
        x, y = pieces[d * k + j]
        model.params = params
        mb_loss, grads = model.train_step(x, y)
        w = weights[d * k + j]
        return w * mb_loss, w * pad_to_multiple(_flatten(grads, names), n)

    try:
        if zero_stage < 3:
            replicas = [flat0.copy() for _ in range(n)]
            params = [_unflatten(r, original) for r in replicas]
            grad_acc = [np.zeros_like(flat0) for _ in range(n)]  # stages 0, 1: the whole
            shard_acc = [np.zeros(flat0.size // n) for _ in range(n)]   # stage 2: a shard
            for j in range(k):
                mb = [run(d, j, params[d]) for d in range(n)]
                loss += sum(m[0] for m in mb)
                if zero_stage == 2:  # the whole gradient is not kept: scatter it right away
                    rs = reduce_scatter([m[1] for m in mb])
                    collectives.append(_labelled(rs, "gradients"))
                    shard_acc = [a + s for a, s in zip(shard_acc, rs.outputs)]
                else:
                    grad_acc = [a + m[1] for a, m in zip(grad_acc, mb)]
            if zero_stage == 0:
                ar = all_reduce(grad_acc)
                collectives.append(_labelled(ar, "gradients"))
                replicas = [r - lr * g for r, g in zip(replicas, ar.outputs)]
                combined = ar.outputs[0]
            else:
                if zero_stage == 1:
                    rs = reduce_scatter(grad_acc)
                    collectives.append(_labelled(rs, "gradients"))
                    shard_acc = list(rs.outputs)
                new_shards = [shard(r, n)[d] - lr * shard_acc[d] for d, r in enumerate(replicas)]
                ag = all_gather(new_shards)
                collectives.append(_labelled(ag, "parameters"))
                replicas = list(ag.outputs)
                combined = np.concatenate(shard_acc)
            device_params = tuple(replicas)
            updated = replicas[0]
        else:
            shards = shard(flat0, n)
            grad_shards = [np.zeros_like(s) for s in shards]
            for j in range(k):
                # Both gathers run on every device at once; the one model then plays each
                # device in turn (it holds one forward's tape at a time): forward on the first
                # gather's copy, backward on the second's (the reference backward reads
                # model.params, as a real backward reads the gathered weights for dX = dY W^T).
                fwd = all_gather(shards)
                collectives.append(_labelled(fwd, "parameters (forward)"))
                bwd = all_gather(shards)
                collectives.append(_labelled(bwd, "parameters (backward)"))
                local = []
                for d in range(n):
                    x, y = pieces[d * k + j]
                    model.params = _unflatten(fwd.outputs[d], original)
                    mb_loss = model.forward(x, y)
                    model.params = _unflatten(bwd.outputs[d], original)
                    grads = model.backward()
                    w = weights[d * k + j]
                    loss += w * mb_loss
                    local.append(w * pad_to_multiple(_flatten(grads, names), n))
                rs = reduce_scatter(local)
                collectives.append(_labelled(rs, "gradients"))
                grad_shards = [a + s for a, s in zip(grad_shards, rs.outputs)]
            shards = [s - lr * g for s, g in zip(shards, grad_shards)]
            device_params = tuple(shards)
            combined = np.concatenate(grad_shards)
            updated = np.concatenate(shards)
    finally:
        model.params = original

    return DataParallelStep(float(loss), _unflatten(combined, original),
                            _unflatten(updated, original), device_params, tuple(collectives),
                            int(n_params))
