"""Tests for agro.rewards.verifiers (answer equivalence, the built-in rewards), agro.rewards.functions (reward loading)
and agro.rewards.workers (the time-limited scorer)."""

import concurrent.futures
import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agro.rewards.answers import extract_answer
from agro.rewards.functions import RewardResult, load_reward_function
from agro.rewards.verifiers import exact_answer_reward, exact_numeric_equal, math_equal, math_reward
from agro.rewards.workers import RewardScorer, ScoringInterrupted

TESTS_DIR = Path(__file__).parent
REWARD_FNS_FILE = TESTS_DIR / "reward_fns.py"
BY_COMPLETION = f"{REWARD_FNS_FILE}:by_completion"


def _load_equivalence_table() -> list[tuple[str, str, str, bool]]:
    with open(TESTS_DIR / "data" / "math_equivalence.csv", newline="") as file:
        return [
            (row["category"], row["gold"], row["prediction"], row["equal"] == "1")
            for row in csv.DictReader(file)
        ]


EQUIVALENCE_TABLE = _load_equivalence_table()


# --------------------------------------------------------------------------------------------
# math_equal / exact_numeric_equal
# --------------------------------------------------------------------------------------------


def test_equivalence_table_covers_every_category_with_both_outcomes():
    assert len(EQUIVALENCE_TABLE) >= 60
    categories = {
        "fraction",
        "decimal",
        "percentage",
        "latex",
        "interval",
        "set",
        "equation",
        "units",
        "negative",
        "thousands",
    }
    for category in categories:
        outcomes = {equal for row_category, _, _, equal in EQUIVALENCE_TABLE if row_category == category}
        assert outcomes == {True, False}, category


@pytest.mark.parametrize(
    ("category", "gold", "prediction", "equal"),
    EQUIVALENCE_TABLE,
    ids=[f"{category}:{gold}|{prediction}" for category, gold, prediction, _ in EQUIVALENCE_TABLE],
)
def test_math_equal_table(category, gold, prediction, equal):
    assert math_equal(gold, prediction) is equal


@pytest.mark.parametrize(
    "garbage", ["", "   ", "\\frac{", "}{", "((((", "\\boxed{", "$", "\\text{", "1/0", "x=="]
)
def test_math_equal_returns_false_on_garbage(garbage):
    assert math_equal("1", garbage) is False
    assert math_equal(garbage, "1") is False


def test_math_equal_works_outside_the_main_thread():
    # math_verify's signal.alarm timeouts raise in other threads; math_equal must not use them there.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(math_equal, "\\frac{1}{2}", "0.5").result() is True
        assert pool.submit(math_equal, "\\frac{1}{2}", "2").result() is False


@pytest.mark.parametrize(
    ("gold", "prediction", "equal"),
    [
        ("72", "72", True),
        ("72", "72.00", True),
        ("72", "+72", True),
        ("0.5", "1/2", True),
        ("1/2", "\\frac{1}{2}", True),
        ("3/4", "\\dfrac{6}{8}", True),
        ("-0.5", "-\\frac{1}{2}", True),
        ("-0.5", "\\frac{-1}{2}", True),
        ("1,000", "1000", True),
        ("1000", "1{,}000", True),
        ("1234567.5", "1,234,567.50", True),
        ("18", "$18", True),
        ("18", "\\$18", True),
        ("18", "$18$", True),
        ("50\\%", "50%", True),
        ("50\\%", "0.5", True),
        ("0.5", "50%", True),
        ("50%", "50", True),
        (".5", "0.5", True),
        ("1/3", "0.333333", False),
        ("0.33", "1/3", False),
        ("50%", "5000%", False),
        ("1,000", "100", False),
        ("1,00", "100", False),
        ("72", "-72", False),
        ("1/0", "1/0", False),
        ("1e3", "1000", False),
        ("x=3", "3", False),
        ("\\sqrt{4}", "2", False),
        ("1" * 300, "1" * 300, False),
        ("", "", False),
    ],
)
def test_exact_numeric_equal(gold, prediction, equal):
    assert exact_numeric_equal(gold, prediction) is equal


