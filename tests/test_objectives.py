"""Each loss's gradient w.r.t. the per-token log-probs against a hand-derived formula.

The reference advantages are recomputed here with plain Python loops over groups, independently
of the vectorised helpers in agro.objectives.
"""

import math
from types import SimpleNamespace

import pytest
import torch

import agro.objectives as objectives
from agro.objective_table import OBJECTIVES

BETA = 0.3


def make_batch(seed=0, lengths=(3, 5, 1, 4, 2, 5), groups=(7, 7, 7, 2, 2, 9), width=6):
    """Random batch with right padding, groups of unequal size and a group of one (id 9)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    mask = torch.zeros(b, width, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    logprobs = -torch.rand(b, width, generator=g, dtype=torch.float64) * 3
    # garbage on padding: must not matter
    logprobs = torch.where(mask.bool(), logprobs, torch.full_like(logprobs, 123.0))
    ref = -torch.rand(b, width, generator=g, dtype=torch.float64) * 3
    behavior = -torch.rand(b, width, generator=g, dtype=torch.float64) * 3
    rewards = torch.rand(b, generator=g, dtype=torch.float64)
    weights = torch.rand(b, generator=g, dtype=torch.float64) + 0.5
    return {
        "logprobs": logprobs.requires_grad_(True),
        "ref_logprobs": ref,
        "mask": mask,
        "rewards": rewards,
        "group_ids": torch.tensor(groups),
        "behavior": behavior,
        "weights": weights,
    }


def seq_sums(x, mask):
    return [sum(float(x[i, t]) for t in range(x.shape[1]) if mask[i, t] > 0) for i in range(x.shape[0])]


def members(groups, i):
    return [j for j in range(len(groups)) if groups[j] == groups[i]]


def ref_mean(values, groups, weights, i, leave_out=False):
    js = [j for j in members(groups, i) if not (leave_out and j == i)]
    if not js:
        return values[i]
    return sum(weights[j] * values[j] for j in js) / sum(weights[j] for j in js)


def expected_seq_grad(batch, coef):
    """d loss / d logprobs[i,t] = −coef_i · mask[i,t] / Σ w for loss = −Σ_i coef_i Σ_t mask log π / Σ w."""
    w = batch["weights"].tolist() if batch.get("use_weights") else [1.0] * len(coef)
    total = sum(w)
    return -torch.tensor([[w[i] * coef[i] / total] for i in range(len(coef))], dtype=torch.float64) * batch["mask"]


def grad_of(out, batch):
    (g,) = torch.autograd.grad(out.loss, batch["logprobs"])
    return g


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("baseline", ["mean", "loo"])
def test_agro_gradient_matches_formula(baseline, use_weights):
    batch = make_batch()
    batch["use_weights"] = use_weights
    w = batch["weights"] if use_weights else None
    out = objectives.agro_loss(
        batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"],
        beta=BETA, baseline=baseline, weights=w,
    )
    groups = batch["group_ids"].tolist()
    delta = [a - b for a, b in zip(seq_sums(batch["logprobs"].detach(), batch["mask"]),
                                   seq_sums(batch["ref_logprobs"], batch["mask"]))]
    reg = [r - BETA * d for r, d in zip(batch["rewards"].tolist(), delta)]
    ws = batch["weights"].tolist() if use_weights else [1.0] * len(reg)
    adv = [reg[i] - ref_mean(reg, groups, ws, i, leave_out=baseline == "loo") for i in range(len(reg))]
    assert adv[5] == pytest.approx(0.0)  # the group of one carries no signal
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, adv))


def test_agro_dr_grpo_loss_type_is_the_sum_over_a_constant():
    """loss_type dr_grpo: the gradient of the hand formula divided by L = max_completion_length, for every token
    (a constant, not each sequence's length: that would change the fixed point); reached through the registry."""
    batch = make_batch(seed=3)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    groups = batch["group_ids"].tolist()
    delta = [a - b for a, b in zip(seq_sums(batch["logprobs"].detach(), batch["mask"]),
                                   seq_sums(batch["ref_logprobs"], batch["mask"]))]
    reg = [r - BETA * d for r, d in zip(batch["rewards"].tolist(), delta)]
    adv = [reg[i] - ref_mean(reg, groups, [1.0] * len(reg), i) for i in range(len(reg))]
    out = objectives.agro_loss(*args, beta=BETA, loss_type="dr_grpo", max_completion_length=7)
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, adv) / 7)
    summed = objectives.agro_loss(*args, beta=BETA)
    torch.testing.assert_close(out.loss, summed.loss / 7)
    assert out.metrics == summed.metrics
    tensors = {k: batch[k] for k in ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids")}
    config = SimpleNamespace(beta=BETA, baseline="mean", taper="none", agro_loss_type="dr_grpo",
                             max_completion_length=5)
    torch.testing.assert_close(objectives.compute_loss("agro", tensors, config).loss, summed.loss / 5)


def test_rloo_equals_agro_leave_one_out():
    batch = make_batch(seed=1)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    rloo = objectives.rloo_loss(*args, beta=BETA)
    agro = objectives.agro_loss(*args, beta=BETA, baseline="loo")
    torch.testing.assert_close(grad_of(rloo, batch), grad_of(agro, batch))


def test_kl_pg_gradient_matches_formula():
    batch = make_batch(seed=2)
    out = objectives.kl_pg_loss(
        batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"], beta=BETA
    )
    groups = batch["group_ids"].tolist()
    r = batch["rewards"].tolist()
    delta = [a - b for a, b in zip(seq_sums(batch["logprobs"].detach(), batch["mask"]),
                                   seq_sums(batch["ref_logprobs"], batch["mask"]))]
    ones = [1.0] * len(r)
    adv = [r[i] - ref_mean(r, groups, ones, i) - BETA * delta[i] for i in range(len(r))]
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, adv))


