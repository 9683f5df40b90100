"""Multi-step integer arithmetic: the built-in task for `agro demo`.

A prompt is an expression such as ``47+8+6=``; a completion is a worked solution,
``47+8=55;55+6=61;A=61``, followed by EOS. The reward is 1 when the number after ``A=``
equals the gold answer.

The reference policy π_ref is a tiny Llama trained from scratch on worked solutions in which,
at each step that needs a carry (addition) or a borrow (subtraction) out of the units column,
that carry/borrow is dropped with probability ``error_rate``. So π_ref's greedy answer is wrong on
most problems that need a carry, while the correct step stays in its support at temperature 1:
exactly what RL can fix quickly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import agro.tasks.builds as builds

NAME = "arithmetic"
REWARD = "agro.tasks.arithmetic:reward"  # the trainer's reward_function for this task
CHARS = "0123456789+-=;A"
STRONG_ERROR_RATE = 0.2  # error_rate of the study's stronger data policy


@dataclass(frozen=True)
class ArithmeticTask(builds.ModelSettings):
    """The expressions and π_ref's dropped carries; the tiny Llama and its warm-up are `builds.ModelSettings`."""

    CACHE_KEY = (1,)  # the build version (bump it when a change here alters a build); no name, unlike the others
    num_operands: int = 3
    first_range: tuple[int, int] = (10, 99)  # first operand ~ U[lo, hi]
    operand_range: tuple[int, int] = (1, 9)  # every other operand ~ U[lo, hi]
    ops: str = "+"  # each operator is drawn uniformly from these
    heldout_fraction: float = 0.1  # share of all problems reserved for held-out, by prompt hash
    error_rate: float = 0.6  # P(drop a needed carry/borrow) in warm-up solutions
    num_heldout: int = 500  # held-out problems on which task.json reports π_ref's greedy accuracy


Settings = ArithmeticTask  # the registry's name for every task's settings class


@dataclass(frozen=True)
class Problem:
    """One expression, its gold answer, and its parts."""

    prompt: str  # "47+8+6="
    answer: str  # "61"
    operands: tuple[int, ...]
    ops: str


# ----------------------------------------------------------------------------- problems


def _make_problem(operands: list[int], ops: str) -> Problem | None:
    """The problem, or None when some intermediate result is too small for every error path to stay ≥ 0."""
    value, margin = operands[0], 10 * len(ops)
    for op, x in zip(ops, operands[1:]):
        value = value + x if op == "+" else value - x
        if value < margin:
            return None
    prompt = str(operands[0]) + "".join(op + str(x) for op, x in zip(ops, operands[1:])) + "="
    return Problem(prompt, str(value), tuple(operands), ops)


def sample_problem(rng: random.Random, split: str, task: ArithmeticTask) -> Problem:
    """One random problem of the given split."""
    while True:
        operands = [rng.randint(*task.first_range)]
        operands += [rng.randint(*task.operand_range) for _ in range(task.num_operands - 1)]
        ops = "".join(rng.choice(task.ops) for _ in range(task.num_operands - 1))
        p = _make_problem(operands, ops)
        if p is not None and builds.split_of(p.prompt, task.heldout_fraction) == split:
            return p


def needs_carry(x: int, op: str, y: int) -> bool:
    """Whether x op y carries (+) or borrows (-) out of the units column."""
    return (x % 10 + y % 10 >= 10) if op == "+" else (x % 10 < y % 10)


def solve(problem: Problem, drop: list[bool] | None = None) -> str:
    """The worked solution; step i drops its carry/borrow when drop[i] (only where one is needed)."""
    value, steps = problem.operands[0], []
    for i, (op, x) in enumerate(zip(problem.ops, problem.operands[1:])):
        result = value + x if op == "+" else value - x
        if drop is not None and drop[i] and needs_carry(value, op, x):
            result += -10 if op == "+" else 10
        steps.append(f"{value}{op}{x}={result}")
        value = result
    return ";".join(steps) + f";A={value}"


def imperfect_solution(problem: Problem, error_rate: float, rng: random.Random) -> tuple[str, bool]:
    """A worked solution that drops each needed carry/borrow with prob error_rate; (text, dropped_any)."""
    text = solve(problem, [rng.random() < error_rate for _ in problem.ops])
    return text, text != solve(problem)


def parse_answer(completion: str) -> str | None:
    """The text after the last 'A=', up to any special token such as <eos>; None without 'A='."""
    _, sep, tail = completion.rpartition("A=")
    return tail.split("<", 1)[0].strip() if sep else None


def reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion's final answer is exactly the gold answer, else 0.0."""
    return float(answer is not None and parse_answer(completion) == answer.strip())


# ----------------------------------------------------------------------------- model, π_ref and accuracy


def build_model(task: ArithmeticTask, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized by the settings, with tied embeddings."""
    return builds.tiny_llama(task, tokenizer)


def max_completion_tokens(task: ArithmeticTask) -> int:
    """Upper bound on the tokens of any worked solution of the task (correct or not), EOS included."""
    steps = task.num_operands - 1
    value_digits = len(str(task.first_range[1] + steps * task.operand_range[1] + 10 * steps))
    step_chars = 2 * value_digits + len(str(task.operand_range[1])) + 3  # "x+y=r;"
    return steps * step_chars + 2 + value_digits + 1  # "A=" answer EOS


def max_prompt_tokens(task: ArithmeticTask) -> int:
    """Upper bound on the tokens of any prompt of the task ("47+8+6=")."""
    operand_digits = max(len(str(task.operand_range[1])), len(str(task.operand_range[0])))
    return len(str(task.first_range[1])) + (task.num_operands - 1) * (1 + operand_digits) + 1


KIT = builds.TaskKit(
    name=NAME, settings_class=ArithmeticTask, seed_prefix="", chars=CHARS, sample_problem=sample_problem,
    warmup_completion=lambda p, rng, task: imperfect_solution(p, task.error_rate, rng)[0], reward=reward,
    budget=lambda problems, task: max(len(solve(p)) for p in problems) + 2,  # the longest correct solution, EOS, 1
)
build_tokenizer = KIT.build_tokenizer
generate_problems = KIT.generate_problems
generate_completions = builds.generate_completions
evaluate_greedy = KIT.evaluate_greedy
sample_accuracy = KIT.sample_accuracy
load_task = KIT.load_task


def build_reference_policy(
    out_dir: str | Path, seed: int = 0, task: ArithmeticTask | None = None, log_every: int = 0
) -> Path:
    """Train π_ref on imperfect solutions; write model, tokenizer and task.json into out_dir."""
    return KIT.build_reference_policy(out_dir, seed, task, log_every)


def load_or_build_reference_policy(
    cache_dir: str | Path, seed: int = 0, task: ArithmeticTask | None = None, log_every: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
    """(model, tokenizer, path) of π_ref for (task, seed), from cache_dir/arithmetic-<hash>-seed<seed>;
    `build_reference_policy` makes a missing or incomplete one first."""
    return KIT.load_or_build(build_reference_policy, cache_dir, seed, task, log_every)
