"""The tabular lab reproduces the convergence claims (the paper's Figure 1) with the real objectives."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch

import agro.objectives as objectives
import agro.tabular as tabular
from agro.cli import main
from agro.tabular import TabularConfig

FIGURE1 = {"actions": 20, "beta": 0.5, "mode": "exact", "steps": 5000, "lr": 0.5}


def final_kl(results, method):
    return results["methods"][method]["normalized_kl"][-1]


def test_closed_form_optimum_is_consistent():
    problem = tabular.make_bandit(TabularConfig(seed=3))
    regularised = problem.reward - 0.5 * (problem.log_optimal - problem.log_ref)
    assert torch.allclose(regularised, regularised.mean().expand_as(regularised), atol=1e-12)


@pytest.mark.slow
def test_reference_data_agro_converges_naive_kl_pg_does_not():
    results = tabular.run(TabularConfig(**FIGURE1, data="reference", methods=["agro", "kl_pg_exact"], taper="none"))
    assert final_kl(results, "agro") < 1e-6
    assert final_kl(results, "kl_pg_exact") > 0.1
    optimal = torch.tensor(results["optimal_policy"])
    assert torch.allclose(torch.tensor(results["methods"]["agro"]["final_policy"]), optimal, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reference_data_tapered_agro_and_topr_converge_asymre_is_biased(seed):
    """The shipped taper keeps π* as the fixed point under full coverage: normalised KL < 1e-4 after the
    Figure-1 budget (slower than untapered AGRO, docs/results/tabular.md). With μ = π_ref, TOPR's taper min(1, π/μ)
    is the same weight, so TOPR follows the same path; AsymRE's shifted baseline settles elsewhere."""
    results = tabular.run(TabularConfig(**FIGURE1, data="reference", seed=seed, methods=["agro", "topr", "asymre"]))
    assert results["config"]["taper"] == "ref"
    assert final_kl(results, "agro") < 1e-4
    assert results["methods"]["topr"]["normalized_kl"] == pytest.approx(results["methods"]["agro"]["normalized_kl"])
    untapered = tabular.run(TabularConfig(**FIGURE1, data="reference", seed=seed, methods=["agro"], taper="none"))
    assert final_kl(untapered, "agro") <= final_kl(results, "agro")  # the taper slows convergence
    assert final_kl(results, "asymre") > 1e-3
    curve = results["methods"]["asymre"]["normalized_kl"]
    assert abs(curve[-1] - curve[-20]) < 0.05 * curve[-1]  # a plateau, not slow progress


@pytest.mark.slow
def test_on_policy_all_kl_regularised_methods_converge():
    results = tabular.run(TabularConfig(**FIGURE1, data="on-policy", methods=["agro", "kl_pg", "kl_pg_exact"]))
    for method in ("agro", "kl_pg", "kl_pg_exact"):
        assert final_kl(results, method) < 1e-6, method


@pytest.mark.slow
def test_grpo_has_another_fixed_point_on_policy():
    """k3 in the loss and std-normalised advantages: GRPO settles away from π* (reported, not hidden)."""
    results = tabular.run(TabularConfig(**{**FIGURE1, "steps": 2000}, data="on-policy", methods=["grpo"]))
    curve = results["methods"]["grpo"]["normalized_kl"]
    assert curve[-1] > 0.1
    assert abs(curve[-1] - curve[-20]) < 0.05 * curve[-1]  # a plateau, not slow progress


@pytest.mark.slow
def test_mixed_and_fixed_regimes_converge_for_agro():
    mu = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(1)), 0).tolist()
    mu[-1] += 1.0 - sum(mu)
    for extra in ({"data": "mixed", "alpha": 0.5}, {"data": "fixed", "mu": mu}):
        results = tabular.run(TabularConfig(actions=6, steps=3000, lr=0.5, methods=["agro", "kl_pg_exact"], **extra))
        assert final_kl(results, "agro") < 1e-6, extra
        assert final_kl(results, "kl_pg_exact") > 1e-3, extra


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_reference_data_with_decaying_step(seed):
    config = TabularConfig(
        data="reference", mode="sampled", samples=64, steps=2000, lr=0.5, lr_decay="inverse", lr_decay_steps=500,
        seed=seed, methods=["agro", "kl_pg_exact"],
    )
    results = tabular.run(config)
    assert final_kl(results, "agro") < 0.02
    assert final_kl(results, "kl_pg_exact") > 0.1


