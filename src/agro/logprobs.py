"""Per-token log-probs of completions under a causal LM, without B·T·V logits in memory.

    log π(y_t | x, y_<t) = z_t[y_t] − logsumexp_v z_t[v],   z_t = lm_head(h_t)

is evaluated over chunks of positions. With grad enabled each chunk is checkpointed, so the
backward pass recomputes that chunk's logits instead of keeping all of them alive: peak memory is
O(chunk_size · V) instead of O(B · T · V).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from agro.errors import AgroError
from agro.kv_cache import shared_prompt_hidden

# Config fields through which some architectures rescale logits after lm_head. Their meaning differs
# between models (Granite divides by `logits_scaling`, HyperCLOVA X multiplies, MiniCPM3 divides the
# hidden state), so they are refused rather than guessed.
_LOGIT_SCALES = ("logit_scale", "logits_scaling", "lm_head_multiplier", "logits_soft_cap")


def naive_token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: log_softmax(logits)[targets] with the full [..., V] log-softmax materialised."""
    return logits.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module, softcap: float | None):
    """z[y] − logsumexp(z) for z = lm_head(hidden) in float32 (soft-capped: z ← c·tanh(z/c))."""
    logits = lm_head(hidden).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    softcap: float | None = None,
) -> torch.Tensor:
    """log softmax(lm_head(hidden))[targets]: [B,T,H], [B,T] -> [B,T] float32, chunk_size positions at a time.

    Gradients reach `hidden` and the parameters of `lm_head`; with grad enabled each chunk's logits are
    recomputed in the backward pass (activation checkpointing).
    """
    shape = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    out = []
    for i in range(0, targets.numel(), chunk_size):
        args = (hidden[i : i + chunk_size], targets[i : i + chunk_size], lm_head, softcap)
        if torch.is_grad_enabled():
            out.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False))
        else:
            out.append(_chunk_logprobs(*args))
    return torch.cat(out).reshape(shape)


def logit_softcap(config) -> float | None:
    """The final-logit soft-cap c of a HF config (logits ← c·tanh(logits/c)), or None.

    Raises for configs that rescale logits in a way `completion_logprobs` does not reproduce.
    """
    config = config.get_text_config()
    for name in _LOGIT_SCALES:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            raise AgroError(
                f"{config.model_type} config sets {name}={value}: logits are rescaled after lm_head in a "
                "model-specific way that agro's log-probs do not reproduce; this model is not supported"
            )
    return getattr(config, "final_logit_softcapping", None)


def completion_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_completion_tokens: int,
    chunk_size: int = 1024,
    share_prompts: bool = True,
) -> torch.Tensor:
    """log π(y_t | x, y_<t) for the last C = num_completion_tokens columns of `input_ids`: [B,L] -> [B,C].

    Rows are left-padded prompt + right-padded completion, so completions occupy columns L−C..L−1 and
    the hidden state at column p predicts the token at p+1. Position ids follow HF generate
    (cumsum(mask) − 1), so a left-padded row gets the same log-probs as unpadded. Entries at padded
    completion positions are finite but meaningless: mask them. Works with peft models (inside
    `model.disable_adapter()` it gives the base model's log-probs). `share_prompts`: run each distinct
    prompt once where possible (`agro.kv_cache.shared_prompt_hidden`); the same values up to float rounding.
    """
    C = num_completion_tokens
    if not 0 < C < input_ids.shape[1]:
        raise ValueError(
            f"need 0 < num_completion_tokens < sequence length, got {C} and {input_ids.shape[1]}"
        )
    softcap = logit_softcap(model.config)
    decoder = model.get_decoder()
    hidden = shared_prompt_hidden(decoder, input_ids, attention_mask, C) if share_prompts else None
    if hidden is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state[:, -C - 1 : -1]
    return token_logprobs(hidden, model.get_output_embeddings(), input_ids[:, -C:], chunk_size, softcap)


class CompletionLogprobs(nn.Module):
    """A causal LM whose forward is `completion_logprobs`: the module to hand to accelerate.

    Distributed wrappers (DDP, FSDP, DeepSpeed) hook the module they wrap: DDP prepares its gradient
    all-reduce, FSDP gathers the root's parameters. `completion_logprobs` runs the decoder and the output
    head as submodules, which would bypass those hooks, so the trainer wraps this module instead of
    the LM. Its state-dict keys are the LM's with the prefix `lm.`. It shows accelerate the LM's config,
    layer classes and embeddings, which DeepSpeed's "auto" sizes and FSDP's wrapping and loading read.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.config = lm.config
        self._no_split_modules = getattr(lm, "_no_split_modules", None)  # FSDP wraps these layer classes

    def tie_weights(self) -> None:
        self.lm.tie_weights()

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion_tokens: int,
                chunk_size: int = 1024) -> torch.Tensor:
        return completion_logprobs(self.lm, input_ids, attention_mask, num_completion_tokens, chunk_size)
