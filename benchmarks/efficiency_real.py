"""The efficiency benchmark on a real model: held-out accuracy against fresh generated tokens and wall-clock
seconds, AGRO's reuse of generations against on-policy GRPO and TRL's GRPOTrainer (`efficiency.py --model`).

    python benchmarks/efficiency.py --model smollm2-135m-instruct --task reasoning_gym:chain_sum_2 \
        --seeds 0,1,2 --steps 40 --methods grpo,agro,agro_replay_1_1 --out docs/efficiency/real_model/chain_sum_2

A cell is one method × seed, trained for --steps optimizer steps from --config (configs/smollm2-135m-cpu.yaml)
on the task's training split (1,000 problems of the seed) and scored every --eval-every steps, greedily, on the
same --heldout problems (the task's held-out split, seed 1) by agro's evaluation code. Every agro method runs
`agro train` on the base config with the task, budget and seed, plus only its own keys (`METHODS`):

    grpo, agro                   on-policy: objective grpo | agro
    agro_num_iterations_2        AGRO, each generation batch trained on for 2 optimizer steps
    agro_replay_F_R, grpo_replay_F_R
                                 of the config's prompts_per_step groups per step, F:R fresh:replayed (group
                                 replay, `REPLAY`'s keys): 1_1 halves the fresh generations per step, 1_3
                                 quarters them, at the same groups per optimizer step
    trl_grpo, trl_grpo_num_iterations_2
                                 TRL's GRPOTrainer on the model folder agro resolves, with the config's
                                 hyper-parameters (`TRL_FROM_CONFIG`; loss_type grpo, scale_rewards group, k3 KL
                                 without the bias correction), one generation batch of prompts_per_step ×
                                 num_generations completions per optimizer step, num_iterations 1 | 2; its reward is
                                 agro's scorer of the config's reward (a completion cut at the limit scored as
                                 truncated_completions says); its held-out evaluation the same function agro's
                                 trainer calls.

Fresh generated tokens: the tokens of completions sampled for training by the policy being trained, counted when
they are made: for agro, Σ count/on_policy × length/on_policy over the rows of a generation batch's first
iteration (iteration 1 in metrics.jsonl); for TRL, the completion tokens its reward function was given (TRL
scores each generation batch once, when it is made). Seconds: training time, evaluations excluded (agro: Σ
time_step; TRL: the time since training began less the time in the evaluation callback).

A cell runs in --runs/NAME/METHOD-seedSEED (its logs are kept there, not its weights). Each finished cell is
appended to <out>/runs.jsonl, an agro cell's per-step metrics.jsonl copied to <out>/logs/METHOD-seedSEED.jsonl
(gradient norms, KL, rewards, replay: what the table's accuracies come from); a rerun skips the cells there (an
unfinished one starts again), and refuses, in one line, a runs.jsonl made with other shared settings. <out> also
gets summary.json (the JSON printed last), efficiency.md (the table, then the study's goals met or missed, each
with its slack and the 95% noise of the accuracy difference: `GOALS`) and efficiency.png (accuracy against fresh
tokens and against seconds, mean over seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import (
    CONFIG,
    TASKS,
    agro_cli,
    difference_noise,
    fmt,
    metrics_curve,
    num,
    plot_accuracy,
    stats,
    table,
    trl_evaluation,
)
from common import check_resumable as check_rows

from agro.errors import AgroError

PREFIX = "reasoning_gym:"
# the config keys of group replay: the fresh groups of a step, and the replayed groups that join them
REPLAY = {"fresh": "prompts_per_step", "replayed": "replay_groups_per_step"}
# method -> (objective, its keys beside the objective, fresh:replayed split of the step's groups or None)
METHODS: dict[str, tuple[str, dict, tuple[int, int] | None]] = {
    "grpo": ("grpo", {}, None),
    "agro": ("agro", {}, None),
    "trl_grpo": ("trl", {"num_iterations": 1}, None),
    "trl_grpo_num_iterations_2": ("trl", {"num_iterations": 2}, None),
    "agro_num_iterations_2": ("agro", {"num_iterations": 2}, None),
    "agro_replay_1_1": ("agro", {}, (1, 1)),
    "agro_replay_1_3": ("agro", {}, (1, 3)),
    "grpo_replay_1_1": ("grpo", {}, (1, 1)),
}
# GRPOConfig fields given the base config's value (TRL's meaning is agro's: docs/guide/trl-config.md)
TRL_FROM_CONFIG = ("learning_rate", "beta", "epsilon", "epsilon_high", "num_generations", "max_completion_length",
                   "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "loss_type", "max_grad_norm",
                   "weight_decay", "adam_beta1", "adam_beta2", "lr_scheduler_type", "warmup_steps", "seed", "bf16")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"efficiency.py: error: {message}\n")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="efficiency.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder or agro's built-in name (smollm2-135m-instruct)")
    p.add_argument("--task", required=True, help="reasoning_gym:NAME: a reasoning-gym task, or a task of "
                   f"real_model_screen.py ({', '.join(TASKS)}) with its settings")
    p.add_argument("--task-kwargs", default="{}", help="JSON object: the task's settings (over the screened ones)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated integers")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of every cell")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--heldout", type=int, default=200, help="held-out problems (the task's held-out split, seed 1)")
    p.add_argument("--eval-every", type=int, default=5, help="held-out evaluation every N optimizer steps")
    p.add_argument("--config", type=Path, default=CONFIG, help="the base config of every cell")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a base-config override for every cell")
    p.add_argument("--out", type=Path, help="runs.jsonl, summary.json, efficiency.md, efficiency.png "
                   "(default runs/efficiency/real_model/NAME)")
    p.add_argument("--runs", type=Path, default=Path("runs/efficiency/real_model"),
                   help="the cells' run directories go in RUNS/NAME (metrics.jsonl and config.yaml are kept; the "
                        "weights of a finished cell are removed)")
    p.add_argument("--summarise-only", action="store_true", help="rebuild summary, table and plot from runs.jsonl")
    args = p.parse_args(argv)
    if not args.task.startswith(PREFIX) or args.task == PREFIX:
        p.error(f"--task must be reasoning_gym:NAME, got {args.task!r}")
    try:
        kwargs = json.loads(args.task_kwargs)
    except json.JSONDecodeError as err:
        p.error(f"--task-kwargs is not JSON: {err}")
    if not isinstance(kwargs, dict):
        p.error(f"--task-kwargs must be a JSON object, got {args.task_kwargs!r}")
    bad = sorted({"size", "seed"} & set(kwargs))
    if bad:
        p.error(f"--task-kwargs sets {', '.join(bad)}: the benchmark chooses the splits' sizes and seeds")
    args.name = args.task[len(PREFIX):]
    gym_task, screened = TASKS.get(args.name, (args.name, {}))
    args.gym_task, args.task_kwargs = gym_task, {**screened, **kwargs}
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not args.summarise_only and (not args.methods or not args.seeds):
        p.error("--methods and --seeds must name at least one each")
    for flag in ("steps", "heldout", "eval_every"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if not args.config.is_file():
        p.error(f"--config {args.config}: file not found")
    args.out = args.out or Path("runs/efficiency/real_model") / args.name
    return args


# ----------------------------------------------------------------------------- the cells' settings


def shared_settings(args) -> list[str]:
    """`key=value` overrides every cell shares: model, task, held-out set, budget, evaluations, --set."""
    source = f"{PREFIX}{args.gym_task}"
    return [f"model_name_or_path={args.model}", f"train_data={source}", f"eval_data={source}",
            f"eval_data_kwargs={json.dumps({**args.task_kwargs, 'size': args.heldout, 'seed': 1})}",
            f"max_steps={args.steps}", f"eval_steps={args.eval_every}", "save_steps=0", "report_to=[]",
            *args.overrides]


def settings_digest(args) -> str:
    """What every cell of one --out shares, hashed: the base config's text and the shared overrides."""
    text = args.config.read_text() + "\n" + "\n".join(shared_settings(args))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def load(settings: list[str], config_path: Path):
    """The validated TrainConfig (agro.config imports no torch; a bad key fails at once, one line)."""
    from agro.config import load_config

    return load_config(config_path, settings)


