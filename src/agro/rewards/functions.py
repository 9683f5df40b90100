"""Reward functions and how they are called: a function by spec or as a callable, its two calling
conventions, what the functions see of a batch (`Samples`), what its calls came to (`RewardResult`) and what
they logged (`RewardContext`). Where the calls run (the trainer's process or worker processes, time limits)
is `agro.rewards.workers`; reward models, `agro.rewards.reward_models`; what a right answer is
(equivalence, the built-in rewards), `agro.rewards.verifiers`.

Two calling conventions, told apart by the signature (`is_batched`):

* per sample (agro's): ``fn(prompt, completion, answer) -> float``, one call per sample; ``prompt`` is the
  prompt text the model saw (chat prompts rendered by the template), ``answer`` the gold answer or None.
* batched (TRL GRPOTrainer's): ``fn(prompts, completions, completion_ids, **columns) -> list[float | None]``,
  called with keywords. ``prompts`` are as the data has them (strings or chat messages); ``completions``
  are strings, or for chat prompts ``[{"role": "assistant", "content": text}]``; ``completion_ids`` the
  completions' token ids (when known); every other data column comes as a keyword list. None is "no
  reward for this sample": not a failure. One call covers the samples of one prompt (a group).
  Passed only to a function that names them or takes ``**kwargs`` (`OPTIONAL_KEYWORDS`):
  ``truncated`` (list[bool]: the completion was cut at max_completion_length; a data column of that name
  is passed instead), and TRL's ``trainer_state`` (the run's `transformers.TrainerState`, live; None outside
  training), ``log_metric(name, value)`` (a metric of the step, averaged over the step's calls) and
  ``log_extra(column, values)`` (one value per sample of the call: a column of the step's completions).
  In a worker process (`isolated` functions, specs) ``trainer_state`` is a copy taken at the step's start
  without its log_history, and what the call logs is sent back with its result.

``async def`` functions (and callables that return an awaitable) are awaited on an event loop of agro's
own, on a daemon thread, as TRL runs them; one async function's calls of a batch run concurrently.

A call that raises or returns a non-number (or a list of the wrong length) fails (`call_reward`): each of
its samples scores 0 and counts as failed.

A spec with no ``:`` that names a directory, or a hub id (``owner/name``), is a reward model
(`RewardModelSpec`, scored by `agro.rewards.reward_models`), as a model id is in TRL.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agro.rewards.verifiers import BUILTIN_REWARDS, RewardFn

BATCHED_PARAMETERS = ("prompts", "completions", "completion_ids")
CONTEXT_KEYWORDS = ("trainer_state", "log_metric", "log_extra")  # TRL's, the same for every call of a step
OPTIONAL_KEYWORDS = ("truncated", *CONTEXT_KEYWORDS)  # passed only to functions that accept them
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_batched(fn: Callable) -> bool:
    """TRL's convention: a parameter named prompts, completions or completion_ids, or **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name in BATCHED_PARAMETERS for p in params)


