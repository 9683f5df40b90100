"""A dense reward for trainer tests: even an untrained model gets varied, non-zero rewards."""


def digit_fraction(prompt: str, completion: str, answer: str | None) -> float:
    """Fraction of the completion's characters that are digits."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
