"""The built-in tasks' harness, shared by `agro demo` and the benchmarks: a seed's π_ref and problems, π_ref's
offline records, the trainer config of a task (configs/demo.yaml and the task's bounds), greedy held-out
accuracy by the trainer's evaluation code, the Monte-Carlo KL(π‖π_ref) of a trained policy, and the share of
its samples that an offline set holds.

Rewards are reward specs (`module:function`, a task's `REWARD`); every scorer runs in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import torch

from agro.data import Problem, load_problems
from agro.errors import AgroError
from agro.evaluate import evaluate
from agro.generators import HFGenerator
from agro.logprobs import completion_logprobs
from agro.rewards.workers import RewardScorer
from agro.sample_records import generate_records, write_atomic
from agro.tokens import collate, encode_prompt


def demo_config_path() -> Path:
    """configs/demo.yaml of the source tree."""
    path = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"
    if not path.exists():
        raise AgroError(f"{path}: demo config not found (run the demo from a source checkout)")
    return path


def task_overrides(task: ModuleType, settings) -> list[str]:
    """Config overrides that point the trainer at a task: its reward and its prompt and completion bounds."""
    return [f"reward_function={task.REWARD}", f"max_completion_length={task.max_completion_tokens(settings)}",
            f"max_prompt_length={task.max_prompt_tokens(settings)}"]


def _write_problems(path: Path, problems: list) -> None:
    path.write_text("".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n" for p in problems))


def write_task_data(data_dir: Path, seed: int, task: ModuleType, settings, num_train: int,
                    num_heldout: int) -> tuple[list[Problem], list[Problem]]:
    """train.jsonl and heldout.jsonl of a task module (disjoint, deterministic by seed), read back as the
    trainer reads them."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_problems(data_dir / "train.jsonl", task.generate_problems(num_train, seed, "train", settings))
    _write_problems(data_dir / "heldout.jsonl", task.generate_problems(num_heldout, seed, "heldout", settings))
    train, _ = load_problems(data_dir / "train.jsonl", template="raw")
    heldout, _ = load_problems(data_dir / "heldout.jsonl", template="raw")
    return train, heldout


def prepare_seed(task: ModuleType, settings, seed: int, cache_dir: Path, data_dir: Path, num_train: int,
                 num_heldout: int, log_every: int = 0) -> dict:
    """π_ref of (task, settings, seed), built into cache_dir when missing, and the seed's problems written into
    data_dir: {task, settings, seed, ref_model, tokenizer, ref_path, data_dir, train, heldout, max_len}, max_len
    the task's completion bound."""
    ref_model, tokenizer, ref_path = task.load_or_build_reference_policy(cache_dir, seed, settings, log_every)
    train, heldout = write_task_data(data_dir, seed, task, settings, num_train, num_heldout)
    return {"task": task, "settings": settings, "seed": seed, "ref_model": ref_model, "tokenizer": tokenizer,
            "ref_path": ref_path, "data_dir": data_dir, "train": train, "heldout": heldout,
            "max_len": task.max_completion_tokens(settings)}


def write_offline(reward: str, model, tokenizer, problems: list[Problem], per_prompt: int, max_len: int, seed: int,
                  path: Path, source: str) -> list:
    """`per_prompt` generations of `model` per problem, sampled after torch.manual_seed(seed) and scored by
    `reward`, written to `path` as offline records of `source`."""
    torch.manual_seed(seed)
    with RewardScorer(reward, in_process=True) as scorer:
        generator = HFGenerator(tokenizer, max_len, batch_size=512)
        records = generate_records(model, tokenizer, problems, per_prompt, generator, source=source, scorer=scorer,
                                   batch_size=512, truncated_completions="keep")
    write_atomic(path, records)
    return records


def greedy_accuracy(reward: str, model, tokenizer, problems: list[Problem], max_len: int) -> float:
    """Mean `reward` of the greedy completions of `problems`."""
    with RewardScorer(reward, in_process=True) as scorer:
        return evaluate(model, tokenizer, problems, scorer, max_len, batch_size=512,
                        truncated_completions="keep")["accuracy"]


@torch.inference_mode()
def kl_terms(policy, reference, tokenizer, problems: list[Problem], max_len: int, samples: int,
             generation_batch_size: int = 512, batch_size: int | None = None,
             chunk_size: int = 1024) -> torch.Tensor:
    """Σ_t log π(y_t)/π_ref(y_t) of `samples` completions y ~ π (temperature 1) of each problem, prompt-major: the
    terms whose mean is the Monte-Carlo KL(π‖π_ref). Log-probs of `batch_size` rows at a time (None: all at once)."""
    prompts = [encode_prompt(tokenizer, p.prompt) for p in problems]
    completions = HFGenerator(tokenizer, max_len, batch_size=generation_batch_size).generate(policy, prompts, samples)
    owners = [prompts[i // samples] for i in range(len(completions))]
    device = next(policy.parameters()).device
    batch_size = batch_size or len(completions)
    terms = []
    for start in range(0, len(completions), batch_size):
        rows = slice(start, start + batch_size)
        batch = collate(owners[rows], completions[rows], tokenizer.pad_token_id, device)
        mine, ref = (completion_logprobs(m, batch.input_ids, batch.attention_mask, batch.num_completion_tokens,
                                         chunk_size).float() for m in (policy, reference))
        terms.append(((mine - ref) * batch.completion_mask).sum(-1))
    return torch.cat(terms)


@torch.no_grad()
def share_on_data(model, tokenizer, offline_path: Path, max_len: int, samples: int = 4) -> float:
    """Fraction of π's samples, on the offline set's prompts, that are completions the offline set holds.

    The offline objective only sees those completions; mass that leaves them is not measured by it.
    """
    records = [json.loads(line) for line in offline_path.read_text().splitlines()]
    support: dict[str, set[str]] = {}
    for r in records:
        support.setdefault(r["prompt"], set()).add(r["completion"])
    prompts = sorted(support)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    completions = HFGenerator(tokenizer, max_len, batch_size=512).generate(model, encoded, samples)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return sum(t in support[prompts[i // samples]] for i, t in enumerate(texts)) / len(texts)
