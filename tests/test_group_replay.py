"""Group replay: whole groups of earlier steps trained on again beside each step's fresh groups (GroupReplay),
bounded by age and size, drawn uniformly or by reward variance, clipped against their sampler by GRPO, and
restored bit for bit on resume."""

import json

import pytest
import torch
from test_trainer import checkpointed_after, final_weights, overrides, read_metrics

import agro.assembly as assembly
from agro.config import load_config
from agro.errors import AgroError
from agro.records import Generation
from agro.replay import GroupReplay, ReplayBuffer
from agro.trainer import Trainer


def gen(group: str, completion: int, step: int = 0, reward: float = 0.0, weight: float = 1.0) -> Generation:
    return Generation(group=group, prompt_ids=[1, 2], completion_ids=[completion], source="on_policy", step=step,
                      reward=reward, weight=weight, ref_logprobs=torch.tensor([-1.0]),
                      behavior_logprobs=torch.tensor([-0.5 - completion]))


def group(key: str, step: int, rewards=(0.0, 1.0), weights=None) -> list[Generation]:
    weights = weights or [1.0] * len(rewards)
    return [gen(key, 10 * step + i, step, r, w) for i, (r, w) in enumerate(zip(rewards, weights))]


def test_groups_are_dropped_by_age_and_the_oldest_beyond_the_size():
    buffer = GroupReplay(per_step=2, max_age=2, size=3, sampling="uniform", weight=1.0)
    buffer.add([group("a", 0), group("b", 0)])
    buffer.add([group("c", 1), group("x", 1, weights=[0.0, 0.0])])  # nothing in the loss: not kept
    assert [m[0].group for m in buffer.groups] == ["a", "b", "c"]
    buffer.add([group("d", 2)])  # size 3: the oldest goes
    assert [m[0].group for m in buffer.groups] == ["b", "c", "d"]
    buffer.evict(2)
    assert [m[0].group for m in buffer.groups] == ["b", "c", "d"]  # version 0 is 2 updates old: kept
    buffer.evict(3)
    assert [m[0].group for m in buffer.groups] == ["c", "d"]
    assert buffer.metrics() == {"replay/groups": 2.0, "replay/samples": 4.0}
    buffer.update(4, [group("e", 3)])  # joins, then version 1 ("c") is 3 updates old: dropped
    assert [m[0].group for m in buffer.groups] == ["d", "e"]
    off = GroupReplay(per_step=0, max_age=2, size=3, sampling="uniform", weight=1.0)
    off.update(1, [group("a", 0)])
    assert off.groups == [] and off.metrics() == {}


def test_uniform_draws_distinct_prompts_not_in_the_step_as_replayed_copies():
    buffer = GroupReplay(per_step=2, max_age=4, size=10, sampling="uniform", weight=0.5)
    stored = [group("a", 0), group("b", 0, weights=[1.0, 0.0]), group("c", 1), group("a", 1)]
    buffer.add(stored)

    def draw(seed, count=3, exclude=("c",)):
        return buffer.sample(2, count, set(exclude), torch.Generator().manual_seed(seed))

    assert [[g.completion_ids for g in m] for m in draw(0)] == [[g.completion_ids for g in m] for m in draw(0)]
    seen_a = set()
    for seed in range(40):
        drawn = draw(seed)
        keys = [m[0].group for m in drawn]
        assert sorted(keys) == ["a", "b"]  # "c" is a fresh prompt of the step; "a" once though stored twice
        seen_a.add(next(m[0].step for m in drawn if m[0].group == "a"))
        for members in drawn:
            original = next(s for s in stored if s[0].group == members[0].group and s[0].step == members[0].step)
            for g, o in zip(members, original):
                assert g.source == "replay" and g.weight == (0.5 if o.weight > 0 else 0.0)
                assert (g.reward, g.step, g.completion_ids) == (o.reward, o.step, o.completion_ids)
                assert g.ref_logprobs is o.ref_logprobs and g.behavior_logprobs is o.behavior_logprobs
    assert seen_a == {0, 1}  # either of a's groups
    assert all(g.source == "on_policy" for m in buffer.groups for g in m)  # the buffer keeps its records
    assert len(draw(0, count=1)) == 1 and draw(0, exclude=("a", "b", "c")) == []
    assert buffer.sample(6, 3, set(), torch.Generator()) == []  # all older than max_age at step 6


