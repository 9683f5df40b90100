"""Training configuration: one dataclass, loaded from YAML with `--set key=value` overrides.

Field names follow TRL where TRL has one (`beta`, `num_generations`, `learning_rate`,
`max_completion_length`, `temperature`, `epsilon`, `loss_type`, ...). Validation happens up
front, before anything is written, and every error names the file, line and key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agro.errors import AgroError
from agro.gym import is_gym_source
from agro.objective_table import OBJECTIVES
from agro.trl_fields import translate

TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab")


def _f(default, help: str, **kw):
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # model
    model_name_or_path: str = _f("", "smollm2-135m-instruct (built in), a .gguf file, or the local directory or hub "
                                 "id of an AutoModelForCausalLM (required)")
    tokenizer_name_or_path: str | None = _f(None, "tokenizer location; default: model_name_or_path")
    trust_remote_code: bool = _f(False, "allow custom model code from the model repository")
    torch_dtype: str = _f("float32", "float32 | bfloat16 | float16: dtype of policy and reference")
    bf16: bool = _f(False, "bf16 mixed precision (TRL's name): float32 weights and AdamW state, generation, "
                    "log-probs and backward under bfloat16 autocast; for CPUs with avx512_bf16/AMX and GPUs")
    use_peft: bool = _f(False, "train LoRA adapters; the reference is the base model with adapters disabled")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_target_modules: list[str] | str = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "modules that get LoRA "
                                              "adapters: a list of names (each matches the end of a module's name), "
                                              "or one string as PEFT reads it: all-linear, or a regex that matches "
                                              "the full name")
    # objective
    objective: str = _f("agro", " | ".join(OBJECTIVES))
    beta: float = _f(0.05, "KL coefficient β (> 0; objective grpo: ≥ 0, and at 0 no reference model is loaded and "
                     "kl and log_ratio_mean are logged as 0)")
    baseline: str = _f("mean", "agro: mean | loo (leave-one-out) group baseline of the regularised reward")
    taper: str = _f("clip", "agro: none | ref: in groups with no fresh sample, weight negative-advantage records "
                    "by min(1, π/π_ref) (keeps offline-only training on the data; docs/results/study.md) | behavior: "
                    "ref, and every negative-advantage sample of a known sampler μ (the async actor's, a batch's "
                    "later iterations, replay) by min(1, π/μ) (keeps stale samples stable; docs/guide/async.md) | clip: "
                    "behavior, except that the run's own samples of an earlier version (the async actor's, a "
                    "batch's later iterations) get a token trust region instead: no gradient on the tokens whose "
                    "π_t/μ_t is outside [1 − epsilon, 1 + epsilon_high] in the direction of their advantage")
    agro_loss_type: str = _f("dr_grpo", "agro: dr_grpo: −(1/(N·L)) Σ_i ρ_i A_i Σ_t log π with L = "
                             "max_completion_length (Dr. GRPO's constant): the estimator at a token-mean scale, so "
                             "max_grad_norm rescales few steps, as for grpo, and a step without reward signal stays "
                             "small | sum: the same × L, the estimator as written (its gradient norm is L times "
                             "larger, so max_grad_norm clips nearly every step; under AdamW it equals dr_grpo with "
                             "max_grad_norm ÷ L; docs/results/real-model.md)")
    asymre_delta: float = _f(0.1, "asymre: the baseline sits δ below the group mean of the regularised reward")
    epsilon: float = _f(0.2, "grpo, and agro with taper clip: lower clip range of the ratio to the sampler (a ratio "
                             "≠ 1 needs num_iterations > 1 or async_generation)")
    epsilon_high: float | None = _f(None, "grpo, agro with taper clip: upper clip range (default: epsilon)")
    loss_type: str = _f("grpo", "grpo: token aggregation, grpo | dapo | bnpo | dr_grpo (TRL's meanings)")
    max_importance_weight: float = _f(2.0, "is_pg: truncation c of the sequence importance weight π/μ")
    # data
    train_data: str | None = _f(None, "problem set for on-policy prompts (jsonl/json/parquet, a datasets name, or "
                                "reasoning_gym:NAME)")
    train_data_kwargs: dict = _f({}, "reasoning_gym: data: create_dataset's arguments (size, seed and the task's own)")
    train_data_format: str = _f("auto", "auto | math | gsm8k | generic")
    dataset_split: str = _f("train", "split used when a data path is a datasets hub name")
    prompt_template: str = _f("plain", "plain | chat | raw: how problems become prompts")
    instruction: str | None = _f(None, "plain and chat templates: the line after each problem (default: reason step "
                                 "by step and put the final answer in \\boxed{}; '' for none)")
    system_prompt: str | None = _f(None, "chat template: a system message before each problem (default: the "
                                   "model's own)")
    offline_data: str | None = _f(None, "offline records: prompt, completion, [reward, answer, source, behavior_logprobs]")
    offline_per_group: int = _f(4, "offline records that join each prompt's group (0: none)")
    offline_weight: float = _f(1.0, "loss weight of offline generations")
    replay_per_group: int = _f(0, "replayed earlier on-policy generations that join each group (0: no replay)")
    replay_max_staleness: int = _f(4, "replay only generations made at most this many steps ago")
    replay_weight: float = _f(1.0, "loss weight of replayed generations (replay_per_group and replay_groups_per_step)")
    replay_groups_per_step: int = _f(0, "replayed groups that join each step's prompts_per_step fresh ones, over all "
                                     "processes (0: off): whole groups of earlier steps (their samples, rewards, π_ref "
                                     "and sampler log-probs), of prompts not among the step's fresh ones on this "
                                     "process (with several processes, another process's fresh prompt may be "
                                     "replayed); agro recomputes Δ and R̃ with "
                                     "the current policy, grpo clips its ratio to their sampler (docs/guide/regimes.md)")
    replay_max_age: int = _f(4, "replay_groups_per_step: a group is dropped once the policy is more than this many "
                             "updates ahead of the one that sampled it")
    replay_buffer_size: int = _f(64, "replay_groups_per_step: the most groups kept, over all processes (each keeps "
                                 "its share of its own groups), the oldest dropped first: the memory bound")
    replay_sampling: str = _f("uniform", "replay_groups_per_step: how groups are drawn: uniform (among those kept) | "
                              "reward_variance (with probability ∝ the variance of the group's rewards: only groups "
                              "whose rewards are not all equal, the ones with a reward signal)")
    on_bad_record: str = _f("error", "error | skip: what a malformed data record does")
    # generation
    num_generations: int = _f(8, "on-policy samples per prompt (0: offline/replay only)")
    prompts_per_step: int = _f(8, "prompts (groups) per optimizer step, over all processes")
    num_iterations: int = _f(1, "optimizer steps on each generation batch (TRL's num_iterations; steps count "
                             "optimizer steps): grpo clips the ratio to the log-probs before the batch's first "
                             "update (epsilon, epsilon_high), agro (taper clip) masks the tokens outside that range; "
                             "the advantages use no ratio: later iterations are off-policy data")
    max_prompt_length: int = _f(512, "prompt tokens: train_data prompts longer are cut (truncate_prompts); an "
                                "offline record's longer prompt is a bad record (its completion was written for the "
                                "whole prompt)")
    truncate_prompts: str = _f("left", "left: a train_data prompt longer than max_prompt_length keeps its last "
                               "max_prompt_length tokens, as TRL does, counted in one warning | error: it is a bad "
                               "record (on_bad_record)")
    max_completion_length: int = _f(256, "maximum generated tokens; longer offline completions are bad records")
    temperature: float = _f(1.0, "sampling temperature of on-policy generation")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    top_k: int = _f(0, "sampling: keep the k most likely tokens (0: off, TRL's). With min_p, repetition_penalty and "
                    "generation_kwargs a sampling setting as TRL's: the samples come from a filtered policy while "
                    "the learner's log-probs are the unfiltered policy's at temperature 1. AGRO needs no behaviour "
                    "log-probs (slightly off-policy samples are data it handles); GRPO's ratio to π_old makes the "
                    "same approximation in TRL")
    min_p: float | None = _f(None, "sampling: drop tokens below min_p × the top token's probability (null: off)")
    repetition_penalty: float = _f(1.0, "sampling: penalise tokens already in the prompt or completion (1: off)")
    generation_kwargs: dict = _f({}, "sampling: more arguments of the generation config, merged last (TRL's): "
                                 "GenerationConfig's (hf) or SamplingParams' (vllm), e.g. suppress_tokens; training "
                                 "samples only (agro evaluates greedily)")
    generation_backend: str = _f("hf", "hf (transformers generate) | vllm (colocated, needs vllm and a GPU)")
    generation_batch_size: int = _f(64, "sequences per generate call (training and evaluation): a memory bound, "
                                    "not how much is generated. Not TRL's meaning: TRL's generation_batch_size is "
                                    "the completions of a generation round, which here is prompts_per_step × "
                                    "num_generations")
    cache_implementation: str = _f("dynamic", "hf: generate's KV cache, dynamic | static (fixed size, the prompt "
                                   "and completion lengths; on a GPU transformers compiles its decoding step, "
                                   "slower at first, then faster: docs/guide/gpus.md)")
    async_generation: bool = _f(False, "hf: generate in an actor process of its own while the learner trains, with "
                                "weights at most max_staleness updates old (docs/guide/async.md)")
    max_staleness: int = _f(1, "async_generation: the batch trained on at step s was sampled by the policy after "
                            "update s − max_staleness or later (0: the synchronous loop)")
    actor_threads: int = _f(1, "async_generation: torch CPU threads of the actor process")
    lagged_generation: bool = _f(False, "async_generation: sample each batch in the learner's process, exactly "
                                 "max_staleness updates before the step that trains on it (version max(0, s − k) "
                                 "at step s, whatever the timing): stale data for studies, no speed-up")
    vllm_gpu_memory_utilization: float = _f(0.3, "vllm: fraction of GPU memory for the colocated engine")
    # reward
    reward_function: str | None = _f("auto", "auto (reasoning_gym for reasoning_gym: data, else math) | math | "
                                     "exact | reasoning_gym | module:function | path/file.py:function; math and "
                                     "exact score the stated answer, else the completion's last number "
                                     "(agro.rewards.answers); null: the run's functions were given in Python "
                                     "(AGROTrainer's reward_funcs), as its config.yaml and agro.json record")
    truncated_completions: str = _f("zero", "a completion cut at max_completion_length: zero (reward 0) | mask (out "
                                    "of its group and the loss) | keep (scored as it is); docs/guide/data-and-rewards.md")
    reward_timeout: float = _f(10.0, "seconds per reward call before it counts as failed (reward 0)")
    reward_workers: int = _f(1, "worker processes for reward calls")
    max_reward_failure_fraction: float = _f(0.5, "abort when more than this fraction of a step's rewards fail")
    reward_weights: list[float] | None = _f(None, "weights of the reward functions, in order (default 1 each): the "
                                            "reward is Σ_k w_k r_k over the functions that gave one (TRL's)")
    # optimisation
    learning_rate: float = _f(1e-6, "AdamW learning rate")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW β1")
    adam_beta2: float = _f(0.999, "AdamW β2")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    lr_scheduler_type: str = _f("constant", "constant | linear | cosine")
    warmup_steps: int = _f(0, "linear warm-up steps")
    warmup_ratio: float = _f(0.0, "with warmup_steps 0: warm up for ⌈warmup_ratio × max_steps⌉ steps (TRL's)")
    max_steps: int = _f(100, "optimizer steps (-1: num_train_epochs epochs, as TRL)")
    num_train_epochs: float = _f(0.0, "with max_steps -1: max_steps = ⌈epochs × ⌈prompts ÷ prompts_per_step⌉ × "
                                 "num_iterations⌉, counted when the data is loaded (TRL's; giving it alone sets "
                                 "max_steps -1)")
    mini_batch_size: int = _f(64, "generations per forward/backward pass (gradient is exact over the step)")
    logprob_chunk_size: int = _f(1024, "positions per chunk of the vocabulary projection")
    max_nonfinite_steps: int = _f(3, "abort after this many consecutive steps with a non-finite loss/gradient")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    # run management
    output_dir: str = _f("runs/agro", "where config, metrics, checkpoints and final/ go")
    overwrite_output_dir: bool = _f(False, "a run already in output_dir is replaced: its outputs (config, metrics, "
                                    "checkpoints, final/) are removed first, other files stay (default: refused "
                                    "unless resumed; a resume ignores it)")
    seed: int = _f(0, "seed of data order, sampling and initialisation")
    logging_steps: int = _f(1, "write metrics every N steps (-1: once an epoch, TRL's logging_strategy epoch: "
                            "⌈prompts ÷ prompts_per_step⌉ × num_iterations, counted when the data is loaded)")
    log_completions: bool = _f(False, "append the rows of every generation batch a logging step trains on to "
                               "output_dir/completions.jsonl (TRL's table) as the batch is scored: step (the first "
                               "that trains on it), source, prompt, completion, reward and the columns reward "
                               "functions logged with log_extra")
    report_to: list[str] = _f(["tensorboard"], "accelerate's trackers: " + " | ".join(TRACKERS) + "; all "
                              "(those installed) | none")
    run_name: str | None = _f(None, "the trackers' name for this run (wandb, trackio, mlflow...)")
    save_steps: int = _f(50, "checkpoint every N steps (0: only at the end; -1: once an epoch, as logging_steps)")
    save_total_limit: int = _f(2, "keep this many latest checkpoints")
    eval_data: str | None = _f(None, "held-out problem set for periodic evaluation (reasoning_gym:NAME: the held-out "
                               "split, never a training question)")
    eval_data_kwargs: dict = _f({}, "reasoning_gym: eval data: create_dataset's arguments (default seed 1, size 200)")
    eval_split: str = _f("test", "split used when eval_data is a datasets hub name")
    eval_steps: int = _f(0, "evaluate every N steps (0: only at start and end when eval_data is set; -1: once an "
                         "epoch, as logging_steps)")
    eval_max_problems: int = _f(0, "evaluate on at most this many problems (0: all)")
    num_threads: int = _f(0, "torch CPU threads (0: leave torch's default)")

    def __post_init__(self):
        if self.reward_function == "auto":
            self.reward_function = default_reward(self.train_data or self.eval_data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_DATACLASS_INIT = TrainConfig.__init__


@functools.wraps(_DATACLASS_INIT)
def _init(self, **kwargs):
    """TrainConfig(**kwargs) with TRL's GRPOConfig names too (agro.trl_fields); every unknown or unsupported
    one is named in one AgroError."""
    _DATACLASS_INIT(self, **_translate(kwargs, {}, "AGROConfig"))


TrainConfig.__init__ = _init
AGROConfig = TrainConfig  # its public name: `from agro import AGROConfig`


def default_reward(data: str | None) -> str:
    """reasoning_gym for reasoning_gym:NAME data (the task's own verifier), else math."""
    return "reasoning_gym" if is_gym_source(data) else "math"


# The one list of every choice and bound: objectives.py, data.py and cli.py read them from here (this module
# does not import torch, so a bad config is reported in well under a second).
CHOICES = {
    "objective": tuple(OBJECTIVES),  # agro.objective_table
    "baseline": ("mean", "loo"),
    "taper": ("none", "ref", "behavior", "clip"),
    "agro_loss_type": ("dr_grpo", "sum"),
    "loss_type": ("grpo", "dapo", "bnpo", "dr_grpo"),
    "torch_dtype": ("float32", "bfloat16", "float16"),
    "train_data_format": ("auto", "math", "gsm8k", "generic"),
    "prompt_template": ("plain", "chat", "raw"),
    "truncated_completions": ("zero", "mask", "keep"),
    "on_bad_record": ("error", "skip"),
    "generation_backend": ("hf", "vllm"),
    "cache_implementation": ("dynamic", "static"),
    "truncate_prompts": ("left", "error"),
    "replay_sampling": ("uniform", "reward_variance"),
    "lr_scheduler_type": ("constant", "linear", "cosine"),
}
# generate / SamplingParams arguments that agro sets from its own keys (generation_kwargs may not): the layout
# of a step's completions (count, order, length, EOS) depends on them
GENERATION_SET_BY = {"max_new_tokens": "max_completion_length", "max_length": "max_completion_length",
                     "max_tokens": "max_completion_length", "num_return_sequences": "num_generations",
                     "n": "num_generations", "do_sample": "temperature", "eos_token_id": "the tokenizer's EOS",
                     "pad_token_id": "the tokenizer's pad token", "use_cache": "cache_implementation",
                     "cache_implementation": "cache_implementation"}
POSITIVE = ("learning_rate", "prompts_per_step", "max_prompt_length", "max_completion_length",
            "temperature", "generation_batch_size", "mini_batch_size", "logprob_chunk_size", "reward_timeout",
            "reward_workers", "max_importance_weight", "lora_r", "max_nonfinite_steps", "logging_steps",
            "num_iterations", "actor_threads", "repetition_penalty", "replay_max_age", "replay_buffer_size")
NON_NEGATIVE = ("num_generations", "offline_per_group", "replay_per_group", "replay_max_staleness", "offline_weight",
                "replay_weight", "weight_decay", "max_grad_norm", "warmup_steps", "save_steps", "save_total_limit",
                "eval_steps", "eval_max_problems", "num_threads", "epsilon_high", "asymre_delta", "max_staleness",
                "num_train_epochs", "top_k", "replay_groups_per_step")
UNIT_INTERVAL = {"warmup_ratio": "[0, 1]", "top_p": "(0, 1]", "max_reward_failure_fraction": "[0, 1]", "epsilon": "[0, 1)",
                 "min_p": "[0, 1]"}


EPOCH_STEPS = ("logging_steps", "save_steps", "eval_steps")  # -1: once an epoch (`resolve_steps`)


def out_of_bounds(key: str, value) -> str | None:
    """Why `value` is not allowed for config key `key` ("must be > 0, got -1"), or None when it is."""
    if value is None or (key in EPOCH_STEPS and value == -1):  # unset (epsilon_high); once an epoch
        return None
    if key in CHOICES and value not in CHOICES[key]:
        return f"must be one of {', '.join(CHOICES[key])}, got {value!r}"
    if key in POSITIVE and not value > 0:
        return f"must be > 0, got {value}"
    if key in NON_NEGATIVE and value < 0:
        return f"must be ≥ 0, got {value}"
    if key in UNIT_INTERVAL:
        spec = UNIT_INTERVAL[key]
        if not (0 <= value <= 1 and (value > 0 or spec[0] == "[") and (value < 1 or spec[-1] == "]")):
            return f"must be in {spec}, got {value}"
    return None


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DEFAULTS = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in FIELDS.values()}


