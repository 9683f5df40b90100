"""The actor in its own process: generation that runs up to `max_staleness` policy versions ahead.

The learner trains on batch t while the actor samples batch t+1, …, t+k with the newest weights it
has. Version v = the number of optimizer updates behind a set of weights. The learner keeps the bound

    version(batch consumed at step s) ≥ s − k

by submitting the prompts of the batch it will consume at step s only after it has sent the weights
of version s − k (`AsyncActor.sync_weights` sends the weights, then submits): the actor reads its inbox
in order, so it never samples those prompts with older weights.

Each batch comes back with the version that made it and its behaviour log-probs log μ(y_t), computed
by the actor's own forward pass. AGRO's advantage needs neither; its default taper (`clip`: the clip
range on π_t/μ_t as a token mask) reads log μ, as GRPO's ratio and the weights of IS-PG and TOPR do.

`lagged_generation` makes the staleness exact: `LaggedProcess` has ActorProcess's interface but samples
each batch in the learner's process when it is submitted, with the live policy, right after the weights
of version s − k were "sent"; so the batch of step s is always version max(0, s − k)'s, whatever the timing
(a study of stale data needs that: the actor process's lag depends on how fast each side runs).

Faults: the actor exits when the learner dies (it polls its parent); the learner's `receive` raises
`ActorDied` with the exit code when the actor dies, so a kill of either ends the run instead of
stalling it. Messages travel over torch.multiprocessing queues (tensors in shared memory); the
process is spawned, so it shares no state with the learner but what it is sent.
"""

from __future__ import annotations

import os
import queue
import signal
from collections import deque
from dataclasses import dataclass

import torch
import torch.multiprocessing as mp

from agro.actor import on_policy_generations
from agro.generators import HFGenerator, sampling_kwargs
from agro.logprobs import completion_logprobs
from agro.models import DTYPES, bf16_autocast, merged_copy
from agro.prompts import PromptPool
from agro.records import Generation
from agro.tokens import collate

POLL_SECONDS = 0.5  # how often each side checks that the other is alive while waiting


class ActorDied(RuntimeError):
    """The actor process ended (killed, or an error in it) before it sent a batch."""


@dataclass
class ActorBatch:
    index: int  # the learner step that consumes it
    version: int  # the policy version that sampled it
    completions: list[list[int]]  # prompt-major, `num_generations` per prompt
    behavior_logprobs: list[list[float]]  # C_i per completion, log μ(y_t | x, y_<t): plain lists, so that a
    # batch never waits in the actor's shared memory (a killed actor would take it with it)


@dataclass(frozen=True)
class ActorSpec:
    """What the actor process needs to rebuild the policy and sample as the synchronous loop does."""

    model_config: object  # transformers PretrainedConfig of the policy LM
    generation_config: object  # its GenerationConfig (EOS ids)
    tokenizer: object
    dtype: torch.dtype
    max_new_tokens: int
    temperature: float
    top_p: float
    batch_size: int
    num_generations: int
    seed: int
    num_threads: int
    logprob_chunk_size: int
    bf16: bool = False  # sample and score under bfloat16 autocast, as the learner computes log-probs
    device: str = "cpu"  # the learner's device: the actor process samples on the same one (its own weights)
    sampling: dict | None = None  # more generation arguments (agro.generators.sampling_kwargs)


def _sample(model, generator: HFGenerator, spec: ActorSpec, index: int, prompts: list[list[int]]) -> tuple:
    """Completions of `prompts` and their per-token log-probs under `model`; seeded by batch index."""
    torch.manual_seed(spec.seed * 1_000_003 + index)
    completions = generator.generate(model, prompts, spec.num_generations)
    repeated = [p for p in prompts for _ in range(spec.num_generations)]
    logprobs = []
    device = next(model.parameters()).device
    with torch.inference_mode(), bf16_autocast(device.type, spec.bf16):
        for start in range(0, len(completions), spec.batch_size):
            rows = slice(start, start + spec.batch_size)
            batch = collate(repeated[rows], completions[rows], spec.tokenizer.pad_token_id, device)
            lp = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.num_completion_tokens,
                                     spec.logprob_chunk_size).float()
            logprobs += [lp[i, : len(c)].tolist() for i, c in enumerate(completions[rows])]
    return completions, logprobs


