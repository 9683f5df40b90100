"""The SmolLM2 study: AGRO against GRPO, KL-PG and TOPR on SmolLM2-135M-Instruct, on-policy, stale and offline.

    python benchmarks/real_model.py --methods pi_ref,agro,grpo --seeds 0,1 --max-steps 20 --task chain_sum_2 \
        --out docs/real_model/cells.jsonl
    python benchmarks/real_model.py --report --out docs/real_model/cells.jsonl   # tables, goals, the plot

A cell is one method × seed. Every cell trains through `agro train` on one base config
(configs/smollm2-135m-cpu.yaml, with --set overrides for all cells alike), so every method gets the same
model, prompts, budget (--max-steps optimizer steps of prompts_per_step groups of num_generations members),
hyper-parameters and held-out problems; a method changes only these keys (`METHODS`):

    pi_ref         no training: greedy held-out accuracy of the base model (the trainer's own evaluation code)
    agro, grpo     on-policy: objective agro | grpo
    agro_stale,    every batch sampled by the policy exactly 4 updates older than the one trained on it
    grpo_stale     (`lagged_generation`): version max(0, s − 4) at step s. The actor process of
                   `async_generation` runs *up to* k updates ahead, but how far depends on how fast
                   generation runs against training (on 2 shared cores it mostly lags 1), and replay
                   re-uses a prompt's samples only when the prompt comes back within k steps, which it never
                   does with 1,000 training problems; so the lag is made exact and repeatable instead. GRPO
                   clips its ratio to the sampler: its π_old is the batch's behaviour log-probs, which the
                   lagged actor computes with the policy that sampled them (`agro.assembly.sampling_logprobs`);
                   AGRO's default taper (clip) masks the same trust region.
    agro_sum, agro_stale_sum, agro_offline_sum
                   agro, agro_stale and agro_offline with `agro_loss_type: sum` (the estimator as written, whose
                   gradient norm is max_completion_length times larger, so max_grad_norm clips nearly every step;
                   each step's direction is unchanged): `--report` puts the goals to AGRO at either scale (each
                   goal on the seeds both of its sides have) and pairs the two scales by seed
    agro_stale_sum_no_taper   a diagnostic: agro_stale_sum with `taper: none` (AGRO's loss on the stale
                   samples as they are, no trust region)
    agro_stale_sum_beta_0.01  a diagnostic: agro_stale_sum with β 0.01 instead of 0.05 (a fifth of the KL
                   term's pull; another objective, so not a candidate for the goals)
    agro_offline,  offline only (num_generations 0): π_ref's own samples, num_generations per prompt for
    kl_pg_offline, max_steps × prompts_per_step training problems (one epoch), written once per task × seed by
    topr_offline   `agro generate` with rewards (temperature and length of the config) and re-used by all
                   three; each step's groups are those records.
    agro_offline_strong, kl_pg_offline_strong, topr_offline_strong
                   the same, from a stronger policy's records: a run's own history as data. The records are
                   sampled in the same way from the final model of the `agro` cell of the same seed (its run,
                   trained first when it is not on disk, keeps final/ until they are written); the report puts
                   their goals only once such cells exist.

What a cell records (one JSON line, appended to --out when the cell is done): greedy held-out `accuracy` on
`n` ≥ --heldout problems (the held-out split of the task, seed 1, the same for every cell), its 95% Wilson
interval `ci95`, the learning curve (held-out accuracy every --eval-every steps, from the run's metrics.jsonl),
KL(π ‖ π_ref) of the final policy (`kl`: the mean of Σ_t log π/π_ref over --kl-samples samples of π at
temperature 1 on held-out prompts, with its standard error), the trainer's per-step KL estimate and rewards,
and step times. The last line printed is `{"cells": [...]}` with every cell of --out that this command asked for.

Resuming: a cell already in --out is skipped (its id names task, method, seed, steps, held-out size and a hash of
the settings); an unfinished run continues from its last checkpoint (`agro train --resume`; checkpoints every
--eval-every steps), and the offline data file is written atomically, so a study stopped at any point goes on
where it stopped. Runs go under --runs; their checkpoints and models are deleted once the cell is written
(--keep-models keeps final/).

The task screen (which task gives the methods room) is benchmarks/real_model_screen.py; --task takes its
task names (`common.TASKS`). docs/results/real-model.md reports both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import CONFIG, TASKS, Z95, agro_cli, append, difference_noise, done_cells

STALENESS = 4
# method -> (regime, the config keys it sets); every other key is the base config's
METHODS: dict[str, tuple[str, dict]] = {
    "pi_ref": ("reference", {}),
    "agro": ("on_policy", {"objective": "agro"}),
    "grpo": ("on_policy", {"objective": "grpo"}),
    "agro_stale": ("stale", {"objective": "agro", "async_generation": True, "lagged_generation": True,
                             "max_staleness": STALENESS}),
    "grpo_stale": ("stale", {"objective": "grpo", "async_generation": True, "lagged_generation": True,
                             "max_staleness": STALENESS}),
    # a diagnostic: agro_stale_sum without the taper (pure AGRO on the stale samples)
    "agro_stale_sum_no_taper": ("stale", {"objective": "agro", "agro_loss_type": "sum", "taper": "none",
                                          "async_generation": True, "lagged_generation": True,
                                          "max_staleness": STALENESS}),
    # agro_stale with the loss at the summed scale (the estimator as written, × max_completion_length)
    "agro_stale_sum": ("stale", {"objective": "agro", "agro_loss_type": "sum", "async_generation": True,
                                 "lagged_generation": True, "max_staleness": STALENESS}),
    # a diagnostic: agro_stale_sum with a fifth of the KL term
    "agro_stale_sum_beta_0.01": ("stale", {"objective": "agro", "agro_loss_type": "sum", "beta": 0.01,
                                           "async_generation": True, "lagged_generation": True,
                                           "max_staleness": STALENESS}),
    "agro_offline": ("offline", {"objective": "agro"}),
    # AGRO at the summed scale in the other two regimes, to tell whether the scale matters for stale data only
    "agro_sum": ("on_policy", {"objective": "agro", "agro_loss_type": "sum"}),
    "agro_offline_sum": ("offline", {"objective": "agro", "agro_loss_type": "sum"}),
    "kl_pg_offline": ("offline", {"objective": "kl_pg"}),
    "topr_offline": ("offline", {"objective": "topr"}),
    # offline only, from the records of the on-policy `agro` run of the same seed (a stronger policy than π_ref)
    "agro_offline_strong": ("offline_strong", {"objective": "agro"}),
    "kl_pg_offline_strong": ("offline_strong", {"objective": "kl_pg"}),
    "topr_offline_strong": ("offline_strong", {"objective": "topr"}),
}
OFFLINE = ("offline", "offline_strong")  # the regimes that train on records only
STRONG_SOURCE = "agro"  # the cell whose final model samples the offline_strong records


class UsageError(Exception):
    """A bad flag: one line on stderr, exit 2."""


def wilson(correct: int, n: int, z: float = Z95) -> list[float]:
    """The 95% Wilson score interval of a binomial proportion correct / n."""
    if n <= 0:
        raise ValueError("an interval needs n > 0")
    p = correct / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, center - half), min(1.0, center + half)]


def settings_hash(config_path: Path, overrides: list[str]) -> str:
    """What every cell shares, hashed: the base config's keys and values (not its comments or layout) and the
    --set overrides."""
    text = json.dumps(yaml.safe_load(config_path.read_text()), sort_keys=True) + "\n" + "\n".join(overrides)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def base_settings(args) -> list[str]:
    """`key=value` overrides every cell of this command shares: task, held-out set, evaluations, --set."""
    name, kwargs = TASKS[args.task]
    return [f"train_data=reasoning_gym:{name}", f"eval_data=reasoning_gym:{name}",
            f"eval_data_kwargs={json.dumps({**kwargs, 'size': args.heldout, 'seed': 1})}",
            f"max_steps={args.max_steps}", f"eval_steps={args.eval_every}", f"save_steps={args.eval_every}",
            "save_total_limit=1", "report_to=[]", *([f"model_name_or_path={args.model}"] if args.model else []),
            *args.overrides]


def cell_settings(args, method: str, seed: int, offline_file: Path | None) -> list[str]:
    """The overrides of one training cell: the shared ones, the seed, the method's keys, its data."""
    name, kwargs = TASKS[args.task]
    out = [*base_settings(args), f"seed={seed}",
           f"train_data_kwargs={json.dumps({**kwargs, 'size': 1000, 'seed': seed})}"]
    out += [f"{k}={json.dumps(v)}" for k, v in METHODS[method][1].items()]
    if METHODS[method][0] in OFFLINE:
        out += ["train_data=null", "train_data_kwargs={}", "num_generations=0", f"offline_data={offline_file}",
                f"offline_per_group={load(out, args.config).num_generations}"]
    return out