# --------------------------------------------------------------------------------------------
# extract_answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so the result is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\boxed{ \\sqrt{\\frac{a^{2}}{b_{1}}} }", "\\sqrt{\\frac{a^{2}}{b_{1}}}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed {7}", "7"),
        ("\\boxed{1} and a truncated \\boxed{2", "1"),
        ("\\boxed{3} then an empty \\boxed{ }", "3"),
        ("\\boxed{5} #### 6 The answer is 7", "5"),
        ("Janet has 3 apples.\n#### 1,000", "1,000"),
        ("#### 4\nsome trailing text\n#### 72", "72"),
        ("We get 4. The answer is 12.", "12"),
        ("THE ANSWER IS $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("The final answer is $5$. I hope it is correct.", "5"),
        ("Answer: 3.5 cm. More text", "3.5 cm"),
        ("**Answer:** 17", "17"),
        ("The answer is: x = 2\nCheck: 2 + 2 = 4", "x = 2"),
        ("Answer: 1\nActually the answer is 2.", "2"),
        ("Answer:\n", None),
        ("no final answer here { \\boxed", None),
        ("", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 200_000,
        "\\boxed{" + "{" * 1_000_000,
        "\\boxed{" + "{" * 200_000 + "}" * 200_001,
        "the answer is " * 100_000,
        "Answer:\n" * 100_000,
        "####" * 300_000,
        "\\boxed" + " " * 1_000_000,
        "\\" * 1_000_001,
        "answer" + " " * 1_000_000 + "is",
    ],
    ids=[
        "unclosed-boxes",
        "open-braces",
        "deep-nesting",
        "answer-is",
        "answer-lines",
        "hashes",
        "spaces",
        "backslashes",
        "answer-spaces",
    ],
)
def test_extract_answer_is_linear_on_adversarial_input(text):
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 2.0  # ~0.5 s per MB; backtracking would take minutes


_TOKENS = [
    "\\boxed{",
    "\\fbox{",
    "{",
    "}",
    "\\",
    "\\{",
    "\\}",
    "####",
    "the answer is ",
    "Answer:",
    "$",
    "\n",
    " ",
    ".",
    "**",
    "1",
    "x",
]


@settings(max_examples=150, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.tuples(st.lists(st.sampled_from(_TOKENS), max_size=200), st.integers(1, 300)).map(
            lambda parts_and_repeats: "".join(parts_and_repeats[0]) * parts_and_repeats[1]
        ),
    )
)
def test_extract_answer_never_raises_and_is_fast(text):
    answer = extract_answer(text)
    assert answer is None or (isinstance(answer, str) and answer == answer.strip() and answer)


_PLAIN_TEXT = st.text(st.characters(blacklist_characters="{}\\", blacklist_categories=["Cs"]), max_size=8)
_LATEX_TOKENS = st.sampled_from(["\\frac", "\\{", "\\}", "\\\\", "\\left(", "\\right)", "^", "_", "\\sqrt"])
_BALANCED = st.recursive(
    st.one_of(_PLAIN_TEXT, _LATEX_TOKENS),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map("".join), inner.map(lambda text: "{" + text + "}")
    ),
    max_leaves=40,
)


@settings(max_examples=200, deadline=1000)
@given(prefix=st.text(max_size=60), content=_BALANCED)
def test_extract_answer_returns_last_boxed_content(prefix, content):
    assume(content.strip() and "\\boxed" not in content and "\\fbox" not in content)
    assert extract_answer(prefix + "\\boxed{" + content + "}") == content.strip()


# --------------------------------------------------------------------------------------------
# Reward functions and their loading
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward_fn", [exact_answer_reward, math_reward])
def test_builtin_rewards(reward_fn):
    assert reward_fn("p", "so \\boxed{1,000}", "1000") == 1.0
    assert reward_fn("p", "The answer is 0.5.", "1/2") == 1.0
    assert reward_fn("p", "The answer is 0.5.", "Half of it...\n#### 0.5") == 1.0
    assert reward_fn("p", "#### 12", "so it is $\\boxed{12}$") == 1.0
    assert reward_fn("p", "\\boxed{12}", "\\boxed{13}") == 0.0
    assert reward_fn("p", "I think it is 12", "12") == 1.0  # no stated answer: the last number counts
    assert reward_fn("p", "12 is not it, 13", "12") == 0.0
    assert reward_fn("p", "I do not know", "12") == 0.0  # no answer at all
    assert reward_fn("p", "\\boxed{12}", None) == 0.0


def test_math_reward_accepts_what_exact_rejects():
    assert math_reward("p", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0
    assert exact_answer_reward("p", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 0.0


def test_load_reward_function_resolves_all_spec_forms():
    assert load_reward_function("exact") is exact_answer_reward
    assert load_reward_function("math") is math_reward
    assert load_reward_function("reward_fns:completion_length")("p", "abc", None) == 3
    from_file = load_reward_function(f"{REWARD_FNS_FILE}:completion_length")
    assert from_file("p", "abcd", None) == 4
    relative = os.path.relpath(REWARD_FNS_FILE)
    assert load_reward_function(f"{relative}:completion_length") is from_file


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exactly", "unknown reward function 'exactly'"),
        ("reward_fns:", "unknown reward function"),
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("reward_fns:missing", "has no attribute 'missing'"),
        ("reward_fns:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not callable"),
        ("does/not/exist.py:fn", "reward file not found"),
        (f"{REWARD_FNS_FILE}:missing", "has no attribute 'missing'"),
    ],
)
def test_load_reward_function_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        load_reward_function(spec)
    assert "\n" not in str(error.value)


