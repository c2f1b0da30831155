"""The ``flopsbook`` command line: the book's formulas for a planned training run or server.

    flopsbook train llama3-8b --tokens 15T --hardware h100-sxm --devices 1024 --mfu 0.4
    flopsbook memory llama2-7b --seq-len 4096 --hardware a100-80gb --devices 8 --zero-stage 3
    flopsbook serve llama2-7b --hardware h100-sxm --context 4096 --batch 32 --price 2.5
    flopsbook models
    flopsbook hardware

Every subcommand takes ``--json``. Counts and sizes ("15T", "128k", "2GB") go to the formulas
as typed, since the formulas read text quantities themselves (k is 1,000: "4k" is 4,000
tokens, not 4,096); their ``ValueError`` is reworded to name the option. Exit status: 0; 1
when a serving batch does not fit; 2 for a bad option or value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from contextlib import contextmanager

import numpy as np

import flopsbook as fb

from ._validate import as_array
from .units import format_bytes, format_count, format_duration, format_flops, format_rate

GiB = 2**30


class UsageError(Exception):
    """A bad option or value, already worded for the user: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would print its usage block first; one line naming the option is what a
        # reader (or a script's log) needs, and -h still shows the usage.
        raise UsageError(re.sub(r"^argument ", "", message))


@contextmanager
def _options(**names):
    """Reword a flopsbook ``ValueError`` as a ``UsageError`` naming the option.

    flopsbook's messages begin with the argument's name ("n_tokens: cannot read '15Q' ..."),
    so ``names`` maps the formula's argument names to the options their values came from.
    """
    try:
        yield
    except ValueError as err:
        message = str(err)
        word = re.match(r"\w+", message)
        option = names.get(word.group() if word else "")
        if option is None:
            raise UsageError(message) from None
        rest = message[word.end():]
        if rest[:1] in (":", " "):
            # The parsers in flopsbook.units call their argument "text": noise here.
            rest = re.sub(r"^text (?=must)", "", rest.lstrip(": "))
        else:
            rest = message  # e.g. "tensor_parallel='3' must divide n_devices='8'": keep it whole
        raise UsageError(f"{option}: {rest}") from None


def _model(name):
    with _options(name="MODEL"):
        return fb.model(name)


def _hardware(name):
    with _options(name="--hardware"):
        return fb.hardware(name)


def number(text):
    """argparse type for options the formulas take as plain numbers only (MFU, prices, bytes
    per value); argparse names the option when ``float`` fails."""
    return float(text)


def _fraction_or_size(text):
    """``--buffers``: a fraction below 1 (0.1 = 10% of the rest) or a size with its unit
    ("2GB"). A bare number of 1 or more is refused: "--buffers 2" would otherwise be 2 bytes to
    the formula and 2 GB to the reader."""
    try:
        value = float(text)
    except ValueError:
        return text
    if value >= 1:
        raise argparse.ArgumentTypeError(f"a bare number must be a fraction below 1; write a "
                                         f"size with its unit, e.g. '{text}GB'")
    return value


def _price(value):
    if value is None:
        return None
    with _options(price="--price"):
        return float(as_array("price", value))


def _finite(x):
    """JSON has no infinity: a batch that is never compute-bound becomes null."""
    return float(x) if math.isfinite(x) else None


def _table(title, rows):
    width = max(len(label) for label, _ in rows)
    return "\n".join([title] + [f"  {label:<{width}}  {value}" for label, value in rows])


def _gib(x):
    return format_bytes(float(x), binary=True)


def _whole(x, decimals=0):
    """1,024 for a reader; an absurd input's 1e+300 devices must not print 300 digits."""
    return f"{x:,.{decimals}f}" if abs(x) < 1e15 else f"{x:.3g}"


def _int(x):
    """A whole count for JSON, as an int while a float64 holds it exactly."""
    return int(x) if abs(x) < 2**53 else float(x)


# --- subcommands: each returns (JSON object, text, exit status) ---------------------------

