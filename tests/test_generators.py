"""HF generation: the samples of a prompt share one prefill, and generate the same as a prefill per sample."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import agro.generators as generators
import agro.kv_cache as kv_cache
from agro.generators import HFGenerator
from agro.kv_cache import shared_prefill
from agro.tasks.arithmetic import build_tokenizer
from agro.tokens import left_pad

TOKENIZER = build_tokenizer()
V = len(TOKENIZER)
MODELS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2)),
    # absolute position embeddings: a prefill at the wrong positions would show
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4)),
}
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [4]]  # widths differ: left padding, a 1-token prompt


def model_named(name):
    torch.manual_seed(0)
    return MODELS[name]().eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_prefill_generates_what_a_prefill_per_sample_does(name):
    model = model_named(name)
    ids, attn = left_pad(PROMPTS, TOKENIZER.pad_token_id)
    with torch.inference_mode():
        kwargs = shared_prefill(model, ids, attn, 3)
    (cache,) = kwargs.values()
    assert cache.get_seq_length() == ids.shape[1] - 1 and cache.layers[0].keys.shape[0] == 3 * len(PROMPTS)
    shared, separate = (HFGenerator(TOKENIZER, 12, share_prefill=s) for s in (True, False))
    greedy = shared.generate(model, PROMPTS, 3, do_sample=False)
    assert greedy == separate.generate(model, PROMPTS, 3, do_sample=False)
    assert len({tuple(c) for c in greedy}) > 1  # the prompts lead to different completions
    assert all(len(c) > 0 for c in shared.generate(model, PROMPTS, 3))


@pytest.mark.parametrize("name", list(MODELS))
def test_shared_prefill_is_the_per_sample_prefill(name):
    """Next-token logits after the shared cache equal those after a prefill of every expanded row."""
    model = model_named(name)
    ids, attn = left_pad(PROMPTS, TOKENIZER.pad_token_id)
    rows, row_attn = ids.repeat_interleave(3, 0), attn.repeat_interleave(3, 0)
    positions = (row_attn.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        (arg, cache), = shared_prefill(model, ids, attn, 3).items()
        shared = model(input_ids=rows[:, -1:], attention_mask=row_attn, position_ids=positions[:, -1:],
                       **{arg: cache}).logits
        full = model(input_ids=rows, attention_mask=row_attn, position_ids=positions).logits[:, -1:]
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-5)


def test_generator_uses_the_shared_prefill_with_the_dynamic_cache_only(monkeypatch):
    calls = []
    monkeypatch.setattr(generators, "shared_prefill", lambda *args: calls.append(args[-1]) or shared_prefill(*args))
    model = model_named("llama")
    HFGenerator(TOKENIZER, 4).generate(model, PROMPTS, 3)
    HFGenerator(TOKENIZER, 4).generate(model, PROMPTS, 1)  # one sample per prompt: nothing to share
    HFGenerator(TOKENIZER, 4, static_cache_len=16).generate(model, PROMPTS, 3)
    assert calls == [3]


def test_decoder_that_ignores_the_cache_falls_back_with_a_warning():
    model = model_named("llama")

    class IgnoresCacheForPrefill(type(model.model)):
        def forward(self, *args, cache=None, past_key_values=None, **kwargs):
            return super().forward(*args, **kwargs)

    model.model.__class__ = IgnoresCacheForPrefill
    ids, attn = left_pad(PROMPTS, TOKENIZER.pad_token_id)
    with torch.inference_mode(), pytest.warns(UserWarning, match="IgnoresCacheForPrefill cannot run from a shared prompt cache"):
        assert shared_prefill(model, ids, attn, 3) == {}
    assert not kv_cache.cache_shareable(IgnoresCacheForPrefill)
