"""Accuracy on held-out problems: greedy accuracy, or pass@k and mean@k from k samples.

    pass@k = fraction of problems with at least one correct sample among k
    mean@k = mean reward over all k samples of all problems
"""

from __future__ import annotations

from collections import defaultdict

from agro.data import Problem, prompt_key
from agro.rewards import RewardScorer
from agro.rollout import HFGenerator, encode_prompt, prompt_text


def evaluate(model, tokenizer, problems: list[Problem], scorer: RewardScorer, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = True,
             batch_size: int = 64, generator=None) -> dict:
    """Score `num_samples` completions per problem (one greedy completion when `greedy`)."""
    k = 1 if greedy else num_samples
    generator = generator or HFGenerator(tokenizer, max_new_tokens, temperature, top_p, batch_size)
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    completions = generator.generate(model, prompts, k, do_sample=not greedy)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    result = scorer.score([prompt_text(tokenizer, p.prompt) for p in problems for _ in range(k)], texts,
                          [p.answer for p in problems for _ in range(k)])
    per_problem = [result.rewards[i * k : (i + 1) * k] for i in range(len(problems))]
    correct = [[r > 0.5 for r in rs] for rs in per_problem]
    by_category: dict[str, list[bool]] = defaultdict(list)
    for p, c in zip(problems, correct):
        by_category[p.category or "all"].append(any(c))
    summary = {
        "num_problems": len(problems),
        "num_samples": k,
        "greedy": greedy,
        "accuracy": sum(c[0] for c in correct) / max(1, len(problems)),
        f"pass@{k}": sum(any(c) for c in correct) / max(1, len(problems)),
        f"mean@{k}": sum(sum(c) for c in correct) / max(1, len(problems) * k),
        "reward_failures": result.failures,
        "by_category": {cat: sum(v) / len(v) for cat, v in sorted(by_category.items())},
        "samples": [
            {"id": p.id, "key": prompt_key(p.prompt), "answer": p.answer, "completions": texts[i * k : (i + 1) * k],
             "rewards": per_problem[i]}
            for i, p in enumerate(problems)
        ],
    }
    return summary
