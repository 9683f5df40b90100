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
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from agro.config import load_config
from agro.demo import demo_config_path, greedy_accuracy, task_overrides, write_offline, write_task_data
from agro.generators import HFGenerator
from agro.logprobs import completion_logprobs
from agro.objectives import OBJECTIVES
from agro.tasks import TASK_NAMES, get_task
from agro.tokens import collate, encode_prompt
from agro.trainer import Trainer

METHODS = ("agro", "agro_behavior", "agro_taper_ref", "agro_untapered", *(m for m in OBJECTIVES if m != "agro"))  # + AGRO variants
METHOD_SETTINGS = {"agro_taper_ref": ["objective=agro", "taper=ref"], "agro_untapered": ["objective=agro", "taper=none"],
                   "agro_behavior": ["objective=agro", "taper=behavior"]}
REGIMES = ("on_policy", "offline_ref", "offline_weak", "offline_strong", "offline_plus_one", "mixed", "stale",
           "async_1", "async_2", "async_4")
DEFAULT_REGIMES = REGIMES[:7]  # the async regimes run on request (--regimes): each run is two processes
OFFLINE_SOURCE = {"offline_ref": "ref", "offline_weak": "weak", "offline_strong": "strong", "mixed": "ref",
                  "offline_plus_one": "ref"}


def regime_settings(regime: str, offline: dict[str, Path], staleness: int, offline_samples: int) -> list[str]:
    if regime == "on_policy":
        return ["num_generations=8", "offline_per_group=0"]
    if regime.startswith("async_"):  # on_policy, sampled by the actor process up to k updates behind
        return ["num_generations=8", "offline_per_group=0", "async_generation=true",
                f"max_staleness={regime.removeprefix('async_')}", "actor_threads=1"]
    if regime == "stale":
        return ["num_generations=4", "offline_per_group=0", "replay_per_group=4", f"replay_max_staleness={staleness}"]
    path = offline[OFFLINE_SOURCE[regime]]
    if regime == "mixed":
        return ["num_generations=4", f"offline_data={path}", "offline_per_group=4"]
    if regime == "offline_plus_one":
        return ["num_generations=1", f"offline_data={path}", f"offline_per_group={offline_samples}"]
    return ["num_generations=0", f"offline_data={path}", f"offline_per_group={offline_samples}"]


