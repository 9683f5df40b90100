"""Policy-gradient objectives as pure functions of per-token tensors, and the map from their names to them.

Common inputs (B generations, T completion positions):
    logprobs       [B,T]  log π(y_t | x, y_<t) of the policy being trained (differentiable)
    ref_logprobs   [B,T]  log π_ref of the same tokens (no gradient)
    mask           [B,T]  1 on completion tokens, 0 on padding
    rewards        [B]    r(x, y)
    group_ids      [B]    which prompt each generation answers (any integers)
    weights        [B]    optional per-sample weights (e.g. per data source); all 1 by default
    behavior_logprobs [B,T]  log μ of the policy that generated y, when known
    old_logprobs   [B,T]  log-probs at generation time, for clipped ratios
    fresh          [B]    True for on-policy samples of the current policy (default: none fresh)

Each function returns a `LossOutput(loss, metrics)`. Weighted averages use Σ w_i (·) / Σ w_i, so
with unit weights "mean" means (1/N) Σ_i. In the tabular lab, feeding all K actions with
weights μ turns these sample estimators into their exact expectations under μ. All but grpo are
REINFORCE, −Σ_i w_i c_i A_i Σ_t log π / Σ_i w_i (`reinforce_loss`), and differ in A and c; grpo is a
clipped ratio surrogate. The names and what each needs: `agro.objective_table`; derivations:
docs/guide/objectives.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import agro.objective_table as objective_table
from agro.config import CHOICES

TAPERS = CHOICES["taper"]
AGRO_LOSS_TYPES = CHOICES["agro_loss_type"]


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)



# ----------------------------------------------------------------------------- helpers


def sequence_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t mask_t · values_t, per sequence: [B,T] -> [B]."""
    return (values * mask).sum(dim=-1)


