"""TRL's GRPOConfig fields in AGROConfig, a YAML config and `--set`: honoured, mapped onto agro's keys, or
refused all in one error; the docs table of every field (docs/guide/trl-config.md) is current."""

import dataclasses
import json
from pathlib import Path

import pytest

from agro import AGROConfig, AGROTrainer
from agro.cli import main
from agro.config import load_config
from agro.errors import AgroError
from agro.trl_fields import (
    OLDER_VERSIONS,
    TABLE,
    TRAINING_ARGUMENTS,
    TRAINING_ARGUMENTS_DEFAULTS,
    _same,
    markdown,
)

DOC = Path(__file__).parent.parent / "docs" / "guide" / "trl-config.md"

# A typical GRPOConfig block of a TRL script, with only the class renamed.
TRL_BLOCK = dict(
    output_dir="runs/x", learning_rate=1e-6, per_device_train_batch_size=8, gradient_accumulation_steps=2,
    num_generations=4, steps_per_generation=2, max_completion_length=64, num_train_epochs=2, max_steps=-1,
    mask_truncated_completions=True, scale_rewards="group", loss_type="dapo", beta=0.0, objective="grpo",
    temperature=0.9, top_k=0, min_p=None, repetition_penalty=1.0, generation_kwargs=None, use_vllm=False,
    vllm_mode="colocate", logging_strategy="steps", logging_steps=5, save_strategy="no", eval_strategy="steps",
    warmup_ratio=0.1, report_to="none", run_name="port", importance_sampling_level="token", fp16=False,
    bf16=False, gradient_checkpointing=True, eval_on_start=True, push_to_hub=False, remove_unused_columns=False,
    chat_template_kwargs=None, log_completions=False, resume_from_checkpoint=None, seed=1,
)


def test_a_typical_grpo_config_block_builds_with_trls_meaning():
    c = AGROConfig(model_name_or_path="m", train_data="t.jsonl", **TRL_BLOCK)
    # 8 completions per device × 2 accumulation steps × 1 process = 16 completions a step: 4 prompts × 4
    assert (c.prompts_per_step, c.num_generations) == (4, 4)
    assert (c.max_steps, c.num_train_epochs, c.warmup_ratio) == (-1, 2.0, 0.1)
    assert c.truncated_completions == "mask" and c.loss_type == "dapo" and c.beta == 0.0
    assert (c.logging_steps, c.save_steps, c.eval_steps) == (5, 0, 5)  # eval_steps: logging_steps, as TRL
    assert c.run_name == "port" and c.generation_backend == "hf" and c.temperature == 0.9


@pytest.mark.parametrize("given, expected", [
    (dict(mask_truncated_completions=False), dict(truncated_completions="keep")),  # TRL scores cut ones as they are
    (dict(use_vllm=True), dict(generation_backend="vllm")),
    (dict(num_train_epochs=1.5), dict(max_steps=-1, num_train_epochs=1.5)),
    (dict(num_train_epochs=1.5, max_steps=7), dict(max_steps=7)),  # TRL: max_steps > 0 wins over epochs
    (dict(max_steps=-1), dict(num_train_epochs=3.0)),  # TRL's default epochs
    (dict(warmup_steps=0.25), dict(warmup_ratio=0.25, warmup_steps=0)),  # transformers 5: a ratio
    (dict(per_device_train_batch_size=6, num_generations=3), dict(prompts_per_step=2)),
    (dict(gradient_accumulation_steps=2, num_generations=8), dict(prompts_per_step=2)),  # 8 a device, TRL's default
])
def test_mapped_fields(given, expected):
    c = AGROConfig(model_name_or_path="m", train_data="t.jsonl", **given)
    assert {k: getattr(c, k) for k in expected} == expected


