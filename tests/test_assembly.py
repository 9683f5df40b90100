"""Batch assembly is pure: records are never changed in place, and a record drawn twice in a step gets one
new version (the value computed at its later place) at both places."""

import torch

import agro.assembly as assembly
from agro.records import Generation, with_values
from agro.replay import ReplayBuffer


def gen(group: str, completion: list[int], source: str = "on_policy", **kw) -> Generation:
    return Generation(group=group, prompt_ids=[1, 2], completion_ids=completion, source=source, **kw)


def test_with_values_makes_new_records_and_keeps_shared_places_shared():
    a, b = gen("x", [3]), gen("y", [4, 5])
    gens = [a, b, a]  # `a` at two places: a prompt drawn twice in one step
    out = with_values(gens, "reward", [0, 1, 2], [0.1, 0.2, 0.3])
    assert a.reward is None and b.reward is None  # the inputs are untouched
    assert out[0] is out[2] and out[0].reward == 0.3 and out[1].reward == 0.2
    assert [out[at] for at in (0, 1)] == [out[2], out[1]]  # `a` and `b` found by position
    assert all(x is y for x, y in zip(with_values(gens, "reward", [], []), gens))


def test_with_behavior_fills_only_on_policy_samples_without_their_own():
    own = torch.tensor([-1.0])
    gens = [gen("x", [3]), gen("x", [4], source="offline", behavior_logprobs=own), gen("x", [5], source="offline")]
    now = [torch.tensor([-0.5]), torch.tensor([-0.6]), torch.tensor([-0.7])]
    out = assembly.with_behavior(gens, now)
    assert out[0].behavior_logprobs is now[0] and out[1].behavior_logprobs is own and out[2].behavior_logprobs is None


def test_assemble_orders_groups_and_draws_from_the_generator_only():
    keys = ["x", "y"]
    on_policy = [gen("x", [1]), gen("x", [2]), gen("y", [3]), gen("y", [4])]
    offline = {k: [gen(k, [10 + i], source="offline") for i in range(4)] for k in keys}
    replay = ReplayBuffer(max_staleness=2, weight=0.5)
    replay.add([gen("y", [7], step=0)])

    def build():
        return assembly.assemble(keys, on_policy, offline, replay, 1, 2, 1, assembly.group_rng(0, 1, 0)).generations

    first, second = build(), build()
    assert [g.completion_ids for g in first] == [g.completion_ids for g in second]
    assert [(g.group, g.source) for g in first] == [("x", "on_policy")] * 2 + [("x", "offline")] * 2 + \
        [("y", "on_policy")] * 2 + [("y", "offline")] * 2 + [("y", "replay")]
    assert first[-1].weight == 0.5 and replay.by_group["y"][0].source == "on_policy"


def test_tensors_pad_to_the_longest_completion_and_take_pi_old_when_given():
    gens = [gen("x", [1], reward=1.0, ref_logprobs=torch.tensor([-1.0])),
            gen("x", [1, 2], reward=0.0, ref_logprobs=torch.tensor([-1.0, -2.0]))]
    now = [torch.tensor([-0.5]), torch.tensor([-0.5, -0.25])]
    t = assembly.tensors(gens, ["x"], now)
    assert t["mask"].tolist() == [[1.0, 0.0], [1.0, 1.0]]
    assert t["old_logprobs"] is t["logprobs_now"] and torch.equal(t["behavior_logprobs"], t["logprobs_now"])
    old = [torch.tensor([-0.125]), torch.tensor([-0.125, -0.375])]
    assert assembly.tensors(gens, ["x"], now, old)["old_logprobs"].tolist() == [[-0.125, 0.0], [-0.125, -0.375]]


def test_replay_keeps_members_out_of_the_loss_out():
    """A sample of weight 0 (no reward, or cut under `mask`) comes back from replay with weight 0, not replay_weight."""
    replay = ReplayBuffer(max_staleness=2, weight=0.5)
    replay.add([gen("y", [7], step=0, reward=1.0), gen("y", [8], step=0, reward=0.0, weight=0.0)])
    drawn = replay.sample("y", 1, 2, torch.Generator().manual_seed(0))
    assert sorted((g.completion_ids[0], g.weight) for g in drawn) == [(7, 0.5), (8, 0.0)]
