"""Time of `generate` with keys and values written in place (agro.kv_cache) against concatenated per step.

The throughput benchmark's 11M and 3M Llamas in float32, 8 prompts × 8 samples (9-token prompts, each
prompt's prefill shared), every sample exactly `--completion-lengths` tokens long; the two caches
interleaved for `--repeats` rounds from the same seed, OpenMP threads waiting passively as in
throughput.py. Prints one JSON object: the median seconds of each, the speed-up, and whether the two
drew the same samples.

    .venv/bin/python benchmarks/generation_cache.py
"""

from __future__ import annotations

import statistics
import time

import torch
from common import SIZES, sweep

from agro.generators import HFGenerator
from agro.tasks.arithmetic import ArithmeticTask, build_model, build_tokenizer


def measure(size: str, completion_length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(ArithmeticTask(**SIZES[size], max_positions=completion_length + 16), tokenizer)
    model.generation_config.min_new_tokens = completion_length
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id]
    prompts = torch.randint(3, len(tokenizer), (8, 9)).tolist()
    generators = {p: HFGenerator(tokenizer, completion_length, in_place_cache=p) for p in (True, False)}

    def sample(in_place: bool, seed: int) -> tuple[float, list]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        samples = generators[in_place].generate(model, prompts, 8)
        return time.perf_counter() - start, samples

    same = sample(True, 0)[1] == sample(False, 0)[1]
    times = {True: [], False: []}
    for r in range(repeats):
        for in_place in times:
            times[in_place].append(sample(in_place, r)[0])
    in_place_s, concatenated_s = (statistics.median(times[p]) for p in (True, False))
    return {"parameters": sum(p.numel() for p in model.parameters()), "completion_length": completion_length,
            "in_place_s": in_place_s, "concatenated_s": concatenated_s, "speedup": concatenated_s / in_place_s,
            "same_samples": same}


def main() -> None:
    sweep(__doc__, "completion", "32,128,256", 5, measure)


if __name__ == "__main__":
    main()
