"""Countdown: reach a target from given numbers with + − × ÷, each number used exactly once.

A prompt lists the numbers and the target, ``7,3,9,2>25:``; a completion is a worked solution, one
step per line-free segment, each combining two numbers still available into a new one:
``9*3=27;27-2=25;...``. The reward (`reward`) is 1 when

* every step reads ``x<op>y=r`` with ``op`` in ``+-*/`` and ``x``, ``y``, ``r`` written as plain
  decimal integers (no sign, no leading zero), and ``r`` is the exact result: a positive integer
  (a subtraction may not go to 0 or below; a division must be exact and not by zero);
* ``x`` and ``y`` are both available when the step is written: each given number may be used once,
  each step's result once more;
* **every given number is used** (so there are exactly ``len(numbers) - 1`` steps), and the last
  result equals the target.

Anything else, garbage included, gets 0. That is the rule of the small open RL reproductions
(TinyZero), except that here all numbers must be used, which fixes the completion's length.

Problems are made by construction, so every target is reachable: draw ``num_numbers`` numbers from
``number_range``, play a random valid path (each step: two available numbers chosen uniformly, the
larger written first, an operator drawn uniformly from those whose result is a positive integer ≤
``max_value``), and take its last value as the target (kept when it is in ``target_range``). The
numbers are listed in random order. Splits are by prompt hash, as in `agro.tasks.arithmetic`.

π_ref is a tiny Llama trained from scratch on worked solutions: with probability ``1 − error_rate``
the path that made the problem (a correct solution: a draw from random paths conditioned on
reaching the target), otherwise a fresh random valid path of the same numbers, which ignores the
target (and so is wrong, but for chance). The model learns the format and the arithmetic, and only
a little of how to aim at the target, so it is mostly wrong greedily while correct solutions keep
real mass at temperature 1; RL has to teach it to plan, which takes many steps.

Measured here (one thread; commands and all screens in docs/results/tasks.md). Defaults (3 numbers in 1..9,
error_rate 0.7, Llama hidden 64 × 3 layers, 800 warm-up steps, 220–410 s to build on the shared box): π_ref
greedy held-out accuracy 0.180 ± 0.017 and pass@16 0.657 ± 0.025 at temperature 1 (seeds 0, 1, 2) — within the
targets greedy ≤ 0.2 and pass@16 ≥ 0.6, greedy at the edge (seed 2: 0.200). On-policy GRPO at the study's settings
(lr 3e-4, β 0.1, 8 samples, 16 prompts/step), 200 steps, 153 s, seed 0: 0.20 → 0.27, still rising slowly —
the plateau ≥ 0.6 criterion is NOT met. The limit is the model, not exploration: a third of π_ref's
samples hold an arithmetic slip, and a π_ref warmed up on 70% correct paths (greedy 0.38–0.41) does not
move under the same GRPO in 200 steps.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

import agro.tasks.builds as builds

NAME = "countdown"
REWARD = "agro.tasks.countdown:reward"  # the trainer's reward_function for this task
CHARS = "0123456789+-*/=;,>:"
OPS = "+-*/"
STRONG_ERROR_RATE = 0.5  # error_rate of the study's stronger data policy


@dataclass(frozen=True)
class Settings(builds.ModelSettings):
    """The numbers, targets and π_ref's share of aimless paths; the tiny Llama and its warm-up are
    `builds.ModelSettings` (here with more warm-up steps)."""

    CACHE_KEY = (NAME, 1)  # the task and its build version: bump the version when a change here alters a build
    num_numbers: int = 3
    number_range: tuple[int, int] = (1, 9)  # every given number ~ U[lo, hi]
    max_value: int = 99  # the generator's paths keep every result ≤ this (the verifier does not ask it)
    target_range: tuple[int, int] = (10, 99)  # targets are kept in [lo, hi]
    heldout_fraction: float = 0.1  # share of all problems reserved for held-out, by prompt hash
    error_rate: float = 0.7  # P(a warm-up completion is a random path that ignores the target)
    num_heldout: int = 500  # held-out problems on which task.json reports π_ref's greedy accuracy
    train_steps: int = 800


@dataclass(frozen=True)
class Problem:
    """One problem: its prompt, its target (the gold answer), its numbers and the path that made it."""

    prompt: str  # "7,3,9,2>25:"
    answer: str  # "25"
    numbers: tuple[int, ...]
    solution: str  # one correct worked solution: "9*3=27;27-2=25;..."


# ----------------------------------------------------------------------------- verifier

STEP = re.compile(r"(0|[1-9][0-9]*)([-+*/])(0|[1-9][0-9]*)=(0|[1-9][0-9]*)")
PROMPT = re.compile(r"((?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*))*)>(0|[1-9][0-9]*):")


def apply(x: int, op: str, y: int) -> int | None:
    """x op y when it is a positive integer (exact division, nothing ≤ 0), else None."""
    if op == "+":
        r = x + y
    elif op == "-":
        r = x - y
    elif op == "*":
        r = x * y
    elif op == "/":
        if y == 0 or x % y:
            return None
        r = x // y
    else:
        return None
    return r if r > 0 else None


def parse_prompt(prompt: str) -> tuple[list[int], int] | None:
    """(numbers, target) of a prompt such as "7,3,9,2>25:", or None."""
    m = PROMPT.fullmatch(prompt.strip())
    return ([int(x) for x in m.group(1).split(",")], int(m.group(2))) if m else None


def check(numbers: list[int], target: int, completion: str) -> bool:
    """Whether completion is a valid solution: exact positive steps on available numbers, all used, target hit."""
    text = completion.split("<", 1)[0].strip()  # up to any special token such as <eos>
    available = list(numbers)
    steps = text.split(";")
    if len(steps) != len(numbers) - 1:
        return False
    value = None
    for step in steps:
        m = STEP.fullmatch(step)
        if m is None:
            return False
        x, op, y, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if apply(x, op, y) != r:
            return False
        for v in (x, y):
            if v not in available:
                return False
            available.remove(v)
        available.append(r)
        value = r
    return len(available) == 1 and value == target


def reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion solves the prompt's problem and reaches the gold target `answer`, else 0.0."""
    parsed = parse_prompt(prompt)
    if parsed is None or answer is None or answer.strip() != str(parsed[1]):
        return 0.0
    return float(check(parsed[0], parsed[1], completion))


