"""Bias and convergence of each off-policy candidate in the exact tabular lab, over many instances.

    python benchmarks/tabular_bias.py                 # 20 instances, the Figure-1 budget (5000 steps, lr 0.5)
    python benchmarks/tabular_bias.py --instances 3   # quick

For each data regime (μ = π_ref; μ a fixed random softmax, fresh per instance) and each candidate
(AGRO untapered, AGRO with the `ref` taper, TOPR, AsymRE with δ = 0.1, KL-PG, GRPO), every
instance (seed s: r ~ U(0,1), π_ref = softmax N(0,1), K = 20, β = 0.5) runs from π = π_ref with
exact expected gradients; the normalised KL(π‖π*) after the last step is collected. The last line
printed is one JSON object: {"regimes": {REGIME: {CANDIDATE: {"max":, "median":, "min":, "values": [...]}}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

import agro.tabular as tabular
from agro.tabular import TabularConfig

CANDIDATES = {
    "agro_untapered": ("agro", {"taper": "none"}),
    "agro_taper_ref": ("agro", {"taper": "ref"}),
    "topr": ("topr", {}),
    "asymre_delta_0.1": ("asymre", {"asymre_delta": 0.1}),
    "kl_pg": ("kl_pg", {}),
    "grpo": ("grpo", {}),
}


def random_mu(seed: int, actions: int) -> list[float]:
    """A behaviour policy unrelated to π_ref: softmax of N(0,1) logits from another stream."""
    mu = torch.softmax(torch.randn(actions, generator=torch.Generator().manual_seed(10_000 + seed),
                                   dtype=torch.float64), 0)
    return (mu / mu.sum()).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--actions", type=int, default=20)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--regimes", nargs="+", default=["reference", "fixed"], choices=["reference", "fixed"])
    args = parser.parse_args()
    out: dict = {"settings": vars(args), "regimes": {}}
    for regime in args.regimes:
        table = {}
        for name in args.candidates:
            method, extra = CANDIDATES[name]
            values = []
            for seed in range(args.instances):
                mu = random_mu(seed, args.actions) if regime == "fixed" else None
                config = TabularConfig(actions=args.actions, beta=args.beta, mode="exact", steps=args.steps,
                                       lr=args.lr, data=regime, mu=mu, seed=seed, methods=[method], log_points=1,
                                       **extra)
                values.append(tabular.run(config)["methods"][method]["normalized_kl"][-1])
            table[name] = {"max": max(values), "median": statistics.median(values), "min": min(values),
                           "values": values}
            print(f"{regime:9s} {name:18s} max {max(values):.2e}  median {statistics.median(values):.2e}",
                  flush=True)
        out["regimes"][regime] = table
    print(json.dumps(out))


if __name__ == "__main__":
    main()
