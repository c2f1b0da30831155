"""Seed 004's ladder on a CUDA device with PyTorch: ``python -m flopsbook.measure_gpu [--out PATH]``.

The GPU side of the chapter "Measured throughput" (``flopsbook.measure`` is the CPU side). It
measures, with warm-up, repeats and ``torch.cuda.synchronize()`` around each timed run:

- **matmul**: the knee (square products from 256 to 16384, and ``m x 1600 x 6400`` for m from
  32 to 8192, so the seed's 32 x 1600 x 6400 against 8192 x 1600 x 6400) in bf16 and fp16;
- **ladder**: the MLP training step of ``flopsbook.measure.mlp_ladder`` at the seed's sizes
  (batch 8192, d_model 1600, d_ff 6400) in bf16 and fp16, each rung with 16-bit weights and
  with fp32 master weights (cast to 16 bits every step, as mixed-precision training does):
  "matmul", "linear MLP step", "+ activation", "+ residual", "+ layer norm". The backward pass
  is PyTorch's autograd (as in the seed's experiment), the loss gradient ``y - t`` as in numpy,
  and the update plain SGD;
- **gpt2**: a GPT-2-like training step (8 layers of d_model 1600, 25 heads, vocabulary 50257,
  B = 32 sequences of L = 256, as in the seed) with fp32 weights under bf16 autocast, with the
  explicit attention of Hugging Face's GPT-2 of the time and with PyTorch's fused
  ``scaled_dot_product_attention``.

It writes a JSON file (:func:`build_report`): provenance (device name, driver and CUDA
versions, torch version, date, the command line, repeats) and, for each measurement, the
seconds of every repeat, their median and spread, the rate (FLOP/s for a product,
weight-FLOP/s for a training step: 6 x tokens x weights, the seed's convention; the weights
of the GPT step are its layers' matrices and the logits matrix) and the fraction of the
device's dense peak for the dtype, from ``flopsbook.registry`` when the device name matches one
of its accelerators (:func:`registry_name`; None otherwise).

**torch is not a dependency of flopsbook**: it is imported inside :func:`main` only. Without
torch, or without a CUDA device, the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# The rungs measured here (flopsbook.measure.LADDER_RUNGS without the numpy-only master rung:
# on the GPU, master weights are a variant of every rung).
# Where the chapter "Measured throughput" looks for a run (kept in the repository when made).
DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "gpu_ladder.json"

GPU_RUNGS = ("matmul", "linear MLP step", "+ activation", "+ residual", "+ layer norm")
_OPTIONS = {"linear MLP step": {}, "+ activation": {"activation": True},
            "+ residual": {"activation": True, "residual": True},
            "+ layer norm": {"activation": True, "residual": True, "norm": True}}
SEED_SIZES = {"batch": 8192, "d_model": 1600, "d_ff": 6400}
GPT2_SIZES = {"n_layers": 8, "d_model": 1600, "n_heads": 25, "vocab_size": 50257, "batch": 32,
              "seq_len": 256}
# dtype names here -> flopsbook.registry peak keys
_PEAK_KEY = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "tf32": "tf32"}


def registry_name(device: str) -> str | None:
    """The ``flopsbook.registry`` accelerator that a CUDA device name is, or None.

    Matches H200, H800, H100 (SXM only), A100 (SXM4, 40 or 80 GB) and V100 (SXM2); PCIe and NVL
    cards have other clocks and power limits, so other peaks: None.

    Args:
        device (str): The name ``torch.cuda.get_device_name()`` reports, e.g. "NVIDIA H200".

    Returns:
        str | None: A registry name such as ``"h200"``, or None.

    Raises:
        ValueError: If ``device`` is not a str.
    """
    if not isinstance(device, str):
        raise ValueError(f"device must be a str, got {device!r}")
    name = device.upper()
    if "PCIE" in name or "NVL" in name:
        return None
    if "H200" in name:
        return "h200"
    if "H800" in name:
        return "h800"
    if "H100" in name:
        return "h100-sxm"
    if "A100" in name:
        if "80G" in name:
            return "a100-80gb"
        if "40G" in name:
            return "a100-40gb"
        return None
    if "V100" in name:
        return "v100"
    return None


def _peaks(device: str) -> tuple[str | None, dict]:
    name = registry_name(device)
    if name is None:
        return None, {}
    from .registry import hardware
    return name, dict(hardware(name).peak_flops)


def _summary(times) -> dict:
    times = [float(t) for t in times]
    if not times:
        raise ValueError("times must hold at least one time")
    median = float(np.median(times))
    return {"times_s": times, "median_s": median, "low_s": min(times), "high_s": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else 0.0}


def build_report(results: dict, *, device: str, driver, cuda, torch_version: str, command,
                 repeats: int, warmup: int, date: str | None = None, extra=None) -> dict:
    """The JSON-ready report from raw measurements (pure Python: tested without torch).

    Args:
        results (dict): Raw measurements: ``"matmul"``, a list of dicts with ``m``, ``k``,
            ``n``, ``dtype`` and ``times`` (seconds of one product, each repeat); ``"ladder"``
            and ``"gpt2"``, lists of dicts with ``name``, ``dtype``, ``weight_flops`` (of one
            step), ``times`` and any other fields (sizes, ``master``), kept as they are.

    Keyword Args:
        device (str): ``torch.cuda.get_device_name()``.
        driver (str | None): The NVIDIA driver version.
        cuda (str | None): ``torch.version.cuda``.
        torch_version (str): ``torch.__version__``.
        command (list[str]): The command line.
        repeats (int): Timed repeats of each measurement.
        warmup (int): Untimed runs before them.
        date (str | None): ISO 8601 date; None (the default) is now, in UTC.
        extra (dict | None): More provenance (cuDNN version, TF32 settings, ...).

    Returns:
        dict: ``{"provenance": {...}, "matmul": [...], "ladder": [...], "gpt2": [...]}``, each
        measurement with ``median_s``, ``low_s``, ``high_s``, ``spread``, ``rate`` and
        ``fraction_of_peak`` (None without a registry peak for its dtype); ladder rungs also
        have ``fraction_of_matmul`` (of the rate of the "matmul" rung of the same dtype).

    Raises:
        ValueError: If a measurement has no times.
    """
    from . import __version__

    reg, peaks = _peaks(device)
    provenance = {
        "device": device, "registry_name": reg, "peak_flops": peaks, "driver": driver,
        "cuda": cuda, "torch": torch_version, "python": platform.python_version(),
        "flopsbook": __version__,
        "date": date or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(command), "repeats": int(repeats), "warmup": int(warmup),
        "convention": "rate = FLOPs / median seconds; training steps count weight FLOPs, "
                      "6 x tokens x weights (seed 004); fraction_of_peak uses the registry's "
                      "dense peak for the dtype",
        **(extra or {}),
    }

    def peak(dtype):
        return peaks.get(_PEAK_KEY.get(dtype, dtype))

    def finish(entry, flops):
        out = {k: v for k, v in entry.items() if k != "times"}
        out.update(_summary(entry["times"]))
        out["flops" if "weight_flops" not in entry else "weight_flops"] = flops
        out["rate"] = flops / out["median_s"]
        p = peak(entry.get("dtype"))
        out["fraction_of_peak"] = out["rate"] / p if p else None
        return out

    report = {"provenance": provenance, "matmul": [], "ladder": [], "gpt2": []}
    for e in results.get("matmul", []):
        report["matmul"].append(finish(e, 2 * int(e["m"]) * int(e["k"]) * int(e["n"])))
    for key in ("ladder", "gpt2"):
        for e in results.get(key, []):
            report[key].append(finish(e, int(e["weight_flops"])))
    base = {}
    for r in report["ladder"]:
        if r["name"] == "matmul":
            base[r["dtype"]] = r["rate"]
    for r in report["ladder"]:
        r["fraction_of_matmul"] = r["rate"] / base[r["dtype"]] if r["dtype"] in base else None
    return report


def write_report(report: dict, path) -> None:
    """Write ``report`` (from :func:`build_report`) to ``path`` as indented JSON.

    Args:
        report (dict): The report.
        path (str | os.PathLike): The file to write.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# The measurements (torch is passed in: imported by main() only)