def test_is_pg_gradient_matches_formula_with_truncation():
    batch = make_batch(seed=3)
    cap = 1.5
    out = objectives.is_pg_loss(
        batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"],
        beta=BETA, behavior_logprobs=batch["behavior"], max_importance_weight=cap,
    )
    groups = batch["group_ids"].tolist()
    lp = seq_sums(batch["logprobs"].detach(), batch["mask"])
    delta = [a - b for a, b in zip(lp, seq_sums(batch["ref_logprobs"], batch["mask"]))]
    rho = [min(math.exp(a - b), cap) for a, b in zip(lp, seq_sums(batch["behavior"], batch["mask"]))]
    assert any(x == cap for x in rho) and any(x < cap for x in rho)  # both branches exercised
    reg = [r - BETA * d for r, d in zip(batch["rewards"].tolist(), delta)]
    ones = [1.0] * len(reg)
    coef = [rho[i] * (reg[i] - ref_mean(reg, groups, ones, i)) for i in range(len(reg))]
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, coef))


def test_is_pg_requires_behavior_logprobs():
    batch = make_batch()
    with pytest.raises(ValueError, match="behavior_logprobs"):
        objectives.is_pg_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                              batch["group_ids"], beta=BETA)


def grpo_advantages(batch):
    groups = batch["group_ids"].tolist()
    r = batch["rewards"].tolist()
    adv = []
    for i in range(len(r)):
        js = members(groups, i)
        mean = sum(r[j] for j in js) / len(js)
        std = math.sqrt(sum((r[j] - mean) ** 2 for j in js) / (len(js) - 1)) if len(js) > 1 else 0.0
        adv.append((r[i] - mean) / (std + 1e-4))
    return adv


MAX_LEN = 9  # dr_grpo's constant divisor: the generation budget, wider than the batch (6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
def test_grpo_gradient_matches_formula(loss_type):
    batch = make_batch(seed=4)
    g = torch.Generator().manual_seed(5)
    # old log-probs off by up to ±0.4 so some ratios leave [1-ε, 1+ε]
    old = batch["logprobs"].detach() + (torch.rand(batch["mask"].shape, generator=g, dtype=torch.float64) - 0.5) * 0.8
    eps = 0.2
    out = objectives.grpo_loss(
        batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"],
        beta=BETA, old_logprobs=old, epsilon=eps, loss_type=loss_type, max_completion_length=MAX_LEN,
    )
    adv = grpo_advantages(batch)
    lp, ref, mask = batch["logprobs"].detach(), batch["ref_logprobs"], batch["mask"]
    b, t = mask.shape
    lengths = mask.sum(-1).tolist()
    expected = torch.zeros(b, t, dtype=torch.float64)
    clipped_somewhere = False
    for i in range(b):
        for k in range(t):
            if mask[i, k] == 0:
                continue
            rho = math.exp(lp[i, k] - old[i, k])
            # d/dlogπ of −min(ρA, clip(ρ)A): zero where the clipped branch is the (strict) minimum
            clipped_branch = (adv[i] > 0 and rho > 1 + eps) or (adv[i] < 0 and rho < 1 - eps)
            clipped_somewhere |= clipped_branch
            d_policy = 0.0 if clipped_branch else -adv[i] * rho
            d_kl = BETA * (1 - math.exp(ref[i, k] - lp[i, k]))  # d k3 / d logπ
            scale = {"grpo": 1 / (lengths[i] * b), "dr_grpo": 1 / (b * MAX_LEN)}.get(loss_type, 1 / sum(lengths))
            expected[i, k] = (d_policy + d_kl) * scale
    assert clipped_somewhere
    torch.testing.assert_close(grad_of(out, batch), expected)