def method_keys(method: str, base) -> dict:
    """The config keys `method` sets (its objective, iterations, replay split); `base`: the shared config."""
    objective, keys, split = METHODS[method]
    own = {} if objective == "trl" else {"objective": objective}
    own.update(keys)
    if split is not None:
        fresh, replayed = split
        groups = base.prompts_per_step
        if groups % (fresh + replayed):
            raise AgroError(f"{method}: prompts_per_step {groups} does not split {fresh}:{replayed} into fresh and "
                            "replayed groups (--set prompts_per_step=a multiple of "
                            f"{fresh + replayed})")
        unit = groups // (fresh + replayed)
        own.update({REPLAY["fresh"]: fresh * unit, REPLAY["replayed"]: replayed * unit})
    return own


def cell_settings(args, method: str, seed: int, base) -> list[str]:
    """The overrides of one agro cell: the shared ones, the seed and its training problems, the method's keys."""
    return [*shared_settings(args), f"seed={seed}",
            f"train_data_kwargs={json.dumps({**args.task_kwargs, 'size': 1000, 'seed': seed})}",
            *(f"{k}={json.dumps(v)}" for k, v in method_keys(method, base).items())]


# ----------------------------------------------------------------------------- one cell


def agro_curve(rows: list[dict]) -> list[list]:
    """[[step, fresh tokens, seconds, accuracy]] at each evaluation of an agro run's metrics.jsonl rows: fresh
    tokens are the on-policy completions' tokens of generation batches' first iterations, seconds Σ time_step."""
    return metrics_curve(rows, lambda r: round(r.get("count/on_policy", 0) * r.get("length/on_policy", 0)))


