"""Fresh generations (and wall-clock) to reach a target held-out accuracy: AGRO's reuse of generations
against on-policy GRPO (agro's and TRL's GRPOTrainer).

    python benchmarks/efficiency.py                     # the default: multiplication, every method, 3 seeds, 2 workers
    python benchmarks/efficiency.py --quick             # smoke run: 2 steps, 1 seed, a few prompts, a 40-step π_ref
    python benchmarks/efficiency.py --no-trl            # agro's methods only (TRL is the optional `bench` extra)
    python benchmarks/efficiency.py --task arithmetic   # another built-in task (its own default budget)
    python benchmarks/efficiency.py --model smollm2-135m-instruct --task reasoning_gym:chain_sum_2 \
        --seeds 0,1,2 --steps 40 --methods grpo,agro --out DIR   # a real model: benchmarks/efficiency_real.py

The rest of this text is about the built-in tasks (without --model).

Every run starts from the same π_ref (the task's reference policy of the seed, built once into
`--cache-dir` and reused, each seed's preparation running in the worker pool), trains on the
same prompts with the same reward and the same shared hyper-parameters (`--prompts-per-step` groups of
`--group-size`, learning rate, β, AdamW, constant schedule, `--max-grad-norm` 1.0) for `--steps` optimizer steps,
and is scored by greedy accuracy on the same held-out problems every `--eval-every` steps. Methods:

    grpo                        agro `objective: grpo`, `--group-size` fresh samples per prompt, one step per batch
    trl_grpo_num_iterations_1   TRL's GRPOTrainer, the same loss (loss_type grpo, scale_rewards group, k3 KL
    trl_grpo_num_iterations_4   without the bias correction, ε 0.2), num_iterations 1 and 4
    agro                        agro `objective: agro`, `--group-size` fresh samples per prompt
    agro_num_iterations_2       AGRO, each generation batch trained on for 2 (4) optimizer steps
    agro_num_iterations_4
    agro_replay                 AGRO, half the group fresh + half replayed from the same prompt's earlier
                                samples (at most `--staleness` steps old)
    agro_offline_plus_one       AGRO, `--group-size` − 1 records per prompt sampled once from π_ref before
                                training (offline data) + 1 fresh sample per prompt

Fresh generations are completions sampled from the policy being trained: agro's `count/on_policy` of
the first iteration of each generation batch (`iteration` 1 in metrics.jsonl); for TRL, the completions
its reward function was called on (TRL scores each generation once, when it is made). π_ref's offline
records are made once, before training, and are reported apart (`offline_records`). Seconds are the
training wall-clock up to an evaluation, evaluations excluded (agro: the sum of `time_step`; TRL: the
time since training began less the time spent in the evaluation callback).

Target: `--target-fraction` (0.9) × the mean over seeds of `grpo`'s final accuracy. For each run,
fresh_generations_to_target (seconds_to_target) is the count at its first evaluation with accuracy ≥
target (null if none). Aggregation over seeds: the JSON value is the mean over seeds when every seed
reached the target, else null; `seeds_reached` says how many did and `*_reached_mean` is the mean over
those. final_accuracy is the mean over seeds of the last evaluation.

Each finished run is appended to `<out>/runs.jsonl` (an interrupted benchmark resumes: finished
(method, seed) pairs are skipped); the target, the table (`efficiency.md`) and the plot
(`efficiency.png`) are made from that file at the end. The last line printed is one JSON object:
{"methods": {NAME: {"fresh_generations_to_target", "seconds_to_target", "final_accuracy", ...}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from common import check_resumable as check_rows
from common import fmt, metrics_curve, num, plot_accuracy, stats, table, trl_evaluation

from agro.config import CHOICES  # noqa: E402  (imports no torch)
from agro.errors import AgroError  # noqa: E402
from agro.tasks import TASK_NAMES  # noqa: E402  (imports no task, nor torch)

# agro's reward workers are spawned processes, and so are this script's run workers: both re-import this
# script, so the modules that pull in torch and transformers are imported inside the functions that need them.

METHODS = ("grpo", "trl_grpo_num_iterations_1", "trl_grpo_num_iterations_4", "agro", "agro_num_iterations_2",
           "agro_num_iterations_4", "agro_replay", "agro_offline_plus_one")
TRL_ITERATIONS = {"trl_grpo_num_iterations_1": 1, "trl_grpo_num_iterations_4": 4}
REUSE = ("agro_num_iterations_2", "agro_num_iterations_4", "agro_replay", "agro_offline_plus_one")
SHARED = ("steps", "prompts_per_step", "group_size", "eval_every", "staleness", "learning_rate", "beta",
          "max_grad_norm", "agro_loss_type", "threads")  # the settings every run of one --out shares
DIAGNOSTICS = ("batch_drift", "kl_end", "grad_norm_median", "grad_norm_above_1")  # reuse_diagnostics' keys
# the default budget (the study's settings: 16 prompts × 8 per step, 128 training prompts, 300 held-out), and
# per task the steps that bring GRPO near its plateau, with evaluations frequent enough to place the target
FULL = dict(steps=100, seeds=[0, 1, 2], prompts_per_step=16, group_size=8, train_problems=128, heldout=300,
            eval_every=5, staleness=8)
TASK_DEFAULTS = {"arithmetic": dict(steps=40, eval_every=1),  # GRPO: ≥ 0.9 within 10 steps (docs/results/study.md)
                 "countdown": dict(steps=150, eval_every=10),  # GRPO: 0.20 → 0.27-0.28 by step 150 (docs/results/tasks.md)
                 # GRPO: 0.10 → 0.6-0.75 by step 150, its plateau (0.67-0.80) by 150-250 (docs/results/tasks.md); 150 steps
                 # fit the 45-minute budget, so the target is 0.9 × an accuracy still rising slowly
                 "multiplication": dict(steps=150, eval_every=10)}
QUICK = dict(steps=2, seeds=[0], prompts_per_step=4, group_size=4, train_problems=4, heldout=20, eval_every=1,
             staleness=1, warmup_steps=40)  # a smoke test: a π_ref of 40 warm-up steps (built in seconds)


# ----------------------------------------------------------------------------- the task


def load_task(name: str):
    """The task module of `agro.tasks`."""
    from agro.tasks import get_task

    return get_task(name)


def prepare_job(spec: dict) -> dict:
    """π_ref (built and cached when missing), the problems and, when `spec["offline_per_prompt"]`, π_ref's
    offline records of one seed, in a worker process: the paths and facts the seed's runs need."""
    import torch

    from agro.tasks.harness import greedy_accuracy, prepare_seed, write_offline

    torch.set_num_threads(spec["threads"])
    task, seed = load_task(spec["task"]), spec["seed"]
    settings = task.Settings()
    if spec["warmup_steps"] is not None:
        settings = replace(settings, train_steps=spec["warmup_steps"])
    data_dir = Path(spec["out"]) / f"seed{seed}"
    base = prepare_seed(task, settings, seed, spec["cache_dir"], data_dir, spec["train_problems"], spec["heldout"])
    prep = {"seed": seed, "ref_path": str(base["ref_path"]), "train": str(data_dir / "train.jsonl"),
            "heldout": str(data_dir / "heldout.jsonl"), "max_len": base["max_len"],
            "max_prompt_len": task.max_prompt_tokens(settings), "reward": task.REWARD,
            "offline": None, "offline_records": 0, "offline_distinct": 0}
    if per_prompt := spec["offline_per_prompt"]:
        path = data_dir / f"offline_pi_ref_{per_prompt}.jsonl"
        if not path.exists():
            write_offline(task.REWARD, base["ref_model"], base["tokenizer"], base["train"], per_prompt, base["max_len"],
                          seed, path, "pi_ref")
        records = [json.loads(line) for line in path.read_text().splitlines()]
        prep["offline"] = str(path)
        prep["offline_records"] = len(records)  # π_ref's generations; the trainer drops repeated ones
        prep["offline_distinct"] = len({(r["prompt"], r["completion"]) for r in records})
    prep["reference_accuracy"] = greedy_accuracy(task.REWARD, base["ref_model"], base["tokenizer"], base["heldout"],
                                                 base["max_len"])
    return prep