def _train(args):
    m, hw = _model(args.model), _hardware(args.hardware)
    price = _price(args.price)
    with _options(n_tokens="--tokens"):
        flops_6nd = float(fb.training_flops(m, args.tokens))
    with _options(n_devices="--devices", mfu="--mfu", dtype="--dtype"):
        seconds = float(fb.training_time(flops_6nd, args.devices, hw, args.mfu,
                                         dtype=args.dtype))
    # Both were checked by the formulas just above; the arithmetic below needs numbers.
    tokens, devices = fb.parse_quantity(args.tokens), fb.parse_quantity(args.devices)
    n, n_active = fb.param_count(m), fb.param_count(m, active=True)
    per_token = float(fb.flops_per_token(m, causal=True))   # what a causal kernel computes
    peak = hw.peak_16bit if args.dtype is None else hw.peak(args.dtype)
    days, device_hours = seconds / 86400, seconds / 3600 * devices
    cost = None if price is None else device_hours * price
    out = {"model": m.name, "params": n, "active_params": n_active, "tokens": tokens, "flops_6nd": flops_6nd,
           "matmul_flops_per_token": per_token, "matmul_context": m.seq_len,
           "flops_matmul": per_token * tokens, "hardware": hw.name, "devices": _int(devices),
           "dtype": args.dtype, "peak_flops_per_device": peak, "mfu": args.mfu,
           "seconds": seconds, "days": days, "device_hours": device_hours, "price": price,
           "cost": cost}
    when = (f"{_whole(days)} days" if days >= 100 else f"{days:.3g} days" if days >= 1 else
            format_duration(seconds))
    if n_active == n:
        rows = [("parameters N", f"{format_count(n)} ({n:,})")]
    else:  # a mixture of experts: C = 6ND counts the parameters a token uses
        rows = [("parameters, all", f"{format_count(n)} ({n:,})"),
                ("active N", f"{format_count(n_active)} ({n_active:,}): what a token uses")]
    rows += [("tokens D", format_count(tokens)),
             ("FLOPs, 6ND", f"{format_flops(flops_6nd)}  (6 x N x D: time and cost use it)"),
             ("FLOPs, matmul count", f"{format_flops(per_token * tokens)}  (flops_per_token x "
              f"D: every matmul, causal attention and logits too, at {m.seq_len:,} tokens of "
              "context)"),
             ("time", f"{when}  (at {format_flops(peak * args.mfu, per_second=True)} per "
                      f"device: MFU x the {format_flops(peak, per_second=True)} peak)"),
             ("device-hours", _whole(device_hours))]
    if cost is not None:
        rows.append(("cost", f"${_whole(cost)} at ${_whole(price, 2)} per device-hour"))
    title = f"Training {m.name} on {_whole(devices)} x {hw.name} at MFU {args.mfu:g}"
    return out, _table(title, rows), 0


def _memory(args):
    m, hw = _model(args.model), _hardware(args.hardware)
    seq_len = m.seq_len if args.seq_len is None else args.seq_len
    kwargs = dict(precision=args.precision, zero_stage=args.zero_stage, n_devices=args.devices,
                  tensor_parallel=args.tensor_parallel,
                  sequence_parallel=args.sequence_parallel, recompute=args.recompute,
                  flash_attention=args.flash_attention, dropout=not args.no_dropout,
                  buffers=args.buffers)
    with _options(batch="--batch", seq_len="--seq-len", n_devices="--devices",
                  tensor_parallel="--tensor-parallel", buffers="--buffers"):
        budget = fb.memory_budget(m, args.batch, seq_len, **kwargs)
        largest = fb.largest_micro_batch(m, seq_len, hw, **kwargs)
    parts = {k: float(v) for k, v in budget.as_dict().items()}
    fits = budget.fits(hw)
    # The formulas checked these; JSON wants them as numbers.
    batch, seq, devices, tp = (fb.parse_quantity(x) for x in
                               (args.batch, seq_len, args.devices, args.tensor_parallel))
    out = {"model": m.name, "hardware": hw.name, "batch": _int(batch), "seq_len": _int(seq),
           "devices": _int(devices), "tensor_parallel": _int(tp),
           "zero_stage": args.zero_stage, "recompute": args.recompute,
           "precision": args.precision, "bytes": parts, "device_memory": hw.memory_bytes,
           "fits": fits, "largest_micro_batch": largest}
    rows = [(k.replace("_", " "), f"{_gib(v):>10}  ({_whole(v)} B)") for k, v in parts.items()]
    rows += [("device memory", f"{_gib(hw.memory_bytes):>10}  ({_whole(hw.memory_bytes)} B)"),
             ("fits", "yes" if fits else "no"),
             ("largest micro-batch", _whole(largest) if largest else
              "0 (not even one sequence fits)")]
    title = (f"Training memory of {m.name} per device: micro-batch {_whole(batch)} x "
             f"{_whole(seq)} tokens, {_whole(devices)} x {hw.name}, ZeRO-{args.zero_stage}, "
             f"recompute {args.recompute}, {args.precision} precision")
    return out, _table(title, rows), 0