def test_lagged_data_with_lag_0_is_on_policy():
    """μ = π_{t−0} is π_t: the same run, bit for bit, for AGRO (its trust region masks nothing at ratio 1) and GRPO."""
    common = {"actions": 6, "steps": 200, "lr": 0.5, "methods": ["agro", "grpo"]}
    lagged = tabular.run(TabularConfig(**common, data="lagged", lag=0, taper="clip"))["methods"]
    on_policy = tabular.run(TabularConfig(**common, data="on-policy"))["methods"]
    assert lagged == on_policy


@pytest.mark.parametrize("lag", [1, 3])
def test_lagged_data_is_the_policy_lag_updates_before(lag, monkeypatch):
    """At the step after t updates the data is π_{max(0, t − lag)}: every μ handed to the losses is one of the
    policies seen, the right one."""
    seen, data = [], []
    real = tabular._data_distribution

    def spy(config, log_pi, log_ref, history):
        seen.append(log_pi.detach().clone())
        data.append(real(config, log_pi, log_ref, history))
        return data[-1]

    monkeypatch.setattr(tabular, "_data_distribution", spy)
    tabular.run(TabularConfig(actions=5, steps=8, lr=0.5, data="lagged", lag=lag, methods=["agro"], taper="none"))
    assert [next(i for i, p in enumerate(seen) if torch.equal(p, mu)) for mu in data] == [
        max(0, t - lag) for t in range(8)]
    assert not torch.equal(seen[0], seen[-1])  # the policy moved: the lag is visible


def test_adam_and_clipping_in_the_lab():
    """Adam's first step is θ −= lr·sign(g) (m̂/√v̂ = g/|g|); a clipped plain step is θ −= lr·g·c/‖g‖. Softmax
    gradients sum to 0 over the logits, so log π_1 − log π_ref, centred, is the step on θ itself."""
    common = {"actions": 4, "steps": 1, "lr": 0.1, "methods": ["agro"], "data": "on-policy", "beta": 0.5}
    start = tabular.make_bandit(TabularConfig(**common)).log_ref

    def step(**extra):
        moved = torch.tensor(tabular.run(TabularConfig(**common, **extra))["methods"]["agro"]["final_policy"],
                             dtype=torch.float64).log()
        return moved - start - (moved - start).mean()

    adam = step(optimizer="adam")
    gaps = adam - adam.min()
    assert torch.all((gaps.abs() < 1e-6) | ((gaps - 0.2).abs() < 1e-6)) and gaps.max() > 0.19  # ±lr, both signs
    assert step(max_grad_norm=1e-3).norm().item() == pytest.approx(0.1 * 1e-3, rel=1e-6)
    assert step().norm().item() > 1e-3  # unclipped, the same step is longer


@pytest.mark.slow
@pytest.mark.parametrize("taper", ["none", "behavior", "clip"])
def test_lagged_data_keeps_agro_fixed_point(taper):
    """Samples of the policy 4 updates old (asynchronous generation): π* is still where AGRO ends, with every
    taper that acts on them, at the Figure-1 budget."""
    results = tabular.run(TabularConfig(**FIGURE1, data="lagged", lag=4, taper=taper, methods=["agro"]))
    assert final_kl(results, "agro") < 1e-6
    curve = results["methods"]["agro"]["expected_reward"]
    assert len(curve) == len(results["methods"]["agro"]["steps"]) and curve[-1] > curve[0]


def test_sampled_is_deterministic_by_seed():
    config = TabularConfig(actions=5, mode="sampled", data="mixed", samples=8, steps=50, methods=["agro", "is_pg"])
    assert tabular.run(config)["methods"] == tabular.run(config)["methods"]


