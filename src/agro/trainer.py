"""The training loop: one step reads as the data flows.

    prompts (PromptPool) ─► actor (on-policy generations) ─┐
    offline records of the same prompts ───────────────────┤ assembly.assemble (pure)
    replay of earlier generations (staleness-bounded) ─────┤
    replayed whole groups of other prompts (GroupReplay) ──┘
          ─► scoring.score (rewards) ─► learner.update (π_ref and policy log-probs, objective, AdamW)
          ─► offline records back to the prompts, on-policy samples and groups to the replay (by their positions)
          ─► metrics (tracking), checkpoints (checkpoint), evaluation (evaluate)

Each process takes whole groups (a group is never split across processes); gradients are averaged across
processes by accelerate. With `num_iterations` k > 1 (TRL's name and meaning) a generation batch is
trained on for k optimizer steps, the gradient recomputed each time; a "step" is an optimizer step
(max_steps, save_steps, eval_steps, logging_steps, the scheduler). `Trainer` also owns the run around the
steps: output_dir, signals (SIGTERM/SIGINT: checkpoint and stop), non-finite steps, resume.
"""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

import agro.assembly as assembly
import agro.checkpoint as checkpoint
import agro.rewards.scoring as scoring
import agro.tracking as tracking
from agro.actor import Actor
from agro.async_actor import ActorDied, AsyncActor, start_async_actor
from agro.callbacks import Callbacks
from agro.config import TrainConfig, resolve_steps, save_config
from agro.errors import AgroError
from agro.evaluate import evaluate
from agro.generators import make_generator, sampling_kwargs
from agro.learner import Learner, Timer, check_distributed
from agro.prompts import PromptPool
from agro.records import GenerationBatch
from agro.replay import GroupReplay, ReplayBuffer
from agro.rewards.workers import ScoringInterrupted
from agro.run_inputs import RunInputs
from agro.tokens import eos_token_ids