def test_every_unknown_or_refused_field_is_named_in_one_error():
    with pytest.raises(AgroError) as info:
        AGROConfig(model_name_or_path="m", chat_template_kwargs={"x": 1}, lerning_rate=1e-5, fp16=True,
                   scale_rewards="batch", save_strategy="best", importance_sampling_level="sequence",
                   vllm_mode="server", zzz=1)
    message = str(info.value)
    assert message.startswith("AGROConfig: 8 unsupported keys: (1) ") and "\n" not in message
    for part in ("chat_template_kwargs={'x': 1}: agro applies the tokenizer's chat template", "unknown key "
                 "'lerning_rate' (did you mean 'learning_rate'?)", "fp16=True: ", "use bf16: true",
                 "scale_rewards='batch'", "save_strategy='best'", "best is not supported", "importance_sampling_level='sequence'",
                 "vllm_mode='server'", "unknown key 'zzz'"):
        assert part in message


def test_conflicts_and_bad_batch_sizes_are_named():
    with pytest.raises(AgroError, match="per_device_train_batch_size=4 means prompts_per_step: 1, but "
                                        "prompts_per_step is 8"):
        AGROConfig(model_name_or_path="m", per_device_train_batch_size=4, num_generations=4, prompts_per_step=8)
    with pytest.raises(AgroError, match="= 6 completions a step, not a multiple of num_generations 4"):
        AGROConfig(model_name_or_path="m", per_device_train_batch_size=6, num_generations=4)


def test_a_yaml_config_names_each_refused_key_with_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_data: t.jsonl\nper_device_train_batch_size: 16\n"
                    "chat_template_kwargs: {x: 1}\nlearning_rat: 1.0e-6\n", encoding="utf-8")
    with pytest.raises(AgroError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: 2 unsupported keys: (1) {path}:4: chat_template_kwargs={{'x': 1}}: agro "
                               "applies the tokenizer's chat template as it is (prompt_template chat, system_prompt) "
                               f"(2) {path}:5: unknown key 'learning_rat' (did you mean 'learning_rate'?)")
    path.write_text(path.read_text(encoding="utf-8").replace("learning_rat:", "learning_rate:"), encoding="utf-8")
    config = load_config(path, ["chat_template_kwargs=null", "gradient_accumulation_steps=2"])  # null: inert
    assert config.prompts_per_step == 4  # 16 × 2 completions ÷ 8 generations


def test_the_cli_exits_2_with_the_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_data: t.jsonl\nnum_completions_to_print: 3\nfoo: 1\n",
                    encoding="utf-8")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 unsupported keys" in err[0] and "num_completions_to_print=3" in err[0]
    assert "'foo'" in err[0]


def test_beta_zero_is_grpos_and_dapo_is_accepted_as_trls_default():
    assert AGROConfig(model_name_or_path="m", train_data="t", objective="grpo", beta=0.0).beta == 0.0
    with pytest.raises(AgroError, match="key 'beta': must be > 0 for objective 'agro', got 0.0 .*allowed for "
                                        "objective grpo"):
        from agro.config import check
        check(AGROConfig(model_name_or_path="m", train_data="t", beta=0.0))
    path_free = AGROConfig(model_name_or_path="m", train_data="t", loss_type="dapo")  # objective agro: not used
    from agro.config import check
    assert check(path_free).loss_type == "dapo"
    with pytest.raises(AgroError, match="key 'loss_type': applies to objective grpo only"):
        check(AGROConfig(model_name_or_path="m", train_data="t", loss_type="bnpo"))


def test_report_to_takes_accelerates_trackers_all_and_none():
    from agro.config import check
    for value in ("all", "none", ["tensorboard", "trackio"], "mlflow"):
        check(AGROConfig(model_name_or_path="m", train_data="t", report_to=value))
    with pytest.raises(AgroError, match="unknown tracker 'neptune'"):
        check(AGROConfig(model_name_or_path="m", train_data="t", report_to="neptune"))


