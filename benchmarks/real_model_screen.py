"""The screen behind configs/smollm2-135m-cpu.yaml: SmolLM2-135M-Instruct on reasoning-gym tasks, on a CPU.

Two phases, each cell run once and appended to --out as a JSON line (a rerun skips the cells already there):

  reference  π_ref on each task: greedy held-out accuracy, and k samples per problem at each temperature:
             mean@k, pass@k, the share of completions cut at the length limit, and the share of groups of
             size n ∈ {2, 4, 8, …, k} whose rewards are all equal (no signal for a group baseline).
  train      `agro train CONFIG` on each task × truncated_completions × seed for --max-steps steps with
             held-out evaluations; the accuracy curve, clipped ratio and step times from metrics.jsonl.

    python benchmarks/real_model_screen.py reference --tasks chain_sum,products --out runs/screen.jsonl
    python benchmarks/real_model_screen.py train --tasks chain_sum --truncated zero,keep --seeds 0,1 \
        --out runs/screen.jsonl
    python benchmarks/real_model_screen.py report --out runs/screen.jsonl   # markdown tables of what ran

Every cell uses the config's prompt, instruction, reward and length; only the task, its kwargs, the
truncation rule, the seed and the step budget change. docs/results/real-model.md reports the results.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import CONFIG, TASKS, agro_cli, append, done_cells


def data_kwargs(task: str, size: int, seed: int) -> str:
    return json.dumps({**TASKS[task][1], "size": size, "seed": seed})


def zero_std_share(rewards: list[list[float]], n: int) -> float:
    """Share of groups of n (consecutive samples of one problem) whose rewards are all equal."""
    groups = [rs[i : i + n] for rs in rewards for i in range(0, len(rs) - n + 1, n)]
    return sum(len(set(g)) == 1 for g in groups) / len(groups)


def reference(args, config: dict, out: Path) -> None:
    common = ["--model", args.model or config["model_name_or_path"], "--prompt-template", config["prompt_template"],
              "--instruction", config.get("instruction") or "", "--max-completion-length",
              str(config["max_completion_length"]), "--batch-size", "64"]
    for task in args.tasks:
        settings = [("greedy", 1, 1.0)] + [(f"T{t}", args.samples, t) for t in args.temperatures]
        for name, k, temperature in settings:
            cell = f"reference/{task}/{name}"
            if cell in done_cells(out):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "eval.json"
                start = time.time()
                agro_cli("eval", *common, "--data", f"reasoning_gym:{TASKS[task][0]}", "--data-kwargs",
                         data_kwargs(task, args.problems, 1), "--num-samples", str(k), "--temperature",
                         str(temperature), "--out", str(path))
                result = json.loads(path.read_text())
            rewards = [s["rewards"] for s in result["samples"]]
            row = {"cell": cell, "task": task, "setting": name, "temperature": temperature, "k": k,
                   "problems": result["num_problems"], "accuracy": result["accuracy"],
                   f"pass@{k}": result[f"pass@{k}"], "clipped_ratio": result["truncated"],
                   "seconds": round(time.time() - start, 1),
                   "examples": [[s["completions"][0], s["rewards"][0]] for s in result["samples"][:8]]}
            if k > 1:
                row["zero_std"] = {n: zero_std_share(rewards, n) for n in (2, 4, 8, 16) if n <= k}
            append(out, row)


def train(args, out: Path) -> None:
    for task in args.tasks:
        for rule in args.truncated:
            for seed in args.seeds:
                cell = f"train/{task}/{rule}/seed{seed}/steps{args.max_steps}"
                if cell in done_cells(out):
                    continue
                run_dir = Path(args.runs) / cell.replace("/", "-")
                if run_dir.exists():  # an interrupted cell: start it again
                    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
                start = time.time()
                agro_cli("train", str(args.config), "--set", f"train_data=reasoning_gym:{TASKS[task][0]}",
                         "--set", f"train_data_kwargs={data_kwargs(task, 1000, seed)}",
                         "--set", f"eval_data=reasoning_gym:{TASKS[task][0]}",
                         "--set", f"eval_data_kwargs={data_kwargs(task, args.problems, 1)}",
                         "--set", f"truncated_completions={rule}", "--set", f"seed={seed}",
                         "--set", f"max_steps={args.max_steps}", "--set", f"output_dir={run_dir}",
                         *(["--set", f"model_name_or_path={args.model}"] if args.model else []))
                rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
                curve = [[r["step"], r["eval/accuracy"]] for r in rows if "eval/accuracy" in r]
                steps = [r for r in rows if "time_step" in r]
                settings = yaml.safe_load((run_dir / "config.yaml").read_text())
                append(out, {
                    "cell": cell, "task": task, "truncated_completions": rule, "seed": seed,
                    "temperature": settings["temperature"], "num_generations": settings["num_generations"],
                    "bf16": settings.get("bf16", False),
                    "max_steps": args.max_steps, "accuracy_start": curve[0][1], "accuracy_end": curve[-1][1],
                    "curve": curve, "seconds": round(time.time() - start, 1),
                    "step_seconds_median": sorted(r["time_step"] for r in steps)[len(steps) // 2],
                    "clipped_ratio_first": steps[0].get("completions/clipped_ratio"),
                    "clipped_ratio_last": steps[-1].get("completions/clipped_ratio"),
                    "length_first": steps[0].get("length/on_policy"), "length_last": steps[-1].get("length/on_policy"),
                    "frac_reward_zero_std": sum(r["frac_reward_zero_std"] for r in steps) / len(steps),
                    # the largest resident memory of any run this process started so far (Linux: KiB)
                    "peak_rss_gb_max_so_far": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
                })


def interval(p: float, n: int) -> str:
    """p ± the half-width of its 95% normal interval over n problems."""
    return f"{p:.3f} ± {1.96 * (p * (1 - p) / n) ** 0.5:.3f}"


def report(out: Path) -> None:
    """Markdown tables of every cell in --out: reference rows, then training rows."""
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    reference_rows = [r for r in rows if r["cell"].startswith("reference/")]
    if reference_rows:
        print("| task | setting | problems | accuracy (mean@k) | pass@k | cut at the limit | groups with equal rewards "
              "(n = 2, 4, 8) |\n|---|---|---|---|---|---|---|")
        for r in reference_rows:
            zero = ", ".join(f"{v:.2f}" for v in r.get("zero_std", {}).values()) or "–"
            accuracy, pass_at_k = interval(r["accuracy"], r["problems"] * r["k"]), r[f"pass@{r['k']}"]
            print(f"| {r['task']} | {r['setting']} | {r['problems']} | {accuracy} | {pass_at_k:.3f} | "
                  f"{r['clipped_ratio']:.2f} | {zero} |")
    train_rows = [r for r in rows if r["cell"].startswith("train/")]
    if train_rows:
        print("\n| task | truncated_completions | temperature | seed | steps | held-out accuracy by step | change | "
              "cut at the limit (first → last step) | length (tokens) | groups with equal rewards | step (s, median) |"
              "\n|---|---|---|---|---|---|---|---|---|---|---|")
        for r in train_rows:
            curve = " → ".join(f"{a:.3f}" for _, a in r["curve"])
            print(f"| {r['task']} | {r['truncated_completions']} | {r['temperature']} | {r['seed']} | {r['max_steps']} | "
                  f"{curve} | "
                  f"{r['accuracy_end'] - r['accuracy_start']:+.3f} | {r['clipped_ratio_first']:.2f} → "
                  f"{r['clipped_ratio_last']:.2f} | {r['length_first']:.1f} → {r['length_last']:.1f} | "
                  f"{r['frac_reward_zero_std']:.2f} | {r['step_seconds_median']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("reference", "train", "report"))
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--model", default=None, help="instead of the config's model_name_or_path")
    parser.add_argument("--problems", type=int, default=128, help="held-out problems (seed 1)")
    parser.add_argument("--samples", type=int, default=8, help="reference: samples per problem")
    parser.add_argument("--temperatures", default="1.0,0.7", help="reference: sampling temperatures")
    parser.add_argument("--truncated", default="zero", help="train: truncated_completions rules")
    parser.add_argument("--seeds", default="0", help="train: seeds (training problems and sampling)")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--runs", default="runs/screen", help="train: where the runs go")
    parser.add_argument("--out", type=Path, default=Path("runs/screen.jsonl"))
    args = parser.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    args.temperatures = [float(t) for t in args.temperatures.split(",") if t]
    args.truncated = args.truncated.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    config = yaml.safe_load(args.config.read_text())
    if args.phase == "report":
        report(args.out)
    elif args.phase == "reference":
        reference(args, config, args.out)
    else:
        train(args, args.out)


if __name__ == "__main__":
    main()
