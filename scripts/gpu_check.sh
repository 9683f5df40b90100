#!/usr/bin/env bash
# The GPU check of SmolLM2-135M-Instruct, on one GPU, in under 8 minutes; JSON lines in $OUT/gpu_check.jsonl
# (OUT defaults to runs/gpu-check). Run from the repository root after `make setup` (TRL: pip install -e '.[bench]';
# vLLM, where wanted: pip install -e '.[vllm]'):
#   bash scripts/gpu_check.sh
# 1. throughput: agro (objectives agro and grpo) against TRL's GRPOTrainer, interleaved (benchmarks/throughput.py)
# 2. a short training run of configs/smollm2-135m-gpu.yaml: held-out accuracy before and after, steps/s
# 3. async generation (actor one step ahead) against the synchronous loop: steps/s of the same config
# 4. vLLM against HF generation, where vLLM is installed: tokens/s of the same prompts
# Each part appends one JSON object ({"part": ..., ...}); a part that fails appends {"part": ..., "error": ...}
# and the others still run.
set -u
OUT=${OUT:-runs/gpu-check}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
RESULTS="$OUT/gpu_check.jsonl"
: > "$RESULTS"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device')" || exit 2

record_error() {  # part, exit code
  $PY -c "import json, sys; print(json.dumps({'part': sys.argv[1], 'error': f'exit code {sys.argv[2]}'}))" \
    "$1" "$2" >> "$RESULTS"
}

# 1. throughput against TRL (the last line of the benchmark is its JSON)
if timeout 240 $PY benchmarks/throughput.py --model smollm2-135m-instruct --warmup 1 --steps 3 \
    > "$OUT/throughput.log" 2>&1; then
  tail -n 1 "$OUT/throughput.log" | $PY -c "import json, sys; print(json.dumps({'part': 'throughput', **json.load(sys.stdin)}))" \
    >> "$RESULTS"
else
  record_error throughput $?
fi

# 2 and 3: the config, synchronous then asynchronous (actor one step ahead)
train() {  # name, extra --set arguments
  local name=$1; shift
  rm -rf "$OUT/$name"
  timeout 150 $PY -m agro.cli train configs/smollm2-135m-gpu.yaml --set max_steps="$STEPS" --set eval_steps="$STEPS" \
    --set report_to=none --set output_dir="$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}
summarize() {  # name, part: steps/s over steps 2.. (the first compiles), accuracy before and after
  $PY - "$OUT/$1/metrics.jsonl" "$2" >> "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
steps = [r["time_step"] for r in rows if "time_step" in r][1:]
acc = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
print(json.dumps({"part": sys.argv[2], "steps_per_s": len(steps) / sum(steps), "step_s": steps,
                  "accuracy_before": acc[0] if acc else None, "accuracy_after": acc[-1] if acc else None,
                  "gpu": __import__("torch").cuda.get_device_name()}))
PY
}
if train sync; then summarize sync train_sync; else record_error train_sync $?; fi
if train async --set async_generation=true --set max_staleness=1 --set eval_steps=0 --set eval_data=null; then
  summarize async train_async
else
  record_error train_async $?
fi

# 4. vLLM against HF generation (greedy, the config's prompts, 256 sequences of up to 128 tokens)
if $PY -c "import vllm" 2>/dev/null; then
  timeout 150 $PY - >> "$RESULTS" 2> "$OUT/generation.log" <<'PY' || record_error generation $?
import json, time
import torch
from agro.config import load_config
from agro.models import load_model, load_tokenizer
from agro.prompts import PromptPool
from agro.generators import make_generator

c = load_config("configs/smollm2-135m-gpu.yaml", ["report_to=none"])
tokenizer = load_tokenizer(c.model_name_or_path, False)
prompts = list(PromptPool(c, tokenizer).prompt_ids.values())[:c.prompts_per_step]
model = load_model(c.model_name_or_path, "bfloat16", False).cuda().eval()
out = {"part": "generation", "sequences": len(prompts) * c.num_generations}
for backend in ("hf", "vllm"):
    g = make_generator(backend, tokenizer, c.max_completion_length, c.temperature, c.top_p, c.generation_batch_size,
                       0.3, c.model_name_or_path, c.max_prompt_length + c.max_completion_length, "static")
    g.generate(model, prompts, c.num_generations)  # warm-up: compilation, CUDA graphs
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    completions = g.generate(model, prompts, c.num_generations)
    torch.cuda.synchronize()
    out[f"{backend}_tokens_per_s"] = sum(map(len, completions)) / (time.perf_counter() - t0)
out["vllm_over_hf"] = out["vllm_tokens_per_s"] / out["hf_tokens_per_s"]
print(json.dumps(out))
PY
else
  echo '{"part": "generation", "error": "vllm is not installed"}' >> "$RESULTS"
fi
cat "$RESULTS"
