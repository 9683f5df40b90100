"""The actor: turns a step's prompts into on-policy `Generation` records with a generation backend.

Every generation is stamped with the policy version that made it (`Generation.step`: the optimizer steps
that policy had taken). The learner hands the actor its weights with `sync_weights(policy, version)` before
each generation batch.

This actor is synchronous: it samples with the learner's own policy module (no copy), so syncing is
recording the version, and it leaves `behavior_logprobs` unset: the learner's first forward pass over the
batch is under the same weights and supplies them (`agro.batch.with_behavior`), which saves a pass. An
asynchronous actor (its own process and weights, up to k versions behind) implements the same two methods,
loads the weights in `sync_weights`, and fills `behavior_logprobs` itself, since the learner's weights are
no longer the sampler's.
"""

from __future__ import annotations

from agro.buffer import Generation
from agro.prompts import PromptPool


class Actor:
    """Synchronous actor: `sync_weights(policy, version)`, then `generate(keys) -> list[Generation]`."""

    def __init__(self, generator, tokenizer, prompts: PromptPool, num_generations: int):
        self.generator = generator  # agro.rollout.HFGenerator or agro.vllm_backend.VLLMGenerator
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
        n = self.num_generations
        if n == 0:
            return []
        pool = self.prompts
        completions = self.generator.generate(self.policy, [pool.prompt_ids[k] for k in keys], n)
        gens = []
        for i, ids in enumerate(completions):
            key = keys[i // n]
            gens.append(Generation(
                group=key, prompt_ids=pool.prompt_ids[key], completion_ids=ids, source="on_policy",
                answer=pool.answers[key], prompt=pool.prompt_texts[key],
                completion=self.tokenizer.decode(ids, skip_special_tokens=True), step=self.version,
            ))
        return gens
