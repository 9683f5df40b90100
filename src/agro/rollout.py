"""Generation backends and the token-level batch layout shared by rollout, log-probs and training.

A batch row is `left-padded prompt | right-padded completion`: the layout HF `generate` uses, so
the policy's log-probs of a completion are computed exactly as it was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from agro.errors import AgroError
from agro.kv_cache import preallocate
from agro.logprobs import empty_cache, prefill


def encode_prompt(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt: chat messages through the chat template, strings as they are."""
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None) is None:
            raise AgroError("chat-message prompts need a tokenizer with a chat template (or prompt_template: plain)")
        return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                  return_dict=False))
    return tokenizer(prompt, add_special_tokens=True)["input_ids"]


def prompt_text(tokenizer, prompt: str | list[dict]) -> str:
    """The prompt as the reward function sees it (chat prompts rendered by the template)."""
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, P+C]
    attention_mask: torch.Tensor  # [B, P+C]
    completion_mask: torch.Tensor  # [B, C] float
    num_completion_tokens: int  # C


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest: input ids and attention mask [B, P]."""
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), p), dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, p - len(x) :] = torch.tensor(x, dtype=torch.long)
        attn[i, p - len(x) :] = 1
    return ids, attn


def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device=None) -> TokenBatch:
    """Left-pad prompts and right-pad completions to the longest in this batch (padding trimmed per batch)."""
    prompt_ids, prompt_attn = left_pad(prompts, pad_id)
    c = max(1, max(len(y) for y in completions))
    comp = torch.full((len(prompts), c), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(prompts), c), dtype=torch.float32)
    for i, y in enumerate(completions):
        comp[i, : len(y)] = torch.tensor(y, dtype=torch.long)
        cmask[i, : len(y)] = 1
    ids = torch.cat([prompt_ids, comp], dim=1)
    attn = torch.cat([prompt_attn, cmask.long()], dim=1)
    return TokenBatch(ids.to(device), attn.to(device), cmask.to(device), c)


def completion_token_ids(tokenizer, completion: str, max_completion_length: int) -> list[int]:
    """The tokens a completion text is trained on: its encoding, plus EOS unless it fills the budget
    (a completion that long was cut there, as generation would cut it)."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id] if len(ids) < max_completion_length else ids


# Unicode normalisation (NFC, NFKC) composes at most 4 code points into one: the longest canonical decomposition
_MAX_NORMALIZATION_MERGE = 4


def max_text_chars(tokenizer, max_tokens: int) -> int | None:
    """Characters beyond which a text surely has more than `max_tokens` tokens (None: unknown).

    No token covers more characters than its vocabulary entry spells (byte-level BPE spells one
    character per byte, so at least as many as the text has; SentencePiece spells a space as one '▁'),
    and NFC/NFKC normalisation merges at most 4 characters into one. So a text longer than
    max_tokens × (longest entry) × 4 characters cannot fit, and is rejected from its length before it
    is tokenised (tokenising a 50 MB text takes minutes and tens of GB). The bound assumes that the
    tokenizer's normaliser deletes no characters (accent or whitespace stripping would).
    """
    try:
        longest = max(len(token) for token in tokenizer.get_vocab())
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    return max_tokens * max(1, longest) * _MAX_NORMALIZATION_MERGE


def text_chars(prompt: str | list[dict]) -> int:
    """Characters of a prompt's text (chat messages: their contents; the template only adds to them)."""
    if isinstance(prompt, list):
        return sum(len(m.get("content", "")) if isinstance(m.get("content"), str) else 0 for m in prompt)
    return len(prompt)


