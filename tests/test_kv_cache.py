"""The in-place generation cache returns what transformers' concatenating DynamicLayer returns."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_generators import MODELS, PROMPTS, TOKENIZER, model_named
from transformers.cache_utils import DynamicCache, DynamicLayer

from agro.generators import HFGenerator
from agro.kv_cache import PreallocatedLayer, preallocate

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("update"), st.integers(1, 5)),
    st.tuples(st.just("repeat"), st.integers(1, 3)),
    st.tuples(st.just("select"), st.integers(0, 2**16)),
    st.tuples(st.just("reorder"), st.integers(0, 2**16)),
    st.tuples(st.just("crop"), st.integers(1, 3)),
    st.tuples(st.just("reset"), st.integers(1, 4)),
), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS, capacity=st.integers(1, 12))
@example(operations=[("update", 2), ("repeat", 2), ("update", 1), ("reset", 2), ("update", 1)], capacity=8)
def test_same_keys_and_values_as_the_concatenating_layer(operations, capacity):
    """Any sequence of updates, batch repeats, selections and reorders, crops and resets (to any number of
    rows); capacities too small included."""
    generator = torch.Generator().manual_seed(0)
    reference, layer = DynamicLayer(), PreallocatedLayer(capacity)
    rows = 2
    for name, arg in operations:
        length = reference.get_seq_length()
        if name == "update":
            keys, values = (torch.randn(rows, 3, arg, 4, generator=generator) for _ in range(2))
            expected = reference.update(keys, values)
            got = layer.update(keys, values)
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=0, atol=0)
        elif name == "repeat" and length:
            reference.batch_repeat_interleave(arg)
            layer.batch_repeat_interleave(arg)
            rows *= arg
        elif name == "select" and length:
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(arg))
            indices = order if arg % 2 else order[: max(1, rows // 2)]  # reorder all rows, or keep some
            reference.batch_select_indices(indices)
            layer.batch_select_indices(indices)
            rows = len(indices)
        elif name == "reorder" and length:
            order = torch.randperm(rows, generator=torch.Generator().manual_seed(arg))
            reference.reorder_cache(order)
            layer.reorder_cache(order)
        elif name == "crop" and length >= arg:
            reference.crop(-arg)
            layer.crop(-arg)
        elif name == "reset":
            reference.reset()
            layer.reset()
            rows = arg
        assert layer.get_seq_length() == reference.get_seq_length()


def test_updates_write_into_one_buffer():
    """The point of the layer: within its capacity every update returns a view of the same storage."""
    layer = PreallocatedLayer(capacity=10)
    first, _ = layer.update(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5))
    for _ in range(6):
        keys, values = layer.update(torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5))
        assert keys.data_ptr() == first.data_ptr() and keys.untyped_storage().nbytes() == 2 * 3 * 10 * 5 * 4
    assert keys.shape == (2, 3, 10, 5)
    grown, _ = layer.update(torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5))
    assert grown.data_ptr() != first.data_ptr() and grown.untyped_storage().nbytes() == 2 * 3 * 22 * 5 * 4


def test_preallocate_moves_what_the_cache_holds():
    cache = DynamicCache()
    cache.update(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), layer_idx=0)
    before = cache.layers[0].keys.clone()
    preallocate(cache, capacity=8)
    assert type(cache.layers[0]) is PreallocatedLayer and cache.get_seq_length() == 4
    keys, _ = cache.update(torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5), layer_idx=0)
    torch.testing.assert_close(keys[..., :4, :], before, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("share_prefill", [True, False])
def test_generation_with_the_preallocated_cache_samples_the_same(name, share_prefill, monkeypatch):
    model = model_named(name)
    updates = []
    update = PreallocatedLayer.update
    monkeypatch.setattr(PreallocatedLayer, "update", lambda self, *a, **k: updates.append(1) or update(self, *a, **k))
    in_place, concatenated = (HFGenerator(TOKENIZER, 12, share_prefill=share_prefill, in_place_cache=p)
                              for p in (True, False))
    assert in_place.generate(model, PROMPTS, 3, do_sample=False) == \
        concatenated.generate(model, PROMPTS, 3, do_sample=False)
    assert len(updates) >= 11 * model.config.num_hidden_layers  # every decoding step went through it
    samples = []
    for generator in (in_place, concatenated):
        torch.manual_seed(1)
        samples.append(generator.generate(model, PROMPTS, 3))
    assert samples[0] == samples[1]
