"""The KV caches agro fills itself: one prefill shared by the samples of a prompt, written in place.

Shared prefix: the U distinct prompts of a batch run through the decoder once and the cache is gathered
(log-prob pass, `shared_prompt_hidden`) or repeated (generation, `shared_prefill`) to their rows, so a group
of G samples costs its prompt once instead of G times. Only plain full-attention caches qualify; a decoder
class that fails with a cache agro filled is remembered (`cache_shareable`) and runs in full from then on.

In place: transformers' `DynamicLayer` grows by `torch.cat` at every decoding step, so sampling T tokens copies
the whole cache T times: O(T²) memory traffic, a third of `generate`'s time at a few hundred tokens on
a CPU (64 × 256 tokens with the 11M benchmark model: 11.4 s concatenating, 7.5 s in place;
benchmarks/generation_cache.py). Here the keys and values live in buffers sized once for prompt +
completion, and the layer's `keys`/`values` are views of their first L positions: the same tensors an
attention layer reads, without the copies.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn
from transformers.cache_utils import DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers of `capacity` positions.

    `update` writes the new positions after the L cached ones. Everything else is DynamicLayer's:
    methods that replace `keys` (batch_repeat_interleave, batch_select_indices, reorder_cache,
    offload) leave a tensor that is not a view of the buffers, and the next `update` copies it into
    new buffers once; `crop` leaves a shorter view, which the next `update` writes after. A buffer too
    small for a sequence is replaced by one twice the length needed.

    For generation without grad: writing in place, an update after `crop` overwrites positions that
    views returned earlier still show, and autograd could not differentiate through the writes. The
    buffers take `capacity` positions for every row from the first update, as a static cache does,
    where DynamicLayer grows only as far as the longest sample goes.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if not self._holds(key_states, start, end):
            self._reallocate(key_states, value_states, start, end)
        keys, values = self.buffers
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        """As DynamicLayer: drop the tensors, buffers included."""
        self.buffers = None
        super().reset()

    def _holds(self, key_states: torch.Tensor, start: int, end: int) -> bool:
        """Whether the buffers fit `end` positions of these rows and hold the cached `start` ones."""
        if self.buffers is None:
            return False
        keys = self.buffers[0]
        return (keys.shape[:-2] == key_states.shape[:-2] and keys.shape[-1] == key_states.shape[-1]
                and keys.dtype == key_states.dtype and keys.device == key_states.device
                and keys.shape[-2] >= end and (start == 0 or self.keys.data_ptr() == keys.data_ptr()))

    def _reallocate(self, key_states: torch.Tensor, value_states: torch.Tensor, start: int, end: int) -> None:
        length = self.capacity if end <= self.capacity else 2 * end
        self.buffers = tuple(new.new_empty((*new.shape[:-2], length, new.shape[-1]))
                             for new in (key_states, value_states))
        if start:
            self.buffers[0][..., :start, :] = self.keys
            self.buffers[1][..., :start, :] = self.values


def preallocate(cache: DynamicCache, capacity: int) -> DynamicCache:
    """`cache` with its full-attention `DynamicLayer`s, and what they hold, moved into PreallocatedLayers."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer:
            moved = PreallocatedLayer(capacity)
            moved.__dict__.update(layer.__dict__)  # keys, values, is_initialized, device
            cache.layers[i] = moved
    return cache


# Without grad the full pass frees each layer's keys and values; the shared pass keeps the whole cache
# until the completions have run. Above this size the full pass is used instead.
NO_GRAD_CACHE_BYTES = 2**30
_UNSHAREABLE: set[type] = set()  # decoder classes that could not run from a cache agro filled (process-wide)


def cache_shareable(decoder_class: type) -> bool:
    """False once a decoder of this class has failed with a cache agro filled (`_give_up`)."""
    return decoder_class not in _UNSHAREABLE


def empty_cache(decoder: nn.Module) -> tuple[DynamicCache, str] | None:
    """A fresh cache for `decoder` and the forward's keyword for it. None when a layer is not plain full
    attention (sliding windows, hybrid or recurrent layers) or the decoder's class failed with a cache
    agro filled (`_give_up`)."""
    if not cache_shareable(type(decoder)):
        return None
    cache = DynamicCache(config=decoder.config)
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return cache, "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def prefill(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, instead: str):
    """Left-padded prompts through `decoder` into a fresh KV cache: (output, cache, the forward's cache keyword).

    Shared by the log-prob pass and generation, which run each distinct prompt once from it. None when
    the config's cache is not plain full attention (sliding windows, hybrid or recurrent layers) or the
    decoder cannot fill it; then its class is remembered and a warning says what agro does `instead`.
    """
    empty = empty_cache(decoder)
    if empty is None:
        return None
    cache, cache_arg = empty
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = cached_forward(decoder, cache, cache_arg, instead, input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=positions)
    if out is None:
        return None
    if cache.get_seq_length() != input_ids.shape[1]:
        _give_up(decoder, "the decoder left the cache empty", instead)
        return None
    return out, cache, cache_arg


