"""Reward functions and how they are called: a function by spec or as a callable, its two calling
conventions, what the functions see of a batch (`Samples`) and what its calls came to (`RewardResult`).
Where the calls run (worker processes, time limits) is `agro.rewards.workers`; what a right answer is
(equivalence, the built-in rewards), `agro.rewards.verifiers`.

Two calling conventions, told apart by the signature (`is_batched`):

* per sample (agro's): ``fn(prompt, completion, answer) -> float``, one call per sample; ``prompt`` is the
  prompt text the model saw (chat prompts rendered by the template), ``answer`` the gold answer or None.
* batched (TRL GRPOTrainer's): ``fn(prompts, completions, completion_ids, **columns) -> list[float | None]``,
  called with keywords. ``prompts`` are as the data has them (strings or chat messages); ``completions``
  are strings, or for chat prompts ``[{"role": "assistant", "content": text}]``; ``completion_ids`` the
  completions' token ids (when known); every other data column comes as a keyword list. None is "no
  reward for this sample": not a failure. One call covers the samples of one prompt (a group). TRL's
  ``trainer_state``, ``log_extra`` and ``log_metric`` keywords are not passed.

A call that raises or returns a non-number (or a list of the wrong length) fails (`call_reward`): each of
its samples scores 0 and counts as failed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agro.rewards.verifiers import BUILTIN_REWARDS, RewardFn

BATCHED_PARAMETERS = ("prompts", "completions", "completion_ids")


def is_batched(fn: Callable) -> bool:
    """TRL's convention: a parameter named prompts, completions or completion_ids, or **kwargs."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name in BATCHED_PARAMETERS for p in params)


def function_name(fn: Callable) -> str:
    """The name metrics use (`rewards/NAME/mean`, TRL's key): `__name__`, else the class name."""
    return getattr(fn, "__name__", type(fn).__name__)


def load_reward_function(spec: str) -> RewardFn | Callable:
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


@dataclass
class Samples:
    """What reward functions see of a batch: aligned lists. `prompts` as the data has them (strings or chat
    messages), `prompt_texts` as the model saw them (default: `prompts`), `columns` the other data columns
    (batched functions get them as keywords), `groups` the prompt of each sample (one batched call each
    run of equal groups; None: one call for all)."""

    prompts: list
    completions: list[str]
    answers: list[str | None]
    prompt_texts: list[str] | None = None
    completion_ids: list[list[int]] | None = None
    columns: dict[str, list] = field(default_factory=dict)
    groups: list | None = None

    def __post_init__(self):
        lengths = {len(self.prompts), len(self.completions), len(self.answers),
                   *(len(v) for v in (self.prompt_texts, self.completion_ids, self.groups) if v is not None),
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
                       pick(self.groups))

    def per_sample(self, i: int) -> tuple:
        """The arguments (prompt text, completion, answer) of a per-sample call."""
        return (self.prompt_texts or self.prompts)[i], self.completions[i], self.answers[i]

    def batched(self, indices: list[int]) -> dict:
        """The keyword arguments of a batched call on `indices`, as TRL's GRPOTrainer passes them."""
        prompts = [self.prompts[i] for i in indices]
        completions = [[{"role": "assistant", "content": self.completions[i]}] if isinstance(p, list)
                       else self.completions[i] for i, p in zip(indices, prompts)]
        kwargs = {name: [values[i] for i in indices] for name, values in self.columns.items()}
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


@dataclass
class RewardResult:
    """Rewards of one batch; failed samples (error, timeout, non-finite value) get 0.0, and a sample a
    batched function gave None (status "none", no reward: not a failure) gets None."""

    rewards: list[float | None]
    errors: int = 0  # the reward function raised
    timeouts: int = 0  # the call exceeded the per-call time limit and was killed
    non_finite: int = 0  # the call returned NaN, inf or a non-number
    first_failure: str | None = None  # description of the first failed sample, for logs
    unscored: int = 0  # calls never finished: the batch stopped once max_failure_fraction was exceeded
    by_function: dict[str, list[float | None]] = field(default_factory=dict)  # several functions' own rewards

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


def call_reward(fn: Callable, batched: bool, args: tuple | dict) -> list[tuple[str, float | None, str | None]]:
    """(status, reward, detail) of each sample of one call (`Samples.per_sample` or `Samples.batched` args);
    a call that raises is an "error" for each of its samples."""
    count = len(args["completions"]) if batched else 1
    try:
        value = fn(**args) if batched else fn(*args)
    except (Exception, SystemExit) as error:
        return [("error", 0.0, _one_line(error))] * count
    if not batched:
        return [_settle(value, allow_none=False)]
    if isinstance(value, str | bytes | dict) or not hasattr(value, "__len__") or len(value) != count:
        shown = f"{len(value)} values" if hasattr(value, "__len__") else f"a {type(value).__name__}"
        return [("error", 0.0, f"returned {shown} for {count} samples")] * count
    return [_settle(v, allow_none=True) for v in value]