def cut_at_eos(tokens: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    """Completion up to and including its first EOS; trailing padding dropped when there is none."""
    for i, t in enumerate(tokens):
        if t in eos_ids:
            return tokens[: i + 1]
    while tokens and tokens[-1] == pad_id and pad_id not in eos_ids:
        tokens = tokens[:-1]
    return tokens


def eos_token_ids(tokenizer, model) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return ids


class HFGenerator:
    """Batched transformers `generate` with KV cache and left padding.

    Sampling is from the policy itself (top_k disabled); `temperature`/`top_p` other than 1 make the
    samples slightly off-policy, which AGRO handles as any other off-policy data. With the dynamic
    cache the samples of a prompt share its prefill (`shared_prefill`) and each step's keys and values
    are written in place (`agro.kv_cache`); `static_cache_len` gives `generate` a static cache of that
    many tokens instead (compiled decoding on a GPU).
    """

    def __init__(self, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, static_cache_len: int | None = None, share_prefill: bool = True,
                 in_place_cache: bool = True):
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        self.batch_size = batch_size
        self.static_cache_len = static_cache_len  # None: dynamic cache; else a static cache of this many tokens
        self.share_prefill = share_prefill  # dynamic cache: the samples of a prompt share its prefill
        self.in_place_cache = in_place_cache  # dynamic cache: written in place (agro.kv_cache), not concatenated

    def _config(self, model, do_sample: bool) -> GenerationConfig:
        eos = sorted(eos_token_ids(self.tokenizer, model))
        common = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                  "eos_token_id": eos, "use_cache": True}
        if self.static_cache_len is not None:
            # one cache size for every call, so that a compiled decoding step is not recompiled per prompt width
            common.update(cache_implementation="static", max_cache_len=self.static_cache_len)
        if do_sample:
            return GenerationConfig(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0, **common)
        return GenerationConfig(do_sample=False, **common)

    @torch.inference_mode()
    def generate(self, model, prompts: list[list[int]], num_generations: int = 1, do_sample: bool = True
                 ) -> list[list[int]]:
        """`num_generations` completions per prompt, prompt-major order, each cut after its first EOS."""
        config = self._config(model, do_sample)
        eos = set(config.eos_token_id)
        pad = self.tokenizer.pad_token_id
        device = next(model.parameters()).device
        per_call = max(1, self.batch_size // num_generations)
        was_training = model.training
        model.eval()
        out: list[list[int]] = []
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            ids, attn = (t.to(device) for t in left_pad(chunk, pad))
            width = ids.shape[1]
            sequences = model.generate(  # rows prompt-major, as num_return_sequences would order them
                input_ids=ids.repeat_interleave(num_generations, 0),
                attention_mask=attn.repeat_interleave(num_generations, 0), generation_config=config,
                **self._cache(model, ids, attn, num_generations),
            )
            out.extend(cut_at_eos(row.tolist(), eos, pad) for row in sequences[:, width:].cpu())
        model.train(was_training)
        return out

    def _cache(self, model, ids: torch.Tensor, attn: torch.Tensor, num_generations: int) -> dict:
        """`generate`'s cache argument: the shared prefill if any, in buffers written in place; {}: its own."""
        if self.static_cache_len is not None or getattr(model.generation_config, "cache_implementation", None):
            return {}  # the static cache, or the cache kind the model's generation config asks for
        kwargs = {}
        if num_generations > 1 and ids.shape[1] > 1 and self.share_prefill:
            kwargs = shared_prefill(model, ids, attn, num_generations)
        if not self.in_place_cache:
            return kwargs
        if not kwargs:
            empty = empty_cache(model.get_decoder())
            kwargs = {} if empty is None else {empty[1]: empty[0]}
        return {arg: preallocate(cache, ids.shape[1] + self.max_new_tokens) for arg, cache in kwargs.items()}


def generate_with_progress(generator, model, prompts: list[list[int]], num_generations: int = 1,
                           do_sample: bool = True, desc: str = "generate") -> list[list[int]]:
    """`generator.generate` in chunks of one generate call (HF: `batch_size` sequences), with a progress bar
    over prompts (tqdm, on stderr); the same completions as one call."""
    from tqdm.auto import tqdm

    per_call = max(1, getattr(generator, "batch_size", len(prompts) * num_generations) // num_generations)
    out: list[list[int]] = []
    with tqdm(total=len(prompts), desc=desc, unit="prompt", dynamic_ncols=True) as bar:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start : start + per_call]
            out += generator.generate(model, chunk, num_generations, do_sample=do_sample)
            bar.update(len(chunk))
    return out


def shared_prefill(model, ids: torch.Tensor, attn: torch.Tensor, copies: int) -> dict:
    """`generate`'s cache argument holding each prompt's first L−1 tokens, run once and repeated `copies` times.

    `generate` then feeds only the last prompt column and samples from there: the G samples of a prompt
    share one prefill instead of G (generation 1.1× faster with 9-token prompts, 1.3× with 64, 1.8× with
    200: the 11M benchmark model, 8 × 8 samples of 32 tokens, CPU; docs/performance.md). {} (generate
    does its own prefill) when `agro.logprobs.prefill` cannot fill a cache for this model. A model whose
    generation config asks for a cache kind of its own is not sent here (`HFGenerator._cache`).
    """
    filled = prefill(model.get_decoder(), ids[:, :-1], attn[:, :-1], "generate prefills every sample")
    if filled is None:
        return {}
    _, cache, cache_arg = filled
    cache.batch_repeat_interleave(copies)
    return {cache_arg: cache}


def make_generator(backend: str, tokenizer, max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                   gpu_memory_utilization: float = 0.3, model_name_or_path: str | None = None,
                   max_model_len: int | None = None, cache_implementation: str = "dynamic"):
    """`hf`: transformers generate; `vllm`: a colocated vLLM engine (optional extra, GPU only)."""
    if backend == "hf":
        static_len = max_model_len if cache_implementation == "static" else None
        return HFGenerator(tokenizer, max_new_tokens, temperature, top_p, batch_size, static_len)
    if backend != "vllm":
        raise AgroError(f"unknown generation backend {backend!r}; choose hf or vllm")
    from agro.vllm_backend import VLLMGenerator

    return VLLMGenerator(tokenizer, max_new_tokens, temperature, top_p, gpu_memory_utilization,
                         model_name_or_path=model_name_or_path, max_model_len=max_model_len)
