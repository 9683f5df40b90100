"""The learner: the policy, its reference, the optimizer, and the update (`Learner.update`).

    π_ref log-probs of new records (cached on them) ─► log π(y|x) per token (agro.logprobs)
          ─► at a batch's first step: behaviour log-probs and π_old ─► loss tensors (agro.assembly)
          ─► objective (agro.objectives registry) ─► backward ─► AdamW

The autograd graph never leaves the learner. The policy's log-prob module is handed to accelerate (DDP, FSDP,
DeepSpeed or as is). The reference is a frozen copy, or under LoRA the same weights with the adapters
disabled. The gradient of a step is exact over its whole batch, accumulated over mini-batches (`backward`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import get_scheduler

import agro.assembly as assembly
import agro.objectives as objectives
from agro.config import TrainConfig
from agro.errors import AgroError
from agro.logprobs import CompletionLogprobs
from agro.models import bf16_autocast, disable_dropout, load_model, load_weights, merged_copy, native_bf16
from agro.records import Generation, GenerationBatch, with_values
from agro.tokens import collate


def check_distributed(config: TrainConfig, accelerator: Accelerator) -> None:
    """What this config cannot do with accelerate's current process layout."""
    world = accelerator.num_processes
    if config.prompts_per_step % world:
        raise AgroError(f"config: key 'prompts_per_step': {config.prompts_per_step} groups cannot be split "
                        f"evenly over {world} processes")
    if config.replay_groups_per_step % world:
        raise AgroError(f"config: key 'replay_groups_per_step': {config.replay_groups_per_step} groups cannot be "
                        f"split evenly over {world} processes")
    if config.async_generation and config.max_staleness and world > 1:
        raise AgroError(f"config: key 'async_generation': one actor process per run; not supported with {world} "
                        "processes")
    if accelerator.distributed_type == DistributedType.FSDP:
        # generate() and the LoRA reference pass run the unwrapped LM, outside the FSDP root's forward
        # that gathers the shards
        if config.generation_backend == "hf" and (config.num_generations or config.eval_data):
            raise AgroError("config: key 'num_generations': generation with the hf backend under FSDP is "
                            "not supported; use DDP or DeepSpeed, or FSDP with offline data only "
                            "(num_generations: 0, no eval_data)")
        if config.use_peft:
            raise AgroError("config: key 'use_peft': LoRA under FSDP is not supported; use DDP or DeepSpeed")


