"""What the built-in tasks share: their tiny model and tokenizer, the supervised warm-up that makes π_ref,
the π_ref builds cached on disk, and greedy and sampled accuracy.

A build lives in cache_dir/<task>-<settings hash>-seed<seed>/: the model, its tokenizer and task.json
(the settings, their hash, the seed, the held-out greedy accuracy, the build time). A missing or
incomplete build is made in a temporary directory renamed into place, so concurrent builds of the same
key never leave a half-written one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class ModelSettings:
    """The tiny Llama and its supervised warm-up: the fields every task's Settings shares (and subclasses)."""

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    max_positions: int = 64
    train_steps: int = 600
    batch_size: int = 64
    lr: float = 6e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1


def split_of(prompt: str, heldout_fraction: float) -> str:
    """The split a prompt belongs to, by its hash: the same for every seed, so splits never overlap."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_fraction else "train"


def distinct_problems(sample: Callable[[random.Random], object], n: int, rng: random.Random, split: str,
                      what: object) -> list:
    """n problems of distinct prompts drawn with `sample(rng)`; ValueError naming `what` if they run out."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    problems: dict[str, object] = {}
    for _ in range(100 * n + 1000):
        p = sample(rng)
        problems.setdefault(p.prompt, p)
        if len(problems) == n:
            return list(problems.values())
    raise ValueError(f"fewer than {n} distinct {split} problems found for {what}")


def char_tokenizer(chars: str) -> PreTrainedTokenizerFast:
    """Character-level tokenizer over `chars`; adds no special tokens, pads on the left."""
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left")


def tiny_llama(settings, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized by `settings` (hidden_size, num_layers, num_heads, max_positions),
    with tied embeddings."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=4 * settings.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads,
        max_position_embeddings=settings.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def training_batch(tokenizer, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, ...]:
    """Right-padded input ids, attention mask and labels (-100 outside completion + EOS)."""
    rows = []
    for p, c in zip(prompts, completions):
        pi = tokenizer(p, add_special_tokens=False)["input_ids"]
        ci = tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((pi + ci, [-100] * len(pi) + ci))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


def warm_up(model, tokenizer, settings, examples: Callable[[], tuple[list[str], list[str]]], log_every: int = 0) -> None:
    """Supervised warm-up of π_ref: `settings.train_steps` AdamW steps (lr `settings.lr`, linear warm-up over
    `settings.warmup_steps`, then linear decay to 0) of cross-entropy on the completions of `examples()`,
    one (prompts, completions) batch per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / settings.warmup_steps) * max(0.0, 1 - s / settings.train_steps)
    )
    model.train()
    for step in range(settings.train_steps):
        ids, mask, labels = training_batch(tokenizer, *examples())
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(f"warm-up step {step:5d}  loss {loss.item():.4f}", flush=True)
    model.eval()


@torch.no_grad()
def generate_completions(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 256, **gen_kwargs
) -> list[str]:
    """Completions (text up to EOS) for each prompt, left-padded in batches; greedy unless sampling kwargs say."""
    out = []
    for i in range(0, len(prompts), batch_size):
        rows = tokenizer(prompts[i : i + batch_size], add_special_tokens=False)["input_ids"]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **({"do_sample": False} | gen_kwargs),
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def greedy_accuracy(reward: Callable[[str, str, str | None], float], model, tokenizer, problems,
                    max_new_tokens: int, batch_size: int = 256) -> float:
    """Mean reward of the greedy completions of `problems`."""
    completions = generate_completions(model, tokenizer, [p.prompt for p in problems], max_new_tokens, batch_size)
    return sum(reward(p.prompt, c, p.answer) for p, c in zip(problems, completions)) / len(problems)


def sampled_accuracy(reward: Callable[[str, str, str | None], float], model, tokenizer, problems, num_samples: int,
                     max_new_tokens: int, temperature: float = 1.0, batch_size: int = 256) -> tuple[float, float]:
    """(mean@k, pass@k) over problems, from k = num_samples completions each, sampled at `temperature`."""
    prompts = [p.prompt for p in problems for _ in range(num_samples)]
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size, **sampling)
    return mean_and_pass_at_k(reward, problems, completions, num_samples)


def build_reference_policy(out_dir: Path, name: str, settings, seed: int, tokenizer: PreTrainedTokenizerFast,
                           train: Callable[[LlamaForCausalLM, PreTrainedTokenizerFast], None],
                           heldout_accuracy: Callable[[LlamaForCausalLM, PreTrainedTokenizerFast], float]) -> Path:
    """Seed torch, warm up a fresh `tiny_llama` with `train(model, tokenizer)`, score it with
    `heldout_accuracy(model, tokenizer)`, and write the build into out_dir."""
    torch.manual_seed(seed)
    start = time.time()
    model = tiny_llama(settings, tokenizer)
    train(model, tokenizer)
    train_s = time.time() - start
    accuracy = heldout_accuracy(model, tokenizer)
    return write_build(Path(out_dir), name, settings, seed, model, tokenizer, accuracy, train_s)


def write_build(out_dir: Path, name: str, settings, seed: int, model, tokenizer, accuracy: float,
                train_seconds: float) -> Path:
    """Save model, tokenizer and task.json of a finished build into out_dir."""
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    meta = {
        "name": name,
        "task": dataclasses.asdict(settings),
        "settings_hash": settings.settings_hash(),
        "seed": seed,
        "heldout_greedy_accuracy": accuracy,  # on generate_problems(settings.num_heldout, seed, "heldout", settings)
        "train_seconds": round(train_seconds, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / "task.json").write_text(json.dumps(meta, indent=2))
    return out_dir


def load_task(path: str | Path, settings_class) -> tuple[object, dict]:
    """(settings, full task.json) of a build."""
    meta = json.loads((Path(path) / "task.json").read_text())
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["task"].items()}
    return settings_class(**fields), meta


def _is_complete(path: Path, settings, seed: int) -> bool:
    try:
        meta = load_task(path, type(settings))[1]
        return meta["settings_hash"] == settings.settings_hash() and meta["seed"] == seed
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_or_build(cache_dir: str | Path, name: str, settings, seed: int, build: Callable[[Path], object]):
    """(model, tokenizer, path) of the build of (name, settings, seed); `build(tmp_dir)` makes a missing one."""
    path = Path(cache_dir) / f"{name}-{settings.settings_hash()}-seed{seed}"
    if not _is_complete(path, settings, seed):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not
        try:
            build(tmp)
            if not _is_complete(path, settings, seed):  # unless a concurrent build finished first
                shutil.rmtree(path, ignore_errors=True)
                tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path


def mean_and_pass_at_k(reward: Callable[[str, str, str | None], float], problems, completions: list[str],
                       num_samples: int) -> tuple[float, float]:
    """(mean@k, pass@k) of `completions`: `num_samples` per problem, problem-major."""
    r = torch.tensor([reward(p.prompt, c, p.answer)
                      for i, p in enumerate(problems) for c in completions[i * num_samples:(i + 1) * num_samples]])
    r = r.view(len(problems), num_samples)
    return r.mean().item(), r.max(dim=1).values.mean().item()