def _translate(values: dict, where: dict[str, str], whole: str) -> dict:
    """TRL's names onto agro's keys (agro.trl_fields); one AgroError names every unknown or refused key, each
    with what to use instead. `where`: each key's 'file:line'; `whole`: the config's name."""
    out, problems = translate(values, DEFAULTS)
    if len(problems) == 1:
        key, message = problems[0]
        raise AgroError(f"{where.get(key, whole)}: {message}")
    if problems:
        raise AgroError(f"{whole}: {len(problems)} unsupported keys: "
                        + " ".join(f"({i}) {where[key] + ': ' if key in where else ''}{message}"
                                   for i, (key, message) in enumerate(problems, 1)))
    return out


def resolve_steps(config: TrainConfig, prompts: int) -> None:
    """TRL's max_steps -1 (num_train_epochs over `prompts` training prompts), the *_steps -1 of its epoch
    strategies and warmup_ratio, as steps: called once the data is loaded, before the scheduler is built."""
    per_epoch = math.ceil(prompts / config.prompts_per_step) * config.num_iterations
    if config.max_steps == -1:
        config.max_steps = max(1, math.ceil(config.num_train_epochs * per_epoch))
    for key in EPOCH_STEPS:
        if getattr(config, key) == -1:
            setattr(config, key, per_epoch)
    if config.warmup_ratio and not config.warmup_steps:
        config.warmup_steps = math.ceil(config.warmup_ratio * config.max_steps)