# ----------------------------------------------------------------------------- one run


def agro_settings(method: str, prep: dict, job: dict) -> list[str]:
    """The `key=value` config of an agro method (shared settings first, then the method's own)."""
    g = job["group_size"]
    shared = [f"model_name_or_path={prep['ref_path']}", f"train_data={prep['train']}", "prompt_template=raw",
              "truncated_completions=keep", f"reward_function={prep['reward']}", f"eval_data={prep['heldout']}", f"eval_steps={job['eval_every']}",
              f"max_completion_length={prep['max_len']}", f"max_prompt_length={prep['max_prompt_len']}",
              f"max_steps={job['steps']}", f"prompts_per_step={job['prompts_per_step']}",
              f"learning_rate={job['learning_rate']}", f"beta={job['beta']}", "lr_scheduler_type=constant",
              f"max_grad_norm={job['max_grad_norm']}", "weight_decay=0.0", "temperature=1.0", "mini_batch_size=512",
              "generation_batch_size=512", "save_steps=0", "save_total_limit=1", "report_to=none", "logging_steps=1",
              f"num_threads={job['threads']}", f"seed={prep['seed']}", f"output_dir={job['run_dir']}"]
    if method == "grpo":
        own = ["objective=grpo", f"num_generations={g}", "offline_per_group=0"]
    elif method == "agro":
        own = ["objective=agro", f"num_generations={g}", "offline_per_group=0"]
    elif method.startswith("agro_num_iterations_"):
        own = ["objective=agro", f"num_generations={g}", "offline_per_group=0",
               f"num_iterations={int(method.rsplit('_', 1)[1])}"]
    elif method == "agro_replay":
        own = ["objective=agro", f"num_generations={g - g // 2}", "offline_per_group=0",
               f"replay_per_group={g // 2}", f"replay_max_staleness={job['staleness']}"]
    elif method == "agro_offline_plus_one":
        own = ["objective=agro", "num_generations=1", f"offline_data={prep['offline']}",
               f"offline_per_group={g - 1}"]
    else:
        raise ValueError(f"unknown agro method {method!r}")
    if "objective=agro" in own:
        own.append(f"agro_loss_type={job['agro_loss_type']}")
    return shared + own


