"""Rewards for math-style completions: answer equivalence, the built-in reward functions, and a scorer
that runs reward functions with a hard per-call time limit. What a completion answers is `agro.answers`.

A reward function has the signature ``fn(prompt, completion, answer) -> float`` where ``answer`` is
the gold answer of the prompt (a bare answer or a full solution) or None. Built-ins:

* ``exact``: the final answer (`agro.answers.final_answer`: the stated one, else the last number)
  equals the gold answer as an exact rational number (ints, decimals, ``a/b``, ``\\frac{a}{b}``, ``1,000``, percentages); cheap, cannot hang.
* ``math``: the final answer is mathematically equivalent to the gold answer according to
  ``math_verify`` (fractions, LaTeX, intervals, sets, equations, units...).
* ``reasoning_gym``: the task's own verifier on the final answer, for ``reasoning_gym:`` data (`agro.gym`).

Percentages: ``50\\%`` equals ``50%``, ``0.5`` and ``50`` (in both directions), because gold answers
often drop the percent sign the question asked for; ``50\\%`` does not equal ``5000\\%``.
This is ``math_verify``'s own rule, and ``exact_numeric_equal`` follows it.

Why agro extracts answers and compares numbers itself instead of calling math_verify for everything:
equivalence (``math``) is math_verify's; agro keeps two small parts of its own. `extract_answer` (in
`agro.answers`) finds
the *stated* answer of a completion or gold solution (last balanced box, GSM8K ``####``, "the answer
is") in linear time on any text, where math_verify's extraction scans every LaTeX or expression it can
parse and picks by its own priorities (a different answer on many completions, and sympy's cost on
adversarial text); the trainer calls it on every sample. `exact_numeric_equal` (``exact``) compares
exact rationals with the standard library: no sympy import, no time limit needed, so it cannot hang and
runs in-process. tests/test_rewards.py pins both (extraction, exact and math equivalence tables).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from agro import gym
from agro.answers import extract_answer, final_answer, strip_math_delimiters
from agro.errors import AgroError

RewardFn = Callable[[str, str, str | None], float]

# ---------------------------------------------------------------------------------------------
# Gold answers (what a completion answers: agro.answers)
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


def load_reward_function(spec: str) -> RewardFn:
    """Resolve ``"exact"``, ``"math"``, ``"package.module:function"`` or ``"path/to/file.py:function"``.

    Raises ValueError with a one-line message when the spec cannot be resolved to a callable.
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise ValueError(
            f"unknown reward function {spec!r}: expected one of {sorted(BUILTIN_REWARDS)}, "
            "'package.module:function' or 'path/to/file.py:function'"
        )
    if source.endswith(".py"):
        module = _load_module_from_file(source, spec)
    else:
        try:
            module = importlib.import_module(source)
        except Exception as error:
            raise ValueError(
                f"cannot import module {source!r} for reward {spec!r}: {_one_line(error)}"
            ) from None
    if not hasattr(module, attribute):
        raise ValueError(f"reward {spec!r}: {source!r} has no attribute {attribute!r}")
    function = getattr(module, attribute)
    if not callable(function):
        raise ValueError(f"reward {spec!r}: {attribute!r} is a {type(function).__name__}, not callable")
    return function


def _load_module_from_file(path_text: str, spec: str):
    path = Path(path_text).resolve()
    if not path.is_file():
        raise ValueError(f"reward file not found for {spec!r}: {path}")
    module_name = "_agro_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # before exec, so dataclasses/pickle inside it resolve
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise ValueError(f"cannot load reward file {str(path)!r} for {spec!r}: {_one_line(error)}") from None
    return module


def absolute_spec(spec: str) -> str:
    """File specs with an absolute path, so worker processes resolve them the same way."""
    source, _, attribute = spec.rpartition(":")
    return f"{Path(source).resolve()}:{attribute}" if source.endswith(".py") else spec


def _one_line(error: BaseException, max_chars: int = 300) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:max_chars]


# ---------------------------------------------------------------------------------------------
# Scoring with per-call time limits
# ---------------------------------------------------------------------------------------------

WORKER_START_TIMEOUT = 120.0  # seconds for a worker to import the reward function and report ready
POLL_INTERVAL = 0.1  # seconds between checks of busy workers (CPU use, deadlines, a stop request)
BLOCKED_WINDOW = 0.2  # a call that used under BLOCKED_CPU_SHARE of a CPU over this many seconds is blocked
BLOCKED_CPU_SHARE = 0.1
MAX_WORKERS = 32  # workers at most, counting the extra ones started while calls are blocked