def _coerce(name: str, value, where: str):
    """Check `value` against the field's annotation (int, float, str, bool, list[str], optional)."""
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise AgroError(f"{where}: key '{name}': must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif base is str:
        if isinstance(value, str | os.PathLike):
            return str(value)
    elif base is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return value
    elif typing.get_args(base) == (float,):
        if isinstance(value, list | tuple) and all(_is_finite(v) for v in value):
            return [float(v) for v in value]
    elif isinstance(base, types.UnionType):  # list[str] | str: a string stays one (PEFT's all-linear, a regex)
        if isinstance(value, str):
            return value
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
    elif typing.get_origin(base) is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return list(value)
    expected = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
                dict: "a mapping of key: value"}.get(base, "a list of numbers" if typing.get_args(base) == (float,)
                                                      else "a string or a list of strings"
                                                      if isinstance(base, types.UnionType) else "a list of strings")
    raise AgroError(f"{where}: key '{name}': expected {expected}, got {value!r}")


def _is_finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check(config: TrainConfig, given: tuple[str, ...] = (), reward_count: int = 1) -> TrainConfig:
    """Check a config made in Python (`AGROConfig(...)`) as `load_config` checks a file's: every value's type
    (coerced as YAML's are) and bound. `given`: the inputs passed as Python objects instead of config keys
    (train_data, offline_data, eval_data, reward_function); `reward_count`: how many reward functions
    reward_weights weighs."""
    for name in FIELDS:
        setattr(config, name, _coerce(name, getattr(config, name), "AGROConfig"))
    _validate(config, {}, given, reward_count)
    return config