def _weights_like(rewards: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return torch.ones_like(rewards)
    return weights.to(rewards.dtype)


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..G-1."""
    _, index = torch.unique(group_ids, return_inverse=True)
    return index, int(index.max().item()) + 1 if index.numel() else 0


def _group_sum(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-sample sum of `values` over the sample's group."""
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return sums[index]


def group_mean(values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """V_i = Σ_{j∈g(i)} w_j v_j / Σ_{j∈g(i)} w_j, the (weighted) mean of the sample's group."""
    w = _weights_like(values, weights)
    index, num_groups = _group_index(group_ids)
    return _group_sum(w * values, index, num_groups) / _group_sum(w, index, num_groups).clamp_min(1e-12)


def group_loo_mean(
    values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """V_i = Σ_{j∈g(i), j≠i} w_j v_j / Σ_{j≠i} w_j, the leave-one-out mean.

    A group of one has no other sample; its baseline is its own value (advantage 0), as with
    the plain mean.
    """
    w = _weights_like(values, weights)
    index, num_groups = _group_index(group_ids)
    other_sum = _group_sum(w * values, index, num_groups) - w * values
    other_weight = _group_sum(w, index, num_groups) - w
    alone = other_weight <= 1e-12
    return torch.where(alone, values, other_sum / other_weight.clamp_min(1e-12))


def group_std(values: torch.Tensor, group_ids: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample (weighted) standard deviation of the group, with Bessel's n/(n-1) correction.

    With unit weights this is `torch.std` of each group (what TRL's GRPO uses); a group of one
    has std 0.
    """
    w = _weights_like(values, weights)
    index, num_groups = _group_index(group_ids)
    mean = group_mean(values, group_ids, w)
    var = _group_sum(w * (values - mean) ** 2, index, num_groups) / _group_sum(w, index, num_groups).clamp_min(1e-12)
    count = _group_sum((w > 0).to(values.dtype), index, num_groups)  # weight-0 members (masked) do not count
    bessel = torch.where(count > 1, count / (count - 1).clamp_min(1), torch.zeros_like(count))
    return (var * bessel).sqrt()


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights * values).sum() / weights.sum().clamp_min(1e-12)


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    v = values.detach().float()
    return {
        f"{prefix}_mean": v.mean().item(),
        f"{prefix}_std": v.std().item() if v.numel() > 1 else 0.0,
        f"{prefix}_min": v.min().item(),
        f"{prefix}_max": v.max().item(),
    }


def _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta):
    """(Δ = Σ_t mask·(log π − log π_ref), R̃ = r − β·Δ), both without gradient."""
    log_ratio = sequence_sum(logprobs.detach() - ref_logprobs, mask)
    return log_ratio, rewards - beta * log_ratio


def _common_metrics(
    rewards: torch.Tensor, log_ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    metrics = {
        "reward_mean": rewards.detach().float().mean().item(),
        "log_ratio_mean": log_ratio.detach().float().mean().item(),
        "completion_length_mean": mask.sum(-1).float().mean().item(),
    }
    metrics.update(_stats("advantage", advantages))
    return metrics


# ----------------------------------------------------------------------------- the REINFORCE shape


def reinforce_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, weights: torch.Tensor,
                   coef: torch.Tensor | None = None, *, rewards: torch.Tensor, log_ratio: torch.Tensor,
                   tokens: torch.Tensor | None = None) -> LossOutput:
    """−Σ_i w_i c_i A_i Σ_t tokens·log π / Σ_i w_i, with A (detached here) and c (default 1, given without
    gradient) constants, so ∇ = −Σ_i w_i c_i A_i ∇log π(y_i) / Σ_i w_i. `tokens`: the tokens whose log π is
    summed (default `mask`). Metrics: the rewards, the log-ratio Δ, the completions' lengths, the advantages."""
    advantages = advantages.detach()
    seq_logprob = sequence_sum(logprobs, mask if tokens is None else tokens)
    terms = advantages * seq_logprob if coef is None else coef * advantages * seq_logprob
    return LossOutput(-_weighted_mean(terms, weights), _common_metrics(rewards, log_ratio, advantages, mask))


# ----------------------------------------------------------------------------- AGRO


def sampler_log_ratio(logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t mask·(log π − log μ): the sequence-level log-ratio to the policy that sampled it (no gradient)."""
    return sequence_sum(logprobs.detach() - behavior_logprobs, mask)


def negative_taper(advantages: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """ρ_i = 1 where A_i ≥ 0, min(1, exp(log_ratio_i)) where A_i < 0 (TOPR's taper; no gradient)."""
    return torch.where(advantages < 0, log_ratio.detach().clamp(max=0.0).exp(), torch.ones_like(advantages))


def trust_region_mask(advantages: torch.Tensor, token_log_ratio: torch.Tensor, epsilon: float,
                      epsilon_high: float | None = None) -> torch.Tensor:
    """[B, T] 0/1, no gradient: 0 on the tokens a sample's advantage would push further out of the ratio range
    [1 − ε, 1 + ε_high] to its sampler (A > 0 and π_t/μ_t > 1 + ε_high, or A < 0 and π_t/μ_t < 1 − ε), else 1:
    GRPO's clip as a mask, without GRPO's importance weight."""
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio, a = token_log_ratio.detach().exp(), advantages.detach().unsqueeze(-1)
    out = ((a > 0) & (ratio > 1 + epsilon_high)) | ((a < 0) & (ratio < 1 - epsilon))
    return (~out).to(token_log_ratio.dtype)


def groups_without_fresh(group_ids: torch.Tensor, fresh: torch.Tensor | None) -> torch.Tensor:
    """[B] bool: the sample's group holds no fresh (on-policy) sample. `fresh` None: no sample is fresh."""
    if fresh is None:
        return torch.ones_like(group_ids, dtype=torch.bool)
    index, num_groups = _group_index(group_ids)
    return _group_sum(fresh.to(torch.float64), index, num_groups) == 0


def agro_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              group_ids: torch.Tensor, beta: float, baseline: str = "mean", weights: torch.Tensor | None = None,
              taper: str = "none", fresh: torch.Tensor | None = None,
              behavior_logprobs: torch.Tensor | None = None, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "sum",
              max_completion_length: int | None = None) -> LossOutput:
    """Any-Generation Reward Optimization, for generations from any sampling distribution μ.

        Δ_i = Σ_t mask·(log π − log π_ref),  R̃_i = r_i − β·Δ_i,  A_i = R̃_i − V̂_i   (V̂: the group's mean of R̃,
        or its leave-one-out mean);  ∇ = −Σ_i w_i ρ_i A_i Σ_t mask·m·∇log π / Σ_i w_i   (÷ max_completion_length
        with loss_type "dr_grpo", the config's default; this function's, "sum", needs no max_completion_length)

    ρ_i = 1, or with taper "ref" min(1, exp(Δ_i)) where A_i < 0 in a group with no fresh sample; "behavior" also
    min(ρ_i, π(y_i)/μ(y_i)) where A_i < 0; "clip" the same except on fresh samples, whose ρ is 1 and whose
    token mask m is 0 where A_i pushes π_t/μ_t further out of [1 − ε, 1 + ε_high] (`trust_region_mask`;
    elsewhere m = 1). Its expected gradient vanishes only where R̃ is constant on μ's support, at
    π* = π_ref·exp(r/β)/Z; on-policy and untapered it is the KL-regularised policy gradient. Why the tapers,
    and the loss scale: docs/guide/objectives.md.
    """
    if baseline not in ("mean", "loo"):
        raise ValueError(f"baseline must be 'mean' or 'loo', got {baseline!r}")
    if loss_type not in AGRO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(AGRO_LOSS_TYPES)}, got {loss_type!r}")
    if loss_type == "dr_grpo" and not (max_completion_length and max_completion_length > 0):
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length > 0, got {max_completion_length!r}")
    if taper not in TAPERS:
        raise ValueError(f"taper must be one of {', '.join(TAPERS)}, got {taper!r}")
    w = _weights_like(rewards, weights)
    log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    value = group_mean(regularised, group_ids, w) if baseline == "mean" else group_loo_mean(regularised, group_ids, w)
    advantages = (regularised - value).detach()
    scale = torch.ones_like(advantages)
    if taper != "none":
        scale = torch.where(groups_without_fresh(group_ids, fresh), negative_taper(advantages, log_ratio), scale)
    clipped = taper == "clip" and behavior_logprobs is not None and fresh is not None
    fresh = None if fresh is None else fresh.bool()
    if taper in ("behavior", "clip") and behavior_logprobs is not None:
        stale = negative_taper(advantages, sampler_log_ratio(logprobs, behavior_logprobs, mask))
        scale = torch.minimum(scale, torch.where(fresh, torch.ones_like(stale), stale) if clipped else stale)
    tokens, metrics = mask, {}
    if clipped:
        kept = trust_region_mask(advantages, logprobs - behavior_logprobs, epsilon, epsilon_high)
        fresh_tokens = mask * fresh.unsqueeze(-1)
        tokens = torch.where(fresh.unsqueeze(-1), mask * kept, mask)
        metrics["clip_region_fraction"] = ((fresh_tokens * (1 - kept)).sum() / fresh_tokens.sum().clamp_min(1)).item()
    out = reinforce_loss(logprobs, mask, advantages, w, scale, rewards=rewards, log_ratio=log_ratio, tokens=tokens)
    metrics.update(out.metrics)
    metrics["regularised_reward_mean"] = regularised.detach().float().mean().item()
    metrics["taper_mean"] = scale.float().mean().item()
    return LossOutput(out.loss / max_completion_length if loss_type == "dr_grpo" else out.loss, metrics)


# ----------------------------------------------------------------------------- baselines


GRPO_LOSS_TYPES = CHOICES["loss_type"]


def grpo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              group_ids: torch.Tensor, beta: float, old_logprobs: torch.Tensor | None = None, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", weights: torch.Tensor | None = None,
              std_epsilon: float = 1e-4, max_completion_length: int | None = None) -> LossOutput:
    """Group Relative Policy Optimization (Shao et al. 2024, arXiv 2402.03300), as TRL's GRPOTrainer computes it.

        A_i = (r_i − mean_g r) / (std_g r + 1e-4),  ρ_it = π/π_old,  k3_it = π_ref/π − log(π_ref/π) − 1
        ℓ_it = −min(ρ A_i, clip(ρ, 1−ε, 1+ε_high) A_i) + β·k3_it,
        ∇ℓ_it = −ρ A_i ∇log π (0 where the clipped term is the minimum) + β(1 − π_ref/π) ∇log π
        loss_type "grpo": mean_i [Σ_t mask ℓ / Σ_t mask];  "dapo", "bnpo": Σ_it mask ℓ / Σ_it mask;
                  "dr_grpo": Σ_it mask ℓ / (B · max_completion_length)

    Weighted: each sequence's terms scaled by w_i, in the divisor too. `old_logprobs` defaults to
    `logprobs.detach()` (ρ = 1). Metrics: `clip_fraction`, the tokens whose ratio lies outside
    [1−ε, 1+ε_high]; `clip_region_fraction`, those where the clipped term is the minimum (no policy
    gradient). How this follows TRL: docs/guide/objectives.md.
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")
    if loss_type == "dr_grpo" and not (max_completion_length and max_completion_length > 0):
        raise ValueError(f"loss_type 'dr_grpo' needs max_completion_length > 0, got {max_completion_length!r}")
    w = _weights_like(rewards, weights)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    old = logprobs.detach() if old_logprobs is None else old_logprobs
    advantages = (rewards - group_mean(rewards, group_ids, w)) / (group_std(rewards, group_ids, w) + std_epsilon)
    ratio = torch.exp(logprobs - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    adv = advantages.unsqueeze(-1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    ref_minus_pi = ref_logprobs - logprobs
    k3 = torch.exp(ref_minus_pi) - ref_minus_pi - 1
    per_token = per_token + beta * k3
    tokens = mask.sum(-1)
    if loss_type == "grpo":
        loss = _weighted_mean(sequence_sum(per_token, mask) / tokens.clamp_min(1), w)
    elif loss_type == "dr_grpo":
        loss = (w * sequence_sum(per_token, mask)).sum() / (w.sum() * max_completion_length).clamp_min(1e-12)
    else:  # dapo, bnpo
        loss = (w * sequence_sum(per_token, mask)).sum() / (w * tokens).sum().clamp_min(1)
    log_ratio = sequence_sum(logprobs.detach() - ref_logprobs, mask)
    metrics = _common_metrics(rewards, log_ratio, advantages, mask)
    metrics["k3_kl_mean"] = (sequence_sum(k3.detach(), mask) / tokens.clamp_min(1)).mean().item()
    was_clipped = ((ratio.detach() - clipped.detach()).abs() > 0).float()
    metrics["clip_fraction"] = (sequence_sum(was_clipped, mask).sum() / tokens.sum().clamp_min(1)).item()
    in_region = 1 - trust_region_mask(advantages, logprobs - old, epsilon, epsilon_high)
    metrics["clip_region_fraction"] = (sequence_sum(in_region, mask).sum() / tokens.sum().clamp_min(1)).item()
    return LossOutput(loss, metrics)


def rloo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              group_ids: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> LossOutput:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, arXiv 2402.14740), the KL a k1 penalty in the reward.

        A_i = R̃_i − mean_{j∈g(i), j≠i} R̃_j,  R̃ = r − β·Δ;   ∇ = −Σ_i w_i A_i ∇log π(y_i) / Σ_i w_i

    The same estimator as `agro_loss(..., baseline="loo")`: the generation-consistent choice.
    """
    w = _weights_like(rewards, weights)
    log_ratio, penalised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = penalised - group_loo_mean(penalised, group_ids, w)
    return reinforce_loss(logprobs, mask, advantages, w, rewards=rewards, log_ratio=log_ratio)


def kl_pg_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
               group_ids: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> LossOutput:
    """The naive KL-regularised policy gradient: what fails off-policy.

        A_i = (r_i − mean_g r) − β·Δ_i;   ∇ = −Σ_i w_i A_i ∇log π(y_i) / Σ_i w_i

    REINFORCE on the reward with a reward-mean baseline, plus β times the score-function gradient of the
    k1 KL estimate Δ_i on the same samples. On-policy its expectation is ∇J; from μ ≠ π the baseline
    E_μ[r] no longer cancels the −β E_μ[Δ] term, and its fixed point is not π*.
    """
    w = _weights_like(rewards, weights)
    log_ratio, _ = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = rewards - group_mean(rewards, group_ids, w) - beta * log_ratio
    return reinforce_loss(logprobs, mask, advantages, w, rewards=rewards, log_ratio=log_ratio)


def is_pg_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
               group_ids: torch.Tensor, beta: float, behavior_logprobs: torch.Tensor | None = None,
               max_importance_weight: float = 2.0, weights: torch.Tensor | None = None) -> LossOutput:
    """Off-policy REINFORCE with truncated sequence-level importance weights.

        ρ_i = min(π(y_i)/μ(y_i), c),  A_i = R̃_i − mean_g R̃;   ∇ = −Σ_i w_i ρ_i A_i ∇log π(y_i) / Σ_i w_i

    Untruncated (c = ∞) its expectation under μ is the on-policy gradient; truncation trades that bias
    for bounded variance. Needs the generating policy's log-probs.
    """
    if behavior_logprobs is None:
        raise ValueError("is_pg_loss needs behavior_logprobs (the generating policy's log-probs)")
    w = _weights_like(rewards, weights)
    log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    log_importance = sampler_log_ratio(logprobs, behavior_logprobs, mask)
    importance = torch.exp(log_importance.clamp(max=math.log(max_importance_weight)))
    advantages = regularised - group_mean(regularised, group_ids, w)
    out = reinforce_loss(logprobs, mask, advantages, w, importance, rewards=rewards, log_ratio=log_ratio)
    out.metrics.update(_stats("importance_weight", importance))
    out.metrics["importance_truncated_fraction"] = (log_importance.exp() > max_importance_weight).float().mean().item()
    return out


def topr_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
              group_ids: torch.Tensor, beta: float, behavior_logprobs: torch.Tensor | None = None,
              weights: torch.Tensor | None = None) -> LossOutput:
    """Tapered Off-Policy REINFORCE (Le Roux et al. 2025, arXiv 2503.14286).

        ρ_i = 1 if A_i ≥ 0, min(1, π(y_i)/μ(y_i)) if A_i < 0,  A_i = R̃_i − mean_g R̃;
        ∇ = −Σ_i w_i ρ_i A_i ∇log π(y_i) / Σ_i w_i

    Positive samples are trained on as in SFT, negative ones with truncated importance sampling. The
    paper's constant baseline is here AGRO's group mean of R̃ (docs/guide/objectives.md); with β = 0 and rewards
    ±1 around it this is the paper's estimator. Needs the generating policy's log-probs.
    """
    if behavior_logprobs is None:
        raise ValueError("topr_loss needs behavior_logprobs (the generating policy's log-probs)")
    w = _weights_like(rewards, weights)
    log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = regularised - group_mean(regularised, group_ids, w)
    taper = negative_taper(advantages, sampler_log_ratio(logprobs, behavior_logprobs, mask))
    out = reinforce_loss(logprobs, mask, advantages, w, taper, rewards=rewards, log_ratio=log_ratio)
    out.metrics["taper_mean"] = taper.float().mean().item()
    return out


def asymre_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor,
                group_ids: torch.Tensor, beta: float, delta: float = 0.1,
                weights: torch.Tensor | None = None) -> LossOutput:
    """Asymmetric REINFORCE (Arnal et al. 2025, arXiv 2506.20520).

        A_i = R̃_i − (mean_g R̃ − δ);   ∇ = −Σ_i w_i A_i ∇log π(y_i) / Σ_i w_i

    Off-policy REINFORCE with a baseline δ below the data's value. δ = 0 is AGRO's estimator; for δ > 0
    its fixed point is not π*: the shift keeps pulling every record up (biased by design, `agro tabular`).
    """
    w = _weights_like(rewards, weights)
    log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = regularised - group_mean(regularised, group_ids, w) + delta
    return reinforce_loss(logprobs, mask, advantages, w, rewards=rewards, log_ratio=log_ratio)


# ----------------------------------------------------------------------------- by name


COMMON_INPUTS = ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids", "weights")


@dataclass(frozen=True)
class Loss:
    """An objective's loss function, the batch tensors it reads beyond COMMON_INPUTS, and its settings
    (loss keyword -> the config field that holds it, TRL's names where TRL has one)."""

    function: Callable[..., LossOutput]
    inputs: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)


