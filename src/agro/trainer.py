"""The training loop, on accelerate. One step reads like the data-flow diagram:

    prompts ─► rollout (policy) ─► on-policy generations ─┐
    offline records of the same prompts ──────────────────┤
    replay of earlier generations (staleness-bounded) ────┤
                                                          ▼
          groups (one per prompt) ─► rewards, reference log-probs (cached) ─► objective ─► AdamW

Each process takes whole groups (a group is never split across processes); gradients are
averaged across processes by accelerate. With `num_iterations` k > 1 (TRL's name and meaning) a
generation batch is trained on for k optimizer steps, the gradient recomputed each time; a "step"
is an optimizer step (max_steps, save_steps, eval_steps, logging_steps, the scheduler).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from agro import checkpoint, data, objectives
from agro.buffer import SOURCES, Generation, GenerationBatch, ReplayBuffer
from agro.config import TrainConfig, save_config
from agro.errors import AgroError
from agro.evaluate import evaluate
from agro.logprobs import CompletionLogprobs
from agro.models import disable_dropout, load_model, load_tokenizer, load_weights, merged_copy
from agro.rewards import RewardResult, RewardScorer, ScoringInterrupted, absolute_spec
from agro.rollout import make_generator
from agro.tokens import (
    collate,
    completion_token_ids,
    encode_prompt,
    max_text_chars,
    prompt_text,
    text_chars,
)

NEEDS_BEHAVIOR = ("is_pg", "topr")  # objectives that read the generating policy's log-probs
TRAINING_ARGS = "agro.json"  # in final/ and checkpoints: what `agro eval` / `agro generate` default to


def objective_loss(config: TrainConfig, t: dict[str, torch.Tensor]) -> objectives.LossOutput:
    """The configured objective on batch tensors (one word in the config switches the loss)."""
    common = {k: t[k] for k in ("logprobs", "ref_logprobs", "mask", "rewards", "group_ids", "weights")}
    if config.objective == "agro":
        return objectives.agro_loss(**common, beta=config.beta, baseline=config.baseline, taper=config.taper,
                                    fresh=t["fresh"])
    if config.objective == "grpo":
        return objectives.grpo_loss(**common, beta=config.beta, old_logprobs=t["old_logprobs"],
                                    epsilon=config.epsilon, epsilon_high=config.epsilon_high,
                                    loss_type=config.loss_type, max_completion_length=config.max_completion_length)
    if config.objective == "rloo":
        return objectives.rloo_loss(**common, beta=config.beta)
    if config.objective == "kl_pg":
        return objectives.kl_pg_loss(**common, beta=config.beta)
    if config.objective == "topr":
        return objectives.topr_loss(**common, beta=config.beta, behavior_logprobs=t["behavior_logprobs"])
    if config.objective == "asymre":
        return objectives.asymre_loss(**common, beta=config.beta, delta=config.asymre_delta)
    return objectives.is_pg_loss(**common, beta=config.beta, behavior_logprobs=t["behavior_logprobs"],
                                 max_importance_weight=config.max_importance_weight)


def _padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r[:width]
    return out


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, accelerator: Accelerator | None = None):
        self.config = config
        self.accelerator = accelerator or Accelerator()
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.output_dir = Path(config.output_dir)
        self._check_output_dir(resume)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if config.prompts_per_step % self.world:
            raise AgroError(f"config: key 'prompts_per_step': {config.prompts_per_step} groups cannot be split "
                            f"evenly over {self.world} processes")
        if self.accelerator.distributed_type == DistributedType.FSDP:
            # generate() and the LoRA reference pass run the unwrapped LM, outside the FSDP root's forward
            # that gathers the shards
            if config.generation_backend == "hf" and (config.num_generations or config.eval_data):
                raise AgroError("config: key 'num_generations': generation with the hf backend under FSDP is "
                                "not supported; use DDP or DeepSpeed, or FSDP with offline data only "
                                "(num_generations: 0, no eval_data)")
            if config.use_peft:
                raise AgroError("config: key 'use_peft': LoRA under FSDP is not supported; use DDP or DeepSpeed")
        set_seed(config.seed)
        self.tokenizer = load_tokenizer(config.tokenizer_name_or_path or config.model_name_or_path,
                                        config.trust_remote_code)
        self._load_data()
        saved = checkpoint.list_checkpoints(self.output_dir) if resume else []
        self._load_models(saved[-1] if saved else None)
        self.generator = make_generator(config.generation_backend, self.tokenizer, config.max_completion_length,
                                        config.temperature, config.top_p, config.generation_batch_size,
                                        config.vllm_gpu_memory_utilization, config.model_name_or_path,
                                        config.max_prompt_length + config.max_completion_length,
                                        config.cache_implementation)
        try:
            self.scorer = RewardScorer(config.reward_function, timeout=config.reward_timeout,
                                       num_workers=config.reward_workers)
        except ValueError as err:
            raise AgroError(f"config: key 'reward_function': {err}") from None
        self.replay = ReplayBuffer(config.replay_max_staleness, config.replay_weight)
        self.step = 0
        self.batch: GenerationBatch | None = None  # the generation batch still in use (num_iterations)
        self.iteration = 0  # optimizer steps taken on the current (or last) generation batch
        self.epoch, self.position = 0, 0
        self.nonfinite_run = 0
        self._stop_signal: int | None = None
        self.interrupted: int | None = None  # the signal that stopped train() before max_steps
        self.resumed = resume
        if saved:
            self._resume(saved[-1])

    # ------------------------------------------------------------------ setup

    def _check_output_dir(self, resume: bool) -> None:
        """A run killed before its first checkpoint (config.yaml, no checkpoint) resumes from step 0."""
        has_run = (self.output_dir / "config.yaml").exists() or checkpoint.list_checkpoints(self.output_dir)
        if has_run and not resume:
            raise AgroError(f"{self.output_dir}: output_dir already holds a run; pass --resume to continue it "
                            "or choose another output_dir")
        if resume and not has_run:
            raise AgroError(f"{self.output_dir}: --resume given but there is no run to resume from")

    def _load_data(self) -> None:
        c = self.config
        self.data_reports = []
        # texts longer than this cannot fit in the token budget: rejected before they are tokenised
        self._max_chars = {"prompt": max_text_chars(self.tokenizer, c.max_prompt_length),
                           "completion": max_text_chars(self.tokenizer, c.max_completion_length)}
        self.offline_by_group: dict[str, list[Generation]] = defaultdict(list)
        problems: list[data.Problem] = []
        if c.train_data:
            problems, report = data.load_problems(c.train_data, format=c.train_data_format,
                                                  template=c.prompt_template, require_answer=False,
                                                  on_bad_record=c.on_bad_record, split=c.dataset_split)
            self.data_reports.append(report)
        self.prompt_ids: dict[str, list[int]] = {}
        self.prompt_texts: dict[str, str] = {}
        self.answers: dict[str, str | None] = {}
        self.problems: list[str] = []
        for p in problems:
            self._add_prompt(p.prompt, p.answer, f"{p.id}", "prompt")
        if c.offline_data and c.offline_per_group > 0:
            records, report = data.load_offline_records(c.offline_data, on_bad_record=c.on_bad_record,
                                                        split=c.dataset_split)
            self.data_reports.append(report)
            self._add_offline(records, take_prompts=not c.train_data, report=report)
        if not self.problems:
            raise AgroError("no usable prompts: every record was skipped or the data is empty")
        self.skipped_records = sum(len(r.skipped) for r in self.data_reports)

    def _bad(self, where: str, field: str, reason: str, report: data.DataReport | None = None) -> None:
        """A bad record: raise it (on_bad_record: error) or count it as skipped."""
        file, _, line = where.rpartition(":")
        err = data.DataError(file, int(line) if line.isdigit() else None, field, reason)
        if self.config.on_bad_record == "error":
            raise err
        if report is not None:
            report.skipped.append(err)

    def _add_prompt(self, prompt, answer, where: str, field: str, report=None) -> str | None:
        key = data.prompt_key(prompt)
        if key in self.prompt_ids:
            return key
        limit = self._max_chars["prompt"]
        if limit is not None and text_chars(prompt) > limit:
            self._bad(where, field, f"prompt has {text_chars(prompt)} characters, more than max_prompt_length "
                      f"{self.config.max_prompt_length} tokens can hold ({limit} with this tokenizer)", report)
            return None
        ids = encode_prompt(self.tokenizer, prompt)
        if len(ids) > self.config.max_prompt_length:
            self._bad(where, field, f"prompt has {len(ids)} tokens, more than max_prompt_length "
                      f"{self.config.max_prompt_length}", report)
            return None
        self.prompt_ids[key] = ids
        self.prompt_texts[key] = prompt_text(self.tokenizer, prompt)
        self.answers[key] = answer
        self.problems.append(key)
        return key

    def _add_offline(self, records: list[data.OfflineRecord], take_prompts: bool, report: data.DataReport) -> None:
        c = self.config
        unused_prompts = set()
        for r in records:
            where = f"{r.file}:{r.line}"
            key = data.prompt_key(r.prompt)
            if key not in self.prompt_ids:
                if not take_prompts:
                    unused_prompts.add(key)  # prompts come from train_data; records of other prompts are not used
                    report.unused += 1
                    continue
                key = self._add_prompt(r.prompt, r.answer, where, "prompt", report)
                if key is None:
                    continue
            limit = self._max_chars["completion"]
            if limit is not None and len(r.completion) > limit:
                self._bad(where, "completion", f"completion has {len(r.completion)} characters, more than "
                          f"max_completion_length {c.max_completion_length} tokens can hold ({limit} with this "
                          "tokenizer)", report)
                continue
            ids = completion_token_ids(self.tokenizer, r.completion, c.max_completion_length)
            if len(ids) > c.max_completion_length:
                self._bad(where, "completion", f"completion has {len(ids)} tokens, more than max_completion_length "
                          f"{c.max_completion_length}", report)
                continue
            behavior = None
            if c.objective in NEEDS_BEHAVIOR and r.behavior_logprobs is not None:  # only they read them
                if len(r.behavior_logprobs) not in (len(ids), len(ids) - 1):
                    self._bad(where, "behavior_logprobs", f"has {len(r.behavior_logprobs)} values for "
                              f"{len(ids) - 1} completion tokens", report)
                    continue
                behavior = torch.tensor(r.behavior_logprobs + [0.0] * (len(ids) - len(r.behavior_logprobs)))
            elif c.objective in NEEDS_BEHAVIOR:
                self._bad(where, "behavior_logprobs", f"objective {c.objective} needs the generating policy's log-probs "
                          "for every offline record", report)
                continue
            self.offline_by_group[key].append(Generation(
                group=key, prompt_ids=self.prompt_ids[key], completion_ids=ids, source="offline",
                weight=c.offline_weight, reward=r.reward, answer=r.answer if r.answer is not None else self.answers[key],
                prompt=self.prompt_texts[key], completion=r.completion, behavior_logprobs=behavior,
            ))
        report.unused_prompts = len(unused_prompts)

    def _load_models(self, resume_from: Path | None) -> None:
        """Policy (from `resume_from`'s weights when given), reference, optimizer, all through accelerate."""
        c = self.config
        model = load_model(c.model_name_or_path, c.torch_dtype, c.trust_remote_code)
        if c.use_peft:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0,
                                                     target_modules=c.lora_target_modules, task_type="CAUSAL_LM"))
            self.reference = None  # the reference is the same weights with adapters disabled
        else:
            ref_model = load_model(c.model_name_or_path, c.torch_dtype, c.trust_remote_code)
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

    # ------------------------------------------------------------------ one step

    def _next_prompts(self) -> list[str]:
        """This step's prompts for this process: a per-epoch permutation, whole groups per process."""
        keys = []
        while len(keys) < self.config.prompts_per_step:
            order = torch.randperm(len(self.problems), generator=torch.Generator().manual_seed(
                self.config.seed * 1_000_003 + self.epoch)).tolist()
            take = min(self.config.prompts_per_step - len(keys), len(order) - self.position)
            keys += [self.problems[i] for i in order[self.position : self.position + take]]
            self.position += take
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
        per_rank = len(keys) // self.world
        return keys[self.rank * per_rank : (self.rank + 1) * per_rank]

    def _rollout(self, keys: list[str]) -> list[Generation]:
        c = self.config
        if c.num_generations == 0:
            return []
        completions = self.generator.generate(self.policy, [self.prompt_ids[k] for k in keys], c.num_generations)
        gens = []
        for i, ids in enumerate(completions):
            key = keys[i // c.num_generations]
            gens.append(Generation(
                group=key, prompt_ids=self.prompt_ids[key], completion_ids=ids, source="on_policy",
                answer=self.answers[key], prompt=self.prompt_texts[key],
                completion=self.tokenizer.decode(ids, skip_special_tokens=True), step=self.step,
            ))
        return gens

    def _score(self, gens: list[Generation]) -> dict[str, float]:
        """Rewards of generations that have none; failed calls get 0 and are counted (same keys every step)."""
        todo = [g for g in gens if g.reward is None]
        result = RewardResult(rewards=[])

        def report_timeout(index: int, status: str, detail: str | None) -> None:
            if status == "timeout":
                tqdm.write(f"agro: step {self.step + 1}: reward call {index + 1} of {len(todo)} timed out ({detail})")

        if todo:
            try:
                result = self.scorer.score([g.prompt for g in todo], [g.completion for g in todo],
                                           [g.answer for g in todo], self.config.max_reward_failure_fraction,
                                           report_timeout)
            except (ValueError, RuntimeError) as err:  # the reward function cannot be loaded in its workers
                raise AgroError(f"config: key 'reward_function': {str(err).splitlines()[0]}") from None
        for i, (g, r) in enumerate(zip(todo, result.rewards)):
            if abs(r) > data.MAX_ABS_REWARD:  # the bound offline records have; 1e300 would be inf in float32
                result.record(i, "non_finite", 0.0, f"returned {r!r}, |reward| > {data.MAX_ABS_REWARD:g}")
            g.reward = float(result.rewards[i])
        if todo and result.failures / len(todo) > self.config.max_reward_failure_fraction:
            stopped = f" (stopped there, {result.unscored} calls not run)" if result.unscored else ""
            raise AgroError(f"step {self.step + 1}: {result.failures} of {len(todo)} reward calls failed "
                            f"({result.errors} errors, {result.timeouts} timeouts, {result.non_finite} non-finite), "
                            f"above max_reward_failure_fraction {self.config.max_reward_failure_fraction}{stopped}; "
                            f"first: {result.first_failure}")
        return {"reward_failures": float(result.failures), "reward_timeouts": float(result.timeouts),
                "reward_errors": float(result.errors), "reward_non_finite": float(result.non_finite)}

    def _logprobs(self, model: CompletionLogprobs, gens: list[Generation], rounds: int = 0) -> list[torch.Tensor]:
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
        """[B, C] per-token log-probs of the completions of `gens`, one padded batch, under `model`."""
        batch = collate([g.prompt_ids for g in gens], [g.completion_ids for g in gens],
                        self.tokenizer.pad_token_id, self.accelerator.device)
        return model(batch.input_ids, batch.attention_mask, batch.num_completion_tokens,
                     self.config.logprob_chunk_size)

    def _rounds(self, count: int) -> int:
        """The largest `count` over processes: how many passes each runs to keep collectives in step."""
        return int(self.accelerator.gather(torch.tensor([count], device=self.accelerator.device)).max().item())

    def _policy_logprobs(self, gens: list[Generation]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The policy's detached per-token log-probs of `gens`, and the graph-attached [B, C] tensor.

        When one backward round takes every generation (one process, one mini-batch) the pass runs with
        grad and `_backward` reuses its graph instead of repeating the forward pass (same values: the
        kernels do not depend on grad mode). Otherwise it is a no-grad pass and the tensor is None.
        """
        if self.world > 1 or len(gens) > self.config.mini_batch_size:
            rounds = self._rounds(math.ceil(len(gens) / self.config.mini_batch_size))
            with torch.no_grad():
                return self._logprobs(self.model, gens, rounds), None
        lp = self._forward(self.model, gens).float()
        values = lp.detach().cpu()
        return [values[i, : len(g.completion_ids)] for i, g in enumerate(gens)], lp

    @torch.inference_mode()
    def _reference_logprobs(self, gens: list[Generation]) -> None:
        """Fill the cached π_ref log-probs of generations that have none."""
        todo = [g for g in gens if g.ref_logprobs is None]
        if not todo:
            return
        # accelerate runs the prepared policy's forward under its mixed-precision autocast: so does π_ref,
        # or Δ = log π − log π_ref would carry the rounding difference
        with self.accelerator.autocast():
            if self.reference is not None:
                values = self._logprobs(self.reference, todo)
            else:
                with self.policy.disable_adapter():
                    values = self._logprobs(CompletionLogprobs(self.policy), todo)
        for g, v in zip(todo, values):
            g.ref_logprobs = v.clone()

    def _assemble(self, keys: list[str], on_policy: list[Generation]) -> list[Generation]:
        """Groups: on-policy samples + offline records + replayed samples of the same prompt."""
        c = self.config
        rng = torch.Generator().manual_seed(c.seed * 7919 + self.step * 104_729 + self.rank)
        by_key = defaultdict(list)
        for g in on_policy:
            by_key[g.group].append(g)
        batch = []
        for key in keys:
            offline = self.offline_by_group.get(key, [])
            if offline and c.offline_per_group:
                pick = torch.randperm(len(offline), generator=rng)[: c.offline_per_group].tolist()
                by_key[key] += [offline[i] for i in pick]
            by_key[key] += self.replay.sample(key, self.step, c.replay_per_group, rng)
            batch += by_key[key]
        return batch

    def _tensors(self, gens: list[Generation], keys: list[str], logprobs_now: list[torch.Tensor]) -> dict:
        width = max(len(g.completion_ids) for g in gens)
        group_index = {k: i for i, k in enumerate(keys)}
        mask = _padded([torch.ones(len(g.completion_ids)) for g in gens], width)
        now = _padded(logprobs_now, width)
        behavior = [g.behavior_logprobs if g.behavior_logprobs is not None else lp
                    for g, lp in zip(gens, logprobs_now)]
        return {
            "ref_logprobs": _padded([g.ref_logprobs for g in gens], width),
            "mask": mask,
            "rewards": torch.tensor([g.reward for g in gens], dtype=torch.float32),
            "group_ids": torch.tensor([group_index[g.group] for g in gens]),
            "weights": torch.tensor([g.weight for g in gens], dtype=torch.float32),
            "fresh": torch.tensor([g.source == "on_policy" for g in gens]),
            "old_logprobs": now,
            "behavior_logprobs": _padded(behavior, width),
            "logprobs_now": now,
        }

    def _backward(self, gens: list[Generation], t: dict,
                  graph: torch.Tensor | None = None) -> objectives.LossOutput:
        """Exact full-batch gradient, accumulated over mini-batches.

        The objective sees the whole local batch; only one mini-batch's rows carry gradient at a
        time, so the advantages (which need every generation of a group) are exact and the summed
        gradient equals the full-batch gradient. `graph`: the policy's log-probs of the single
        mini-batch, already computed with grad by `_policy_logprobs`.
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
                out = objective_loss(c, {**t, "logprobs": logprobs})
                scale = 1.0 if j < len(starts) else 0.0  # extra rounds only keep collectives in step
                self.accelerator.backward(out.loss * scale)
            if j == 0:
                output = out
        return output

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

    def _clock(self) -> float:
        """Wall time once the device's queued kernels are done, so that GPU phase times count them."""
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def train_step(self) -> dict[str, float]:
        """One optimizer step; a new generation batch at the first of every `num_iterations` steps.

        A batch's later iterations reuse its generations (on-policy, offline and replayed members),
        rewards, reference log-probs, and the log-probs before its first update: GRPO's π_old, and
        the behaviour log-probs of its on-policy samples.
        """
        c = self.config
        times = {}
        t0 = self._clock()
        first = self.batch is None
        if first:
            keys = self._next_prompts()
            on_policy = self._rollout(keys)
            times["time_generation"] = self._clock() - t0
            self.batch, self.iteration = GenerationBatch(keys, self._assemble(keys, on_policy)), 0
        else:
            on_policy, times["time_generation"] = [], 0.0
        keys, gens = self.batch.keys, self.batch.generations
        self.iteration += 1
        t1 = self._clock()
        reward_metrics = self._score(gens)
        times["time_reward"] = self._clock() - t1
        t1 = self._clock()
        self._reference_logprobs(gens)
        times["time_reference"] = self._clock() - t1
        t1 = self._clock()
        logprobs_now, graph = self._policy_logprobs(gens)
        if first:
            position = {id(g): i for i, g in enumerate(gens)}  # _assemble reorders: pair by identity
            for g in on_policy:
                g.behavior_logprobs = logprobs_now[position[id(g)]]  # the sampling policy's, for ratios and replay
            self.batch.old_logprobs = logprobs_now
        tensors = self._tensors(gens, keys, logprobs_now)
        if not first:  # the first iteration's are logprobs_now itself (ratio 1)
            tensors["old_logprobs"] = _padded(self.batch.old_logprobs, tensors["mask"].shape[1])
        out = self._backward(gens, tensors, graph)
        times["time_policy"] = self._clock() - t1
        t1 = self._clock()
        loss = float(self.accelerator.reduce(out.loss.detach().reshape(1), "mean").item())
        if math.isfinite(loss):
            opt = self._optimizer_step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            opt = {"grad_norm": float("nan"), "learning_rate": self.scheduler.get_last_lr()[0], "skipped_update": 1.0}
        times["time_optimizer"] = self._clock() - t1
        self.step += 1
        if c.replay_per_group:
            self.replay.add(on_policy)  # at a batch's first iteration: only a new batch samples replays
            self.replay.evict(self.step)
        if self.iteration >= c.num_iterations:
            self.batch = None
        elapsed = self._clock() - t0
        tokens = sum(len(g.prompt_ids) + len(g.completion_ids) for g in gens)
        metrics = {"step": self.step, "iteration": self.iteration, "loss": loss, **opt, **reward_metrics, **times,
                   "time_step": elapsed, "tokens_per_s": tokens / elapsed, "num_generations": float(len(gens))}
        metrics.update({f"objective/{k}": v for k, v in out.metrics.items()})
        metrics.update(self._source_metrics(gens, tensors))
        return metrics

    @staticmethod
    def _source_metrics(gens: list[Generation], t: dict) -> dict[str, float]:
        """Reward mean, generation length and count per source; KL to π_ref from on-policy samples."""
        delta = ((t["logprobs_now"] - t["ref_logprobs"]) * t["mask"]).sum(-1).cpu()
        metrics = {"log_ratio_mean": float(delta.mean())}
        for source in SOURCES:
            idx = [i for i, g in enumerate(gens) if g.source == source]
            if idx:
                metrics[f"reward/{source}"] = sum(gens[i].reward for i in idx) / len(idx)
                metrics[f"length/{source}"] = sum(len(gens[i].completion_ids) for i in idx) / len(idx)
                metrics[f"count/{source}"] = float(len(idx))
                if source == "on_policy":
                    metrics["kl"] = float(delta[idx].mean())  # E_π[log π/π_ref], unbiased on-policy
        return metrics

    # ------------------------------------------------------------------ loop, checkpoints, eval

    def _trainer_state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "position": self.position, "iteration": self.iteration,
                "nonfinite_run": self.nonfinite_run, "replay": self.replay.state()}

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The policy LM's whole state dict (gathered under FSDP / ZeRO-3; call on every process)."""
        return {k.removeprefix("lm."): v for k, v in self.accelerator.get_state_dict(self.model).items()}

    def save_checkpoint(self) -> Path | None:
        """`checkpoint-<step>/`, written atomically; a step already saved is not rewritten."""
        acc = self.accelerator
        existing = self.output_dir / f"checkpoint-{self.step}"
        if existing.is_dir():
            return existing
        staging = self.output_dir / f".tmp-checkpoint-{self.step}"
        if acc.is_main_process:
            checkpoint.staging_dir(self.output_dir, self.step)
        acc.wait_for_everyone()
        state_dict = self._full_state_dict()
        if acc.is_main_process:
            self.policy.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            self._write_training_args(staging)
        checkpoint.save_states(staging, self.optimizer, self.scheduler, self._trainer_state(), self.rank,
                               None if self.batch is None else self.batch.to_state())
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            path = checkpoint.publish(staging, self.output_dir, self.step, self.config.save_total_limit)
        acc.wait_for_everyone()
        return path

    def _resume(self, path: Path) -> None:
        """Optimizer, scheduler and trainer state of checkpoint `path` (its weights were loaded with the model)."""
        state = checkpoint.load_states(path, self.optimizer, self.scheduler, self.rank)
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.nonfinite_run = state["nonfinite_run"]
        self.replay.load_state(state["replay"])
        self.iteration = state.get("iteration", 0)  # checkpoints before num_iterations: none mid-batch
        saved_by = checkpoint.batch_files(path)
        if saved_by and saved_by != self.world:
            raise AgroError(f"{path}: saved in the middle of a generation batch by {saved_by} processes; "
                            f"resume it with {saved_by} processes, not {self.world}")
        batch = checkpoint.load_batch(path, self.rank)
        if batch is not None and self.iteration < self.config.num_iterations:  # (a run resumed with fewer: done)
            self.batch = GenerationBatch.from_state(batch)

    def _discard_unsaved(self) -> None:
        """On resume: drop staging directories and the metrics of steps after the checkpoint (torn lines too)."""
        for stale in [*self.output_dir.glob(".tmp-*"), *self.output_dir.glob(".old-*")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        path = self.output_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if self.step and isinstance(row, dict) and row.get("step", math.inf) <= self.step:
                kept.append(line + "\n")
        partial = path.with_name("metrics.jsonl.partial")
        partial.write_text("".join(kept), encoding="utf-8")
        os.replace(partial, path)

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def train(self) -> dict:
        """Run to `max_steps`; returns the last step's metrics (and the final evaluation if any)."""
        c, acc = self.config, self.accelerator
        main = acc.is_main_process
        # what this run creates: removed again if it stops before finishing a step, so that the corrected
        # rerun is not refused as a run to resume (what was there before is never touched)
        created = [p for p in (self.output_dir, *(self.output_dir / n for n in ("config.yaml", "metrics.jsonl",
                                                                               "tensorboard", "wandb")))
                   if main and not p.exists()]
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.resumed:
                self._discard_unsaved()
                tqdm.write(f"agro: resuming at step {self.step}")
            save_config(c, self.output_dir / "config.yaml")
            if self.world > 1:
                tqdm.write(f"agro: {self.world} processes ({acc.distributed_type.value}), "
                           f"{c.prompts_per_step // self.world} prompts per step on each")
            for report in self.data_reports:
                if report.skipped or report.duplicates or report.unused:
                    tqdm.write(report.summary())
        writer = self._open_loggers() if main else None
        previous = {sig: signal.signal(sig, self._handle_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.world == 1:  # a signal stops reward scoring at once (several processes stop between steps)
            self.scorer.should_stop = lambda: self._stop_signal is not None
        eval_problems = self._eval_problems()
        last: dict = {}
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not main, desc="agro", dynamic_ncols=True)
        try:
            if eval_problems and self.step == 0 and (accuracy := self._evaluate(eval_problems)):
                self._log(writer, {"step": 0, **accuracy})
            while self.step < c.max_steps and self._stop_signal is None:
                start = (self.epoch, self.position, checkpoint.rng_state(), self.batch, self.iteration)
                try:
                    metrics = self.train_step()
                except ScoringInterrupted:  # before any update: back to the step's start, saved as the last step
                    self.epoch, self.position, rng, self.batch, self.iteration = start
                    checkpoint.set_rng_state(rng)
                    break
                metrics["skipped_records"] = float(self.skipped_records)
                if eval_problems and c.eval_steps and self.step % c.eval_steps == 0 and self.step < c.max_steps:
                    metrics.update(self._evaluate(eval_problems))
                if self.step % c.logging_steps == 0 or self.step == c.max_steps:
                    self._log(writer, metrics)
                self._check_finite(metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics.get('reward/on_policy', metrics.get('objective/reward_mean', 0)):.3f}",
                                kl=f"{metrics.get('kl', metrics['log_ratio_mean']):.4f}", loss=f"{metrics['loss']:.4f}")
                last = metrics
                if c.save_steps and self.step % c.save_steps == 0 and self.step < c.max_steps:
                    self.save_checkpoint()
            if self._stop_signal is not None:
                return self._stop(last)
            bar.close()
            self.save_checkpoint()
            if eval_problems:
                last.update(self._evaluate(eval_problems))
                self._log(writer, {"step": self.step, **{k: v for k, v in last.items() if k.startswith("eval/")}})
                if self._stop_signal is not None:  # the final evaluation was cut short: --resume redoes it
                    return self._stop(last)
            self.save_final()
        finally:
            bar.close()  # ends the progress line, so an error message starts a line of its own
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.scorer.close()
            if writer is not None:
                writer.close()
            if self.step == 0 and not checkpoint.list_checkpoints(self.output_dir):
                _remove_created(self.output_dir, created)
        return last

    def _stop(self, last: dict) -> dict:
        """After SIGTERM/SIGINT: checkpoint the last finished step (none before the first) and return."""
        self.interrupted = self._stop_signal
        saved = self.save_checkpoint() if self.step > 0 else None
        where = f"checkpoint saved at step {self.step}" if saved else "no step finished, nothing kept"
        tqdm.write(f"agro: received {signal.Signals(self.interrupted).name}; {where}")
        return last

    def _check_finite(self, metrics: dict) -> None:
        if metrics["skipped_update"]:
            self.nonfinite_run += 1
            tqdm.write(f"agro: step {self.step}: non-finite loss or gradient, update skipped")
            if self.nonfinite_run >= self.config.max_nonfinite_steps:
                path = self.save_checkpoint()
                raise AgroError(f"step {self.step}: {self.nonfinite_run} consecutive non-finite steps "
                                f"(max_nonfinite_steps); last checkpoint kept at {path}")
        else:
            self.nonfinite_run = 0

    def _write_training_args(self, path: Path) -> None:
        """`agro.json`: what the model was trained with, the defaults `agro eval` and `agro generate` take."""
        c = self.config
        args = {"prompt_template": c.prompt_template, "reward_function": absolute_spec(c.reward_function),
                "max_completion_length": c.max_completion_length, "reward_timeout": c.reward_timeout,
                "step": self.step}
        (path / TRAINING_ARGS).write_text(json.dumps(args, indent=1) + "\n", encoding="utf-8")

    def save_final(self) -> Path:
        """`final/`: a model loadable with `from_pretrained` (LoRA merged into the base weights)."""
        final = self.output_dir / "final"
        self.accelerator.wait_for_everyone()
        # every process takes part: FSDP and ZeRO-3 gather the full weights here
        state_dict = None if self.config.use_peft else self._full_state_dict()
        if self.accelerator.is_main_process:
            policy = merged_copy(self.policy) if self.config.use_peft else self.policy
            staging = checkpoint.staging_dir(self.output_dir, "final")
            policy.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(staging)
            self._write_training_args(staging)
            checkpoint.replace_dir(staging, final)
        self.accelerator.wait_for_everyone()
        return final

    # ------------------------------------------------------------------ logging and evaluation

    def _open_loggers(self):
        loggers = {"jsonl": open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8")}
        if "tensorboard" in self.config.report_to:
            from torch.utils.tensorboard import SummaryWriter

            loggers["tensorboard"] = SummaryWriter(str(self.output_dir / "tensorboard"))
        if "wandb" in self.config.report_to:
            try:
                import wandb

                loggers["wandb"] = wandb.init(project="agro", dir=str(self.output_dir), config=self.config.to_dict())
            except ImportError:
                tqdm.write("agro: report_to includes wandb but wandb is not installed; skipping it")
        return _Loggers(loggers)

    def _log(self, writer, metrics: dict) -> None:
        if writer is not None:  # every row says which iteration of its generation batch it is (0: no step yet)
            writer.write({"step": metrics["step"], "iteration": self.iteration, **metrics})

    def _eval_problems(self) -> list[data.Problem]:
        c = self.config
        if not c.eval_data:
            return []
        problems, _ = data.load_problems(c.eval_data, format=c.train_data_format, template=c.prompt_template,
                                         require_answer=True, on_bad_record=c.on_bad_record, split=c.eval_split)
        if c.eval_max_problems:
            problems = problems[: c.eval_max_problems]
        return problems

    def _evaluate(self, problems: list[data.Problem]) -> dict[str, float]:
        try:
            result = evaluate(self.policy, self.tokenizer, problems, self.scorer, self.config.max_completion_length,
                              batch_size=self.config.generation_batch_size)
        except ScoringInterrupted:  # a signal during its scoring: no accuracy for this evaluation
            return {}
        return {"eval/accuracy": result["accuracy"]}


class _Loggers:
    """metrics.jsonl (one line per logged step), TensorBoard and wandb when asked."""

    def __init__(self, loggers: dict):
        self.loggers = loggers

    def write(self, metrics: dict) -> None:
        self.loggers["jsonl"].write(json.dumps(metrics) + "\n")
        self.loggers["jsonl"].flush()
        step = int(metrics["step"])
        if "tensorboard" in self.loggers:
            for k, v in metrics.items():
                if k != "step" and isinstance(v, int | float):
                    self.loggers["tensorboard"].add_scalar(k, v, step)
        if "wandb" in self.loggers:
            self.loggers["wandb"].log(metrics, step=step)

    def close(self) -> None:
        self.loggers["jsonl"].close()
        if "tensorboard" in self.loggers:
            self.loggers["tensorboard"].close()
        if "wandb" in self.loggers:
            self.loggers["wandb"].finish()


def _remove_created(output_dir: Path, created: list[Path]) -> None:
    """Remove what a run created: its output_dir when the run made it, else the listed entries in it."""
    for path in [output_dir] if output_dir in created else created:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