def _validate(config: TrainConfig, where: dict[str, str], given: tuple[str, ...] = (),
              reward_count: int = 1) -> None:
    def fail(key: str, message: str):
        raise AgroError(f"{where.get(key, 'config')}: key '{key}': {message}")

    train_data = config.train_data or "train_data" in given
    offline_data = config.offline_data or "offline_data" in given

    for key in (*CHOICES, *POSITIVE, *NON_NEGATIVE, "model_name_or_path", *UNIT_INTERVAL):
        if key == "model_name_or_path" and not config.model_name_or_path:
            fail(key, "is required")
        problem = out_of_bounds(key, getattr(config, key))
        if problem:
            fail(key, problem)
    bad = [v for v in config.report_to if v not in (*TRACKERS, "all", "none")]
    if bad:
        fail("report_to", f"unknown tracker {bad[0]!r}; choose from {', '.join(TRACKERS)}, all or none")
    if config.beta < 0 or (config.beta == 0 and config.objective != "grpo"):
        fail("beta", f"must be > 0 for objective '{config.objective}', got {config.beta} (0, no KL term, is "
                     "allowed for objective grpo)" if config.objective != "grpo" else f"must be ≥ 0, got {config.beta}")
    if config.max_steps == -1 and not config.num_train_epochs:
        fail("max_steps", "is -1 (train num_train_epochs epochs) but num_train_epochs is 0")
    if config.max_steps != -1 and config.max_steps <= 0:
        fail("max_steps", f"must be > 0 (or -1 with num_train_epochs), got {config.max_steps}")
    if config.bf16 and config.torch_dtype == "float16":
        fail("bf16", "bfloat16 autocast over float16 weights; use torch_dtype float32 (or bfloat16)")
    per_group = config.num_generations + config.offline_per_group + config.replay_per_group
    if per_group == 0:
        fail("num_generations", "no data: num_generations, offline_per_group and replay_per_group are all 0")
    if config.num_generations == 0 and not offline_data:
        fail("num_generations", "is 0 (no on-policy generation) but no offline_data is given")
    if config.num_generations > 0 and not (train_data or offline_data):
        fail("train_data", "is required for on-policy generation (or give offline_data to take prompts from)")
    if config.replay_per_group > 0 and config.num_generations == 0:
        fail("replay_per_group", "replays on-policy generations, but num_generations is 0")
    if config.replay_groups_per_step:
        _validate_group_replay(config, fail)
    joining = (config.offline_per_group if offline_data else 0) + config.replay_per_group
    if config.num_generations == 1 and joining == 0:
        fail("num_generations", f"must be ≥ 2 with the group baseline of objective '{config.objective}', got 1")
    if config.generation_backend == "vllm" and config.cache_implementation != "dynamic":
        fail("cache_implementation", "applies to the hf backend only (vllm manages its own cache)")
    if config.generation_backend == "vllm" and config.use_peft:
        fail("generation_backend", "vllm with use_peft is not supported (weights are synced unmerged); use hf")
    for key in config.generation_kwargs:
        if key in GENERATION_SET_BY:
            fail("generation_kwargs", f"'{key}' is agro's to set: use {GENERATION_SET_BY[key]}")
    if config.async_generation and config.generation_backend != "hf":
        fail("async_generation", "runs the hf backend in its actor process; vllm is not supported with it")
    if config.lagged_generation and not (config.async_generation and config.max_staleness):
        fail("lagged_generation", "applies to async_generation with max_staleness ≥ 1")
    if config.async_generation and config.num_generations == 0:
        fail("async_generation", "has nothing to generate: num_generations is 0")
    if config.instruction is not None and config.prompt_template == "raw":
        fail("instruction", "applies to prompt_template plain and chat (raw prompts are used as they are)")
    if config.reward_function == "reasoning_gym":
        for key in ("train_data", "eval_data"):
            if getattr(config, key) and not is_gym_source(getattr(config, key)):
                fail("reward_function", f"reasoning_gym scores reasoning_gym:NAME data only ({key} is "
                                        f"{getattr(config, key)!r})")
    if config.system_prompt is not None and config.prompt_template != "chat":
        fail("system_prompt", f"applies to prompt_template chat only (prompt_template is '{config.prompt_template}')")
    for key, source in (("train_data_kwargs", config.train_data), ("eval_data_kwargs", config.eval_data)):
        if getattr(config, key) and not is_gym_source(source):
            fail(key, f"applies to reasoning_gym:NAME data only ({key.removesuffix('_kwargs')} is {source!r})")
    if config.objective == "rloo" and config.baseline != "mean":
        fail("baseline", "applies to objective agro only")
    if config.objective == "rloo" and ("agro_loss_type" in where or config.agro_loss_type != TrainConfig.agro_loss_type):
        fail("agro_loss_type", "applies to objective agro only (rloo is the summed estimator)")
    if config.objective != "grpo" and config.loss_type not in ("grpo", "dapo"):  # agro's default, TRL's
        fail("loss_type", f"applies to objective grpo only (objective is '{config.objective}'; AGRO's loss scale is "
                          "agro_loss_type)")
    if config.reward_weights is not None and len(config.reward_weights) != reward_count:
        fail("reward_weights", f"{len(config.reward_weights)} weights for {reward_count} reward "
                               f"function{'s' if reward_count != 1 else ''}")
    if "reward_function" in given:  # Python reward functions: the trainer checks them
        return
    if config.reward_function is None:
        fail("reward_function", "is null: the run's reward functions were given in Python (AGROTrainer's "
                                "reward_funcs); name one here")
    from agro.rewards.functions import (
        load_reward_function,  # imports the user's module: once the rest is known good
    )

    try:
        load_reward_function(config.reward_function)
    except ValueError as err:
        fail("reward_function", str(err))


