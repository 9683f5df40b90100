"""Generation backends: transformers `generate` (HFGenerator) and, when installed, colocated vLLM.

Each turns token-id prompts into completions cut after their first EOS, prompt-major; the token layout is
`agro.tokens`, the shared-prefix cache `agro.kv_cache`.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from agro.errors import AgroError
from agro.kv_cache import empty_cache, preallocate, shared_prefill
from agro.models import bf16_autocast
from agro.tokens import cut_at_eos, eos_token_ids, left_pad


class HFGenerator:
    """Batched transformers `generate` with KV cache and left padding.

    Sampling is from the policy itself (top_k disabled); `temperature`/`top_p` other than 1, and `sampling`
    (TRL's top_k, min_p, repetition_penalty, generation_kwargs: `sampling_kwargs`), make the samples slightly
    off-policy, which AGRO handles as any other off-policy data. With the dynamic
    cache the samples of a prompt share its prefill (`shared_prefill`) and each step's keys and values
    are written in place (`agro.kv_cache`); `static_cache_len` gives `generate` a static cache of that
    many tokens instead (compiled decoding on a GPU). `bf16`: sample under bfloat16 autocast, the precision
    in which the learner (config `bf16`) computes the same policy's log-probs.
    """

    def __init__(self, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 64, static_cache_len: int | None = None, share_prefill: bool = True,
                 in_place_cache: bool = True, bf16: bool = False, sampling: dict | None = None):
        self.tokenizer = tokenizer
        self.sampling = dict(sampling or {})  # more GenerationConfig arguments of sampled generation, merged last
        self.bf16 = bf16
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
            return GenerationConfig(**{"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                                       "top_k": 0, **common, **self.sampling})
        return GenerationConfig(do_sample=False, **common)

    def generate(self, model, prompts: list[list[int]], num_generations: int = 1, do_sample: bool = True
                 ) -> list[list[int]]:
        """`num_generations` completions per prompt, prompt-major order, each cut after its first EOS."""
        # autocast keeps one bf16 copy of each weight for the whole call only outside inference mode (in it,
        # every decoding step would cast every weight again: as slow as the matmuls themselves)
        if not self.bf16:
            with torch.inference_mode():
                return self._generate(model, prompts, num_generations, do_sample)
        with torch.no_grad(), bf16_autocast(next(model.parameters()).device.type):
            return self._generate(model, prompts, num_generations, do_sample)

    def _generate(self, model, prompts: list[list[int]], num_generations: int, do_sample: bool) -> list[list[int]]:
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


def sampling_kwargs(config) -> dict:
    """TRL's sampling settings of a config (top_k, min_p, repetition_penalty, then generation_kwargs over them)
    as generation arguments: only those switched on, so that at their defaults nothing is passed and the samples
    are those of temperature and top_p alone."""
    out = {}
    if config.top_k:
        out["top_k"] = config.top_k
    if config.min_p is not None:
        out["min_p"] = config.min_p
    if config.repetition_penalty != 1.0:
        out["repetition_penalty"] = config.repetition_penalty
    return {**out, **config.generation_kwargs}


def make_generator(backend: str, tokenizer, max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                   gpu_memory_utilization: float = 0.3, model_name_or_path: str | None = None,
                   max_model_len: int | None = None, cache_implementation: str = "dynamic", bf16: bool = False,
                   sampling: dict | None = None):
    """`hf`: transformers generate (`bf16`: under bfloat16 autocast); `vllm`: a colocated vLLM engine (optional
    extra, GPU only, in the weights' dtype). `sampling`: more sampling arguments (`sampling_kwargs`)."""
    if backend == "hf":
        static_len = max_model_len if cache_implementation == "static" else None
        return HFGenerator(tokenizer, max_new_tokens, temperature, top_p, batch_size, static_len, bf16=bf16,
                           sampling=sampling)
    if backend != "vllm":
        raise AgroError(f"unknown generation backend {backend!r}; choose hf or vllm")
    from agro.vllm_backend import VLLMGenerator

    return VLLMGenerator(tokenizer, max_new_tokens, temperature, top_p, gpu_memory_utilization,
                         model_name_or_path=model_name_or_path, max_model_len=max_model_len, sampling=sampling)
