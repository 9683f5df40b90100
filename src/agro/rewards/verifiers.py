"""What a right answer is: the gold answer of a problem, answer equivalence, and the built-in per-sample
rewards. How reward functions are called is `agro.rewards.functions`, where the calls run (in process or in worker
processes, time limits, failure accounting) `agro.rewards.workers`; what a completion answers is
`agro.rewards.answers`.

A per-sample reward function is ``fn(prompt, completion, answer) -> float``, where ``answer`` is the gold
answer of the prompt (a bare answer or a full solution) or None. Built-ins:

* ``exact``: the final answer (`agro.rewards.answers.final_answer`: the stated one, else the last number)
  equals the gold answer as an exact rational number (ints, decimals, ``a/b``, ``\\frac{a}{b}``, ``1,000``,
  percentages); cheap, cannot hang.
* ``math``: the final answer is mathematically equivalent to the gold answer according to
  ``math_verify`` (fractions, LaTeX, intervals, sets, equations, units...).
* ``reasoning_gym``: the task's own verifier on the final answer, for ``reasoning_gym:`` data (`agro.gym`).

Percentages: ``50\\%`` equals ``50%``, ``0.5`` and ``50`` (in both directions), because gold answers
often drop the percent sign the question asked for; ``50\\%`` does not equal ``5000\\%``.
This is ``math_verify``'s own rule, and ``exact_numeric_equal`` follows it.

Why agro extracts answers and compares numbers itself instead of calling math_verify for everything:
equivalence (``math``) is math_verify's; agro keeps two small parts of its own. `extract_answer` (in
`agro.rewards.answers`) finds the *stated* answer of a completion or gold solution (last balanced box, GSM8K
``####``, "the answer is") in linear time on any text, where math_verify's extraction scans every LaTeX or
expression it can parse and picks by its own priorities (a different answer on many completions, and
sympy's cost on adversarial text); the trainer calls it on every sample. `exact_numeric_equal` (``exact``)
compares exact rationals with the standard library: no sympy import, no time limit needed, so it cannot
hang and runs in-process. tests/test_rewards.py pins both (extraction, exact and math equivalence tables).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from fractions import Fraction

import agro.gym as gym
from agro.rewards.answers import extract_answer, final_answer, strip_math_delimiters

RewardFn = Callable[[str, str, str | None], float]

# ---------------------------------------------------------------------------------------------
# Gold answers (what a completion answers: agro.rewards.answers)
# ---------------------------------------------------------------------------------------------
def _reference_answer(answer: str) -> str:
    """Gold answer as a bare answer: extracted when it is a full solution (boxed or ####), the entry's answer
    when it is a reasoning-gym entry (`agro.gym`)."""
    if (entry := gym.decode_answer(answer)) is not None:
        return str(entry["answer"])
    if "\\boxed" in answer or "\\fbox" in answer or "####" in answer:
        return extract_answer(answer) or answer
    return answer


# ---------------------------------------------------------------------------------------------
# Answer equivalence
# ---------------------------------------------------------------------------------------------

_MAX_NUMBER_CHARS = 200  # longer strings are not plain numbers; bounds Fraction's work
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN_NUMBER_RE = re.compile(rf"(?P<sign>[+-]?)(?P<num>{_DECIMAL})(?:/(?P<den>{_DECIMAL}))?")
_LATEX_FRACTION_RE = re.compile(
    rf"(?P<sign>-?)\\[dt]?frac\{{(?P<num>[+-]?{_DECIMAL})\}}\{{(?P<den>[+-]?{_DECIMAL})\}}"
)
_THOUSANDS_SEPARATOR = r"(?:,|\{,\}|\\,|\\ | )"
_GROUPED_NUMBER_RE = re.compile(rf"[+-]?\d{{1,3}}(?:{_THOUSANDS_SEPARATOR}\d{{3}})+(?:\.\d+)?")
_SEPARATOR_RE = re.compile(_THOUSANDS_SEPARATOR)


def _remove_thousands_separators(text: str) -> str:
    """`1,000`, `1{,}000`, `1\\,000`, `1 000` -> `1000`; anything else unchanged."""
    if _GROUPED_NUMBER_RE.fullmatch(text):
        return _SEPARATOR_RE.sub("", text)
    return text


def _parse_number(text: str) -> tuple[Fraction, bool] | None:
    """(exact value, has percent sign) of a plain numeric answer, or None if it is not one."""
    text = strip_math_delimiters(text.strip())
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    is_percent = text.endswith("%")
    if is_percent:
        text = text.removesuffix("%").removesuffix("\\").rstrip()
    text = text.removeprefix("\\$").removeprefix("$").strip()
    text = _remove_thousands_separators(text)
    match = _PLAIN_NUMBER_RE.fullmatch(text) or _LATEX_FRACTION_RE.fullmatch(text)
    if match is None:
        return None
    value = Fraction(match["num"])
    if match["den"] is not None:
        denominator = Fraction(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return (-value if match["sign"] == "-" else value), is_percent


def exact_numeric_equal(gold: str, prediction: str) -> bool:
    """Exact rational equality of two numeric answers (ints, decimals, `a/b`, `\\frac{a}{b}`,
    `1,000`, `$5`, `50%`); False when either is not a plain number. No sympy, bounded time."""
    try:
        parsed_gold, parsed_prediction = _parse_number(gold), _parse_number(prediction)
    except (TypeError, ValueError, AttributeError):
        return False
    if parsed_gold is None or parsed_prediction is None:
        return False
    (gold_value, gold_percent), (prediction_value, prediction_percent) = parsed_gold, parsed_prediction
    if gold_percent == prediction_percent:
        return gold_value == prediction_value
    percent_value, other_value = (
        (gold_value, prediction_value) if gold_percent else (prediction_value, gold_value)
    )
    return other_value in (percent_value, percent_value / 100)


def math_equal(gold: str, prediction: str, timeout: float = 5.0) -> bool:
    """Mathematical equivalence of two bare answers via math_verify; False on any failure.

    Both are normalized (math delimiters, thousands separators), wrapped in ``\\boxed{}`` and
    parsed with math_verify's LaTeX and plain-expression extractors, so LaTeX and plain text mix
    freely. ``timeout`` bounds each math_verify parse/compare step, rounded up to whole seconds
    (math_verify uses signal.alarm); it only applies in the main thread, elsewhere the caller must
    bound the time (RewardScorer's worker processes do).
    """
    # Imported here: math_verify pulls in sympy (~0.5 s), which only this function needs.
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    try:
        gold_text, prediction_text = (
            _remove_thousands_separators(strip_math_delimiters(answer.strip()))
            for answer in (gold, prediction)
        )
        if not gold_text or not prediction_text:
            return False
        use_alarm = timeout > 0 and threading.current_thread() is threading.main_thread()
        seconds = max(1, math.ceil(timeout)) if use_alarm else None
        config = [LatexExtractionConfig(), ExprExtractionConfig()]
        parsed_gold, parsed_prediction = (
            parse("\\boxed{" + text + "}", extraction_config=config, parsing_timeout=seconds)
            for text in (gold_text, prediction_text)
        )
        if not parsed_gold or not parsed_prediction:
            return False
        return bool(verify(parsed_gold, parsed_prediction, timeout_seconds=seconds))
    except (Exception, TimeoutException):
        return False


# ---------------------------------------------------------------------------------------------
# Reward functions
# ---------------------------------------------------------------------------------------------


def exact_answer_reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion's final answer (`final_answer`) exactly equals the gold number, else 0.0."""
    if answer is None:
        return 0.0
    prediction = final_answer(completion)
    return float(prediction is not None and exact_numeric_equal(_reference_answer(answer), prediction))


def math_reward(prompt: str, completion: str, answer: str | None) -> float:
    """1.0 when the completion's final answer (`final_answer`) is math-equivalent to the gold answer, else 0.0."""
    if answer is None:
        return 0.0
    prediction = final_answer(completion)
    return float(prediction is not None and math_equal(_reference_answer(answer), prediction))


BUILTIN_REWARDS: dict[str, RewardFn] = {"exact": exact_answer_reward, "math": math_reward,
                                        "reasoning_gym": gym.reward}
