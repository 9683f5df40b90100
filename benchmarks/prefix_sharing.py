"""Time of each distinct prompt run once (shared) against every row in full: log-probs and generation.

The throughput benchmark's batch: 8 prompts × 8 completions, prompts of `--prompt-length` tokens,
32 completion tokens, its 11M and 3M Llamas in float32. Reference pass (no grad), policy pass
(forward + backward) and sampling 32 tokens (`HFGenerator`, one prefill per prompt or per sample), the
variants interleaved, `--repeats` rounds; prints one JSON object with the median seconds per variant
and pass, the speed-ups, and the largest log-prob difference.

    .venv/bin/python benchmarks/prefix_sharing.py
"""

from __future__ import annotations

import statistics
import time

import torch
from common import SIZES, sweep

from agro.generators import HFGenerator
from agro.logprobs import completion_logprobs
from agro.tasks.arithmetic import ArithmeticTask, build_model, build_tokenizer


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(size: str, prompt_length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ArithmeticTask(**SIZES[size], max_positions=prompt_length + 40), tokenizer)
    model.generation_config.min_new_tokens = 32  # every sample 32 tokens long, as in throughput.py
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id]
    prompts = torch.randint(3, len(tokenizer), (8, prompt_length)).repeat_interleave(8, dim=0)
    ids = torch.cat([prompts, torch.randint(3, len(tokenizer), (64, 32))], dim=1)
    mask = torch.ones_like(ids)

    def run(shared: bool, grad: bool):
        if grad:
            model.zero_grad()
            completion_logprobs(model, ids, mask, 32, share_prompts=shared).sum().backward()
            return None
        with torch.inference_mode():
            return completion_logprobs(model, ids, mask, 32, share_prompts=shared)

    generators = {shared: HFGenerator(tokenizer, 32, share_prefill=shared) for shared in (True, False)}
    distinct = prompts[::8].tolist()

    def sample(shared: bool, _):
        generators[shared].generate(model, distinct, 8)

    diff = float((run(True, False) - run(False, False)).abs().max())
    times = {(s, g): [] for s in (True, False) for g in (True, False, "generate")}
    for _ in range(repeats):
        for key in times:
            fn = sample if key[1] == "generate" else run
            times[key].append(timed(lambda key=key, fn=fn: fn(*key)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"parameters": sum(p.numel() for p in model.parameters()), "prompt_length": prompt_length,
            "reference_shared_s": med[True, False], "reference_full_s": med[False, False],
            "policy_shared_s": med[True, True], "policy_full_s": med[False, True],
            "reference_speedup": med[False, False] / med[True, False],
            "policy_speedup": med[False, True] / med[True, True],
            "generate_shared_s": med[True, "generate"], "generate_full_s": med[False, "generate"],
            "generate_speedup": med[False, "generate"] / med[True, "generate"], "max_abs_diff": diff}


def main() -> None:
    sweep(__doc__, "prompt", "9,64", 7, measure)


if __name__ == "__main__":
    main()
