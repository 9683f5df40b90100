"""bf16 autocast against float32 on a real LM: the log-prob error, the gradient, and the time of each pass.

    python benchmarks/precision.py                          # SmolLM2-135M-Instruct, the CPU config's batch
    python benchmarks/precision.py --model PATH --repeats 3

The batch is the one `configs/smollm2-135m-cpu.yaml` trains on: 4 of its training prompts (reasoning-gym
chain_sum in the chat template) × 8 completions sampled by the model in float32 at the config's temperature and
length. On that batch, with float32 weights throughout:

    per-token error   |log π_bf16(y_t) − log π_fp32(y_t)| over completion tokens (mean, max)
    per-sequence      |Σ_t log π_bf16 − Σ_t log π_fp32| (mean, max): the scale of Δ = Σ_t log π/π_ref
    gradient          cosine and norm ratio of ∇ Σ log π (all parameters) under bf16 autocast against float32
    times             generation, the no-grad (reference) pass and the forward + backward pass, each side
                      interleaved, best of --repeats

Sampling is at the config's temperature, so the completions are what training sees. Last line printed: one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import CONFIG, wait_passively


def main() -> None:
    wait_passively()  # sleeping OpenMP threads on shared cores
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--model", help="instead of the config's model_name_or_path")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()

    from agro.config import load_config
    from agro.generators import HFGenerator
    from agro.logprobs import CompletionLogprobs
    from agro.models import bf16_autocast, load_model, load_tokenizer, native_bf16
    from agro.prompts import PromptPool
    from agro.tokens import collate

    c = load_config(a.config, [f"model_name_or_path={a.model}"] if a.model else [])
    torch.set_num_threads(c.num_threads or torch.get_num_threads())
    tokenizer = load_tokenizer(c.model_name_or_path, c.trust_remote_code)
    model = load_model(c.model_name_or_path, "float32", c.trust_remote_code).eval()
    prompts = list(PromptPool(c, tokenizer).prompt_ids.values())[: c.prompts_per_step]
    torch.manual_seed(0)
    completions = HFGenerator(tokenizer, c.max_completion_length, c.temperature).generate(model, prompts,
                                                                                         c.num_generations)
    rows = collate([q for q in prompts for _ in range(c.num_generations)], completions, tokenizer.pad_token_id)
    scorer = CompletionLogprobs(model)
    mask = rows.completion_mask

    def forward_backward(bf16: bool):
        with bf16_autocast("cpu", bf16):
            lp = scorer(rows.input_ids, rows.attention_mask, rows.num_completion_tokens, c.logprob_chunk_size)
        (lp.float() * mask).sum().backward()
        grad = torch.cat([q.grad.flatten() for q in model.parameters() if q.grad is not None])
        model.zero_grad(set_to_none=True)
        return lp.detach().float(), grad

    def reference(bf16: bool):
        with torch.inference_mode(), bf16_autocast("cpu", bf16):
            return scorer(rows.input_ids, rows.attention_mask, rows.num_completion_tokens, c.logprob_chunk_size)

    def generation(bf16: bool):
        return HFGenerator(tokenizer, c.max_completion_length, c.temperature, bf16=bf16).generate(
            model, prompts, c.num_generations)

    times = {f"{name}_{side}": float("inf") for name in ("generation", "reference", "policy")
             for side in ("fp32", "bf16")}
    results = {}
    for _ in range(a.repeats):
        for bf16 in (False, True):
            side = "bf16" if bf16 else "fp32"
            for name, fn in (("generation", generation), ("reference", reference), ("policy", forward_backward)):
                start = time.perf_counter()
                out = fn(bf16)
                times[f"{name}_{side}"] = min(times[f"{name}_{side}"], time.perf_counter() - start)
                if name == "policy":
                    results[side] = out
    (lp32, g32), (lp16, g16) = results["fp32"], results["bf16"]
    token = (lp16 - lp32).abs()[mask.bool()]
    sequence = ((lp16 - lp32) * mask).sum(-1).abs()
    print(json.dumps({
        "model": c.model_name_or_path, "native_bf16": native_bf16("cpu"), "threads": torch.get_num_threads(),
        "sequences": len(completions), "completion_tokens": int(mask.sum()),
        "token_abs_error_mean": float(token.mean()), "token_abs_error_max": float(token.max()),
        "sequence_abs_error_mean": float(sequence.mean()), "sequence_abs_error_max": float(sequence.max()),
        "grad_cosine": float(g16.double() @ g32.double() / (g16.double().norm() * g32.double().norm())),
        "grad_norm_ratio": float(g16.norm() / g32.norm()),
        "seconds": times, "speedup": {n: times[f"{n}_fp32"] / times[f"{n}_bf16"]
                                      for n in ("generation", "reference", "policy")},
    }))


if __name__ == "__main__":
    main()