def test_load_reward_function_reports_broken_file(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def fn(:\n")
    with pytest.raises(ValueError, match="cannot load reward file .*SyntaxError"):
        load_reward_function(f"{broken}:fn")


# --------------------------------------------------------------------------------------------
# RewardScorer
# --------------------------------------------------------------------------------------------


def _is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_until_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _is_running(pid):
            return True
        time.sleep(0.05)
    return False


def test_exact_scorer_runs_in_process_and_counts_nothing_for_plain_failures():
    with RewardScorer("exact") as scorer:
        assert scorer.in_process
        result = scorer.score(
            ["p"] * 4, ["\\boxed{3}", "\\boxed{4}", "no answer", "#### 3"], ["3", "3", "3", None]
        )
    assert result == RewardResult(rewards=[1.0, 0.0, 0.0, 0.0])
    assert result.failures == 0


def test_in_process_scorer_counts_errors_and_non_finite():
    with RewardScorer("reward_fns:by_completion", in_process=True) as scorer:
        result = scorer.score(["p"] * 5, ["ok", "raise", "nan", "string", "huge"], [None] * 5)
    assert result.rewards == [1.0, 0.0, 0.0, 0.0, 1e300]
    assert (result.errors, result.timeouts, result.non_finite, result.failures) == (1, 0, 2, 3)
    assert result.first_failure == "sample 1: error: RuntimeError: user reward failed"


def test_worker_scorer_isolates_every_kind_of_failure():
    completions = [
        "ok",
        "raise",
        "nan",
        "inf",
        "string",
        "none",
        "huge",
        "hang",
        "exit",
        "die",
        "ok",
        "sleep",
    ]
    with RewardScorer(BY_COMPLETION, timeout=1.0, num_workers=2) as scorer:
        assert not scorer.in_process
        start = time.monotonic()
        result = scorer.score(["p"] * len(completions), completions, ["a"] * len(completions))
        elapsed = time.monotonic() - start
    assert result.rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e300, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert (result.errors, result.timeouts, result.non_finite) == (3, 2, 4)  # raise/exit/die; hang/sleep
    assert result.failures == 9
    assert elapsed < 8.0  # the two hung calls were cut at ~1 s each, not waited for


def test_worker_is_replaced_after_a_timeout_or_crash_and_stopped_on_close():
    with RewardScorer(BY_COMPLETION, timeout=1.0) as scorer:
        first_pid = int(scorer.score(["p"], ["pid"], [None]).rewards[0])
        hung = scorer.score(["p"], ["hang"], [None])
        assert hung.timeouts == 1 and hung.first_failure == "sample 0: timeout: exceeded 1 s"
        assert _wait_until_gone(first_pid, 5.0)
        again = scorer.score(["p"] * 3, ["ok", "pid", "raise"], [None] * 3)
        assert again.rewards[0] == 1.0 and again.errors == 1 and again.timeouts == 0
        second_pid = int(again.rewards[1])
        assert second_pid != first_pid and _is_running(second_pid)
        died = scorer.score(["p"], ["die"], [None])
        assert died.errors == 1 and died.first_failure == "sample 0: error: worker process died (exit code 7)"
        assert _wait_until_gone(second_pid, 5.0)
        third_pid = int(scorer.score(["p"], ["pid"], [None]).rewards[0])
    assert _wait_until_gone(third_pid, 5.0)


@pytest.mark.slow
def test_calls_that_hang_waiting_time_out_side_by_side_and_are_reported_as_they_do():
    """One worker, 8 calls that sleep: a call waiting without using the CPU frees its slot, so the next starts
    in an extra worker; their 2 s limits overlap (one after another they take 16 s, and more with restarts)."""
    n, timeout = 8, 2.0
    with RewardScorer(BY_COMPLETION, timeout=timeout) as scorer:
        scorer.score(["p"], ["ok"], [None])  # started
        settled = []
        start = time.monotonic()
        result = scorer.score(["p"] * n, ["sleep"] * n, [None] * n,
                              on_result=lambda i, status, detail: settled.append((time.monotonic() - start, status)))
        elapsed = time.monotonic() - start
        assert result.timeouts == n and result.unscored == 0 and len(settled) == n
        assert all(status == "timeout" for _, status in settled)
        assert timeout <= settled[0][0] < timeout + 1.5  # reported when it times out, not at the end
        assert elapsed < n * timeout, elapsed  # 4.2 s on 2 idle cores, 6.6 s with 6 busy processes
        assert len(scorer._workers) == 1  # the extra workers stop with the batch
        # calls that use the CPU are not run side by side beyond num_workers
        start = time.monotonic()
        result = scorer.score(["p"] * 2, ["hang"] * 2, [None] * 2)
        assert result.timeouts == 2 and time.monotonic() - start >= 2 * timeout


@pytest.mark.slow
def test_a_batch_stops_once_too_many_calls_failed_and_on_request():
    with RewardScorer(BY_COMPLETION, timeout=2.0) as scorer:
        result = scorer.score(["p"] * 20, ["sleep"] * 20, [None] * 20, max_failure_fraction=0.25)
        # stopped at the 6th failure (6 > 0.25 × 20), give or take calls that timed out in the same poll
        assert 6 <= result.failures < 10 and result.failures + result.unscored == 20
        with RewardScorer("reward_fns:by_completion", in_process=True) as in_process:
            result = in_process.score(["p"] * 4, ["raise", "nan", "ok", "ok"], [None] * 4, max_failure_fraction=0.25)
        assert (result.failures, result.unscored, result.rewards) == (2, 2, [0.0, 0.0, 0.0, 0.0])
        pids = set()

        def stop() -> bool:
            pids.update(worker.process.pid for worker in scorer._workers)
            return time.monotonic() > start + 0.5

        scorer.should_stop = stop
        start = time.monotonic()
        with pytest.raises(ScoringInterrupted):
            scorer.score(["p"] * 4, ["sleep"] * 4, [None] * 4)
        assert time.monotonic() - start < 1.5
        scorer.should_stop = None
        assert scorer.score(["p"], ["ok"], [None]).rewards == [1.0]  # usable after an interruption
    for pid in pids:
        assert _wait_until_gone(pid, 5.0), pid


def test_worker_scorer_matches_in_process_results_for_a_module_spec():
    completions = [f"completion {'x' * index}" for index in range(40)]
    answers = [None] * len(completions)
    with RewardScorer("reward_fns:completion_length", num_workers=2, in_process=False) as workers:
        with RewardScorer("reward_fns:completion_length", in_process=True) as in_process:
            assert workers.score(["p"] * 40, completions, answers) == in_process.score(
                ["p"] * 40, completions, answers
            )


@pytest.mark.slow
def test_math_scorer_times_out_a_hostile_expression_and_keeps_scoring():
    with RewardScorer("math", timeout=2.0) as scorer:
        assert not scorer.in_process
        result = scorer.score(
            ["p"] * 3,
            ["\\boxed{9^{9^{9^{9^{9}}}}}", "so \\boxed{\\dfrac{1}{2}}", "\\boxed{2}"],
            ["1", "#### 0.5", "3"],
        )
        assert result.rewards == [0.0, 1.0, 0.0]
        assert (result.timeouts, result.errors, result.non_finite) == (1, 0, 0)
        after = scorer.score(["p"] * 2, ["\\boxed{[1,2)}", "\\boxed{(1,2)}"], ["[1,2)", "[1,2)"])
        assert after.rewards == [1.0, 0.0] and after.failures == 0


def test_scorer_argument_and_state_errors():
    with pytest.raises(ValueError, match="differ in length"):
        RewardScorer("exact").score(["p"], ["c", "d"], [None])
    with pytest.raises(ValueError, match="timeout must be > 0"):
        RewardScorer("exact", timeout=0)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        RewardScorer("exact", num_workers=0)
    with pytest.raises(ValueError, match="no attribute"):
        RewardScorer("reward_fns:missing")
    scorer = RewardScorer("exact")
    scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score([], [], [])


def test_workers_exit_when_the_parent_is_killed_mid_call():
    parent_script = textwrap.dedent(f"""
        from agro.rewards.workers import RewardScorer
        if __name__ == "__main__":
            scorer = RewardScorer({BY_COMPLETION!r}, timeout=600)
            print(int(scorer.score(["p"], ["pid"], [None]).rewards[0]), flush=True)
            scorer.score(["p"], ["hang"], [None])
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_script], stdout=subprocess.PIPE, text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        time.sleep(0.3)  # let the worker start the endless call
        assert _is_running(worker_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_until_gone(worker_pid, 5.0)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_numbers_of_other_types_are_rewards():
    completions = ["numpy", "decimal", "fraction", "bool", "big_int", "complex"]
    with RewardScorer("reward_fns:numeric_types", in_process=True) as scorer:
        result = scorer.score(["p"] * 6, completions, [None] * 6)
    assert result.rewards == [0.25, 0.5, 0.75, 1.0, 0.0, 0.0]
    assert result.non_finite == 2  # 10**400 overflows a float; complex is not a real number