@torch.no_grad()
def kl_to_reference(model, ref_model, tokenizer, problems, max_len: int, samples: int = 4) -> float:
    """Monte-Carlo KL(π‖π_ref) on held-out prompts: mean of Σ_t log π/π_ref over samples of π."""
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    completions = HFGenerator(tokenizer, max_len, batch_size=512).generate(model, prompts, samples)
    owners = [prompts[i // samples] for i in range(len(completions))]
    batch = collate(owners, completions, tokenizer.pad_token_id)
    mask = batch.completion_mask
    lp = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.num_completion_tokens)
    ref = completion_logprobs(ref_model, batch.input_ids, batch.attention_mask, batch.num_completion_tokens)
    return float(((lp - ref) * mask).sum(-1).mean())


@torch.no_grad()
def share_on_data(model, tokenizer, offline_path: Path, max_len: int, samples: int = 4) -> float:
    """Fraction of π's samples, on the offline set's prompts, that are completions the offline set holds.

    The offline objective only sees those completions; mass that leaves them is not measured by it.
    """
    records = [json.loads(line) for line in offline_path.read_text().splitlines()]
    support: dict[str, set[str]] = {}
    for r in records:
        support.setdefault(r["prompt"], set()).add(r["completion"])
    prompts = sorted(support)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    completions = HFGenerator(tokenizer, max_len, batch_size=512).generate(model, encoded, samples)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return sum(t in support[prompts[i // samples]] for i, t in enumerate(texts)) / len(texts)


def prepare_seed(root: Path, seed: int, task, settings, cache: Path, args) -> dict:
    """π_ref, the weaker/stronger data policies, the problems and the offline sets of one seed of a task module."""
    ref_model, tokenizer, ref_path = task.load_or_build_reference_policy(cache, seed, settings)
    weak_settings = replace(settings, train_steps=settings.train_steps // 2)
    strong_settings = replace(settings, error_rate=args.strong_error_rate)
    weak_model, _, _ = task.load_or_build_reference_policy(cache, seed, weak_settings)
    strong_model, _, _ = task.load_or_build_reference_policy(cache, seed, strong_settings)
    data_dir = root / f"seed{seed}"
    train, heldout = write_task_data(data_dir, seed, task, settings, args.train_problems, args.heldout)
    max_len = task.max_completion_tokens(settings)
    offline = {}
    for name, model in (("ref", ref_model), ("weak", weak_model), ("strong", strong_model)):
        path = data_dir / f"offline_{name}.jsonl"
        if not path.exists():
            write_offline(model, tokenizer, train, path, name, args.offline_samples, max_len, seed, task.REWARD)
        offline[name] = path
    return {"task": task, "settings": settings, "ref_model": ref_model, "ref_path": ref_path,
            "tokenizer": tokenizer, "data_dir": data_dir, "heldout": heldout, "offline": offline, "max_len": max_len,
            "ref_accuracy": greedy_accuracy(ref_model, tokenizer, heldout, max_len, task.REWARD),
            "weak_accuracy": greedy_accuracy(weak_model, tokenizer, heldout, max_len, task.REWARD),
            "strong_accuracy": greedy_accuracy(strong_model, tokenizer, heldout, max_len, task.REWARD)}


def run_one(prep: dict, method: str, regime: str, seed: int, out: Path, args) -> dict:
    run_dir = out / "runs" / f"{regime}-{method}-seed{seed}"
    settings = [f"model_name_or_path={prep['ref_path']}", f"train_data={prep['data_dir'] / 'train.jsonl'}",
                f"output_dir={run_dir}", *task_overrides(prep["task"], prep["settings"]), f"seed={seed}",
                *METHOD_SETTINGS.get(method, [f"objective={method}"]), f"max_steps={args.steps}", f"prompts_per_step={args.prompts_per_step}",
                f"eval_data={prep['data_dir'] / 'heldout.jsonl'}", f"eval_steps={args.eval_every}",
                "report_to=none", "save_total_limit=1", "logging_steps=1",
                f"num_threads={args.threads}"]
    settings += regime_settings(regime, prep["offline"], args.staleness, args.offline_samples)
    settings += [f"learning_rate={args.learning_rate}", f"beta={args.beta}"]
    config = load_config(demo_config_path(), settings)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run of this study, not in runs.jsonl
    start = time.perf_counter()
    Trainer(config).train()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    used, curve = 0, []
    for r in rows:  # a step's evaluation follows its update and is logged in the step's row
        used += int(r.get("num_generations", 0))
        if "eval/accuracy" in r:
            curve.append([used, r["eval/accuracy"]])
    model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    return {
        "method": method, "regime": regime, "seed": seed,
        "accuracy": greedy_accuracy(model, prep["tokenizer"], prep["heldout"], prep["max_len"], prep["task"].REWARD),
        "reference_accuracy": prep["ref_accuracy"],
        "kl_to_reference": kl_to_reference(model, prep["ref_model"], prep["tokenizer"], prep["heldout"],
                                           prep["max_len"]),
        "generations_used": used,
        "curve": curve,
        "fresh_generations": int(sum(r.get("count/on_policy", 0) for r in rows)),
        "share_on_data": (share_on_data(model, prep["tokenizer"], prep["offline"][OFFLINE_SOURCE[regime]],
                                         prep["max_len"])
                          if regime in OFFLINE_SOURCE else None),
        "seconds": time.perf_counter() - start,
    }


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
            prep = prepare_seed(args.out, seed, task, task.Settings(train_steps=args.warmup_steps), args.cache_dir,
                                args)
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
