"""Peak memory and time of chunked vs naive per-token log-probs under a Qwen-sized LM head.

    python benchmarks/logprob_memory.py            # batch 8 × 1024 tokens, V = 151,936, H = 896, float32, CPU
    python benchmarks/logprob_memory.py --quick    # small smoke run

Cases: (a) forward under torch.inference_mode, (b) forward + backward of Σ log-probs, with gradients
w.r.t. the hidden states and the head weight. Each (case, path) runs in a fresh subprocess, which
allocates its inputs (hidden states, head, targets), reads ru_maxrss (the kernel's high-water mark
of resident memory; it equals the current RSS here since nothing large has been freed yet), runs
the path, and reports peak = ru_maxrss after − ru_maxrss before: memory allocated on top of the
inputs. The naive backward is budgeted at 3.5·N·V·4 bytes for N = batch·seq positions (17 GB at
full size; about 14 GB measured); when that does not fit in 85% of the available RAM, the backward
batch is halved until it does, and the JSON says so. Last line printed: one JSON object with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from agro.logprobs import naive_token_logprobs, token_logprobs

FULL = dict(batch=8, seq=1024, vocab=151_936, hidden=896, chunk_size=1024)
QUICK = dict(batch=4, seq=512, vocab=50_000, hidden=256, chunk_size=256)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def run_path(path: str, case: str, h: torch.Tensor, head: nn.Module, targets: torch.Tensor, chunk_size: int):
    """Log-probs by `path`; for case "forward" under inference_mode, for "backward" then ∂Σ/∂(h, head)."""
    with torch.inference_mode(case == "forward"):
        if path == "naive":
            lp = naive_token_logprobs(head(h), targets)
        else:
            lp = token_logprobs(h, head, targets, chunk_size)
    if case == "backward":
        lp.sum().backward()
    return lp


def worker(path: str, case: str, batch: int, seq: int, vocab: int, hidden: int, chunk_size: int, out: str):
    """Run one path in this process; print {"peak_mb", "seconds"} and save its outputs to `out`.

    A warm-up on a tiny head first pages in the kernels' code and starts the thread pool, so that
    the measured peak is the path's own memory.
    """
    torch.manual_seed(0)
    tiny = nn.Linear(hidden, 64, bias=False)
    run_path(path, case, torch.randn(1, 8, hidden, requires_grad=True), tiny, torch.randint(0, 64, (1, 8)), 3)

    h = torch.randn(batch, seq, hidden, requires_grad=case == "backward")
    head = nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.normal_(std=0.02)
    targets = torch.randint(0, vocab, (batch, seq))

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    lp = run_path(path, case, h, head, targets, chunk_size)
    seconds = time.perf_counter() - t0
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB on Linux

    saved = {"logprobs": lp.detach()}
    if case == "backward":
        saved |= {"grad_hidden": h.grad, "grad_weight": head.weight.grad}
    torch.save(saved, out)
    print(json.dumps({"peak_mb": peak_mb, "seconds": seconds}))


def run_case(case: str, sizes: dict, tmp: str) -> dict:
    """Both paths of one case, each in a fresh subprocess; their peaks, times and max |difference|."""
    result, outputs = {"batch": sizes["batch"]}, {}
    for path in ("naive", "chunked"):
        out = os.path.join(tmp, f"{case}_{path}.pt")
        args = [f"--{k.replace('_', '-')}={v}" for k, v in sizes.items()]
        cmd = [sys.executable, __file__, "--worker", path, case, out, *args]
        stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        stats = json.loads(stdout.splitlines()[-1])
        print(json.dumps({"case": case, "path": path, **stats}), flush=True)
        result[f"{path}_peak_mb"] = round(stats["peak_mb"], 1)
        result[f"{path}_s"] = round(stats["seconds"], 2)
        outputs[path] = torch.load(out)
    result["ratio"] = round(result["chunked_peak_mb"] / result["naive_peak_mb"], 4)
    for key in outputs["naive"]:
        diff = (outputs["naive"][key] - outputs["chunked"][key]).abs().max().item()
        result["max_abs_diff" if key == "logprobs" else f"max_abs_diff_{key}"] = diff
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--worker", nargs=3, metavar=("PATH", "CASE", "OUT"), help=argparse.SUPPRESS)
    for k in FULL:
        p.add_argument(f"--{k.replace('_', '-')}", type=int)
    a = p.parse_args()
    sizes = {
        k: getattr(a, k) if getattr(a, k) is not None else v for k, v in (QUICK if a.quick else FULL).items()
    }
    if a.worker:
        worker(*a.worker[:2], **sizes, out=a.worker[2])
        return

    results = {
        "config": {
            **sizes,
            "dtype": "float32",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "memory": "ru_maxrss delta above the allocated inputs, fresh subprocess per (case, path)",
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["forward"] = run_case("forward", sizes, tmp)
        back = dict(sizes)
        while (
            back["batch"] > 1
            and 3.5 * back["batch"] * back["seq"] * back["vocab"] * 4 > 0.85 * available_bytes()
        ):
            back["batch"] //= 2
        results["backward"] = run_case("backward", back, tmp)
        if back["batch"] < sizes["batch"]:
            results["backward"]["note"] = (
                f"batch reduced from {sizes['batch']} to fit the naive backward in RAM"
            )
    cases = [results["forward"], results["backward"]]
    diffs = [v for r in cases for k, v in r.items() if k.startswith("max_abs_diff")]
    results["targets_met"] = all(r["ratio"] <= 0.25 for r in cases) and max(diffs) <= 1e-5
    print(json.dumps(results))


if __name__ == "__main__":
    main()
