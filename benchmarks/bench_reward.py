"""The throughput benchmark's reward, in a module without heavy imports: agro's reward workers load it."""


def digit_fraction(prompt: str, completion: str, answer: str | None) -> float:
    """Fraction of the completion's characters that are digits (dense, so advantages are not all zero)."""
    return sum(c.isdigit() for c in completion) / max(1, len(completion))
