"""Built-in tasks: problems, reward, and a cached tiny reference policy for `agro demo`, the study and the benchmarks.

The registry names every task; `get_task(name)` imports its module on first use. A task module defines
its problems, verifier and warm-up completions, binds them into a `builds.TaskKit` (its problem sets, π_ref
build and cache, accuracies), and exposes the same interface:

    NAME                       the registry name ("arithmetic")
    REWARD                     the reward spec the trainer loads ("agro.tasks.arithmetic:reward")
    Settings                   frozen dataclass of task, model and warm-up settings (hash keys the π_ref cache);
                               it has at least `train_steps` (warm-up steps) and `error_rate` (share of
                               imperfect warm-up solutions), from which the study derives its weaker and
                               stronger data policies with dataclasses.replace
    Problem                    one problem: `.prompt`, `.answer`
    generate_problems(n, seed, split, settings)            n distinct problems of split "train" | "heldout"
    max_completion_tokens(settings), max_prompt_tokens(settings)   token bounds for the trainer's config
    reward(prompt, completion, answer) -> float            the verifier, 1.0 or 0.0
    load_or_build_reference_policy(cache_dir, seed, settings, log_every) -> (model, tokenizer, path)
    evaluate_greedy(model, tokenizer, problems), sample_accuracy(model, tokenizer, problems, k)   both also
                               take batch_size and settings (sample_accuracy: temperature)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from agro.errors import AgroError

TASK_NAMES = ("arithmetic", "countdown", "multiplication")


def get_task(name: str) -> ModuleType:
    """The task module registered as `name` (imported on first use)."""
    if name not in TASK_NAMES:
        raise AgroError(f"unknown task {name!r}; choose one of: {', '.join(TASK_NAMES)}")
    return importlib.import_module(f"agro.tasks.{name}")


_ARITHMETIC_NAMES = (
    "ArithmeticTask",
    "Problem",
    "build_model",
    "build_reference_policy",
    "build_tokenizer",
    "evaluate_greedy",
    "generate_completions",
    "generate_problems",
    "imperfect_solution",
    "load_or_build_reference_policy",
    "load_task",
    "max_completion_tokens",
    "parse_answer",
    "reward",
    "sample_accuracy",
    "solve",
)

__all__ = ["TASK_NAMES", "get_task", *_ARITHMETIC_NAMES]


def __getattr__(name: str):
    """`from agro.tasks import solve` etc. still reach the arithmetic task's names (imported lazily: torch)."""
    if name in _ARITHMETIC_NAMES:
        return getattr(importlib.import_module("agro.tasks.arithmetic"), name)
    raise AttributeError(f"module 'agro.tasks' has no attribute {name!r}")
