"""Training throughput: agro (`objective: grpo` and `objective: agro`) against TRL's GRPOTrainer.

    python benchmarks/throughput.py            # 3M and 11M models, 8 prompts x 8 generations, 32 + 32 tokens
    python benchmarks/throughput.py --quick    # small smoke run
    python benchmarks/throughput.py --no-trl   # agro only (TRL is the optional `bench` extra)
    python benchmarks/throughput.py --model smollm2-135m-instruct   # a real LM: 4 prompts x 8, 32 tokens, bf16

`--model` (a built-in name, a .gguf or a model folder) measures that model instead of the tiny Llamas:
reasoning-gym chain_sum questions in the model's chat template (the same text on both sides), 4 prompts x 8
generations, 32 completion tokens, 1 warm-up and 3 measured steps per side. Where the CPU computes bf16
natively (avx512_bf16/AMX; always on a GPU) both sides run bf16 mixed precision: agro `bf16: true`, TRL
`bf16=True`, float32 weights on both (`--no-bf16`: float32 throughout), and the matmul peak is measured
in bf16. Its JSON line is keyed by the model name.

Both sides train the same tiny Llama (built by `agro.tasks.arithmetic`, saved locally, float32) on
the same arithmetic prompts with the same dense reward, `num_generations` completions per prompt,
each prompt 32 tokens (`--prompt-length`): solved problems then the problem to solve, a few-shot prompt
shorter than most real ones (`--prompt-length 0`: the bare 7-token problems),
AdamW (lr 1e-5, no weight decay, clip 1.0, constant schedule), beta 0.04, one forward/backward over
the whole batch per step, no vLLM, no evaluation, no logging or checkpoints. TRL runs with
`bf16=False, gradient_checkpointing=False` (its defaults are True: bf16 autocast on CPU and recomputed
activations are not the same work; `--trl-defaults` keeps them). The saved model's generation config
sets `min_new_tokens = max_new_tokens` (and never samples the padding token), so every completion on
both sides is exactly `completion_length` tokens (the mean lengths are reported to show it). Unless
OMP_WAIT_POLICY is set, the script restarts itself with OMP_WAIT_POLICY=PASSIVE (see `main`).

On a GPU (used whenever torch sees one) both sides load bfloat16 weights (`--dtype`), the 113M size
runs too, the matmul peak is a bf16 8192 x 8192 product, and every clock synchronises the device.
`--cache-implementation static` gives agro's `generate` a fixed-size cache, which transformers
compiles on a GPU; TRL gets the same unless `--trl-cache-implementation` says otherwise.

Steps are interleaved in one process: TRL, agro grpo, agro agro, TRL, ... (TRL's own `train()` loop
runs, and a callback at the end of each of its steps runs one step of each agro trainer and one
dense-matmul peak measurement, so that load from other processes hits every side alike). The first
`--warmup` steps of each side are not measured.

    tokens/s = prompt + completion tokens of the generations trained on, per wall-second of a full step
               (generation, reward, reference, policy forward/backward, optimizer: everything)

For TRL the step time is the wall time between the ends of consecutive TRL steps minus the time the
callback spent on the other sides. `train_flops_per_s` is 6 * parameters * tokens / agro's
policy-update time (`time_policy`, objective agro; median over steps), counting the tokens the pass
runs: every completion token and each distinct prompt once. `matmul_peak_flops_per_s` is the
best float32 `torch.matmul` of two 2048 x 2048 matrices (1024 with --quick) in each round (median over
rounds), same thread count. Last line printed: one JSON object, per model size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from common import REWARD, SEED, SIZES, build_assets, wait_passively

from agro.rewards.functions import load_reward_function

if TYPE_CHECKING:
    from agro.trainer import Trainer

# agro's reward workers are spawned processes, which re-import this script: the modules that pull in
# transformers are imported inside the functions that need them, so that the workers start light.

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FULL = dict(prompts_per_step=8, num_generations=8, prompt_length=32, completion_length=32, warmup=2, steps=6,
            matmul_n=2048)
QUICK = dict(prompts_per_step=2, num_generations=8, prompt_length=32, completion_length=16, warmup=1, steps=1,
             matmul_n=1024)
MODEL = dict(prompts_per_step=4, num_generations=8, prompt_length=None, completion_length=32, warmup=1, steps=3,
             matmul_n=2048)
LEARNING_RATE, BETA = 1e-5, 0.04


def build_model_assets(root: Path, name: str, completion_length: int) -> tuple[Path, list[str], int]:
    """(model dir, prompts, params) for a real LM: its files linked, generating exactly `completion_length`.

    The prompts are reasoning-gym chain_sum questions in the model's chat template, as text (agro reads them
    `raw`, TRL as plain strings: the same tokens on both sides).
    """
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from agro.gym import load_entries
    from agro.models import resolve_model

    source = Path(resolve_model(name))
    (root / "model").mkdir()
    for f in source.iterdir():
        if f.name != "generation_config.json":
            (root / "model" / f.name).symlink_to(f.resolve())
    generation = GenerationConfig.from_pretrained(source)
    generation.min_new_tokens = completion_length  # EOS is suppressed until then: every completion is this long
    generation.save_pretrained(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(source)
    entries = load_entries("reasoning_gym:chain_sum", {"size": 64, "seed": SEED}, "train")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": e["question"]}], tokenize=False,
                                             add_generation_prompt=True) for e in entries]
    config = AutoConfig.from_pretrained(source)
    with open(root / "train.jsonl", "w") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
    return root / "model", prompts, count_parameters(config)


def count_parameters(config) -> int:
    """Parameters of the LM `config` describes (tied embeddings once), from a meta-device instance."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def agro_trainer(root: Path, objective: str, s: dict) -> Trainer:
    from agro.config import load_config
    from agro.trainer import Trainer

    batch = s["prompts_per_step"] * s["num_generations"]
    settings = {
        "model_name_or_path": root / "model", "train_data": root / "train.jsonl", "prompt_template": "raw",
        "reward_function": REWARD, "truncated_completions": "keep", "objective": objective, "beta": BETA,
        "num_generations": s["num_generations"], "prompts_per_step": s["prompts_per_step"],
        "max_completion_length": s["completion_length"], "max_prompt_length": s["prompt_length"] or 256,
        "offline_per_group": 0,
        "learning_rate": LEARNING_RATE, "max_grad_norm": 1.0, "lr_scheduler_type": "constant",
        "mini_batch_size": batch, "generation_batch_size": batch, "max_steps": 10**6, "save_steps": 0,
        "report_to": "none", "output_dir": root / f"agro-{objective}", "seed": SEED, "torch_dtype": s["dtype"],
        "cache_implementation": s["cache_implementation"], "bf16": s["bf16"],
    }
    return Trainer(load_config(None, [f"{k}={v}" for k, v in settings.items()]))


