"""`agro demo`: AGRO on a laptop CPU, from π_ref's own (off-policy) generations plus on-policy samples.

1. build (or load from cache) π_ref of the chosen built-in task (`agro.tasks`, default `arithmetic`): a tiny
   Llama warmed up on imperfect worked solutions;
2. write an offline JSONL of π_ref's generations (the off-policy data, in the format `agro train` reads);
3. train with AGRO on mixed on-policy + offline groups through the real trainer (`configs/demo.yaml`, with the
   task's reward and length bounds, and its `DEMO_OVERRIDES` if it has any);
4. evaluate greedy held-out accuracy of π_ref and of the result; write results.json and a plot.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from transformers import AutoModelForCausalLM

from agro.api import AGROTrainer
from agro.config import load_config
from agro.tasks import get_task
from agro.tasks.harness import demo_config_path, greedy_accuracy, prepare_seed, task_overrides, write_offline


def run_demo(out_dir: Path, quick: bool = False, seed: int = 0, cache_dir: Path | None = None,
             overrides: list[str] | None = None, task: str = "arithmetic") -> dict:
    start = time.perf_counter()
    module = get_task(task)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    settings = module.Settings()
    cache_dir = cache_dir or Path.home() / ".cache" / "agro" / "demo"
    print(f"[1/4] reference policy π_ref of task {task} (cache: {cache_dir})", flush=True)
    prep = prepare_seed(module, settings, seed, cache_dir, data_dir, 256 if quick else 2048, 100 if quick else 300,
                        log_every=100)
    ref_model, tokenizer, heldout, max_len = prep["ref_model"], prep["tokenizer"], prep["heldout"], prep["max_len"]
    ref_path = out_dir / "pi_ref"  # a copy beside the data, where configs/demo.yaml looks for it
    if ref_path.exists():
        shutil.rmtree(ref_path)  # the demo's own previous copy
    shutil.copytree(prep["ref_path"], ref_path)

    print("[2/4] offline data: π_ref's own generations", flush=True)
    offline_path = data_dir / "offline_pi_ref.jsonl"
    records = write_offline(module.REWARD, ref_model, tokenizer, prep["train"][: (64 if quick else 512)], 2, max_len,
                            seed, offline_path, "pi_ref")
    print(f"      wrote {len(records)} records to {offline_path} "
          f"(reward mean {sum(r.reward for r in records) / len(records):.3f})", flush=True)
    ref_eval = greedy_accuracy(module.REWARD, ref_model, tokenizer, heldout, max_len)
    print(f"      π_ref greedy held-out accuracy: {ref_eval:.3f}", flush=True)

    print("[3/4] AGRO on mixed on-policy + offline data", flush=True)
    run_dir = out_dir / "train"
    settings = [f"model_name_or_path={ref_path}", f"train_data={data_dir / 'train.jsonl'}",
                f"offline_data={offline_path}", f"eval_data={data_dir / 'heldout.jsonl'}",
                f"output_dir={run_dir}", *task_overrides(module, settings), f"seed={seed}",
                *getattr(module, "DEMO_OVERRIDES", ())]
    if quick:
        settings += ["max_steps=8", "eval_steps=4"]
    config = load_config(demo_config_path(), settings + list(overrides or []))
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own previous output, never user data
    AGROTrainer(config.model_name_or_path, args=config).train()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    print("[4/4] held-out evaluation", flush=True)
    final_model = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    final_eval = greedy_accuracy(module.REWARD, final_model, tokenizer, heldout, max_len)
    results = {
        "task": task,
        "reference_accuracy": ref_eval,
        "final_accuracy": final_eval,
        "improvement": final_eval - ref_eval,
        "heldout_size": len(heldout),
        "steps": config.max_steps,
        "objective": config.objective,
        "offline_records": len(records),
        "offline_reward_mean": sum(r.reward for r in records) / len(records),
        "seconds": time.perf_counter() - start,
        "curve": [{k: m[k] for k in ("step", "eval/accuracy", "reward/on_policy", "reward/offline", "kl")
                   if k in m} for m in metrics],
        "config": config.to_dict(),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_demo(results, out_dir / "demo.png")
    _print_table(results)
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'demo.png'} in {results['seconds']:.0f} s")
    return results


def plot_demo(results: dict, path: Path) -> None:
    """Held-out accuracy and reward by source against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = results["curve"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    acc = [(c["step"], c["eval/accuracy"]) for c in curve if "eval/accuracy" in c]
    acc = [(0, results["reference_accuracy"])] + [a for a in acc if a[0] > 0] + [
        (results["steps"], results["final_accuracy"])]
    ax1.plot(*zip(*sorted(set(acc))), marker="o")
    ax1.axhline(results["reference_accuracy"], linestyle="--", color="gray", label="π_ref")
    ax1.set_xlabel("step")
    ax1.set_ylabel("greedy held-out accuracy")
    ax1.set_ylim(0, 1)
    ax1.legend()
    for key, label in (("reward/on_policy", "on-policy samples"), ("reward/offline", "offline (π_ref) records")):
        pts = [(c["step"], c[key]) for c in curve if key in c]
        if pts:
            ax2.plot(*zip(*pts), label=label)
    ax2.set_xlabel("step")
    ax2.set_ylabel("mean reward")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle(f"agro demo ({results['task']}): AGRO from on-policy + π_ref data ({results['heldout_size']} held-out problems)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="agro demo: greedy held-out accuracy")
    table.add_column("policy")
    table.add_column("accuracy", justify="right")
    table.add_row("π_ref (warm-up on imperfect solutions)", f"{results['reference_accuracy']:.3f}")
    table.add_row(f"AGRO, {results['steps']} steps, on-policy + π_ref data", f"{results['final_accuracy']:.3f}")
    table.add_row("improvement (absolute)", f"{results['improvement']:+.3f}")
    Console().print(table)