# --------------------------------------------------------------------------------------------

def _time(torch, fn, repeats: int, warmup: int, min_seconds: float = 0.02) -> list[float]:
    """Seconds of one call of ``fn``, each repeat: ``inner`` calls between two synchronizes,
    ``inner`` chosen so that a repeat lasts about ``min_seconds`` (short kernels)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, min(1000, int(min_seconds / once)))
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / inner)
    return times


def _dtypes(torch):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}


def _matmuls(torch, repeats, warmup, quick):
    out = []
    squares = [256, 1024, 4096] if quick else [256, 512, 1024, 2048, 4096, 8192, 16384]
    rows = [32, 8192] if quick else [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    shapes = [(n, n, n) for n in squares] + [(m, 1600, 6400) for m in rows]
    for name, dt in _dtypes(torch).items():
        for m, k, n in shapes:
            a = torch.randn(m, k, device="cuda", dtype=dt)
            b = torch.randn(k, n, device="cuda", dtype=dt)
            c = torch.empty(m, n, device="cuda", dtype=dt)
            times = _time(torch, lambda: torch.matmul(a, b, out=c), repeats, warmup)
            out.append({"m": m, "k": k, "n": n, "dtype": name, "times": times})
            del a, b, c
    return out


def _mlp_step(torch, batch, d, f, dt, *, master=False, activation=False, residual=False,
              norm=False):
    """One SGD training step of the ladder's block, as a closure (autograd backward)."""
    F = torch.nn.functional
    wdt = torch.float32 if master else dt
    x = torch.randn(batch, d, device="cuda", dtype=dt, requires_grad=True)  # dx, as numpy's
    t = torch.randn(batch, d, device="cuda", dtype=dt)
    w1 = (torch.randn(d, f, device="cuda", dtype=wdt) / math.sqrt(d)).requires_grad_()
    w2 = (torch.randn(f, d, device="cuda", dtype=wdt) / math.sqrt(f)).requires_grad_()
    gain = torch.ones(d, device="cuda", dtype=wdt, requires_grad=True)
    params = [w1, w2] + ([gain] if norm else [])
    lr = 1e-3 / batch

    def step():
        a1, a2, g = (w1.to(dt), w2.to(dt), gain.to(dt)) if master else (w1, w2, gain)
        h = F.layer_norm(x, (d,), weight=g) if norm else x
        z = h @ a1
        if activation:
            z = torch.relu(z)
        y = z @ a2
        if residual:
            y = y + x
        y.backward(y.detach() - t)  # dL/dy of sum((y - t)^2) / 2
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=-lr)
                p.grad = None
            x.grad = None

    return step