def cached_forward(decoder: nn.Module, cache: DynamicCache, cache_arg: str, instead: str, **inputs):
    """`decoder(**inputs)` reading and extending `cache`; None, with `_give_up`, when the decoder raises."""
    try:
        return decoder(**inputs, use_cache=True, **{cache_arg: cache})
    except torch.OutOfMemoryError:
        raise
    except (AttributeError, TypeError, ValueError, RuntimeError, NotImplementedError) as err:
        # a decoder with a cache class of its own rejects or mishandles a DynamicCache
        _give_up(decoder, f"{type(err).__name__}: {err}", instead)
        return None


def _give_up(decoder: nn.Module, failure: str, instead: str) -> None:
    _UNSHAREABLE.add(type(decoder))
    warnings.warn(f"agro: {type(decoder).__name__} cannot run from a shared prompt cache ({failure}); "
                  f"{instead} from now on", stacklevel=2)


def shared_prompt_hidden(decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          num_completion_tokens: int) -> torch.Tensor | None:
    """Hidden states that predict the completion tokens, [B, C, H], with each distinct prompt run once.

    The U distinct prompts go through the decoder once, filling a KV cache; the cache is gathered to
    the B rows and the completions run against it, so a group of G samples of one prompt costs the
    prompt once instead of G times. Gradients flow through the gather to the prompt's single pass.
    None (the caller then runs every row in full) when no prompt repeats; when the cache is not plain
    full attention (sliding windows, hybrid or recurrent layers) or the decoder does not fill it; when
    activations are recomputed in backward (gradient checkpointing would rerun the cache updates); and,
    without grad, when the cache would exceed NO_GRAD_CACHE_BYTES.
    """
    B, L = input_ids.shape
    P = L - num_completion_tokens
    key = torch.cat([input_ids[:, :P], attention_mask[:, :P].long()], dim=1)
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(unique) == B:
        return None
    config = decoder.config
    if torch.is_grad_enabled():
        if getattr(decoder, "gradient_checkpointing", False) or any(
                hasattr(m, "_checkpoint_wrapped_module") for m in decoder.modules()):
            return None
    else:
        layers, attention_heads = getattr(config, "num_hidden_layers", None), getattr(config, "num_attention_heads", None)
        if not layers or not attention_heads:
            return None  # cannot size the cache
        heads = getattr(config, "num_key_value_heads", None) or attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // attention_heads
        element = next(decoder.parameters()).element_size()
        if 2 * layers * heads * head_dim * B * L * element > NO_GRAD_CACHE_BYTES:
            return None
    instead = "computing every row in full"
    filled = prefill(decoder, unique[:, :P], unique[:, P:].to(attention_mask.dtype), instead)
    if filled is None:
        return None
    prompt, cache, cache_arg = filled
    cache.batch_select_indices(inverse)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    completion = cached_forward(decoder, cache, cache_arg, instead, input_ids=input_ids[:, P:],
                                attention_mask=attention_mask, position_ids=positions[:, P:])
    if completion is None:
        return None
    return torch.cat([prompt.last_hidden_state[inverse, -1:], completion.last_hidden_state[:, :-1]], dim=1)


def shared_prefill(model, ids: torch.Tensor, attn: torch.Tensor, copies: int) -> dict:
    """`generate`'s cache argument holding each prompt's first L−1 tokens, run once and repeated `copies` times.

    `generate` then feeds only the last prompt column and samples from there: the G samples of a prompt
    share one prefill instead of G (generation 1.1× faster with 9-token prompts, 1.3× with 64, 1.8× with
    200: the 11M benchmark model, 8 × 8 samples of 32 tokens, CPU; docs/results/performance.md). {} (generate
    does its own prefill) when `prefill` cannot fill a cache for this model. A model whose
    generation config asks for a cache kind of its own is not sent here (`HFGenerator._cache`).
    """
    filled = prefill(model.get_decoder(), ids[:, :-1], attn[:, :-1], "generate prefills every sample")
    if filled is None:
        return {}
    _, cache, cache_arg = filled
    cache.batch_repeat_interleave(copies)
    return {cache_arg: cache}
