"""What the benchmark scripts share; a script imports it from its own folder, which Python puts on sys.path.

    processes     CONFIG (the CPU SmolLM2 config), wait_passively, agro_cli
    tiny Llamas   SIZES, SEED, REWARD, build_assets: throughput.py's models, prompts and dense reward, which
                  async_generation.py, generation_cache.py and prefix_sharing.py measure too; sweep, the
                  command line of the pass benchmarks
    SmolLM2 cells TASKS (the reasoning-gym tasks screened), done_cells, append: the JSONL of cells that
                  real_model_screen.py and real_model.py write
    the study     METHODS, REGIMES, run_one: study.py's methods and regimes and one run of them (task_screen.py
                  runs one too)
    efficiency    metrics_curve, trl_evaluation, check_resumable, stats, num, fmt, table, plot_accuracy: what
                  efficiency.py and efficiency_real.py (its --model cells) both measure and report

The standard library, agro's torch-free objective table and AgroError at import, nothing else: agro's reward
workers re-import the script that runs them, so torch and transformers are imported inside the functions that
need them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agro.errors import AgroError
from agro.objective_table import OBJECTIVES

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "smollm2-135m-cpu.yaml"


# ----------------------------------------------------------------------------- processes


def wait_passively() -> None:
    """Restart this script with OMP_WAIT_POLICY=PASSIVE unless the environment sets it.

    Waiting OpenMP threads then sleep instead of spinning: on a machine shared with other processes,
    spinning threads stall every parallel region (generation 10x slower with 2 threads on 2 busy
    cores). OpenMP reads it when torch loads, hence the restart; it applies to every side alike.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def agro_cli(*args: str) -> None:
    """The agro command with these arguments, in a subprocess; CalledProcessError when it fails."""
    subprocess.run([sys.executable, "-m", "agro.cli", *args], check=True)


# ----------------------------------------------------------------------------- tiny Llamas


SIZES = {"3M": dict(hidden_size=256, num_layers=3, num_heads=4),
         "11M": dict(hidden_size=416, num_layers=4, num_heads=8),
         "113M": dict(hidden_size=768, num_layers=12, num_heads=12)}  # GPU size: too slow for the CPU default
SEED = 0
REWARD = f"{Path(__file__).with_name('bench_reward.py')}:digit_fraction"


def build_assets(root: Path, size: str, completion_length: int, prompt_length: int | None
                 ) -> tuple[Path, list[str], int]:
    """Save the model (always `completion_length` new tokens) and prompts; (model dir, prompts, params).

    With `prompt_length`, each problem is preceded by solved ones (`12+3=15;`), a few-shot prompt of
    `prompt_length` characters (= tokens) ending in the problem; with 0, the bare problem (7 tokens).
    """
    import torch

    from agro.tasks.arithmetic import ArithmeticTask, build_model, build_tokenizer, generate_problems

    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    positions = (prompt_length or 16) + completion_length + 8
    model = build_model(ArithmeticTask(**SIZES[size], max_positions=max(64, positions)), tokenizer)
    model.generation_config.min_new_tokens = completion_length
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id]  # agro trims trailing padding
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    prompts = [p.prompt for p in generate_problems(64, seed=SEED, split="train")]
    if prompt_length:
        solved = "".join(f"{p.prompt}{p.answer};" for p in generate_problems(2000, seed=SEED + 1, split="train"))
        ends = [m.end() for m in re.finditer(";", solved)]
        few_shot = []
        for i, problem in enumerate(prompts):
            context = prompt_length - len(problem)  # solved problems before it, cut at the left
            if context < 1:
                raise ValueError(f"--prompt-length {prompt_length} leaves no room before the problem {problem!r}")
            end = next(e for e in ends if e >= i * prompt_length % (len(solved) // 2) + context)
            few_shot.append(solved[end - context:end] + problem)
        prompts = few_shot
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    return root / "model", prompts, sum(p.numel() for p in model.parameters())


def sweep(doc: str, axis: str, lengths: str, repeats: int, measure) -> None:
    """CLI of the pass benchmarks: `measure(size, length, repeats)` over sizes × `--{axis}-lengths`; one JSON line."""
    wait_passively()
    import torch

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="11M,3M")
    p.add_argument(f"--{axis}-lengths", default=lengths)
    p.add_argument("--repeats", type=int, default=repeats)
    args = p.parse_args()
    out = {f"{size}/{axis}{n}": measure(size, int(n), args.repeats)
           for size in args.sizes.split(",") for n in getattr(args, f"{axis}_lengths").split(",")}
    out["config"] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                     "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}
    print(json.dumps(out))


# ----------------------------------------------------------------------------- SmolLM2 cells


# the tasks screened: name -> (reasoning-gym task, its difficulty settings)
TASKS = {
    "chain_sum": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}),
    "chain_sum_2": ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    "products": ("products", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    "basic_arithmetic": ("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}),
    "basic_arithmetic_1": ("basic_arithmetic", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                                "operators": ["+", "-", "*"]}),
    "lcm": ("lcm", {"min_value": 1, "max_value": 20}),
    "gcd": ("gcd", {"min_value": 1, "max_value": 50}),
    "gcd_20": ("gcd", {"min_value": 1, "max_value": 20}),
    "simple_equations": ("simple_equations", {"min_terms": 2, "max_terms": 2, "min_value": 1, "max_value": 20}),
    "leg_counting": ("leg_counting", {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 3}),
    "count_bits": ("count_bits", {"min_n": 1, "max_n": 255}),
}


