"""Generations from every source, the batch a step trains on, and the replay buffer that keeps
earlier on-policy ones.

Every generation carries its source tag (`on_policy`, `replay`, `offline`), its loss weight and,
when known, the log-probs of the policy that made it (used by importance-sampled baselines; AGRO
ignores them). One group = one prompt, with any mix of sources.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace

import torch

SOURCES = ("on_policy", "replay", "offline")


@dataclass(frozen=True)
class Generation:
    """One completion of one prompt, as it flows through a step. Frozen: a stage that learns its reward or
    log-probs makes a new record (`agro.batch.with_values`)."""

    group: str  # prompt key
    prompt_ids: list[int]
    completion_ids: list[int]
    source: str
    weight: float = 1.0
    reward: float | None = None
    answer: str | None = None
    prompt: str = ""  # the prompt text the reward function sees
    completion: str = ""
    step: int = 0  # policy version that generated it: the optimizer steps that policy had taken
    ref_logprobs: torch.Tensor | None = field(default=None, repr=False)  # [C], cached
    behavior_logprobs: torch.Tensor | None = field(default=None, repr=False)  # [C], when known

    def to_state(self) -> dict:
        state = {k: getattr(self, k) for k in ("group", "prompt_ids", "completion_ids", "source", "weight", "reward",
                                              "answer", "prompt", "completion", "step")}
        for k in ("ref_logprobs", "behavior_logprobs"):
            value = getattr(self, k)
            state[k] = None if value is None else value.tolist()
        return state

    @classmethod
    def from_state(cls, state: dict) -> Generation:
        tensors = {k: None if state[k] is None else torch.tensor(state[k], dtype=torch.float32)
                   for k in ("ref_logprobs", "behavior_logprobs")}
        return cls(**{**state, **tensors})


@dataclass(frozen=True)
class GenerationBatch:
    """One process's groups of a generation step, trained on for `num_iterations` optimizer steps.

    Rewards and reference log-probs are cached on the generations; `old_logprobs` are the policy's
    log-probs before the batch's first update (GRPO's π_old). Checkpointed while still in use.
    """

    keys: list[str]  # the prompts, in group order
    generations: list[Generation]
    old_logprobs: list[torch.Tensor] = field(default_factory=list, repr=False)  # [C] per generation

    def to_state(self) -> dict:
        return {"keys": self.keys, "generations": [g.to_state() for g in self.generations],
                "old_logprobs": [lp.tolist() for lp in self.old_logprobs]}

    @classmethod
    def from_state(cls, state: dict) -> GenerationBatch:
        return cls(keys=state["keys"], generations=[Generation.from_state(s) for s in state["generations"]],
                   old_logprobs=[torch.tensor(lp, dtype=torch.float32) for lp in state["old_logprobs"]])


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