class Trainer:
    """A run: its parts (prompts, actor, learner, scorer, replay), the step, and the loop around it."""

    def __init__(self, config: TrainConfig, resume: bool = False, inputs: RunInputs | None = None):
        """`inputs`: what was given as Python objects (`agro.AGROTrainer`); the rest is loaded from `config`."""
        self.config = c = config
        self.output_dir = Path(config.output_dir)
        checkpoint.check_output_dir(self.output_dir, resume, c.overwrite_output_dir)
        self.accelerator = Accelerator(log_with=tracking.trackers(config, self.output_dir) or None)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if c.num_threads:
            torch.set_num_threads(c.num_threads)
        check_distributed(c, self.accelerator)
        set_seed(c.seed)
        inputs = (inputs or RunInputs()).resolve(c, self.accelerator.device)
        self.tokenizer, self.scorer, self.eval_problems = inputs.tokenizer, inputs.rewards, inputs.eval_problems
        self.prompts = PromptPool(c, self.tokenizer, inputs.problems, inputs.offline)
        resolve_steps(c, len(self.prompts.problems))  # TRL's max_steps -1 (epochs) and warmup_ratio
        saved = checkpoint.list_checkpoints(self.output_dir) if resume else []
        self.learner = Learner(c, self.accelerator, self.tokenizer.pad_token_id, saved[-1] if saved else None,
                               inputs.model)
        self.eos_ids = eos_token_ids(self.tokenizer, self.policy)  # a completion without one at its end was cut
        generator = make_generator(c.generation_backend, self.tokenizer, c.max_completion_length, c.temperature,
                                   c.top_p, c.generation_batch_size, c.vllm_gpu_memory_utilization,
                                   c.model_name_or_path, c.max_prompt_length + c.max_completion_length,
                                   c.cache_implementation, c.bf16, sampling_kwargs(c))
        self.actor = Actor(generator, self.tokenizer, self.prompts, c.num_generations, self.rank, self.world)
        self.callbacks = Callbacks(inputs.callbacks, c, self)
        self.reward_warnings = scoring.RewardWarnings(c.max_completion_length, c.truncated_completions)
        self.replay = ReplayBuffer(c.replay_max_staleness, c.replay_weight)
        self.group_replay = GroupReplay.for_process(c, self.world)
        self.step = 0
        self.batch: GenerationBatch | None = None  # the generation batch still in use (num_iterations)
        self.iteration = 0  # optimizer steps taken on the current (or last) generation batch
        self.completions = tracking.CompletionsLog(self.accelerator, self.output_dir, c.log_completions)
        self.nonfinite_run = 0
        self._stop_signal: int | None = None
        self.interrupted: int | None = None  # the signal that stopped train() before max_steps
        self.resumed = resume
        if saved:
            self._resume(saved[-1])

    @property
    def policy(self):
        """The policy causal LM, unwrapped (generation, evaluation, saving)."""
        return self.learner.policy

    def train_step(self) -> dict[str, float]:
        """One optimizer step; a new generation batch at the first of every `num_iterations` steps.

        A batch's later iterations reuse its generations (on-policy, offline and replayed members),
        rewards, reference log-probs, and the log-probs before its first update: GRPO's π_old, and
        the behaviour log-probs of its on-policy samples.
        """
        c, first = self.config, self.batch is None
        timer = Timer(self.accelerator.device)
        with timer("time_step"):
            with timer("time_generation"):
                self.actor.sync_weights(self.policy, self.step)  # asynchronous: sent, and batches up to step + k
                if first:
                    keys, on_policy = self.actor.next_batch(self.step)
            if first:
                rng = assembly.group_rng(c.seed, self.step, self.rank)
                assembled = assembly.assemble(keys, on_policy, self.prompts.offline_by_group, self.replay,
                                              self.step, c.offline_per_group, c.replay_per_group, rng, self.group_replay)
                self.batch, self.iteration = GenerationBatch(assembled.keys, assembled.generations), 0
            else:  # a later iteration generates nothing
                timer.times["time_generation"] = 0.0
            self.iteration += 1
            with timer("time_reward"):
                self.scorer.trainer_state = self.callbacks.state
                gens, reward_metrics = scoring.score(self.scorer, self.batch.generations, self.step,
                                                     c.max_reward_failure_fraction, self.eos_ids,
                                                     c.truncated_completions, self.prompts.columns,
                                                     self.prompts.raw_prompts)
            if first and tracking.logged_batch(c, self.step + 1):  # TRL's table of completions (log_completions)
                self.completions.write(self.step + 1, gens, getattr(self.scorer, "logged_columns", {}))
            self.batch, loss, learned = self.learner.update(dataclasses.replace(self.batch, generations=gens), first)
            gens = self.batch.generations
            self.step += 1
            if first:  # offline records keep their reward for later draws (not scored twice)
                self.prompts.keep_offline([(gens[at], i) for at, i in assembled.offline])
            if c.replay_per_group:
                if first:  # only a new batch's on-policy samples join (with their reward and log-probs)
                    self.replay.add([gens[at] for at in assembled.on_policy])
                self.replay.evict(self.step)
            self.group_replay.update(self.step, assembly.fresh_groups(gens, assembled.on_policy) if first else [])
            if self.iteration >= c.num_iterations:
                self.batch = None
        tokens = sum(len(g.prompt_ids) + len(g.completion_ids) for g in gens)
        return {"step": self.step, "iteration": self.iteration, "loss": loss, **reward_metrics, **timer.times,
                "tokens_per_s": tokens / timer.times["time_step"], "num_generations": float(len(gens)), **learned,
                **assembly.staleness_metrics(gens, self.step - 1), **scoring.completion_metrics(gens, self.eos_ids),
                **assembly.replay_metrics(gens, self.step - 1), **self.group_replay.metrics()}

    # ------------------------------------------------------------------ run, checkpoints, eval

    def _trainer_state(self) -> dict:
        """trainer_state.json (the main process's; each process's replay has files of its own)."""
        return {"step": self.step, **self.prompts.state(), "iteration": self.iteration,
                "nonfinite_run": self.nonfinite_run, "reward_warnings": self.reward_warnings.state()}

    def save_checkpoint(self) -> Path | None:
        """`checkpoint-<step>/`, written atomically; a step already saved is not rewritten."""
        acc = self.accelerator
        existing = self.output_dir / f"checkpoint-{self.step}"
        if existing.is_dir():
            return existing
        staging = checkpoint.staging_dir(self.output_dir, self.step, create=acc.is_main_process)
        acc.wait_for_everyone()
        self.learner.save_policy(staging)
        if acc.is_main_process:
            checkpoint.write_training_args(staging, self.config, self.step)
        checkpoint.save_states(staging, self.learner.optimizer, self.learner.scheduler, self._trainer_state(), self.rank,
                               None if self.batch is None else self.batch.to_state())
        self.replay.save(staging, self.rank)
        self.group_replay.save(staging, self.rank)
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            path = checkpoint.publish(staging, self.output_dir, self.step, self.config.save_total_limit)
        acc.wait_for_everyone()
        self.callbacks.call("save", self.step)
        return path

    def _resume(self, path: Path) -> None:
        """Optimizer, scheduler and trainer state of checkpoint `path` (its weights were loaded with the model)."""
        state = checkpoint.load_states(path, self.learner.optimizer, self.learner.scheduler, self.rank)
        self.step, self.nonfinite_run = state["step"], state["nonfinite_run"]
        self.prompts.load_state(state)
        self.replay.load(path, self.rank, state.get("replay"))
        self.group_replay.load(path, self.rank)
        self.reward_warnings.load_state(state.get("reward_warnings", {}))  # none in older checkpoints
        self.iteration = state.get("iteration", 0)  # checkpoints before num_iterations: none mid-batch
        saved_by = checkpoint.batch_files(path)
        if saved_by and saved_by != self.world:
            raise AgroError(f"{path}: saved in the middle of a generation batch by {saved_by} processes; "
                            f"resume it with {saved_by} processes, not {self.world}")
        saved_batch = checkpoint.load_batch(path, self.rank)
        if saved_batch is not None and self.iteration < self.config.num_iterations:  # resumed with fewer: done
            self.batch = GenerationBatch.from_state(saved_batch)

    def _handle_signal(self, signum, frame) -> None:
        self._stop_signal = signum

    def train(self) -> dict:
        """Run to `max_steps`; returns the last step's metrics (and the final evaluation if any)."""
        c, acc = self.config, self.accelerator
        main = acc.is_main_process
        if main and c.overwrite_output_dir and not self.resumed:  # the previous run's outputs, nothing else
            checkpoint.clear_run(self.output_dir)
        # what this run creates: removed again if it stops before finishing a step, so that the corrected
        # rerun is not refused as a run to resume (what was there before is never touched)
        created = [p for p in (self.output_dir, *(self.output_dir / n for n in (
                       "config.yaml", "metrics.jsonl", "completions.jsonl", "tensorboard", "wandb")))
                   if main and not p.exists()]
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.resumed:
                if c.overwrite_output_dir:
                    tqdm.write("agro: resuming, so overwrite_output_dir is ignored: nothing is removed")
                checkpoint.remove_staging(self.output_dir)
                tracking.discard_after(self.output_dir, self.step)
                tqdm.write(f"agro: resuming at step {self.step}")
            save_config(c, self.output_dir / "config.yaml")
            if self.world > 1:
                tqdm.write(f"agro: {self.world} processes ({acc.distributed_type.value}), "
                           f"{c.prompts_per_step // self.world} prompts per step on each")
            for note in self.prompts.notes():
                tqdm.write(note)
        metrics_log = tracking.MetricsLog(acc, self.output_dir)
        previous = {sig: signal.signal(sig, self._handle_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        if self.world == 1:  # a signal stops reward scoring at once (several processes stop between steps)
            self.scorer.should_stop = lambda: self._stop_signal is not None
        eval_problems = self.eval_problems
        last: dict = {}
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not main, desc="agro", dynamic_ncols=True)
        try:
            if c.async_generation and c.max_staleness:  # started here: it samples from the resumed weights
                first_step = self.step + (c.num_iterations - self.iteration if self.batch is not None else 0)
                self.actor = start_async_actor(c, self.policy, self.tokenizer, self.prompts, first_step)
                tqdm.write(f"agro: generating exactly {c.max_staleness} updates ahead" if c.lagged_generation else
                           f"agro: actor process {self.actor.pid}: generating up to {c.max_staleness} updates ahead")
            self.callbacks.call("train_begin", self.step)
            if eval_problems and self.step == 0 and (accuracy := self.run_evaluation(eval_problems)):
                self._log(metrics_log, {"step": 0, **accuracy})
            while self.step < c.max_steps and self._stop_signal is None and not self.callbacks.should_stop:
                start = (self.prompts.state(), checkpoint.rng_state(), self.batch, self.iteration)
                self.callbacks.call("step_begin", self.step)
                try:
                    metrics = self.train_step()
                except ScoringInterrupted:  # before any update: back to the step's start, saved as the last step
                    drawn, rng, self.batch, self.iteration = start
                    self.prompts.load_state(drawn)
                    checkpoint.set_rng_state(rng)
                    break
                except ActorDied as err:
                    saved = checkpoint.list_checkpoints(self.output_dir)
                    kept = f"{saved[-1]} is kept: rerun with --resume" if saved else "no checkpoint was saved yet"
                    raise AgroError(f"step {self.step + 1}: {err}; {kept}") from None
                metrics["skipped_records"] = float(self.prompts.skipped_records)
                for warning in self.reward_warnings.observe(self.step, metrics):
                    if main:
                        tqdm.write(warning)
                self.callbacks.call("step_end", self.step)
                if eval_problems and c.eval_steps and self.step % c.eval_steps == 0 and self.step < c.max_steps:
                    metrics.update(self.run_evaluation(eval_problems))
                if self.step % c.logging_steps == 0 or self.step == c.max_steps:
                    self._log(metrics_log, metrics)
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
                last.update(self.run_evaluation(eval_problems))
                self._log(metrics_log, {"step": self.step, **{k: v for k, v in last.items() if k.startswith("eval/")}})
                if self._stop_signal is not None:  # the final evaluation was cut short: --resume redoes it
                    return self._stop(last)
            self.save_final()
            self.callbacks.call("train_end", self.step)
        finally:
            bar.close()  # ends the progress line, so an error message starts a line of its own
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.scorer.close()
            if isinstance(self.actor, AsyncActor):
                self.actor.close()
            metrics_log.close()
            self.completions.close()
            if self.step == 0 and not checkpoint.list_checkpoints(self.output_dir):
                checkpoint.remove_created(self.output_dir, created)
        return last

    def _stop(self, last: dict) -> dict:
        """After SIGTERM/SIGINT: checkpoint the last finished step (none before the first) and return."""
        self.interrupted = self._stop_signal
        saved = self.save_checkpoint() if self.step > 0 else None
        where = f"checkpoint saved at step {self.step}" if saved else "no step finished, nothing kept"
        tqdm.write(f"agro: received {signal.Signals(self.interrupted).name}; {where}")
        self.callbacks.call("train_end", self.step)
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

    def save_pretrained(self, path: Path) -> None:
        """A model loadable with `from_pretrained` (LoRA merged into the base weights), its tokenizer and
        agro.json (what `agro eval` defaults to) in `path`. Every process calls it; the main process writes."""
        self.learner.save_policy(path, merge_lora=True)
        if self.accelerator.is_main_process:
            self.tokenizer.save_pretrained(path)
            checkpoint.write_training_args(path, self.config, self.step)
        self.accelerator.wait_for_everyone()

    def save_final(self) -> Path:
        """`final/`: `save_pretrained` into a staging directory, renamed in place of any earlier one."""
        final = self.output_dir / "final"
        self.accelerator.wait_for_everyone()
        staging = checkpoint.staging_dir(self.output_dir, "final", create=self.accelerator.is_main_process)
        self.save_pretrained(staging)
        if self.accelerator.is_main_process:
            checkpoint.replace_dir(staging, final)
        self.accelerator.wait_for_everyone()
        return final

    def _log(self, metrics_log: tracking.MetricsLog, metrics: dict) -> None:
        # every row says which iteration of its generation batch it is (0: no step yet)
        row = {"step": metrics["step"], "iteration": self.iteration, **metrics}
        metrics_log.log(row)
        self.callbacks.log(self.step, row)

    def run_evaluation(self, problems) -> dict[str, float]:
        """Greedy accuracy of the policy on `problems` now ({} when a signal cut its scoring short)."""
        self.scorer.trainer_state = self.callbacks.state
        try:
            result = evaluate(self.policy, self.tokenizer, problems, self.scorer, self.config.max_completion_length,
                              batch_size=self.config.generation_batch_size,
                              truncated_completions=self.config.truncated_completions)
        except ScoringInterrupted:  # a signal during its scoring: no accuracy for this evaluation
            return {}
        metrics = {"eval/accuracy": result["accuracy"], "eval/clipped_ratio": result["truncated"]}
        self.callbacks.call("evaluate", self.step, metrics=metrics)
        return metrics
