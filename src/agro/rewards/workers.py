"""Running one reward function's calls: `RewardScorer` makes them in the trainer's process
(`agro.rewards.in_process`) or in long-lived worker processes with a hard per-call time limit (a call past
it has its worker killed), counting every failure; the worker processes themselves (`_Worker`, `_serve`).
How a call is made and what it returns is `agro.rewards.functions`.

Where a function runs:

* a Python callable: in the trainer's process, as TRL runs it, so its state persists between calls (a
  counter counts); the time limit is `agro.rewards.in_process`'s (SIGALRM on the main thread on Unix,
  the event loop's for ``async def``).
* a callable marked ``agro.rewards.functions.isolated(fn)``: in ``fork`` worker processes that inherit it;
  what it changes there stays there.
* a spec string (``math``, ``module:function``, ``file.py:function``): in ``spawn`` worker processes that
  import it; ``exact`` (cheap, cannot hang) in the trainer's process.

Workers are forked at start-up and again mid-training (replacements, extra workers), when the trainer's
threads exist: a forked worker sets torch to one thread, as DataLoader workers do, but an isolated callable
should still keep clear of torch and other thread pools (tokenizers' parallel encoding included); give it as
a spec string (a fresh ``spawn`` process) where it needs them. A worker gets TRL's ``trainer_state`` as a copy
(`_snapshot`), and sends what the call logged (``log_metric``, ``log_extra``) back with its result.
Either way a call that raises, returns a non-number (or a list of the wrong length), or runs past the
time limit fails: each of its samples scores 0 and counts as failed.
"""

from __future__ import annotations

import copy
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable

import agro.rewards.in_process as in_process
from agro.errors import AgroError
from agro.rewards.functions import (
    CONTEXT_KEYWORDS,
    OPTIONAL_KEYWORDS,
    RewardContext,
    RewardResult,
    Samples,
    absolute_spec,
    accepts,
    call_logged,
    failed,
    function_name,
    is_async,
    is_batched,
    is_isolated,
    load_reward_function,
)
from agro.rewards.verifiers import math_equal

WORKER_START_TIMEOUT = 120.0  # seconds for a worker to import the reward function and report ready
POLL_INTERVAL = 0.1  # seconds between checks of busy workers (CPU use, deadlines, a stop request)
BLOCKED_WINDOW = 0.2  # a call that used under BLOCKED_CPU_SHARE of a CPU over this many seconds is blocked
BLOCKED_CPU_SHARE = 0.1
MAX_WORKERS = 32  # workers at most, counting the extra ones started while calls are blocked


class ScoringInterrupted(Exception):
    """`RewardScorer.should_stop` said stop during a batch; its calls were dropped (their workers killed)."""


def _serve(conn: multiprocessing.connection.Connection, source: str | Callable, parent_pid: int) -> None:
    """Worker process: load the reward function once (a spec) or use the inherited one (fork), then answer
    calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the trainer's handler
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its timeouts just mean "not equal"
    fn = source
    if not isinstance(source, str) and "torch" in sys.modules:  # forked: the parent's OpenMP pool is not ours
        sys.modules["torch"].set_num_threads(1)
    if isinstance(source, str):
        try:
            fn = load_reward_function(source)
        except ValueError as error:
            conn.send(("load_error", str(error)))
            return
        if source == "math":
            math_equal("1", "1")  # warm up sympy/latex2sympy so the first real call is not slow
    batched = is_batched(fn)
    conn.send(("ready",))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        task, args, log_names = request
        conn.send(("result", task, *call_logged(fn, batched, args, log_names)))


def _exit_when_orphaned(parent_pid: int) -> None:
    """Backstop for daemon workers: exit even mid-call if the parent died without cleanup."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


