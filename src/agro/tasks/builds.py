"""What the built-in tasks share: their tiny model and tokenizer, the π_ref builds cached on disk, and
accuracy at k samples.

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
from collections.abc import Callable
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
