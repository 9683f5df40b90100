"""AGRO against its baselines on a built-in task (--task, default arithmetic), in on- and off-policy regimes.

Every run starts from the same π_ref (the demo's), trains with the real trainer for the same
number of steps and the same number of generations per step (`prompts_per_step` groups of 8),
and is scored by greedy accuracy on the same held-out problems. Regimes:

    on_policy       8 fresh samples per prompt
    offline_ref     8 records per prompt sampled from π_ref (no generation at all)
    offline_weak    8 records per prompt from a weaker policy (a shorter warm-up)
    offline_strong  8 records per prompt from a stronger policy (warm-up with a lower error_rate)
    mixed           4 fresh samples + 4 π_ref records per prompt
    stale           4 fresh samples + 4 replayed samples of the same prompt, 1 to `staleness` steps old
    offline_plus_one  the π_ref records of offline_ref + 1 fresh sample per prompt
    async_k         on_policy, sampled by the actor process (`async_generation`) with weights up to k
                    updates old, k = 1, 2, 4 (only with --regimes: each run takes two processes)

Methods are the objectives of `agro.objectives` with their defaults (AGRO: `taper: clip`), plus
`agro_behavior` (`taper: behavior`: the run's own stale samples get the sequence taper min(1, π/μ) on
negatives instead of the token clip range; the same update wherever μ = π, i.e. outside async_k),
`agro_taper_ref` (`taper: ref`, the offline taper alone: no taper on stale samples of a known sampler)
and `agro_untapered` (`taper: none`, the estimator before the offline taper).

The offline sets hold 8 samples per prompt (--offline-samples); the loader drops repeated
(prompt, completion) records, so a peaked policy's groups hold fewer distinct records: the
"generations used" column counts what was trained on. Every method sees the same records.

Each finished run is appended to `runs.jsonl` in --out (so an interrupted study keeps its
results); the table (`study.md`) and plot (`study.png`) are made from that file.

    python benchmarks/study.py --seeds 0 1 2 --out runs/study
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import torch
from common import DEFAULT_REGIMES, METHODS, REGIMES, run_one

from agro.tasks import TASK_NAMES, get_task
from agro.tasks.harness import greedy_accuracy, prepare_seed, write_offline


def prepare(root: Path, seed: int, task, settings, cache: Path, args) -> dict:
    """The seed's π_ref and problems (`agro.tasks.harness.prepare_seed`), its weaker and stronger data policies,
    the offline sets of all three and their held-out accuracies."""
    prep = prepare_seed(task, settings, seed, cache, root / f"seed{seed}", args.train_problems, args.heldout)
    weak_settings = replace(settings, train_steps=settings.train_steps // 2)
    strong_settings = replace(settings, error_rate=args.strong_error_rate)
    weak_model, _, _ = task.load_or_build_reference_policy(cache, seed, weak_settings)
    strong_model, _, _ = task.load_or_build_reference_policy(cache, seed, strong_settings)
    policies = {"ref": prep["ref_model"], "weak": weak_model, "strong": strong_model}
    prep["offline"] = {}
    for name, model in policies.items():
        path = prep["data_dir"] / f"offline_{name}.jsonl"
        if not path.exists():
            write_offline(task.REWARD, model, prep["tokenizer"], prep["train"], args.offline_samples, prep["max_len"],
                          seed, path, name)
        prep["offline"][name] = path
    for name, model in policies.items():
        prep[f"{name}_accuracy"] = greedy_accuracy(task.REWARD, model, prep["tokenizer"], prep["heldout"],
                                                   prep["max_len"])
    return prep


def summarise(runs: list[dict], out: Path, command: str) -> None:
    """study.md (mean ± std over seeds) and study.png (accuracy per regime and method)."""
    cell = {}
    for r in runs:
        cell.setdefault((r["regime"], r["method"]), []).append(r)
    seeds = sorted({r["seed"] for r in runs})
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    regimes = [g for g in REGIMES if any(r["regime"] == g for r in runs)]
    ref = statistics.mean(r["reference_accuracy"] for r in runs)
    lines = [f"Command: `{command}`", "",
             f"Greedy held-out accuracy (mean ± std over seeds {seeds}); π_ref: {ref:.3f}. "
             "KL: Monte-Carlo KL(π‖π_ref) on held-out prompts. Generations: trained on, per run (fresh). "
             "On-data: share of the final policy's samples on the offline prompts that the offline set holds.", "",
             "| regime | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for regime in regimes:
        row = []
        for method in methods:
            rs = cell.get((regime, method), [])
            if not rs:
                row.append("—")
                continue
            acc = [r["accuracy"] for r in rs]
            std = statistics.stdev(acc) if len(acc) > 1 else 0.0
            kl = statistics.mean(r["kl_to_reference"] for r in rs)
            gens = statistics.mean(r["generations_used"] for r in rs)
            fresh = statistics.mean(r["fresh_generations"] for r in rs)
            cell_text = f"{statistics.mean(acc):.3f} ± {std:.3f}<br>KL {kl:.2f}, gen {gens:.0f} ({fresh:.0f})"
            if rs[0].get("share_on_data") is not None:
                cell_text += f", on-data {statistics.mean(r['share_on_data'] for r in rs):.2f}"
            row.append(cell_text + f", n={len(rs)}")
        lines.append(f"| {regime} | " + " | ".join(row) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(regimes) / 4)
    fig, axes = plt.subplots(rows, 4, figsize=(17, 3.5 * rows + 0.5), sharey=True, squeeze=False)
    for ax, regime in zip(axes.flat, regimes):
        for method in methods:
            curves = [r["curve"] for r in cell.get((regime, method), []) if r.get("curve")]
            if not curves:
                continue
            n = min(len(c) for c in curves)  # evaluations at the same steps in every seed
            x = [statistics.mean(c[i][0] for c in curves) for i in range(n)]
            y = [statistics.mean(c[i][1] for c in curves) for i in range(n)]
            sd = [statistics.stdev(c[i][1] for c in curves) if len(curves) > 1 else 0.0 for i in range(n)]
            line, = ax.plot(x, y, marker=".", label=method, color=f"C{METHODS.index(method)}")  # one colour per method
            ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)], alpha=0.15, color=line.get_color())
        ax.axhline(ref, color="gray", linestyle="--", linewidth=1)
        ax.set_title(regime)
        ax.set_xlabel("generations used (trained on)")
        ax.set_ylim(0, 1)
    for ax in axes.flat[len(regimes):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("greedy held-out accuracy")
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(f"mean over seeds {seeds}, band: ± std; dashed: π_ref")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "study.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--regimes", nargs="+", default=list(DEFAULT_REGIMES), choices=REGIMES)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--train-problems", type=int, default=128, help="small, so prompts recur for replay")
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--staleness", type=int, default=8)
    parser.add_argument("--offline-samples", type=int, default=8,
                        help="samples per prompt in the offline sets (offline-only groups take all of them)")
    parser.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N steps")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--strong-error-rate", type=float, default=None,
                        help="error_rate of the stronger data policy's warm-up (default: the task's "
                        "STRONG_ERROR_RATE, arithmetic 0.2)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="π_ref's supervised warm-up steps (the weaker policy gets half; default: the task's "
                        "Settings.train_steps, arithmetic 600)")
    parser.add_argument("--task", default="arithmetic", choices=TASK_NAMES, help="built-in task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "agro" / "demo")
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--summarise-only", action="store_true", help="rebuild study.md/png from runs.jsonl")
    args = parser.parse_args()
    task = get_task(args.task)
    if args.warmup_steps is None:
        args.warmup_steps = task.Settings().train_steps
    if args.strong_error_rate is None:
        args.strong_error_rate = task.STRONG_ERROR_RATE
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    command = "python benchmarks/study.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "summarise_only", "cache_dir")) + f" --out {args.out}"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not args.summarise_only:
        torch.set_num_threads(args.threads)
        keys = {(r["method"], r["regime"], r["seed"]) for r in done}
        for seed in args.seeds:
            prep = prepare(args.out, seed, task, task.Settings(train_steps=args.warmup_steps), args.cache_dir, args)
            print(json.dumps({k: prep[k] for k in ("ref_accuracy", "weak_accuracy", "strong_accuracy")}), flush=True)
            for regime in args.regimes:
                for method in args.methods:
                    if (method, regime, seed) in keys:
                        continue
                    result = run_one(prep, method, regime, seed, args.out, args)
                    result.update({k: prep[k] for k in ("weak_accuracy", "strong_accuracy")})
                    print(json.dumps(result), flush=True)
                    with open(log, "a") as f:
                        f.write(json.dumps(result) + "\n")
                    done.append(result)
    summarise(done, args.out, command)
    print(f"wrote {args.out / 'study.md'} and {args.out / 'study.png'}")


if __name__ == "__main__":
    main()
