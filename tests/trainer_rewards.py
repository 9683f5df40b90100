"""A dense reward for trainer tests: even an untrained model gets varied, non-zero rewards."""


def digit_fraction(prompt: str, completion: str, answer: str | None) -> float:
    """Fraction of the completion's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))


def sleeps(prompt: str, completion: str, answer: str | None) -> float:
    """Hangs waiting, as on a server that never answers."""
    import time

    time.sleep(3600)
    return 0.0


_calls = 0


def hangs_in_step_two(prompt: str, completion: str, answer: str | None) -> float:
    """digit_fraction; but when AGRO_TEST_PID_FILE is set, this worker's 7th call (step 2 of a run of 2 prompts
    × 3 samples) appends the worker's process id to that file and hangs waiting."""
    import os
    import time

    global _calls
    _calls += 1
    if os.environ.get("AGRO_TEST_PID_FILE") and _calls == 7:
        with open(os.environ["AGRO_TEST_PID_FILE"], "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(3600)
    return digit_fraction(prompt, completion, answer)
