"""The command line, run as a user runs it: ``python -m flopsbook ...`` in a subprocess.

A Python start costs about 0.2 s, so four commands run as subprocesses, side by side, in a
module fixture (the entry point, exit codes, no traceback at all) and the others call ``main``
in this process; the tests read their results. Expected values come from the formulas
called here or by hand, never from the command's own output.
"""

import io
import json
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import flopsbook as fb
from flopsbook.cli import main

N_LLAMA2_7B = 6_738_415_616  # parameters of the released Llama 2 7B checkpoint
GiB = 2**30

TRAIN = ("train", "llama2-7b", "--tokens", "2T", "--hardware", "a100-80gb", "--devices", "2048",
         "--mfu", "0.4", "--price", "2")
MEMORY = ("memory", "llama2-7b", "--seq-len", "4096", "--hardware", "a100-80gb", "--devices",
          "8", "--zero-stage", "3", "--recompute", "full", "--no-dropout")
SERVE = ("serve", "llama2-7b", "--hardware", "h100-sxm", "--context", "4096", "--batch", "32",
         "--price", "2.5")
TOO_BIG = ("serve", "llama2-7b", "--hardware", "h100-sxm", "--context", "4096", "--batch", "34")

# (arguments, the option the one-line error must name)
BAD = [
    (("train", "llama2-7b", "--tokens", "15Q", "--hardware", "h100-sxm", "--mfu", "0.4"),
     "--tokens"),
    (("train", "llama9", "--tokens", "15T", "--hardware", "h100-sxm", "--mfu", "0.4"), "MODEL"),
    (("train", "llama2-7b", "--tokens", "15T", "--hardware", "h100-sxm", "--mfu", "0.4",
      "--devices", "-8"), "--devices"),
    (("train", "llama2-7b", "--tokens", "15T", "--hardware", "h100-sxm", "--mfu", "forty"),
     "--mfu"),
    (("serve", "llama2-7b", "--hardware", "h100"), "--hardware"),
    (("serve", "llama2-7b", "--hardware", "h100-sxm", "--kv-bytes", "0"), "--kv-bytes"),
    (("memory", "llama2-7b", "--hardware", "a100-80gb", "--zero-stage", "4"), "--zero-stage"),
    (("memory", "llama2-7b", "--hardware", "a100-80gb", "--seq-len", "4q"), "--seq-len"),
    (("memory", "llama2-7b", "--hardware", "a100-80gb", "--buffers", "2"), "--buffers"),
    (("frobnicate",), "COMMAND"),
]

# A mixture of experts: 6ND counts the active parameters (Mixtral 8x7B's "12.9B active").
TRAIN_MOE = ("train", "mixtral-8x7b", "--tokens", "1T", "--hardware", "h100-sxm", "--mfu", "0.4")
N_MIXTRAL, N_MIXTRAL_ACTIVE = 46_702_792_704, 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336

COMMANDS = [TRAIN, TRAIN_MOE, MEMORY, SERVE, ("models",), ("hardware",)]
COMMANDS += [c + ("--json",) for c in COMMANDS] + [TOO_BIG + ("--json",), BAD[0][0], BAD[-1][0]]


# Run as real processes (the entry point, no traceback, exit codes); the rest call main() here,
# which is the same code without a Python start each (the suite's time budget is tight).
AS_PROCESSES = {TRAIN, TRAIN + ("--json",), BAD[0][0], BAD[-1][0]}