def test_epochs_with_max_steps_minus_one_count_steps_from_the_data(assets, tmp_path, one_thread):
    """12 prompts, 5 a step: 3 steps an epoch; 2 epochs with num_iterations 2 are 12 optimizer steps. Checked
    on the resolved config; a 1.5-epoch run trains its ⌈4.5⌉ = 5 steps, with ⌈0.4 × 5⌉ = 2 warm-up steps."""
    from agro.config import resolve_steps

    c = AGROConfig(model_name_or_path="m", train_data="t", num_train_epochs=2, num_iterations=2,
                   prompts_per_step=5)
    resolve_steps(c, 12)
    assert c.max_steps == 12
    out = tmp_path / "run"
    args = AGROConfig(output_dir=str(out), num_train_epochs=1.5,
                      per_device_train_batch_size=10, num_generations=2, max_completion_length=4, max_prompt_length=32,
                      warmup_ratio=0.4, report_to="none", save_strategy="no", offline_per_group=0,
                      learning_rate=1e-3, truncated_completions="keep")
    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    trainer = AGROTrainer(str(assets / "model"), reward_funcs="exact", args=args, train_dataset=rows)
    result = trainer.train()
    assert (result.global_step, trainer.args.max_steps, trainer.args.warmup_steps) == (5, 5, 2)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4, 5]


def test_epoch_strategies_are_steps_per_epoch_once_the_data_is_known():
    """12 prompts, 5 a step, num_iterations 2: an epoch is 3 × 2 = 6 optimizer steps."""
    from agro.config import resolve_steps

    c = AGROConfig(model_name_or_path="m", train_data="t", logging_strategy="epoch", save_strategy="epoch",
                   eval_strategy="epoch", num_iterations=2, prompts_per_step=5, max_steps=20)
    assert (c.logging_steps, c.save_steps, c.eval_steps) == (-1, -1, -1)
    resolve_steps(c, 12)
    assert (c.logging_steps, c.save_steps, c.eval_steps, c.max_steps) == (6, 6, 6, 20)
    c = AGROConfig(model_name_or_path="m", train_data="t", eval_strategy="epoch", save_strategy="no")
    assert (c.logging_steps, c.save_steps, c.eval_steps) == (1, 0, -1)  # each strategy on its own
    with pytest.raises(AgroError, match="logging_strategy='no': agro writes metrics.jsonl every logging_steps"):
        AGROConfig(model_name_or_path="m", logging_strategy="no")
    with pytest.raises(AgroError, match="key 'save_steps': must be ≥ 0, got -2"):
        load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "save_steps=-2"])
    assert load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "logging_steps=-1"]).logging_steps == -1


def test_the_docs_table_is_current_and_lists_every_grpo_config_field():
    assert DOC.read_text(encoding="utf-8") == markdown()
    trl = pytest.importorskip("trl")
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig) if f.init}
    missing = fields - set(TABLE) - set(TRAINING_ARGUMENTS)
    assert not missing, f"GRPOConfig fields missing from agro.trl_fields: {sorted(missing)}"


def test_training_arguments_are_accepted_at_their_own_default_only():
    """Each TrainingArguments setting agro's loop lacks is dropped at its default and refused otherwise; True is
    not 1 and not every field's default."""
    with pytest.raises(AgroError) as info:
        AGROConfig(model_name_or_path="m", load_best_model_at_end=True, use_liger_kernel=True, full_determinism=True,
                   tf32=True, ddp_find_unused_parameters=True, dataloader_drop_last=1, shuffle_dataset=1)
    message = str(info.value)
    assert message.startswith("AGROConfig: 7 unsupported keys: ")
    for part in ("load_best_model_at_end=True: a TrainingArguments setting agro's loop does not have (only its "
                 "default, False, is accepted)", "use_liger_kernel=True", "full_determinism=True",
                 "tf32=True: a TrainingArguments setting agro's loop does not have (only its default, None, ",
                 "ddp_find_unused_parameters=True", "dataloader_drop_last=1", "shuffle_dataset=1"):
        assert part in message
    AGROConfig(model_name_or_path="m", load_best_model_at_end=False, use_liger_kernel=False, tf32=None,
               dataloader_pin_memory=True, ddp_timeout=1800, eval_delay=0.0, hub_strategy="every_save",
               include_num_input_tokens_seen=False, include_for_metrics=[], shuffle_dataset=True, push_to_hub=0)