# ----------------------------------------------------------------------------- problems


def random_path(numbers: list[int], rng: random.Random, max_value: int) -> tuple[str, int]:
    """(worked solution, final value) of a random valid path using every number: each step takes two
    available numbers uniformly, the larger first, and an operator uniformly among those whose result is a
    positive integer ≤ max_value ('-' of unequal numbers always is; '/' of equal ones too)."""
    available = list(numbers)
    steps = []
    while len(available) > 1:
        i, j = rng.sample(range(len(available)), 2)
        x, y = max(available[i], available[j]), min(available[i], available[j])
        ops = [op for op in OPS if (r := apply(x, op, y)) is not None and r <= max_value]
        op = rng.choice(ops)
        r = apply(x, op, y)
        for k in sorted((i, j), reverse=True):
            available.pop(k)
        available.append(r)
        steps.append(f"{x}{op}{y}={r}")
    return ";".join(steps), available[0]


def sample_problem(rng: random.Random, split: str, settings: Settings) -> Problem:
    """One random problem of the given split (reachable by construction)."""
    while True:
        numbers = [rng.randint(*settings.number_range) for _ in range(settings.num_numbers)]
        solution, target = random_path(numbers, rng, settings.max_value)
        if not settings.target_range[0] <= target <= settings.target_range[1]:
            continue
        prompt = ",".join(map(str, numbers)) + f">{target}:"
        if builds.split_of(prompt, settings.heldout_fraction) == split:
            return Problem(prompt, str(target), tuple(numbers), solution)


def warmup_completion(problem: Problem, error_rate: float, rng: random.Random, settings: Settings) -> str:
    """A warm-up solution: with probability error_rate a fresh random path (ignores the target), else the
    problem's own correct path."""
    if rng.random() < error_rate:
        return random_path(list(problem.numbers), rng, settings.max_value)[0]
    return problem.solution


def max_prompt_tokens(settings: Settings) -> int:
    """Upper bound on the tokens of any prompt ("7,3,9,2>25:")."""
    return settings.num_numbers * (len(str(settings.number_range[1])) + 1) + len(str(settings.target_range[1])) + 1


def max_completion_tokens(settings: Settings) -> int:
    """Upper bound on the tokens of any generated path (correct or not), EOS included."""
    digits = len(str(max(settings.max_value, settings.number_range[1])))
    return (settings.num_numbers - 1) * (3 * digits + 3)  # "x*y=r" and ";" per step; the last ';' is EOS


# ----------------------------------------------------------------------------- π_ref and accuracy

KIT = builds.TaskKit(
    name=NAME, settings_class=Settings, seed_prefix="countdown-", chars=CHARS, sample_problem=sample_problem,
    warmup_completion=lambda p, rng, settings: warmup_completion(p, settings.error_rate, rng, settings),
    reward=reward, budget=lambda problems, settings: max_completion_tokens(settings),
)
build_tokenizer = KIT.build_tokenizer
generate_problems = KIT.generate_problems
evaluate_greedy = KIT.evaluate_greedy
sample_accuracy = KIT.sample_accuracy
build_reference_policy = KIT.build_reference_policy
load_task = KIT.load_task


def load_or_build_reference_policy(cache_dir: str | Path, seed: int = 0, settings: Settings | None = None,
                                   log_every: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
    """(model, tokenizer, path) of π_ref for (settings, seed), from cache_dir/countdown-<hash>-seed<seed>;
    `build_reference_policy` makes a missing or incomplete one first."""
    return KIT.load_or_build(build_reference_policy, cache_dir, seed, settings, log_every)
