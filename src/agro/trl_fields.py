"""TRL's GRPOConfig fields (its own and the TrainingArguments it inherits), as agro takes them.

A TRL user ports a GRPOConfig block by renaming the class: each field is honoured (agro has the key, with
TRL's meaning), mapped (turned into agro keys here: batch sizes into prompts_per_step, strategies into
*_steps, ...) or refused with what to use instead. `translate` does the mapping and collects every problem,
so that one error lists them all; `markdown` writes docs/guide/trl-config.md from the same table.
"""

from __future__ import annotations

import difflib
import json
import os

HONOURED, MAPPED, REFUSED = "honoured", "mapped", "refused"

# Refused fields given at one of these values change nothing in agro (an off switch, TRL's default), so they
# are accepted and dropped: a ported block with `push_to_hub=False` runs. Values are compared by `_same`: a
# bool matches only a bool (True is not 1).
_OFF = (None, False, 0, "", {}, [], "no", "none")
_VLLM = "agro's vllm backend is colocated and configured by generation_backend and vllm_gpu_memory_utilization"
_TA = "a TrainingArguments setting agro's loop does not have"

# name -> (status, why / what to use instead, values accepted as inert when refused)
TABLE: dict[str, tuple[str, str, tuple]] = {
    # the batch
    "per_device_train_batch_size": (MAPPED, "completions per device per micro-batch: prompts_per_step = "
                                    "per_device_train_batch_size × gradient_accumulation_steps × processes ÷ "
                                    "num_generations (TRL's completions per optimizer step)", ()),
    "gradient_accumulation_steps": (MAPPED, "see per_device_train_batch_size; agro splits a step into passes of "
                                    "mini_batch_size generations itself (the gradient is over the whole step)", ()),
    "steps_per_generation": (REFUSED, "agro generates every optimizer step's completions fresh, as TRL does at its "
                             "default (None or gradient_accumulation_steps, accepted); another value makes TRL train "
                             "on older completions: use num_iterations or group replay (replay_groups_per_step)",
                             (None,)),
    "generation_batch_size": (MAPPED, "agro's key of this name is a memory bound (sequences per generate call); "
                              "TRL's (completions per generation round) is prompts_per_step × num_generations", ()),
    "num_generations": (HONOURED, "samples per prompt", ()),
    "num_generations_eval": (REFUSED, "agro evaluates greedily, one completion per problem", (None,)),
    "num_train_epochs": (MAPPED, "with max_steps -1 (TRL's default, set by giving num_train_epochs alone): "
                         "max_steps = ⌈epochs × ⌈prompts ÷ prompts_per_step⌉ × num_iterations⌉ once the data is "
                         "loaded", ()),
    "max_steps": (HONOURED, "optimizer steps; -1 trains num_train_epochs epochs (3 when not given, as TRL)", ()),
    "shuffle_dataset": (REFUSED, "agro draws prompts in a seeded random order (seed)", (True,)),
    "auto_find_batch_size": (REFUSED, "set per_device_train_batch_size or prompts_per_step", _OFF),
    # generation
    "max_completion_length": (HONOURED, "maximum generated tokens", ()),
    "max_prompt_length": (HONOURED, "a longer train_data prompt keeps its last max_prompt_length tokens (TRL's "
                          "left truncation, counted in one warning; truncate_prompts: error makes it a bad record); "
                          "an offline record's longer prompt is a bad record (its completion belongs to the whole "
                          "prompt)", ()),
    "temperature": (HONOURED, "sampling temperature", ()),
    "top_p": (HONOURED, "nucleus sampling", ()),
    "top_k": (HONOURED, "top-k filtering of training samples (0 or None: off), hf and vllm; as in TRL, the "
              "learner's log-probs are the unfiltered policy's", ()),
    "min_p": (HONOURED, "min-p filtering of training samples (None: off), hf and vllm", ()),
    "repetition_penalty": (HONOURED, "repetition penalty of training samples (1.0: off), hf and vllm", ()),
    "generation_kwargs": (HONOURED, "merged last into the GenerationConfig (hf) or SamplingParams (vllm) of "
                          "training samples (a JSON string too); the arguments agro sets from its own keys "
                          "(max_new_tokens, num_return_sequences, do_sample...) are refused", ()),
    "chat_template_kwargs": (REFUSED, "agro applies the tokenizer's chat template as it is (prompt_template chat, "
                             "system_prompt)", (None, {})),
    "cache_implementation": (HONOURED, "agro's hf backend: dynamic | static (TRL's None is dynamic)", ()),
    "use_transformers_continuous_batching": (REFUSED, "agro's hf backend uses generate", _OFF),
    "transformers_continuous_batching_config": (REFUSED, "agro's hf backend uses generate", _OFF),
    "use_transformers_paged": (REFUSED, "agro's hf backend uses generate", _OFF),
    "pad_to_multiple_of": (REFUSED, "agro pads each batch to its longest sequence", (None, "auto")),
    "max_tool_calling_iterations": (REFUSED, "agro has no tool calling", (None,)),
    "ds3_gather_for_generation": (REFUSED, "agro's ZeRO-3 handling is its own (docs/guide/gpus.md)", (True,)),
    # vLLM
    "use_vllm": (MAPPED, "true → generation_backend: vllm", ()),
    "vllm_mode": (MAPPED, "colocate is agro's vllm backend; server is not supported", ()),
    "vllm_gpu_memory_utilization": (HONOURED, "the colocated engine's share of GPU memory", ()),
    **{name: (REFUSED, _VLLM, inert) for name, inert in (
        ("vllm_model_impl", ("vllm",)), ("vllm_enable_sleep_mode", _OFF), ("vllm_structured_outputs_regex", _OFF),
        ("vllm_server_base_url", _OFF), ("vllm_server_host", ("0.0.0.0",)), ("vllm_server_port", (8000,)),
        ("vllm_server_timeout", (240, 240.0)), ("vllm_group_port", (51216,)), ("vllm_max_model_length", _OFF),
        ("vllm_tensor_parallel_size", (1,)), ("vllm_importance_sampling_correction", (True, False)),
        ("vllm_importance_sampling_mode", ("sequence_mask",)), ("vllm_importance_sampling_clip_max", (3.0, 3)),
        ("vllm_importance_sampling_clip_min", _OFF), ("vllm_importance_sampling_cap", _OFF))},
    # the objective
    "beta": (HONOURED, "KL coefficient; 0 (TRL's default) is allowed for objective grpo, the ratio-clipped one: "
             "no KL term, no reference model loaded, no reference pass (kl and log_ratio_mean are logged as 0); "
             "agro's own objectives need β > 0, their target is π_ref·exp(r/β)", ()),
    "loss_type": (HONOURED, "objective grpo: grpo | dapo | bnpo | dr_grpo; other objectives accept TRL's default "
                  "dapo and agro's grpo as 'not used' (their loss scale is agro_loss_type)", ()),
    "scale_rewards": (MAPPED, "group / true: grpo's advantages are divided by the group std (agro's grpo); "
                      "batch, none / false: not supported (objective rloo and agro do not divide by a std)", ()),
    "importance_sampling_level": (MAPPED, "token: grpo's per-token ratio (agro's); sequence (GSPO): not supported",
                                  ()),
    "mask_truncated_completions": (MAPPED, "true → truncated_completions: mask; false → keep (TRL scores a cut "
                                   "completion as it is)", ()),
    "num_iterations": (HONOURED, "optimizer steps per generation batch", ()),
    "epsilon": (HONOURED, "lower clip range", ()),
    "epsilon_high": (HONOURED, "upper clip range", ()),
    "delta": (REFUSED, "two-sided clipping is not implemented; epsilon / epsilon_high clip the ratio", (None,)),
    "reward_weights": (HONOURED, "weights of the reward functions", ()),
    "multi_objective_aggregation": (REFUSED, "agro sums the weighted rewards, then computes advantages "
                                    "(TRL's default)", ("sum_then_normalize",)),
    "sync_ref_model": (REFUSED, "agro's reference is fixed (the KL anchor of its objective)", _OFF),
    "ref_model_mixup_alpha": (REFUSED, "agro's reference is fixed", (0.6,)),
    "ref_model_sync_steps": (REFUSED, "agro's reference is fixed", (512,)),
    "use_bias_correction_kl": (REFUSED, "grpo's KL is the k3 estimator on fresh samples", (True, False)),
    "top_entropy_quantile": (REFUSED, "every completion token is trained", (1, 1.0)),
    "off_policy_mask_threshold": (REFUSED, "agro's taper handles stale samples (taper: behavior | clip)", (None,)),
    **{name: (REFUSED, "entropy regularisation is not implemented", inert) for name, inert in (
        ("entropy_coef", (0, 0.0)), ("use_adaptive_entropy", _OFF), ("entropy_coef_min", (0, 0.0)),
        ("entropy_coef_max", (1, 1.0)), ("entropy_coef_delta", (0.005,)), ("entropy_target", (0.2,)))},
    **{name: (REFUSED, f"objective-specific setting of a TRL loss agro does not implement ({name.split('_')[0]})",
              (default,)) for name, default in (
        ("sapo_temperature_neg", 1.05), ("sapo_temperature_pos", 1.0), ("vespo_k_pos", 2.0),
        ("vespo_lambda_pos", 3.0), ("vespo_k_neg", 3.0), ("vespo_lambda_neg", 2.0))},
    # the model
    "model_init_kwargs": (REFUSED, "agro loads the model itself: torch_dtype, trust_remote_code", (None, {})),
    "trust_remote_code": (HONOURED, "custom model code", ()),
    "disable_dropout": (REFUSED, "agro's log-probs are a function of the weights: it trains with dropout off",
                        (True, False)),
    "cast_lm_head_to_fp32": (REFUSED, "agro's log-probs run in the model's dtype or bf16 autocast (bf16)", _OFF),
    "router_aux_loss_coef": (REFUSED, "no mixture-of-experts auxiliary loss", (None,)),
    "remove_unused_columns": (REFUSED, "agro passes every dataset column to batched reward functions", (False,)),
    # logging
    "log_completions": (HONOURED, "the completions of every generation batch a logging step trains on go to "
                        "output_dir/completions.jsonl (step, source, prompt, completion, reward, log_extra "
                        "columns), cut back on resume; nothing is printed", ()),
    "num_completions_to_print": (REFUSED, "agro prints no completions; completions.jsonl (log_completions) has "
                                 "them all", (None,)),
    "log_unique_prompts": (REFUSED, "see log_completions", _OFF),
    "log_completions_hub_repo": (REFUSED, "see log_completions", (None,)),
    "log_multimodal": (REFUSED, "agro trains text models", (True, False)),
    "report_to": (HONOURED, "accelerate's trackers: tensorboard, wandb, trackio, mlflow, comet_ml, aim, clearml, "
                  "dvclive, swanlab; all (those installed), none", ()),
    "run_name": (HONOURED, "the tracker run's name (wandb, trackio, mlflow...)", ()),
    "logging_strategy": (MAPPED, "steps: logging_steps; epoch: logging_steps -1, once an epoch (⌈prompts ÷ "
                         "prompts_per_step⌉ × num_iterations steps, counted when the data is loaded); no: not "
                         "supported (metrics.jsonl is the run's record)", ()),
    "logging_steps": (HONOURED, "write metrics every N steps", ()),
    "save_strategy": (MAPPED, "steps: save_steps; no: save_steps 0 (final/ only, written at the end); epoch: "
                      "save_steps -1, once an epoch (as logging_strategy); best: not supported", ()),
    "save_steps": (HONOURED, "checkpoint every N steps", ()),
    "save_total_limit": (HONOURED, "checkpoints kept", ()),
    "eval_strategy": (MAPPED, "steps: eval_steps (default logging_steps, as TRL); no: eval_steps 0 (agro still "
                      "evaluates at start and end when eval data is given); epoch: eval_steps -1, once an epoch (as "
                      "logging_strategy)", ()),
    "eval_steps": (HONOURED, "evaluate every N steps", ()),
    "eval_on_start": (REFUSED, "true is what agro does: it evaluates at step 0 whenever eval data is given",
                      (True,)),
    "warmup_ratio": (MAPPED, "warmup_steps = ⌈warmup_ratio × max_steps⌉ (when warmup_steps is 0)", ()),
    "warmup_steps": (HONOURED, "linear warm-up steps; a number below 1 is a ratio (transformers ≥ 5)", ()),
    # the run
    "output_dir": (HONOURED, "run directory", ()),
    "overwrite_output_dir": (HONOURED, "rerun into an existing output_dir", ()),
    "resume_from_checkpoint": (REFUSED, "TRL's Trainer does not read it either: pass train(resume_from_checkpoint="
                               "True) or run agro train --resume", (None,)),
    "seed": (HONOURED, "seed of data order, sampling and initialisation", ()),
    "fp16": (REFUSED, "fp16 mixed precision needs loss scaling, which agro does not do: use bf16: true (bfloat16 "
             "autocast) or torch_dtype: float16", (False,)),
    "bf16": (HONOURED, "bfloat16 autocast", ()),
    "gradient_checkpointing": (HONOURED, "recompute activations in backward", ()),
    "activation_checkpointing": (MAPPED, "transformers 5's name of gradient_checkpointing (which became its alias): "
                                 "→ gradient_checkpointing (None: not set)", ()),
    "learning_rate": (HONOURED, "AdamW learning rate", ()),
    "lr_scheduler_type": (HONOURED, "constant | linear | cosine", ()),
    "weight_decay": (HONOURED, "AdamW weight decay", ()),
    "adam_beta1": (HONOURED, "AdamW β1", ()),
    "adam_beta2": (HONOURED, "AdamW β2", ()),
    "max_grad_norm": (HONOURED, "gradient clipping", ()),
    "optim": (REFUSED, "agro's optimizer is torch AdamW", ("adamw_torch", "adamw_torch_fused")),
    "adam_epsilon": (REFUSED, "AdamW's eps is torch's default", (1e-8,)),
    "push_to_hub": (REFUSED, "save_model(path), then upload it", _OFF),
    "use_cpu": (REFUSED, "accelerate picks the device (CUDA_VISIBLE_DEVICES= for CPU)", _OFF),
    "deepspeed": (REFUSED, "run under accelerate launch with a DeepSpeed config (docs/guide/gpus.md)", _OFF),
    "fsdp": (REFUSED, "run under accelerate launch with an FSDP config (docs/guide/gpus.md)", _OFF),
    "torch_compile": (REFUSED, "not supported; cache_implementation static compiles the decoding step", _OFF),
    "logging_first_step": (REFUSED, "agro logs step 1 when logging_steps divides it", _OFF),
    "do_train": (REFUSED, "AGROTrainer.train() trains", _OFF + (True,)),
    "do_eval": (REFUSED, "eval data is evaluated at start, every eval_steps and at the end", _OFF + (True,)),
    "disable_tqdm": (REFUSED, "the progress bar is tqdm's", _OFF),
    "log_level": (REFUSED, "agro prints warnings itself", ("passive",)),
    "dataloader_num_workers": (REFUSED, "agro has no dataloader", _OFF),
}

