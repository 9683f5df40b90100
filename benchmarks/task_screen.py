"""Screen a built-in task: π_ref's greedy accuracy and pass@16, and one on-policy GRPO run at the study's
settings (benchmarks/study.py's run, `common.run_one`, without the study's weak/strong builds).

    python benchmarks/task_screen.py ref  --task countdown --settings '{"error_rate": 0.7}' --seed 0
    python benchmarks/task_screen.py grpo --task countdown --settings '{"error_rate": 0.7}' --seed 0 --out runs/screen

Each prints one JSON line. `grpo` reports the held-out greedy curve, its plateau (the mean of the last 5
evaluations) and the first evaluated step within 0.05 of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import run_one

from agro.tasks import TASK_NAMES, get_task
from agro.tasks.harness import greedy_accuracy, prepare_seed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("ref", "grpo"))
    p.add_argument("--task", default="countdown", choices=TASK_NAMES)
    p.add_argument("--settings", default="{}", help="JSON of Settings fields that differ from the defaults")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=16, help="ref: k of pass@k")
    p.add_argument("--problems", type=int, default=200, help="ref: held-out problems for pass@k")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--train-problems", type=int, default=128)
    p.add_argument("--heldout", type=int, default=300)
    p.add_argument("--method", default="grpo")
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "agro" / "demo")
    p.add_argument("--out", type=Path, default=Path("runs/task_screen"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    task = get_task(a.task)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(a.settings).items()}
    settings = task.Settings(**fields)
    start = time.perf_counter()
    model, tok, path = task.load_or_build_reference_policy(a.cache_dir, a.seed, settings)
    row = {"task": a.task, "settings": fields, "seed": a.seed, "pi_ref": str(path),
           "pi_ref_seconds": round(time.perf_counter() - start, 1)}
    if a.what == "ref":
        meta = json.loads((path / "task.json").read_text())
        heldout = task.generate_problems(a.problems, a.seed, "heldout", settings)
        torch.manual_seed(a.seed)
        mean, passed = task.sample_accuracy(model, tok, heldout, a.samples)
        row.update({"greedy": meta["heldout_greedy_accuracy"], "greedy_problems": settings.num_heldout,
                    f"mean@{a.samples}": mean, f"pass@{a.samples}": passed, "sampled_problems": a.problems})
    else:
        # the same π_ref again, from the cache, with the seed's problems
        prep = prepare_seed(task, settings, a.seed, a.cache_dir, a.out / f"{a.task}-seed{a.seed}", a.train_problems,
                            a.heldout)
        prep.update(offline={}, ref_accuracy=greedy_accuracy(task.REWARD, model, tok, prep["heldout"], prep["max_len"]))
        args = argparse.Namespace(steps=a.steps, prompts_per_step=16, eval_every=a.eval_every, threads=a.threads,
                                  staleness=8, offline_samples=8, learning_rate=a.learning_rate, beta=a.beta)
        r = run_one(prep, a.method, "on_policy", a.seed, a.out, args)
        steps = [i * a.eval_every for i in range(len(r["curve"]))]
        accs = [acc for _, acc in r["curve"]]
        plateau = sum(accs[-5:]) / len(accs[-5:])
        row.update({k: r[k] for k in ("method", "accuracy", "reference_accuracy", "kl_to_reference", "seconds")})
        row.update({"plateau_last5": plateau,
                    "steps_to_within_0.05": next(s for s, x in zip(steps, accs) if x >= plateau - 0.05),
                    "curve": dict(zip(steps, accs)), "learning_rate": a.learning_rate, "beta": a.beta})
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