def done_cells(out: Path) -> set[str]:
    """The ids of the cells already in the JSONL `out`."""
    if not out.exists():
        return set()
    return {json.loads(line)["cell"] for line in out.read_text().splitlines() if line.strip()}


def append(out: Path, row: dict) -> None:
    """Append a cell to the JSONL `out`, and print it without its curve and examples."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k not in ("curve", "examples")}), flush=True)


# ----------------------------------------------------------------------------- the study


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


def run_one(prep: dict, method: str, regime: str, seed: int, out: Path, args) -> dict:
    """One study run: `method` in `regime` from the seed's π_ref (`prep`: `agro.tasks.harness.prepare_seed`'s,
    with the offline sets and π_ref's accuracy), through the trainer with configs/demo.yaml; its row of runs.jsonl."""
    from transformers import AutoModelForCausalLM

    from agro.config import load_config
    from agro.tasks.harness import demo_config_path, greedy_accuracy, kl_terms, share_on_data, task_overrides
    from agro.trainer import Trainer

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
        "accuracy": greedy_accuracy(prep["task"].REWARD, model, prep["tokenizer"], prep["heldout"], prep["max_len"]),
        "reference_accuracy": prep["ref_accuracy"],
        "kl_to_reference": float(kl_terms(model, prep["ref_model"], prep["tokenizer"], prep["heldout"],
                                          prep["max_len"], 4).mean()),
        "generations_used": used,
        "curve": curve,
        "fresh_generations": int(sum(r.get("count/on_policy", 0) for r in rows)),
        "share_on_data": (share_on_data(model, prep["tokenizer"], prep["offline"][OFFLINE_SOURCE[regime]],
                                         prep["max_len"])
                          if regime in OFFLINE_SOURCE else None),
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- efficiency


def metrics_curve(rows: list[dict], fresh) -> list[list]:
    """[[step, fresh, seconds, accuracy]] at each evaluation of an agro run's metrics.jsonl rows: `fresh(row)`
    summed over the rows of generation batches' first iterations (iteration 1: their fresh samples were made for
    them), seconds Σ time_step (evaluations excluded)."""
    total, seconds, curve = 0, 0.0, []
    for r in rows:  # a step's evaluation follows its update and is logged in the step's row
        if r.get("iteration") == 1:
            total += fresh(r)
        seconds += r.get("time_step", 0.0)
        if "eval/accuracy" in r:
            curve.append([int(r["step"]), total, round(seconds, 3), r["eval/accuracy"]])
    return curve


