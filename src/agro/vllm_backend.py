"""Colocated vLLM generation (optional extra `agro[vllm]`, GPU only).

The engine runs in the training process and shares the GPU with the policy; before each
generation call the policy's current weights are loaded into the engine (`load_weights`, the
approach TRL's colocate mode takes), so the samples are on-policy. Not exercised by the CPU test
suite: verified only where a GPU and vLLM are available.
"""

from __future__ import annotations

import os

from agro.errors import AgroError
from agro.models import resolve_model
from agro.tokens import cut_at_eos, eos_token_ids


class VLLMGenerator:
    def __init__(self, tokenizer, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 gpu_memory_utilization: float = 0.3, model_name_or_path: str | None = None,
                 max_model_len: int | None = None, dtype: str = "auto", seed: int = 0, sampling: dict | None = None):
        try:
            import torch
            from vllm import LLM, SamplingParams
        except ImportError:
            raise AgroError("generation_backend 'vllm' needs the vllm package (pip install 'agro[vllm]')") from None
        if not torch.cuda.is_available():
            raise AgroError("generation_backend 'vllm' needs a GPU; use generation_backend: hf on CPU")
        if model_name_or_path is None:
            raise AgroError("generation_backend 'vllm' needs the model path to start its engine")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: weights reachable
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.sampling = SamplingParams
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.extra = dict(sampling or {})  # more SamplingParams arguments of sampled generation (top_k, min_p...)
        self.llm = LLM(model=resolve_model(model_name_or_path), gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                       max_model_len=max_model_len, seed=seed, enable_prefix_caching=True)
        self._synced_version = None

    def _engine_model(self):
        worker = self.llm.llm_engine.model_executor.driver_worker
        return getattr(worker, "worker", worker).model_runner.model  # newer vLLM wraps the worker once more

    def sync_weights(self, model) -> None:
        """Load the policy's current weights into the engine."""
        self._engine_model().load_weights(model.state_dict().items())

    def generate(self, model, prompts: list[list[int]], num_generations: int = 1, do_sample: bool = True
                 ) -> list[list[int]]:
        from vllm.inputs import TokensPrompt

        self.sync_weights(model)
        params = self.sampling(
            n=num_generations, max_tokens=self.max_new_tokens,
            temperature=self.temperature if do_sample else 0.0, top_p=self.top_p if do_sample else 1.0,
            **(self.extra if do_sample else {}),
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        eos = eos_token_ids(self.tokenizer, model)
        pad = self.tokenizer.pad_token_id
        return [cut_at_eos(list(c.token_ids), eos, pad) for out in outputs for c in out.outputs]