def run_agro(method: str, prep: dict, job: dict) -> dict:
    from agro.config import load_config
    from agro.trainer import Trainer

    settings = agro_settings(method, prep, job)
    Trainer(load_config(None, settings)).train()
    rows = [json.loads(line) for line in (Path(job["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    curve = metrics_curve(rows, lambda r: int(r.get("count/on_policy", 0)))
    trained = sum(int(r.get("num_generations", 0)) for r in rows)
    return {"curve": curve, "generations_trained": trained, "settings": settings,
            "clip_fraction": _mean_of(rows, "objective/clip_fraction"), **reuse_diagnostics(rows)}


def reuse_diagnostics(rows: list[dict]) -> dict:
    """`batch_drift`: over generation batches trained on more than once, the mean of the change of
    `log_ratio_mean` (mean over the batch of Σ_t log π/π_ref) from the batch's first to its last iteration:
    the same samples, so it is the mean of Σ_t log π_last/π_first on them, an estimate of −KL(π_first‖π_last)
    (None without reuse). `kl_end`: on-policy KL(π‖π_ref) (`kl`), mean of the last 5 generation batches.
    `grad_norm_median`, `grad_norm_above_1`: the gradient norm before clipping, its median over the optimizer
    steps and the share of steps where it exceeds 1 (those the default `--max-grad-norm` 1 rescales)."""
    steps = [r for r in rows if r.get("iteration", 0) >= 1 and "log_ratio_mean" in r]
    drifts, first = [], None
    for i, r in enumerate(steps):
        if r["iteration"] == 1:
            first = r["log_ratio_mean"]
        elif first is not None and (i + 1 == len(steps) or steps[i + 1]["iteration"] == 1):  # a batch's last
            drifts.append(r["log_ratio_mean"] - first)
    kls = [r["kl"] for r in steps if r["iteration"] == 1 and "kl" in r][-5:]
    norms = [r["grad_norm"] for r in steps if math.isfinite(r.get("grad_norm", math.nan))]  # NaN: skipped step
    return {"batch_drift": statistics.mean(drifts) if drifts else None,
            "kl_end": statistics.mean(kls) if kls else None,
            "grad_norm_median": statistics.median(norms) if norms else None,
            "grad_norm_above_1": sum(n > 1.0 for n in norms) / len(norms) if norms else None}


def _mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.mean(values) if values else None


def run_trl(method: str, prep: dict, job: dict) -> dict:
    """TRL's GRPOTrainer on the same model, prompts, reward and shared settings; greedy held-out accuracy
    from a callback every `eval_every` optimizer steps, and the fresh generations TRL made so far."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from agro.data import load_problems
    from agro.rewards.functions import load_reward_function
    from agro.tasks.harness import greedy_accuracy

    iterations = TRL_ITERATIONS[method]
    g = job["group_size"]
    args = GRPOConfig(
        output_dir=job["run_dir"], use_cpu=not torch.cuda.is_available(), seed=prep["seed"],
        max_steps=job["steps"], per_device_train_batch_size=job["prompts_per_step"] * g,
        gradient_accumulation_steps=1, steps_per_generation=1,  # one generation batch per optimizer step, as agro
        num_iterations=iterations, num_generations=g, max_completion_length=prep["max_len"],
        temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=job["learning_rate"], lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=job["max_grad_norm"], beta=job["beta"], epsilon=0.2, loss_type="grpo", scale_rewards="group",
        use_bias_correction_kl=False,  # agro's (and TRL's classic) k3 KL term, not ratio-weighted
        disable_dropout=True, model_init_kwargs={"dtype": "float32"},
        bf16=False, gradient_checkpointing=False,  # TRL's defaults (autocast, recompute) are not the same work
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(prep["ref_path"])
    train, _ = load_problems(prep["train"], template="raw")
    heldout, _ = load_problems(prep["heldout"], template="raw")
    score = load_reward_function(prep["reward"])
    counter = {"fresh": 0}

    def task_reward(prompts, completions, answer, **kwargs) -> list[float]:
        counter["fresh"] += len(completions)  # called once per generation batch, on its fresh completions
        return [float(score(p, c, a)) for p, c, a in zip(prompts, completions, answer)]

    curve: list[list] = []
    evaluate = trl_evaluation(curve, lambda: trainer.model, fresh=lambda: counter["fresh"], every=job["eval_every"],
                              accuracy=lambda m: greedy_accuracy(prep["reward"], m, tokenizer, heldout, prep["max_len"]))
    trainer = GRPOTrainer(model=prep["ref_path"], reward_funcs=task_reward, args=args,
                          train_dataset=Dataset.from_dict({"prompt": [p.prompt for p in train],
                                                           "answer": [p.answer for p in train]}),
                          processing_class=tokenizer, callbacks=[evaluate])
    trainer.train()
    return {"curve": curve, "generations_trained": job["steps"] * job["prompts_per_step"] * g,
            "settings": {k: v for k, v in args.to_dict().items() if isinstance(v, int | float | str | bool)}}


def run_job(job: dict) -> dict:
    """One (method, seed) run, in a worker process: its row for runs.jsonl."""
    import torch

    torch.set_num_threads(job["threads"])
    prep, method = job["prep"], job["method"]
    run_dir = Path(job["run_dir"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run of this benchmark, not in runs.jsonl
    start = time.perf_counter()
    result = run_trl(method, prep, job) if method in TRL_ITERATIONS else run_agro(method, prep, job)
    curve = result["curve"]
    return {"method": method, "seed": prep["seed"], "curve": curve, "final_accuracy": curve[-1][3],
            "fresh_generations": curve[-1][1], "seconds": curve[-1][2], "steps": job["steps"],
            "generations_trained": result["generations_trained"],
            **{k: prep[k] if method == "agro_offline_plus_one" else 0 for k in ("offline_records", "offline_distinct")},
            "reference_accuracy": prep["reference_accuracy"], "clip_fraction": result.get("clip_fraction"),
            **{k: result.get(k) for k in DIAGNOSTICS},
            "wall_seconds": time.perf_counter() - start, "threads": job["threads"], "settings": result["settings"],
            "shared": relevant_shared(method, {k: job[k] for k in SHARED})}


def relevant_shared(method: str, shared: dict) -> dict:
    """The shared settings that act on `method`'s run (`agro_loss_type` only on the AGRO methods)."""
    return {k: v for k, v in shared.items() if k != "agro_loss_type" or method.startswith("agro")}


def check_resumable(runs: list[dict], shared: dict, log: Path) -> None:
    """Exit (code 2, one line) when a row of `log` was made with other shared settings than these: resuming
    would average runs of different settings into one table. Rows written before rows recorded them pass."""
    def mismatch(r: dict) -> str | None:
        if "shared" not in r:
            return None
        want = relevant_shared(r["method"], shared)
        differ = sorted(k for k in want if k != "threads" and k in r["shared"] and r["shared"][k] != want[k])
        return (", ".join(f"{k}={r['shared'][k]}" for k in differ) + " but this command has "
                + ", ".join(f"{k}={want[k]}" for k in differ)) if differ else None

    try:
        check_rows(runs, log, mismatch)
    except AgroError as err:
        print(err, file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- summary


def first_reaching(curve: list[list], target: float) -> tuple[int, float, float] | None:
    """(fresh generations, seconds) at the first evaluation with accuracy ≥ target, and the lowest accuracy
    from there on; None if no evaluation reaches the target."""
    i = next((i for i, c in enumerate(curve) if c[3] >= target), None)
    return None if i is None else (curve[i][1], curve[i][2], min(c[3] for c in curve[i:]))


def summarise(runs: list[dict], target_fraction: float) -> dict:
    """The target (from grpo's runs) and, per method, the means over seeds of the measures."""
    grpo = [r["final_accuracy"] for r in runs if r["method"] == "grpo"]
    target = target_fraction * statistics.mean(grpo) if grpo else None
    methods = {}
    for method in METHODS:
        rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not rs:
            continue
        final_mean, final_std = stats([r["final_accuracy"] for r in rs])
        reached = [hit for r in rs if target is not None and (hit := first_reaching(r["curve"], target))]
        entry = {"final_accuracy": final_mean, "final_accuracy_std": final_std, "seeds": [r["seed"] for r in rs],
                 "seeds_reached": len(reached), "fresh_generations": statistics.mean(r["fresh_generations"] for r in rs),
                 "seconds": statistics.mean(r["seconds"] for r in rs),
                 "offline_records": statistics.mean(r["offline_records"] for r in rs),
                 "offline_distinct": statistics.mean(r.get("offline_distinct", 0) for r in rs)}
        for i, key in enumerate(("fresh_generations_to_target", "seconds_to_target")):
            mean, std = stats([hit[i] for hit in reached]) if reached else (None, None)
            entry[f"{key}_reached_mean"], entry[f"{key}_std"] = mean, std
            entry[key] = mean if reached and len(reached) == len(rs) else None
        entry["lowest_after_target_reached_mean"] = statistics.mean(hit[2] for hit in reached) if reached else None
        for key in DIAGNOSTICS:  # agro's diagnostics
            # (None for TRL, without reuse, or in rows written before they were recorded)
            values = [r[key] for r in rs if r.get(key) is not None]
            entry[key] = statistics.mean(values) if values else None
        methods[method] = entry
    reference = {r["seed"]: r["reference_accuracy"] for r in runs}
    return {"target": target, "target_fraction": target_fraction,
            "grpo_final_accuracy": statistics.mean(grpo) if grpo else None, "methods": methods,
            "reference_accuracy": reference,  # π_ref's held-out accuracy per seed (every run's step-0 evaluation)
            # seeds where π_ref already reaches the target: there every run "reaches" it at step 0
            "seeds_reference_reaches_target": sorted(s for s, a in reference.items()
                                                     if target is not None and a >= target)}


def goal_check(summary: dict) -> list[str]:
    """The goal, per AGRO reuse setting: fresh generations to target ≤ 0.5× GRPO's and fewer than TRL's
    GRPOTrainer at num_iterations=4, at a final accuracy ≥ GRPO's − 0.02 (means over seeds)."""
    m = summary["methods"]
    grpo, trl4 = m.get("grpo"), m.get("trl_grpo_num_iterations_4")
    reuse = [k for k in REUSE if k in m]
    if not grpo or not reuse:
        return ["Goal check: needs the grpo runs and at least one AGRO reuse setting."]
    g_fresh, t_fresh = grpo["fresh_generations_to_target"], trl4 and trl4["fresh_generations_to_target"]
    lines = ["Goal check (means over seeds; a setting with a seed that never reached the target "
             "fails the first two): fresh generations to target ≤ 0.5× grpo's, fewer than "
             "trl_grpo_num_iterations_4's, final accuracy ≥ grpo's − 0.02.", ""]
    rows, met = [], []
    for k in reuse:
        e, fresh = m[k], m[k]["fresh_generations_to_target"]
        half = fresh is not None and g_fresh is not None and fresh <= 0.5 * g_fresh
        ratio = f"{fresh / g_fresh:.2f}×" if fresh is not None and g_fresh else "—"
        if not trl4:
            fewer, trl_text = None, "not measured"
        else:  # TRL never reaching the target in some seed: any setting that always reaches it needs fewer
            fewer = fresh is not None and (t_fresh is None or fresh < t_fresh)
            trl_text = f"{num(fresh, 0)} vs {num(t_fresh, 0)}"
        gap = e["final_accuracy"] - grpo["final_accuracy"]
        final_ok = gap >= -0.02
        ok = half and fewer is not False and final_ok
        if ok:
            met.append(k)
        yes = {True: "yes", False: "no", None: "—"}
        rows.append([k, f"{yes[half]} ({ratio})", f"{yes[fewer]} ({trl_text})", f"{yes[final_ok]} ({gap:+.3f})",
                     "met" if ok else "not met"])
    lines += table(["AGRO reuse setting", "≤ 0.5× grpo", "< TRL num_iterations=4", "final ≥ grpo − 0.02", "goal"], rows)
    caveats = [] if trl4 else ["TRL not measured"]
    if summary.get("seeds_reference_reaches_target"):
        caveats.append(f"not meaningful: π_ref already reaches the target on seed(s) "
                       f"{summary['seeds_reference_reaches_target']}")
    lines += ["", f"Goal: {'met by ' + ', '.join(met) if met else 'not met by any AGRO reuse setting'}"
              + (f" ({'; '.join(caveats)})" if caveats else "") + "."]
    return lines


def write_table(summary: dict, runs: list[dict], path: Path, command: str) -> None:
    m = summary["methods"]
    grpo_fresh = m.get("grpo", {}).get("fresh_generations_to_target")
    target = summary["target"]
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"Command: `{command}`", "",
             f"Target: {summary['target_fraction']} × GRPO's mean final accuracy"
             + (f" = {target:.3f}" if target is not None else " (no grpo run yet)")
             + f". Mean ± std over seeds {seeds}; to-target columns over the seeds that reached it "
             "(reached: how many), ratio: to GRPO's fresh generations to target. Run: the whole run's fresh "
             "generations and training seconds; π_ref records: offline samples made before training (the "
             "trainer drops repeats). π_ref's accuracy (step 0) per seed: "
             + ", ".join(f"{s}: {a:.3f}" for s, a in sorted(summary["reference_accuracy"].items())) + ".", ""]
    if summary["seeds_reference_reaches_target"]:
        lines += [f"**Warning:** π_ref already reaches the target on seed(s) {summary['seeds_reference_reaches_target']}: "
                  "every run of those seeds reaches it at step 0 (0 fresh generations), which measures nothing; "
                  "GRPO improves too little over π_ref on this task and budget for the target to separate methods.", ""]
    rows = []
    for method, e in m.items():
        ratio = (f"{e['fresh_generations_to_target'] / grpo_fresh:.2f}"
                 if grpo_fresh and e["fresh_generations_to_target"] is not None else "—")
        rows.append([method, fmt(e["fresh_generations_to_target_reached_mean"], e["fresh_generations_to_target_std"]),
                     ratio, fmt(e["seconds_to_target_reached_mean"], e["seconds_to_target_std"], 1),
                     f"{e['seeds_reached']}/{len(e['seeds'])}", fmt(e["final_accuracy"], e["final_accuracy_std"], 3),
                     num(e["lowest_after_target_reached_mean"], 3), f"{e['fresh_generations']:.0f}",
                     f"{e['seconds']:.1f}", f"{e['offline_records']:.0f} ({e['offline_distinct']:.0f})"])
    lines += table(["method", "fresh gen. to target", "ratio", "seconds to target", "reached", "final accuracy",
                    "lowest after reaching", "fresh gen. (run)", "seconds (run)", "π_ref records (distinct)"], rows)
    diagnosed = {k: e for k, e in m.items() if e["kl_end"] is not None}
    if diagnosed:
        lines += ["", "agro's runs: KL(π‖π_ref) of the on-policy samples over the last 5 generation batches "
                  "(`kl`), and, with num_iterations > 1, the within-batch drift: the mean over batches of "
                  "Σ_t log π_last/π_first on the batch's own samples, from its first to its last iteration "
                  "(an estimate of −KL(π_first‖π_last)); the gradient norm before clipping (median over the "
                  "optimizer steps) and the share of steps where it is above 1 (those `--max-grad-norm` 1 rescales).",
                  ""]
        lines += table(["method", "KL to π_ref at the end", "within-batch drift", "gradient norm", "steps above 1"],
                       [[k, f"{e['kl_end']:.2f}", num(e["batch_drift"], 3), num(e.get("grad_norm_median"), 2),
                         num(e.get("grad_norm_above_1"), 2)] for k, e in diagnosed.items()])
    lines += ["", *goal_check(summary)]
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, runs: list[dict], path: Path) -> None:
    """Held-out accuracy against fresh generations (and seconds), mean over seeds per method."""
    lines, top = {}, 0.0
    for method in summary["methods"]:
        curves = [r["curve"] for r in runs if r["method"] == method]
        n = min(len(c) for c in curves)  # evaluations at the same steps in every seed
        fresh, seconds, y = ([statistics.mean(c[i][column] for c in curves) for i in range(n)] for column in (1, 2, 3))
        top = max(top, *y, summary["target"] or 0.0)
        lines[method] = (METHODS.index(method), [max(v, 1) for v in fresh], seconds, y)
    seeds = sorted({r["seed"] for r in runs})
    plot_accuracy(path, lines, "fresh generations (log scale; the step-0 evaluation drawn at 1)",
                  f"held-out accuracy, mean over seeds {seeds}; target = {summary['target_fraction']} × GRPO's final "
                  "accuracy", target=summary["target"], log_fresh=True,
                  top=min(1.0, top + 0.05))  # a task with low accuracies gets the room it needs


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="multiplication", choices=TASK_NAMES, help="a built-in task of agro.tasks")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the task's, see TASK_DEFAULTS)")
    p.add_argument("--prompts-per-step", type=int)
    p.add_argument("--group-size", type=int, help="generations per prompt per step, whatever their source")
    p.add_argument("--train-problems", type=int, help="small, so that prompts recur for replay")
    p.add_argument("--heldout", type=int, help="held-out problems")
    p.add_argument("--eval-every", type=int, help="held-out evaluation every N optimizer steps")
    p.add_argument("--staleness", type=int, help="agro_replay: replay samples at most this many steps old")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm of every method (0: off)")
    p.add_argument("--agro-loss-type", default="sum", choices=CHOICES["agro_loss_type"],
                   help="agro_loss_type of the AGRO methods (dr_grpo: the loss ÷ max_completion_length); sum, "
                        "the committed toy runs' setting, unlike the library's default dr_grpo")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--target-fraction", type=float, default=0.9)
    p.add_argument("--warmup-steps", type=int, help="π_ref's supervised warm-up steps (default: the task's)")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel, one process each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "agro" / "demo")
    p.add_argument("--out", type=Path, default=Path("runs/efficiency"))
    p.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--no-trl", action="store_true", help="skip TRL's methods")
    p.add_argument("--summarise-only", action="store_true", help="rebuild the table, plot and JSON from runs.jsonl")
    args = p.parse_args(argv)
    defaults = dict(QUICK) if args.quick else {**FULL, **TASK_DEFAULTS.get(args.task, {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.group_size < 2:
        p.error("--group-size must be ≥ 2 (replay and offline_plus_one split the group)")
    return args


def command_line(args: argparse.Namespace) -> str:
    skip = ("out", "summarise_only", "cache_dir", "quick", "no_trl")
    parts = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
             for k, v in vars(args).items() if k not in skip and v is not None]
    return "python benchmarks/efficiency.py " + " ".join(parts) + (" --no-trl" if args.no_trl else "") \
        + f" --out {args.out}"


def main(argv=None) -> int | None:
    model = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    model.add_argument("--model")
    if model.parse_known_args(argv)[0].model is not None:  # a real model: its own flags and cells
        from efficiency_real import main as real_model_main

        return real_model_main(argv)
    args = parse_args(argv)
    trl_available = True
    try:
        import trl  # noqa: F401
    except ImportError:
        trl_available = False
    use_trl = trl_available and not args.no_trl
    if not trl_available and not args.no_trl:
        print("trl is not installed (pip install -e '.[bench]'): measuring agro's methods only", flush=True)
    if not use_trl:
        args.no_trl = True
        args.methods = [m for m in args.methods if m not in TRL_ITERATIONS]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    command = command_line(args)
    failed: list[str] = []
    if not args.summarise_only:
        import torch

        torch.set_num_threads(args.threads)
        shared = {k: getattr(args, k) for k in SHARED}
        check_resumable(runs, shared, log)
        done = {(r["method"], r["seed"]) for r in runs}
        todo = {seed: [m for m in args.methods if (m, seed) not in done] for seed in args.seeds}
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            # each seed's preparation (π_ref, built once and cached, its problems, its offline records) runs in
            # the pool too; its runs are queued as soon as it is done, grpo first (the target needs it)
            pending = {pool.submit(prepare_job, {
                "task": args.task, "seed": seed, "warmup_steps": args.warmup_steps, "cache_dir": str(args.cache_dir),
                "out": str(args.out), "train_problems": args.train_problems, "heldout": args.heldout,
                "threads": args.threads,
                "offline_per_prompt": args.group_size - 1 if "agro_offline_plus_one" in methods else 0,
            }): ("prepare", seed) for seed, methods in todo.items() if methods}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, job = pending.pop(future)
                    what = f"seed {job} preparation" if kind == "prepare" else f"{job['method']} seed {job['prep']['seed']}"
                    try:
                        result = future.result()
                    except Exception as err:  # the other runs go on; this one is not in runs.jsonl
                        failed.append(f"{what}: {type(err).__name__}: {err}")
                        print(f"failed: {failed[-1]}", file=sys.stderr, flush=True)
                        continue
                    if kind == "prepare":
                        print(json.dumps({k: result[k] for k in ("seed", "reference_accuracy", "offline_records",
                                                                 "offline_distinct")}), flush=True)
                        for method in sorted(todo[job], key=METHODS.index):
                            run = {"method": method, "prep": result, **shared,
                                   "run_dir": str(args.out / "runs" / f"{method}-seed{job}")}
                            pending[pool.submit(run_job, run)] = ("run", run)
                        continue
                    print(json.dumps({k: result[k] for k in ("method", "seed", "final_accuracy", "fresh_generations",
                                                             "seconds", "wall_seconds")}), flush=True)
                    with open(log, "a") as f:
                        f.write(json.dumps(result) + "\n")
                    runs.append(result)
    if not runs:
        raise SystemExit(f"{log}: no finished runs to summarise")
    summary = summarise(runs, args.target_fraction)
    write_table(summary, runs, args.out / "efficiency.md", command)
    plot(summary, runs, args.out / "efficiency.png")
    print(f"wrote {args.out / 'efficiency.md'} and {args.out / 'efficiency.png'}", flush=True)
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed (rerun the command to retry them): " + "; ".join(failed))
    print(json.dumps({**summary, "trl": use_trl, "task": args.task, "command": command}))


if __name__ == "__main__":
    sys.exit(main())
