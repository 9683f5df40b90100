"""The objectives by name, without torch: what each one cannot do without, and what kind of estimator it is.

config.py takes the choices of `objective` from here, and prompts.py whether offline records must carry
behaviour log-probs, so neither imports torch; `agro.objectives` maps each name to its loss function and
checks that the two tables name the same objectives. Every objective reads log π_ref (its KL term), so
that needs no column. Kinds:

    consistency  AGRO's estimator: the regularised reward r − β·Δ minus its group baseline; from any data
                 that covers the generations its only fixed point is π* (docs/guide/objectives.md)
    reinforce    a REINFORCE peer: the sequence score function with an advantage or weight of its own
    ratio        a per-token surrogate of the ratio to the sampler, clipped (PPO's, as GRPO uses it)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Objective:
    """needs_behavior: cannot do without log μ, the generating policy's log-probs (offline records must carry
    them); agro reads them when known (its tapers "behavior" and "clip") and needs none."""

    needs_behavior: bool
    kind: Literal["consistency", "reinforce", "ratio"]
    description: str


OBJECTIVES: dict[str, Objective] = {
    "agro": Objective(False, "consistency", "AGRO: the group-mean baseline of the regularised reward, with tapers "
                                            "for offline and stale samples"),
    "grpo": Objective(False, "ratio", "GRPO as TRL computes it: std-normalised group advantages, a clipped "
                                      "per-token ratio, k3 KL in the loss"),
    "rloo": Objective(False, "consistency", "REINFORCE leave-one-out with k1 KL in the reward: agro with "
                                            "baseline loo and agro_loss_type sum"),
    "kl_pg": Objective(False, "reinforce", "the naive KL-regularised policy gradient: a reward-only baseline, "
                                           "settles off π* off-policy"),
    "is_pg": Objective(True, "reinforce", "REINFORCE with truncated sequence importance weights min(π/μ, c)"),
    "topr": Objective(True, "reinforce", "Tapered Off-Policy REINFORCE: negative samples weighted by "
                                         "min(1, π/μ)"),
    "asymre": Objective(False, "reinforce", "Asymmetric REINFORCE: the baseline δ below the group mean"),
}
