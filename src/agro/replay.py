"""The replay buffer: earlier on-policy generations per prompt, trained on again while recent enough."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import torch

from agro.records import Generation


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
        # a member out of the loss (weight 0: no reward, or cut under `mask`) stays out when replayed
        return [replace(eligible[i], source="replay", weight=self.weight if eligible[i].weight > 0 else 0.0)
                for i in order]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_group.values())

    def state(self) -> list[dict]:
        return [g.to_state() for gens in self.by_group.values() for g in gens]

    def load_state(self, state: list[dict]) -> None:
        self.by_group.clear()
        self.add([Generation.from_state(s) for s in state])