def test_grpo_group_of_one_has_zero_advantage():
    batch = make_batch()
    out = objectives.grpo_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=0.0)
    assert out.metrics["advantage_min"] < 0 < out.metrics["advantage_max"]
    torch.testing.assert_close(grad_of(out, batch)[5], torch.zeros(6, dtype=torch.float64))


# every objective by name (each loss at its defaults but beta), and GRPO's other aggregations
LOSSES = {name: (name, "grpo") for name in OBJECTIVES} | {f"grpo_{t}": ("grpo", t) for t in ("dapo", "bnpo", "dr_grpo")}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_padding_length_and_masked_values_do_not_matter(name):
    objective, loss_type = LOSSES[name]
    settings = SimpleNamespace(beta=BETA, loss_type=loss_type, max_completion_length=9)

    def loss(core, **kwargs):
        return objectives.compute_loss(objective, {**core, **kwargs}, settings)

    batch = make_batch(seed=6)
    extra = 4
    needs_behavior = OBJECTIVES[objective].needs_behavior
    kwargs = {"behavior_logprobs": batch["behavior"]} if needs_behavior else {}
    core = {k: batch[k] for k in ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids")}
    out = loss(core, **kwargs)
    grad = grad_of(out, batch)

    def pad(x, value):
        return torch.cat([x, torch.full((x.shape[0], extra), value, dtype=x.dtype)], dim=1)

    wide_lp = pad(batch["logprobs"].detach(), -7.0).requires_grad_(True)
    wide = {
        "logprobs": wide_lp, "ref_logprobs": pad(batch["ref_logprobs"], 5.0), "mask": pad(batch["mask"], 0.0),
        "rewards": batch["rewards"], "group_ids": batch["group_ids"],
    }
    wide_kwargs = {"behavior_logprobs": pad(batch["behavior"], 9.0)} if needs_behavior else {}
    wide_out = loss(wide, **wide_kwargs)
    (wide_grad,) = torch.autograd.grad(wide_out.loss, wide_lp)
    torch.testing.assert_close(wide_out.loss, out.loss)
    torch.testing.assert_close(wide_grad[:, :6], grad)
    assert torch.all(wide_grad[:, 6:] == 0)
    assert torch.all(grad[batch["mask"] == 0] == 0)


def test_agro_gradient_vanishes_at_optimum_for_any_data():
    """Generation consistency: at π* the regularised reward is constant, whatever μ shows."""
    g = torch.Generator().manual_seed(7)
    k = 12
    reward = torch.rand(k, generator=g, dtype=torch.float64)
    log_ref = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    log_opt = torch.log_softmax(log_ref + reward / BETA, 0)
    theta = log_opt.clone().requires_grad_(True)
    log_pi = torch.log_softmax(theta, 0)
    for mu in (torch.rand(k, generator=g, dtype=torch.float64), log_ref.exp()):
        out = objectives.agro_loss(
            log_pi.unsqueeze(-1), log_ref.unsqueeze(-1), torch.ones(k, 1, dtype=torch.float64), reward,
            torch.zeros(k, dtype=torch.long), beta=BETA, weights=mu / mu.sum(),
        )
        (grad,) = torch.autograd.grad(out.loss, theta, retain_graph=True)
        assert grad.abs().max() < 1e-12


def test_metrics_are_floats():
    batch = make_batch()
    out = objectives.agro_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=BETA)
    assert out.loss.dim() == 0
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())
    assert out.metrics["reward_mean"] == pytest.approx(batch["rewards"].mean().item())


