"""Replay of earlier on-policy generations: per prompt (`ReplayBuffer`: a prompt's earlier samples join its
group when it is drawn again, while recent enough) and of whole groups (`GroupReplay`: groups of earlier steps,
of any prompt, trained on again beside the step's fresh groups)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from agro.config import TrainConfig
from agro.records import Generation


def as_replayed(g: Generation, weight: float) -> Generation:
    """`g` as a replayed record: source "replay", loss weight `weight`; a member out of the loss (weight 0: no
    reward, or cut under `mask`) stays out. Reward, π_ref and behaviour log-probs, and `step` are kept."""
    return replace(g, source="replay", weight=weight if g.weight > 0 else 0.0)


class ReplayBuffer:
    """Earlier on-policy generations per prompt, kept while at most `max_staleness` steps old.

    Replayed generations keep the reward, reference log-probs and the generating policy's
    log-probs computed when they were trained on, so nothing is recomputed but the current
    policy's log-probs.
    """

    def __init__(self, max_staleness: int, weight: float):
        self.max_staleness = max_staleness
        self.weight = weight
        self.by_group: dict[str, list[Generation]] = defaultdict(list)

    def add(self, generations: list[Generation]) -> None:
        for g in generations:
            self.by_group[g.group].append(g)

    def evict(self, step: int) -> None:
        """Drop generations older than `max_staleness` steps at `step`."""
        for key in list(self.by_group):
            kept = [g for g in self.by_group[key] if step - g.step <= self.max_staleness]
            if kept:
                self.by_group[key] = kept
            else:
                del self.by_group[key]

    def sample(self, group: str, step: int, count: int, generator: torch.Generator) -> list[Generation]:
        """Up to `count` generations of `group` made before `step`, as replay copies."""
        eligible = [g for g in self.by_group.get(group, []) if 0 < step - g.step <= self.max_staleness]
        if not eligible or count <= 0:
            return []
        order = torch.randperm(len(eligible), generator=generator)[:count].tolist()
        return [as_replayed(eligible[i], self.weight) for i in order]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_group.values())

    def state(self) -> list[dict]:
        return [g.to_state() for gens in self.by_group.values() for g in gens]

    def load_state(self, state: list[dict]) -> None:
        self.by_group.clear()
        self.add([Generation.from_state(s) for s in state])

    def save(self, directory: Path, rank: int) -> None:
        """This process's samples in `directory`/replay_<rank>.json (each process keeps its own; none: no file)."""
        if self.by_group:
            (directory / f"replay_{rank}.json").write_text(json.dumps(self.state()))

    def load(self, directory: Path, rank: int, older: list[dict] | None = None) -> None:
        """The samples `save` wrote in `directory` for process `rank`; without that file, `older` (a checkpoint
        that kept one buffer in trainer_state.json, key "replay") or none."""
        file = directory / f"replay_{rank}.json"
        self.load_state(json.loads(file.read_text()) if file.exists() else older or [])


def reward_variance(members: list[Generation]) -> float:
    """The population variance of the rewards of a group's members in the loss (weight > 0): 0 when they are
    all equal, where the group's reward says nothing about which completion is better."""
    rewards = [g.reward for g in members if g.weight > 0]
    mean = sum(rewards) / len(rewards)
    return sum((r - mean) ** 2 for r in rewards) / len(rewards)


class GroupReplay:
    """Whole groups of earlier steps: a prompt with its on-policy samples, as they were after their batch's first
    update (reward, π_ref log-probs, the sampling policy's log-probs as behaviour log-probs, `step`: its version).

    A group is dropped once the policy is more than `max_age` versions ahead of the one that sampled it, and the
    oldest go first beyond `size` groups. `sample` draws groups of distinct prompts, none of them a prompt of the
    step's fresh groups on this process (the group baseline needs one group per prompt; each process has its own
    groups and baselines), uniformly (`uniform`) or with probability
    ∝ the group's reward variance (`reward_variance`: only groups whose rewards are not all equal are drawn).
    `per_step` groups a step (0: off: the buffer keeps nothing, saves nothing and reports nothing).
    """

    def __init__(self, per_step: int, max_age: int, size: int, sampling: str, weight: float):
        self.per_step, self.max_age, self.size, self.sampling, self.weight = per_step, max_age, size, sampling, weight
        self.groups: list[list[Generation]] = []  # oldest first

    @classmethod
    def for_process(cls, config: TrainConfig, world: int) -> GroupReplay:
        """A process's buffer under `config` (replay_* keys): each of the `world` processes keeps and replays its
        own groups, its share of replay_buffer_size and replay_groups_per_step."""
        return cls(config.replay_groups_per_step // world, config.replay_max_age, config.replay_buffer_size // world,
                   config.replay_sampling, config.replay_weight)

    def update(self, step: int, groups: list[list[Generation]]) -> None:
        """After the update that made the policy version `step`: `groups` (a new batch's, once trained on) join,
        then those too old leave (`add`, `evict`)."""
        if self.per_step:
            self.add(groups)
            self.evict(step)

    def add(self, groups: list[list[Generation]]) -> None:
        """Store `groups` (each one prompt's samples); one with no member in the loss carries nothing and is not
        kept. The oldest are dropped beyond `size`."""
        self.groups += [list(members) for members in groups if any(g.weight > 0 for g in members)]
        del self.groups[: max(0, len(self.groups) - self.size)]

    def evict(self, step: int) -> None:
        """Drop the groups more than `max_age` versions older than the policy after `step` updates."""
        self.groups = [members for members in self.groups if step - version(members) <= self.max_age]

    def sample(self, step: int, count: int, exclude: set[str], rng: torch.Generator) -> list[list[Generation]]:
        """Up to `count` stored groups at most `max_age` versions old at `step`, of distinct prompts not in
        `exclude`, drawn from `rng` one at a time; their members as replayed records (weight `weight`)."""
        candidates = [m for m in self.groups if m[0].group not in exclude and step - version(m) <= self.max_age]
        if self.sampling == "reward_variance":
            scores = [reward_variance(m) for m in candidates]
        else:
            scores = [1.0] * len(candidates)
        weights = torch.tensor(scores, dtype=torch.float64)
        drawn = []
        while len(drawn) < count and weights.sum() > 0:
            pick = candidates[int(torch.multinomial(weights, 1, generator=rng))]
            drawn.append([as_replayed(g, self.weight) for g in pick])
            for j, members in enumerate(candidates):  # one group per prompt in a step
                if members[0].group == pick[0].group:
                    weights[j] = 0.0
        return drawn

    def metrics(self) -> dict[str, float]:
        """What the buffer holds now (its memory): groups and samples."""
        if not self.per_step:
            return {}
        return {"replay/groups": float(len(self.groups)), "replay/samples": float(sum(map(len, self.groups)))}

    def save(self, directory: Path, rank: int) -> None:
        """This process's groups in `directory`/replay_groups_<rank>.json (each process keeps its own)."""
        if self.per_step:
            state = [[g.to_state() for g in members] for members in self.groups]
            (directory / f"replay_groups_{rank}.json").write_text(json.dumps(state))

    def load(self, directory: Path, rank: int) -> None:
        """The groups `save` wrote in `directory` for process `rank`; none when it wrote none there (a
        checkpoint of a run without group replay, or of fewer processes)."""
        file = directory / f"replay_groups_{rank}.json"
        state = json.loads(file.read_text()) if file.exists() else []
        self.groups = [[Generation.from_state(s) for s in members] for members in state]


def version(members: list[Generation]) -> int:
    """The policy version that sampled a group: the oldest of its members' (one batch: one version)."""
    return min(g.step for g in members)
