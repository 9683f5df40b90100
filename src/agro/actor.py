"""The actor: turns a step's prompts into on-policy `Generation` records with a generation backend.

Every generation is stamped with the policy version that made it (`Generation.step`: the optimizer steps
that policy had taken). The learner hands the actor its weights with `sync_weights(policy, version)` before
each generation batch.

This actor is synchronous: it samples with the learner's own policy module (no copy), so syncing is
recording the version, and it leaves `behavior_logprobs` unset: the learner's first forward pass over the
batch is under the same weights and supplies them (`agro.assembly.with_behavior`), which saves a pass. The
asynchronous actor (`agro.async_actor.AsyncActor`: its own process and weights, up to k versions behind)
has the same two methods; it loads the weights in `sync_weights` and fills `behavior_logprobs` itself,
since the learner's weights are no longer the sampler's.
"""

from __future__ import annotations

from agro.prompts import PromptPool
from agro.records import Generation


class Actor:
    """Synchronous actor: `sync_weights(policy, version)`, then `next_batch(step) -> (keys, generations)`."""

    def __init__(self, generator, tokenizer, prompts: PromptPool, num_generations: int, rank: int = 0,
                 world: int = 1):
        self.rank, self.world = rank, world
        self.generator = generator  # agro.generators.HFGenerator or agro.vllm_backend.VLLMGenerator
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.num_generations = num_generations
        self.policy = None
        self.version = 0

    def sync_weights(self, policy, version: int) -> None:
        """Generate with `policy` from now on; it has taken `version` optimizer steps."""
        self.policy, self.version = policy, version

    def generate(self, keys: list[str]) -> list[Generation]:
        """`num_generations` samples of each prompt key, prompt-major, stamped with the current version."""
        if self.num_generations == 0:
            return []
        completions = self.generator.generate(self.policy, [self.prompts.prompt_ids[k] for k in keys],
                                              self.num_generations)
        return on_policy_generations(self.prompts, self.tokenizer, keys, completions, self.version)

    def next_batch(self, step: int) -> tuple[list[str], list[Generation]]:
        """The prompt keys of the batch consumed at `step` and their samples, generated now."""
        keys = self.prompts.take_keys(self.rank, self.world)
        return keys, self.generate(keys)


def on_policy_generations(pool: PromptPool, tokenizer, keys: list[str], completions: list[list[int]], version: int,
                          behavior_logprobs: list | None = None) -> list[Generation]:
    """Records of `completions` (prompt-major, len(completions) // len(keys) per key) sampled by `version`."""
    n = len(completions) // len(keys)
    return [Generation(
        group=keys[i // n], prompt_ids=pool.prompt_ids[keys[i // n]], completion_ids=ids, source="on_policy",
        answer=pool.answers[keys[i // n]], prompt=pool.prompt_texts[keys[i // n]],
        completion=tokenizer.decode(ids, skip_special_tokens=True), step=version,
        behavior_logprobs=None if behavior_logprobs is None else behavior_logprobs[i],
    ) for i, ids in enumerate(completions)]