class ScoringInterrupted(Exception):
    """`RewardScorer.should_stop` said stop during a batch; its calls were dropped (their workers killed)."""


@dataclass
class RewardResult:
    """Rewards of one batch; failed samples (error, timeout, non-finite value) get 0.0."""

    rewards: list[float]
    errors: int = 0  # the reward function raised
    timeouts: int = 0  # the call exceeded the per-call time limit and was killed
    non_finite: int = 0  # the call returned NaN, inf or a non-number
    first_failure: str | None = None  # description of the first failed sample, for logs
    unscored: int = 0  # calls never finished: the batch stopped once max_failure_fraction was exceeded

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts + self.non_finite

    def record(self, index: int, status: str, reward: float, detail: str | None) -> None:
        self.rewards[index] = reward if status == "ok" else 0.0
        if status == "ok":
            return
        if status == "error":
            self.errors += 1
        elif status == "timeout":
            self.timeouts += 1
        else:
            self.non_finite += 1
        if self.first_failure is None:
            self.first_failure = f"sample {index}: {status}: {detail}"


def _as_reward(value: object) -> float | None:
    """`value` as a finite float, or None for NaN/inf and non-numbers (strings included)."""
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
            return None
        reward = float(value)
    except Exception:
        return None
    return reward if math.isfinite(reward) else None


def _call_reward(
    fn: RewardFn, prompt: str, completion: str, answer: str | None
) -> tuple[str, float, str | None]:
    """(status, reward, detail) of one call; status is "ok", "error" or "non_finite"."""
    try:
        value = fn(prompt, completion, answer)
    except (Exception, SystemExit) as error:
        return "error", 0.0, _one_line(error)
    reward = _as_reward(value)
    if reward is not None:
        return "ok", reward, None
    shown = repr(value) if isinstance(value, float) else f"a {type(value).__name__}"
    return "non_finite", 0.0, f"returned {shown}"


def _serve(conn: multiprocessing.connection.Connection, spec: str, parent_pid: int) -> None:
    """Worker process: load the reward function once, then answer calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeouts just mean "not equal"
    try:
        fn = load_reward_function(spec)
    except ValueError as error:
        conn.send(("load_error", str(error)))
        return
    if spec == "math":
        math_equal("1", "1")  # warm up sympy/latex2sympy so the first real call is not slow
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        index, prompt, completion, answer = request
        conn.send(("result", index, *_call_reward(fn, prompt, completion, answer)))


def _exit_when_orphaned(parent_pid: int) -> None:
    """Backstop for daemon workers: exit even mid-call if the parent died without cleanup."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


