"""Built-in tasks: problems, reward, and a cached tiny reference policy for `agro demo`."""

from agro.tasks.arithmetic import (
    ArithmeticTask,
    Problem,
    build_model,
    build_reference_policy,
    build_tokenizer,
    evaluate_greedy,
    generate_completions,
    generate_problems,
    imperfect_solution,
    load_or_build_reference_policy,
    load_task,
    max_completion_tokens,
    parse_answer,
    reward,
    sample_accuracy,
    solve,
)

__all__ = [
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
]