def _ladder(torch, repeats, warmup, sizes):
    b, d, f = sizes["batch"], sizes["d_model"], sizes["d_ff"]
    wflops = 6 * b * 2 * d * f
    out = []
    for name, dt in _dtypes(torch).items():
        x = torch.randn(b, d, device="cuda", dtype=dt)
        w = torch.randn(d, f, device="cuda", dtype=dt)
        z = torch.empty(b, f, device="cuda", dtype=dt)
        times = _time(torch, lambda: torch.matmul(x, w, out=z), repeats, warmup)
        out.append({"name": "matmul", "dtype": name, "master": False, **sizes,
                    "weight_flops": 2 * b * d * f, "times": times})
        del x, w, z
        for rung in GPU_RUNGS[1:]:
            for master in (False, True):
                step = _mlp_step(torch, b, d, f, dt, master=master, **_OPTIONS[rung])
                times = _time(torch, step, repeats, warmup)
                out.append({"name": rung, "dtype": name, "master": master, **sizes,
                            "weight_flops": wflops, "times": times})
                del step
                torch.cuda.empty_cache()
    return out


def _gpt2(torch, repeats, warmup, sizes):
    """A GPT-2-like training step (pre-norm, GELU, learned positions, tied embeddings) with
    fp32 weights under bf16 autocast and SGD; attention explicit or fused."""
    nn, F = torch.nn, torch.nn.functional
    L, d, H, V = sizes["n_layers"], sizes["d_model"], sizes["n_heads"], sizes["vocab_size"]
    B, S = sizes["batch"], sizes["seq_len"]

    class Block(nn.Module):
        def __init__(self, fused):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
            self.fused = fused
            self.register_buffer("mask", torch.ones(S, S, dtype=torch.bool).tril())

        def forward(self, x):
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (u.view(B, S, H, d // H).transpose(1, 2) for u in (q, k, v))
            if self.fused:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                s = (q @ k.transpose(-1, -2)) / math.sqrt(d // H)
                s = s.masked_fill(~self.mask, float("-inf"))
                o = torch.softmax(s.float(), dim=-1).to(q.dtype) @ v
            x = x + self.proj(o.transpose(1, 2).reshape(B, S, d))
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    out = []
    for fused in (False, True):
        emb = nn.Embedding(V, d).cuda()
        pos = nn.Embedding(S, d).cuda()
        blocks = nn.ModuleList([Block(fused) for _ in range(L)]).cuda()
        ln_f = nn.LayerNorm(d).cuda()
        params = list(emb.parameters()) + list(pos.parameters()) + list(blocks.parameters()) \
            + list(ln_f.parameters())
        tokens = torch.randint(0, V, (B, S), device="cuda")
        targets = torch.randint(0, V, (B, S), device="cuda")
        positions = torch.arange(S, device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                x = emb(tokens) + pos(positions)
                for blk in blocks:
                    x = blk(x)
                logits = ln_f(x) @ emb.weight.t()
                loss = F.cross_entropy(logits.float().view(-1, V), targets.view(-1))
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-1e-4)
                    p.grad = None

        weights = L * 12 * d * d + d * V  # layer matrices + the (tied) logits matrix
        times = _time(torch, step, repeats, warmup)
        out.append({"name": "gpt2 step, " + ("fused attention" if fused else
                                             "explicit attention"),
                    "dtype": "bf16", "master": True, **sizes, "weights": weights,
                    "weight_flops": 6 * B * S * weights, "times": times})
        del emb, pos, blocks, ln_f, params
        torch.cuda.empty_cache()
    return out


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def main(argv=None) -> int:
    """Run the GPU ladder and write its JSON; returns the exit status (2: no torch or CUDA).

    Args:
        argv (list[str] | None): Arguments (default ``sys.argv[1:]``): ``--out PATH``
            (required), ``--repeats N`` (default 5), ``--warmup N`` (default 2), ``--quick``
            (fewer matmul shapes), ``--no-gpt2`` (skip the GPT-2-like step).

    Returns:
        int: 0 on success, 2 without torch or without a CUDA device.
    """
    parser = argparse.ArgumentParser(prog="python -m flopsbook.measure_gpu",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help=f"the JSON file to write (default: {DEFAULT_OUT}, where the "
                             "chapter 'Measured throughput' reads it)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of each measurement (default 5; the median is reported)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed runs before them (default 2)")
    parser.add_argument("--quick", action="store_true", help="fewer matmul shapes")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2-like step")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    try:
        import torch
    except ImportError:
        print("flopsbook.measure_gpu needs PyTorch with CUDA (torch is not a dependency of "
              "flopsbook: install it yourself); nothing measured.", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("flopsbook.measure_gpu: no CUDA device (torch.cuda.is_available() is False); "
              "nothing measured.", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (no TF32 shortcuts)
    device = torch.cuda.get_device_name(0)
    results = {"matmul": _matmuls(torch, args.repeats, args.warmup, args.quick),
               "ladder": _ladder(torch, args.repeats, args.warmup, SEED_SIZES)}
    if not args.no_gpt2:
        results["gpt2"] = _gpt2(torch, args.repeats, args.warmup, GPT2_SIZES)
    command = [sys.executable, "-m", "flopsbook.measure_gpu"] + \
        list(sys.argv[1:] if argv is None else argv)
    report = build_report(results, device=device, driver=_driver(), cuda=torch.version.cuda,
                          torch_version=torch.__version__, command=command,
                          repeats=args.repeats, warmup=args.warmup,
                          extra={"cudnn": torch.backends.cudnn.version(),
                                 "allow_tf32": False})
    write_report(report, args.out)
    print(f"wrote {args.out}: {len(report['matmul'])} matmuls, {len(report['ladder'])} rungs, "
          f"{len(report['gpt2'])} GPT steps on {device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
