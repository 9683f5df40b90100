"""The actor process: batches sampled with the newest weights sent, their behaviour log-probs, and faults."""

import os
import signal
from collections import defaultdict

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agro.async_actor import ActorBatch, ActorDied, ActorProcess, ActorSpec, AsyncActor, _sample
from agro.generators import HFGenerator
from agro.logprobs import completion_logprobs
from agro.tasks.arithmetic import build_tokenizer
from agro.tokens import collate

TOKENIZER = build_tokenizer()
PROMPTS = [[5, 6, 7, 8], [11, 12], [13, 14, 15]]


def tiny_model(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=TOKENIZER.eos_token_id,
                         pad_token_id=TOKENIZER.pad_token_id)
    return LlamaForCausalLM(config).eval()


def spec_for(model) -> ActorSpec:
    return ActorSpec(model.config, model.generation_config, TOKENIZER, torch.float32, max_new_tokens=10,
                     temperature=1.0, top_p=1.0, batch_size=64, num_generations=3, seed=7, num_threads=1,
                     logprob_chunk_size=1024)


@pytest.fixture
def actor_and_models():  # a real actor process: the tests that use it are slow (it imports torch)
    models = [tiny_model(0), tiny_model(1)]
    actor = ActorProcess(spec_for(models[0]))
    yield actor, models
    actor.close()


@pytest.mark.slow
def test_batches_come_from_the_newest_weights_sent_with_their_log_probs(actor_and_models):
    actor, (first, second) = actor_and_models
    spec = spec_for(first)
    actor.sync_weights(first.state_dict(), 0)
    actor.submit(0, PROMPTS)
    actor.submit(1, PROMPTS)  # sent before version 1: may be sampled by version 0 (staleness 1)
    got0 = actor.receive(0)
    actor.sync_weights(second.state_dict(), 1)
    actor.submit(2, PROMPTS)  # sent after version 1: must be sampled by it
    got1, got2 = actor.receive(1), actor.receive(2)
    assert got0.version == 0 and got1.version in (0, 1) and got2.version == 1
    for got, model in ((got0, first), (got2, second)):
        # the same completions as the learner's own generator with those weights and the batch's seed
        completions, _ = _sample(model, HFGenerator(TOKENIZER, 10), spec, got.index, PROMPTS)
        assert got.completions == completions and len(completions) == 3 * len(PROMPTS)
        # behaviour log-probs: the sampling policy's per-token log-probs, one per completion token
        batch = collate([p for p in PROMPTS for _ in range(3)], completions, TOKENIZER.pad_token_id)
        with torch.no_grad():
            lp = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.num_completion_tokens)
        for i, c in enumerate(completions):
            assert len(got.behavior_logprobs[i]) == len(c)
            torch.testing.assert_close(torch.tensor(got.behavior_logprobs[i]), lp[i, : len(c)], atol=1e-5, rtol=1e-5)
    assert got0.completions != got2.completions  # other weights, other samples


@pytest.mark.slow
def test_a_killed_actor_is_reported_instead_of_waited_for(actor_and_models):
    actor, (first, _) = actor_and_models
    actor.sync_weights(first.state_dict(), 0)
    actor.submit(0, PROMPTS)
    actor.receive(0)
    os.kill(actor.pid, signal.SIGKILL)
    actor.submit(1, PROMPTS)
    with pytest.raises(ActorDied, match=r"exit code -9 before sending the batch of step 2"):
        actor.receive(1)


@pytest.mark.slow
def test_an_error_in_the_actor_reaches_the_learner_as_one_line(actor_and_models):
    actor, (first, _) = actor_and_models
    actor.sync_weights({"not.a.weight": torch.zeros(1)}, 0)
    actor.submit(0, PROMPTS)
    with pytest.raises(ActorDied, match=r"^the actor process failed: RuntimeError: Error\(s\) in loading"):
        actor.receive(0)


class RecordingProcess:
    """Stands in for ActorProcess: records what is sent, returns each batch sampled by the newest weights."""

    def __init__(self):
        self.log, self.version = [], None

    def sync_weights(self, state, version):
        self.version = version
        self.log.append(("weights", version))

    def submit(self, index, prompts):
        self.log.append(("prompts", index, self.version))  # the newest weights sent before these prompts

    def receive(self, index):
        (sampled_by,) = [v for kind, *rest in self.log if kind == "prompts" and rest[0] == index for v in rest[1:]]
        return ActorBatch(index, sampled_by, [[4]] * 2 * 3, [[-1.0]] * 2 * 3)


class Pool:
    """The PromptPool surface the actor reads: keys drawn in order, ids and texts per key."""

    def __init__(self):
        self.ahead, self.drawn = [], 0
        self.prompt_ids = defaultdict(lambda: [5, 6])
        self.answers = defaultdict(lambda: "1")
        self.prompt_texts = defaultdict(lambda: "p")

    def next_keys(self, rank, world):
        self.drawn += 1
        return [f"{self.drawn}a", f"{self.drawn}b"]


@pytest.mark.parametrize("k,iterations", [(1, 1), (2, 1), (4, 1), (1, 2), (3, 2)])
def test_a_batch_is_submitted_only_after_the_weights_k_updates_before_its_step(k, iterations):
    policy, pool, process = tiny_model(0), Pool(), RecordingProcess()
    actor = AsyncActor(process, TOKENIZER, pool, k, iterations, first_step=0, use_peft=False)
    consumed = []
    for step in range(12):  # the trainer: sync before every step, a new batch every `iterations` steps
        actor.sync_weights(policy, step)
        if step % iterations == 0:
            keys, gens = actor.next_batch(step)
            consumed.append(keys)
            assert len(gens) == 6 and {g.step for g in gens} == {process.receive(step).version}
            assert step - gens[0].step <= k  # the bound the trainer's staleness metrics report
    submitted = [entry for entry in process.log if entry[0] == "prompts"]
    assert all(index - version <= k for _, index, version in submitted)
    assert consumed == [[f"{i}a", f"{i}b"] for i in range(1, len(consumed) + 1)]  # the pool's order
    assert len(pool.ahead) == len(submitted) - len(consumed)  # in flight: kept for a checkpoint


def test_a_resumed_actor_samples_the_checkpoints_in_flight_batches_first():
    pool, process = Pool(), RecordingProcess()
    pool.ahead = [["x", "y"], ["z", "w"]]  # drawn before the checkpoint, never trained on
    actor = AsyncActor(process, TOKENIZER, pool, 2, 1, first_step=5, use_peft=False)
    actor.sync_weights(tiny_model(0), 5)
    assert [actor.next_batch(5)[0], actor.next_batch(6)[0]] == [["x", "y"], ["z", "w"]]
    assert pool.drawn == 1 and pool.ahead == [["1a", "1b"]]  # then new keys, for step 7
