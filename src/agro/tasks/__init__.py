"""Built-in tasks."""

from agro.tasks.arithmetic import (
    ArithmeticTask,
    Problem,
    build_reference_policy,
    build_tokenizer,
    evaluate_greedy,
    generate_problems,
    load_or_build_reference_policy,
    reward,
    sample_accuracy,
    solve,
)

__all__ = [
    "ArithmeticTask",
    "Problem",
    "build_reference_policy",
    "build_tokenizer",
    "evaluate_greedy",
    "generate_problems",
    "load_or_build_reference_policy",
    "reward",
    "sample_accuracy",
    "solve",
]