def load(settings: list[str], config_path: Path):
    """The validated TrainConfig of these overrides (agro.config: no torch import, a bad key fails at once)."""
    from agro.config import load_config

    return load_config(config_path, settings)


def offline_path(args, seed: int, strong: bool) -> Path:
    """Where the offline records of `seed` go: π_ref's, or (`strong`) those of the seed's `agro` cell's final
    model; the name hashes what makes them (the cell's id for the strong ones)."""
    c = load(cell_settings(args, "agro", seed, None), args.config)
    spec = {"model": c.model_name_or_path, "task": args.task, "seed": seed,
            "problems": args.max_steps * c.prompts_per_step,  # one epoch of the offline runs' steps
            "k": c.num_generations, "temperature": c.temperature, "length": c.max_completion_length,
            "template": c.prompt_template, "instruction": c.instruction, "system": c.system_prompt,
            "reward": c.reward_function, "truncated": c.truncated_completions}
    if strong:
        spec["policy"] = cell_id(args, STRONG_SOURCE, seed)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return Path(args.runs) / "offline" / f"{args.task}-seed{seed}-{'strong-' if strong else ''}{digest}.jsonl"


def offline_data(args, seed: int, strong: bool = False) -> Path:
    """The offline records of `seed` (π_ref's, or with `strong` the `agro` cell's final model's): written once
    (atomically) by `agro generate` and re-used. The strong records train that cell's run first when its final
    model is not on disk, and delete that model once they are written if its cell is done (and not --keep-models)."""
    path = offline_path(args, seed, strong)
    if path.exists():
        return path
    c = load(cell_settings(args, "agro", seed, None), args.config)
    problems = args.max_steps * c.prompts_per_step
    name, kwargs = TASKS[args.task]
    model = c.model_name_or_path
    if strong:
        source_dir = run_dir_of(args, cell_id(args, STRONG_SOURCE, seed))
        train_run(args, STRONG_SOURCE, seed, source_dir)
        model = str(source_dir / "final")
    argv = ["generate", "--model", model, "--data", f"reasoning_gym:{name}",
            "--data-kwargs", json.dumps({**kwargs, "size": problems, "seed": seed}),
            "--prompt-template", c.prompt_template, "--num-generations", str(c.num_generations),
            "--temperature", str(c.temperature), "--top-p", str(c.top_p),
            "--max-completion-length", str(c.max_completion_length), "--reward", c.reward_function,
            "--truncated-completions", c.truncated_completions, "--batch-size", str(c.generation_batch_size),
            "--dtype", c.torch_dtype, "--seed", str(seed), "--source", "strong" if strong else "pi_ref",
            "--out", str(path)]
    if c.instruction is not None:
        argv += ["--instruction", c.instruction]
    if c.system_prompt is not None:
        argv += ["--system-prompt", c.system_prompt]
    agro_cli(*argv)
    if strong and cell_id(args, STRONG_SOURCE, seed) in done_cells(args.out) and not args.keep_models:
        shutil.rmtree(source_dir / "final", ignore_errors=True)
    return path


