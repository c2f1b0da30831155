"""Published model configurations and accelerators, each with a key into book/references.bib.

``model(name)`` and ``hardware(name)`` look one up, ``models()`` and ``hardwares()`` list the
names, and every formula that takes a model or an accelerator also takes its name. A
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
