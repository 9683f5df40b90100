"""A KV cache for generation that writes each new position in place instead of concatenating.

transformers' `DynamicLayer` grows by `torch.cat` at every decoding step, so sampling T tokens copies
the whole cache T times: O(T²) memory traffic, a third of `generate`'s time at a few hundred tokens on
a CPU (64 × 256 tokens with the 11M benchmark model: 11.4 s concatenating, 7.5 s in place;
benchmarks/generation_cache.py). Here the keys and values live in buffers sized once for prompt +
completion, and the layer's `keys`/`values` are views of their first L positions: the same tensors an
attention layer reads, without the copies.
"""

from __future__ import annotations

import torch
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
