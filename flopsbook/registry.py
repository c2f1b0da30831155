"""Published model configurations and accelerators, each with a key into book/references.bib.

``model(name)`` and ``hardware(name)`` look one up, ``models()`` and ``hardwares()`` list the
names, and every formula that takes a model or an accelerator also takes its name.
``training_run(name)`` and ``training_runs()`` are the ledger of published training runs (their
size, hardware and printed throughput) from which the chapters recompute MFU. A
:class:`Hardware` holds its memory in bytes, its bandwidth in bytes/s and its dense peaks in
FLOP/s.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from types import MappingProxyType

from ._validate import as_array, positive_int, shown
from .spec import Transformer

GiB = 2**30


def _lookup(kind: str, name, table: dict, arg: str = "name"):
    if not isinstance(name, str):
        raise ValueError(f"{arg} must be a {kind} name (a str), one of {', '.join(table)}; "
                         f"got {shown(name)}")
    if name in table:
        return table[name]
    names = sorted(table)
    hint = f" Closest: {', '.join(close)}." if (close := closest_names(name, names)) else ""
    raise ValueError(f"{arg}: unknown {kind} name {shown(name)}.{hint} Allowed: "
                     f"{', '.join(names)}")


def closest_names(name: str, names, n: int = 3) -> list[str]:
    """Registry names a mistyped ``name`` probably meant: those it begins or is part of first
    ("h100" -> "h100-sxm"), then the most similar spellings."""
    key = name.strip().lower()
    whole = [x for x in names if key and (x.startswith(key) or key in x)]
    similar = difflib.get_close_matches(key, names, n=n, cutoff=0.4)
    return list(dict.fromkeys(whole + similar))[:n]


def _gpt2(name, n_layers, d_model, n_heads):
    return Transformer(name=name, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                       vocab_size=50257, seq_len=1024, source="radford2019gpt2",
                       notes="Released checkpoint; the count matches its tensors exactly.")


def _llama(name, source, n_layers, d_model, n_heads, d_ff, seq_len, *, n_kv_heads=None,
           vocab_size=32000, notes=""):
    return Transformer(name=name, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                       n_kv_heads=n_kv_heads, d_ff=d_ff, ffn="swiglu", vocab_size=vocab_size,
                       seq_len=seq_len, tied_embeddings=False, positional="rope",
                       norm="rmsnorm", bias=False, source=source,
                       notes=notes or "Released checkpoint; the count matches its tensors exactly.")


_DEEPMIND_NOTES = ("Never released. Relative position encodings (Transformer-XL) are modelled as "
                   "one extra d_model x d_model projection and two bias vectors per layer; "
                   "whether embeddings are tied is not stated (tied assumed); no biases assumed.")

_MODELS = {m.name: m for m in [
    _gpt2("gpt2-small", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    Transformer(name="gpt3-175b", n_layers=96, d_model=12288, n_heads=96, vocab_size=50257,
                seq_len=2048, source="brown2020gpt3",
                notes="Never released; GPT-2 architecture at scale. Its alternating dense and "
                      "locally banded sparse attention is not modelled (no parameters)."),
    Transformer(name="bert-base", n_layers=12, d_model=768, n_heads=12, vocab_size=30522,
                seq_len=512, source="devlin2019bert",
                # token-type embeddings (2 x 768) and the pooler (768 x 768 + 768)
                extra_params=2 * 768 + 768 * 768 + 768,
                notes="Encoder (post-norm: its embedding LayerNorm has the size of the final "
                      "norm here). Token-type embeddings and the pooler are extra_params; the "
                      "pre-training heads are left out."),
    _llama("llama-7b", "touvron2023llama", 32, 4096, 32, 11008, 2048),
    _llama("llama-65b", "touvron2023llama", 80, 8192, 64, 22016, 2048),
    _llama("llama2-7b", "touvron2023llama2", 32, 4096, 32, 11008, 4096),
    _llama("llama2-13b", "touvron2023llama2", 40, 5120, 40, 13824, 4096),
    _llama("llama2-70b", "touvron2023llama2", 80, 8192, 64, 28672, 4096, n_kv_heads=8),
    _llama("llama3-8b", "grattafiori2024llama3", 32, 4096, 32, 14336, 8192, n_kv_heads=8,
           vocab_size=128256),
    _llama("llama3-70b", "grattafiori2024llama3", 80, 8192, 64, 28672, 8192, n_kv_heads=8,
           vocab_size=128256),
    Transformer(name="chinchilla-70b", n_layers=80, d_model=8192, n_heads=64, d_head=128,
                vocab_size=32000, seq_len=2048, positional="relative", norm="rmsnorm",
                bias=False, source="hoffmann2022chinchilla", notes=_DEEPMIND_NOTES),
    Transformer(name="gopher-280b", n_layers=80, d_model=16384, n_heads=128, d_head=128,
                vocab_size=32000, seq_len=2048, positional="relative", norm="rmsnorm",
                bias=False, source="rae2021gopher", notes=_DEEPMIND_NOTES),
    Transformer(name="palm-540b", n_layers=118, d_model=18432, n_heads=48, d_head=256,
                n_kv_heads=1, ffn="swiglu", vocab_size=256000, seq_len=2048,
                positional="rope", norm="layernorm", bias=False, source="chowdhery2022palm",
                notes="Never released. Multi-query attention, SwiGLU, shared input/output "
                      "embeddings, no biases. Its parallel attention+FFN block has one norm per "
                      "layer where the spec counts two (18,432 x 118 parameters, 0.0004%)."),
    # --- Beyond the dense transformer: local windows, mixtures of experts, latent attention --
    Transformer(name="mistral-7b", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
                d_ff=14336, ffn="swiglu", vocab_size=32000, seq_len=8192, window=4096,
                tied_embeddings=False, positional="rope", norm="rmsnorm", bias=False,
                source="jiang2023mistral",
                notes="Released checkpoint v0.1 (mistralai/Mistral-7B-v0.1); the count matches "
                      "its tensors exactly. Every layer attends to a window of 4,096 keys (the "
                      "rolling cache); seq_len is the paper's 8,192-token training context."),
    Transformer(name="mixtral-8x7b", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8,
                d_ff=14336, ffn="swiglu", n_experts=8, top_k=2, vocab_size=32000,
                seq_len=32768, tied_embeddings=False, positional="rope", norm="rmsnorm",
                bias=False, source="jiang2024mixtral",
                notes="Released checkpoint (mistralai/Mixtral-8x7B-v0.1); the count matches its "
                      "tensors exactly. Every layer routes to 2 of 8 SwiGLU experts; the router "
                      "has no bias; no sliding window (unlike Mistral 7B)."),
    Transformer(name="mixtral-8x22b", n_layers=56, d_model=6144, n_heads=48, n_kv_heads=8,
                d_ff=16384, ffn="swiglu", n_experts=8, top_k=2, vocab_size=32768,
                seq_len=65536, tied_embeddings=False, positional="rope", norm="rmsnorm",
                bias=False, source="mistral2024mixtral8x22b",
                notes="Released checkpoint Mixtral-8x22B-v0.3 (and -Instruct-v0.1), vocabulary "
                      "32,768; the count matches its tensors exactly. The first base release "
                      "(Mixtral-8x22B-v0.1) has a 32,000-token vocabulary and 9,437,184 fewer "
                      "parameters. seq_len is the announced 64K context."),
    Transformer(name="deepseek-v2-lite", n_layers=27, d_model=2048, n_heads=16, d_head=128,
                kv_lora_rank=512, qk_rope_dim=64, v_head_dim=128, d_ff=10944, ffn="swiglu",
                n_experts=64, top_k=6, n_shared_experts=2, d_ff_expert=1408, n_dense_layers=1,
                vocab_size=102400, seq_len=4096, tied_embeddings=False, positional="rope",
                norm="rmsnorm", bias=False, source="deepseekai2024v2",
                notes="Released checkpoint (deepseek-ai/DeepSeek-V2-Lite); the count matches its "
                      "tensors exactly. MLA without a query latent; the first layer keeps a "
                      "dense FFN; the router has no bias. seq_len is the 4K pre-training "
                      "context (later extended to 32K)."),
    Transformer(name="deepseek-v3", n_layers=61, d_model=7168, n_heads=128, d_head=128,
                q_lora_rank=1536, kv_lora_rank=512, qk_rope_dim=64, v_head_dim=128,
                d_ff=18432, ffn="swiglu", n_experts=256, top_k=8, n_shared_experts=1,
                d_ff_expert=2048, n_dense_layers=3, vocab_size=129280, seq_len=4096,
                tied_embeddings=False, positional="rope", norm="rmsnorm", bias=False,
                source="deepseekai2024v3",
                notes="The main model of the released checkpoint (deepseek-ai/DeepSeek-V3), "
                      "without its multi-token-prediction module (one more MoE layer with its own "
                      "norms and projection: 11,610,067,968 parameters beyond the shared "
                      "embedding and output head, which the checkpoint stores again) and without "
                      "the FP8 scale tensors. The router's bias-correction term is a buffer "
                      "(updated by a rule, not by gradients), not a parameter. seq_len is the "
                      "4K pre-training context (later extended to 32K and 128K)."),
    Transformer(name="qwen3-30b-a3b", n_layers=48, d_model=2048, n_heads=32, n_kv_heads=4,
                d_head=128, ffn="swiglu", n_experts=128, top_k=8, d_ff_expert=768,
                d_ff=6144, vocab_size=151936, seq_len=4096, tied_embeddings=False,
                positional="rope", norm="rmsnorm", bias=False, qk_norm=True,
                source="yang2025qwen3",
                notes="Released checkpoint (Qwen/Qwen3-30B-A3B); the count matches its tensors "
                      "exactly. Every layer is an MoE (no shared expert, no router bias); d_ff "
                      "is the config's unused dense width. seq_len is the 4K context of the "
                      "main pre-training stages (the last stage trains at 32K)."),
    Transformer(name="gpt-oss-20b", n_layers=24, d_model=2880, n_heads=64, n_kv_heads=8,
                d_head=64, d_ff=2880, ffn="swiglu", n_experts=32, top_k=4, vocab_size=201088,
                seq_len=4096, window=128, global_every=2, attention_sinks=True,
                tied_embeddings=False, positional="rope", norm="rmsnorm", bias=True,
                source="openai2025gptoss",
                notes="Released checkpoint (openai/gpt-oss-20b), counted in its bf16 form; the "
                      "count matches its tensors exactly, without the MXFP4 scale tensors. "
                      "Layers alternate banded (128 keys) and full attention, starting banded; "
                      "biases on the attention projections, the router and the experts; norms "
                      "have no bias. Its SwiGLU is clamped and has a +1 on the up branch (no "
                      "parameters). seq_len is the config's initial 4,096-token context (YaRN "
                      "extends it to 131,072)."),
    Transformer(name="gpt-oss-120b", n_layers=36, d_model=2880, n_heads=64, n_kv_heads=8,
                d_head=64, d_ff=2880, ffn="swiglu", n_experts=128, top_k=4, vocab_size=201088,
                seq_len=4096, window=128, global_every=2, attention_sinks=True,
                tied_embeddings=False, positional="rope", norm="rmsnorm", bias=True,
                source="openai2025gptoss",
                notes="Released checkpoint (openai/gpt-oss-120b), as gpt-oss-20b with 36 layers "
                      "of 128 experts; the count matches its tensors exactly, without the MXFP4 "
                      "scale tensors."),
    Transformer(name="gemma3-27b", n_layers=62, d_model=5376, n_heads=32, n_kv_heads=16,
                d_head=128, d_ff=21504, ffn="geglu", vocab_size=262208, seq_len=32768,
                window=1024, global_every=6, qk_norm=True, post_norms=True,
                tied_embeddings=True, positional="rope", norm="rmsnorm", bias=False,
                source="gemmateam2025gemma3",
                notes="The text model of the released checkpoint (google/gemma-3-27b-pt); the "
                      "count matches its language-model tensors exactly (vocabulary 262,208 as "
                      "stored; the report's tokenizer has 262,144 entries). The SigLIP vision "
                      "encoder and its projector (423,060,336 parameters) are left out. Five "
                      "local layers (1,024 keys) to one global; four norms per layer and q/k "
                      "norms; GeGLU (tanh approximation); embeddings scaled by sqrt(d_model) "
                      "(no parameters). seq_len is the 32K pre-training context (extended "
                      "to 128K)."),
    _llama("llama3.1-405b", "grattafiori2024llama3", 126, 16384, 128, 53248, 8192,
           n_kv_heads=8, vocab_size=128256,
           notes="Released checkpoint (meta-llama/Llama-3.1-405B); the count matches its "
                 "tensors exactly. seq_len is the 8K context of the main pre-training (later "
                 "extended to 128K)."),
]}


def model(name: str) -> Transformer:
    """A published configuration by name (e.g. ``"llama3-8b"``); see ``models()`` for the list.

    Args:
        name (str): A registry model name, exactly as :func:`models` lists it.

    Returns:
        Transformer: The registry's spec (frozen: the same object on every call).

    Raises:
        ValueError: If ``name`` is not a str or not a registry name; the message lists the
            closest names.
    """
    return _lookup("model", name, _MODELS)


def models() -> list[str]:
    """Names of every model in the registry, in the order the book introduces them.

    Returns:
        list[str]: The model names, each accepted wherever a model argument is.
    """
    return list(_MODELS)


@dataclass(frozen=True)
class Hardware:
    """An accelerator: dense peak FLOP/s per dtype, memory in bytes, bandwidth in bytes/s.

    ``peak_flops`` maps a dtype name ("fp32", "tf32", "bf16", "fp16", "fp8", "int8") to its dense
    peak in FLOP/s (OP/s for int8); ``memory_bytes`` is the device memory in bytes; ``bandwidth``
    is the HBM bandwidth in bytes/s (one device, reads and writes together); ``source`` is a key
    of ``book/references.bib``. Every field is validated: a negative memory or a zero bandwidth is
    a ``ValueError`` naming the field. All peaks are dense (no 2:4 sparsity): vendors' headline
    tensor-core numbers are often twice these. A peak, the memory and the bandwidth may be given
    as one text quantity each ("989 TFLOP/s", "80GB", "3.35 TB/s"); they are stored as floats.

    The links to other devices (chapter "Many devices I", notebooks/collectives) are keyword fields,
    None where unknown (a formula that needs one then says so): ``intra_node_bandwidth`` is what
    one device can send per second, in one direction, to the devices of its node (NVLink; a TPU's
    ICI, where a "node" is the ICI-connected slice), ``inter_node_bandwidth`` what it can send in
    one direction to devices in other nodes (its share of the node's network cards; a TPU's
    data-centre network), ``devices_per_node`` how many devices share the fast links, and
    ``intra_node_latency``/``inter_node_latency`` the time per message of each link (the alpha of
    the alpha-beta model), in seconds. Bandwidths are bytes/s in ONE direction: datasheets
    usually print both directions added ("900 GB/s" NVLink on an H100 is 450 GB/s each way).

    Attributes:
        name (str): Registry name, e.g. ``"h100-sxm"``.
        peak_flops (Mapping[str, float]): Dense peak FLOP/s by dtype name (a read-only mapping);
            it must have a 16-bit peak, ``"bf16"`` or ``"fp16"``.
        memory_bytes (float): Device memory, bytes, > 0.
        bandwidth (float): HBM bandwidth, bytes/s, > 0.
        source (str): Key of ``book/references.bib``.
        notes (str): The variant and caveats; ignored by ``==``.
        intra_node_bandwidth (float | None): One-direction bytes/s to a device of the same node
            (NVLink, ICI), > 0, or None (unknown).
        inter_node_bandwidth (float | None): One-direction bytes/s to a device of another node
            (this device's share of the node's network), > 0, or None.
        devices_per_node (int | None): Devices joined by the intra-node links, > 0, or None.
        intra_node_latency (float | None): Seconds per message inside a node, >= 0, or None.
        inter_node_latency (float | None): Seconds per message across nodes, >= 0, or None.
        link_source (str): Keys of ``book/references.bib`` for the link figures.

    Raises:
        ValueError: If ``name``, ``source`` or ``notes`` is not a str, ``peak_flops`` is not a
            non-empty mapping of dtype names, a peak, the memory or the bandwidth is not a
            positive finite number (or readable text), or there is no 16-bit peak; the message
            names the field (``Hardware.bandwidth``, ``Hardware.peak_flops['bf16']``, ...).
    """

    name: str
    peak_flops: MappingProxyType
    memory_bytes: float
    bandwidth: float
    source: str = ""
    notes: str = field(default="", compare=False)
    intra_node_bandwidth: float | None = field(default=None, kw_only=True)
    inter_node_bandwidth: float | None = field(default=None, kw_only=True)
    devices_per_node: int | None = field(default=None, kw_only=True)
    intra_node_latency: float | None = field(default=None, kw_only=True)
    inter_node_latency: float | None = field(default=None, kw_only=True)
    link_source: str = field(default="", kw_only=True)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen
        for f in ("name", "source", "notes", "link_source"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"Hardware.{f} must be a str, got {getattr(self, f)!r}")
        for f in ("intra_node_bandwidth", "inter_node_bandwidth"):
            if getattr(self, f) is not None:
                set_(self, f, float(as_array(f"Hardware.{f}", getattr(self, f), kind="rate")))
        for f in ("intra_node_latency", "inter_node_latency"):
            if getattr(self, f) is not None:
                set_(self, f, float(as_array(f"Hardware.{f}", getattr(self, f),
                                             allow_zero=True)))
        if self.devices_per_node is not None:
            set_(self, "devices_per_node",
                 positive_int("Hardware.devices_per_node", self.devices_per_node))
        peaks = self.peak_flops
        if not hasattr(peaks, "items") or not peaks:
            raise ValueError("Hardware.peak_flops must be a non-empty mapping of dtype name to "
                             f"FLOP/s, e.g. {{'bf16': 989.4e12}}; got {peaks!r}")
        checked = {}
        for dtype, value in peaks.items():
            if not isinstance(dtype, str):
                raise ValueError(f"Hardware.peak_flops keys must be dtype names, got {dtype!r}")
            checked[dtype] = float(as_array(f"Hardware.peak_flops[{dtype!r}]", value,
                                            kind="flop_rate"))
        set_(self, "peak_flops", MappingProxyType(checked))
        for f, kind in (("memory_bytes", "bytes"), ("bandwidth", "rate")):
            set_(self, f, float(as_array(f"Hardware.{f}", getattr(self, f), kind=kind)))
        if "bf16" not in checked and "fp16" not in checked:
            raise ValueError("Hardware.peak_flops needs a 16-bit peak ('bf16' or 'fp16'): the "
                             f"book's default peak; got {', '.join(checked)}")

    def peak(self, dtype: str = "bf16") -> float:
        """Dense peak FLOP/s for ``dtype`` (e.g. "bf16", "fp16", "tf32", "fp32", "fp8").

        Args:
            dtype (str): A key of ``peak_flops`` that this device has: "fp32", "tf32", "bf16",
                "fp16", "fp8" or "int8" (an int8 peak is in OP/s). Default ``"bf16"``.

        Returns:
            float: The dense peak of one device, FLOP/s (no sparsity).

        Raises:
            ValueError: If this device has no peak for ``dtype``; the message names ``dtype`` and
                lists the closest dtypes it has.
        """
        return _lookup(f"dtype (for {self.name})", dtype, self.peak_flops, "dtype")

    @property
    def peak_16bit(self) -> float:
        """float: The 16-bit tensor peak the book uses by default, FLOP/s.

        bf16, or fp16 where there is no bf16 (the V100).
        """
        return self.peak("bf16" if "bf16" in self.peak_flops else "fp16")

    @property
    def balance(self) -> float:
        """float: FLOPs per byte at which a kernel turns compute-bound: 16-bit peak / bandwidth.

        The machine balance ``peak_16bit / bandwidth``, in FLOP/byte: a kernel of higher arithmetic
        intensity is compute-bound on this device, one of lower intensity memory-bound.
        """
        return self.peak_16bit / self.bandwidth


_LINK_FIELDS = ("intra_node_bandwidth", "inter_node_bandwidth", "devices_per_node",
                "intra_node_latency", "inter_node_latency", "link_source")


def _hw(name, memory_bytes, bandwidth, source, notes="", **peaks_and_links):
    links = {k: peaks_and_links.pop(k) for k in _LINK_FIELDS if k in peaks_and_links}
    return Hardware(name, MappingProxyType(peaks_and_links), float(memory_bytes),
                    float(bandwidth), source, notes, **links)


_HARDWARE = {h.name: h for h in [
    _hw("v100", 32 * GiB, 900e9, "nvidia2017v100", fp32=15.7e12, fp16=125e12,
        intra_node_bandwidth=150e9, inter_node_bandwidth=6.25e9, devices_per_node=16,
        intra_node_latency=1.9e-6, inter_node_latency=4.0e-6,
        link_source="nvidia2017v100 rajbhandari2020zero nvidia2026nccltuning",
        notes="SXM2, 32 GB; fp16 is the tensor-core peak; no bf16. Links as in the ZeRO paper's "
              "DGX-2 nodes: 16 GPUs on NVSwitch, six NVLink 2 links of 25 GB/s each way per GPU "
              "(NVIDIA's '300 GB/s' adds both directions), 800 Gb/s of network per node. "
              "Latencies: NCCL's cost-model constants per ring step (LL128 protocol)."),
    _hw("a100-40gb", 40 * GiB, 1555e9, "nvidia2020a100",
        fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12, int8=624e12,
        intra_node_bandwidth=300e9, inter_node_bandwidth=25e9, devices_per_node=8,
        intra_node_latency=1.9e-6, inter_node_latency=4.0e-6, link_source="nvidia2020a100 narayanan2021efficient nvidia2026nccltuning",
        notes="SXM4. Twelve NVLink 3 links, 300 GB/s each way ('600 GB/s' both); one 200 Gb/s "
              "HDR InfiniBand card per GPU (Selene). Latencies: NCCL's cost-model constants per "
              "ring step (LL128 protocol)."),
    _hw("a100-80gb", 80 * GiB, 2039e9, "nvidia2020a100",
        fp32=19.5e12, tf32=156e12, bf16=312e12, fp16=312e12, int8=624e12,
        intra_node_bandwidth=300e9, inter_node_bandwidth=25e9, devices_per_node=8,
        intra_node_latency=1.9e-6, inter_node_latency=4.0e-6, link_source="nvidia2020a100 narayanan2021efficient nvidia2026nccltuning",
        notes="SXM4, links as the a100-40gb's."),
    _hw("h100-sxm", 80 * GiB, 3.35e12, "nvidia2022h100",
        fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, fp8=1978.9e12,
        int8=1978.9e12, intra_node_bandwidth=450e9, inter_node_bandwidth=50e9,
        devices_per_node=8, intra_node_latency=1.9e-6, inter_node_latency=4.0e-6,
        link_source="nvidia2022h100 austin2025scaling nvidia2026nccltuning",
        notes="SXM5, 80 GB. The datasheet's 1,979 TFLOP/s bf16 is with sparsity. Eighteen NVLink 4 "
              "links, 450 GB/s each way ('900 GB/s' both); one 400 Gb/s NDR card per GPU, so a "
              "node's egress is 400 GB/s. Latencies: NCCL's cost-model constants per ring step "
              "(LL128 protocol)."),
    _hw("h200", 143_771 * 2**20, 4.8e12, "nvidia2024h200",
        fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, fp8=1978.9e12,
        int8=1978.9e12, intra_node_bandwidth=450e9, inter_node_bandwidth=50e9,
        devices_per_node=8, intra_node_latency=1.9e-6, inter_node_latency=4.0e-6,
        link_source="nvidia2024h200 austin2025scaling nvidia2026nccltuning",
        notes="SXM. H100 compute and NVLink 4 (the network card per GPU assumed as the DGX "
              "H100's) with the datasheet's '141 GB' of HBM3e: "
                              "nvidia-smi reports 143,771 MiB (140.4 GiB, 150.8e9 bytes), which "
                              "is the memory used here; the '141' is closer to GiB than to GB."),
    _hw("h800", 80 * GiB, 3.35e12, "nvidia2022h100",
        fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, fp16=989.4e12, fp8=1978.9e12,
        int8=1978.9e12, notes="SXM, 80 GB: the H100 SXM's compute and memory (the peaks of the "
                              "H100 datasheet) with NVLink cut for export; DeepSeek trained V3 on "
                              "it. No vendor datasheet gives the NVLink figure: 160 GB/s is what "
                              "DeepSeek states and DeepEP measures (secondary sources say 400 GB/s "
                              "both ways); one 400 Gb/s InfiniBand card (~50 GB/s) per GPU.",
        intra_node_bandwidth=160e9, inter_node_bandwidth=50e9, devices_per_node=8,
        intra_node_latency=1.9e-6, inter_node_latency=4.0e-6,
        link_source="deepseekai2024v3 deepseekai2025deepep nvidia2026nccltuning"),
    _hw("tpu-v4", 32 * GiB, 1200e9, "jouppi2023tpuv4", bf16=275e12, int8=275e12,
        intra_node_bandwidth=45e9, devices_per_node=4096, intra_node_latency=1e-6,
        link_source="austin2025scaling",
        notes="One chip (two TensorCores). Its 'node' is the ICI-connected slice, up to a "
              "4,096-chip pod (a 3D torus, six links per chip); the bandwidth is one link in one "
              "direction (a ring along a wrapped axis sends both ways at once, twice this). The "
              "data-centre network between slices is not in the sources read (None)."),
    _hw("tpu-v5p", 95 * GiB, 2765e9, "google2023tpuv5p", bf16=459e12, int8=918e12,
        intra_node_bandwidth=90e9, inter_node_bandwidth=6.25e9, devices_per_node=8960,
        intra_node_latency=1e-6, link_source="google2023tpuv5p austin2025scaling",
        notes="One chip (two TensorCores); 95 GiB as Google's current page states it. Its 'node' "
              "is the ICI-connected slice, up to an 8,960-chip pod (a 3D torus, six links per "
              "chip; the largest job is 6,144 chips); the bandwidth is one link in one direction "
              "(a ring along a wrapped axis sends both ways at once, twice this: the scaling "
              "book's 1.8e11). Across slices, the data-centre network: 6.25 GB/s per chip. int8 "
              "is the scaling book's figure; the ICI latency its 'around 1us' per hop."),
]}


def hardware(name: str) -> Hardware:
    """An accelerator by name; see ``hardwares()`` for the list.

    Args:
        name (str): A registry accelerator name such as ``"h100-sxm"``, exactly as
            :func:`hardwares` lists it.

    Returns:
        Hardware: The registry's accelerator (frozen: the same object on every call).

    Raises:
        ValueError: If ``name`` is not a str or not a registry name; the message lists the
            closest names.
    """
    return _lookup("hardware", name, _HARDWARE)


def hardwares() -> list[str]:
    """Names of every accelerator in the registry.

    Returns:
        list[str]: The accelerator names, each accepted wherever a hardware argument is.
    """
    return list(_HARDWARE)


# --- Published training runs: the ledger of the chapters' MFU figures -----------------------

_FIGURES = ("tokens_per_second", "device_hours", "days")   # what a wall time is computed from


def _scalar(name: str, value, *, kind: str | None = None, integer: bool = False,
            upper: float | None = None) -> float:
    arr = as_array(name, value, kind=kind, integer=integer, upper=upper)
    if arr.ndim:
        raise ValueError(f"{name} must be one number, got {shown(value)}")
    return float(arr)


@dataclass(frozen=True)
class TrainingRun:
    """A published training run: its size, its hardware and the throughput figures it printed.

    The ledger of :func:`training_runs` holds every run whose MFU the book computes, each with
    the numbers typed from its paper (``source``), so that every chapter recomputes the same
    MFU from the same inputs. Throughput is recorded as printed: any of ``tokens_per_second``
    (the whole job's average tokens/s), ``device_hours`` (GPU- or chip-hours), ``days`` (wall
    time) and ``device_flop_rate`` (the achieved FLOP/s per device a paper states, counted with
    the paper's own numerator); None where the paper prints none.

    The book's MFU convention (:attr:`mfu`) is ``6 * n_params * n_tokens`` over the device-time
    times ``peak``: the FLOPs the model needs by 6ND (weights only, no attention, no
    recomputation) over what the devices could have done in the time. ``basis`` says which
    figure gives the time; by default the first printed of ``tokens_per_second`` (the
    steady-state rate that papers' own MFUs use), ``device_hours``, ``days``. A run measured by
    its wall time (GPU-hours, days) includes restarts, downtime and evaluation, so its MFU is
    lower than a steady-state figure of the same run (PaLM: 45.7% at 238.3K tokens/s, 30% over
    its chip-hours). :meth:`mfu_from` takes another basis, numerator or peak.

    Attributes:
        name (str): Ledger name, e.g. ``"palm-540b"``.
        model (str | None): The registry model (:func:`model`) trained, or None if the registry
            has none.
        n_params (float): The N of 6ND: the parameters a token uses (active ones for a mixture
            of experts), as the paper (or, where said in ``notes``, the book) counts them, > 0.
        n_tokens (float): Training tokens D, > 0.
        hardware (str): The registry accelerator (:func:`hardware`).
        n_devices (int | None): Devices the job spanned, > 0, or None where not printed.
        tokens_per_second (float | None): The whole job's tokens/s (not per device), > 0.
        device_flop_rate (float | None): Achieved FLOP/s per device as printed (with the paper's
            numerator, often counting recomputation), > 0.
        device_hours (float | None): Device-hours (GPU-hours, chip-hours) as printed, > 0.
        days (float | None): Wall-clock days as printed, > 0.
        printed_mfu (float | None): The MFU the paper (or the paper in ``notes``) prints, a
            fraction in (0, 1].
        printed_hfu (float | None): The HFU it prints, a fraction in (0, 1].
        numerator (str): What the paper's own FLOP count includes (of its printed MFU or
            ``device_flop_rate``), e.g. ``"6N + 12LHQT (attention), no recomputation"``, or
            that it states none.
        peak (float | None): The FLOP/s per device the MFU divides by; None (the default) takes
            the hardware's ``peak_16bit`` (bf16, or fp16 without bf16). Stored as a float.
        source (str): Key of ``book/references.bib``: the paper the run is from.
        notes (str): Where each figure comes from, which N is used, what is unverified.
        basis (str | None): The figure the wall time is computed from: "tokens_per_second",
            "device_hours" or "days", one the run has; None picks the first printed in that
            order (and stays None only when none is printed).

    Raises:
        ValueError: If a field is not valid (a count that is not positive, a fraction above 1, a
            name not in the registry, a ``basis`` the run does not print); the message names the
            field (``TrainingRun.n_tokens``, ...).
    """

    name: str
    model: str | None
    n_params: float
    n_tokens: float
    hardware: str
    n_devices: int | None = None
    tokens_per_second: float | None = None
    device_flop_rate: float | None = None
    device_hours: float | None = None
    days: float | None = None
    printed_mfu: float | None = None
    printed_hfu: float | None = None
    numerator: str = ""
    peak: float | None = None
    source: str = ""
    notes: str = field(default="", compare=False)
    basis: str | None = None

    def __post_init__(self):
        set_ = object.__setattr__  # frozen
        for f in ("name", "numerator", "source", "notes"):
            if not isinstance(getattr(self, f), str):
                raise ValueError(f"TrainingRun.{f} must be a str, got {shown(getattr(self, f))}")
        if not self.name:
            raise ValueError("TrainingRun.name must not be empty")
        if self.model is not None:
            _lookup("model", self.model, _MODELS, "TrainingRun.model")
        hw = _lookup("hardware", self.hardware, _HARDWARE, "TrainingRun.hardware")
        set_(self, "n_params", _scalar("TrainingRun.n_params", self.n_params, kind="count"))
        set_(self, "n_tokens", _scalar("TrainingRun.n_tokens", self.n_tokens, kind="count"))
        if self.n_devices is not None:
            set_(self, "n_devices", positive_int("TrainingRun.n_devices", self.n_devices))
        for f, kind in (("tokens_per_second", "count"), ("device_flop_rate", "flop_rate"),
                        ("device_hours", "count"), ("days", None)):
            if getattr(self, f) is not None:
                set_(self, f, _scalar(f"TrainingRun.{f}", getattr(self, f), kind=kind))
        for f in ("printed_mfu", "printed_hfu"):
            if getattr(self, f) is not None:
                set_(self, f, _scalar(f"TrainingRun.{f}", getattr(self, f), upper=1.0))
        set_(self, "peak", hw.peak_16bit if self.peak is None else
             _scalar("TrainingRun.peak", self.peak, kind="flop_rate"))
        printed = [f for f in _FIGURES if getattr(self, f) is not None]
        if self.basis is None:
            set_(self, "basis", printed[0] if printed else None)
        elif self.basis not in _FIGURES or self.basis not in printed:
            raise ValueError(f"TrainingRun.basis must be one of the figures this run prints "
                             f"({', '.join(printed) or 'none'}), got {shown(self.basis)}")
        if self.device_flop_rate is not None and self.device_flop_rate > self.peak * (1 + 1e-9):
            raise ValueError(f"TrainingRun.device_flop_rate {self.device_flop_rate:.4g} FLOP/s is "
                             f"above the peak {self.peak:.4g} FLOP/s it is measured against")
        # Each time figure must describe a possible run (6ND no faster than the peak), and two
        # figures of one run must roughly agree: papers' steady-state rates and whole-run hours
        # differ (PaLM: 1.5x), a typo of a unit or a digit does not stay within 3x.
        usable = [f for f in printed if f == "device_hours" or self.n_devices is not None]
        seconds = {f: self._device_seconds(f) for f in usable}
        for f, t in seconds.items():
            if self.model_flops / (t * self.peak) > 1 + 1e-9:
                raise ValueError(f"TrainingRun.{f}: with n_params, n_tokens and n_devices it "
                                 f"implies 6ND faster than the peak (MFU "
                                 f"{self.model_flops / (t * self.peak):.3g} > 1); check them")
        if len(seconds) > 1 and max(seconds.values()) > 3 * min(seconds.values()):
            raise ValueError(f"TrainingRun: the figures {', '.join(seconds)} disagree by more than "
                             f"3x about the run's device-time; check them (or give one)")

    def _figure(self, basis) -> str:
        basis = self.basis if basis is None else basis
        printed = [f for f in _FIGURES if getattr(self, f) is not None]
        if not printed:
            raise ValueError(f"training run {self.name!r} prints none of tokens_per_second, "
                             "device_hours, days: no time to divide by")
        if basis not in printed:
            raise ValueError(f"basis must be one of the figures run {self.name!r} prints "
                             f"({', '.join(printed)}), got {shown(basis)}")
        return basis

    def _devices(self, figure: str) -> int:
        if self.n_devices is None:
            raise ValueError(f"training run {self.name!r}: n_devices is not printed, so its "
                             f"{figure} give no " + ("wall time" if figure == "device_hours"
                                                     else "device-time"))
        return self.n_devices

    def _seconds(self, basis) -> float:
        figure = self._figure(basis)
        if figure == "days":
            return self.days * 86400.0
        if figure == "tokens_per_second":
            return self.n_tokens / self.tokens_per_second
        return self.device_hours * 3600.0 / self._devices(figure)

    def _device_seconds(self, basis) -> float:
        figure = self._figure(basis)
        if figure == "device_hours":
            return self.device_hours * 3600.0
        return self._seconds(figure) * self._devices(figure)

    @property
    def seconds(self) -> float:
        """float: The run's wall time, seconds, from its ``basis``.

        ``device_hours * 3600 / n_devices``, ``days * 86400``, or ``n_tokens /
        tokens_per_second``.

        Raises:
            ValueError: If the run prints none of those figures, or (from device-hours) no
                ``n_devices``; the message names what is missing.
        """
        return self._seconds(None)

    @property
    def device_seconds(self) -> float:
        """float: Device-seconds of the run (devices x wall time), from its ``basis``.

        ``device_hours * 3600`` needs no device count; the other figures need ``n_devices``.

        Raises:
            ValueError: As :attr:`seconds`.
        """
        return self._device_seconds(None)

    @property
    def model_flops(self) -> float:
        """float: The training FLOPs by the book's convention, ``6 * n_params * n_tokens``."""
        return 6.0 * self.n_params * self.n_tokens

    @property
    def mfu(self) -> float:
        """float: The book's MFU of the run, recomputed: 6ND over device-time x peak.

        ``6 * n_params * n_tokens / (seconds * n_devices * peak)``, the time from ``basis``.
        The numerator is 6N per token (weights only: no attention, no recomputation), which is
        not always the paper's own (see ``numerator``); :meth:`mfu_from` takes another.

        Raises:
            ValueError: As :attr:`seconds`, or if the figures imply an MFU above 1.
        """
        return self.mfu_from()

    def mfu_from(self, basis: str | None = None, *, flops_per_token=None, peak=None) -> float:
        """The run's MFU from a chosen figure, numerator or peak.

        ``flops_per_token * n_tokens / (device-seconds * peak)``: with the defaults, :attr:`mfu`.

        Args:
            basis (str | None): "tokens_per_second", "device_hours" or "days" (one the run
                prints); None takes the run's ``basis``.

        Keyword Args:
            flops_per_token (float | str | None): Model FLOPs per token, > 0 (e.g. PaLM's
                ``6N + 12LHQT``, ``fb.flops_per_token(m)``); None is ``6 * n_params``.
            peak (float | str | Hardware | None): FLOP/s per device: a number, a text rate, or a
                :class:`Hardware` or registry name (its ``peak_16bit``); None is the run's
                ``peak``.

        Returns:
            float: The utilisation, a fraction in (0, 1].

        Raises:
            ValueError: If an argument is not valid, the figure is not printed (or needs an
                ``n_devices`` the run lacks), or the MFU is above 1; the message names it.
        """
        from ._validate import as_peak

        fpt = 6.0 * self.n_params if flops_per_token is None else \
            _scalar("flops_per_token", flops_per_token, kind="count")
        if peak is None:
            p = self.peak
        elif (arr := as_peak("peak", peak)).ndim:
            raise ValueError(f"peak must be one number, got {shown(peak)}")
        else:
            p = float(arr)
        u = fpt * self.n_tokens / (self._device_seconds(basis) * p)
        if u > 1 + 1e-6:
            raise ValueError(f"training run {self.name!r}: implied MFU {u:.3g} is above 1: the "
                             "figures exceed the devices' peak")
        return min(u, 1.0)

    @property
    def flop_rate_mfu(self) -> float | None:
        """float | None: ``device_flop_rate / peak``: the printed FLOP/s per device over the peak.

        The paper's own numerator (often 8N with recomputation, attention and logits in), not
        6N: comparable with ``printed_mfu`` or ``printed_hfu`` only where the paper's definition
        matches. None where the paper prints no ``device_flop_rate``.
        """
        return None if self.device_flop_rate is None else self.device_flop_rate / self.peak


_RUNS = {r.name: r for r in [
    TrainingRun(
        "gpt3-175b", "gpt3-175b", 174.6e9, 300e9, "v100", n_devices=10_000,
        device_flop_rate=24.6e12, days=14.8, printed_mfu=0.213,
        numerator="6N ('non-attention model TFLOP/s'), as PaLM computes its 21.3%",
        source="brown2020gpt3",
        notes="N = 174.6B and D = 300B from Brown et al. Table D.1 (its 3.14e23 FLOPs is 6ND). "
              "GPT-3 prints no throughput: the 24.6 TFLOP/s per GPU and the 21.3% MFU are "
              "PaLM's (chowdhery2022palm, Sec. 4.1: 'based on 24.6 non-attention model TFLOP/s "
              "per GPU, reported by OpenAI via Patterson et al. (2021)'). The 10,000 V100s and "
              "14.8 days are Patterson et al.'s (patterson2021carbon; an assumed GPU count; "
              "secondary, UNVERIFIED here). 24.6 / 125 (the V100's fp16 tensor peak) is 19.7%, not 21.3%: PaLM's "
              "figure would need a peak of about 115.5 TFLOP/s; unresolved."),
    TrainingRun(
        "hyperclova-82b", None, 82e9, 150e9, "a100-80gb", n_devices=1024, days=13.4,
        numerator="none printed (no MFU or FLOP/s in the paper as quoted)",
        source="kim2021hyperclova",
        notes="'It takes 13.4 days to train a model with 82B parameters with 150B tokens' on "
              "'1,024 A100 GPUs' (128 DGX servers): quoted from the paper via Epoch AI and the "
              "FLOPs-calculus blog (bahdanau2022flops), UNVERIFIED against the paper itself. "
              "150B tokens is a checkpoint of a longer run (300B for the released models; a "
              "560B-token corpus). The A100 variant (40 or 80 GB) is not stated: same peak."),
    TrainingRun(
        "mt-nlg-530b", None, 530e9, 270e9, "a100-80gb", n_devices=2240,
        tokens_per_second=65.43e3, device_flop_rate=126e12, printed_mfu=0.302,
        numerator="PaLM's 6N + 12LHQT for the 30.2% (29.7% with 6N); the 126 TFLOP/s: "
                  "Megatron's Eq. 3 (8N with recomputation, plus attention and logits)",
        source="smith2022megatron",
        notes="Throughput from PaLM App. B (chowdhery2022palm): '65.43K tokens/second "
              "(1920x2048/60.1) on 2240 GPUs', 312 TFLOP/s peak, MFU 29.7% without attention, "
              "30.2% with it (its arithmetic gives 29.77%: PaLM truncates). 126 TFLOP/s per GPU at 60.1 s per iteration is Smith et al. "
              "Sec. 2.4 as quoted by a secondary source (UNVERIFIED here); Megatron's Eq. 3 "
              "for this shape reproduces 65.5K tokens/s from it. The 270B tokens and the "
              "GPUs' memory (40 or 80 GB) are UNVERIFIED; the MFU from tokens/s does not "
              "depend on D."),
    TrainingRun(
        "palm-540b", "palm-540b", 540.35e9, 780e9, "tpu-v4", n_devices=6144,
        tokens_per_second=238.3e3, device_hours=6144 * 1200 + 3072 * 336,
        printed_mfu=0.462, printed_hfu=0.578,
        numerator="6N + 12LHQT (non-causal attention), no rematerialisation; the HFU adds "
                  "it (4.10 vs 3.28 TFLOPs per token, Table 22)",
        source="chowdhery2022palm",
        notes="Sec. 4.1 and App. B: 'average training throughput of 238.3K tokens/sec', 6144 "
              "TPU v4 at 275 TFLOP/s; 'MFU of PaLM 540B is 45.7% without self-attention or "
              "46.2% with it' (its arithmetic uses N = 540), HFU 57.8%. N = 540.35B; D = "
              "780B tokens (Table 22: 2.56e24 FLOPs at 3.28 TFLOPs per token). The chip-hours "
              "are App. B's '6144 TPU v4 chips for 1200 hours and 3072 TPU v4 chips for 336 "
              "hours including some downtime and repeated steps': the MFU over them is about "
              "30% (mfu_from('device_hours')); n_devices is the 6144 of the main phase."),
    TrainingRun(
        "opt-175b", None, 175e9, 300e9, "a100-80gb", n_devices=992,
        device_flop_rate=147e12, device_hours=809_472,
        numerator="not stated (the 147 TFLOP/s is 'up to', with no FLOP count given)",
        source="zhang2022opt",
        notes="Sec. 2.4: 'We trained OPT-175B on 992 80GB A100 GPUs ... utilization of up to "
              "147 TFLOP/s per GPU' (weights in FP16). D is not stated: 300B is the "
              "learning-rate schedule's horizon ('over 300B tokens'; the corpus is 180B "
              "tokens), assumed here; with 180B the MFU would be 0.6x. The 809,472 GPU-hours "
              "(992 GPUs x 34 days) are LLaMA's Table 15 (touvron2023llama), not OPT's paper. "
              "147 x 992 x 34 days would be 6ND at D = 408B: the 147 is a peak rate, not an "
              "average."),
    TrainingRun(
        "bloom-176b", None, 176.247e9, 366e9, "a100-80gb", n_devices=384,
        device_flop_rate=150e12, device_hours=1_082_990,
        numerator="not stated (Megatron-DeepSpeed's logged TFLOP/s, which count recomputation, "
                  "attention and logits, is likely; UNVERIFIED)",
        source="bigscience2022bloom",
        notes="'About 150 TFLOP per GPU per second' is BigScience's model card; the paper is "
              "said to print 156 in its best configuration ('half of the theoretical peak'). "
              "N = 176,247M and D = 366B (Table 3) and '1,082,990 compute hours' on '48 nodes, "
              "each having 8 NVIDIA A100 80GB GPUs (a total of 384 GPUs)' (Sec. 3.4.1) are "
              "read from secondary quotes of the paper, UNVERIFIED against it (LLaMA's Table 15 "
              "gives 1,082,880 GPU-hours for 'BLOOM-175B'). 1,082,990 / 384 is 117.5 days, "
              "Luccioni et al.'s '118 days' (luccioni2022bloom)."),
    TrainingRun(
        "llama-7b", "llama-7b", 6.7e9, 1.0e12, "a100-80gb", device_hours=82_432,
        numerator="none printed", source="touvron2023llama",
        notes="N = 6.7B and D = 1.0T from Table 2; 82,432 GPU-hours from Table 15. The GPU "
              "count of the 7B run is not given."),
    TrainingRun(
        "llama-65b", "llama-65b", 65.2e9, 1.4e12, "a100-80gb", n_devices=2048,
        tokens_per_second=380 * 2048, device_hours=1_022_362, days=21,
        numerator="none printed", source="touvron2023llama",
        notes="Sec. 2.4: 'around 380 tokens/sec/GPU on 2048 A100 GPU with 80GB of RAM ... "
              "1.4T tokens takes approximately 21 days' (tokens_per_second is 380 x 2048); "
              "N = 65.2B (Table 2); 1,022,362 GPU-hours (Table 15). Selective recomputation "
              "(saved linear-layer outputs): little recomputed."),
    TrainingRun(
        "llama2-70b", "llama2-70b", 70e9, 2.0e12, "a100-80gb", device_hours=1_720_320,
        numerator="none printed", source="touvron2023llama2",
        notes="N = 70B as published (the released checkpoint has 68.98B); 2.0T tokens; "
              "1,720,320 GPU-hours of A100-80GB (Table 2 and the carbon table). The GPU count "
              "is not given."),
    TrainingRun(
        "llama3-405b", "llama3.1-405b", 405e9, 15.6e12, "h100-sxm", n_devices=16_384,
        device_flop_rate=400e12, device_hours=30.84e6, printed_mfu=0.41,
        numerator="not printed: 'MFU; Chowdhery et al.' (PaLM's definition, 6N + 12LHQT, "
                  "presumably); its 3.8e25 FLOPs budget is 6ND",
        source="grattafiori2024llama3",
        notes="405B trainable parameters, 15.6T tokens, 3.8e25 FLOPs (Sec. 1). The entry holds "
              "Table 4's second row (16,384 GPUs, TP 8, PP 16, DP 128, 8,192-token sequences): "
              "400 TFLOP/s per GPU, 41% BF16 MFU; the others are 8,192 GPUs at 430 (43%) and "
              "16,384 at 380 with 131,072-token sequences (38%). 400 / 989.4 is 40.4%, printed "
              "41%. The 30.84M GPU-hours are the Llama 3.1 model card's (meta2024llama31card: "
              "'total GPU time required for training', on H100-80GB), so they include the "
              "long-context stages, failures and, presumably, post-training."),
    TrainingRun(
        "deepseek-v3", "deepseek-v3", 37_552_282_624, 14.8e12, "h800", n_devices=2048,
        device_hours=2_664_000,
        numerator="none printed (the report gives no MFU)", source="deepseekai2024v3",
        notes="Table 1: 'Pre-Training 2664K' H800 GPU-hours (of 2788K in all, with 119K of "
              "context extension and 5K of post-training); 14.8T tokens; 2048 H800s (Sec. 3.1). "
              "N is the book's active count with both embedding tables (param_count(m, "
              "active=True)), the report's '37B activated'. The GEMMs ran in FP8: against the "
              "fp8 peak the MFU is half (chapter 'Beyond the dense transformer')."),
]}


def training_run(name: str) -> TrainingRun:
    """A published training run by name (e.g. ``"palm-540b"``); see ``training_runs()``.

    Args:
        name (str): A ledger name, exactly as :func:`training_runs` lists it.

    Returns:
        TrainingRun: The ledger's entry (frozen: the same object on every call).

    Raises:
        ValueError: If ``name`` is not a str or not a ledger name; the message lists the
            closest names.
    """
    return _lookup("training run", name, _RUNS)


def training_runs() -> list[str]:
    """Names of every published training run in the ledger, oldest first.

    Returns:
        list[str]: The run names, each accepted by :func:`training_run`.
    """
    return list(_RUNS)
