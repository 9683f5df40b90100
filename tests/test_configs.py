"""Every shipped config loads and validates; a broken copy fails naming the file, line and key."""

import re
from pathlib import Path

import pytest

from agro.config import load_config
from agro.errors import AgroError
from agro.tasks import arithmetic

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GPU_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "demo.yaml" and "smollm2" not in p.name)


def test_the_gpu_configs_exist():
    assert {p.name for p in GPU_CONFIGS} >= {"qwen2.5-0.5b-math.yaml", "qwen2.5-1.5b-math.yaml",
                                            "llama3-8b-math-mixed.yaml"}


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_config_validates_and_documents_itself(path):
    config = load_config(path)
    assert config.torch_dtype == "bfloat16"
    assert config.prompt_template == "chat" and config.reward_function == "math"
    assert config.max_completion_length == 1024 and config.eval_data
    assert config.prompts_per_step % 8 == 0  # splits evenly over 1, 2, 4 or 8 processes
    text = path.read_text(encoding="utf-8")
    header = text.split("\n\n", 1)[0]
    assert all(line.startswith("#") for line in header.splitlines()), "the file must open with a comment block"
    assert f"accelerate launch --num_processes 1 -m agro.cli train configs/{path.name}" in header
    assert "ESTIMATE" in header and re.search(r"peak ≈ .* ≈ \d+ GB", header)
    assert "://" not in text and "huggingface.co" not in text


def test_smollm2_cpu_config_trains_the_built_in_model_on_a_reasoning_gym_task():
    config = load_config(CONFIGS / "smollm2-135m-cpu.yaml")
    assert config.model_name_or_path == "smollm2-135m-instruct"
    assert config.train_data == config.eval_data and config.train_data.startswith("reasoning_gym:")
    assert config.reward_function == "reasoning_gym" and config.truncated_completions == "zero"
    assert config.eval_steps and config.max_steps >= 20


def test_smollm2_gpu_config_is_the_cpu_task_with_bf16_larger_groups_and_longer_completions():
    cpu, gpu = load_config(CONFIGS / "smollm2-135m-cpu.yaml"), load_config(CONFIGS / "smollm2-135m-gpu.yaml")
    assert gpu.bf16 and gpu.torch_dtype == "float32"  # mixed precision: AdamW on float32 weights
    assert (gpu.train_data, gpu.reward_function, gpu.objective, gpu.beta) == (
        cpu.train_data, cpu.reward_function, cpu.objective, cpu.beta)
    assert gpu.num_generations > cpu.num_generations and gpu.max_completion_length > cpu.max_completion_length
    assert gpu.cache_implementation == "static" and gpu.prompts_per_step % 8 == 0
    header = (CONFIGS / "smollm2-135m-gpu.yaml").read_text(encoding="utf-8").split("\n\n", 1)[0]
    assert "accelerate launch --num_processes 1 -m agro.cli train configs/smollm2-135m-gpu.yaml" in header
    assert "ESTIMATE" in header and re.search(r"peak ≈ .* ≈ \d+ GB", header)


def test_llama_config_mixes_on_policy_and_offline_data():
    config = load_config(CONFIGS / "llama3-8b-math-mixed.yaml")
    assert config.num_generations > 0 and config.offline_data and config.offline_per_group > 0
    assert config.use_peft


def test_demo_config_names_what_the_demo_writes():
    """As written, configs/demo.yaml names `make demo`'s outputs (runs/demo); tests/test_demo.py trains with it."""
    config = load_config(CONFIGS / "demo.yaml")
    assert config.model_name_or_path == "runs/demo/pi_ref" and config.output_dir == "runs/demo-train"
    assert (config.train_data, config.offline_data, config.eval_data) == (
        "runs/demo/data/train.jsonl", "runs/demo/data/offline_pi_ref.jsonl", "runs/demo/data/heldout.jsonl")
    assert config.objective == "agro" and config.offline_per_group > 0
    assert config.max_completion_length == arithmetic.max_completion_tokens(arithmetic.ArithmeticTask())


@pytest.mark.parametrize(
    "line, broken, message",
    [
        ("learning_rate: 1.0e-6", "learning_rat: 1.0e-6", "unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("beta: 0.04", "beta: -0.04", "key 'beta': must be > 0"),
        ("torch_dtype: bfloat16", "torch_dtype: bf16", "key 'torch_dtype': must be one of"),
        ("num_generations: 8", "num_generations: eight", "key 'num_generations': expected an integer"),
    ],
)
def test_broken_copy_fails_naming_the_key(tmp_path, line, broken, message):
    text = (CONFIGS / "qwen2.5-0.5b-math.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    number = lines.index(line) + 1
    copy = tmp_path / "broken.yaml"
    copy.write_text(text.replace(line, broken), encoding="utf-8")
    with pytest.raises(AgroError) as info:
        load_config(copy)
    assert str(info.value).startswith(f"{copy}:{number}: ")
    assert message in str(info.value)


def test_config_choices_are_the_objective_registry():
    """config.py takes the objectives from agro.objective_table (no torch); LOSSES implements each one named."""
    from agro.config import CHOICES
    from agro.objectives import AGRO_LOSS_TYPES, LOSSES, TAPERS

    assert tuple(LOSSES) == CHOICES["objective"]
    assert TAPERS is CHOICES["taper"] and AGRO_LOSS_TYPES is CHOICES["agro_loss_type"]


def test_bf16_autocast_over_float16_weights_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text((CONFIGS / "smollm2-135m-gpu.yaml").read_text(encoding="utf-8").replace(
        "torch_dtype: float32", "torch_dtype: float16"), encoding="utf-8")
    with pytest.raises(AgroError, match="key 'bf16': bfloat16 autocast over float16 weights"):
        load_config(path)
