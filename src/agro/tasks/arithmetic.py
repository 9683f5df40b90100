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

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from agro.tasks import builds

NAME = "arithmetic"
REWARD = "agro.tasks.arithmetic:reward"  # the trainer's reward_function for this task
CHARS = "0123456789+-=;A"
STRONG_ERROR_RATE = 0.2  # error_rate of the study's stronger data policy
BUILD_VERSION = 1  # part of the cache key: bump when a change here alters what a build produces


@dataclass(frozen=True)
class ArithmeticTask(builds.ModelSettings):
    """Task settings, after the model and warm-up settings of `builds.ModelSettings`; their hash keys the
    on-disk cache."""

    num_operands: int = 3
    first_range: tuple[int, int] = (10, 99)  # first operand ~ U[lo, hi]
    operand_range: tuple[int, int] = (1, 9)  # every other operand ~ U[lo, hi]
    ops: str = "+"  # each operator is drawn uniformly from these
    heldout_fraction: float = 0.1  # share of all problems reserved for held-out, by prompt hash
    error_rate: float = 0.6  # P(drop a needed carry/borrow) in warm-up solutions
    num_heldout: int = 500  # held-out problems on which task.json reports π_ref's greedy accuracy

    def settings_hash(self) -> str:
        blob = json.dumps([BUILD_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


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


def generate_problems(n: int, seed: int, split: str, task: ArithmeticTask | None = None) -> list[Problem]:
    """n distinct problems of one split; deterministic by (seed, split), splits disjoint for every seed."""
    task = task or ArithmeticTask()
    return builds.distinct_problems(lambda rng: sample_problem(rng, split, task), n, random.Random(f"{seed}-{split}"), split,
                                    task)


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


# ----------------------------------------------------------------------------- tokenizer and model


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over the task's characters; adds no special tokens, pads on the left."""
    return builds.char_tokenizer(CHARS)


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


def _max_new_tokens(problems: list[Problem]) -> int:
    """Generation budget for these problems: the longest correct solution plus EOS and one token of slack."""
    return max(len(solve(p)) for p in problems) + 2


# ----------------------------------------------------------------------------- warm-up


def _train(model, tokenizer, task: ArithmeticTask, seed: int, log_every: int = 0) -> None:
    rng = random.Random(f"{seed}-warmup")

    def examples() -> tuple[list[str], list[str]]:
        batch = [sample_problem(rng, "train", task) for _ in range(task.batch_size)]
        return [p.prompt for p in batch], [imperfect_solution(p, task.error_rate, rng)[0] for p in batch]

    builds.warm_up(model, tokenizer, task, examples, log_every)


# ----------------------------------------------------------------------------- evaluation


generate_completions = builds.generate_completions


def evaluate_greedy(model, tokenizer, problems: list[Problem], batch_size: int = 256) -> float:
    """Greedy accuracy over problems."""
    return builds.greedy_accuracy(reward, model, tokenizer, problems, _max_new_tokens(problems), batch_size)


def sample_accuracy(model, tokenizer, problems: list[Problem], num_samples: int, temperature: float = 1.0,
                    batch_size: int = 256) -> tuple[float, float]:
    """(mean@k, pass@k) over problems, from k = num_samples completions each, sampled at `temperature`."""
    return builds.sampled_accuracy(reward, model, tokenizer, problems, num_samples, _max_new_tokens(problems),
                                   temperature, batch_size)


# ----------------------------------------------------------------------------- build and cache


def build_reference_policy(
    out_dir: str | Path, seed: int = 0, task: ArithmeticTask | None = None, log_every: int = 0
) -> Path:
    """Train π_ref on imperfect solutions; write model, tokenizer and task.json into out_dir."""
    task = task or ArithmeticTask()
    heldout = generate_problems(task.num_heldout, seed, "heldout", task)
    return builds.build_reference_policy(Path(out_dir), NAME, task, seed, build_tokenizer(),
                                         lambda model, tok: _train(model, tok, task, seed, log_every),
                                         lambda model, tok: evaluate_greedy(model, tok, heldout))


def load_task(path: str | Path) -> tuple[ArithmeticTask, dict]:
    """(settings, full task.json) of a π_ref build."""
    return builds.load_task(path, ArithmeticTask)


def load_or_build_reference_policy(
    cache_dir: str | Path, seed: int = 0, task: ArithmeticTask | None = None, log_every: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
    """(model, tokenizer, path) of π_ref for (task, seed), from cache_dir/arithmetic-<hash>-seed<seed>.

    A missing or incomplete build is built first, in a temporary directory renamed into place.
    """
    task = task or ArithmeticTask()
    return builds.load_or_build(cache_dir, NAME, task, seed,
                               lambda tmp: build_reference_policy(tmp, seed, task, log_every))
