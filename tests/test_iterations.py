"""`num_iterations`: each generation batch trained on for that many optimizer steps (TRL's meaning)."""

import json
import math
import shutil

import pytest
import torch
from test_trainer import final_weights, overrides, read_metrics

import agro.assembly
import agro.objectives
import agro.objectives as objectives
import agro.rewards.scoring
from agro.actor import Actor
from agro.cli import main
from agro.config import load_config
from agro.errors import AgroError
from agro.learner import Learner
from agro.trainer import Trainer


@pytest.fixture
def calls(monkeypatch):
    """Every call of the objective in the trainer: its input tensors (detached) and its output metrics.
    `calls.check(fn)`: also run `fn(t, out)` on the live tensors and output of each call, before backward."""

    class Calls(list):
        check = None

    seen = Calls()
    original = agro.objectives.compute_loss

    def capture(name, t, settings):
        out = original(name, t, settings)
        if seen.check is not None:
            seen.check(t, out)
        seen.append(({k: v.detach().clone() for k, v in t.items()}, dict(out.metrics)))
        return out

    monkeypatch.setattr(agro.objectives, "compute_loss", capture)
    return seen


def count_rollouts(monkeypatch) -> list[int]:
    """The steps (0-based, before the update) at which new samples were generated."""
    steps = []
    original = Actor.generate

    def rollout(self, keys):
        steps.append(self.version)
        return original(self, keys)

    monkeypatch.setattr(Actor, "generate", rollout)
    return steps


def test_num_iterations_must_be_positive(assets, tmp_path):
    with pytest.raises(AgroError, match=r"^--set num_iterations: key 'num_iterations': must be > 0, got 0$"):
        load_config(None, overrides(assets, tmp_path / "run", num_iterations=0))


