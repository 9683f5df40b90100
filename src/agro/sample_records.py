"""`agro generate`: a model's completions written as offline records, the format `agro train` reads.

Each record carries `completion_ids`, the tokens sampled (cut after the first EOS, which they keep), and
`behavior_logprobs`, the generating model's log-probs of those tokens at temperature 1 (with another
temperature or top_p the sampler differs from that policy; AGRO does not need them). `agro train` trains on
these tokens, not on a re-encoding of the text: a sampled sequence is often not the tokenizer's canonical
encoding of its text, and re-encoded it can have more tokens than the limit that cut it, so records
written with a max_completion_length always train with the same one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from agro.data import OfflineRecord, Problem, write_offline_records
from agro.generators import HFGenerator, generate_with_progress
from agro.logprobs import completion_logprobs
from agro.models import load_for_inference
from agro.rewards.answers import is_truncated
from agro.rewards.scoring import problem_samples, score_texts
from agro.rewards.workers import open_scorer
from agro.tokens import collate, encode_prompt, eos_token_ids, prompt_text


@torch.no_grad()
def generate_records(model, tokenizer, problems: list[Problem], num_generations: int, generator: HFGenerator,
                     source: str, scorer=None, batch_size: int = 64, progress: bool = False,
                     truncated_completions: str = "zero") -> list[OfflineRecord]:
    """`progress`: a progress bar (tqdm, stderr) over the generation, the slow part. With a scorer, a
    completion cut at the length limit gets reward 0 unless truncated_completions is "keep", as in training."""
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    if progress:
        completions = generate_with_progress(generator, model, prompts, num_generations)
    else:
        completions = generator.generate(model, prompts, num_generations)
    owners = [problems[i // num_generations] for i in range(len(completions))]
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    logprobs = []  # of the sampled tokens, which the trainer reads back from `completion_ids`
    for start in range(0, len(completions), batch_size):
        ids = completions[start : start + batch_size]
        batch = collate([prompts[(start + j) // num_generations] for j in range(len(ids))], ids,
                        tokenizer.pad_token_id, device)
        lp = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.num_completion_tokens)
        logprobs += [lp[j, : len(c)].tolist() for j, c in enumerate(ids)]
    rewards = [None] * len(texts)
    if scorer is not None:
        eos = eos_token_ids(tokenizer, model)
        rewards, _ = score_texts(scorer, [prompt_text(tokenizer, p.prompt) for p in owners], texts,
                                 [p.answer for p in owners], [is_truncated(c, eos) for c in completions],
                                 truncated_completions,  # a batched function: one call (time limit) a problem
                                 samples=problem_samples(problems, num_generations, texts, completions))
    return [
        OfflineRecord(prompt=p.prompt, completion=text, reward=r, answer=p.answer, source=source,
                      behavior_logprobs=lp or None, completion_ids=ids)
        for p, text, r, lp, ids in zip(owners, texts, rewards, logprobs, completions)
        if text.strip()
    ]


def write_generations(args, problems: list[Problem]) -> int:
    """Generate per the `agro generate` flags and write the JSONL atomically; returns the record count."""
    scorer = open_scorer(args.reward, args.reward_timeout) if args.reward else None  # a bad spec fails first
    try:
        tokenizer, model = load_for_inference(args.model, args.dtype, args.device, args.trust_remote_code)
        torch.manual_seed(args.seed)
        generator = HFGenerator(tokenizer, args.max_completion_length, args.temperature, args.top_p,
                                args.batch_size)
        records = generate_records(model, tokenizer, problems, args.num_generations, generator,
                                   args.source or str(args.model), scorer, args.batch_size, progress=True,
                                   truncated_completions=args.truncated_completions)
    finally:
        if scorer is not None:
            scorer.close()
    write_atomic(args.out, records)
    return len(records)


def write_atomic(path: Path, records: list[OfflineRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write_offline_records(tmp, records)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
