"""Steps per second of asynchronous generation (the actor k = 1 step ahead) against the synchronous loop.

    python benchmarks/async_generation.py            # 11M model, 8 prompts x 8 generations, 128-token completions
    python benchmarks/async_generation.py --quick    # smoke run

Same work on both sides: the 11M tiny Llama of benchmarks/throughput.py (every completion exactly
`--completion-length` tokens), the same prompts, objective agro, one update per batch, no evaluation,
logging or checkpoints. The synchronous loop runs with `--threads` torch threads (default 2, the cores
of the CI box). The asynchronous run gives the learner `--learner-threads` (default `--threads` − 1: the
cores split) and the actor process 1 (`async_generation: true, max_staleness: 1, actor_threads: 1`), so
that generation of batch t+1 overlaps the update on batch t.

Sides are interleaved, `--rounds` times: sync, async, sync, async, ... each a fresh run of
`--warmup` + `--steps` steps, so that load from other processes hits both alike. steps/s of a run =
measured steps / their summed wall time (`time_step`: for the async side, waiting for the actor
included). Reported: the median over rounds of each side and of the per-round ratio, and the sync
side's phase shares (what overlapping can hide). Last line printed: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from common import REWARD, build_assets, wait_passively

FULL = dict(size="11M", prompts_per_step=8, num_generations=8, prompt_length=32, completion_length=128,
            warmup=2, steps=6, rounds=3)
QUICK = dict(size="3M", prompts_per_step=2, num_generations=4, prompt_length=16, completion_length=16,
             warmup=1, steps=2, rounds=1)
PHASES = ("generation", "reward", "reference", "policy", "optimizer")


def run_side(root: Path, model_dir: Path, s: dict, threads: int, staleness: int | None, index: int,
             learner_threads: int) -> dict:
    """One fresh run; its measured steps/s and mean phase times."""
    from agro.config import load_config
    from agro.trainer import Trainer

    batch = s["prompts_per_step"] * s["num_generations"]
    out = root / f"run{index}"
    settings = {
        "model_name_or_path": model_dir, "train_data": root / "train.jsonl", "prompt_template": "raw",
        "reward_function": REWARD, "truncated_completions": "keep", "objective": "agro", "beta": 0.04,
        "num_generations": s["num_generations"], "prompts_per_step": s["prompts_per_step"],
        "max_completion_length": s["completion_length"], "max_prompt_length": s["prompt_length"],
        "offline_per_group": 0, "learning_rate": 1e-5, "lr_scheduler_type": "constant",
        "mini_batch_size": batch, "generation_batch_size": batch, "max_steps": s["warmup"] + s["steps"],
        "save_steps": 0, "report_to": "none", "output_dir": out, "seed": 0, "logging_steps": 1,
    }
    if staleness is None:
        settings["num_threads"] = threads
    else:
        settings.update(async_generation=True, max_staleness=staleness, num_threads=learner_threads, actor_threads=1)
    Trainer(load_config(None, [f"{k}={v}" for k, v in settings.items()])).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    measured = [r for r in rows if "time_step" in r][s["warmup"]:]
    return {"steps_per_s": len(measured) / sum(r["time_step"] for r in measured),
            "phases_s": {p: statistics.mean(r[f"time_{p}"] for r in measured) for p in PHASES},
            "staleness": statistics.mean(r.get("staleness/mean", 0.0) for r in measured)}


def main() -> None:
    wait_passively()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 3M model, 16 tokens, one round")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the sync side; split 1 + rest async")
    p.add_argument("--rounds", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--completion-length", type=int)
    p.add_argument("--max-staleness", type=int, default=1)
    p.add_argument("--learner-threads", type=int, help="torch threads of the async learner (default: --threads − 1)")
    a = p.parse_args()
    s = dict(QUICK if a.quick else FULL)
    s.update({k: getattr(a, k) for k in ("rounds", "steps", "warmup", "completion_length") if getattr(a, k) is not None})
    sides = {"sync": [], f"async_k{a.max_staleness}": []}
    learner_threads = a.learner_threads or max(1, a.threads - 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, _, params = build_assets(root, s["size"], s["completion_length"], s["prompt_length"])
        for r in range(s["rounds"]):
            for i, (name, staleness) in enumerate((("sync", None), (f"async_k{a.max_staleness}", a.max_staleness))):
                result = run_side(root, model_dir, s, a.threads, staleness, 2 * r + i, learner_threads)
                sides[name].append(result)
                print(json.dumps({"round": r, "side": name, **result}), flush=True)
    sync_name, async_name = sides
    ratios = [b["steps_per_s"] / a_["steps_per_s"] for a_, b in zip(sides[sync_name], sides[async_name])]
    sync_phases = {p: statistics.median(r["phases_s"][p] for r in sides[sync_name]) for p in PHASES}
    print(json.dumps({
        f"{name}_steps_per_s": statistics.median(r["steps_per_s"] for r in runs) for name, runs in sides.items()
    } | {
        "speedup": statistics.median(ratios), "speedup_per_round": ratios,
        "sync_phase_share": {p: v / sum(sync_phases.values()) for p, v in sync_phases.items()},
        "async_phases_s": {p: statistics.median(r["phases_s"][p] for r in sides[async_name]) for p in PHASES},
        "async_staleness_mean": statistics.median(r["staleness"] for r in sides[async_name]),
        "config": {**s, "threads": a.threads, "learner_threads": learner_threads, "actor_threads": 1, "parameters": params, "torch": torch.__version__,
                   "cpus": os.cpu_count(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]},
    }))


if __name__ == "__main__":
    main()