def test_reward_variance_draws_only_groups_with_signal_and_favours_the_larger_variance():
    buffer = GroupReplay(per_step=2, max_age=4, size=10, sampling="reward_variance", weight=1.0)
    buffer.add([group("flat", 0, rewards=(1.0, 1.0, 1.0, 1.0)), group("half", 0, rewards=(0.0, 1.0, 0.0, 1.0)),
                group("one", 0, rewards=(0.0, 0.0, 0.0, 1.0)),
                group("masked", 0, rewards=(0.0, 1.0, 1.0, 1.0), weights=[0.0, 1.0, 1.0, 1.0])])
    firsts = [buffer.sample(1, 1, set(), torch.Generator().manual_seed(s))[0][0].group for s in range(400)]
    assert set(firsts) == {"half", "one"}  # equal rewards ("masked": among the members in the loss) carry no signal
    assert firsts.count("half") / 400 == pytest.approx(0.25 / (0.25 + 0.1875), abs=0.06)
    assert sorted(m[0].group for m in buffer.sample(1, 4, set(), torch.Generator())) == ["half", "one"]


def test_assemble_appends_replayed_groups_and_draws_nothing_more_without_them():
    keys, on_policy = ["x"], [gen("x", 1, step=2), gen("x", 2, step=2)]
    old = ReplayBuffer(max_staleness=2, weight=1.0)
    buffer = GroupReplay(per_step=5, max_age=4, size=10, sampling="uniform", weight=1.0)
    buffer.add([group("x", 1), group("y", 1), group("z", 0)])
    rng = assembly.group_rng(0, 2, 0)
    out = assembly.assemble(keys, on_policy, {}, old, 2, 0, 0, rng, buffer)
    assert out.keys[0] == "x" and sorted(out.keys[1:]) == ["y", "z"]  # the step's "x" is not replayed
    assert [g.group for g in out.generations] == ["x", "x"] + [k for k in out.keys[1:] for _ in range(2)]
    assert out.on_policy == [0, 1] and [g.source for g in out.generations[2:]] == ["replay"] * 4
    assert assembly.replay_metrics(out.generations, 2) == {"replay/age_mean": 1.5}
    plain_rng, off_rng = assembly.group_rng(0, 2, 0), assembly.group_rng(0, 2, 0)
    plain = assembly.assemble(keys, on_policy, {}, old, 2, 0, 0, plain_rng)
    off = assembly.assemble(keys, on_policy, {}, old, 2, 0, 0, off_rng,
                            GroupReplay(per_step=0, max_age=4, size=10, sampling="uniform", weight=1.0))
    assert plain == off and plain.keys == keys
    assert torch.equal(torch.rand(3, generator=plain_rng), torch.rand(3, generator=off_rng))
    fresh = assembly.fresh_groups([gen("y", 5), *on_policy, gen("y", 6)], [1, 0, 2, 3])
    assert [[g.completion_ids[0] for g in m] for m in fresh] == [[1, 2], [5, 6]]  # by prompt, first seen first


def test_grpo_pi_old_of_replayed_records_is_their_samplers():
    gens = [gen("x", 1), gen("y", 2), gen("z", 3)]
    gens[1] = Generation(**{**gens[1].__dict__, "source": "replay"})
    gens[2] = Generation(**{**gens[2].__dict__, "source": "offline"})
    now = [torch.tensor([-9.0])] * 3
    old = assembly.sampling_logprobs(gens, now)
    assert old[0] is gens[0].behavior_logprobs and old[1] is gens[1].behavior_logprobs and old[2] is now[2]


REPLAY = {"replay_groups_per_step": 2, "replay_max_age": 2, "replay_buffer_size": 8, "save_steps": 0}