def _in_process(args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def run():
    def one(args):
        if args not in AS_PROCESSES:
            return _in_process(args)
        return subprocess.run([sys.executable, "-m", "flopsbook", *args], capture_output=True,
                              text=True, timeout=60)

    with ThreadPoolExecutor(max_workers=4) as pool:
        processes = dict(zip(AS_PROCESSES, pool.map(one, AS_PROCESSES)))
    done = {args: processes.get(args) or one(args) for args in COMMANDS}
    return done.__getitem__


def ok_json(run, args):
    out = run(args + ("--json",))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return json.loads(out.stdout)


def test_train(run):
    flops = 6 * N_LLAMA2_7B * 2e12                       # 6ND
    seconds = flops / (2048 * 312e12 * 0.4)              # A100 dense bf16 peak
    got = ok_json(run, TRAIN)
    assert got["params"] == N_LLAMA2_7B and got["tokens"] == 2e12
    assert got["flops_6nd"] == pytest.approx(flops, rel=1e-12)
    assert got["flops_matmul"] == pytest.approx(fb.flops_per_token("llama2-7b", causal=True) * 2e12)
    assert got["flops_matmul"] > got["flops_6nd"]       # attention and logits on top of 6N
    assert got["seconds"] == pytest.approx(seconds)
    assert got["days"] == pytest.approx(seconds / 86400)
    assert got["device_hours"] == pytest.approx(seconds / 3600 * 2048)  # 179,979
    assert got["cost"] == pytest.approx(seconds / 3600 * 2048 * 2)

    text = run(TRAIN)
    assert text.returncode == 0 and text.stderr == ""
    for shown in ("6.74B (6,738,415,616)", fb.format_flops(flops), "6ND", "matmul",
                  "179,979", "$359,958", f"{seconds / 86400:.3g} days"):
        assert shown in text.stdout, shown


def test_train_a_mixture_of_experts_uses_the_active_parameters(run):
    got = ok_json(run, TRAIN_MOE)
    assert (got["params"], got["active_params"]) == (N_MIXTRAL, N_MIXTRAL_ACTIVE)
    assert got["flops_6nd"] == pytest.approx(6 * N_MIXTRAL_ACTIVE * 1e12, rel=1e-12)
    text = run(TRAIN_MOE).stdout
    assert "12.9B (12,879,925,248)" in text and "active" in text


def test_memory(run):
    n, s, h = N_LLAMA2_7B, 4096, 4096
    got = ok_json(run, MEMORY)
    parts = got["bytes"]
    # Mixed-precision Adam, ZeRO-3 over 8 devices: 2 + 4 + 2 + 8 bytes per parameter, / 8.
    assert (parts["weights"], parts["master_weights"], parts["gradients"],
            parts["optimizer_states"]) == (2 * n / 8, 4 * n / 8, 2 * n / 8, 8 * n / 8)
    assert parts["activations"] == 32 * s * h * 2        # full recomputation: each layer's input
    assert parts["logits"] == s * 32000 * 4              # fp32 logits of one sequence
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    kw = dict(zero_stage=3, n_devices=8, recompute="full", dropout=False)
    assert parts["total"] == pytest.approx(float(fb.memory_budget("llama2-7b", 1, s, **kw).total))
    assert got["device_memory"] == 80 * GiB and got["fits"] is True
    assert got["largest_micro_batch"] == fb.largest_micro_batch("llama2-7b", s, "a100-80gb", **kw)

    text = run(MEMORY)
    assert text.returncode == 0 and text.stderr == ""
    assert "1,684,603,904 B" in text.stdout               # 2N/8, the weights
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines()[1:]
                 if line.split()[0] in ("fits", "total"))
    assert lines["fits"].strip() == "yes"
    assert f"({parts['total']:,.0f} B)" in lines["total"]
    assert f"largest micro-batch    {got['largest_micro_batch']}" in text.stdout


def test_serve(run):
    kv = 2 * 32 * 32 * 128 * 4096 * 2                    # K and V, layers, heads, d_head, 16 bits
    assert kv == 2 * GiB
    step = (2 * N_LLAMA2_7B + 32 * kv) / 3.35e12         # memory-bound: weights + caches read
    got = ok_json(run, SERVE)
    assert got["kv_cache_bytes_per_sequence"] == kv and got["kv_cache_bytes_batch"] == 32 * kv
    assert got["max_batch"] == (80 * GiB - 2 * N_LLAMA2_7B) // kv == 33
    assert got["fits"] is True and got["bound"] == "memory"
    assert got["device_memory"] == got["total_memory"] == 80 * GiB   # one device: the same
    assert got["step_seconds"] == pytest.approx(step)
    assert got["tokens_per_second"] == pytest.approx(32 / step)
    assert got["critical_batch"] is None                 # inf: never compute-bound at 4k
    assert fb.critical_batch("llama2-7b", "h100-sxm", 4096) == float("inf")
    assert got["dollars_per_million_tokens"] == pytest.approx(1e6 * 2.5 / 3600 / (32 / step))

    text = run(SERVE)
    assert text.returncode == 0 and text.stderr == ""
    for shown in ("2 GiB", "64 GiB", f"{32 / step:,.0f} tokens/s", "memory-bound"):
        assert shown in text.stdout, shown