def test_bad_options_raise():
    batch = make_batch()
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    with pytest.raises(ValueError, match="baseline"):
        objectives.agro_loss(*args, beta=BETA, baseline="median")
    with pytest.raises(ValueError, match="loss_type"):
        objectives.grpo_loss(*args, beta=BETA, loss_type="ppo")
    with pytest.raises(ValueError, match="dr_grpo' needs max_completion_length"):
        objectives.grpo_loss(*args, beta=BETA, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        objectives.agro_loss(*args, beta=BETA, loss_type="grpo")  # a per-sequence mean would move the fixed point
    with pytest.raises(ValueError, match="dr_grpo' needs max_completion_length"):
        objectives.agro_loss(*args, beta=BETA, loss_type="dr_grpo")


class _TRLStub:
    """The attributes TRL's GRPOTrainer._compute_loss reads, with its defaults (no entropy, vLLM, OPSM...)."""

    def __init__(self, loss_type, beta, epsilon, epsilon_high, max_completion_length, logprobs):
        self.loss_type, self.beta, self.max_completion_length = loss_type, beta, max_completion_length
        self.epsilon_low, self.epsilon_high = epsilon, epsilon_high
        self.top_entropy_quantile, self.off_policy_mask_threshold = 1.0, None
        self.importance_sampling_level, self.use_vllm = "token", False
        self.aux_loss_enabled, self._entropy_bonus_enabled = False, False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x)
        self._metrics = {"train": __import__("collections").defaultdict(list)}
        self._logprobs = logprobs

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        return self._logprobs, torch.zeros_like(self._logprobs), None


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
def test_grpo_loss_types_match_trl(loss_type):
    """TRL's own GRPOTrainer._compute_loss on the same batch (groups of equal size, as TRL forms them; its
    advantages computed as TRL does: group mean, std with Bessel's correction, + 1e-4): same loss, same gradient."""
    trl = pytest.importorskip("trl.trainer.grpo_trainer", reason="TRL is not installed (pip install -e '.[dev]')")
    g = torch.Generator().manual_seed(11)
    groups, width, max_len = 3, 7, 10
    num = 4
    b = groups * num
    lengths = torch.randint(1, width + 1, (b,), generator=g)
    mask = (torch.arange(width) < lengths.unsqueeze(1)).to(torch.float64)
    logprobs = (-torch.rand(b, width, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    ref = -torch.rand(b, width, generator=g, dtype=torch.float64) * 3
    old = logprobs.detach() + (torch.rand(b, width, generator=g, dtype=torch.float64) - 0.5) * 0.8
    rewards = torch.rand(b, generator=g, dtype=torch.float64)
    grouped = rewards.view(groups, num)
    advantages = (rewards - grouped.mean(1).repeat_interleave(num)) / (grouped.std(1).repeat_interleave(num) + 1e-4)
    ours = objectives.grpo_loss(logprobs, ref, mask, rewards, torch.arange(b) // num, beta=BETA, old_logprobs=old,
                                epsilon=0.2, epsilon_high=0.28, loss_type=loss_type, max_completion_length=max_len)
    inputs = {"prompt_ids": torch.zeros(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
              "completion_ids": torch.zeros(b, width, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    theirs = trl.GRPOTrainer._compute_loss(_TRLStub(loss_type, BETA, 0.2, 0.28, max_len, logprobs), None, inputs)
    torch.testing.assert_close(ours.loss, theirs, rtol=1e-13, atol=1e-15)
    (grad_ours,) = torch.autograd.grad(ours.loss, logprobs)
    (grad_theirs,) = torch.autograd.grad(theirs, logprobs)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-12, atol=1e-15)


def _regularised_advantages(batch, delta_shift=0.0):
    """(A_i with the group-mean baseline of R̃ = r − βΔ, shifted up by δ; Δ_i) by plain loops."""
    groups = batch["group_ids"].tolist()
    delta = [a - b for a, b in zip(seq_sums(batch["logprobs"].detach(), batch["mask"]),
                                   seq_sums(batch["ref_logprobs"], batch["mask"]))]
    reg = [r - BETA * d for r, d in zip(batch["rewards"].tolist(), delta)]
    ones = [1.0] * len(reg)
    return [reg[i] - ref_mean(reg, groups, ones, i) + delta_shift for i in range(len(reg))], delta


@pytest.mark.parametrize("fresh", [None, (False,) * 6, (True, False, False, False, False, True)])
def test_agro_ref_taper_gradient_matches_formula(fresh):
    """Negative-advantage records of groups with no fresh sample are weighted by min(1, exp(Δ))."""
    batch = make_batch(seed=6)
    fresh_t = None if fresh is None else torch.tensor(fresh)
    out = objectives.agro_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=BETA, taper="ref", fresh=fresh_t)
    adv, delta = _regularised_advantages(batch)
    groups = batch["group_ids"].tolist()
    fresh_list = fresh or (False,) * len(adv)
    coef = []
    for i, a in enumerate(adv):
        group_fresh = any(fresh_list[j] for j in members(groups, i))
        coef.append(a * min(1.0, math.exp(delta[i])) if a < 0 and not group_fresh else a)
    assert any(c != a for c, a in zip(coef, adv))  # the taper acts on this batch
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, coef))


def test_agro_taper_leaves_groups_with_a_fresh_sample_bit_identical():
    """A fresh sample in every group: the shipped default is today's AGRO, exactly."""
    batch = make_batch(seed=7)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    fresh = torch.tensor([True, False, False, True, False, True])
    tapered = objectives.agro_loss(*args, beta=BETA, taper="ref", fresh=fresh)
    plain = objectives.agro_loss(*args, beta=BETA, taper="none")
    assert torch.equal(grad_of(tapered, batch), grad_of(plain, batch))


@pytest.mark.parametrize("fresh", [(False,) * 6, (True, False, False, False, False, True)])
def test_agro_behavior_taper_gradient_matches_formula(fresh):
    """taper "behavior": the ref taper, then every negative-advantage sample also weighted min(1, π/μ)."""
    batch = make_batch(seed=9)
    # μ above π on some samples and below on others (per token, so the sequence ratio is Σ of the shifts)
    shift = torch.tensor([[-0.3], [0.2], [0.5], [-0.1], [0.05], [0.2]], dtype=torch.float64)
    batch["behavior"] = batch["logprobs"].detach() + shift
    out = objectives.agro_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=BETA, taper="behavior", fresh=torch.tensor(fresh),
                               behavior_logprobs=batch["behavior"])
    adv, delta = _regularised_advantages(batch)
    stale = [a - b for a, b in zip(seq_sums(batch["logprobs"].detach(), batch["mask"]),
                                   seq_sums(batch["behavior"], batch["mask"]))]
    groups = batch["group_ids"].tolist()
    coef, ref_only = [], []
    for i, a in enumerate(adv):
        rho = 1.0
        if a < 0 and not any(fresh[j] for j in members(groups, i)):
            rho = min(1.0, math.exp(delta[i]))
        ref_only.append(a * rho)
        coef.append(a * (min(rho, math.exp(stale[i])) if a < 0 else rho))
    assert any(c != r for c, r in zip(coef, ref_only))  # the behaviour part acts on this batch
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, coef))


