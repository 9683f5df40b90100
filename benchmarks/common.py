"""What the benchmark scripts share; a script imports it from its own folder, which Python puts on sys.path.

    processes     CONFIG (the CPU SmolLM2 config), wait_passively, agro_cli
    tiny Llamas   SIZES, SEED, REWARD, build_assets: throughput.py's models, prompts and dense reward, which
                  async_generation.py, generation_cache.py and prefix_sharing.py measure too; sweep, the
                  command line of the pass benchmarks
    SmolLM2 cells TASKS (the reasoning-gym tasks screened), done_cells, append: the JSONL of cells that
                  real_model_screen.py and real_model.py write
    the study     METHODS, REGIMES, run_one: study.py's methods and regimes and one run of them (task_screen.py
                  runs one too)

The standard library and agro's torch-free objective table at import, nothing else: agro's reward workers
re-import the script that runs them, so torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
