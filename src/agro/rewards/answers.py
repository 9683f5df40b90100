"""What a completion answers, and whether the length limit cut it.

`extract_answer` finds the answer a completion or gold solution states (last balanced box, GSM8K
`####`, "the answer is") in linear time on any text. Small instruct models state none: they answer in
plain text ("7 * 9 = 63", "The sum is 11."), so the built-in rewards score `final_answer`:

    final_answer(text) = extract_answer(text)        the stated answer: \\boxed{}, ####, "the answer is"
                         or last_number(text)        else the completion's final number ("63", "-3/4", "0.5")

A completion cut at max_completion_length (no EOS at its end) has not finished its answer; its last
number is often one of the problem's operands. Training on such rewards teaches longer preambles, so
`truncated_completions` decides what a cut completion counts for (docs/guide/data-and-rewards.md). The
reward functions see it all the same (their `rewards/NAME/mean` counts it); the rule then applies to its
reward (`agro.rewards.scoring.score`):

    zero   reward 0 (the default)
    mask   weight 0: out of its group's baseline and out of the loss (DAPO's overlong filtering)
    keep   scored like any other completion
"""

from __future__ import annotations

import re

_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Structural braces, skipping escaped characters so that `\{`, `\}` (LaTeX set braces) and
# `\\` (line break) never count; scanning pairs keeps backslash parity right.
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_ANSWER_IS_RE = re.compile(r"\banswer(?:\s+is\b|\s*:)", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.\s")


def extract_answer(text: str) -> str | None:
    """Final answer of a completion or gold solution, or None when it states none.

    Priority: the last non-empty ``\\boxed{...}``/``\\fbox{...}`` with balanced braces; else the
    line after the last ``####`` (GSM8K); else the last "the answer is X" / "Answer: X" (up to
    the end of the line or sentence, trailing period, ``**`` and ``$...$`` removed).
    Runs in linear time on any input.
    """
    if not isinstance(text, str):
        return None
    for extract in (_last_boxed, _after_last_hashes, _after_last_answer_is):
        answer = extract(text)
        if answer:
            return answer
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last balanced, non-empty box; one pass matches every brace (no rescans)."""
    box_brace_positions = [match.end() - 1 for match in _BOX_OPEN_RE.finditer(text)]
    if not box_brace_positions:
        return None
    closing_of: dict[int, int] = {}
    open_stack: list[int] = []
    for token in _BRACE_TOKEN_RE.finditer(text, box_brace_positions[0]):
        symbol = token.group()
        if symbol == "{":
            open_stack.append(token.start())
        elif symbol == "}" and open_stack:
            closing_of[open_stack.pop()] = token.start()
    for brace in reversed(box_brace_positions):
        if brace in closing_of:
            content = text[brace + 1 : closing_of[brace]].strip()
            if content:
                return content
    return None


def _after_last_hashes(text: str) -> str | None:
    position = text.rfind("####")
    if position < 0:
        return None
    line = text[position + 4 :].strip().split("\n", 1)[0]
    return _clean_inline_answer(line)


def _after_last_answer_is(text: str) -> str | None:
    for match in reversed(list(_ANSWER_IS_RE.finditer(text))):
        line_end = text.find("\n", match.end())
        line = text[match.end() : line_end if line_end >= 0 else len(text)]
        answer = _clean_inline_answer(_SENTENCE_END_RE.split(line.lstrip(" \t:*"), maxsplit=1)[0])
        if answer:
            return answer
    return None


def _clean_inline_answer(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip().strip("*").strip()
    return strip_math_delimiters(answer).rstrip(".").strip()


def strip_math_delimiters(text: str) -> str:
    """`$x$`, `$$x$$`, `\\(x\\)`, `\\[x\\]` -> `x` (one level)."""
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left) : len(text) - len(right)].strip()
    return text


def final_answer(text: str) -> str | None:
    """The stated answer (`extract_answer`), else the completion's last number: what a small instruct model
    that writes "7 * 9 = 63" answers."""
    if not isinstance(text, str):
        return None
    return extract_answer(text) or last_number(text)


# a number not glued to a preceding word character: its sign (- or the minus sign U+2212) only when nothing but
# space or an operator precedes it ("= -4", "(-4"); thousands separators only in whole groups; a decimal part;
# a fraction a/b; a bare decimal ".5"
_NUMBER_RE = re.compile(r"(?<![\w.])(?:(?<![\w)\]])[-\u2212])?"
                        r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+|(?=\.\d))(?:\.\d+)?(?:/\d+)?")
_MAX_TAIL_CHARS = 2000  # the final number is in the completion's end; bounds the scan on any input


def last_number(text: str) -> str | None:
    """The completion's final number as written (thousands separators removed), or None."""
    tail = text[-_MAX_TAIL_CHARS:]
    numbers = _NUMBER_RE.findall(tail)
    return numbers[-1].replace(",", "").replace("\u2212", "-") if numbers else None


def is_truncated(completion_ids: list[int], eos_ids: set[int]) -> bool:
    """Cut at the length limit: it does not end with an end-of-sequence token."""
    return not completion_ids or completion_ids[-1] not in eos_ids
