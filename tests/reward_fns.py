"""User reward functions for tests/test_rewards.py and tests/test_reward_calls.py, loaded by spec ("reward_fns:name" or
by file path)."""

import math
import os
import time
from decimal import Decimal
from fractions import Fraction


def completion_length(prompt, completion, answer):
    """A well-behaved reward: the completion's length."""
    return len(completion)


def by_completion(prompt, completion, answer):
    """Misbehaves as the completion says, otherwise returns 1.0."""
    if completion == "raise":
        raise RuntimeError("user reward failed")
    if completion == "nan":
        return math.nan
    if completion == "inf":
        return -math.inf
    if completion == "string":
        return "1.0"
    if completion == "none":
        return None
    if completion == "huge":
        return 1e300
    if completion == "hang":
        while True:
            pass
    if completion == "sleep":
        time.sleep(3600)
    if completion == "exit":
        raise SystemExit(3)
    if completion == "die":
        os._exit(7)
    if completion == "pid":
        return os.getpid()
    return 1.0


def numeric_types(prompt, completion, answer):
    """Numbers that are not Python floats, chosen by the completion."""
    import numpy as np

    values = {
        "numpy": np.float32(0.25),
        "decimal": Decimal("0.5"),
        "fraction": Fraction(3, 4),
        "bool": True,
        "big_int": 10**400,
        "complex": 1j,
    }
    return values[completion]


NOT_CALLABLE = 42


def reads_state_and_logs(prompts, completions, trainer_state, log_metric, log_extra, **kwargs):
    """TRL's keywords in a worker process: the step from trainer_state (a copy), a metric and a column logged
    back, and the worker's own log_history length."""
    log_metric("group_size", len(completions))
    log_extra("pid", [os.getpid()] * len(completions))
    return [float(trainer_state.global_step + len(trainer_state.log_history))] * len(completions)