def _serve(args):
    m, hw = _model(args.model), _hardware(args.hardware)
    price = _price(args.price)
    context = m.seq_len if args.context is None else args.context
    per_device = dict(bytes_per_param=args.weight_bytes, kv_bytes_per_value=args.kv_bytes,
                      n_devices=args.devices)
    with _options(batch="--batch", context="--context", seq_len="--context",
                  n_devices="--devices", bytes_per_param="--weight-bytes",
                  kv_bytes_per_value="--kv-bytes", bytes_per_value="--kv-bytes"):
        kv_one = float(fb.kv_cache_bytes(m, 1, context, args.kv_bytes))
        kv_all = float(fb.kv_cache_bytes(m, args.batch, context, args.kv_bytes))
        most = float(fb.max_batch(m, hw, context, **per_device))
        critical = float(fb.critical_batch(m, hw, context, **per_device))
    batch, ctx, devices = (fb.parse_quantity(x) for x in (args.batch, context, args.devices))
    weights = fb.param_count(m) * args.weight_bytes
    memory = devices * hw.memory_bytes
    fits = batch <= most
    out = {"model": m.name, "hardware": hw.name, "devices": _int(devices),
           "batch": _int(batch), "context": _int(ctx),
           "weight_bytes_per_param": args.weight_bytes, "kv_bytes_per_value": args.kv_bytes,
           "weights_bytes": weights, "kv_cache_bytes_per_sequence": kv_one,
           "kv_cache_bytes_batch": kv_all, "device_memory": hw.memory_bytes,
           "total_memory": memory, "max_batch": _int(most),
           "fits": fits, "critical_batch": _finite(critical), "step_seconds": None,
           "tokens_per_second": None, "bound": None, "price": price,
           "dollars_per_million_tokens": None}
    rows = [("weights", f"{_gib(weights)} ({args.weight_bytes:g} B per parameter)"),
            ("KV cache per sequence", _gib(kv_one)),
            ("KV cache, whole batch", _gib(kv_all)),
            ("memory needed", f"{_gib(weights + kv_all)} of {_gib(memory)}"),
            ("max batch", _whole(most))]
    title = (f"Serving {m.name} on {_whole(devices)} x {hw.name}: batch {_whole(batch)}, "
             f"context {_whole(ctx)} tokens")
    if not fits:
        if weights >= memory:
            why = f"the weights alone ({_gib(weights)}) do not fit"
        elif most == 0:
            why = "the weights leave no room for one sequence's KV cache"
        else:
            why = f"at most {_whole(most)} sequences of {_whole(ctx)} tokens fit beside the weights"
        out["error"] = (f"does not fit: a batch of {_whole(batch)} needs "
                        f"{_gib(weights + kv_all)} on {_whole(devices)} x {hw.name} "
                        f"({_gib(memory)}); {why}. Lower --batch or --context, or add --devices")
        return out, _table(title, rows), 1
    step = fb.decode_step_time(m, hw, batch, context, **per_device)
    out.update(step_seconds=float(step.time), tokens_per_second=float(step.tokens_per_second),
               bound=step.bound)
    rows += [("decode step", f"{format_duration(float(step.time))} ({step.bound}-bound)"),
             ("throughput", f"{_whole(float(step.tokens_per_second))} tokens/s"),
             ("critical batch", f"{critical:,.1f} (compute-bound from "
              f"{_whole(math.ceil(critical))} sequences)" if math.isfinite(critical) else
              "none (memory-bound at every batch at this context)")]
    if price is not None:
        cost = float(fb.serving_cost(m, hw, batch, context, price, **per_device))
        out["dollars_per_million_tokens"] = cost
        rows.append(("cost", f"${cost:,.3g} per million tokens at ${_whole(price, 2)} per "
                     "device-hour (decode roofline: a lower bound)"))
    return out, _table(title, rows), 0


def _models(args):
    rows = [{"name": name, "params": fb.param_count(name),
             "active_params": fb.param_count(name, active=True), "source": fb.model(name).source}
            for name in fb.models()]
    text = [f"{'model':<17}{'parameters':>11}{'exact':>18}{'active':>8}  source"]
    text += [f"{r['name']:<17}{format_count(r['params']):>11}{r['params']:>18,}"
             f"{format_count(r['active_params']):>8}  {r['source']}" for r in rows]
    return {"models": rows}, "\n".join(text), 0