def test_cli_writes_results_and_plot(tmp_path):
    out = tmp_path / "tab"
    rc = main(["tabular", "--actions", "5", "--steps", "200", "--data", "mixed", "--alpha", "0.3", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"config", "reward", "ref_policy", "optimal_policy", "methods"}
    assert set(results["methods"]) == set(tabular.METHODS)
    for res in results["methods"].values():
        assert len(res["final_policy"]) == 5
        assert abs(sum(res["final_policy"]) - 1) < 1e-9
        assert res["normalized_kl"][0] == 1.0 and len(res["normalized_kl"]) == len(res["steps"])
    assert results["config"]["alpha"] == 0.3
    assert (out / "normalized_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--actions", "1"], "--actions must be at least 2"),
        (["--beta", "0"], "--beta must be > 0"),
        (["--beta", "-1"], "--beta must be > 0"),
        (["--alpha", "1.5"], "--alpha must be in [0, 1]"),
        (["--methods", "agro,ppo"], "unknown method 'ppo'"),
        (["--taper", "token"], "--taper must be one of none, ref"),
        (["--taper", "clip"], "--taper clip acts on a run's own samples of earlier versions: it needs --data lagged"),
        (["--data", "lagged", "--lag", "-1"], "--lag must be at least 0"),
        (["--optimizer", "sgdm"], "--optimizer must be one of sgd, adam"),
        (["--epsilon", "1.5"], "--epsilon must be in (0, 1)"),
        (["--max-grad-norm", "0"], "--max-grad-norm must be > 0"),
        (["--data", "replay"], "--data must be one of"),
        (["--data", "fixed"], "--data fixed needs --mu"),
        (["--actions", "three"], "invalid int value"),
    ],
)
def test_bad_flags_one_line_exit_2(flags, message, capsys):
    assert main(["tabular", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow
def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "agro.cli", "tabular", "--beta", "0"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "agro: error: --beta must be > 0, got 0.0"


@pytest.mark.parametrize("data", ["reference", "on-policy", "lagged", "mixed"])
def test_agro_config_defaults_keep_the_fixed_point(data, monkeypatch):
    """AGROConfig's defaults (its loss scale: the summed loss ÷ max_completion_length; its max_grad_norm and
    taper) under Adam, the trainer's update, still end at π* = π_ref·exp(r/β)/Z: the scale changes the steps, not
    where they stop. On-policy, off-policy (π_ref's data), 4 updates stale, and a mix."""
    from agro import AGROConfig

    defaults = AGROConfig(model_name_or_path="unused")
    assert defaults.taper == "clip"  # behavior, but a trust region on the run's own older samples: the lab's names
    taper = "clip" if data == "lagged" else "behavior"
    config = TabularConfig(actions=20, beta=0.5, mode="exact", steps=3000, lr=0.02, data=data, methods=["agro"],
                           optimizer="adam", max_grad_norm=defaults.max_grad_norm, taper=taper)
    config.agro_loss_type, config.max_completion_length = defaults.agro_loss_type, defaults.max_completion_length
    assert config.agro_loss_type == "dr_grpo" and config.max_completion_length > 1
    scales = []  # every step's loss at the defaults ÷ the same loss at `sum`: the scale is really applied

    def spy(**kwargs):
        out = objectives.agro_loss(**kwargs)
        scales.append((objectives.agro_loss(**{**kwargs, "loss_type": "sum"}).loss / out.loss).item())
        return out
    monkeypatch.setitem(objectives.LOSSES, "agro", dataclasses.replace(objectives.LOSSES["agro"], function=spy))
    policy = torch.tensor(tabular.run(config)["methods"]["agro"]["final_policy"], dtype=torch.float64)
    assert (policy - tabular.make_bandit(config).log_optimal.exp()).abs().max().item() < 1e-4
    finite = [x for x in scales if math.isfinite(x)]  # a step whose loss is exactly 0 has no ratio
    assert len(finite) > len(scales) // 2 and finite == pytest.approx([defaults.max_completion_length] * len(finite))
