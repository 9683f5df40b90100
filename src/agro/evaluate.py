"""Accuracy on held-out problems: greedy accuracy, or pass@k and mean@k from k samples.

    pass@k   = fraction of problems with at least one correct sample among k
    mean@k   = fraction of correct samples over all k samples of all problems
    accuracy = greedy accuracy (k = 1), mean@k otherwise
    by_category: per category, greedy accuracy (k = 1) or pass@k
    samples: per problem, its gold answer, its reasoning-gym task entry (`entry`), completions and rewards

A sample is correct when its reward is above 0.5 (the built-in rewards are 0 or 1). A completion cut at
the length limit scores 0 unless truncated_completions is "keep", as in training (`agro.rewards.answers`).
"""

from __future__ import annotations

from collections import defaultdict

from tqdm.auto import tqdm

import agro.data as data
import agro.gym as gym
from agro.config import TrainConfig
from agro.data import Problem, prompt_key
from agro.generators import HFGenerator, generate_with_progress
from agro.rewards.answers import is_truncated
from agro.rewards.scoring import WeightedRewards, problem_samples, score_texts
from agro.rewards.workers import RewardScorer
from agro.tokens import encode_prompt, eos_token_ids, prompt_text

UNCATEGORIZED = "uncategorized"


def evaluate(model, tokenizer, problems: list[Problem], scorer: RewardScorer | WeightedRewards, max_new_tokens: int,
             num_samples: int = 1, temperature: float = 1.0, top_p: float = 1.0, greedy: bool | None = None,
             batch_size: int = 64, generator=None, progress: bool = False,
             truncated_completions: str = "zero") -> dict:
    """Score `num_samples` completions per problem; greedy (one completion) by default when num_samples is 1.
    `progress`: progress bars (tqdm, stderr) over generation and scoring."""
    greedy = num_samples == 1 if greedy is None else greedy
    if greedy and num_samples != 1:
        raise ValueError(f"greedy decoding gives one completion per problem, got num_samples={num_samples}")
    k = num_samples
    generator = generator or HFGenerator(tokenizer, max_new_tokens, temperature, top_p, batch_size)
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    if progress:
        completions = generate_with_progress(generator, model, prompts, k, do_sample=not greedy)
    else:
        completions = generator.generate(model, prompts, k, do_sample=not greedy)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    eos = eos_token_ids(tokenizer, model)
    cut = [is_truncated(c, eos) for c in completions]
    shown = [prompt_text(tokenizer, p.prompt) for p in problems]
    scored = len(cut) if truncated_completions == "keep" else cut.count(False)
    answers = [p.answer for p in problems for _ in range(k)]
    samples = problem_samples(problems, k, texts, completions)
    calls = scored * len(getattr(scorer, "scorers", [scorer]))  # on_result: once per sample and function
    with tqdm(total=calls, desc="score", unit="call", dynamic_ncols=True, disable=not progress) as bar:
        rewards, result = score_texts(scorer, [s for s in shown for _ in range(k)], texts, answers, cut,
                                      truncated_completions, on_result=lambda *_: bar.update(1), samples=samples)
    per_problem = [rewards[i * k : (i + 1) * k] for i in range(len(problems))]
    correct = [[r > 0.5 for r in rs] for rs in per_problem]
    by_category: dict[str, list[bool]] = defaultdict(list)
    for p, c in zip(problems, correct):
        by_category[p.category or UNCATEGORIZED].append(any(c))
    n = max(1, len(problems))
    mean_at_k = sum(sum(c) for c in correct) / (n * k)
    return {
        "num_problems": len(problems),
        "num_samples": k,
        "greedy": greedy,
        "accuracy": mean_at_k,
        f"pass@{k}": sum(any(c) for c in correct) / n,
        f"mean@{k}": mean_at_k,
        "reward_failures": result.failures,
        "truncated": sum(cut) / max(1, len(cut)),
        "by_category": {cat: sum(v) / len(v) for cat, v in sorted(by_category.items())},
        "samples": [
            {"id": p.id, "key": prompt_key(p.prompt), "category": p.category, **gold_answer(p.answer),
             "completions": texts[i * k : (i + 1) * k], "rewards": per_problem[i], "truncated": cut[i * k : (i + 1) * k]}
            for i, p in enumerate(problems)
        ],
    }


def gold_answer(answer: str | None) -> dict:
    """A sample's `answer` (the gold answer) and `entry` (the reasoning-gym task entry the problem carries, whose
    verifier scores it; None for other data): the encoded entry is the reward's input, not an answer to read."""
    entry = gym.decode_answer(answer)
    return {"answer": entry["answer"], "entry": entry} if entry else {"answer": answer, "entry": None}


def load_eval_problems(config: TrainConfig) -> list[Problem]:
    """The held-out problems a training run evaluates on (eval_data, at most eval_max_problems; reasoning_gym:
    its held-out split, whatever eval_split says); [] if none."""
    c = config
    if not c.eval_data:
        return []
    problems, _ = data.load_problems(c.eval_data, format=c.train_data_format, template=c.prompt_template,
                                     require_answer=True, on_bad_record=c.on_bad_record,
                                     split="test" if gym.is_gym_source(c.eval_data) else c.eval_split,
                                     kwargs=c.eval_data_kwargs, instruction=c.instruction,
                                     system_prompt=c.system_prompt)
    if c.eval_max_problems:
        problems = problems[: c.eval_max_problems]
    return problems
