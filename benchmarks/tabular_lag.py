"""Stale samples in the tabular lab: what 4 updates of lag cost AGRO and GRPO, with and without a trust region.

    python benchmarks/tabular_lag.py --out docs/real_model    # 20 seeds, both optimisers (10 s)
    python benchmarks/tabular_lag.py --seeds 5                  # quick, prints only

A miniature of the real-model study's stale regime (docs/results/real-model.md): one prompt, K = 20 answers of which 2 are right
(reward 1, the rest 0), π_ref holding 0.1 on the right ones, β = 0.05, groups of M = 8 samples, 40 steps. The data
is the policy's own samples (on-policy) or those of the policy 4 updates older (`--data lagged --lag 4`). Each
candidate runs from π = π_ref with `adam` (lr 0.3, max_grad_norm 1: the LLM trainer's update) and with `sgd`
(plain steps, lr 1, no clipping); the lab's losses are the trainer's (`agro.objectives`). Reported: the expected
reward E_π[r] after 10, 20 and 40 steps, mean ± std over seeds (seed s draws the samples), and the normalised
KL(π‖π*) at the end. The last line printed is one JSON object {"settings":, "results": {OPTIMIZER: {CANDIDATE:
{"steps":, "reward_mean":, "reward_std":, "normalized_kl_median":}}}}; with --out DIR it is also written to
DIR/tabular_lag.json, and its table to DIR/tabular_lag.md (`markdown`).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import agro.tabular as tabular
from agro.tabular import TabularConfig

CANDIDATES = {  # name: (method, data, lag, taper)
    "agro on-policy": ("agro", "on-policy", 0, "none"),
    "agro lag 4, no taper": ("agro", "lagged", 4, "none"),
    "agro lag 4, taper clip": ("agro", "lagged", 4, "clip"),
    "grpo on-policy": ("grpo", "on-policy", 0, "none"),
    "grpo lag 4 (ratio clipped to μ)": ("grpo", "lagged", 4, "none"),
}
OPTIMIZERS = {"adam": {"optimizer": "adam", "lr": 0.3, "max_grad_norm": 1.0},
              "sgd": {"optimizer": "sgd", "lr": 1.0, "max_grad_norm": None}}
ACTIONS, RIGHT = 20, 2


def config(seed: int, steps: int, method: str, data: str, lag: int, taper: str, optimizer: dict) -> TabularConfig:
    reward = [1.0] * RIGHT + [0.0] * (ACTIONS - RIGHT)
    ref = [0.1 / RIGHT] * RIGHT + [0.9 / (ACTIONS - RIGHT)] * (ACTIONS - RIGHT)
    return TabularConfig(actions=ACTIONS, beta=0.05, data=data, lag=lag, taper=taper, methods=[method], seed=seed,
                         steps=steps, mode="sampled", samples=8, reward=reward, ref_policy=ref, log_points=steps,
                         **optimizer)


def measure(seeds: list[int], steps: int, optimizers: tuple[str, ...] = tuple(OPTIMIZERS)) -> dict:
    """Every candidate under each optimiser on each seed; E_π[r] at steps/4, steps/2 and steps (mean, sample std)."""
    checkpoints = [steps // 4, steps // 2, steps]
    results: dict = {}
    for opt_name in optimizers:
        results[opt_name] = {}
        for name, (method, data, lag, taper) in CANDIDATES.items():
            runs = [tabular.run(config(s, steps, method, data, lag, taper, OPTIMIZERS[opt_name]))["methods"][method]
                    for s in seeds]
            at = [[r["expected_reward"][r["steps"].index(c)] for r in runs] for c in checkpoints]
            results[opt_name][name] = {"steps": checkpoints, "reward_mean": [statistics.mean(v) for v in at],
                                       "reward_std": [statistics.stdev(v) for v in at],
                                       "normalized_kl_median": statistics.median(r["normalized_kl"][-1] for r in runs)}
    return {"settings": {"seeds": len(seeds), "steps": steps, "optimizers": {o: OPTIMIZERS[o] for o in optimizers}},
            "results": results}


def markdown(measured: dict) -> str:
    """One table: a row per optimiser × candidate, E_π[r] (mean ± std over seeds) at each checkpoint."""
    settings = measured["settings"]
    first = next(iter(next(iter(measured["results"].values())).values()))
    lines = [f"E_π[r] (mean ± std over {settings['seeds']} seeds) and the median normalised KL(π‖π*) at the end",
             "", "| optimiser | candidate | " + " | ".join(f"step {c}" for c in first["steps"]) + " | KL/KL₀ |",
             "|---|---|" + "---|" * len(first["steps"]) + "---|"]
    for opt_name, rows in measured["results"].items():
        for name, row in rows.items():
            cells = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(row["reward_mean"], row["reward_std"]))
            lines.append(f"| {opt_name} | {name} | {cells} | {row['normalized_kl_median']:.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="write tabular_lag.json and tabular_lag.md here")
    args = parser.parse_args()
    measured = measure(list(range(args.seeds)), args.steps)
    table = markdown(measured)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tabular_lag.json").write_text(json.dumps(measured) + "\n")
        (args.out / "tabular_lag.md").write_text(table)
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
