"""The Python API in TRL's shape: `AGROTrainer(model, reward_funcs, args, train_dataset, ...)`, then
`.train()`, `.evaluate()` and `.save_model(path)`. `agro train CONFIG` is this trainer built from the config
alone, so both run one code path (`agro.trainer.Trainer`, its inputs in `agro.run_inputs`).

    trainer = AGROTrainer(model="smollm2-135m-instruct", reward_funcs=[my_reward],
                          args=AGROConfig(output_dir="runs/x", max_steps=20), train_dataset=dataset)
    trainer.train()

Datasets (a `datasets.Dataset` or a list of dicts) are TRL's: a `prompt` column (a string used as it is,
or chat messages for the chat template; prompt_template, instruction and system_prompt apply to files
only), the other columns going to batched reward functions as keyword lists (`answer`, when present, is
also the gold answer of per-sample ones and of evaluation). A dataset given here replaces the config's
train_data (eval_data, offline_data); what is not given comes from the config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers.trainer_utils import TrainOutput

import agro.checkpoint as checkpoint
import agro.data as data
from agro.config import AGROConfig, check
from agro.errors import AgroError
from agro.run_inputs import RunInputs
from agro.trainer import Trainer


class AGROTrainer:
    """A run built from Python objects; the engine (`Trainer`: model, data, reward workers) starts at the first
    `train`, `evaluate` or `save_model`.

    model: a built-in name, a .gguf file, a model directory or hub id, or a loaded `PreTrainedModel`.
    reward_funcs: one or a list of: spec strings (`math`, `exact`, `reasoning_gym`, `module:function`,
        `file.py:function`, a reward model's folder or hub id), callables, or reward models (`PreTrainedModel`s
        for sequence classification). Callables are per-sample `fn(prompt, completion, answer)` or TRL's batched
        `fn(prompts, completions, completion_ids, **columns)` (`agro.rewards.functions`); they run in this
        process, `async def` ones awaited, and `agro.rewards.functions.isolated(fn)` runs one in worker
        processes. Default: the config's reward_function. Summed with `args.reward_weights`.
    offline_dataset: rows with `prompt` and `completion`, optional `reward`, `answer`, `source`,
        `behavior_logprobs` (`agro.data`).
    processing_class: the tokenizer (default: loaded from the model's name or path).
    reward_processing_classes: tokenizers of reward models given in reward_funcs (a `PreTrainedModel` for sequence
        classification, or a model folder / hub id), one per reward function or a single one (default: each
        model's own); reward models score prompt + completion in batches on the trainer's device, reward =
        logits[:, 0] (`agro.rewards.reward_models`).
    peft_config: a `peft.LoraConfig`: its r, lora_alpha and target_modules (a list, or a string such as
        "all-linear"); any other setting changed from PEFT's default is refused (LoRA dropout is always 0, so
        that log-probs are a function of the weights).
    callbacks: `transformers.TrainerCallback`s; the hooks called and the one control flag honoured
        (should_training_stop) are in `agro.callbacks`.
    """

    def __init__(self, model, reward_funcs=None, args: AGROConfig | None = None, train_dataset=None,
                 eval_dataset=None, offline_dataset=None, processing_class=None, reward_processing_classes=None,
                 peft_config=None, callbacks: list | None = None):
        if args is not None and not isinstance(args, AGROConfig):
            raise AgroError(f"args: expected an agro.AGROConfig, got a {type(args).__name__} (AGROConfig takes "
                            "TRL's names: output_dir, max_steps, learning_rate, num_generations...)")
        args = dataclasses.replace(args) if args is not None else AGROConfig(model_name_or_path="model")
        loaded = not isinstance(model, str | Path)
        if loaded and not hasattr(model, "save_pretrained"):
            raise AgroError(f"model: expected a name, a path or a PreTrainedModel, got a {type(model).__name__}")
        args.model_name_or_path = str(getattr(model, "name_or_path", "") or "model") if loaded else str(model)
        if loaded and args.generation_backend == "vllm":
            raise AgroError("config: key 'generation_backend': vllm loads the model by name; pass the model as "
                            "a name or path, not a loaded PreTrainedModel")
        if loaded and processing_class is None and not getattr(model, "name_or_path", ""):
            raise AgroError("processing_class: required with a model that was not loaded from a name or path")
        if peft_config is not None:
            _take_lora(args, peft_config)
        funcs = None if reward_funcs is None else reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        if funcs is not None and not funcs:
            raise AgroError("reward_funcs: an empty list (give at least one reward function, or None)")
        if funcs is not None and (bad := next((f for f in funcs if not isinstance(f, str) and not callable(f)),
                                              None)) is not None:
            raise AgroError(f"reward_funcs: expected spec strings or callables, got a {type(bad).__name__}")
        if funcs is not None and len(funcs) == 1 and isinstance(funcs[0], str):
            args.reward_function, funcs = funcs[0], None  # a spec: the config's own, saved for `agro eval`
        elif funcs is not None:
            args.reward_function = None  # config.yaml and agro.json: none that `agro eval` could load
        given = tuple(key for key, value in (("train_data", train_dataset), ("offline_data", offline_dataset),
                                             ("eval_data", eval_dataset), ("reward_function", funcs))
                      if value is not None)
        self.args = check(args, given, reward_count=1 if funcs is None else len(funcs))
        checkpoint.check_writable(Path(self.args.output_dir))
        self.inputs = RunInputs(
            model=model if loaded else None, tokenizer=processing_class,
            problems=None if train_dataset is None else _rows(data.load_problem_rows, train_dataset, "train_dataset",
                                                              args.on_bad_record),
            offline=None if offline_dataset is None else _rows(data.load_offline_records, offline_dataset,
                                                               None, args.on_bad_record),
            eval_problems=None if eval_dataset is None else _rows(data.load_problem_rows, eval_dataset,
                                                                  "eval_dataset", args.on_bad_record)[0],
            reward_funcs=funcs, reward_processing_classes=reward_processing_classes,
            callbacks=list(callbacks or []))
        self._engine: Trainer | None = None
        self._resumed = False

    def _start(self, resume: bool = False) -> Trainer:
        if self._engine is None:
            self._engine, self._resumed = Trainer(self.args, resume=resume, inputs=self.inputs), resume
        elif resume and not self._resumed:
            raise AgroError("resume_from_checkpoint: the run has started already (evaluate or save_model came "
                            "first); call train(resume_from_checkpoint=True) first")
        return self._engine

    @property
    def engine(self) -> Trainer:
        """The run itself (`agro.trainer.Trainer`), started on first use."""
        return self._start()

    @property
    def model(self):
        """The policy being trained (a transformers causal LM)."""
        return self.engine.policy

    @property
    def processing_class(self):
        return self.engine.tokenizer

    @property
    def state(self):
        """The `transformers.TrainerState` the callbacks see: global_step, log_history (every logged row)."""
        return self.engine.callbacks.state

    def train(self, resume_from_checkpoint: bool | str | Path | None = None) -> TrainOutput:
        """Train to max_steps; returns TRL's `TrainOutput`: global_step, training_loss (the mean loss of the
        steps logged by this call) and metrics (the last step's, with the final evaluation's when there is
        eval data). Writes output_dir: config, metrics.jsonl, checkpoints and final/ (loadable with
        `from_pretrained`). resume_from_checkpoint: True, or the path of output_dir's latest checkpoint."""
        engine = self._start(self._resume(resume_from_checkpoint))
        if engine.scorer.closed:  # a finished train() stopped the reward workers
            engine.scorer = self.inputs.reward_functions(self.args)
        logged = len(self.state.log_history)
        metrics = engine.train()
        losses = [row["loss"] for row in self.state.log_history[logged:] if "loss" in row]
        return TrainOutput(engine.step, sum(losses) / len(losses) if losses else 0.0, metrics)

    def _resume(self, resume_from_checkpoint: bool | str | Path | None) -> bool:
        """Whether to resume: a path must be output_dir's latest checkpoint (the one a resumed run takes)."""
        if resume_from_checkpoint is None or isinstance(resume_from_checkpoint, bool):
            return bool(resume_from_checkpoint)
        if not isinstance(resume_from_checkpoint, str | Path):
            raise AgroError(f"resume_from_checkpoint: expected True or a checkpoint path, got a "
                            f"{type(resume_from_checkpoint).__name__}")
        saved = checkpoint.list_checkpoints(Path(self.args.output_dir))
        if not saved or Path(resume_from_checkpoint).resolve() != saved[-1].resolve():
            raise AgroError(f"resume_from_checkpoint: {resume_from_checkpoint}: a run resumes from the latest "
                            f"checkpoint of output_dir only ({saved[-1] if saved else 'none there'})")
        return True

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy on the eval data now (`eval/accuracy`: reward > 0.5; `eval/clipped_ratio`)."""
        engine = self.engine
        if not engine.eval_problems:
            raise AgroError("evaluate: no eval data (give eval_dataset, or eval_data in the config)")
        reopened = engine.scorer.closed  # train() stops the reward workers at its end
        if reopened:
            engine.scorer = self.inputs.reward_functions(self.args)
        try:
            return engine.run_evaluation(engine.eval_problems)
        finally:
            if reopened:  # the workers train() started stay for it
                engine.scorer.close()

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """The policy (LoRA merged), its tokenizer and agro.json in `output_dir` (default args.output_dir), for
        `from_pretrained` and `agro eval`."""
        path = Path(output_dir or self.args.output_dir)
        self.engine.save_pretrained(path)
        return path


LORA_TAKEN = ("r", "lora_alpha", "target_modules")
LORA_BOOKKEEPING = ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                    "inference_mode")


def _take_lora(args: AGROConfig, peft_config) -> None:
    """args' LoRA keys from a `peft.LoraConfig`; a setting agro would drop (changed from PEFT's default) is an
    error naming it."""
    from peft import LoraConfig

    if not isinstance(peft_config, LoraConfig):
        raise AgroError(f"peft_config: expected a peft.LoraConfig, got a {type(peft_config).__name__}")
    default = LoraConfig()
    dropped = [f"{f.name}={getattr(peft_config, f.name)!r}" for f in dataclasses.fields(LoraConfig)
               if f.name not in LORA_TAKEN + LORA_BOOKKEEPING and getattr(peft_config, f.name) != getattr(default, f.name)]
    if dropped:
        raise AgroError(f"peft_config: {', '.join(dropped)}: not supported (agro's LoRA takes r, lora_alpha and "
                        "target_modules; its dropout is 0, so that log-probs are a function of the weights)")
    targets = peft_config.target_modules
    args.use_peft, args.lora_r, args.lora_alpha = True, peft_config.r, peft_config.lora_alpha
    if targets:
        args.lora_target_modules = targets if isinstance(targets, str) else sorted(targets)


def _rows(load, rows, name: str | None, on_bad_record: str):
    """`load` (agro.data) of in-memory rows: a datasets.Dataset, or a list of dicts."""
    if isinstance(rows, str | Path) or not hasattr(rows, "__iter__") or isinstance(rows, dict):
        raise AgroError(f"{name or 'offline_dataset'}: expected a datasets.Dataset or a list of dicts, got a "
                        f"{type(rows).__name__} (name files in the config: train_data, eval_data, offline_data)")
    return load(rows, name, on_bad_record=on_bad_record) if name else load(rows, on_bad_record=on_bad_record)