# Fields (of TABLE or TrainingArguments) that the installed TRL / transformers no longer have: still taken.
OLDER_VERSIONS = frozenset({"max_prompt_length", "warmup_ratio", "overwrite_output_dir", "logging_dir"})

# TrainingArguments fields not in TABLE, each with its default (GRPOConfig's, as of trl 1.16 / transformers 5.25,
# then an older version's where it differed): refused, with _TA as the reason, unless given at its default. Kept
# here rather than read from transformers, whose TrainingArguments imports torch; tests/test_trl_config.py checks
# them against the installed classes.
TRAINING_ARGUMENTS_DEFAULTS: dict[str, tuple] = {
    "lr_scheduler_kwargs": (None,), "optim_args": (None,), "optim_target_modules": (None,),
    "average_tokens_across_devices": (True,), "label_smoothing_factor": (0.0,), "bf16_full_eval": (False,),
    "fp16_full_eval": (False,), "tf32": (None,), "activation_checkpointing_kwargs": (None,),
    "gradient_checkpointing_kwargs": (None,), "torch_compile_backend": (None,), "torch_compile_mode": (None,),
    "use_liger_kernel": (False,), "liger_kernel_config": (None,), "use_cache": (False,),
    "neftune_noise_alpha": (None,), "torch_empty_cache_steps": (None,), "log_on_each_node": (True,),
    "logging_nan_inf_filter": (True,), "include_num_input_tokens_seen": ("no", False),
    "log_level_replica": ("warning",), "project": ("huggingface",), "trackio_space_id": (None,),
    "trackio_bucket_id": (None,), "trackio_static_space_id": (None,), "eval_delay": (0,),
    "per_device_eval_batch_size": (8,), "prediction_loss_only": (False,), "eval_do_concat_batches": (True,),
    "eval_use_gather_object": (False,), "eval_accumulation_steps": (None,), "include_for_metrics": ([],),
    "batch_eval_metrics": (False,), "save_only_model": (False,), "save_on_each_node": (False,),
    "enable_jit_checkpoint": (False,), "hub_token": (None,), "hub_private_repo": (None, False),
    "hub_model_id": (None,), "hub_strategy": ("every_save",), "hub_always_push": (False,), "hub_revision": (None,),
    "load_best_model_at_end": (False,), "metric_for_best_model": (None,), "greater_is_better": (None,),
    "ignore_data_skip": (False,), "restore_callback_states_from_checkpoint": (False,), "full_determinism": (False,),
    "data_seed": (None,), "accelerator_config": (None,), "parallelism_config": (None,),
    "dataloader_drop_last": (False,), "dataloader_pin_memory": (True,), "dataloader_persistent_workers": (False,),
    "dataloader_prefetch_factor": (None,), "dataloader_multiprocessing_context": (None,),
    "dataloader_in_order": (True,), "label_names": (None,), "train_sampling_strategy": ("random",),
    "length_column_name": ("length",), "ddp_find_unused_parameters": (None,), "ddp_bucket_cap_mb": (None,),
    "ddp_broadcast_buffers": (None,), "ddp_static_graph": (None,), "ddp_backend": (None,), "ddp_timeout": (1800,),
    "fsdp_config": (None,), "debug": ("",), "skip_memory_metrics": (True,), "do_predict": (False,),
    "local_rank": (-1,), "logging_dir": (None,),
}
TRAINING_ARGUMENTS = list(TRAINING_ARGUMENTS_DEFAULTS)