def test_a_run_replays_whole_groups_of_other_prompts_and_grpo_clips_them_to_their_sampler(
        assets, tmp_path, monkeypatch, one_thread):
    seen = []
    tensors = assembly.tensors

    def capture(gens, keys, logprobs_now, old_logprobs=None):
        t = tensors(gens, keys, logprobs_now, old_logprobs)
        seen.append((list(gens), list(keys), t))
        return t

    monkeypatch.setattr(assembly, "tensors", capture)
    out = tmp_path / "run"
    Trainer(load_config(None, overrides(assets, out, objective="grpo", max_steps=4, **REPLAY))).train()
    rows = read_metrics(out)
    assert "count/replay" not in rows[0] and "replay/age_mean" not in rows[0]
    assert [r.get("count/replay") for r in rows[1:]] == [6.0, 6.0, 6.0]  # 2 groups × 3 samples from step 2 on
    assert [r["count/on_policy"] for r in rows] == [6.0] * 4
    # kept: the groups of the last replay_max_age versions (2 per step)
    assert [r["replay/groups"] for r in rows] == [2.0, 4.0, 4.0, 4.0]
    assert [r["replay/samples"] for r in rows] == [6.0, 12.0, 12.0, 12.0]
    assert all(1.0 <= r["replay/age_mean"] <= 2.0 for r in rows[1:])
    for step, (gens, keys, t) in enumerate(seen):
        fresh = {g.group for g in gens if g.source == "on_policy"}
        replayed = [g for g in gens if g.source == "replay"]
        assert len(keys) == len(set(keys)) == 2 + len(replayed) // 3  # one group per prompt
        assert not fresh & {g.group for g in replayed}
        assert all(step - 2 <= g.step < step for g in replayed)
        for i, g in enumerate(gens):
            if g.source == "replay":  # GRPO's ratio is to the policy that sampled it, not to the current one
                n = len(g.completion_ids)
                assert torch.equal(t["old_logprobs"][i, :n], g.behavior_logprobs)
                assert not torch.equal(t["logprobs_now"][i, :n], g.behavior_logprobs)
    assert any(r["objective/clip_fraction"] > 0 for r in rows[1:])


def test_resume_restores_the_buffer_bit_exactly(assets, tmp_path, one_thread):
    extra = {**REPLAY, "max_steps": 5, "save_steps": 2, "replay_sampling": "reward_variance",
             "replay_max_age": 3, "replay_buffer_size": 5, "lr_scheduler_type": "linear", "warmup_steps": 1}
    straight = tmp_path / "straight"
    Trainer(load_config(None, overrides(assets, straight, **extra))).train()

    broken = tmp_path / "broken"
    first, saved = checkpointed_after(assets, broken, 2, **extra)
    held = [[g.to_state() for g in m] for m in first.group_replay.groups]
    first.train_step()  # step 3 changes the buffer, then the process is killed: no checkpoint of it
    assert [[g.to_state() for g in m] for m in first.group_replay.groups] != held
    first.scorer.close()
    assert held and json.loads((saved / "replay_groups_0.json").read_text()) == held
    (broken / "config.yaml").write_text("")  # the killed run had started
    torch.manual_seed(12345)  # a fresh process would not share the first one's RNG
    resumed = Trainer(load_config(None, overrides(assets, broken, **extra)), resume=True)
    assert [[g.to_state() for g in m] for m in resumed.group_replay.groups] == held
    resumed.train()

    def steady(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time_") and k != "tokens_per_s"} for r in rows]

    rows = read_metrics(straight)
    assert any("count/replay" in r for r in rows[2:])
    assert steady(read_metrics(broken)) == steady(rows[2:])
    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_the_asynchronous_actor_gets_replayed_groups_too(assets, tmp_path, one_thread):
    out = tmp_path / "async"
    Trainer(load_config(None, overrides(assets, out, async_generation="true", max_staleness=1, max_steps=4,
                                        **{**REPLAY, "replay_max_age": 3}))).train()
    rows = read_metrics(out)
    assert [r.get("count/replay") for r in rows[2:]] == [6.0, 6.0]
    assert all(2.0 <= r["replay/age_mean"] <= 3.0 for r in rows[2:])


@pytest.mark.parametrize("extra, message", [
    ({"num_generations": 0, "offline_data": "OFF", "offline_per_group": 2, "train_data": "null"},
     "key 'replay_groups_per_step': replays groups of on-policy samples, but num_generations is 0"),
    ({"replay_max_age": 0}, "key 'replay_max_age': must be > 0, got 0"),
    ({"replay_buffer_size": 1}, "key 'replay_buffer_size': keeps 1 groups, fewer than the 2"),
    ({"num_iterations": 3}, "key 'replay_max_age': is 2, but a group can be 3 updates old when it is first replayed "
                            "(num_iterations 3): must be ≥ 3"),
    ({"async_generation": "true", "max_staleness": 1, "num_iterations": 2}, "(num_iterations 2 + max_staleness 1)"),
    ({"replay_sampling": "variance"}, "key 'replay_sampling': must be one of uniform, reward_variance"),
    ({"replay_groups_per_step": -1}, "key 'replay_groups_per_step': must be ≥ 0"),
])
def test_bad_settings_name_the_key(assets, tmp_path, extra, message):
    values = {**REPLAY, **{k: assets / "offline.jsonl" if v == "OFF" else v for k, v in extra.items()}}
    with pytest.raises(AgroError) as info:
        load_config(None, overrides(assets, tmp_path / "x", **values))
    assert message in str(info.value) and "\n" not in str(info.value)
