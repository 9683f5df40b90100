"""Stale samples in the tabular lab: what 4 updates of lag cost AGRO and GRPO, with and without a trust region.

    python benchmarks/tabular_lag.py                  # 20 seeds, both optimisers (about a minute)
    python benchmarks/tabular_lag.py --seeds 5        # quick

A miniature of issue 30's stale regime (docs/real_model.md): one prompt, K = 20 answers of which 2 are right
(reward 1, the rest 0), π_ref holding 0.1 on the right ones, β = 0.05, groups of M = 8 samples, 40 steps. The data
is the policy's own samples (on-policy) or those of the policy 4 updates older (`--data lagged --lag 4`). Each
candidate runs from π = π_ref with `adam` (lr 0.3, max_grad_norm 1: the LLM trainer's update) and with `sgd`
(plain steps, lr 1, no clipping); the lab's losses are the trainer's (`agro.objectives`). Reported: the expected
reward E_π[r] after 10, 20 and 40 steps, mean ± std over seeds (seed s draws the samples), and the normalised
KL(π‖π*) at the end. The last line printed is one JSON object {"settings":, "results": {OPTIMIZER: {CANDIDATE:
{"steps":, "reward_mean":, "reward_std":, "normalized_kl_median":}}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics

from agro import tabular
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    checkpoints = [args.steps // 4, args.steps // 2, args.steps]
    results: dict = {}
    for opt_name, optimizer in OPTIMIZERS.items():
        results[opt_name] = {}
        print(f"\n{opt_name} ({optimizer}): E_π[r] after {checkpoints} steps, mean ± std over {args.seeds} seeds")
        for name, (method, data, lag, taper) in CANDIDATES.items():
            runs = [tabular.run(config(s, args.steps, method, data, lag, taper, optimizer))["methods"][method]
                    for s in range(args.seeds)]
            at = [[r["expected_reward"][r["steps"].index(c)] for r in runs] for c in checkpoints]
            row = {"steps": checkpoints, "reward_mean": [statistics.mean(v) for v in at],
                   "reward_std": [statistics.pstdev(v) for v in at],
                   "normalized_kl_median": statistics.median(r["normalized_kl"][-1] for r in runs)}
            results[opt_name][name] = row
            cells = "  ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(row["reward_mean"], row["reward_std"]))
            print(f"  {name:34s} {cells}   KL/KL0 {row['normalized_kl_median']:.2e}")
    print(json.dumps({"settings": {**vars(args), "optimizers": OPTIMIZERS}, "results": results}))


if __name__ == "__main__":
    main()