def test_one_iteration_is_one_update_per_generation_with_ratio_one(assets, tmp_path, monkeypatch, calls):
    """num_iterations 1: new samples every step, GRPO's π_old is the current log-probs bit for bit, so the
    gradient is that of the ratio-1 objective (old_logprobs=None), the update before num_iterations existed."""
    rollouts = count_rollouts(monkeypatch)
    config = load_config(None, overrides(assets, tmp_path / "run", objective="grpo", max_steps=3, save_steps=0,
                                         offline_data=assets / "offline.jsonl", offline_per_group=1))
    same = []

    def check(live, out):
        common = {k: live[k] for k in ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids", "weights")}
        ratio_one = objectives.grpo_loss(**common, beta=config.beta, epsilon=config.epsilon)
        got, = torch.autograd.grad(out.loss, live["logprobs"], retain_graph=True)
        want, = torch.autograd.grad(ratio_one.loss, live["logprobs"], retain_graph=True)
        same.append(torch.equal(got, want) and torch.equal(out.loss, ratio_one.loss) and bool(got.abs().sum() > 0))

    calls.check = check
    Trainer(config).train()
    assert rollouts == [0, 1, 2]
    assert len(calls) == 6 and same == [True] * 6  # 8 generations in mini-batches of 5: 2 backward passes a step
    for t, metrics in calls:
        assert torch.equal(t["old_logprobs"], t["logprobs_now"])
        assert metrics["clip_fraction"] == 0.0 and metrics["clip_region_fraction"] == 0.0
    assert [r["iteration"] for r in read_metrics(tmp_path / "run")] == [1, 1, 1]


def hand_grpo(t: dict, old: torch.Tensor, beta: float, eps: float, eps_high: float) -> dict[str, float]:
    """TRL's GRPO loss (loss_type grpo) and clip fractions, token by token in float64."""
    lp, ref, mask = t["logprobs_now"].double(), t["ref_logprobs"].double(), t["mask"]
    rewards, groups = t["rewards"].double().tolist(), t["group_ids"].tolist()
    loss, tokens, outside, region = 0.0, 0, 0, 0
    for i in range(len(rewards)):
        group = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        adv = (rewards[i] - mean) / (std + 1e-4)
        n = int(mask[i].sum())
        seq = 0.0
        for k in range(n):
            rho = math.exp(lp[i, k] - old[i, k])
            clipped = min(max(rho, 1 - eps), 1 + eps_high)
            d = float(ref[i, k] - lp[i, k])
            seq += -min(rho * adv, clipped * adv) + beta * (math.exp(d) - d - 1)
            outside += clipped != rho
            region += (rho < 1 - eps and adv < 0) or (rho > 1 + eps_high and adv > 0)
        loss += seq / n / len(rewards)
        tokens += n
    return {"loss": loss, "clip_fraction": outside / tokens, "clip_region_fraction": region / tokens}


def test_grpo_later_iterations_clip_against_the_log_probs_at_generation(assets, tmp_path, monkeypatch, calls):
    rollouts = count_rollouts(monkeypatch)
    eps, eps_high, beta = 0.1, 0.15, 0.05
    config = load_config(None, overrides(assets, tmp_path / "run", objective="grpo", num_iterations=3, max_steps=3,
                                         save_steps=0, learning_rate=0.03, epsilon=eps, epsilon_high=eps_high,
                                         beta=beta, mini_batch_size=16))
    Trainer(config).train()
    rows = read_metrics(tmp_path / "run")
    assert rollouts == [0] and len(calls) == 3
    assert [r["iteration"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["time_generation"] == rows[2]["time_generation"] == 0.0 < rows[0]["time_generation"]
    first = calls[0][0]
    old = first["logprobs_now"]
    assert torch.equal(first["old_logprobs"], old)
    for step, (t, metrics) in enumerate(calls):
        assert torch.equal(t["old_logprobs"], old)  # π_old: the log-probs at generation, every iteration
        assert torch.equal(t["rewards"], first["rewards"]) and torch.equal(t["ref_logprobs"], first["ref_logprobs"])
        assert step == 0 or not torch.equal(t["logprobs_now"], old)  # the policy moved: ratios ≠ 1
        hand = hand_grpo(t, old.double(), beta, eps, eps_high)
        assert rows[step]["loss"] == pytest.approx(hand["loss"], rel=1e-5, abs=1e-6)
        assert metrics["clip_fraction"] == pytest.approx(hand["clip_fraction"], abs=1e-6)
        assert metrics["clip_region_fraction"] == pytest.approx(hand["clip_region_fraction"], abs=1e-6)
        assert rows[step]["objective/clip_fraction"] == metrics["clip_fraction"]
    assert calls[0][1]["clip_fraction"] == 0.0
    assert calls[2][1]["clip_fraction"] > 0 and calls[2][1]["clip_region_fraction"] > 0


def test_replay_and_offline_members_are_reused_over_the_iterations(assets, tmp_path, monkeypatch):
    """is_pg with offline records and replay, 2 iterations: a batch's members (on-policy, offline, replayed)
    stay the same over its iterations; rewards and reference log-probs are computed once; on-policy samples
    keep the generating policy's log-probs as behaviour log-probs; replay staleness counts optimizer steps."""
    seen, unscored, unreferenced = [], [], []
    tensors, score, reference = agro.assembly.tensors, agro.rewards.scoring.score, Learner.with_reference

    def capture(gens, keys, logprobs_now, old_logprobs=None):
        t = tensors(gens, keys, logprobs_now, old_logprobs)
        seen.append((list(gens), t))
        return t

    def count_score(scorer, gens, *args):
        unscored.append(sum(g.reward is None for g in gens))
        return score(scorer, gens, *args)

    def count_reference(self, gens):
        unreferenced.append(sum(g.ref_logprobs is None for g in gens))
        return reference(self, gens)

    monkeypatch.setattr(agro.assembly, "tensors", capture)
    monkeypatch.setattr(agro.rewards.scoring, "score", count_score)
    monkeypatch.setattr(Learner, "with_reference", count_reference)
    rollouts = count_rollouts(monkeypatch)
    out = tmp_path / "run"
    config = load_config(None, overrides(assets, out, objective="is_pg", train_data=assets / "two.jsonl",
                                         offline_data=assets / "offline.jsonl", offline_per_group=1,
                                         replay_per_group=2, replay_max_staleness=2, num_iterations=2, max_steps=4,
                                         save_steps=0, eval_data=assets / "two.jsonl", eval_steps=3))
    Trainer(config).train()
    rows = read_metrics(out)
    assert rollouts == [0, 2]
    assert [(r["step"], r["iteration"]) for r in rows] == [(0, 0), (1, 1), (2, 2), (3, 1), (4, 2), (4, 2)]
    assert "eval/accuracy" in rows[0] and "eval/accuracy" in rows[3] and "eval/accuracy" in rows[-1]
    train_rows = rows[1:5]
    assert unscored == [6, 0, 6, 0]  # on-policy samples, at each batch's first iteration (records have rewards)
    # 6 samples + 2 records, once per batch (a record seen before and replayed samples keep theirs)
    assert unreferenced[:2] == [8, 0] and 6 <= unreferenced[2] <= 8 and unreferenced[3] == 0
    assert [r.get("count/replay", 0) for r in train_rows] == [0, 0, 4, 4]
    assert [r["count/offline"] for r in train_rows] == [2] * 4
    for a, b in ((0, 1), (2, 3)):
        assert [id(g) for g in seen[a][0]] == [id(g) for g in seen[b][0]]  # the same batch
    assert {id(g) for g in seen[0][0] if g.source == "on_policy"}.isdisjoint(id(g) for g in seen[2][0])
    (gens1, t1), (_, t2), (gens3, t3), _ = seen
    for i, g in enumerate(gens1):
        if g.source == "on_policy":  # iteration 2: behaviour = log-probs at generation, weight π/μ ≠ 1
            assert torch.equal(t2["behavior_logprobs"][i], t1["logprobs_now"][i])
            assert not torch.equal(t2["logprobs_now"][i], t1["logprobs_now"][i])
    first_batch = {(g.group, tuple(g.completion_ids)): t1["logprobs_now"][i] for i, g in enumerate(gens1)
                   if g.source == "on_policy"}
    for i, g in enumerate(gens3):
        if g.source == "replay":  # made at step 0, replayed at step 2 (staleness 2 optimizer steps)
            assert g.step == 0 and torch.equal(t3["behavior_logprobs"][i],
                                               first_batch[(g.group, tuple(g.completion_ids))])
    assert all(math.isfinite(r["loss"]) for r in train_rows)


def test_resume_in_the_middle_of_a_batch_is_bit_exact(assets, tmp_path):
    """num_iterations 3, 6 steps, checkpoints every 2: checkpoint-4 is taken after the first of the second
    batch's iterations (a batch with on-policy, offline and replayed members). A run killed after it
    resumes with --resume and ends as the straight run did, bit for bit."""
    extra = {"objective": "grpo", "num_iterations": 3, "max_steps": 6, "save_steps": 2,
             "train_data": assets / "two.jsonl", "offline_data": assets / "offline.jsonl", "offline_per_group": 1,
             "replay_per_group": 1, "replay_max_staleness": 3, "lr_scheduler_type": "linear", "warmup_steps": 1,
             "learning_rate": 0.03}
    straight = tmp_path / "straight"
    Trainer(load_config(None, overrides(assets, straight, **extra))).train()
    saved = json.loads((straight / "checkpoint-4" / "batch_0.json").read_text())  # mid-batch: the batch is kept
    assert {g["source"] for g in saved["generations"]} == {"on_policy", "offline", "replay"}
    assert json.loads((straight / "checkpoint-4" / "trainer_state.json").read_text())["iteration"] == 1
    assert not (straight / "checkpoint-6" / "batch_0.json").exists()  # after a batch's last iteration: none

    broken = tmp_path / "broken"  # killed during step 6, after checkpoint-4 (and a torn metrics line)
    broken.mkdir()
    shutil.copytree(straight / "checkpoint-4", broken / "checkpoint-4")
    shutil.copy(straight / "config.yaml", broken / "config.yaml")
    (broken / "metrics.jsonl").write_text("".join(line + "\n" for line in
                                                  (straight / "metrics.jsonl").read_text().splitlines()[:5])
                                          + '{"step": 6, "lo')
    torch.manual_seed(12345)  # a fresh process would not share the straight run's RNG
    args = ["train", *(arg for item in overrides(assets, broken, **extra) for arg in ("--set", item)), "--resume"]
    assert main(args) == 0
    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = [(r["step"], r["iteration"], r["loss"], r["objective/clip_fraction"]) for r in read_metrics(straight)]
    assert [(r["step"], r["iteration"], r["loss"], r["objective/clip_fraction"]) for r in read_metrics(broken)] == rows
    assert [r[:2] for r in rows] == [(1, 1), (2, 2), (3, 3), (4, 1), (5, 2), (6, 3)]
    assert rows[4][3] > 0  # the resumed iterations clip as the straight run's did

    other = tmp_path / "other"  # a mid-batch checkpoint of 2 processes cannot resume in 1
    other.mkdir()
    shutil.copytree(straight / "checkpoint-4", other / "checkpoint-4")
    shutil.copy(other / "checkpoint-4" / "batch_0.json", other / "checkpoint-4" / "batch_1.json")
    with pytest.raises(AgroError, match="saved in the middle of a generation batch by 2 processes; resume it with 2"):
        Trainer(load_config(None, overrides(assets, other, **extra)), resume=True)