def _hardwares(args):
    rows = []
    for name in fb.hardwares():
        h = fb.hardware(name)
        rows.append({"name": name, "memory_bytes": h.memory_bytes, "memory_gib": h.memory_bytes
                     / GiB, "bandwidth": h.bandwidth, "peak_16bit": h.peak_16bit,
                     "peak_16bit_dtype": "bf16" if "bf16" in h.peak_flops else "fp16",
                     "intra_node_bandwidth": h.intra_node_bandwidth,
                     "inter_node_bandwidth": h.inter_node_bandwidth,
                     "devices_per_node": h.devices_per_node, "source": h.source})

    def link(v):  # one direction; "-" where the registry does not know it
        return "-" if v is None else format_rate(v)

    text = [f"{'hardware':<11}{'memory':>11}{'bandwidth':>12}{'16-bit peak':>20}"
            f"{'in node':>12}{'per node':>9}{'network':>12}  source"]
    text += [f"{r['name']:<11}{r['memory_gib']:>7.4g} GiB{format_rate(r['bandwidth']):>12}"
             f"{format_flops(r['peak_16bit'], per_second=True):>15} {r['peak_16bit_dtype']}"
             f"{link(r['intra_node_bandwidth']):>12}{r['devices_per_node'] or '-':>9}"
             f"{link(r['inter_node_bandwidth']):>12}  {r['source']}" for r in rows]
    text.append("Links are one direction per device (datasheets add both directions); 'network' "
                "is one device's share of its node's cards.")
    return {"hardware": rows}, "\n".join(text), 0


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object")
    parser = _Parser(prog="flopsbook", description="The FLOPs Book's formulas: FLOPs, time, "
                     "memory and serving cost of transformer language models.")
    parser.add_argument("--version", action="version", version=f"flopsbook {fb.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, run, help):
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run)
        if run in (_train, _memory, _serve):
            p.add_argument("model", metavar="MODEL", help="a registry name (flopsbook models)")
            p.add_argument("--hardware", required=True,
                           help="a registry name (flopsbook hardware)")
        return p

    p = command("train", _train, "Training FLOPs, time, device-hours and cost.")
    p.add_argument("--tokens", required=True, help="training tokens D, e.g. 15T")
    p.add_argument("--devices", default="1", help="devices the job spans (default 1)")
    p.add_argument("--mfu", type=number, required=True, help="model FLOPs utilisation, e.g. 0.4")
    p.add_argument("--price", type=number, help="dollars per device-hour")
    p.add_argument("--dtype", help="which peak of the hardware (default: its 16-bit peak)")

    p = command("memory", _memory, "Per-device memory of one training step: will it fit?")
    p.add_argument("--batch", default="1", help="micro-batch per device (default 1)")
    p.add_argument("--seq-len", help="tokens per sequence, e.g. 4096 or 32k = 32,000 "
                   "(default: the model's)")
    p.add_argument("--devices", default="1", help="devices the job spans (default 1)")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=0)
    p.add_argument("--recompute", choices=("none", "selective", "full"), default="none")
    p.add_argument("--flash-attention", action="store_true")
    p.add_argument("--no-dropout", action="store_true", help="models trained without dropout")
    p.add_argument("--precision", choices=("mixed", "fp32", "bf16"), default="mixed")
    p.add_argument("--tensor-parallel", default="1", help="tensor-parallel degree (default 1)")
    p.add_argument("--sequence-parallel", action="store_true")
    p.add_argument("--buffers", type=_fraction_or_size, default=0.0,
                   help="allowance: a fraction of the rest (0.1) or a size (2GB)")

    p = command("serve", _serve, "KV cache, batch, decode speed and cost of serving.")
    p.add_argument("--context", help="keys each new token attends to, e.g. 8192 or 128k = "
                   "128,000 (default: the model's)")
    p.add_argument("--batch", default="1", help="sequences decoded together (default 1)")
    p.add_argument("--devices", default="1", help="tensor-parallel devices (default 1)")
    p.add_argument("--price", type=number, help="dollars per device-hour")
    p.add_argument("--weight-bytes", type=number, default=2.0,
                   help="bytes per parameter (default 2; 1 for 8-bit, 0.5 for 4-bit)")
    p.add_argument("--kv-bytes", type=number, default=2.0,
                   help="bytes per KV cache value (default 2)")

    command("models", _models, "The registry's models.")
    command("hardware", _hardwares, "The registry's accelerators.")
    return parser


def main(argv=None) -> int:
    """Run the ``flopsbook`` command line.

    Args:
        argv: the arguments after the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when a serving batch does not fit, 2 for a bad
        option or value (after one line on stderr naming it).
    """
    try:
        args = _parser().parse_args(argv)
        # flopsbook reports an overflow itself, as a ValueError; numpy's warning would be a
        # second line on stderr.
        with np.errstate(all="ignore"):
            out, text, status = args.run(args)
        # allow_nan=False: an infinity or NaN must fail here, not produce invalid JSON.
        shown = json.dumps(out, indent=2, allow_nan=False) if args.json else text
    except (UsageError, ValueError) as err:
        # A ValueError that _options did not reword comes after the options were read (a
        # result too large for a float64, say): still one line, still status 2.
        print(f"flopsbook: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    try:
        print(shown, flush=True)
    except BrokenPipeError:
        # The reader went away (flopsbook models | head): not an error. Point stdout at devnull
        # so that the interpreter's last flush does not raise again (Python's signal docs).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if "error" in out:
        print(f"flopsbook: {out['error']}", file=sys.stderr)
    return status