class _Worker:
    """One long-lived worker process and the parent's end of its pipe."""

    def __init__(self, context, source: str | Callable) -> None:
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child_conn, source, os.getpid()), daemon=True, name="agro-reward-worker"
        )
        with warnings.catch_warnings():  # fork: "multi-threaded, may deadlock"; the child only runs `source`
            warnings.simplefilter("ignore", DeprecationWarning)
            self.process.start()
        child_conn.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.task: int | None = None  # the call being made (an index into RewardScorer's calls)
        self.deadline = math.inf
        self.blocked = False  # its call has been waiting without using the CPU (sleep, I/O, a lock)
        self._cpu_mark: tuple[float, float | None] = (0.0, None)  # (when, CPU seconds then)

    def assign(self, task: int, args: tuple | dict, log_names: tuple[str, ...], timeout: float) -> None:
        self.conn.send((task, args, log_names))
        self.task = task
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
    """Scores batches with one reward function.

    In the trainer's process (``in_process``: a Python callable not marked `isolated`, and ``exact``), calls
    run one after another with the time limit of `agro.rewards.in_process`. Otherwise they run in long-lived
    worker processes (``spawn`` for a spec, ``fork`` for a callable) fed one call at a time over pipes; a
    call that exceeds ``timeout`` seconds has its worker killed and counts as a timeout for each of its
    samples. ``num_workers`` calls run at a time. A call that waits without using the CPU (sleeping, blocked
    on I/O or a lock) for BLOCKED_WINDOW s stops counting against that limit, and the next call starts in an
    extra worker (MAX_WORKERS in all, or ``max_workers``): so the time limits of calls that hang waiting run
    in parallel, not one after another. Extra workers stop at the end of the batch. ``in_process`` given
    overrides the default. ``should_stop``, when set, is polled during a batch (between calls in process):
    once it returns True the batch's calls are dropped and `score` raises ScoringInterrupted. Not
    thread-safe.
    """

    def __init__(
        self,
        spec: str | Callable,
        timeout: float = 10.0,
        num_workers: int = 1,
        in_process: bool | None = None,
        max_workers: int | None = None,
    ):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not isinstance(spec, str) and not callable(spec):
            raise ValueError(f"a reward function is a spec string or a callable, got a {type(spec).__name__}")
        self.timeout = float(timeout)
        self.num_workers = num_workers
        self.max_workers = max(num_workers, MAX_WORKERS if max_workers is None else max_workers)
        self.should_stop: Callable[[], bool] | None = None
        self.fn = load_reward_function(spec) if isinstance(spec, str) else spec  # a bad spec fails here
        if not callable(self.fn):
            raise ValueError("names a reward model (a directory or hub id): training scores one "
                             "(agro.rewards.reward_models); here give a reward function")
        self.spec = spec if isinstance(spec, str) else function_name(spec)
        self.name = function_name(self.fn)
        self.batched = is_batched(self.fn)
        self.asynchronous = is_async(self.fn)
        default = spec == "exact" if isinstance(spec, str) else not is_isolated(spec)
        self.in_process = default if in_process is None else in_process
        # keywords passed only where the function takes them; TRL's log_* are made anew for each call
        self._keywords = tuple(k for k in OPTIONAL_KEYWORDS if self.batched and accepts(self.fn, k))
        self._log_names = tuple(k for k in self._keywords if k in CONTEXT_KEYWORDS[1:])
        self._source = absolute_spec(spec) if isinstance(spec, str) else spec
        self._context = multiprocessing.get_context("spawn" if isinstance(spec, str) else "fork")
        self._workers: list[_Worker] = []
        self._calls: list[tuple[list[int], tuple | dict]] = []  # the batch's calls: (sample indices, args)
        self._reward_context = RewardContext()  # the batch's (`score_samples`)
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
        """Rewards for aligned lists of prompts, completions and gold answers (`score_samples`; a batched
        function gets the answers as the `answer` column)."""
        return self.score_samples(Samples.of_texts(prompts, completions, answers), max_failure_fraction, on_result)

    def score_samples(
        self,
        samples: Samples,
        max_failure_fraction: float | None = None,
        on_result: Callable[[int, str, str | None], None] | None = None,
        context: RewardContext | None = None,
    ) -> RewardResult:
        """Rewards of `samples`.

        ``max_failure_fraction``: stop as soon as more than this fraction of the batch has failed
        (the samples left are counted in ``unscored``, their calls in ``calls_not_run``).
        ``on_result(index, status, detail)`` is called as each sample settles (status "ok", "none", "error",
        "timeout" or "non_finite"). ``context``: TRL's trainer_state for the calls, and where what they log
        goes (default: a fresh one); the result has its metric means and columns.
        """
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        count = len(samples.completions)
        result = RewardResult(rewards=[0.0] * count)
        self._reward_context = context = RewardContext() if context is None else context
        self._calls = [(indices, self._args(samples, indices, context.trainer_state))
                       for indices in samples.calls(self.batched)]
        if self.in_process:
            def settle(task: int, outcomes: list, logged: tuple) -> bool:
                self._record(task, outcomes, result, on_result, logged=logged)
                return _too_many(result, max_failure_fraction)

            not_run = in_process.run_calls(self.fn, self.batched, self.asynchronous,
                                           [(args, self._log_names) for _, args in self._calls], self.timeout,
                                           settle, self._check_stop)
            result.calls_not_run = not_run
            result.unscored = sum(len(indices) for indices, _ in self._calls[len(self._calls) - not_run:])
        elif count:
            self._score_in_workers(result, max_failure_fraction, on_result)
        result.logged_metrics, result.logged_columns = context.metric_means(), context.columns(count)
        return result

    def _args(self, samples: Samples, indices: list[int], trainer_state) -> tuple | dict:
        """A call's arguments: per sample, or the batched keywords this function takes (TRL's trainer_state
        as it is in this process, a copy for a worker)."""
        if not self.batched:
            return samples.per_sample(indices[0])
        kwargs = samples.batched(indices)
        if "truncated" not in self._keywords and "truncated" not in samples.columns:
            kwargs.pop("truncated", None)
        if "trainer_state" in self._keywords:
            kwargs["trainer_state"] = trainer_state if self.in_process else _snapshot(trainer_state)
        return kwargs

    def _record(self, task: int, outcomes: list, result: RewardResult, on_result, detail: str | None = None,
                logged: tuple | None = None) -> None:
        """Record the outcome of each sample of call `task` (`detail`: the same failure for all of them) and
        what the call logged."""
        indices = self._calls[task][0]
        result.calls += 1
        if logged is not None:
            self._reward_context.add(logged, indices)
        for index, (status, reward, said) in zip(indices, outcomes):
            result.record(index, status, reward, said if detail is None else detail)
            if on_result is not None:
                on_result(index, status, said if detail is None else detail)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ScoringInterrupted("reward scoring stopped on request")

    def _score_in_workers(self, result: RewardResult, max_failure_fraction: float | None, on_result) -> None:
        self._start_missing_workers()
        pending = deque(range(len(self._calls)))
        try:
            while pending or self._busy():
                self._dispatch(pending)
                self._wait_and_collect(result, on_result)
                self._check_stop()
                if _too_many(result, max_failure_fraction):
                    dropped = [*pending, *(w.task for w in self._busy())]
                    result.unscored = sum(len(self._calls[t][0]) for t in dropped)
                    result.calls_not_run = len(dropped)
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

    def _dispatch(self, pending: deque) -> None:
        """Hand pending calls to idle workers while fewer than `num_workers` calls run (blocked calls
        do not count), and start extra workers for them while calls are blocked."""
        now = time.monotonic()
        for worker in self._busy():
            worker.update_blocked(now)
        slots = self.num_workers - sum(not worker.blocked for worker in self._busy())
        for worker in list(self._workers):
            if pending and slots > 0 and worker.ready and worker.task is None:
                task = pending.popleft()
                try:
                    worker.assign(task, self._calls[task][1], self._log_names, self.timeout)
                except OSError:  # it died while idle: retry the call on a fresh worker
                    pending.appendleft(task)
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
            self._workers.append(_Worker(self._context, self._source))

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
                _, task, outcomes, logged = message
                worker.task, worker.deadline, worker.blocked = None, math.inf, False
                self._record(task, outcomes, result, on_result, logged=logged)
            elif message[0] == "ready":
                worker.ready = True
            else:
                self.close()
                raise ValueError(f"reward worker cannot load {self.spec!r}: {message[1]}")
        now = time.monotonic()
        for worker in list(waiting.values()):
            if worker.task is not None and now >= worker.deadline and worker in self._workers:
                task = worker.task
                self._retire(worker)
                self._fail(task, "timeout", f"exceeded {self.timeout:g} s", result, on_result)
            elif not worker.ready and now >= worker.started_at + WORKER_START_TIMEOUT:
                self.close()
                raise RuntimeError(
                    f"reward worker for {self.spec!r} not ready after {WORKER_START_TIMEOUT:g} s"
                )

    def _fail(self, task: int, status: str, detail: str, result: RewardResult, on_result) -> None:
        """Every sample of call `task` failed the same way."""
        self._record(task, failed(status, detail, len(self._calls[task][0])), result, on_result, detail)

    def _handle_dead_worker(self, worker: _Worker, result: RewardResult, on_result) -> None:
        worker.process.join(timeout=1.0)
        exit_code = worker.process.exitcode
        if worker.task is None:
            self.close()
            raise RuntimeError(
                f"reward worker for {self.spec!r} exited during start-up (exit code {exit_code})"
            )
        task = worker.task
        self._retire(worker)
        self._fail(task, "error", f"worker process died (exit code {exit_code})", result, on_result)

    def _retire(self, worker: _Worker) -> None:
        """Stop a worker and drop it from the pool (`_start_missing_workers` tops the pool up)."""
        self._workers.remove(worker)
        worker.stop()
        worker.task = None  # its call is settled; it must not time out again

    def _drop_busy(self) -> None:
        for worker in self._busy():
            self._retire(worker)

    def _stop_extra_workers(self) -> None:
        """Back to `num_workers` workers after a batch: the idle extra ones stop."""
        for worker in [w for w in self._workers if w.task is None][: max(0, len(self._workers) - self.num_workers)]:
            self._retire(worker)

    def _start_missing_workers(self) -> None:
        while len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._context, self._source))

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop all worker processes; the scorer cannot be used afterwards."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _snapshot(trainer_state):
    """What a worker gets of TRL's trainer_state: a copy, without its log_history (every logged row, which
    grows with the run)."""
    if trainer_state is None:
        return None
    state = copy.copy(trainer_state)
    state.log_history = []
    return state


def _too_many(result: RewardResult, max_failure_fraction: float | None) -> bool:
    """More than `max_failure_fraction` of the whole batch has already failed."""
    return max_failure_fraction is not None and result.failures / len(result.rewards) > max_failure_fraction


def open_scorer(spec: str, timeout: float) -> RewardScorer:
    """A RewardScorer for a command-line `--reward` spec; a bad spec is an AgroError naming it."""
    try:
        return RewardScorer(spec, timeout=timeout)
    except ValueError as err:
        raise AgroError(f"reward {spec!r}: {err}") from None
