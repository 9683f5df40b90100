"""The exact tabular lab: one prompt, K actions, a softmax policy, and the closed-form optimum.

    π*(a) = π_ref(a)·exp(r(a)/β) / Z,   normalised KL_t = KL(π_t ‖ π*) / KL(π_ref ‖ π*)

Every method calls the same loss functions as the LLM trainer (`agro.objectives`), with each
action fed as a one-token "completion". In `exact` mode all K actions are fed at once with
per-sample weights μ(a), which turns the sample estimators into their expectations under the
data distribution μ; in `sampled` mode M actions are drawn from μ each step.

Data regimes (μ): `on-policy` (μ = π_t), `reference` (μ = π_ref), `mixed`
(μ = α·π_ref + (1−α)·π_t), `fixed` (a given μ) and `lagged` (μ = π_{max(0, t−lag)}: the run's own
samples `lag` updates old, as asynchronous generation gives them; GRPO's π_old is that μ).
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import agro.objectives as objectives
from agro.errors import AgroError

METHODS = ("agro", "kl_pg", "kl_pg_exact", "grpo", "is_pg", "topr", "asymre")
DATA_REGIMES = ("on-policy", "reference", "mixed", "fixed", "lagged")
MODES = ("exact", "sampled")
OPTIMIZERS = ("sgd", "adam")
LR_DECAYS = ("none", "inverse_sqrt", "inverse")


@dataclass
class TabularConfig:
    actions: int = 20
    beta: float = 0.5
    data: str = "reference"
    alpha: float = 0.5
    mode: str = "exact"
    samples: int = 64
    steps: int = 5000
    lr: float = 0.5
    lr_decay: str = "none"
    lr_decay_steps: float = 100.0
    seed: int = 0
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    log_points: int = 200
    mu: list[float] | None = None
    reward: list[float] | None = None
    ref_policy: list[float] | None = None
    taper: str = "ref"
    asymre_delta: float = 0.1
    lag: int = 4
    epsilon: float = 0.2
    optimizer: str = "sgd"
    max_grad_norm: float | None = None

    def validate(self) -> None:
        """Raise AgroError (one line) on any invalid setting."""
        if self.actions < 2:
            raise AgroError(f"--actions must be at least 2, got {self.actions}")
        if not self.beta > 0:
            raise AgroError(f"--beta must be > 0, got {self.beta}")
        if self.data not in DATA_REGIMES:
            raise AgroError(f"--data must be one of {', '.join(DATA_REGIMES)}, got {self.data!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise AgroError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.mode not in MODES:
            raise AgroError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.samples < 1:
            raise AgroError(f"--samples must be at least 1, got {self.samples}")
        if self.steps < 1:
            raise AgroError(f"--steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise AgroError(f"--lr must be > 0, got {self.lr}")
        if self.taper not in objectives.TAPERS:
            raise AgroError(f"--taper must be one of {', '.join(objectives.TAPERS)}, got {self.taper!r}")
        if self.taper == "clip" and self.data != "lagged":
            raise AgroError("--taper clip acts on a run's own samples of earlier versions: it needs --data lagged")
        if self.lag < 0:
            raise AgroError(f"--lag must be at least 0, got {self.lag}")
        if not 0 < self.epsilon < 1:
            raise AgroError(f"--epsilon must be in (0, 1), got {self.epsilon}")
        if self.optimizer not in OPTIMIZERS:
            raise AgroError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise AgroError(f"--max-grad-norm must be > 0, got {self.max_grad_norm}")
        if self.lr_decay not in LR_DECAYS:
            raise AgroError(f"--lr-decay must be one of {', '.join(LR_DECAYS)}, got {self.lr_decay!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise AgroError(f"unknown method {unknown[0] if unknown else '(none)'!r}; choose from {', '.join(METHODS)}")
        for name, values in (("--mu", self.mu), ("--reward", self.reward), ("--ref-policy", self.ref_policy)):
            if values is not None and len(values) != self.actions:
                raise AgroError(f"{name} needs {self.actions} values (one per action), got {len(values)}")
        for name, values in (("--mu", self.mu), ("--ref-policy", self.ref_policy)):
            if values is not None and (min(values) <= 0 or not math.isclose(sum(values), 1.0, abs_tol=1e-6)):
                raise AgroError(f"{name} must be positive and sum to 1")
        if self.data == "fixed" and self.mu is None:
            raise AgroError("--data fixed needs --mu (K probabilities)")


@dataclass
class Bandit:
    """A one-state bandit (the tabular lab's "problem"): K actions, their rewards, π_ref and β."""

    reward: torch.Tensor  # [K]
    log_ref: torch.Tensor  # [K]
    beta: float

    @property
    def log_optimal(self) -> torch.Tensor:
        """log π* = log softmax(log π_ref + r/β)."""
        return torch.log_softmax(self.log_ref + self.reward / self.beta, dim=0)


def make_bandit(config: TabularConfig) -> Bandit:
    """r ~ U(0,1) and π_ref = softmax(N(0,1) logits), drawn from the seed unless given."""
    gen = torch.Generator().manual_seed(config.seed)
    reward = torch.rand(config.actions, generator=gen, dtype=torch.float64)
    ref_logits = torch.randn(config.actions, generator=gen, dtype=torch.float64)
    if config.reward is not None:
        reward = torch.tensor(config.reward, dtype=torch.float64)
    log_ref = torch.log_softmax(ref_logits, dim=0)
    if config.ref_policy is not None:
        log_ref = torch.tensor(config.ref_policy, dtype=torch.float64).log()
    return Bandit(reward=reward, log_ref=log_ref, beta=config.beta)


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ p (log p − log q)."""
    return (log_p.exp() * (log_p - log_q)).sum()


def _learning_rate(config: TabularConfig, step: int) -> float:
    if config.lr_decay == "inverse_sqrt":
        return config.lr / math.sqrt(1.0 + step / config.lr_decay_steps)
    if config.lr_decay == "inverse":
        return config.lr / (1.0 + step / config.lr_decay_steps)
    return config.lr


def _data_distribution(config: TabularConfig, log_pi: torch.Tensor, log_ref: torch.Tensor,
                       history: deque[torch.Tensor]) -> torch.Tensor:
    """log μ for the regime, detached from the policy parameters. `history` (lagged only): log π of the last
    lag + 1 steps at most, the current one last, so its first is π_{max(0, t−lag)}."""
    log_pi = log_pi.detach()
    if config.data == "lagged":
        return history[0]
    if config.data == "on-policy":
        return log_pi
    if config.data == "reference":
        return log_ref
    if config.data == "mixed":
        return torch.logaddexp(math.log(config.alpha + 1e-300) + log_ref, math.log(1 - config.alpha + 1e-300) + log_pi)
    return torch.tensor(config.mu, dtype=torch.float64).log()


def _draw(config: TabularConfig, log_pi: torch.Tensor, log_ref: torch.Tensor, log_mu: torch.Tensor, gen: torch.Generator):
    """Sample M actions from μ; return actions and the log-density of the source that drew each."""
    m = config.samples
    if config.data == "mixed":
        n_ref = round(config.alpha * m)
        from_ref = torch.multinomial(log_ref.exp(), n_ref, replacement=True, generator=gen) if n_ref else None
        from_pi = torch.multinomial(log_pi.detach().exp(), m - n_ref, replacement=True, generator=gen) if m - n_ref else None
        parts = [(a, src[a]) for a, src in ((from_ref, log_ref), (from_pi, log_pi.detach())) if a is not None]
        return torch.cat([a for a, _ in parts]), torch.cat([lp for _, lp in parts])
    actions = torch.multinomial(log_mu.exp(), m, replacement=True, generator=gen)
    return actions, log_mu[actions]


def method_loss(method: str, config: TabularConfig, batch: dict[str, torch.Tensor], log_pi: torch.Tensor,
                log_ref: torch.Tensor):
    """The loss of `method` on a batch of one-token completions, from the objective registry (settings the
    lab has: beta, taper, asymre_delta, epsilon; the rest at the losses' defaults). Samples count as fresh
    (the run's own samples, of this version or an earlier one) with data `on-policy`, `mixed` and `lagged`.
    """
    if method == "kl_pg_exact":  # the lab's own: the KL term exact instead of sampled
        common = {k: batch[k] for k in objectives.COMMON_INPUTS}
        return objectives.kl_pg_loss(**common, beta=0.0).loss + config.beta * kl(log_pi, log_ref)
    if method not in objectives.LOSSES:
        raise AgroError(f"unknown method {method!r}")
    fresh = torch.full_like(batch["group_ids"], config.data in ("on-policy", "mixed", "lagged"), dtype=torch.bool)
    return objectives.compute_loss(method, {**batch, "fresh": fresh}, config).loss


def run_method(config: TabularConfig, problem: Bandit, method: str) -> dict:
    """Gradient steps on the logits θ (π = softmax θ), started at π_ref: plain steps θ −= lr·g, or Adam
    (torch.optim.Adam, the LLM trainer's update without weight decay), after clipping ‖g‖ to max_grad_norm."""
    theta = problem.log_ref.clone().requires_grad_(True)
    adam = torch.optim.Adam([theta], lr=config.lr) if config.optimizer == "adam" else None
    gen = torch.Generator().manual_seed(config.seed + 1)
    log_opt = problem.log_optimal
    kl_start = kl(problem.log_ref, log_opt).item()
    every = max(1, config.steps // config.log_points)
    logged_steps, normalized, rewards = [0], [1.0], [(problem.log_ref.exp() * problem.reward).sum().item()]
    history: deque[torch.Tensor] = deque(maxlen=config.lag + 1)
    for step in range(1, config.steps + 1):
        log_pi = torch.log_softmax(theta, dim=0)
        if config.data == "lagged":
            history.append(log_pi.detach())
        log_mu = _data_distribution(config, log_pi, problem.log_ref, history)
        if config.mode == "exact":
            actions = torch.arange(config.actions)
            weights, behavior = log_mu.exp(), log_mu
        else:
            actions, behavior = _draw(config, log_pi, problem.log_ref, log_mu, gen)
            weights = None
        batch = {
            "logprobs": log_pi[actions].unsqueeze(-1),
            "ref_logprobs": problem.log_ref[actions].unsqueeze(-1),
            "mask": torch.ones(len(actions), 1, dtype=torch.float64),
            "rewards": problem.reward[actions],
            "group_ids": torch.zeros(len(actions), dtype=torch.long),
            "weights": weights,
            "behavior_logprobs": behavior.unsqueeze(-1),
        }
        if config.data == "lagged":  # GRPO's π_old is the sampler (else the loss's default: π itself)
            batch["old_logprobs"] = behavior.unsqueeze(-1)
        loss = method_loss(method, config, batch, log_pi, problem.log_ref)
        (grad,) = torch.autograd.grad(loss, theta)
        if config.max_grad_norm is not None:
            grad = grad * min(1.0, config.max_grad_norm / (grad.norm().item() + 1e-12))
        if adam is not None:
            theta.grad = grad
            adam.param_groups[0]["lr"] = _learning_rate(config, step - 1)
            adam.step()
        else:
            with torch.no_grad():
                theta -= _learning_rate(config, step - 1) * grad
        if step % every == 0 or step == config.steps:
            with torch.no_grad():
                log_pi = torch.log_softmax(theta, dim=0)
                logged_steps.append(step)
                normalized.append(kl(log_pi, log_opt).item() / kl_start)
                rewards.append((log_pi.exp() * problem.reward).sum().item())
    final = torch.softmax(theta.detach(), dim=0)
    return {"final_policy": final.tolist(), "normalized_kl": normalized, "expected_reward": rewards,
            "steps": logged_steps}


def run(config: TabularConfig) -> dict:
    """Run every method on one problem; return the results dictionary written to results.json."""
    config.validate()
    problem = make_bandit(config)
    return {
        "config": asdict(config),
        "reward": problem.reward.tolist(),
        "ref_policy": problem.log_ref.exp().tolist(),
        "optimal_policy": problem.log_optimal.exp().tolist(),
        "methods": {m: run_method(config, problem, m) for m in config.methods},
    }


def plot(results: dict, path: Path) -> None:
    """Normalised KL(π_t‖π*) against step, one line per method, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in results["methods"].items():
        ax.plot(res["steps"], [max(v, 1e-16) for v in res["normalized_kl"]], label=name, linewidth=1.8)
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("KL(π_t ‖ π*) / KL(π_ref ‖ π*)")
    ax.set_title(f"K={cfg['actions']}, β={cfg['beta']}, data={cfg['data']}, mode={cfg['mode']}, seed={cfg['seed']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "results.json", out_dir / "normalized_kl.png"
    json_path.write_text(json.dumps(results, indent=1))
    plot(results, png_path)
    return json_path, png_path
