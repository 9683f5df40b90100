"""Policy-gradient objectives as pure functions of per-token tensors.

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
weights μ turns these sample estimators into their exact expectations under μ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

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
    """(Σ_t mask·log π with gradient, Δ = Σ_t mask·(log π − log π_ref), R̃ = r − β·Δ), Δ and R̃ detached."""
    log_ratio = sequence_sum(logprobs.detach() - ref_logprobs, mask)
    return sequence_sum(logprobs, mask), log_ratio, rewards - beta * log_ratio


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


def agro_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    baseline: str = "mean",
    weights: torch.Tensor | None = None,
    taper: str = "none",
    fresh: torch.Tensor | None = None,
    behavior_logprobs: torch.Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "sum",
    max_completion_length: int | None = None,
) -> LossOutput:
    """Any-Generation Reward Optimization, for generations from any sampling distribution μ.

        Δ_i  = Σ_t mask·(log π − log π_ref)          sequence-level log-ratio
        R̃_i = r_i − β·Δ_i                             regularised reward, no gradient
        V̂_i = mean (or leave-one-out mean) of R̃ over the group of x_i
        A_i  = R̃_i − V̂_i
        ρ_i  = 1, or with taper "ref", in a group with no fresh sample and A_i < 0: min(1, exp(Δ_i));
               with taper "behavior", also min(ρ_i, π(y_i)/μ(y_i)) where A_i < 0 (μ: behavior_logprobs);
               with taper "clip", the same except on fresh samples, which get m instead
        m_i,t = 1, or with taper "clip" on a fresh sample: 0 where A_i pushes π_t/μ_t further out of
               [1 − ε, 1 + ε_high] (`trust_region_mask`)
        loss = −Σ_i w_i ρ_i A_i · Σ_t mask·m·log π  /  Σ_i w_i          (loss_type "sum")
               the same / max_completion_length                       (loss_type "dr_grpo")

    Its expected gradient E_μ[ρ(R̃ − V_μ) ∇log π] vanishes only where R̃ is constant over the
    support of μ, i.e. at π* = π_ref·exp(r/β)/Z (generation consistency); on-policy (untapered)
    it is the KL-regularised policy gradient.

    The taper: on a finite offline set the untapered update pins only the differences of Δ between
    a prompt's records, and pushing the negative records down lowers every record together, so mass
    leaves the data. min(1, π/π_ref) stops pushing down a record once the policy holds less of it
    than π_ref did; positive records are pulled up at full weight. ρ > 0 everywhere, so consistency
    (A ≡ 0) is still the only fixed point under full coverage (`docs/results.md`). Groups with a
    fresh sample are never tapered: the fresh sample sees where the mass went.

    Stale samples (the taper "behavior"): a sample of an earlier policy μ (the asynchronous actor, a
    batch's later iterations under `num_iterations` > 1, replay) is off-policy data, which the estimator
    is made for, and it needs no ratio in its advantage; but the same leak acts on it: once π holds less
    of a negative sample than μ did, pushing it further down only moves mass off the samples. The
    weight min(1, π/μ) stops that, as TOPR's truncation does (arXiv 2503.14286); it is exactly 1 on a
    sample of the current policy (π = μ), so the synchronous on-policy update is unchanged bit for bit.

    The run's own samples of an earlier version (taper "clip"): the asynchronous actor's, up to
    max_staleness updates old, and a batch's later iterations. min(1, π/μ) lets a positive sample be
    pulled up at full weight however far π has gone past μ, and with 4 updates of lag AGRO oscillated.
    GRPO's clip range, as a mask on the tokens only (the advantage stays AGRO's, with no ratio), stops
    both sides once π_t/μ_t leaves [1 − ε, 1 + ε_high]. Replayed and offline records keep the
    sequence taper: μ there may be far from π, and a trust region around it would stop the learning
    the data is for (the trainer reads offline records' behaviour log-probs only for the objectives
    that need them, so for AGRO an offline record's μ is π and its weight 1). On samples of the
    current policy m = 1, bit for bit.
    Measured: docs/performance.md (asynchronous generation), docs/efficiency.md (`num_iterations`).

    The loss scale (loss_type): the sum over tokens makes the gradient norm grow with the completions'
    length, so a max_grad_norm tuned for token-mean losses (GRPO's) rescales most of AGRO's steps, and with
    Adam that equalises the steps a batch's later iterations would otherwise take smaller. "dr_grpo"
    divides by the constant L = max_completion_length, as Dr. GRPO does (Liu et al. 2025, arXiv 2503.20783):
    a constant keeps the direction and the fixed point (a per-sequence length would not). Under AdamW a
    constant factor only moves where clipping starts (and Adam's ε): dr_grpo with max_grad_norm c is sum
    with c·L. GRPO's scale differs further by its division of the advantages by the group's std.
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
    seq_logprob, log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
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
    metrics = {}
    if clipped:
        kept = trust_region_mask(advantages, logprobs - behavior_logprobs, epsilon, epsilon_high)
        fresh_tokens = mask * fresh.unsqueeze(-1)
        seq_logprob = sequence_sum(logprobs, torch.where(fresh.unsqueeze(-1), mask * kept, mask))
        metrics["clip_region_fraction"] = ((fresh_tokens * (1 - kept)).sum() / fresh_tokens.sum().clamp_min(1)).item()
    loss = -_weighted_mean(scale * advantages * seq_logprob, w)
    if loss_type == "dr_grpo":
        loss = loss / max_completion_length
    metrics.update(_common_metrics(rewards, log_ratio, advantages, mask))
    metrics["regularised_reward_mean"] = regularised.detach().float().mean().item()
    metrics["taper_mean"] = scale.float().mean().item()
    return LossOutput(loss, metrics)


# ----------------------------------------------------------------------------- baselines


GRPO_LOSS_TYPES = CHOICES["loss_type"]


def grpo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    old_logprobs: torch.Tensor | None = None,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    weights: torch.Tensor | None = None,
    std_epsilon: float = 1e-4,
    max_completion_length: int | None = None,
) -> LossOutput:
    """Group Relative Policy Optimization, as in TRL's GRPOTrainer.

        A_i       = (r_i − mean_g r) / (std_g r + 1e-4)                 group-normalised advantage
        ρ_it      = exp(log π − log π_old)                              per-token ratio
        k3_it     = exp(log π_ref − log π) − (log π_ref − log π) − 1   per-token KL estimate
        ℓ_it      = −min(ρ A_i, clip(ρ, 1−ε, 1+ε_high) A_i) + β·k3_it
        loss_type "grpo":    mean_i [Σ_t mask ℓ_it / Σ_t mask]  (per-sequence token mean)
        loss_type "dapo":    Σ_it mask ℓ_it / Σ_it mask          (token mean over the batch)
        loss_type "bnpo":    Σ_it mask ℓ_it / Σ_it mask          (token mean over the local batch)
        loss_type "dr_grpo": Σ_it mask ℓ_it / (B · max_completion_length)   (Dr. GRPO: a constant divisor)

    These are the aggregations of TRL's GRPOTrainer._compute_loss. TRL's "dapo" divides by the tokens
    of the whole generation batch over all processes and "bnpo" by those of the local micro-batch; here
    the loss sees one process's whole batch at once, so the two coincide on one process. Weighted:
    each sequence's terms are scaled by w_i, in the divisor too (Σ w_i · tokens_i; Σ w_i · L for dr_grpo).
    `max_completion_length` (dr_grpo only, required) is the generation budget L, not the batch's width.
    As in TRL, the loss type sets only the aggregation: advantages stay std-normalised (TRL's default
    scale_rewards="group"; the Dr. GRPO paper also drops that normalisation).
    `old_logprobs` defaults to `logprobs.detach()` (one update per generation: ρ = 1). The trainer
    passes the log-probs before the generation batch's first update, so with `num_iterations` > 1
    the later iterations' ratios leave 1 and the clip acts (TRL's old_per_token_logps).
    Metrics: `clip_fraction`, the fraction of tokens whose ratio lies outside [1−ε, 1+ε_high];
    `clip_region_fraction`, those where the clipped term is the minimum, so the token has no policy
    gradient (ρ < 1−ε with A < 0, or ρ > 1+ε_high with A > 0; TRL's clip_ratio/region_mean).
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


def rloo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024) with the KL as a k1 penalty in the reward.

        r̃_i = r_i − β Σ_t mask·(log π − log π_ref)          (no gradient)
        A_i  = r̃_i − mean_{j∈g(i), j≠i} r̃_j
        loss = −Σ_i w_i A_i Σ_t mask·log π / Σ_i w_i

    With the KL in the reward and a leave-one-out baseline of that penalised reward, this is the
    same estimator as `agro_loss(..., baseline="loo")`: the generation-consistent choice.
    """
    w = _weights_like(rewards, weights)
    seq_logprob, log_ratio, penalised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = (penalised - group_loo_mean(penalised, group_ids, w)).detach()
    loss = -_weighted_mean(advantages * seq_logprob, w)
    return LossOutput(loss, _common_metrics(rewards, log_ratio, advantages, mask))


def kl_pg_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """The naive KL-regularised policy gradient: what fails off-policy.

    REINFORCE on the reward with a reward-mean baseline, plus β times the score-function
    gradient of the KL estimate Δ_i (k1) taken on the same samples:

        A_i  = (r_i − mean_g r) − β Δ_i,   Δ_i = Σ_t mask·(log π − log π_ref)   (no gradient)
        loss = −Σ_i w_i A_i Σ_t mask·log π / Σ_i w_i

    On-policy its expectation is ∇J. From μ ≠ π the baseline E_μ[r] no longer cancels the
    −β E_μ[Δ] term, and its fixed point is not π*.
    """
    w = _weights_like(rewards, weights)
    seq_logprob = sequence_sum(logprobs, mask)
    log_ratio = sequence_sum(logprobs.detach() - ref_logprobs, mask)
    advantages = (rewards - group_mean(rewards, group_ids, w) - beta * log_ratio).detach()
    loss = -_weighted_mean(advantages * seq_logprob, w)
    return LossOutput(loss, _common_metrics(rewards, log_ratio, advantages, mask))


def is_pg_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    behavior_logprobs: torch.Tensor | None = None,
    max_importance_weight: float = 2.0,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """Off-policy REINFORCE with truncated sequence-level importance weights.

        ρ_i  = min(exp(Σ_t mask·(log π − log μ)), c)          (no gradient)
        r̃_i = r_i − β Δ_i,  A_i = r̃_i − mean_g r̃            (no gradient)
        loss = −Σ_i w_i ρ_i A_i Σ_t mask·log π / Σ_i w_i

    Untruncated (c = ∞) its expectation under μ is the on-policy gradient; truncation trades
    that bias for bounded variance. Needs the generating policy's log-probs.
    """
    if behavior_logprobs is None:
        raise ValueError("is_pg_loss needs behavior_logprobs (the generating policy's log-probs)")
    w = _weights_like(rewards, weights)
    seq_logprob, log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    log_importance = sampler_log_ratio(logprobs, behavior_logprobs, mask)
    importance = torch.exp(log_importance.clamp(max=math.log(max_importance_weight)))
    advantages = (regularised - group_mean(regularised, group_ids, w)).detach()
    loss = -_weighted_mean(importance * advantages * seq_logprob, w)
    metrics = _common_metrics(rewards, log_ratio, advantages, mask)
    metrics.update(_stats("importance_weight", importance))
    metrics["importance_truncated_fraction"] = (log_importance.exp() > max_importance_weight).float().mean().item()
    return LossOutput(loss, metrics)


def topr_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    behavior_logprobs: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """Tapered Off-Policy REINFORCE (Le Roux et al. 2025, arXiv 2503.14286).

        R̃_i = r_i − β Δ_i,  A_i = R̃_i − mean_g R̃                      (no gradient)
        ρ_i  = 1 if A_i ≥ 0,  clip(π(y_i)/μ(y_i), 0, 1) if A_i < 0        (sequence level, no gradient)
        loss = −Σ_i w_i ρ_i A_i Σ_t mask·log π / Σ_i w_i

    Positive examples are trained on as in SFT, negative ones with truncated importance sampling,
    so a negative record the policy has already left stops being pushed down. The paper's
    reward R − c uses a constant baseline c; here c is the group mean of the KL-regularised reward
    (AGRO's baseline, so every method of the study optimises the same β-regularised objective and
    the baseline adapts to the reward's scale). With β = 0 and rewards ±1 around c it is the
    paper's estimator. Needs the generating policy's log-probs.
    """
    if behavior_logprobs is None:
        raise ValueError("topr_loss needs behavior_logprobs (the generating policy's log-probs)")
    w = _weights_like(rewards, weights)
    seq_logprob, log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = (regularised - group_mean(regularised, group_ids, w)).detach()
    taper = negative_taper(advantages, sampler_log_ratio(logprobs, behavior_logprobs, mask))
    loss = -_weighted_mean(taper * advantages * seq_logprob, w)
    metrics = _common_metrics(rewards, log_ratio, advantages, mask)
    metrics["taper_mean"] = taper.float().mean().item()
    return LossOutput(loss, metrics)


def asymre_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    beta: float,
    delta: float = 0.1,
    weights: torch.Tensor | None = None,
) -> LossOutput:
    """Asymmetric REINFORCE (Arnal et al. 2025, arXiv 2506.20520).

        R̃_i = r_i − β Δ_i,  V = mean_g R̃ − δ,  A_i = R̃_i − V          (no gradient)
        loss = −Σ_i w_i A_i Σ_t mask·log π / Σ_i w_i

    Off-policy REINFORCE E_μ[(r − V) ∇log π] with a baseline below the data's value V^μ: the paper
    proves policy improvement for V < V^μ and a collapse of the support for V ≥ V^μ, and uses
    V = V̂^μ + δV with a small δV < 0 (here δ = −δV > 0). δ = 0 is AGRO's estimator. Its fixed
    point is not π*: the shift δ keeps pulling up every record (biased by design, `agro tabular`).
    """
    w = _weights_like(rewards, weights)
    seq_logprob, log_ratio, regularised = _regularised_reward(logprobs, ref_logprobs, mask, rewards, beta)
    advantages = (regularised - group_mean(regularised, group_ids, w) + delta).detach()
    loss = -_weighted_mean(advantages * seq_logprob, w)
    return LossOutput(loss, _common_metrics(rewards, log_ratio, advantages, mask))


# ----------------------------------------------------------------------------- registry


COMMON_INPUTS = ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids", "weights")


@dataclass(frozen=True)
class Objective:
    """A registered objective: its loss, the batch tensors it reads beyond COMMON_INPUTS, and its settings
    (loss keyword -> the config field that holds it, TRL's names where TRL has one)."""

    loss: Callable[..., LossOutput]
    inputs: tuple[str, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)
    needs_behavior: bool = False  # cannot do without log μ (offline records must carry it); agro reads it
    # when known (its tapers "behavior" and "clip") and needs none


OBJECTIVES: dict[str, Objective] = {  # the names are config.CHOICES["objective"] (tests check they agree)
    "agro": Objective(agro_loss, ("fresh", "behavior_logprobs"), {"beta": "beta", "baseline": "baseline", "taper": "taper",
                                                               "epsilon": "epsilon", "epsilon_high": "epsilon_high",
                                                               "loss_type": "agro_loss_type",
                                                               "max_completion_length": "max_completion_length"}),
    "grpo": Objective(grpo_loss, ("old_logprobs",), {"beta": "beta", "epsilon": "epsilon", "epsilon_high": "epsilon_high",
                                                     "loss_type": "loss_type",
                                                     "max_completion_length": "max_completion_length"}),
    "rloo": Objective(rloo_loss, (), {"beta": "beta"}),
    "kl_pg": Objective(kl_pg_loss, (), {"beta": "beta"}),
    "is_pg": Objective(is_pg_loss, ("behavior_logprobs",), {"beta": "beta",
                                                            "max_importance_weight": "max_importance_weight"},
                       needs_behavior=True),
    "topr": Objective(topr_loss, ("behavior_logprobs",), {"beta": "beta"}, needs_behavior=True),
    "asymre": Objective(asymre_loss, (), {"beta": "beta", "delta": "asymre_delta"}),
}


def compute_loss(name: str, tensors: dict[str, torch.Tensor | None], settings) -> LossOutput:
    """Objective `name` on `tensors` (COMMON_INPUTS and its inputs; one not given takes the loss's default),
    with its settings read from the attributes of `settings` (a TrainConfig, a TabularConfig; an attribute
    it lacks takes the loss's default). One word in the config switches the loss."""
    objective = OBJECTIVES[name]
    kwargs = {k: tensors[k] for k in (*COMMON_INPUTS, *objective.inputs) if k in tensors}
    kwargs.update({kw: getattr(settings, key) for kw, key in objective.settings.items() if hasattr(settings, key)})
    return objective.loss(**kwargs)
