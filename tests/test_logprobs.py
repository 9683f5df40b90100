import copy

import peft
import pytest
import torch
from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GraniteConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import agro.kv_cache as kv_cache
from agro.errors import AgroError
from agro.logprobs import completion_logprobs, logit_softcap, naive_token_logprobs, token_logprobs

V, H = 100, 64
TINY = dict(
    vocab_size=V,
    hidden_size=H,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def tiny(cls, config_cls, **kw):
    torch.manual_seed(0)
    if cls is GPT2LMHeadModel:  # absolute position embeddings: wrong position ids would show
        config = config_cls(vocab_size=V, n_embd=H, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    else:
        config = config_cls(**TINY, **kw)
    return cls(config).eval()


def head_inputs(B=3, T=7, bias=False):
    torch.manual_seed(0)
    head = nn.Linear(H, V, bias=bias)
    return torch.randn(B, T, H, requires_grad=True), head, torch.randint(0, V, (B, T))


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 21, 1024])
def test_chunked_matches_naive_values_and_grads(chunk_size):
    hidden, head, targets = head_inputs(bias=True)
    g = torch.randn(targets.shape)

    ref = naive_token_logprobs(head(hidden), targets)
    (ref * g).sum().backward()
    ref_grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None

    out = token_logprobs(hidden, head, targets, chunk_size=chunk_size)
    assert out.shape == targets.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    (out * g).sum().backward()
    for got, want in zip([hidden.grad, head.weight.grad, head.bias.grad], ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_inference_mode_and_softcap():
    hidden, head, targets = head_inputs()
    with torch.inference_mode():
        out = token_logprobs(hidden, head, targets, chunk_size=4, softcap=2.0)
        ref = naive_token_logprobs(2.0 * torch.tanh(head(hidden) / 2.0), targets)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def batch(B=3, P=5, C=4, seed=1):
    """Left-padded prompts + right-padded completions: (input_ids, attention_mask) of width P + C."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, P + C), generator=g)
    mask = torch.ones(B, P + C, dtype=torch.long)
    for b in range(1, B):
        mask[b, : min(b, P - 1)] = 0  # left padding of the prompt
        mask[b, P + C - b :] = 0  # right padding of the completion
    return ids, mask


@pytest.mark.parametrize(
    "cls,config_cls,kw",
    [
        (LlamaForCausalLM, LlamaConfig, {}),
        (Qwen2ForCausalLM, Qwen2Config, {}),
        (Gemma2ForCausalLM, Gemma2Config, {"final_logit_softcapping": 0.5}),  # small cap: tanh matters
    ],
)
def test_completion_logprobs_matches_full_forward(cls, config_cls, kw):
    model = tiny(cls, config_cls, **kw)
    ids, _ = batch()
    C = 4
    with torch.no_grad():
        ref = naive_token_logprobs(model(ids).logits[:, -C - 1 : -1], ids[:, -C:])
        out = completion_logprobs(model, ids, torch.ones_like(ids), C, chunk_size=5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls,config_cls", [(LlamaForCausalLM, LlamaConfig), (GPT2LMHeadModel, GPT2Config)])
def test_left_padding_matches_unpadded_rows(cls, config_cls):
    model = tiny(cls, config_cls)
    ids, mask = batch()
    C = 4
    out = completion_logprobs(model, ids, mask, C)
    out.sum().backward()  # gradients through padded rows stay finite
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        for b in range(ids.shape[0]):
            keep = mask[b].bool()
            n = int(keep[-C:].sum())
            row = completion_logprobs(model, ids[b, keep][None], mask[b, keep][None], n)
            torch.testing.assert_close(out[b, :n], row[0], atol=1e-5, rtol=0)


def grouped_batch(C=4):
    """Groups of 3, 1 and 2 rows sharing left-padded prompts of lengths 5, 2 and 4; completions of varied length."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, V, (n,), generator=g).tolist() for n in (5, 2, 4)]
    rows = [(0, 4), (0, 2), (0, 3), (1, 4), (2, 1), (2, 4)]  # (prompt, completion length)
    ids = torch.zeros(len(rows), 5 + C, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (k, n) in enumerate(rows):
        ids[i, 5 - len(prompts[k]) : 5] = torch.tensor(prompts[k])
        mask[i, 5 - len(prompts[k]) : 5 + n] = 1
        ids[i, 5 : 5 + n] = torch.randint(0, V, (n,), generator=g)
    return ids, mask


@pytest.mark.parametrize(
    "cls,config_cls,shared",
    [(LlamaForCausalLM, LlamaConfig, True), (Qwen2ForCausalLM, Qwen2Config, True),
     (GPT2LMHeadModel, GPT2Config, True), (Gemma2ForCausalLM, Gemma2Config, False)],  # Gemma2: sliding layers
)
def test_shared_prompts_match_separate_rows(cls, config_cls, shared):
    """Each distinct prompt run once (KV cache gathered to its rows): same log-probs and gradients."""
    ids, mask = grouped_batch()
    C = 4
    model = tiny(cls, config_cls)
    assert (kv_cache.shared_prompt_hidden(model.get_decoder(), ids, mask, C) is not None) == shared
    g = torch.randn(ids.shape[0], C)
    out = completion_logprobs(model, ids, mask, C)
    (out * mask[:, -C:] * g).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = completion_logprobs(model, ids, mask, C, share_prompts=False)
    (ref * mask[:, -C:] * g).sum().backward()
    valid = mask[:, -C:].bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=0)
    for got, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, atol=1e-5, rtol=1e-4)