def trl_evaluation(curve: list, model, accuracy, fresh, every: int):
    """A transformers TrainerCallback for TRL's GRPOTrainer that appends [step, fresh(), seconds, accuracy] to
    `curve` when training begins (step 0), every `every` optimizer steps and at the last: `accuracy(model())` with
    the model in eval mode, seconds the time since training began less the time spent in these evaluations."""
    from transformers import TrainerCallback

    class Evaluate(TrainerCallback):
        def score(self, step: int) -> None:
            t0 = time.perf_counter()
            m = model()
            was_training = m.training
            m.eval()
            value = accuracy(m)
            m.train(was_training)
            seconds = 0.0 if step == 0 else t0 - self.start - self.eval_seconds
            curve.append([step, fresh(), round(seconds, 3), value])
            self.eval_seconds += time.perf_counter() - t0

        def on_train_begin(self, args, state, control, **kwargs):
            self.eval_seconds = 0.0
            self.score(0)
            self.start, self.eval_seconds = time.perf_counter(), 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 or state.global_step == args.max_steps:
                self.score(state.global_step)

    return Evaluate()


def check_resumable(runs: list[dict], log: Path, mismatch) -> None:
    """AgroError (one line) at the first row of `log` made with other shared settings than this command's, which
    `mismatch(row)` describes (None: the row fits): resuming would average them into one table."""
    for i, r in enumerate(runs, 1):
        if (what := mismatch(r)) is not None:
            raise AgroError(f"{log}:{i}: {r['method']} seed {r['seed']} was run with {what}: use another --out")


Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def difference_noise(a: tuple, b: tuple) -> float:
    """Half-width of a 95% normal interval of the difference of two mean accuracies, each side (mean, std over
    seeds or None, seeds, pooled held-out problems n): Z95 × the larger of √Σ p(1−p)/n (each mean a binomial over
    its pooled problems) and √Σ std²/seeds (each mean's standard error over seeds, what training's randomness
    adds; with 2–3 seeds a rough figure itself; its binomial variance where it has one seed)."""
    def binomial(mean, std, seeds, n):
        return mean * (1 - mean) / n

    def over_seeds(mean, std, seeds, n):
        return binomial(mean, std, seeds, n) if std is None or seeds < 2 else std ** 2 / seeds

    return Z95 * max(math.sqrt(binomial(*a) + binomial(*b)), math.sqrt(over_seeds(*a) + over_seeds(*b)))


def stats(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0.0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def num(value, digits: int, suffix: str = "") -> str:
    """A table's number, — for None."""
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def fmt(mean, std, digits: int = 0) -> str:
    """A table's mean ± std, — for None."""
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def plot_accuracy(path: Path, lines: dict[str, tuple], fresh_label: str, title: str, target: float | None = None,
                  top: float | None = None, log_fresh: bool = False) -> None:
    """Held-out accuracy against fresh generations or tokens (left) and training seconds (right): `lines` maps a
    method to (colour index, fresh, seconds, accuracy), TRL's dashed; `target` a dotted line, `top` the accuracy
    axis' top (from 0), `log_fresh` a log-scale left axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for method, (color, fresh, seconds, y) in lines.items():
        style = dict(marker=".", label=method, color=f"C{color}", linestyle="--" if method.startswith("trl") else "-")
        for ax, x in zip(axes, (fresh, seconds)):
            ax.plot(x, y, **style)
    for ax in axes:
        if target is not None:
            ax.axhline(target, color="gray", linestyle=":", linewidth=1, label="target")
        if top is not None:
            ax.set_ylim(0, top)
    if log_fresh:
        axes[0].set_xscale("log")
    axes[0].set_xlabel(fresh_label)
    axes[1].set_xlabel("training seconds (evaluations excluded)")
    axes[0].set_ylabel("greedy held-out accuracy")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