def _actor_main(spec: ActorSpec, inbox, outbox, parent_pid: int) -> None:
    """The actor process: apply the newest weights, sample each submitted batch in order, send it back."""
    from transformers import AutoModelForCausalLM

    for sig in (signal.SIGINT, signal.SIGTERM):  # a Ctrl-C reaches the whole process group: the learner
        signal.signal(sig, signal.SIG_IGN)        # checkpoints and then stops this process itself
    torch.set_num_threads(spec.num_threads)
    model = AutoModelForCausalLM.from_config(spec.model_config, dtype=spec.dtype).to(spec.device).eval()
    model.generation_config = spec.generation_config
    generator = HFGenerator(spec.tokenizer, spec.max_new_tokens, spec.temperature, spec.top_p, spec.batch_size,
                            bf16=spec.bf16, sampling=spec.sampling)
    version, pending = -1, deque()
    try:
        while True:
            try:
                message = inbox.get(timeout=POLL_SECONDS if not pending or version < 0 else 0)
            except queue.Empty:
                if os.getppid() != parent_pid:
                    return  # the learner is gone: nobody to generate for
                if pending and version >= 0:
                    index, prompts = pending.popleft()
                    outbox.put(ActorBatch(index, version, *_sample(model, generator, spec, index, prompts)))
                continue
            kind = message[0]
            if kind == "stop":
                return
            if kind == "weights":
                _, version, state = message
                model.load_state_dict(state)
            else:
                pending.append(message[1:])
    except Exception as err:  # reported to the learner as one line, which raises it there
        outbox.put(("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))
        raise SystemExit(1) from None


class ActorProcess:
    """The learner's handle on the actor process: send weights and prompts, receive batches in order."""

    def __init__(self, spec: ActorSpec):
        ctx = mp.get_context("spawn")
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_actor_main, args=(spec, self.inbox, self.outbox, os.getpid()),
                                   daemon=True, name="agro-actor")
        self.process.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def sync_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Send the policy's weights after update `version` (copied: the learner keeps training its own)."""
        # copied to host memory: the learner keeps training its own, and the actor loads them onto its device
        self.inbox.put(("weights", version, {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}))

    def submit(self, index: int, prompts: list[list[int]]) -> None:
        """Ask for the batch the learner consumes at step `index`, sampled with the newest weights sent."""
        self.inbox.put(("prompts", index, prompts))

    def receive(self, index: int) -> ActorBatch:
        """The batch for step `index` (batches arrive in submission order); raises ActorDied if the actor ends."""
        while True:
            try:
                batch = self.outbox.get(timeout=POLL_SECONDS)
            except (queue.Empty, OSError, EOFError):
                if not self.process.is_alive():
                    raise ActorDied(f"the actor process (pid {self.pid}) ended with exit code "
                                    f"{self.process.exitcode} before sending the batch of step {index + 1}") from None
                continue
            if isinstance(batch, tuple):  # ("error", line)
                self.process.join(5)
                raise ActorDied(f"the actor process failed: {batch[1]}")
            if batch.index != index:
                raise ActorDied(f"the actor sent the batch of step {batch.index + 1} where step {index + 1}'s was due")
            return batch

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.inbox.put(("stop",))
            except (OSError, ValueError):
                pass
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        for q in (self.inbox, self.outbox):
            q.cancel_join_thread()
            q.close()


class LaggedProcess:
    """ActorProcess's interface in the learner's own process: a batch is sampled when it is submitted, by `policy`
    as it is then (the newest version sent), with the actor's seeding; the learner's RNG state is left as it was."""

    def __init__(self, spec: ActorSpec, policy):
        self.spec, self.policy = spec, policy
        self.generator = HFGenerator(spec.tokenizer, spec.max_new_tokens, spec.temperature, spec.top_p, spec.batch_size,
                                     bf16=spec.bf16, sampling=spec.sampling)
        self.version = -1
        self.ready: dict[int, ActorBatch] = {}

    @property
    def pid(self) -> int:
        return os.getpid()

    def sync_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.version = version  # the policy module is the learner's own: nothing to copy

    def submit(self, index: int, prompts: list[list[int]]) -> None:
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.random.fork_rng():
                batch = _sample(self.policy, self.generator, self.spec, index, prompts)
        finally:
            self.policy.train(was_training)
        self.ready[index] = ActorBatch(index, self.version, *batch)

    def receive(self, index: int) -> ActorBatch:
        return self.ready.pop(index)

    def close(self) -> None:
        self.ready.clear()


class AsyncActor:
    """The actor of `async_generation`: the same interface as `agro.actor.Actor`, generation in `ActorProcess`.

    `sync_weights(policy, version)` (the learner calls it before every step) sends the weights, then
    submits every batch the learner will consume at a step ≤ version + k: new batches start every
    `num_iterations` steps from `first_step`. Keys of submitted batches wait in `prompts.ahead`, oldest
    first; a checkpoint keeps them, and a resumed run samples them again before drawing new ones.
    """

    def __init__(self, process: ActorProcess, tokenizer, prompts: PromptPool, max_staleness: int,
                 num_iterations: int, first_step: int, use_peft: bool):
        self.tokenizer, self.prompts = tokenizer, prompts
        self.k, self.num_iterations, self.use_peft = max_staleness, num_iterations, use_peft
        self.next_submit = first_step  # the step that consumes the next batch to submit
        self.resubmit = len(prompts.ahead)  # keys of a checkpoint's in-flight batches, not yet sent to this process
        self.process = process

    def sync_weights(self, policy, version: int) -> None:
        state = (merged_copy(policy) if self.use_peft else policy).state_dict()
        self.process.sync_weights(state, version)
        while self.next_submit <= version + self.k:
            if self.resubmit:
                keys = self.prompts.ahead[len(self.prompts.ahead) - self.resubmit]
                self.resubmit -= 1
            else:
                keys = self.prompts.next_keys(0, 1)
                self.prompts.ahead.append(keys)
            self.process.submit(self.next_submit, [self.prompts.prompt_ids[k] for k in keys])
            self.next_submit += self.num_iterations

    def next_batch(self, step: int) -> tuple[list[str], list[Generation]]:
        """The keys and on-policy generations of the batch consumed at `step`, with version and log μ."""
        got = self.process.receive(step)
        keys = self.prompts.ahead.pop(0)
        behavior = [torch.tensor(lp, dtype=torch.float32) for lp in got.behavior_logprobs]
        return keys, on_policy_generations(self.prompts, self.tokenizer, keys, got.completions, got.version, behavior)

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        self.process.close()


def start_async_actor(config, policy, tokenizer, prompts: PromptPool, first_step: int) -> AsyncActor:
    """The actor process of a run (`config`: agro.config.TrainConfig), sampling as the synchronous loop does."""
    model = merged_copy(policy) if config.use_peft else policy
    spec = ActorSpec(model.config, model.generation_config, tokenizer, DTYPES[config.torch_dtype],
                     config.max_completion_length, config.temperature, config.top_p, config.generation_batch_size,
                     config.num_generations, config.seed, config.actor_threads, config.logprob_chunk_size, config.bf16,
                     str(next(policy.parameters()).device), sampling_kwargs(config))
    if config.lagged_generation:  # samples with the live policy (adapters and all): no merged copy to send
        return AsyncActor(LaggedProcess(spec, policy), tokenizer, prompts, config.max_staleness,
                          config.num_iterations, first_step, use_peft=False)
    return AsyncActor(ActorProcess(spec), tokenizer, prompts, config.max_staleness, config.num_iterations,
                      first_step, config.use_peft)
