"""Reward calls in the trainer's process, as TRL makes them (a closure's state persists), with a time
limit where one can be kept.

On Unix, on the main thread, a watchdog thread signals the main thread (SIGALRM, `signal.pthread_kill`)
once a call passes its limit, and again every RESIGNAL_INTERVAL s until it returns: the handler raises
`CallTimeout` into the call (a BaseException, as Ctrl-C raises KeyboardInterrupt), which counts it as a
timeout. The timer itself (`setitimer`) is not used, so code that sets its own alarm (math_verify) keeps
its own; its handler may take a signal of ours once our limit has passed, and the next one is ours. A call
inside C code that does not return to Python (a long regex, a tensor op) is cut when it does; one that
catches BaseException and carries on gets it again every RERAISE_AFTER s, and is not stopped. Off the main
thread, or where `pthread_kill` is missing (Windows), a synchronous call runs without a limit: mark the
function `agro.rewards.functions.isolated` to keep one. ``async def`` functions get their limit from the
event loop (`asyncio.wait_for`) everywhere; one function's calls of a batch run concurrently, and a stop
request (`check_stop`) cancels those not yet settled.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures

from agro.rewards.functions import CallLog, CallTimeout, call_logged, failed, one_line, outcomes, submit

RESIGNAL_INTERVAL = 0.05  # seconds between signals to a call past its limit
RERAISE_AFTER = 1.0  # a call that swallowed CallTimeout gets it again after this many seconds
STOP_POLL = 0.05  # seconds between polls of check_stop while async calls run


class _Watchdog:
    """A daemon thread that signals the main thread while the armed deadline is past (one a process)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agro-reward-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def _run(self) -> None:
        main = threading.main_thread().ident
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                signal.pthread_kill(main, signal.SIGALRM)
                self._cond.wait(RESIGNAL_INTERVAL)


_watchdog = _Watchdog()


class TimeLimit:
    """Per-call time limits for the calls of one batch (a context manager: our SIGALRM handler is installed
    for the batch, the previous one restored after). `enforced` is False where no limit can be kept."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.enforced = hasattr(signal, "pthread_kill") and threading.current_thread() is threading.main_thread()
        self._deadline: float | None = None
        self._raised_at = 0.0
        self._previous = None

    def __enter__(self) -> TimeLimit:
        if self.enforced:
            self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.enforced:
            _watchdog.disarm()
            self._deadline = None
            signal.signal(signal.SIGALRM, self._previous)

    def _on_alarm(self, signum, frame) -> None:
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline and now - self._raised_at >= RERAISE_AFTER:
            self._raised_at = now
            raise CallTimeout

    def call(self, fn: Callable, batched: bool, args, log_names: tuple[str, ...]) -> tuple[list, tuple]:
        """`call_logged` of one call, cut at the limit where it is enforced."""
        count = len(args["completions"]) if batched else 1
        try:
            if self.enforced:
                self._deadline, self._raised_at = time.monotonic() + self.timeout, 0.0
                _watchdog.arm(self.timeout)
            try:
                return call_logged(fn, batched, args, log_names, self.timeout)
            finally:
                self._deadline = None
                if self.enforced:
                    _watchdog.disarm()
        except CallTimeout:  # raised between the call's return and the disarm: it ran past its limit all the same
            self._deadline = None
            _watchdog.disarm()
            return failed("timeout", f"exceeded {self.timeout:g} s", count), ({}, {})


def run_calls(fn: Callable, batched: bool, asynchronous: bool, calls: list[tuple[tuple | dict, tuple[str, ...]]],
              timeout: float, settle: Callable[[int, list, tuple], bool], check_stop: Callable[[], None]) -> int:
    """Make `calls` ((args, log keyword names) each) in this process, in order; `settle(task, outcomes,
    logged)` records each and returns True to stop the batch; `check_stop` raises to interrupt it between
    calls. Returns how many calls were not made."""
    if asynchronous:
        return _run_concurrently(fn, batched, calls, timeout, settle, check_stop)
    with TimeLimit(timeout) as limit:
        for task, (args, log_names) in enumerate(calls):
            check_stop()
            if settle(task, *limit.call(fn, batched, args, log_names)):
                return len(calls) - task - 1
    return 0


def _run_concurrently(fn: Callable, batched: bool, calls: list, timeout: float, settle,
                      check_stop: Callable[[], None]) -> int:
    """An async function's calls, all started at once on agro's event loop, settled in order; `check_stop` is
    polled before they start and every STOP_POLL s while waiting (its exception cancels the calls not settled)."""
    check_stop()
    started = []
    for args, log_names in calls:
        log = CallLog(len(args["completions"]) if batched else 1)
        try:
            value = fn(**{**args, **log.keywords(log_names)}) if batched else fn(*args)
            started.append((submit(value, timeout), log, None))
        except (Exception, SystemExit) as error:
            started.append((None, log, error))
    deadline = time.monotonic() + timeout + 1.0  # a second more for a coroutine that blocks the loop
    try:
        for task, (future, log, error) in enumerate(started):
            count = log.size
            if future is not None:
                while not future.done() and (left := deadline - time.monotonic()) > 0:
                    check_stop()
                    futures.wait([future], timeout=min(STOP_POLL, left))
                if not future.done():
                    result = failed("timeout", f"exceeded {timeout:g} s", count)
                else:
                    try:
                        result = outcomes(future.result(), batched, count)
                    except TimeoutError:
                        result = failed("timeout", f"exceeded {timeout:g} s", count)
                    except (Exception, SystemExit) as raised:
                        result = failed("error", one_line(raised), count)
            else:
                result = failed("error", one_line(error), count)
            if settle(task, result, log.logged()):
                return len(started) - task - 1
    finally:
        for future, _, _ in started:
            if future is not None:
                future.cancel()
    return 0