def offline_stats(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    right = {}
    for r in rows:
        key = json.dumps(r["prompt"], sort_keys=True)
        right[key] = right.get(key, False) or r["reward"] > 0.5
    return {"file": str(path), "records": len(rows), "prompts": len(right),
            "share_right": sum(r["reward"] > 0.5 for r in rows) / len(rows),
            "prompts_with_a_right_record": sum(right.values())}


def evaluate_reference(c) -> dict:
    """Greedy held-out accuracy of the base model, by the code the trainer evaluates with."""
    import torch

    from agro.evaluate import evaluate, load_eval_problems
    from agro.models import load_for_inference
    from agro.rewards.workers import RewardScorer

    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    problems = load_eval_problems(c)
    tokenizer, model = load_for_inference(c.model_name_or_path, c.torch_dtype)
    with RewardScorer(c.reward_function, timeout=c.reward_timeout, num_workers=c.reward_workers) as scorer:
        result = evaluate(model, tokenizer, problems, scorer, c.max_completion_length,
                          batch_size=c.generation_batch_size, truncated_completions=c.truncated_completions)
    return {"accuracy": result["accuracy"], "n": result["num_problems"], "clipped_ratio": result["truncated"]}


def kl_to_reference(c, model_dir: Path, samples: int, seed: int) -> dict:
    """KL(π ‖ π_ref) of a trained model: the mean of Σ_t (log π − log π_ref) over samples of π (temperature 1)
    of the first `samples` held-out prompts, one each (`agro.tasks.harness.kl_terms`), and its standard error."""
    import torch

    from agro.evaluate import load_eval_problems
    from agro.models import load_for_inference
    from agro.tasks.harness import kl_terms

    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    tokenizer, policy = load_for_inference(str(model_dir), c.torch_dtype)
    _, reference = load_for_inference(c.model_name_or_path, c.torch_dtype)
    problems = load_eval_problems(c)[:samples]
    torch.manual_seed(seed)
    deltas = kl_terms(policy, reference, tokenizer, problems, c.max_completion_length, 1, c.generation_batch_size,
                      batch_size=16, chunk_size=c.logprob_chunk_size).tolist()
    mean = sum(deltas) / len(deltas)
    se = math.sqrt(sum((d - mean) ** 2 for d in deltas) / max(1, len(deltas) - 1) / len(deltas))
    return {"kl": mean, "kl_se": se, "kl_samples": len(deltas)}


def train_run(args, method: str, seed: int, run_dir: Path) -> tuple:
    """`agro train` of one cell unless its run is finished (resumed from its checkpoint when a run is there):
    (its config, its metrics rows, its offline records or None)."""
    regime = METHODS[method][0]
    offline = offline_data(args, seed, strong=regime == "offline_strong") if regime in OFFLINE else None
    settings = [*cell_settings(args, method, seed, offline), f"output_dir={run_dir}"]
    c = load(settings, args.config)  # a bad setting fails here, before a run starts
    rows = read_metrics(run_dir)
    finished = (run_dir / "final").is_dir() and any(r.get("step") == args.max_steps and "eval/accuracy" in r
                                                     for r in rows)
    if not finished:
        # a stale cell starts again: a resumed lagged run re-samples its in-flight batches with the resumed
        # weights, so for max_staleness steps its data would be fresher than the cell says
        resume = any(run_dir.glob("checkpoint-*")) and METHODS[method][0] != "stale"
        if not resume:
            shutil.rmtree(run_dir, ignore_errors=True)
        agro_cli("train", str(args.config), *[a for s in settings for a in ("--set", s)],
                 *(["--resume"] if resume else []))
        rows = read_metrics(run_dir)
    return c, rows, offline


def train_cell(args, method: str, seed: int, run_dir: Path) -> dict:
    """One cell's run (`train_run`), then what it measured."""
    c, rows, offline = train_run(args, method, seed, run_dir)
    steps = [r for r in rows if "time_step" in r]
    curve = [[r["step"], r["eval/accuracy"]] for r in rows if "eval/accuracy" in r]
    source = "offline" if offline else "on_policy"
    out = {"curve": curve, "accuracy": curve[-1][1], "accuracy_start": curve[0][1],
           "kl_curve": [[r["step"], r["kl"]] for r in steps if "kl" in r],
           "log_ratio_curve": [[r["step"], r["log_ratio_mean"]] for r in steps],
           "reward_curve": [[r["step"], r[f"reward/{source}"]] for r in steps if f"reward/{source}" in r],
           "staleness_mean": mean([r["staleness/mean"] for r in steps if "staleness/mean" in r]),
           "step_seconds_median": median([r["time_step"] for r in steps]),
           "training": training_stats(steps, c.max_grad_norm),
           "clipped_ratio": [r["eval/clipped_ratio"] for r in rows if "eval/clipped_ratio" in r][-1],
           "objective": c.objective, "taper": c.taper if c.objective == "agro" else None, "beta": c.beta,
           "learning_rate": c.learning_rate, "num_generations": c.num_generations or c.offline_per_group,
           "prompts_per_step": c.prompts_per_step, "temperature": c.temperature,
           "max_completion_length": c.max_completion_length}
    out.update(kl_to_reference(c, run_dir / "final", args.kl_samples, seed))
    if offline:
        out["offline_data"] = offline_stats(offline)
    return out


def clean_run(run_dir: Path, keep_models: bool) -> None:
    """A written cell's checkpoints, and its final model unless kept (only once the cell is in --out: a cell
    stopped before that is run again from what is on disk)."""
    if not keep_models:
        shutil.rmtree(run_dir / "final", ignore_errors=True)
    for checkpoint in run_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def training_stats(steps: list[dict], max_grad_norm: float) -> dict:
    """What the training batches looked like, averaged over a run's steps: the share of steps whose gradient norm
    max_grad_norm rescaled (None when clipping is off, max_grad_norm 0; skipped steps, whose norm is NaN, left out),
    the share of groups whose rewards were all equal (no reward signal: only the KL term moves AGRO there), and the
    sampled completions' mean length and share cut at the length limit (and that share by step, `cut_curve`).

    `equal_reward_steps`: the share of the updates (steps with a finite, non-zero gradient) where every group's
    rewards were equal, for AGRO the KL term's pull alone; `equal_reward_step_ratio`: the gradient norm that
    reached the optimiser, min(‖g‖, max_grad_norm), on those updates ÷ that on the others. Near 1 when clipping
    makes every step full-size; None when either kind is missing. A zero gradient (a first step at π = π_ref
    whose rewards are all equal) moved nothing and is left out of both."""
    def over(key):
        return mean([r[key] for r in steps if key in r])
    finite = [r for r in steps if "grad_norm" in r and math.isfinite(r["grad_norm"])]
    norms = [r["grad_norm"] for r in finite]
    updates = [r for r in finite if r["grad_norm"] > 0 and "frac_reward_zero_std" in r]

    def applied(kind):
        return mean([min(r["grad_norm"], max_grad_norm) if max_grad_norm > 0 else r["grad_norm"] for r in updates
                     if (r["frac_reward_zero_std"] == 1.0) == kind])
    equal, signal = applied(True), applied(False)
    return {"grad_clipped_share": mean([float(g > max_grad_norm) for g in norms]) if max_grad_norm > 0 else None,
            "grad_norm_median": median(norms),
            "equal_reward_steps": mean([float(r["frac_reward_zero_std"] == 1.0) for r in updates]),
            "equal_reward_step_ratio": equal / signal if equal is not None and signal else None,
            "zero_std_groups": over("frac_reward_zero_std"), "completion_length": over("objective/completion_length_mean"),
            "cut_share": over("completions/clipped_ratio"),
            "cut_curve": [[r["step"], r["completions/clipped_ratio"]] for r in steps if "completions/clipped_ratio" in r]}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def run(args) -> list[dict]:
    """Every asked-for cell not yet in --out, appended as it finishes; returns the asked-for cells of --out."""
    shared = base_settings(args)
    c = load(shared, args.config)
    import torch

    from agro.evaluate import load_eval_problems
    from agro.models import native_bf16

    if c.bf16 and not native_bf16("cuda" if torch.cuda.is_available() else "cpu"):
        print("real_model.py: warning: bf16 is emulated on this CPU (no avx512_bf16 or AMX), several times slower "
              "than float32; --set bf16=false runs float32 (cells of another settings hash)", file=sys.stderr)

    n = len(load_eval_problems(c))
    if n < args.heldout:
        raise UsageError(f"--task {args.task} has {n} held-out problems, fewer than --heldout {args.heldout}")
    digest = settings_hash(args.config, shared)
    strong = any(METHODS[m][0] == "offline_strong" for m in args.methods)
    wanted = []
    for method in args.methods:
        for seed in args.seeds:
            cell = cell_id(args, method, seed)
            wanted.append(cell)
            if cell in done_cells(args.out):
                continue
            start = time.time()
            row = {"cell": cell, "task": args.task, "task_kwargs": TASKS[args.task][1], "method": method,
                   "regime": METHODS[method][0], "seed": seed, "max_steps": args.max_steps,
                   "settings": digest, "model": c.model_name_or_path, "bf16": c.bf16}
            if method == "pi_ref":
                row.update(evaluate_reference(load([*shared, f"seed={seed}"], args.config)))
                row.update({"curve": [[0, row["accuracy"]]], "kl": 0.0, "kl_se": 0.0})
            else:
                row.update(train_cell(args, method, seed, run_dir_of(args, cell)))
                row["n"] = n
            correct = round(row["accuracy"] * row["n"])
            row.update({"correct": correct, "ci95": wilson(correct, row["n"]), "seconds": round(time.time() - start, 1)})
            append(args.out, row)
            if method != "pi_ref":  # the strong records' source keeps its model until they are written
                keep = strong and method == STRONG_SOURCE and not offline_path(args, seed, strong=True).exists()
                clean_run(run_dir_of(args, cell), args.keep_models or keep)
    rows = {r["cell"]: r for r in read_cells(args.out)}
    return [rows[cell] for cell in wanted]


def cell_id(args, method: str, seed: int) -> str:
    """A cell's id: task, method, seed, steps, held-out size and the hash of the shared settings."""
    digest = settings_hash(args.config, base_settings(args))
    return f"{args.task}/{method}/seed{seed}/steps{args.max_steps}/heldout{args.heldout}/{digest}"


def run_dir_of(args, cell: str) -> Path:
    return Path(args.runs) / cell.replace("/", "-")


def read_cells(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ----------------------------------------------------------------------------- report


def summary(rows: list[dict]) -> dict[str, dict]:
    """Per method: its cells, the mean and standard deviation of accuracy over seeds, the pooled problems
    (seeds × n), and the mean over seeds of each cell's mean held-out accuracy after step 0 (`curve_mean`: the
    learning curve's level, less noisy than its last point)."""
    out: dict[str, dict] = {}
    for method in METHODS:
        cells = [r for r in rows if r["method"] == method]
        if cells:
            acc = [r["accuracy"] for r in cells]
            curve = [mean([a for step, a in r["curve"] if step > 0] or [r["accuracy"]]) for r in cells]
            out[method] = {"cells": cells, "mean": mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else None,
                           "min": min(acc), "max": max(acc), "n": sum(r["n"] for r in cells),
                           "kl": mean([r["kl"] for r in cells]), "curve_mean": mean(curve)}
    return out


def noise(a: dict, b: dict) -> float:
    """Half-width of a 95% normal interval of the difference of two methods' mean accuracies
    (`common.difference_noise`: each mean a binomial over seeds × held-out problems, or its spread over seeds)."""
    return difference_noise(*((s["mean"], s["std"], len(s["cells"]), s["n"]) for s in (a, b)))


GOALS = [  # (text, method, reference method(s), margin): met when method ≥ best reference + margin
    ("AGRO on-policy ≥ GRPO − 0.02", "agro", ("grpo",), -0.02),
    ("AGRO stale ≥ GRPO stale", "agro_stale", ("grpo_stale",), 0.0),
    ("AGRO stale within 0.03 of AGRO on-policy", "agro_stale", ("agro",), -0.03),
    ("AGRO offline ≥ best of KL-PG and TOPR offline − 0.03", "agro_offline", ("kl_pg_offline", "topr_offline"), -0.03),
    ("AGRO offline ≥ π_ref + 0.10", "agro_offline", ("pi_ref",), 0.10),
]
# offline from the stronger policy's records (a margin of None: above the reference by more than the noise)
STRONG_GOALS = [
    ("AGRO offline from a stronger policy ≥ best of KL-PG and TOPR − 0.03", "agro_offline_strong",
     ("kl_pg_offline_strong", "topr_offline_strong"), -0.03),
    ("AGRO offline from a stronger policy above π_ref by more than the noise", "agro_offline_strong", ("pi_ref",),
     None),
]
# the same goals for AGRO at the summed scale (agro_loss_type sum): each AGRO method its sum cell
SUM = {"agro": "agro_sum", "agro_stale": "agro_stale_sum", "agro_offline": "agro_offline_sum"}


def on_seeds(stats: dict[str, dict], method: str, seeds: set[int]) -> dict:
    """A method's summary over the cells of `seeds` only."""
    return summary([r for r in stats[method]["cells"] if r["seed"] in seeds])[method]


def scale_lines(stats: dict[str, dict]) -> list[str]:
    """AGRO's two loss scales paired by seed (same seed: same problems, same first samples, same offline data):
    per regime, the change d_s = accuracy(dr_grpo) − accuracy(sum) on each seed both have, its mean ± std, and on
    how many seeds it is positive. Pairing removes what the seed does to both (seed 4's stale batches, say)."""
    lines = ["| AGRO, `sum` → `dr_grpo` | seeds | paired change, mean ± std | change on each seed | seeds where "
             "`dr_grpo` is higher |", "|---|---|---|---|---|"]
    for dr_grpo, sums in SUM.items():
        if sums not in stats or dr_grpo not in stats:
            continue
        by_seed = {r["seed"]: r["accuracy"] for r in stats[sums]["cells"]}
        changes = {r["seed"]: r["accuracy"] - by_seed[r["seed"]] for r in stats[dr_grpo]["cells"] if r["seed"] in by_seed}
        if changes:
            seeds = sorted(changes)
            d = [changes[s] for s in seeds]
            spread = f" ± {statistics.stdev(d):.3f}" if len(d) > 1 else ""
            lines.append(f"| {sums} → {dr_grpo} | {','.join(map(str, seeds))} | {mean(d):+.3f}{spread} | "
                         f"{', '.join(f'{x:+.3f}' for x in d)} | {sum(x > 0 for x in d)} of {len(d)} |")
    return lines


def goal_lines(stats: dict[str, dict], rename: dict[str, str] | None = None, goals: list = GOALS) -> list[str]:
    """The goals, each on the seeds both of its sides have (same seed: same training problems and offline
    data), `rename` mapping the AGRO methods to the ones compared in their place; a goal's margin None is the
    95% noise of the difference."""
    rename = rename or {}
    lines = ["| goal | measured (seeds both sides have) | met? | margin | 95% noise of the difference |",
             "|---|---|---|---|---|"]
    for text, method, refs, margin in goals:
        method, refs = rename.get(method, method), tuple(rename.get(r, r) for r in refs)
        sides, ran = {}, [r for r in refs if r in stats and method in stats]
        for ref in ran:
            seeds = {r["seed"] for r in stats[method]["cells"]} & {r["seed"] for r in stats[ref]["cells"]}
            if seeds:
                sides[ref] = (on_seeds(stats, method, seeds), on_seeds(stats, ref, seeds), sorted(seeds))
        if not sides:
            lines.append(f"| {text} | {'no seed in common' if ran else 'not run'} | – | – | – |")
            continue
        # the hardest reference: each is compared on its own common seeds, so the smallest difference, not the
        # highest reference mean
        best = min(sides, key=lambda r: sides[r][0]["mean"] - sides[r][1]["mean"])
        ours, theirs, seeds = sides[best]
        diff = ours["mean"] - theirs["mean"]
        slack = diff - (noise(ours, theirs) if margin is None else margin)
        lines.append(f"| {text} | {method} {ours['mean']:.3f} vs {best} {theirs['mean']:.3f} ({diff:+.3f}; seeds "
                     f"{','.join(map(str, seeds))}) | {'met' if slack >= 0 else 'missed'} | {slack:+.3f} | "
                     f"±{noise(ours, theirs):.3f} |")
    return lines


def training_lines(stats: dict[str, dict]) -> list[str]:
    """Per method, the mean over its cells of `training_stats` (cells that recorded it; "–" where the batches do
    not say: offline records carry no cut flag)."""
    def cell(values, digits):
        known = [v for v in values if v is not None]
        part = f" ({len(known)} of {len(values)} seeds)" if 0 < len(known) < len(values) else ""
        return f"{mean(known):.{digits}f}{part}" if known else "–"
    lines = ["| method (training batches, mean over seeds) | steps with the gradient norm clipped | groups with equal "
             "rewards | completion length (tokens) | completions cut at the limit | median gradient norm | steps where "
             "every group's rewards are equal | their clipped gradient norm ÷ other steps' |",
             "|---|---|---|---|---|---|---|---|"]
    for method, s in stats.items():
        cells = [r["training"] for r in s["cells"] if r.get("training")]
        if cells:
            lines.append(f"| {method} | " + " | ".join(cell([c.get(k) for c in cells], d) for k, d in (
                ("grad_clipped_share", 2), ("zero_std_groups", 2), ("completion_length", 1), ("cut_share", 2),
                ("grad_norm_median", 2), ("equal_reward_steps", 2), ("equal_reward_step_ratio", 2))) + " |")
    return lines


def report(out: Path, plot: Path | None) -> str:
    """Markdown tables of --out (cells, methods, training batches, the goals for AGRO at either loss scale, the two
    scales paired by seed), and its plot; every figure is read from --out."""
    rows = read_cells(out)
    if not rows:
        raise UsageError(f"{out}: no cells to report")
    stats = summary(rows)
    lines = ["| method | seed | accuracy | 95% interval | n | Δ π_ref (step 0) | KL(π‖π_ref) | held-out accuracy by step |"
             " step (s, median) |", "|---|---|---|---|---|---|---|---|---|"]
    for method, s in stats.items():
        for r in sorted(s["cells"], key=lambda r: r["seed"]):
            curve = " → ".join(f"{a:.3f}" for _, a in r["curve"])
            start = r.get("accuracy_start", r["accuracy"])
            step = r.get("step_seconds_median")
            lines.append(f"| {method} | {r['seed']} | {r['accuracy']:.3f} | {r['ci95'][0]:.3f}–{r['ci95'][1]:.3f} | "
                         f"{r['n']} | {r['accuracy'] - start:+.3f} | {r['kl']:.3f} ± {r.get('kl_se', 0):.3f} | {curve} | "
                         f"{'–' if step is None else f'{step:.1f}'} |")
    lines += ["", "| method | seeds | accuracy, mean ± std over seeds | min–max over seeds | mean held-out accuracy "
              "after step 0 | mean KL(π‖π_ref) |", "|---|---|---|---|---|---|"]
    for method, s in stats.items():
        spread = "" if s["std"] is None else f" ± {s['std']:.3f}"
        lines.append(f"| {method} | {len(s['cells'])} | {s['mean']:.3f}{spread} | {s['min']:.3f}–{s['max']:.3f} | "
                     f"{s['curve_mean']:.3f} | {s['kl']:.3f} |")
    if any(r.get("training") for r in rows):
        lines += ["", *training_lines(stats)]
    lines += ["", "The goals, AGRO with its defaults (`agro_loss_type: dr_grpo`):", "", *goal_lines(stats)]
    if any(m in stats for m in SUM.values()):
        lines += ["", "The same goals, AGRO at the summed scale (`agro_loss_type: sum`):", "",
                  *goal_lines(stats, SUM), "", "The two scales on the same seeds:", "", *scale_lines(stats)]
    if any(METHODS[m][0] == "offline_strong" for m in stats):
        lines += ["", "Offline from a stronger policy's records (the final model of the `agro` cell of each seed):",
                  "", *goal_lines(stats, goals=STRONG_GOALS)]
    if plot is not None:
        plot_cells(stats, plot)
    return "\n".join(lines)


def mean_by_step(curves: list[list[list[float]]]) -> tuple[list[int], list[float]]:
    """Curves of [step, value] pairs (one per seed) as the steps any of them has and the mean value there."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [mean(by_step[x]) for x in steps]


def plot_cells(stats: dict[str, dict], path: Path) -> None:
    """Left: held-out accuracy by step, mean over seeds (π_ref dashed); middle: final accuracy per method, each
    seed a dot with its Wilson interval; right: the share of the training samples cut at the length limit, by
    step, mean over seeds (methods that sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, cut) = plt.subplots(1, 3, figsize=(18, 4.5))
    # one colour a method (the default cycle repeats after 10): tab20's 10 dark hues, then their light ones
    colors = {"pi_ref": "black", **{m: plt.get_cmap("tab20")((2 * i + i // 10) % 20)
                                    for i, m in enumerate(m for m in stats if m != "pi_ref")}}
    for method, s in stats.items():
        if method == "pi_ref":
            left.axhline(s["mean"], color="black", linestyle="--", label="pi_ref")
            continue
        left.plot(*mean_by_step([r["curve"] for r in s["cells"]]), marker="o", label=method, color=colors[method])
    left.set(xlabel="optimizer step", ylabel="held-out greedy accuracy (mean over seeds)")
    left.legend(fontsize=8)
    for i, (method, s) in enumerate(stats.items()):
        for j, r in enumerate(sorted(s["cells"], key=lambda r: r["seed"])):
            x = i + (j - (len(s["cells"]) - 1) / 2) * 0.12
            middle.errorbar([x], [r["accuracy"]], yerr=[[r["accuracy"] - r["ci95"][0]], [r["ci95"][1] - r["accuracy"]]],
                           fmt="o", color=colors[method], capsize=3)
    middle.set_xticks(range(len(stats)), list(stats), rotation=30, ha="right")
    middle.set(ylabel="final held-out accuracy (95% Wilson interval per seed)")
    for method, s in stats.items():
        steps, shares = mean_by_step([(r.get("training") or {}).get("cut_curve", []) for r in s["cells"]])
        if steps:
            cut.plot(steps, shares, label=method, color=colors[method])
    cut.set(xlabel="optimizer step", ylabel="training samples cut at the limit (seed mean)")
    if cut.lines:
        cut.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints the usage first)
        self.exit(2, f"real_model.py: error: {message}\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated integers (training problems, sampling, "
                        "offline data)")
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps of every training cell")
    parser.add_argument("--task", default="chain_sum_2", help=f"one of {','.join(TASKS)} (real_model_screen.py)")
    parser.add_argument("--out", type=Path, default=Path("docs/real_model/cells.jsonl"), help="the cells' JSONL")
    parser.add_argument("--heldout", type=int, default=200, help="held-out problems per cell (task seed 1)")
    parser.add_argument("--eval-every", type=int, default=5, help="held-out evaluation (and checkpoint) every N steps")
    parser.add_argument("--kl-samples", type=int, default=64, help="samples of the final policy for its KL to π_ref")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the base config every cell shares")
    parser.add_argument("--model", default=None, help="instead of the config's model_name_or_path (tests: a tiny one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a base-config override for every cell (part of the cells' settings hash)")
    parser.add_argument("--runs", default="runs/real_model", help="where runs and offline data go")
    parser.add_argument("--keep-models", action="store_true", help="keep each run's final/ model")
    parser.add_argument("--report", action="store_true", help="print the tables of --out and write --plot")
    parser.add_argument("--plot", type=Path, default=None, help="report: the figure (default: next to --out)")
    args = parser.parse_args(argv)
    try:
        args.methods = [m for m in args.methods.split(",") if m]
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if args.task not in TASKS:
        parser.error(f"unknown task {args.task!r}; choose from {', '.join(TASKS)}")
    for flag in ("max_steps", "heldout", "eval_every", "kl_samples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.report and (not args.methods or not args.seeds):
        parser.error("--methods and --seeds must name at least one each")
    if not args.config.is_file():
        parser.error(f"--config {args.config}: file not found")
    args.plot = args.plot or args.out.with_name("curves.png")
    return args


def main(argv: list[str] | None = None) -> int:
    from agro.errors import AgroError

    args = parse(argv)
    try:
        if args.report:
            print(report(args.out, args.plot))
            return 0
        cells = run(args)
    except (UsageError, AgroError) as err:
        print(f"real_model.py: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"real_model.py: error: {' '.join(err.cmd[2:4])} failed with exit code {err.returncode}",
              file=sys.stderr)
        return 1
    print(json.dumps({"cells": [{k: v for k, v in r.items() if not k.endswith("_curve")} for r in cells]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