def test_shared_prompts_guards(monkeypatch):
    """Float masks are grouped like integer ones; no sharing where it would cost memory or break backward."""
    ids, mask = grouped_batch()
    model = tiny(LlamaForCausalLM, LlamaConfig)
    decoder = model.get_decoder()
    share = kv_cache.shared_prompt_hidden
    with torch.no_grad():
        out = share(decoder, ids, mask.float(), 4)
        torch.testing.assert_close(out, share(decoder, ids, mask, 4))
        monkeypatch.setattr(kv_cache, "NO_GRAD_CACHE_BYTES", 0)
        assert share(decoder, ids, mask, 4) is None
    assert share(decoder, ids, mask, 4) is not None  # with grad the activations are kept anyway
    model.gradient_checkpointing_enable()
    assert share(decoder, ids, mask, 4) is None
    model.gradient_checkpointing_disable()
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    apply_activation_checkpointing(model, check_fn=lambda m: type(m).__name__ == "LlamaDecoderLayer")
    assert share(model.get_decoder(), ids, mask, 4) is None
    completion_logprobs(model, ids, mask, 4).sum().backward()  # the full pass recomputes fine


def test_decoder_that_ignores_the_cache_falls_back_with_a_warning():
    """A decoder that never fills the cache it is given would see completions without their prompt."""
    model = tiny(LlamaForCausalLM, LlamaConfig)

    class IgnoresCache(type(model.model)):
        def forward(self, *args, cache=None, **kwargs):
            return super().forward(*args, **kwargs)

    model.model.__class__ = IgnoresCache
    ids, mask = grouped_batch()
    with torch.no_grad(), pytest.warns(UserWarning, match="IgnoresCache cannot run from a shared prompt cache"):
        out = completion_logprobs(model, ids, mask, 4)
        ref = completion_logprobs(model, ids, mask, 4, share_prompts=False)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert not kv_cache.cache_shareable(IgnoresCache)


def test_shared_prompts_with_lora_and_its_reference():
    ids, mask = grouped_batch()
    model = peft.get_peft_model(tiny(LlamaForCausalLM, LlamaConfig), peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        shared = completion_logprobs(model, ids, mask, 4)
        with model.disable_adapter():
            shared_ref = completion_logprobs(model, ids, mask, 4)
        valid = mask[:, -4:].bool()
        for b in range(ids.shape[0]):  # each row alone: nothing to share
            row = completion_logprobs(model, ids[b : b + 1], mask[b : b + 1], 4)
            with model.disable_adapter():
                row_ref = completion_logprobs(model, ids[b : b + 1], mask[b : b + 1], 4)
            torch.testing.assert_close(shared[b][valid[b]], row[0][valid[b]], atol=1e-5, rtol=0)
            torch.testing.assert_close(shared_ref[b][valid[b]], row_ref[0][valid[b]], atol=1e-5, rtol=0)
    assert (shared - shared_ref)[valid].abs().max() > 1e-3


def test_lora_disable_adapter_gives_base_logprobs():
    model = tiny(LlamaForCausalLM, LlamaConfig)
    ids, mask = batch()
    with torch.no_grad():
        base = completion_logprobs(copy.deepcopy(model), ids, mask, 4)
    lora = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():
        policy = completion_logprobs(lora, ids, mask, 4)
        with lora.disable_adapter():
            ref = completion_logprobs(lora, ids, mask, 4)
    torch.testing.assert_close(ref, base, atol=1e-5, rtol=0)
    assert (policy - base).abs().max() > 1e-3


def test_logit_softcap_reads_config_and_refuses_rescaling():
    assert logit_softcap(LlamaConfig()) is None
    assert logit_softcap(Gemma2Config(final_logit_softcapping=30.0)) == 30.0
    assert logit_softcap(GraniteConfig()) is None  # logits_scaling = 1 is a no-op
    with pytest.raises(AgroError, match="logits_scaling"):
        logit_softcap(GraniteConfig(logits_scaling=8.0))


def test_backward_keeps_only_chunk_inputs():
    """With grad enabled, autograd saves the [chunk, H] inputs of each chunk and nothing V-wide."""
    hidden, head, targets = head_inputs()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.shape) or x, lambda x: x):
        token_logprobs(hidden, head, targets, chunk_size=4)
    assert saved and all(V not in shape for shape in saved)