TRL_ONLY_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_train_epochs": 3.0}


def status(name: str) -> tuple[str, str, tuple] | None:
    """TABLE's entry for a TRL field, the generic refusal for another TrainingArguments field (accepted at its
    default), or None."""
    if name in TABLE:
        return TABLE[name]
    if name in TRAINING_ARGUMENTS_DEFAULTS:
        default = TRAINING_ARGUMENTS_DEFAULTS[name]
        return REFUSED, f"{_TA} (only its default, {default[0]!r}, is accepted)", default
    return None


def translate(values: dict, defaults: dict) -> tuple[dict, list[tuple[str, str]]]:
    """Config values with TRL's names -> (agro's values, problems). `defaults`: agro's keys and their defaults.
    Each problem is (key, message); the caller raises them together."""
    out = {k: v for k, v in values.items() if k in defaults}
    trl = {k: v for k, v in values.items() if k not in defaults}
    problems: list[tuple[str, str]] = []
    for key, off in (("top_k", 0), ("generation_kwargs", {})):
        if key in out and out[key] is None:  # TRL's None: off
            out[key] = off
    if isinstance(out.get("generation_kwargs"), str):  # TRL's command line gives it as JSON
        try:
            out["generation_kwargs"] = json.loads(out["generation_kwargs"])
        except ValueError:
            problems.append(("generation_kwargs", f"generation_kwargs={values['generation_kwargs']!r}: not a JSON "
                                                  "object"))

    def take(source: str, target: str, value) -> None:
        if target in values and values[target] != value:
            problems.append((source, f"{source}={trl[source]!r} means {target}: {value!r}, but {target} is "
                                     f"{values[target]!r}; give one of them"))
        else:
            out[target] = value

    def refuse(key: str, why: str) -> None:
        problems.append((key, f"{key}={trl[key]!r}: {why}"))

    _batch(trl, out, defaults, take, problems)
    generation = trl.get("steps_per_generation")
    accumulation = trl.get("gradient_accumulation_steps", TRL_ONLY_DEFAULTS["gradient_accumulation_steps"])
    if generation is not None and not (isinstance(generation, int) and not isinstance(generation, bool)
                                       and generation > 0):
        refuse("steps_per_generation", "expected None or a positive integer")
    elif generation is not None and not _same(generation, accumulation):
        refuse("steps_per_generation", f"agro generates every optimizer step's completions fresh, as TRL does at "
                                       f"its default (None or gradient_accumulation_steps, {accumulation!r}); to "
                                       "train on completions again use num_iterations or group replay "
                                       "(replay_groups_per_step)")
    if values.get("num_train_epochs") and "max_steps" not in values:
        out["max_steps"] = -1  # TRL: epochs govern unless max_steps is given
    if out.get("max_steps") == -1 and not out.get("num_train_epochs"):
        out["num_train_epochs"] = TRL_ONLY_DEFAULTS["num_train_epochs"]
    steps = out.get("warmup_steps")
    if isinstance(steps, float) and 0 < steps < 1 and not out.get("warmup_ratio"):  # transformers ≥ 5: a ratio
        out["warmup_ratio"], out["warmup_steps"] = steps, 0
    if "mask_truncated_completions" in trl:
        take("mask_truncated_completions", "truncated_completions", "mask" if trl["mask_truncated_completions"]
             else "keep")
    if "scale_rewards" in trl and trl["scale_rewards"] not in (True, "group"):
        refuse("scale_rewards", "agro's grpo divides advantages by the group std (scale_rewards group); batch and "
                                "none are not implemented")
    if "importance_sampling_level" in trl and trl["importance_sampling_level"] != "token":
        refuse("importance_sampling_level", "agro's grpo clips the per-token ratio (token); sequence-level (GSPO) "
                                            "is not implemented")
    if trl.get("activation_checkpointing") is not None:  # transformers 5's name; gradient_checkpointing its alias
        take("activation_checkpointing", "gradient_checkpointing", trl["activation_checkpointing"])
    if trl.get("use_vllm"):
        take("use_vllm", "generation_backend", "vllm")
    if trl.get("vllm_mode", "colocate") != "colocate":
        refuse("vllm_mode", "agro's vllm backend is colocated (generation_backend: vllm); server mode is not "
                            "supported")
    if out.get("cache_implementation", "dynamic") is None:  # TRL's default: generate's own, dynamic
        out["cache_implementation"] = "dynamic"
    _strategies(trl, out, defaults, take, refuse)
    handled = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
               "mask_truncated_completions", "scale_rewards",
               "importance_sampling_level", "use_vllm", "vllm_mode", "logging_strategy", "save_strategy",
               "eval_strategy", "activation_checkpointing")
    for key, value in trl.items():
        if key in handled:
            continue
        entry = status(key)
        if entry is None:
            close = difflib.get_close_matches(str(key), [*defaults, *TABLE], n=1, cutoff=0.6)
            problems.append((key, f"unknown key '{key}'" + (f" (did you mean {close[0]!r}?)" if close else "")))
        elif not _inert(value, entry[2]):
            refuse(key, entry[1])
    return out, problems