def run_agro(args, method: str, seed: int, base, run_dir: Path) -> dict:
    settings = [*cell_settings(args, method, seed, base), f"output_dir={run_dir}"]
    load(settings, args.config)  # a bad setting fails here, before a run starts
    agro_cli("train", str(args.config), *[a for s in settings for a in ("--set", s)])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"curve": agro_curve(rows), "settings": settings}


def trl_arguments(c, iterations: int, run_dir: Path) -> dict:
    """GRPOConfig's arguments for the config `c`: its hyper-parameters (`TRL_FROM_CONFIG`), one generation batch
    of prompts_per_step groups per optimizer step, trained on for `iterations` steps."""
    import torch

    return {**{k: getattr(c, k) for k in TRL_FROM_CONFIG},
            "output_dir": str(run_dir), "use_cpu": not torch.cuda.is_available(), "max_steps": c.max_steps,
            "per_device_train_batch_size": c.prompts_per_step * c.num_generations, "gradient_accumulation_steps": 1,
            "steps_per_generation": 1, "num_iterations": iterations, "scale_rewards": "group",
            "use_bias_correction_kl": False,  # agro's k3 KL term, not ratio-weighted
            "mask_truncated_completions": False,  # agro scores cut completions (truncated_completions) instead
            "optim": "adamw_torch", "disable_dropout": True, "model_init_kwargs": {"dtype": c.torch_dtype},
            "activation_checkpointing": False, "logging_strategy": "no", "save_strategy": "no", "eval_strategy": "no",
            "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0}


def run_trl(args, method: str, seed: int, base, run_dir: Path) -> dict:
    """TRL's GRPOTrainer on the cell's model, prompts, reward and hyper-parameters; greedy held-out accuracy from
    a callback every --eval-every steps by agro's evaluation code, and the fresh tokens TRL made so far."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    import agro.data as data
    import agro.gym as gym
    from agro.evaluate import evaluate, load_eval_problems
    from agro.models import load_tokenizer, resolve_model
    from agro.rewards.answers import is_truncated
    from agro.rewards.scoring import score_texts
    from agro.rewards.workers import RewardScorer
    from agro.tokens import eos_token_ids, prompt_text

    c = load(cell_settings(args, "grpo", seed, base), args.config)
    if c.num_threads:
        torch.set_num_threads(c.num_threads)
    trl_args = trl_arguments(c, METHODS[method][1]["num_iterations"], run_dir)
    model_dir = resolve_model(c.model_name_or_path)
    tokenizer = load_tokenizer(model_dir, False)
    train, _ = data.load_problems(c.train_data, template=c.prompt_template, require_answer=False,
                                  split="train" if gym.is_gym_source(c.train_data) else c.dataset_split,
                                  kwargs=c.train_data_kwargs, instruction=c.instruction, system_prompt=c.system_prompt)
    heldout = load_eval_problems(c)
    counter = {"fresh": 0}
    scorer = RewardScorer(c.reward_function, timeout=c.reward_timeout, in_process=True)

    def task_reward(prompts, completions, completion_ids, answer, **kwargs) -> list[float]:
        counter["fresh"] += sum(len(ids) for ids in completion_ids)  # once per generation batch, when made
        texts = [x[-1]["content"] if isinstance(x, list) else x for x in completions]
        eos = eos_token_ids(tokenizer, trainer.model)
        cut = [is_truncated(ids, eos) for ids in completion_ids]
        return score_texts(scorer, [prompt_text(tokenizer, p) for p in prompts], texts, list(answer), cut,
                           c.truncated_completions)[0]

    def accuracy(model) -> float:
        return evaluate(model, tokenizer, heldout, scorer, c.max_completion_length, batch_size=c.generation_batch_size,
                        truncated_completions=c.truncated_completions)["accuracy"]

    curve: list[list] = []
    callback = trl_evaluation(curve, lambda: trainer.model, accuracy, lambda: counter["fresh"], c.eval_steps)

    with scorer:
        trainer = GRPOTrainer(model=model_dir, reward_funcs=task_reward, args=GRPOConfig(**trl_args),
                              train_dataset=Dataset.from_list([{"prompt": p.prompt, "answer": p.answer}
                                                               for p in train]),
                              processing_class=tokenizer, callbacks=[callback])
        trainer.train()
    return {"curve": curve, "settings": {k: v for k, v in trl_args.items() if isinstance(v, int | float | str | bool)}}


def run_cell(args, method: str, seed: int, base) -> dict:
    """One (method, seed) cell from scratch (an unfinished one's run directory is removed): its runs.jsonl row. The
    finished run keeps its logs, not its weights (final/, checkpoint-*/)."""
    run_dir = args.runs / args.name / f"{method}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = (run_trl if METHODS[method][0] == "trl" else run_agro)(args, method, seed, base, run_dir)
    if (log := run_dir / "metrics.jsonl").exists():
        (args.out / "logs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, args.out / "logs" / f"{method}-seed{seed}.jsonl")
    for weights in [run_dir / "final", *run_dir.glob("checkpoint-*")]:
        shutil.rmtree(weights, ignore_errors=True)
    curve = result["curve"]
    return {"method": method, "seed": seed, "task": args.task, "task_kwargs": args.task_kwargs, "model": args.model,
            "steps": args.steps, "heldout": args.heldout, "shared": settings_digest(args), "curve": curve,
            "final_accuracy": curve[-1][3], "fresh_tokens": curve[-1][1], "seconds": curve[-1][2],
            "wall_seconds": round(time.perf_counter() - start, 1), "settings": result["settings"]}


# ----------------------------------------------------------------------------- summary


def read_runs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def check_resumable(runs: list[dict], digest: str, log: Path) -> None:
    """One line and exit 2 when a row of `log` was made with other shared settings: a table would mix them."""
    check_rows(runs, log, lambda r: None if r["shared"] == digest
               else f"other shared settings (digest {r['shared']}, this command {digest})")


def mean_curve(curves: list[list[list]]) -> list[list]:
    """[step, fresh tokens, seconds, accuracy], each the mean over seeds, at the steps every seed evaluated."""
    steps = sorted(set.intersection(*({p[0] for p in c} for c in curves)))
    by_step = [{p[0]: p for p in c} for c in curves]
    return [[s, *(round(statistics.mean(b[s][i] for b in by_step), 4) for i in (1, 2, 3))] for s in steps]


# (goal, AGRO methods (the best counts), the method compared with, condition -> bound): met when, on the seeds both
# ran, mean accuracy − the other's ≥ its bound and mean fresh tokens and seconds ÷ the other's ≤ their bounds
GOALS = [
    ("AGRO's best reuse reaches GRPO's final accuracy (within 0.02) with ≤ 0.5× its fresh tokens and ≤ 0.7× its "
     "seconds", ("agro_replay_1_1", "agro_replay_1_3", "agro_num_iterations_2"), "grpo",
     {"accuracy": -0.02, "fresh_tokens": 0.5, "seconds": 0.7}),
    ("At equal fresh generations, AGRO's reuse ≥ GRPO's with the same reuse", ("agro_replay_1_1",),
     "grpo_replay_1_1", {"accuracy": 0.0}),
    ("At equal fresh generations, AGRO's reuse ≥ TRL's num_iterations=2", ("agro_replay_1_1", "agro_num_iterations_2"),
     "trl_grpo_num_iterations_2", {"accuracy": 0.0}),
]


def side(runs: list[dict], method: str, seeds: list[int]) -> dict:
    """`method`'s runs on `seeds`: final accuracy's mean and std, mean fresh tokens and seconds, and the pooled
    held-out problems n = Σ heldout."""
    rs = [r for r in runs if r["method"] == method and r["seed"] in seeds]
    accuracy, std = stats([r["final_accuracy"] for r in rs])
    return {"accuracy": accuracy, "std": std, "seeds": len(rs), "n": sum(r["heldout"] for r in rs),
            "fresh_tokens": statistics.mean(r["fresh_tokens"] for r in rs),
            "seconds": statistics.mean(r["seconds"] for r in rs)}


def compare(runs: list[dict], method: str, other: str, bounds: dict) -> dict | None:
    """`method` against `other` on the seeds both ran (None: no such seed): accuracies, their difference d and its
    noise, ratios r of fresh tokens and seconds; per condition its slack, d − bound (accuracy) or bound − r."""
    seeds = sorted({r["seed"] for r in runs if r["method"] == method}
                   & {r["seed"] for r in runs if r["method"] == other})
    if not seeds:
        return None
    a, b = side(runs, method, seeds), side(runs, other, seeds)
    diff = a["accuracy"] - b["accuracy"]
    spread = difference_noise(*((s["accuracy"], s["std"], s["seeds"], s["n"]) for s in (a, b)))
    values = {"accuracy": [a["accuracy"], b["accuracy"]], "accuracy_diff": diff,
              "fresh_tokens_ratio": a["fresh_tokens"] / b["fresh_tokens"], "seconds_ratio": a["seconds"] / b["seconds"]}
    slack = {k: diff - bound if k == "accuracy" else bound - values[f"{k}_ratio"] for k, bound in bounds.items()}
    return {"methods": [method, other], "seeds": seeds, "values": values, "met": min(slack.values()) >= 0,
            "slack": slack, "noise": spread, "within_noise": abs(diff) <= spread}


def goals(runs: list[dict]) -> list[dict]:
    """Each of `GOALS` by its best AGRO method, the one with the largest smallest slack (met: it is ≥ 0); met None
    where no AGRO method shares a seed with the other."""
    out = []
    for text, methods, other, bounds in GOALS:
        best = max(filter(None, (compare(runs, m, other, bounds) for m in methods)),
                   key=lambda c: min(c["slack"].values()), default=None)
        out.append({"goal": text, **(best or {"methods": [*methods, other], "seeds": [], "values": None, "met": None,
                                              "slack": None, "noise": None, "within_noise": None})})
    return out


def goal_table(entries: list[dict]) -> list[str]:
    """The goals' Markdown table: measured values on the seeds both sides ran, met or missed, slacks, noise."""
    rows = []
    for g in entries:
        if g["met"] is None:
            rows.append([g["goal"], f"{', '.join(g['methods'][:-1])} vs {g['methods'][-1]}: no seed both ran",
                         "not run", "—", "—"])
            continue
        (method, other), v = g["methods"], g["values"]
        rows.append([g["goal"], f"{method} {v['accuracy'][0]:.3f} vs {other} {v['accuracy'][1]:.3f} "
                     f"({v['accuracy_diff']:+.3f}{', within noise' if g['within_noise'] else ''}; seeds "
                     f"{','.join(map(str, g['seeds']))}); fresh tokens {v['fresh_tokens_ratio']:.2f}×, seconds "
                     f"{v['seconds_ratio']:.2f}×", "met" if g["met"] else "missed",
                     ", ".join(f"{k.replace('_', ' ')} {s:+.3f}" for k, s in g["slack"].items()),
                     f"±{g['noise']:.3f}"])
    return table(["goal", "measured (seeds both ran)", "met?", "slack", "95% noise of the accuracy difference"], rows)


def summarise(runs: list[dict]) -> dict:
    """Per method (in `METHODS` order), the means over its seeds; ratios to grpo's fresh tokens and seconds; the
    study's goals (`goals`)."""
    methods = {}
    for method in METHODS:
        rs = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not rs:
            continue
        accuracy, accuracy_std = stats([r["final_accuracy"] for r in rs])
        fresh, fresh_std = stats([r["fresh_tokens"] for r in rs])
        seconds, seconds_std = stats([r["seconds"] for r in rs])
        methods[method] = {"final_accuracy": accuracy, "final_accuracy_std": accuracy_std, "fresh_tokens": fresh,
                           "fresh_tokens_std": fresh_std, "seconds": seconds, "seconds_std": seconds_std,
                           "seeds": [r["seed"] for r in rs], "curve": mean_curve([r["curve"] for r in rs])}
    grpo = methods.get("grpo")
    for entry in methods.values():
        entry["fresh_tokens_vs_grpo"] = entry["fresh_tokens"] / grpo["fresh_tokens"] if grpo and grpo["fresh_tokens"] else None
        entry["seconds_vs_grpo"] = entry["seconds"] / grpo["seconds"] if grpo and grpo["seconds"] else None
        entry["accuracy_vs_grpo"] = entry["final_accuracy"] - grpo["final_accuracy"] if grpo else None
    first = runs[0]
    # each seed's first cell's step-0 evaluation of π_ref (TRL's cells evaluate by their own path)
    reference: dict[str, float] = {}
    for r in runs:
        if r["curve"][0][0] == 0:
            reference.setdefault(str(r["seed"]), r["curve"][0][3])
    return {"methods": methods, "task": first["task"], "task_kwargs": first["task_kwargs"], "model": first["model"],
            "steps": first["steps"], "heldout": first["heldout"], "reference_accuracy": reference,
            "goals": goals(runs)}


def write_table(summary: dict, path: Path, command: str) -> None:
    lines = [f"Command: `{command}`", "",
             f"{summary['model']} on {summary['task']} {json.dumps(summary['task_kwargs'])}, {summary['steps']} "
             f"optimizer steps, greedy accuracy on {summary['heldout']} held-out problems; mean ± std over seeds. "
             "Fresh tokens: completion tokens sampled for training by the policy being trained; seconds: "
             "training, evaluations excluded. Step 0 (π_ref) per seed: "
             + ", ".join(f"{s}: {a:.3f}" for s, a in sorted(summary["reference_accuracy"].items())) + ".", ""]
    lines += table(["method", "seeds", "final accuracy", "− grpo", "fresh tokens", "÷ grpo", "seconds", "÷ grpo"],
                   [[method, ",".join(map(str, e["seeds"])), fmt(e["final_accuracy"], e["final_accuracy_std"], 3),
                     num(e["accuracy_vs_grpo"], 3), fmt(e["fresh_tokens"], e["fresh_tokens_std"]),
                     num(e["fresh_tokens_vs_grpo"], 2, "×"), fmt(e["seconds"], e["seconds_std"]),
                     num(e["seconds_vs_grpo"], 2, "×")] for method, e in summary["methods"].items()])
    lines += ["", "Goals (means over the seeds both sides ran; slack ≥ 0 on every condition: met; within noise: "
              "the accuracy difference inside ± its 95% noise):", "", *goal_table(summary["goals"])]
    path.write_text("\n".join(lines) + "\n")


def plot(summary: dict, path: Path) -> None:
    """Held-out accuracy against fresh tokens (left) and seconds (right), mean over seeds per method."""
    lines = {method: (list(METHODS).index(method), *([p[i] for p in e["curve"]] for i in (1, 2, 3)))
             for method, e in summary["methods"].items()}
    plot_accuracy(path, lines, "fresh generated tokens", f"{summary['model']}, {summary['task']}: mean over seeds")


# ----------------------------------------------------------------------------- main


def command_line(args, runs: list[dict]) -> str:
    """The one command that makes every row of `runs` (and every cell this one asked for, unless it only
    summarises)."""
    methods = {r["method"] for r in runs} | (set() if args.summarise_only else set(args.methods))
    seeds = sorted({r["seed"] for r in runs} | (set() if args.summarise_only else set(args.seeds)))
    parts = ["python benchmarks/efficiency.py", f"--model {args.model}", f"--task {args.task}"]
    if args.task_kwargs != TASKS.get(args.name, (None, {}))[1]:
        parts.append(f"--task-kwargs '{json.dumps(args.task_kwargs)}'")
    parts += [f"--seeds {','.join(map(str, seeds))}", f"--steps {args.steps}",
              f"--methods {','.join(m for m in METHODS if m in methods)}", f"--heldout {args.heldout}",
              f"--eval-every {args.eval_every}"]
    if args.config != CONFIG:
        parts.append(f"--config {args.config}")
    parts += [f"--set {s}" for s in args.overrides] + [f"--out {args.out}"]
    return " ".join(parts)


def run(args) -> list[dict]:
    """Every asked-for cell not yet in <out>/runs.jsonl, appended as it finishes; every row of runs.jsonl."""
    log = args.out / "runs.jsonl"
    runs = read_runs(log)
    if args.summarise_only:
        return runs
    digest = settings_digest(args)
    check_resumable(runs, digest, log)
    from agro.evaluate import load_eval_problems

    base = load(shared_settings(args), args.config)
    for method in args.methods:
        method_keys(method, base)  # a split that does not fit fails before any cell runs
    n = len(load_eval_problems(base))
    if n < args.heldout:
        raise AgroError(f"--task {args.task} has {n} held-out problems, fewer than --heldout {args.heldout}")
    done = {(r["method"], r["seed"]) for r in runs}
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for method in args.methods:
            if (method, seed) in done:
                continue
            row = run_cell(args, method, seed, base)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: row[k] for k in ("method", "seed", "final_accuracy", "fresh_tokens", "seconds",
                                                  "wall_seconds")}), flush=True)
            runs.append(row)
    return runs


def main(argv: list[str] | None = None) -> int:
    import subprocess

    args = parse(argv)
    try:
        runs = run(args)
        if not runs:
            raise AgroError(f"{args.out / 'runs.jsonl'}: no finished cells to summarise")
    except AgroError as err:
        print(f"efficiency.py: error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"efficiency.py: error: {' '.join(err.cmd[2:4])} failed with exit code {err.returncode}",
              file=sys.stderr)
        return 1
    command = command_line(args, runs)
    summary = {**summarise(runs), "command": command}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_table(summary, args.out / "efficiency.md", command)
    plot(summary, args.out / "efficiency.png")
    print(json.dumps(summary))
    return 0
