"""The records a step trains on: one `Generation` per completion, from any source, and the `GenerationBatch`
of a step.

Every generation carries its source tag (`on_policy`, `replay`, `offline`), its loss weight and,
when known, the log-probs of the policy that made it (used by importance-sampled baselines; AGRO
ignores them). One group = one prompt, with any mix of sources. Records are frozen: a stage that learns
a value (reward, π_ref log-probs, behaviour log-probs) makes new ones (`with_values`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

SOURCES = ("on_policy", "replay", "offline")


@dataclass(frozen=True)
class Generation:
    """One completion of one prompt, as it flows through a step. Frozen: a stage that learns its reward or
    log-probs makes a new record (`with_values`)."""

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

def with_values(gens: list[Generation], field: str, indices: list[int], values: list) -> list[Generation]:
    """`gens` with `field` = values[j] on the record at gens[indices[j]], as new records (a record at several
    places: the last value, at every place). No indices: the same records."""
    new = {id(gens[i]): replace(gens[i], **{field: v}) for i, v in zip(indices, values)}
    return [new.get(id(g), g) for g in gens]