def test_agro_behavior_taper_is_exactly_the_ref_taper_on_samples_of_the_current_policy():
    """μ = π (a fresh sample, the synchronous loop): min(1, π/μ) = 1 exactly, so nothing changes bit for bit."""
    batch = make_batch(seed=10)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    fresh = torch.tensor([True, False, False, False, False, True])
    behavior = objectives.agro_loss(*args, beta=BETA, taper="behavior", fresh=fresh,
                                    behavior_logprobs=batch["logprobs"].detach().clone())
    ref = objectives.agro_loss(*args, beta=BETA, taper="ref", fresh=fresh)
    assert torch.equal(grad_of(behavior, batch), grad_of(ref, batch))


def test_agro_clip_taper_gradient_matches_formula():
    """taper "clip": a fresh sample loses the gradient of the tokens its advantage would push out of
    [1 − ε, 1 + ε_high] of π_t/μ_t, and keeps a weight of 1; a non-fresh sample keeps the behaviour taper."""
    batch = make_batch(seed=11)
    # per-token log π − log μ, chosen so that each sign of the advantage meets both sides of the range
    shift = torch.tensor([[0.3, -0.05, 0.1, 0.0, 0.25, 0.0], [-0.4, 0.1, 0.0, 0.3, -0.3, 0.2],
                          [0.5, 0.0, 0.0, 0.0, 0.0, 0.0], [-0.3, 0.3, 0.0, -0.1, 0.0, 0.0],
                          [0.2, -0.3, 0.0, 0.0, 0.0, 0.0], [0.0, -0.5, 0.5, 0.1, -0.1, 0.3]], dtype=torch.float64)
    behavior = batch["logprobs"].detach() - shift
    fresh = (True, True, False, True, True, True)
    out = objectives.agro_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=BETA, taper="clip", fresh=torch.tensor(fresh),
                               behavior_logprobs=behavior, epsilon=0.2, epsilon_high=0.28)
    adv, _ = _regularised_advantages(batch)
    mask = batch["mask"]
    expected = torch.zeros_like(mask)
    kept_out = 0
    for i, a in enumerate(adv):
        for t in range(mask.shape[1]):
            if mask[i, t] == 0:
                continue
            ratio = math.exp(float(shift[i, t]))
            outside = (a > 0 and ratio > 1.28) or (a < 0 and ratio < 0.8)
            if fresh[i]:
                kept_out += outside
                expected[i, t] = 0.0 if outside else -a / len(adv)
            else:  # the behaviour taper on the whole sequence
                stale = sum(float(shift[i, u]) for u in range(mask.shape[1]) if mask[i, u] > 0)
                expected[i, t] = -a * (min(1.0, math.exp(stale)) if a < 0 else 1.0) / len(adv)
    assert kept_out >= 2 and any(a > 0 for a in adv) and any(a < 0 for a in adv)  # the mask acts on this batch
    torch.testing.assert_close(grad_of(out, batch), expected)
    fresh_tokens = sum(float(mask[i].sum()) for i in range(len(adv)) if fresh[i])
    assert out.metrics["clip_region_fraction"] == pytest.approx(kept_out / fresh_tokens)


