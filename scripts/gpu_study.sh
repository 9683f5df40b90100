#!/usr/bin/env bash
# The study of docs/results/real-model.md on one GPU: every method of benchmarks/real_model.py on configs/smollm2-135m-gpu.yaml
# (bf16, 16 prompts x 16 samples, 128-token completions), 3 seeds, 50 steps, 500 held-out problems, AGRO at both loss
# scales (agro_loss_type sum, the config's, and dr_grpo); then its report.
# Run from the repository root after `make setup`:
#   bash scripts/gpu_study.sh            (OUT=runs/gpu-study; SEEDS=0,1,2; STEPS=50 to change them)
# Cells go to $OUT/cells.jsonl as they finish; a rerun skips them and resumes an unfinished one, as on the CPU.
set -eu
OUT=${OUT:-runs/gpu-study}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_study.sh: no CUDA device')" || exit 2
mkdir -p "$OUT"
$PY benchmarks/real_model.py --config configs/smollm2-135m-gpu.yaml --task chain_sum_2 \
  --methods pi_ref,agro,grpo,agro_stale,grpo_stale,agro_offline,kl_pg_offline,topr_offline,agro_sum,agro_stale_sum,agro_offline_sum \
  --seeds "${SEEDS:-0,1,2}" --max-steps "${STEPS:-50}" --heldout 500 --eval-every 10 --kl-samples 256 \
  --out "$OUT/cells.jsonl" --runs "$OUT/runs"
$PY benchmarks/real_model.py --report --out "$OUT/cells.jsonl" --plot "$OUT/curves.png"