class Timer:
    """Wall times of named phases, `with timer("time_reward"): ...`, in `times`. On a GPU a phase starts and
    ends once the queued kernels are done, so that its time counts its kernels."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = self._now()
        yield
        self.times[name] = self._now() - start

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()


class Learner:
    """The policy being trained (self.model, accelerate-wrapped), π_ref, AdamW and its scheduler."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator, pad_token_id: int, resume_from: Path | None,
                 model=None):
        """Policy (from `resume_from`'s weights when given), reference, optimizer, all through accelerate.
        `model`: a loaded causal LM to train in place of loading model_name_or_path (π_ref: a copy of it)."""
        self.config, self.accelerator, self.pad_token_id = config, accelerator, pad_token_id
        self.world = accelerator.num_processes
        c = config
        if c.bf16 and not native_bf16(accelerator.device.type):
            warnings.warn("agro: bf16 on a CPU without native bf16 (avx512_bf16 or AMX) is emulated, slower than "
                          "float32; set bf16: false", stacklevel=3)
        given = model
        if model is None:
            model = load_model(c.model_name_or_path, c.torch_dtype, c.trust_remote_code)
        # grpo with beta 0 (TRL's default) has no KL term: no reference is loaded and no reference pass runs
        self.uses_reference = not (c.objective == "grpo" and c.beta == 0)
        self.reference = None  # under LoRA the same weights with adapters disabled; none without a KL term
        if c.use_peft:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                                     target_modules=c.lora_target_modules, task_type="CAUSAL_LM"))
        elif self.uses_reference:
            ref_model = load_model(c.model_name_or_path, c.torch_dtype, c.trust_remote_code) if given is None \
                else copy.deepcopy(given)
            self.reference = CompletionLogprobs(ref_model.requires_grad_(False).eval().to(self.accelerator.device))
        if resume_from is not None:  # before accelerate shards or wraps the weights (FSDP, ZeRO-3)
            load_weights(model, resume_from, c.use_peft)
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        if context is not None and c.max_prompt_length + c.max_completion_length > context:
            raise AgroError(f"config: key 'max_completion_length': max_prompt_length + max_completion_length = "
                            f"{c.max_prompt_length + c.max_completion_length} exceeds the model's context "
                            f"(max_position_embeddings {context})")
        # Dropout off: a sequence's log-probs must be a deterministic function of the weights (Δ, ratios).
        model.eval()
        if c.gradient_checkpointing:  # transformers checkpoints layers only in train mode: train mode, no dropout
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            disable_dropout(model)
            model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2),
                                      weight_decay=c.weight_decay)
        scheduler = get_scheduler(c.lr_scheduler_type, optimizer, num_warmup_steps=c.warmup_steps,
                                  num_training_steps=c.max_steps)
        # self.model: the policy's log-prob module, as accelerate wrapped it (DDP/FSDP/DeepSpeed or as is)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            CompletionLogprobs(model), optimizer, scheduler)

    @property
    def policy(self):
        """The policy causal LM, unwrapped (generation, evaluation, saving)."""
        return self.accelerator.unwrap_model(self.model).lm

    def update(self, batch: GenerationBatch, first: bool) -> tuple[GenerationBatch, float, dict[str, float]]:
        """One optimizer step on `batch` (rewards scored); `first`: the batch's first step.

        π_ref log-probs of the records without (`with_reference`), the policy's log-probs, at the first
        step the sampling policy's (behaviour log-probs, GRPO's π_old: `assembly.sampling_logprobs`), the
        objective's gradient (`backward`) and the AdamW step (`step`). Returns `batch` with what was computed
        (its later steps reuse it), the loss averaged over processes, and the step's metrics: the
        optimizer's, each phase's time, the objective's (objective/*) and per source.
        """
        timer = Timer(self.accelerator.device)
        with timer("time_reference"):
            gens = self.with_reference(batch.generations)
        with timer("time_policy"):
            logprobs_now, graph = self.policy_logprobs(gens)
            old = batch.old_logprobs
            if first:  # the sampling policy's log-probs: behaviour log-probs (ratios, replay) and GRPO's π_old
                gens = assembly.with_behavior(gens, logprobs_now)
                old = assembly.sampling_logprobs(gens, logprobs_now)
            t = assembly.tensors(gens, batch.keys, logprobs_now, old)
            out = self.backward(gens, t, graph)
        with timer("time_optimizer"):
            loss, metrics = self.step(out)
        metrics.update(timer.times)
        metrics.update({f"objective/{k}": v for k, v in out.metrics.items()})
        metrics.update(assembly.source_metrics(gens, t))
        return GenerationBatch(batch.keys, gens, old), loss, metrics

    def logprobs(self, model: CompletionLogprobs, gens: list[Generation], rounds: int = 0) -> list[torch.Tensor]:
        """Per-token log-probs of each generation's completion under `model`, in mini-batches.

        `rounds`: run at least this many forward passes, repeating the last mini-batch, so that every
        process of a sharded model (FSDP, ZeRO-3: each forward gathers weights) runs as many.
        """
        out = []
        starts = list(range(0, len(gens), self.config.mini_batch_size))
        for j in range(max(len(starts), rounds)):
            start = starts[min(j, len(starts) - 1)]
            chunk = gens[start : start + self.config.mini_batch_size]
            lp = self._forward(model, chunk).float().cpu()
            if j < len(starts):
                out.extend(lp[i, : len(g.completion_ids)] for i, g in enumerate(chunk))
        return out

    def _forward(self, model: CompletionLogprobs, gens: list[Generation]) -> torch.Tensor:
        """[B, C] per-token log-probs of the completions of `gens`, one padded batch, under `model`.

        `bf16`: under bfloat16 autocast (policy and π_ref alike, so Δ carries no rounding difference of its own;
        the backward pass runs in the dtypes of this forward)."""
        batch = collate([g.prompt_ids for g in gens], [g.completion_ids for g in gens],
                        self.pad_token_id, self.accelerator.device)
        with bf16_autocast(self.accelerator.device.type, self.config.bf16):
            return model(batch.input_ids, batch.attention_mask, batch.num_completion_tokens,
                         self.config.logprob_chunk_size)

    def _rounds(self, count: int) -> int:
        """The largest `count` over processes: how many passes each runs to keep collectives in step."""
        return int(self.accelerator.gather(torch.tensor([count], device=self.accelerator.device)).max().item())

    def policy_logprobs(self, gens: list[Generation]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The policy's detached per-token log-probs of `gens`, and the graph-attached [B, C] tensor.

        When one backward round takes every generation (one process, one mini-batch) the pass runs with
        grad and `backward` reuses its graph instead of repeating the forward pass (same values: the
        kernels do not depend on grad mode). Otherwise it is a no-grad pass and the tensor is None.
        """
        if self.world > 1 or len(gens) > self.config.mini_batch_size:
            rounds = self._rounds(math.ceil(len(gens) / self.config.mini_batch_size))
            with torch.no_grad():
                return self.logprobs(self.model, gens, rounds), None
        lp = self._forward(self.model, gens).float()
        values = lp.detach().cpu()
        return [values[i, : len(g.completion_ids)] for i, g in enumerate(gens)], lp

    @torch.inference_mode()
    def with_reference(self, gens: list[Generation]) -> list[Generation]:
        """`gens` with the π_ref log-probs of those that have none (a batch's records keep theirs over its
        iterations, replayed samples theirs from when they were made).
        Without a reference (grpo, beta 0) they stay None: the batch tensors take π's own log-probs, Δ = 0."""
        todo = [i for i, g in enumerate(gens) if g.ref_logprobs is None]
        if not todo or not self.uses_reference:
            return gens
        # accelerate runs the prepared policy's forward under its mixed-precision autocast: so does π_ref,
        # or Δ = log π − log π_ref would carry the rounding difference
        with self.accelerator.autocast():
            if self.reference is not None:
                values = self.logprobs(self.reference, [gens[i] for i in todo])
            else:
                with self.policy.disable_adapter():
                    values = self.logprobs(CompletionLogprobs(self.policy), [gens[i] for i in todo])
        return with_values(gens, "ref_logprobs", todo, [v.clone() for v in values])

    def backward(self, gens: list[Generation], t: dict,
                  graph: torch.Tensor | None = None) -> objectives.LossOutput:
        """Exact full-batch gradient, accumulated over mini-batches.

        The objective sees the whole local batch; only one mini-batch's rows carry gradient at a
        time, so the advantages (which need every generation of a group) are exact and the summed
        gradient equals the full-batch gradient. `graph`: the policy's log-probs of the single
        mini-batch, already computed with grad by `policy_logprobs`.
        """
        c = self.config
        device = self.accelerator.device
        t = {k: v.to(device) for k, v in t.items()}
        starts = list(range(0, len(gens), c.mini_batch_size))
        rounds = self._rounds(len(starts))  # every process runs the same number of backward passes
        output = None
        for j in range(rounds):
            start = starts[min(j, len(starts) - 1)]
            chunk = gens[start : start + c.mini_batch_size]
            sync = nullcontext() if j == rounds - 1 else self.accelerator.no_sync(self.model)
            with sync:
                if graph is not None:
                    lp = graph
                else:
                    lp = self._forward(self.model, chunk).float()
                width = t["mask"].shape[1]
                lp = torch.nn.functional.pad(lp, (0, max(0, width - lp.shape[1])))[:, :width]
                rows = torch.arange(start, start + len(chunk), device=device)
                logprobs = t["logprobs_now"].index_put((rows,), lp)
                out = objectives.compute_loss(c.objective, {**t, "logprobs": logprobs}, c)
                scale = 1.0 if j < len(starts) else 0.0  # extra rounds only keep collectives in step
                self.accelerator.backward(out.loss * scale)
            if j == 0:
                output = out
        return output

    def step(self, out: objectives.LossOutput) -> tuple[float, dict[str, float]]:
        """The loss averaged over processes, and an AdamW + scheduler step on the accumulated gradient:
        skipped (gradients dropped) when the loss or the gradient norm is not finite."""
        loss = float(self.accelerator.reduce(out.loss.detach().reshape(1), "mean").item())
        if math.isfinite(loss):
            return loss, self._optimizer_step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, {"grad_norm": float("nan"), "learning_rate": self.scheduler.get_last_lr()[0], "skipped_update": 1.0}

    def _optimizer_step(self) -> dict[str, float]:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.max_grad_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(params, c.max_grad_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack(
                [p.grad.detach().norm() for p in params if p.grad is not None])))
        lr = self.scheduler.get_last_lr()[0]
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": grad_norm, "learning_rate": lr, "skipped_update": 1.0}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": grad_norm, "learning_rate": lr, "skipped_update": 0.0}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's whole state dict (gathered under FSDP / ZeRO-3; call on every process)."""
        return {k.removeprefix("lm."): v for k, v in self.accelerator.get_state_dict(self.model).items()}

    def save_policy(self, path: Path, merge_lora: bool = False) -> None:
        """The policy's weights (safetensors) and config in `path`: as trained, or with `merge_lora` its LoRA
        merged into the base weights (loadable with `from_pretrained`). Every process calls it (FSDP and
        ZeRO-3 gather the full weights here); the main process writes."""
        merge = merge_lora and self.config.use_peft
        state_dict = None if merge else self.full_state_dict()
        if self.accelerator.is_main_process:
            policy = merged_copy(self.policy) if merge else self.policy
            policy.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