def trl_trainer(root: Path, prompts: list[str], s: dict, max_steps: int, callback):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(root / "trl"), use_cpu=DEVICE == "cpu", seed=SEED, max_steps=max_steps,
        per_device_train_batch_size=s["prompts_per_step"] * s["num_generations"],
        gradient_accumulation_steps=1,
        num_generations=s["num_generations"], max_completion_length=s["completion_length"],
        generation_kwargs={"min_new_tokens": s["completion_length"]}, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=1.0, beta=BETA, epsilon=0.2, loss_type="grpo", disable_dropout=True,
        # TRL defaults both to True (bf16 autocast, recomputed activations); agro runs without recompute, with
        # bf16 autocast exactly when TRL has it (`bf16`), float32 or bfloat16 weights (`dtype`) on both sides
        model_init_kwargs={"dtype": s["dtype"]},
        cache_implementation=None if s["trl_cache_implementation"] == "dynamic" else s["trl_cache_implementation"],
        **({} if s["trl_defaults"] else {"bf16": s["bf16"] or s["dtype"] == "bfloat16",
                                         "gradient_checkpointing": False}),
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    reward = load_reward_function(REWARD)

    def digit_fraction(prompts, completions, **kwargs) -> list[float]:
        return [reward(p, c, None) for p, c in zip(prompts, completions)]

    return GRPOTrainer(model=str(root / "model"), reward_funcs=digit_fraction, args=args,
                       train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                       callbacks=[callback])


