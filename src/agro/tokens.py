"""The token layout shared by generation, log-probs and training: prompt encoding, the padded batch, EOS cuts.

A batch row is `left-padded prompt | right-padded completion`: the layout HF `generate` uses, so the
policy's log-probs of a completion are computed exactly as it was sampled. Padding is torch's
`pad_sequence` (left for prompts, right for completions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from agro.errors import AgroError


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


def pad(rows: list[list[int]] | list[torch.Tensor], value: float = 0, side: str = "right",
        dtype: torch.dtype = torch.long, width: int = 0) -> torch.Tensor:
    """Rows padded with `value` on `side` to the longest (and to at least `width` columns): [B, W]."""
    tensors = [torch.as_tensor(r, dtype=dtype) for r in rows]
    out = pad_sequence(tensors, batch_first=True, padding_value=value, padding_side=side)
    if out.shape[1] < width:
        out = torch.nn.functional.pad(out, (width - out.shape[1], 0) if side == "left" else (0, width - out.shape[1]),
                                      value=value)
    return out


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest: input ids and attention mask [B, P]."""
    return pad(prompts, pad_id, "left"), pad([[1] * len(x) for x in prompts], 0, "left")


def collate(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device=None) -> TokenBatch:
    """Left-pad prompts and right-pad completions to the longest in this batch (padding trimmed per batch;
    at least one completion column)."""
    prompt_ids, prompt_attn = left_pad(prompts, pad_id)
    comp = pad(completions, pad_id, width=1)
    cmask = pad([[1.0] * len(y) for y in completions], dtype=torch.float32, width=1)
    ids = torch.cat([prompt_ids, comp], dim=1)
    attn = torch.cat([prompt_attn, cmask.long()], dim=1)
    return TokenBatch(ids.to(device), attn.to(device), cmask.to(device), comp.shape[1])


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
