"""What the built-in tasks share: their settings' cache key, tiny model and tokenizer, and `TaskKit`, the
machinery each task binds to its own parts: problem sets, the supervised warm-up that makes π_ref, the π_ref
builds cached on disk, and greedy and sampled accuracy.

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
from typing import Any, ClassVar

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
    """The tiny Llama and its supervised warm-up: the fields every task's Settings shares (and subclasses).
    A subclass sets CACHE_KEY, which `settings_hash` hashes with all its fields."""

    CACHE_KEY: ClassVar[tuple] = ()

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    max_positions: int = 64
    train_steps: int = 600
    batch_size: int = 64
    lr: float = 6e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1

    def settings_hash(self) -> str:
        """The build cache's key: the first 16 hex digits of sha256(JSON of [*CACHE_KEY, every field])."""
        blob = json.dumps([*self.CACHE_KEY, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def split_of(prompt: str, heldout_fraction: float) -> str:
    """The split a prompt belongs to, by its hash: the same for every seed, so splits never overlap."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64
    return "heldout" if h < heldout_fraction else "train"


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


def mean_and_pass_at_k(reward: Callable[[str, str, str | None], float], problems, completions: list[str],
                       num_samples: int) -> tuple[float, float]:
    """(mean@k, pass@k) of `completions`: `num_samples` per problem, problem-major."""
    r = torch.tensor([reward(p.prompt, c, p.answer)
                      for i, p in enumerate(problems) for c in completions[i * num_samples:(i + 1) * num_samples]])
    r = r.view(len(problems), num_samples)
    return r.mean().item(), r.max(dim=1).values.mean().item()


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


@dataclass(frozen=True)
class TaskKit:
    """One task's parts, and the shared machinery bound to them. A task module exposes these methods as its
    interface (`agro.tasks`); `settings` None means the task's default Settings()."""

    name: str
    settings_class: type
    seed_prefix: str  # RNG seeds: f"{seed_prefix}{seed}-{split}" (problems), f"{seed_prefix}{seed}-warmup"
    chars: str  # the tokenizer's characters
    sample_problem: Callable[[random.Random, str, Any], Any]  # (rng, split, settings) -> a problem of that split
    warmup_completion: Callable[[Any, random.Random, Any], str]  # (problem, rng, settings) -> π_ref's target text
    reward: Callable[[str, str, str | None], float]  # (prompt, completion, answer) -> 1.0 or 0.0
    budget: Callable[[list, Any], int]  # (problems, settings) -> max new tokens when scoring completions

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """Character-level tokenizer over the task's characters; adds no special tokens, pads on the left."""
        return char_tokenizer(self.chars)

    def generate_problems(self, n: int, seed: int, split: str, settings=None) -> list:
        """n distinct problems of one split; deterministic by (seed, split), splits disjoint for every seed.
        ValueError if `sample_problem` finds fewer distinct prompts."""
        settings = settings or self.settings_class()
        rng = random.Random(f"{self.seed_prefix}{seed}-{split}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        problems: dict[str, object] = {}
        for _ in range(100 * n + 1000):
            p = self.sample_problem(rng, split, settings)
            problems.setdefault(p.prompt, p)
            if len(problems) == n:
                return list(problems.values())
        raise ValueError(f"fewer than {n} distinct {split} problems found for {settings}")

    def warm_up(self, model, tokenizer, settings, seed: int, log_every: int = 0) -> None:
        """Supervised warm-up of π_ref: `settings.train_steps` AdamW steps (lr `settings.lr`, linear warm-up over
        `settings.warmup_steps`, then linear decay to 0) of cross-entropy on the completions, one batch of
        `settings.batch_size` training problems and their `warmup_completion`s per step."""
        rng = random.Random(f"{self.seed_prefix}{seed}-warmup")
        opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / settings.warmup_steps) * max(0.0, 1 - s / settings.train_steps)
        )
        model.train()
        for step in range(settings.train_steps):
            batch = [self.sample_problem(rng, "train", settings) for _ in range(settings.batch_size)]
            completions = [self.warmup_completion(p, rng, settings) for p in batch]
            ids, mask, labels = training_batch(tokenizer, [p.prompt for p in batch], completions)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if log_every and step % log_every == 0:
                print(f"warm-up step {step:5d}  loss {loss.item():.4f}", flush=True)
        model.eval()

    def evaluate_greedy(self, model, tokenizer, problems: list, batch_size: int = 256, settings=None) -> float:
        """Greedy accuracy over problems: the mean reward of their greedy completions."""
        budget = self.budget(problems, settings or self.settings_class())
        completions = generate_completions(model, tokenizer, [p.prompt for p in problems], budget, batch_size)
        return sum(self.reward(p.prompt, c, p.answer) for p, c in zip(problems, completions)) / len(problems)

    def sample_accuracy(self, model, tokenizer, problems: list, num_samples: int, temperature: float = 1.0,
                        batch_size: int = 256, settings=None) -> tuple[float, float]:
        """(mean@k, pass@k) over problems, from k = num_samples completions each, sampled at `temperature`."""
        budget = self.budget(problems, settings or self.settings_class())
        prompts = [p.prompt for p in problems for _ in range(num_samples)]
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        completions = generate_completions(model, tokenizer, prompts, budget, batch_size, **sampling)
        return mean_and_pass_at_k(self.reward, problems, completions, num_samples)

    def build_reference_policy(self, out_dir: str | Path, seed: int = 0, settings=None, log_every: int = 0) -> Path:
        """Seed torch, warm up a fresh `tiny_llama` into π_ref, score its greedy accuracy on
        settings.num_heldout held-out problems, and write model, tokenizer and task.json into out_dir."""
        settings = settings or self.settings_class()
        heldout = self.generate_problems(settings.num_heldout, seed, "heldout", settings)
        tokenizer = self.build_tokenizer()
        torch.manual_seed(seed)
        start = time.time()
        model = tiny_llama(settings, tokenizer)
        self.warm_up(model, tokenizer, settings, seed, log_every)
        train_s = time.time() - start
        accuracy = self.evaluate_greedy(model, tokenizer, heldout, settings=settings)
        return write_build(Path(out_dir), self.name, settings, seed, model, tokenizer, accuracy, train_s)

    def load_task(self, path: str | Path) -> tuple[Any, dict]:
        """(settings, full task.json) of a π_ref build."""
        return load_task(path, self.settings_class)

    def load_or_build(self, build: Callable[[Path, int, Any, int], Path], cache_dir: str | Path, seed: int = 0,
                      settings=None, log_every: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, Path]:
        """(model, tokenizer, path) of π_ref for (settings, seed), from cache_dir/<name>-<settings hash>-seed<seed>;
        `build(tmp_dir, seed, settings, log_every)` makes a missing or incomplete one first."""
        settings = settings or self.settings_class()
        path = Path(cache_dir) / f"{self.name}-{settings.settings_hash()}-seed{seed}"
        if not _is_complete(path, settings, seed):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not
            try:
                build(tmp, seed, settings, log_every)
                if not _is_complete(path, settings, seed):  # unless a concurrent build finished first
                    shutil.rmtree(path, ignore_errors=True)
                    tmp.rename(path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path), path