def accepts(fn: Callable, keyword: str) -> bool:
    """`fn` takes `keyword`: it names it, or takes **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == keyword and p.kind is not p.VAR_POSITIONAL) for p in params)


def is_async(fn: Callable) -> bool:
    """Calling `fn` gives a coroutine: an ``async def`` function, a partial of one, or an instance whose
    ``__call__`` is one (TRL's `is_async_callable`)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def isolated(fn: Callable) -> Callable:
    """Mark a Python reward function to run in worker processes (``fork``) with a hard time limit, as specs
    do, instead of in the trainer's process: ``reward_funcs=[isolated(my_reward)]``. Returns `fn`."""
    try:
        fn.agro_isolated = True
    except AttributeError:
        raise ValueError(f"isolated: cannot mark a {type(fn).__name__}; wrap it in a function first") from None
    return fn


def is_isolated(fn: Callable) -> bool:
    return getattr(fn, "agro_isolated", False) is True


def function_name(fn: Callable) -> str:
    """The name metrics use (`rewards/NAME/mean`, TRL's key): `__name__`, else the class name."""
    return getattr(fn, "__name__", type(fn).__name__)


def is_model_spec(spec: str) -> bool:
    """A reward model named by a spec: not a built-in and no ``:``, and an existing directory or a hub id."""
    if spec in BUILTIN_REWARDS or ":" in spec or spec.endswith(".py"):
        return False
    return Path(spec).is_dir() or _HUB_ID.fullmatch(spec) is not None


@dataclass(frozen=True)
class RewardModelSpec:
    """A reward model named by its directory or hub id (`is_model_spec`), loaded where it scores
    (`agro.rewards.reward_models`), not when a config is checked."""

    name_or_path: str


def load_reward_function(spec: str) -> RewardFn | Callable | RewardModelSpec:
    """Resolve ``"exact"``, ``"math"``, ``"package.module:function"`` or ``"path/to/file.py:function"``;
    a reward model's directory or hub id resolves to a `RewardModelSpec`, without loading it.

    Raises ValueError with a one-line message when the spec cannot be resolved.
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if is_model_spec(spec):
        return RewardModelSpec(spec)
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise ValueError(
            f"unknown reward function {spec!r}: expected one of {sorted(BUILTIN_REWARDS)}, "
            "'package.module:function', 'path/to/file.py:function', or a reward model's directory or hub id"
        )
    if source.endswith(".py"):
        module = _load_module_from_file(source, spec)
    else:
        try:
            module = importlib.import_module(source)
        except Exception as error:
            raise ValueError(
                f"cannot import module {source!r} for reward {spec!r}: {one_line(error)}"
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
        raise ValueError(f"cannot load reward file {str(path)!r} for {spec!r}: {one_line(error)}") from None
    return module


def absolute_spec(spec: str) -> str:
    """File specs with an absolute path, so worker processes resolve them the same way."""
    source, _, attribute = spec.rpartition(":")
    return f"{Path(source).resolve()}:{attribute}" if source.endswith(".py") else spec


def one_line(error: BaseException, max_chars: int = 300) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:max_chars]


@dataclass
class Samples:
    """What reward functions see of a batch: aligned lists. `prompts` as the data has them (strings or chat
    messages), `prompt_texts` as the model saw them (default: `prompts`), `columns` the other data columns
    (batched functions get them as keywords), `groups` the prompt of each sample (one batched call each
    run of equal groups; None: one call for all), `truncated` whether each completion was cut at the length
    limit (None: not known)."""

    prompts: list
    completions: list[str]
    answers: list[str | None]
    prompt_texts: list[str] | None = None
    completion_ids: list[list[int]] | None = None
    columns: dict[str, list] = field(default_factory=dict)
    groups: list | None = None
    truncated: list[bool] | None = None

    def __post_init__(self):
        lengths = {len(self.prompts), len(self.completions), len(self.answers),
                   *(len(v) for v in (self.prompt_texts, self.completion_ids, self.groups, self.truncated)
                     if v is not None),
                   *(len(v) for v in self.columns.values())}
        if len(lengths) > 1:
            raise ValueError(f"prompts, completions, answers and columns differ in length: {sorted(lengths)}")

    @classmethod
    def of_texts(cls, prompts: list, completions: list[str], answers: list[str | None]) -> Samples:
        """Texts with their gold answers, which batched functions get as the `answer` column."""
        return cls(prompts, completions, answers, columns={"answer": answers})

    def subset(self, indices: list[int]) -> Samples:
        """The samples at `indices`, in that order."""
        def pick(values):
            return None if values is None else [values[i] for i in indices]

        return Samples(pick(self.prompts), pick(self.completions), pick(self.answers), pick(self.prompt_texts),
                       pick(self.completion_ids), {name: pick(v) for name, v in self.columns.items()},
                       pick(self.groups), pick(self.truncated))

    def per_sample(self, i: int) -> tuple:
        """The arguments (prompt text, completion, answer) of a per-sample call."""
        return (self.prompt_texts or self.prompts)[i], self.completions[i], self.answers[i]

    def batched(self, indices: list[int]) -> dict:
        """The data keyword arguments of a batched call on `indices`, as TRL's GRPOTrainer passes them, and
        `truncated` when known (`OPTIONAL_KEYWORDS`: the caller drops it where the function does not take it)."""
        prompts = [self.prompts[i] for i in indices]
        completions = [[{"role": "assistant", "content": self.completions[i]}] if isinstance(p, list)
                       else self.completions[i] for i, p in zip(indices, prompts)]
        kwargs = {name: [values[i] for i in indices] for name, values in self.columns.items()}
        if self.truncated is not None:
            kwargs.setdefault("truncated", [self.truncated[i] for i in indices])  # a data column keeps its name
        kwargs.update(prompts=prompts, completions=completions)
        if self.completion_ids is not None:
            kwargs["completion_ids"] = [self.completion_ids[i] for i in indices]
        return kwargs

    def calls(self, batched: bool) -> list[list[int]]:
        """The samples of each call: one each, or (batched) each run of equal groups."""
        if not batched:
            return [[i] for i in range(len(self.completions))]
        calls: list[list[int]] = []
        for i in range(len(self.completions)):
            if calls and self.groups is not None and self.groups[i] == self.groups[i - 1]:
                calls[-1].append(i)
            elif calls and self.groups is None:
                calls[-1].append(i)
            else:
                calls.append([i])
        return calls


class CallLog:
    """TRL's `log_metric` and `log_extra` for one call of `size` samples, and what the call logged through
    them (`logged`: sent back from a worker process with the call's result)."""

    def __init__(self, size: int):
        self.size = size
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        """A scalar metric of the step (TRL's): averaged over the step's calls, logged under `name`."""
        if not isinstance(name, str) or isinstance(value, str | bytes) or not hasattr(value, "__float__"):
            raise TypeError(f"log_metric(name, value): expected a str and a number, got {name!r}, {value!r}")
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        """A column of the step's completions (TRL's): one value per sample of this call."""
        values = list(values)
        if len(values) != self.size:
            raise ValueError(f"log_extra({column!r}): {len(values)} values for the call's {self.size} samples")
        self.extra[str(column)] = values

    def keywords(self, names: tuple[str, ...]) -> dict[str, Callable]:
        """The bound methods named (`log_metric`, `log_extra`), as keywords."""
        return {name: getattr(self, name) for name in names}

    def logged(self) -> tuple[dict[str, list[float]], dict[str, list]]:
        return self.metrics, self.extra


@dataclass
class RewardContext:
    """TRL's keywords of a batch's calls and what the calls logged: `trainer_state` (passed as it is in the
    trainer's process), the values of each `log_metric` name, and each `log_extra` column by sample index."""

    trainer_state: object | None = None
    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, dict[int, object]] = field(default_factory=dict)

    def add(self, logged: tuple[dict[str, list[float]], dict[str, list]], indices: list[int]) -> None:
        """What one call on the samples `indices` logged (`CallLog.logged`)."""
        metrics, extra = logged
        for name, values in metrics.items():
            self.metrics.setdefault(name, []).extend(values)
        for column, values in extra.items():
            self.extra.setdefault(column, {}).update(zip(indices, values))

    def metric_means(self) -> dict[str, float]:
        """Each logged metric's mean over the batch (TRL averages a step's values)."""
        return {name: sum(values) / len(values) for name, values in self.metrics.items() if values}

    def columns(self, count: int) -> dict[str, list]:
        """Each log_extra column over the batch's `count` samples (None where a sample got no value)."""
        return {column: [values.get(i) for i in range(count)] for column, values in self.extra.items()}


@dataclass
class RewardResult:
    """Rewards of one batch; failed samples (error, timeout, non-finite value) get 0.0, and a sample a
    batched function gave None (status "none", no reward: not a failure) gets None. Failures count
    samples; `calls` and `calls_not_run` count calls (a batched call covers a group)."""

    rewards: list[float | None]
    errors: int = 0  # the reward function raised
    timeouts: int = 0  # the call exceeded the per-call time limit and was killed
    non_finite: int = 0  # the call returned NaN, inf or a non-number
    first_failure: str | None = None  # description of the first failed sample, for logs
    unscored: int = 0  # samples of calls never finished: the batch stopped once max_failure_fraction was exceeded
    by_function: dict[str, list[float | None]] = field(default_factory=dict)  # several functions' own rewards
    # how the calls went and what they logged; two results are equal when their rewards and failures are
    calls: int = field(default=0, compare=False)  # calls settled
    calls_not_run: int = field(default=0, compare=False)  # calls dropped when the batch stopped early
    logged_metrics: dict[str, float] = field(default_factory=dict, compare=False)  # log_metric's means
    logged_columns: dict[str, list] = field(default_factory=dict, compare=False)  # log_extra's, one value a sample

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts + self.non_finite

    def record(self, index: int, status: str, reward: float | None, detail: str | None) -> None:
        self.rewards[index] = reward if status == "ok" else None if status == "none" else 0.0
        if status in ("ok", "none"):
            return
        if status == "error":
            self.errors += 1
        elif status == "timeout":
            self.timeouts += 1
        else:
            self.non_finite += 1
        if self.first_failure is None:
            self.first_failure = f"sample {index}: {status}: {detail}"



class CallTimeout(BaseException):
    """A call ran past its time limit (raised into it in the trainer's process). A BaseException, so that
    a reward function's `except Exception` does not swallow it."""


def _as_reward(value: object) -> float | None:
    """`value` as a finite float, or None for NaN/inf and non-numbers (strings included)."""
    try:
        if isinstance(value, str | bytes) or not hasattr(value, "__float__"):
            return None
        reward = float(value)
    except Exception:
        return None
    return reward if math.isfinite(reward) else None


def _settle(value: object, allow_none: bool) -> tuple[str, float | None, str | None]:
    """(status, reward, detail) of one returned value: "ok", "none" (batched None) or "non_finite"."""
    if value is None and allow_none:
        return "none", None, None
    reward = _as_reward(value)
    if reward is not None:
        return "ok", reward, None
    shown = repr(value) if isinstance(value, float) else f"a {type(value).__name__}"
    return "non_finite", 0.0, f"returned {shown}"


def outcomes(value: object, batched: bool, count: int) -> list[tuple[str, float | None, str | None]]:
    """(status, reward, detail) of each sample of a call that returned `value`."""
    if not batched:
        return [_settle(value, allow_none=False)]
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__len__") or len(value) != count:
        shown = f"{len(value)} values" if hasattr(value, "__len__") else f"a {type(value).__name__}"
        return [("error", 0.0, f"returned {shown} for {count} samples")] * count
    return [_settle(v, allow_none=True) for v in value]


def failed(status: str, detail: str, count: int) -> list[tuple[str, float | None, str | None]]:
    """Every sample of a call failed the same way."""
    return [(status, 0.0, detail)] * count


def call_reward(fn: Callable, batched: bool, args: tuple | dict,
                timeout: float | None = None) -> list[tuple[str, float | None, str | None]]:
    """(status, reward, detail) of each sample of one call (`Samples.per_sample` or `Samples.batched` args);
    a call that raises is an "error" for each of its samples. An awaitable it returns is awaited on agro's
    event loop, for at most `timeout` seconds (a "timeout" after that)."""
    count = len(args["completions"]) if batched else 1
    try:
        value = fn(**args) if batched else fn(*args)
        if inspect.isawaitable(value):
            value = run_awaitable(value, timeout)
    except CallTimeout:
        return failed("timeout", f"exceeded {timeout:g} s" if timeout else "time limit", count)
    except (Exception, SystemExit) as error:
        return failed("error", one_line(error), count)
    return outcomes(value, batched, count)


async def _awaited(awaitable, timeout: float | None):
    return await asyncio.wait_for(awaitable, timeout)


_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_loop_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """agro's event loop for async reward functions: one a process (made again in a forked worker), running
    on a daemon thread, as TRL runs them; the caller's own loop, if any, is left alone."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="agro-reward-loop", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def submit(awaitable, timeout: float | None):
    """`awaitable` started on agro's event loop, cancelled there after `timeout` seconds: a
    concurrent.futures.Future (its TimeoutError: past the limit)."""
    return asyncio.run_coroutine_threadsafe(_awaited(awaitable, timeout), event_loop())


def run_awaitable(awaitable, timeout: float | None):
    """The value of `awaitable`, run on agro's event loop; CallTimeout after `timeout` seconds (and a second
    more for a coroutine that blocks the loop)."""
    future = submit(awaitable, timeout)
    try:
        return future.result(None if timeout is None else timeout + 1.0)
    except TimeoutError:
        raise CallTimeout from None
    finally:
        future.cancel()


def call_logged(fn: Callable, batched: bool, args: tuple | dict, log_names: tuple[str, ...] = (),
                timeout: float | None = None) -> tuple[list, tuple[dict, dict]]:
    """`call_reward` with the `CallLog` keywords `log_names` added: (outcomes, what the call logged)."""
    log = CallLog(len(args["completions"]) if batched else 1)
    if log_names:
        args = {**args, **log.keywords(log_names)}
    return call_reward(fn, batched, args, timeout), log.logged()