def _validate_group_replay(config: TrainConfig, fail) -> None:
    """replay_groups_per_step > 0: groups are made (num_generations), enough are kept, and each can be replayed."""
    if config.num_generations == 0:
        fail("replay_groups_per_step", "replays groups of on-policy samples, but num_generations is 0: none is "
                                       "ever made")
    if config.replay_buffer_size < config.replay_groups_per_step:
        fail("replay_buffer_size", f"keeps {config.replay_buffer_size} groups, fewer than the "
                                   f"{config.replay_groups_per_step} replay_groups_per_step replays")
    # a batch's groups are replayed from its next generation batch on (num_iterations steps later); under
    # async_generation the batch was sampled up to max_staleness updates before it was trained on
    lag = config.max_staleness if config.async_generation else 0
    first_age = config.num_iterations + lag
    if config.replay_max_age < first_age:
        why = f"num_iterations {config.num_iterations}" + (f" + max_staleness {lag}" if lag else "")
        fail("replay_max_age", f"is {config.replay_max_age}, but a group can be {first_age} updates old when it is "
                               f"first replayed ({why}): must be ≥ {first_age}")


def _key_lines(text: str, path: str) -> dict[str, str]:
    """'file:line' of each top-level key, from PyYAML's node marks."""
    node = yaml.compose(text)
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise AgroError(f"{path}:{node.start_mark.line + 1}: the config must be a mapping of key: value")
    return {k.value: f"{path}:{k.start_mark.line + 1}" for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """YAML file (optional) + `key=value` overrides (values parsed as YAML) -> validated TrainConfig."""
    values: dict = {}
    where: dict[str, str] = {}
    if path is not None:
        path = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AgroError(f"{path}: config file not found") from None
        except (UnicodeDecodeError, IsADirectoryError) as err:
            raise AgroError(f"{path}: cannot read config: {err}") from None
        try:
            where = _key_lines(text, path)
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise AgroError(f"{path}{line}: invalid YAML: {getattr(err, 'problem', err)}") from None
    file_values = dict(values)
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AgroError(f"--set {item!r}: expected key=value")
        try:
            values[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            values[key] = raw
        where[key] = f"--set {key}"
    _drop_other_tasks_kwargs(values, where, file_values)
    values = _translate(values, where, path or "config")
    kwargs = {key: _coerce(key, value, where.get(key, "config")) for key, value in values.items()}
    config = TrainConfig(**kwargs)
    _validate(config, where)
    return config


def _drop_other_tasks_kwargs(values: dict, where: dict[str, str], file_values: dict) -> None:
    """A file's train_data_kwargs (eval_data_kwargs) describe the file's reasoning-gym task: when --set names
    another task and gives no kwargs of its own, the file's are not used (said on stderr)."""
    for data_key in ("train_data", "eval_data"):
        key = f"{data_key}_kwargs"
        task, file_task = values.get(data_key), file_values.get(data_key)
        if (where.get(data_key) == f"--set {data_key}" and where.get(key) != f"--set {key}" and values.get(key)
                and task != file_task):
            print(f"agro: {where.get(key, 'config')}: {key} describe {file_task}, not {task}; not used "
                  f"(--set {key}=... gives {task}'s)", file=sys.stderr)
            values.pop(key)


def save_config(config: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def describe_keys() -> str:
    """Every config key with its default and meaning, for `agro train --help`."""
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} (default {default!r}): {f.metadata['help']}")
    return "\n".join(lines)


def reference_markdown() -> str:
    """docs/guide/config.md: every key with its default and meaning, as a table (tests/test_readme.py checks the file
    against it)."""
    rows = ["# Configuration reference", "",
            "Every key of a YAML config (`agro train CONFIG --set key=value`) and every field of `AGROConfig`,",
            "generated from `agro.config.TrainConfig` (`agro train --help` prints the same).", "",
            "| key | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{default!r}` | {meaning} |")
    return "\n".join(rows) + "\n"