def test_the_training_arguments_defaults_are_the_installed_classes():
    """TRAINING_ARGUMENTS_DEFAULTS (kept in agro: transformers' TrainingArguments imports torch) against the
    installed GRPOConfig, or TrainingArguments without trl: the first accepted value is the field's default."""
    try:
        import trl
        cls = trl.GRPOConfig
    except ImportError:
        from transformers import TrainingArguments as cls
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls) if f.init}
    for name, accepted in TRAINING_ARGUMENTS_DEFAULTS.items():
        if name in OLDER_VERSIONS and name not in defaults:
            continue
        assert name in defaults, name
        assert _same(defaults[name], accepted[0]), (name, defaults[name], accepted)


@pytest.mark.parametrize("given", [
    dict(steps_per_generation=None), dict(steps_per_generation=1),  # TRL's default: gradient_accumulation_steps
    dict(steps_per_generation=2, gradient_accumulation_steps=2, num_generations=8),
])
def test_steps_per_generation_at_trls_default_is_accepted(given):
    AGROConfig(model_name_or_path="m", **given)


def test_steps_per_generation_that_reuses_completions_is_refused():
    with pytest.raises(AgroError, match=r"steps_per_generation=4: agro generates every optimizer step's "
                                        r"completions fresh, .*gradient_accumulation_steps, 2\); to train on "
                                        r"completions again use num_iterations or group replay "
                                        r"\(replay_groups_per_step\)"):
        AGROConfig(model_name_or_path="m", steps_per_generation=4, gradient_accumulation_steps=2, num_generations=8)
    with pytest.raises(AgroError, match="steps_per_generation=2: .*gradient_accumulation_steps, 1"):
        AGROConfig(model_name_or_path="m", steps_per_generation=2)
    with pytest.raises(AgroError, match="steps_per_generation=True: expected None or a positive integer"):
        AGROConfig(model_name_or_path="m", steps_per_generation=True)


def test_activation_checkpointing_is_gradient_checkpointing():
    assert AGROConfig(model_name_or_path="m", activation_checkpointing=True).gradient_checkpointing is True
    assert AGROConfig(model_name_or_path="m", activation_checkpointing=None).gradient_checkpointing is False
    assert AGROConfig(model_name_or_path="m", activation_checkpointing=True,
                      gradient_checkpointing=True).gradient_checkpointing is True
    with pytest.raises(AgroError, match="activation_checkpointing=False means gradient_checkpointing: False, but "
                                        "gradient_checkpointing is True; give one of them"):
        AGROConfig(model_name_or_path="m", activation_checkpointing=False, gradient_checkpointing=True)
    config = load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "activation_checkpointing=true"])
    assert config.gradient_checkpointing is True


def test_fields_of_older_versions_are_marked_in_the_table():
    for name in ("max_prompt_length", "warmup_ratio", "overwrite_output_dir"):
        assert f"| `{name}` (from older TRL/transformers versions) |" in markdown()
    assert "`logging_dir` (from older TRL/transformers versions)" in markdown()
    trl = pytest.importorskip("trl")
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig) if f.init}
    assert OLDER_VERSIONS == {*TABLE, *TRAINING_ARGUMENTS} - fields


def test_max_steps_minus_one_without_epochs_is_named_by_check():
    """TRL's max_steps -1 brings its 3 epochs through AGROConfig and load_config; a config changed afterwards
    is still checked."""
    from agro.config import check

    config = AGROConfig(model_name_or_path="m", train_data="t")
    config.max_steps = -1
    with pytest.raises(AgroError, match="key 'max_steps': is -1 .* but num_train_epochs is 0"):
        check(config)