def matmul_peak(n: int, dtype: str, repeats: int = 3) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` on DEVICE over `repeats` runs."""
    a, b = (torch.randn(n, n, device=DEVICE, dtype=getattr(torch, dtype)) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class Interleaved:
    """Runs one step of every agro trainer and a matmul peak measurement; records all timings."""

    def __init__(self, agro: dict[str, Trainer], warmup: int, matmul_n: int, dtype: str):
        self.agro, self.warmup, self.matmul_n, self.dtype = agro, warmup, matmul_n, dtype
        self.rounds = 0
        self.agro_steps: dict[str, list[dict]] = {name: [] for name in agro}
        self.trl_steps: list[dict] = []
        self.peaks: list[float] = []

    def round(self) -> None:
        for name, trainer in self.agro.items():
            synchronize()
            t0 = time.perf_counter()
            metrics = trainer.train_step()
            synchronize()
            wall = time.perf_counter() - t0
            if self.rounds >= self.warmup:
                tokens = round(metrics["tokens_per_s"] * metrics["time_step"])
                self.agro_steps[name].append({**metrics, "wall": wall, "tokens": tokens})
        self.peaks.append(matmul_peak(self.matmul_n, self.dtype))
        self.rounds += 1


def make_trl_callback(interleaved: Interleaved):
    from transformers import TrainerCallback

    class Callback(TrainerCallback):
        """At the end of each TRL step: record its wall time and tokens, then run the agro steps."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.resumed, self.seen = time.perf_counter(), 0

        def on_step_end(self, args, state, control, **kwargs):
            synchronize()
            wall = time.perf_counter() - self.resumed
            if interleaved.rounds >= interleaved.warmup:
                lengths = self.trainer._metrics["train"]["completions/mean_length"]
                interleaved.trl_steps.append({"wall": wall, "tokens": state.num_input_tokens_seen - self.seen,
                                              "completion_length": lengths[-1]})
            self.seen = state.num_input_tokens_seen
            interleaved.round()
            self.resumed = time.perf_counter()

    return Callback()


def summarize(steps: list[dict]) -> dict:
    wall = sum(s["wall"] for s in steps)
    return {"tokens_per_s": sum(s["tokens"] for s in steps) / wall, "steps_per_s": len(steps) / wall,
            "step_s": [round(s["wall"], 2) for s in steps]}


def run_size(size: str, s: dict, use_trl: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if size in SIZES:
            _, prompts, params = build_assets(root, size, s["completion_length"], s["prompt_length"])
        else:
            _, prompts, params = build_model_assets(root, size, s["completion_length"])
        agro = {"agro_grpo": agro_trainer(root, "grpo", s), "agro": agro_trainer(root, "agro", s)}
        interleaved = Interleaved(agro, s["warmup"], s["matmul_n"], "bfloat16" if s["bf16"] else s["dtype"])
        try:
            if use_trl:
                callback = make_trl_callback(interleaved)
                trainer = trl_trainer(root, prompts, s, s["warmup"] + s["steps"], callback)
                callback.trainer = trainer
                trainer.train()
            else:
                for _ in range(s["warmup"] + s["steps"]):
                    interleaved.round()
        finally:
            for trainer in agro.values():
                trainer.scorer.close()
    result: dict = {"parameters": params, "measured_steps": s["steps"]}
    for name, steps in interleaved.agro_steps.items():
        result.update({f"{name}_{k}": v for k, v in summarize(steps).items()})
        result[f"{name}_completion_length"] = statistics.mean(m["length/on_policy"] for m in steps)
    if use_trl:
        result.update({f"trl_{k}": v for k, v in summarize(interleaved.trl_steps).items()})
        result["trl_completion_length"] = statistics.mean(m["completion_length"]
                                                          for m in interleaved.trl_steps)
        for name in agro:
            result[f"{name}_over_trl"] = result[f"{name}_tokens_per_s"] / result["trl_tokens_per_s"]
    steps = interleaved.agro_steps["agro"]
    phases = ("generation", "reward", "reference", "policy", "optimizer")
    times = {p: statistics.mean(m[f"time_{p}"] for m in steps) for p in phases}
    other = statistics.mean(m["wall"] for m in steps) - sum(times.values())
    result["agro_phases_s"] = {**times, "other": other}
    rows = s["prompts_per_step"] * s["num_generations"]

    def executed(m: dict) -> float:  # each distinct prompt runs once in the policy pass, not once per row
        completion = rows * m["length/on_policy"]
        return completion + (m["tokens"] - completion) / s["num_generations"]

    result["train_flops_per_s"] = statistics.median(6 * params * executed(m) / m["time_policy"] for m in steps)
    result["matmul_peak_flops_per_s"] = statistics.median(interleaved.peaks)
    result["train_over_peak"] = result["train_flops_per_s"] / result["matmul_peak_flops_per_s"]
    return result


def main():
    wait_passively()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 16 tokens, 1 measured step")
    p.add_argument("--model", help="a real LM (built-in name, .gguf or folder) instead of --sizes")
    p.add_argument("--no-bf16", action="store_true",
                   help="--model: float32 throughout, even where the CPU computes bf16 natively")
    p.add_argument("--no-trl", action="store_true", help="agro only")
    p.add_argument("--sizes", default="3M,11M" if DEVICE == "cpu" else ",".join(SIZES),
                   help="comma-separated, of: " + ", ".join(SIZES))
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="weights of both sides (default: float32 on CPU, bfloat16 on a GPU)")
    p.add_argument("--completion-length", type=int, help="tokens per completion (default 32)")
    p.add_argument("--prompt-length", type=int,
                   help="tokens per few-shot prompt (default 32); 0: the bare problems, 7 tokens")
    p.add_argument("--steps", type=int, help="measured steps per side")
    p.add_argument("--warmup", type=int, help="unmeasured steps per side")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--cache-implementation", choices=("dynamic", "static"), default="dynamic",
                   help="generate's KV cache of agro, and of TRL unless --trl-cache-implementation (static: "
                        "compiled decoding on a GPU)")
    p.add_argument("--trl-cache-implementation", choices=("dynamic", "static"),
                   help="TRL's generate cache, when it differs from agro's (each side at its faster setting)")
    p.add_argument("--trl-defaults", action="store_true",
                   help="keep TRL's bf16 autocast and gradient checkpointing (not the same work)")
    a = p.parse_args()
    s = dict(QUICK if a.quick else MODEL if a.model else FULL)
    s.update({k: getattr(a, k) for k in ("steps", "warmup", "prompt_length", "completion_length")
              if getattr(a, k) is not None})
    s["trl_defaults"] = a.trl_defaults
    s["cache_implementation"] = a.cache_implementation
    s["trl_cache_implementation"] = a.trl_cache_implementation or a.cache_implementation
    from agro.models import native_bf16

    s["dtype"] = a.dtype or ("float32" if DEVICE == "cpu" or a.model else "bfloat16")
    s["bf16"] = bool(a.model) and not a.no_bf16 and native_bf16(DEVICE) and s["dtype"] == "float32"
    if DEVICE == "cuda":
        s["matmul_n"] = 8192
    if a.threads:
        torch.set_num_threads(a.threads)
    use_trl = not a.no_trl
    if use_trl:
        try:
            import trl  # noqa: F401
        except ImportError:
            print("trl is not installed (pip install -e '.[bench]'): measuring agro only", flush=True)
            use_trl = False
    results = {}
    for size in [a.model] if a.model else a.sizes.split(","):
        results[size] = run_size(size, s, use_trl)
        print(json.dumps({size: results[size]}), flush=True)
    results["config"] = {**s, "threads": torch.get_num_threads(), "trl": use_trl, "torch": torch.__version__,
                         "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                         "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