class _Worker:
    """One long-lived worker process and the parent's end of its pipe."""

    def __init__(self, context, spec: str) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child_conn, spec, os.getpid()), daemon=True, name="agro-reward-worker"
        )
        self.process.start()
        child_conn.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.task: int | None = None  # index of the sample being scored
        self.deadline = math.inf
        self.blocked = False  # its call has been waiting without using the CPU (sleep, I/O, a lock)
        self._cpu_mark: tuple[float, float | None] = (0.0, None)  # (when, CPU seconds then)

    def assign(self, index: int, prompt: str, completion: str, answer: str | None, timeout: float) -> None:
        self.conn.send((index, prompt, completion, answer))
        self.task = index
        now = time.monotonic()
        self.deadline = now + timeout
        self.blocked = False
        self._cpu_mark = (now, _cpu_state(self.process.pid)[1])

    def update_blocked(self, now: float) -> None:
        """Every BLOCKED_WINDOW s of a call: blocked when it used under BLOCKED_CPU_SHARE of a CPU meanwhile
        and is not waiting for one (a runnable process on a busy machine is not blocked)."""
        since, cpu_then = self._cpu_mark
        if self.task is None or now - since < BLOCKED_WINDOW:
            return
        state, cpu_now = _cpu_state(self.process.pid)
        self.blocked = (state in ("S", "D") and None not in (cpu_now, cpu_then)
                        and cpu_now - cpu_then < BLOCKED_CPU_SHARE * (now - since))
        self._cpu_mark = (now, cpu_now)

    def stop(self) -> None:
        """Ask an idle worker to exit, kill a busy or starting one, and reap it."""
        if self.ready and self.task is None:
            try:
                self.conn.send(None)
                self.process.join(timeout=1.0)
            except OSError:
                pass
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def _cpu_state(pid: int | None) -> tuple[str | None, float | None]:
    """(state letter, user + system CPU seconds) of a process from /proc (Linux); None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None, None


def _stop_all(workers: list[_Worker]) -> None:
    while workers:
        workers.pop().stop()


class RewardScorer:
    """Scores batches with a reward function, with a hard per-call time limit.

    Calls run in long-lived ``spawn`` worker processes fed one sample at a time over pipes; a call
    that exceeds ``timeout`` seconds has its worker killed and counts as a timeout. ``num_workers``
    calls run at a time. A call that waits without using the CPU (sleeping, blocked on I/O or a lock)
    for BLOCKED_WINDOW s stops counting against that limit, and the next call starts in an extra
    worker (MAX_WORKERS in all, or ``max_workers``): so the time limits of calls that hang waiting run
    in parallel, not one after another. Extra workers stop at the end of the batch.
    ``in_process=None`` runs the built-in ``exact`` in the calling process (it cannot hang) and
    everything else in workers; in-process calls have no time limit. ``should_stop``, when set, is
    polled during a batch: once it returns True the batch's calls are dropped and `score` raises
    ScoringInterrupted. Not thread-safe.
    """

    def __init__(
        self,
        spec: str,
        timeout: float = 10.0,
        num_workers: int = 1,
        in_process: bool | None = None,
        max_workers: int | None = None,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.spec = spec
        self.timeout = float(timeout)
        self.num_workers = num_workers
        self.max_workers = max(num_workers, MAX_WORKERS if max_workers is None else max_workers)
        self.should_stop: Callable[[], bool] | None = None
        self.fn = load_reward_function(spec)  # fails fast, in the caller, on a bad spec
        self.in_process = spec == "exact" if in_process is None else in_process
        self._worker_spec = absolute_spec(spec)
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        if not self.in_process:
            self._start_missing_workers()  # start-up overlaps with whatever the caller does next

    def score(
        self,
        prompts: list[str],
        completions: list[str],
        answers: list[str | None],
        max_failure_fraction: float | None = None,
        on_result: Callable[[int, str, str | None], None] | None = None,
    ) -> RewardResult:
        """Rewards for aligned lists of prompts, completions and gold answers.

        ``max_failure_fraction``: stop as soon as more than this fraction of the batch has failed
        (the calls left are counted in ``unscored``). ``on_result(index, status, detail)`` is called
        as each call settles (status "ok", "error", "timeout" or "non_finite").
        """
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        if not len(prompts) == len(completions) == len(answers):
            raise ValueError(
                f"prompts, completions and answers differ in length: "
                f"{len(prompts)}, {len(completions)}, {len(answers)}"
            )
        result = RewardResult(rewards=[0.0] * len(prompts))
        if self.in_process:
            for index, sample in enumerate(zip(prompts, completions, answers)):
                self._check_stop()
                status, reward, detail = _call_reward(self.fn, *sample)
                result.record(index, status, reward, detail)
                if on_result is not None:
                    on_result(index, status, detail)
                if _too_many(result, max_failure_fraction):
                    result.unscored = len(prompts) - index - 1
                    break
        elif prompts:
            self._score_in_workers(prompts, completions, answers, result, max_failure_fraction, on_result)
        return result

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ScoringInterrupted("reward scoring stopped on request")

    def _score_in_workers(self, prompts, completions, answers, result: RewardResult,
                          max_failure_fraction: float | None, on_result) -> None:
        self._start_missing_workers()
        pending = deque(range(len(prompts)))
        try:
            while pending or self._busy():
                self._dispatch(pending, prompts, completions, answers)
                self._wait_and_collect(result, on_result)
                self._check_stop()
                if _too_many(result, max_failure_fraction):
                    result.unscored = len(pending) + len(self._busy())
                    self._drop_busy()
                    return
        except BaseException:
            self._drop_busy()  # busy workers would deliver stale results into the next batch
            raise
        finally:
            self._stop_extra_workers()
            if not self._closed:
                self._start_missing_workers()  # replacements start now, ready by the next batch

    def _busy(self) -> list[_Worker]:
        return [worker for worker in self._workers if worker.task is not None]

    def _dispatch(self, pending: deque, prompts, completions, answers) -> None:
        """Hand pending samples to idle workers while fewer than `num_workers` calls run (blocked calls
        do not count), and start extra workers for them while calls are blocked."""
        now = time.monotonic()
        for worker in self._busy():
            worker.update_blocked(now)
        slots = self.num_workers - sum(not worker.blocked for worker in self._busy())
        for worker in list(self._workers):
            if pending and slots > 0 and worker.ready and worker.task is None:
                index = pending.popleft()
                try:
                    worker.assign(index, prompts[index], completions[index], answers[index], self.timeout)
                except OSError:  # it died while idle: retry the sample on a fresh worker
                    pending.appendleft(index)
                    self._retire(worker)
                    continue
                slots -= 1
        self._start_missing_workers()
        # Workers for the pending calls that free slots will take; while calls are blocked, as many spares as
        # there are blocked calls, so that a slot freed by the next blocked call finds one ready (start-up,
        # ~0.1 s of CPU, is then not on the way).
        blocked = sum(worker.blocked for worker in self._busy())
        unassigned = sum(worker.task is None for worker in self._workers)  # starting, or ready and idle
        extra = min(len(pending), max(slots, blocked)) - unassigned
        for _ in range(min(extra, self.max_workers - len(self._workers))):
            self._workers.append(_Worker(self._context, self._worker_spec))

    def _wait_and_collect(self, result: RewardResult, on_result) -> None:
        """Wait for the next message, deadline or poll; record results, retire timed-out/dead workers."""
        waiting = {
            worker.conn: worker for worker in self._workers if not worker.ready or worker.task is not None
        }
        if not waiting:
            return
        next_deadline = min(
            worker.deadline if worker.ready else worker.started_at + WORKER_START_TIMEOUT
            for worker in waiting.values()
        )
        remaining = min(next_deadline - time.monotonic(), POLL_INTERVAL)
        ready_conns = multiprocessing.connection.wait(list(waiting), timeout=max(0.0, remaining))
        for conn in ready_conns:
            worker = waiting[conn]
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self._handle_dead_worker(worker, result, on_result)
                continue
            if message[0] == "result":
                _, index, status, reward, detail = message
                result.record(index, status, reward, detail)
                worker.task, worker.deadline, worker.blocked = None, math.inf, False
                if on_result is not None:
                    on_result(index, status, detail)
            elif message[0] == "ready":
                worker.ready = True
            else:
                self.close()
                raise ValueError(f"reward worker cannot load {self.spec!r}: {message[1]}")
        now = time.monotonic()
        for worker in list(waiting.values()):
            if worker.task is not None and now >= worker.deadline and worker in self._workers:
                index, detail = worker.task, f"exceeded {self.timeout:g} s"
                result.record(index, "timeout", 0.0, detail)
                self._retire(worker)
                if on_result is not None:
                    on_result(index, "timeout", detail)
            elif not worker.ready and now >= worker.started_at + WORKER_START_TIMEOUT:
                self.close()
                raise RuntimeError(
                    f"reward worker for {self.spec!r} not ready after {WORKER_START_TIMEOUT:g} s"
                )

    def _handle_dead_worker(self, worker: _Worker, result: RewardResult, on_result) -> None:
        worker.process.join(timeout=1.0)
        exit_code = worker.process.exitcode
        if worker.task is None:
            self.close()
            raise RuntimeError(
                f"reward worker for {self.spec!r} exited during start-up (exit code {exit_code})"
            )
        index, detail = worker.task, f"worker process died (exit code {exit_code})"
        result.record(index, "error", 0.0, detail)
        self._retire(worker)
        if on_result is not None:
            on_result(index, "error", detail)

    def _retire(self, worker: _Worker) -> None:
        """Stop a worker and drop it from the pool (`_start_missing_workers` tops the pool up)."""
        self._workers.remove(worker)
        worker.stop()
        worker.task = None  # its sample is settled; it must not time out again

    def _drop_busy(self) -> None:
        for worker in self._busy():
            self._retire(worker)

    def _stop_extra_workers(self) -> None:
        """Back to `num_workers` workers after a batch: the idle extra ones stop."""
        for worker in [w for w in self._workers if w.task is None][: max(0, len(self._workers) - self.num_workers)]:
            self._retire(worker)

    def _start_missing_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._context, self._worker_spec))

    def close(self) -> None:
        """Stop all worker processes; the scorer cannot be used afterwards."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _too_many(result: RewardResult, max_failure_fraction: float | None) -> bool:
    """More than `max_failure_fraction` of the whole batch has already failed."""
    return max_failure_fraction is not None and result.failures / len(result.rewards) > max_failure_fraction


def open_scorer(spec: str, timeout: float) -> RewardScorer:
    """A RewardScorer for a command-line `--reward` spec; a bad spec is an AgroError naming it."""
    try:
        return RewardScorer(spec, timeout=timeout)
    except ValueError as err:
        raise AgroError(f"reward {spec!r}: {err}") from None