def test_agro_clip_taper_is_exactly_the_behavior_taper_on_samples_of_the_current_policy():
    """μ = π on every fresh sample (the synchronous loop's first iteration): no token is masked, bit for bit."""
    batch = make_batch(seed=12)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    fresh = torch.tensor([True, False, True, False, False, True])
    behavior = torch.where(fresh.unsqueeze(-1), batch["logprobs"].detach(), batch["behavior"])
    clip = objectives.agro_loss(*args, beta=BETA, taper="clip", fresh=fresh, behavior_logprobs=behavior)
    tapered = objectives.agro_loss(*args, beta=BETA, taper="behavior", fresh=fresh, behavior_logprobs=behavior)
    assert torch.equal(clip.loss, tapered.loss) and torch.equal(grad_of(clip, batch), grad_of(tapered, batch))
    assert clip.metrics["clip_region_fraction"] == 0.0


def test_topr_gradient_matches_formula():
    batch = make_batch(seed=8)
    out = objectives.topr_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                               batch["group_ids"], beta=BETA, behavior_logprobs=batch["behavior"])
    adv, _ = _regularised_advantages(batch)
    lp = seq_sums(batch["logprobs"].detach(), batch["mask"])
    mu = seq_sums(batch["behavior"], batch["mask"])
    ratio = [min(1.0, math.exp(a - b)) for a, b in zip(lp, mu)]
    coef = [a * (ratio[i] if a < 0 else 1.0) for i, a in enumerate(adv)]
    assert any(a < 0 and r < 1 for a, r in zip(adv, ratio)) and any(a > 0 for a in adv)
    torch.testing.assert_close(grad_of(out, batch), expected_seq_grad(batch, coef))
    with pytest.raises(ValueError, match="behavior_logprobs"):
        objectives.topr_loss(batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"],
                             batch["group_ids"], beta=BETA)


@pytest.mark.parametrize("delta", [0.0, 0.25])
def test_asymre_gradient_matches_formula(delta):
    batch = make_batch(seed=9)
    args = (batch["logprobs"], batch["ref_logprobs"], batch["mask"], batch["rewards"], batch["group_ids"])
    grad = grad_of(objectives.asymre_loss(*args, beta=BETA, delta=delta), batch)
    adv, _ = _regularised_advantages(batch, delta_shift=delta)
    torch.testing.assert_close(grad, expected_seq_grad(batch, adv))
    if delta == 0.0:  # no shift: AGRO's estimator
        torch.testing.assert_close(grad, grad_of(objectives.agro_loss(*args, beta=BETA), batch))