def _inert(value, accepted: tuple) -> bool:
    return any(_same(value, a) for a in accepted)


def _same(value, other) -> bool:
    """value == other, by type: a bool equals only a bool (True is not 1), a number only a number (2 is 2.0),
    a list or tuple only a list or tuple, None only None, a string only a string."""
    if isinstance(value, bool) or isinstance(other, bool):
        return isinstance(value, bool) and isinstance(other, bool) and value == other
    if isinstance(other, int | float):
        return isinstance(value, int | float) and value == other
    if isinstance(other, list | tuple):
        return isinstance(value, list | tuple) and list(value) == list(other)
    if other is None:
        return value is None
    return isinstance(value, type(other)) and value == other


def _batch(trl: dict, out: dict, defaults: dict, take, problems: list) -> None:
    """per_device_train_batch_size × gradient_accumulation_steps × processes completions per optimizer step."""
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps")
    if not any(k in trl for k in keys):
        return
    sizes = [trl.get(k, TRL_ONLY_DEFAULTS[k]) for k in keys]
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        problems.append((keys[0], f"{keys[0]} and {keys[1]} must be positive integers, got {sizes[0]!r} and "
                                  f"{sizes[1]!r}"))
        return
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    completions = sizes[0] * sizes[1] * processes
    generations = out.get("num_generations", defaults["num_generations"])
    if not isinstance(generations, int) or generations <= 0 or completions % generations:
        problems.append((keys[0], f"{keys[0]} {sizes[0]} × {keys[1]} {sizes[1]} × {processes} process(es) = "
                                  f"{completions} completions a step, not a multiple of num_generations "
                                  f"{generations} (TRL's rule); or set prompts_per_step"))
        return
    take(keys[0] if keys[0] in trl else keys[1], "prompts_per_step", completions // generations)


def _strategies(trl: dict, out: dict, defaults: dict, take, refuse) -> None:
    """logging_strategy, save_strategy and eval_strategy onto agro's *_steps (-1: once an epoch, counted when
    the data is loaded: agro.config.resolve_steps)."""
    strategy = trl.get("logging_strategy", "steps")
    if strategy == "epoch":
        take("logging_strategy", "logging_steps", -1)
    elif strategy != "steps":
        refuse("logging_strategy", "agro writes metrics.jsonl every logging_steps steps (steps or epoch)")
    strategy = trl.get("save_strategy", "steps")
    if strategy in ("no", "epoch"):
        take("save_strategy", "save_steps", 0 if strategy == "no" else -1)
    elif strategy != "steps":
        refuse("save_strategy", "agro saves every save_steps steps (steps, epoch or no); best is not supported")
    strategy = trl.get("eval_strategy")
    if strategy in ("no", "epoch"):
        take("eval_strategy", "eval_steps", 0 if strategy == "no" else -1)
    elif strategy == "steps":
        out.setdefault("eval_steps", out.get("logging_steps", defaults["logging_steps"]))
    elif strategy is not None:
        refuse("eval_strategy", "agro evaluates every eval_steps steps (steps, epoch or no)")


def markdown() -> str:
    """docs/guide/trl-config.md: every GRPOConfig field and what agro does with it (tests check it is current)."""
    rows = ["# TRL's GRPOConfig fields in AGROConfig", "",
            "`AGROConfig(**kwargs)`, a YAML config and `--set` take TRL's field names. Each is **honoured** (agro",
            "has the key, with TRL's meaning), **mapped** (turned into agro's keys) or **refused** (one error lists",
            "every refused or unknown key, each with what to use instead). A refused field given at its off or",
            "default value (`push_to_hub: false`, `top_k: 0`, ...) is accepted: it changes nothing.",
            "Generated from `agro.trl_fields.TABLE`.", "",
            "| field | agro | why / what to use |", "|---|---|---|"]
    older = " (from older TRL/transformers versions)"
    for name, (state, why, _) in TABLE.items():
        rows.append(f"| `{name}`{older if name in OLDER_VERSIONS else ''} | {state} | {why.replace('|', '/')} |")
    rows += ["", "Every other `TrainingArguments` field is refused unless given at its default: "
             + ", ".join(f"`{name}`" + (older if name in OLDER_VERSIONS else "") for name in TRAINING_ARGUMENTS)
             + "."]
    return "\n".join(rows) + "\n"