def test_serve_batch_that_does_not_fit(run, capsys):
    out = run(TOO_BIG + ("--json",))
    assert out.returncode == 1
    assert out.stderr.startswith("flopsbook: does not fit") and "at most 33" in out.stderr
    assert out.stderr.count("\n") == 1
    got = json.loads(out.stdout)
    assert got["fits"] is False and got["max_batch"] == 33 and got["tokens_per_second"] is None

    assert main(list(TOO_BIG)) == 1
    text = capsys.readouterr()
    assert "max batch              33" in text.out and "tokens/s" not in text.out
    assert text.err.startswith("flopsbook: does not fit")


def test_models_and_hardware(run):
    got = ok_json(run, ("models",))["models"]
    assert [m["name"] for m in got] == fb.models()
    assert {m["name"]: m["params"] for m in got}["llama2-7b"] == N_LLAMA2_7B
    row = next(line for line in run(("models",)).stdout.splitlines()
               if line.startswith("llama2-7b "))
    assert row.split() == ["llama2-7b", "6.74B", "6,738,415,616", "6.74B", "touvron2023llama2"]
    mixtral = {m["name"]: m for m in got}["mixtral-8x7b"]
    assert (mixtral["params"], mixtral["active_params"]) == (N_MIXTRAL, N_MIXTRAL_ACTIVE)

    hw = {h["name"]: h for h in ok_json(run, ("hardware",))["hardware"]}
    assert list(hw) == fb.hardwares()
    assert (hw["h100-sxm"]["memory_gib"], hw["h100-sxm"]["bandwidth"],
            hw["h100-sxm"]["peak_16bit"]) == (80, 3.35e12, 989.4e12)
    row = next(line for line in run(("hardware",)).stdout.splitlines()
               if line.startswith("h100-sxm "))
    assert row.split() == ["h100-sxm", "80", "GiB", "3.35", "TB/s", "989", "TFLOP/s", "bf16",
                           "450", "GB/s", "8", "50", "GB/s", "nvidia2022h100"]
    # NVLink 4's "900 GB/s" adds both directions; one 400 Gb/s card per GPU.
    assert (hw["h100-sxm"]["intra_node_bandwidth"], hw["h100-sxm"]["inter_node_bandwidth"],
            hw["h100-sxm"]["devices_per_node"]) == (450e9, 50e9, 8)
    assert hw["tpu-v4"]["inter_node_bandwidth"] is None      # unknown, and shown as "-"


@pytest.mark.parametrize("args, option", BAD, ids=[option for _, option in BAD])
def test_bad_input_is_one_line_naming_the_option(args, option, capsys):
    assert main(list(args)) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1, out.err
    assert out.err.startswith(f"flopsbook: error: {option}: "), out.err


@pytest.mark.parametrize("args, option", [BAD[0], BAD[-1]], ids=["--tokens", "COMMAND"])
def test_bad_input_as_a_subprocess(run, args, option):
    out = run(args)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"flopsbook: error: {option}: "), out.stderr
    if option == "--tokens":
        assert "cannot read '15Q' as a count" in out.stderr


def test_readme_examples_are_real_output():
    # The README's console blocks are copied from real runs: re-run them, so they never go stale.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```console\n\$ flopsbook ([^\n]+)\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for command, shown in blocks:
        out = subprocess.run([sys.executable, "-m", "flopsbook", *command.split()],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == shown.strip(), command