LOSSES: dict[str, Loss] = {
    "agro": Loss(agro_loss, ("fresh", "behavior_logprobs"), {"beta": "beta", "baseline": "baseline", "taper": "taper",
                                                          "epsilon": "epsilon", "epsilon_high": "epsilon_high",
                                                          "loss_type": "agro_loss_type",
                                                          "max_completion_length": "max_completion_length"}),
    "grpo": Loss(grpo_loss, ("old_logprobs",), {"beta": "beta", "epsilon": "epsilon", "epsilon_high": "epsilon_high",
                                                "loss_type": "loss_type",
                                                "max_completion_length": "max_completion_length"}),
    "rloo": Loss(rloo_loss, (), {"beta": "beta"}),
    "kl_pg": Loss(kl_pg_loss, (), {"beta": "beta"}),
    "is_pg": Loss(is_pg_loss, ("behavior_logprobs",), {"beta": "beta", "max_importance_weight": "max_importance_weight"}),
    "topr": Loss(topr_loss, ("behavior_logprobs",), {"beta": "beta"}),
    "asymre": Loss(asymre_loss, (), {"beta": "beta", "delta": "asymre_delta"}),
}
assert tuple(LOSSES) == tuple(objective_table.OBJECTIVES), "LOSSES and agro.objective_table name other objectives"


def compute_loss(name: str, tensors: dict[str, torch.Tensor | None], settings) -> LossOutput:
    """Objective `name` on `tensors` (COMMON_INPUTS and its inputs; one not given takes the loss's default),
    with its settings read from the attributes of `settings` (a TrainConfig, a TabularConfig; an attribute
    it lacks takes the loss's default). One word in the config switches the loss."""
    loss = LOSSES[name]
    kwargs = {k: tensors[k] for k in (*COMMON_INPUTS, *loss.inputs) if k in tensors}
    kwargs.update({kw: getattr(settings, key) for kw, key in loss.settings.items() if hasattr(settings, key)})
    return loss.function(**kwargs)
