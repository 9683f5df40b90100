# Usage, on a GPU machine from the repository root, with agro importable (pip install -e . or PYTHONPATH=src):
#   bash scripts/fsdp_smoke.sh [workdir]    (FSDP_VERSION=1 or 2, default 2)
# FSDP smoke (1 process on one GPU): offline-only AGRO, 3 steps + checkpoint, resume to 4; and the clear error
# for on-policy generation under FSDP.
set -e
D=${1:-/tmp/fsdp}
rm -rf $D && mkdir -p $D
python3 - $D <<'PY'
import json, sys, torch
from pathlib import Path
from agro.tasks.arithmetic import ArithmeticTask, build_model, build_tokenizer, generate_problems
from agro.generators import HFGenerator
root = Path(sys.argv[1]); torch.manual_seed(0)
tok = build_tokenizer(); m = build_model(ArithmeticTask(hidden_size=64, num_layers=2, num_heads=2), tok)
m.save_pretrained(root / "model"); tok.save_pretrained(root / "model")
problems = generate_problems(16, seed=0, split="train")
prompts = [tok(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
samples = HFGenerator(tok, 16).generate(m, prompts, 4)
with open(root / "offline.jsonl", "w") as f:
    for i, p in enumerate(problems):
        for c in [c for c in samples[4 * i : 4 * i + 4] if tok.decode(c, skip_special_tokens=True)]:
            f.write(json.dumps({"prompt": p.prompt, "completion": tok.decode(c, skip_special_tokens=True), "answer": p.answer}) + "\n")
PY
ARGS="model_name_or_path=$D/model offline_data=$D/offline.jsonl train_data=null num_generations=0 offline_per_group=4 prompt_template=raw reward_function=tests/trainer_rewards.py:digit_fraction max_completion_length=16 prompts_per_step=4 save_steps=3 output_dir=$D/out report_to=none max_prompt_length=32 mini_batch_size=16 learning_rate=0.003"
L="python3 -m accelerate.commands.launch --num_processes 1 --num_machines 1 --dynamo_backend no --mixed_precision no --use_fsdp --fsdp_version ${FSDP_VERSION:-2} --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_state_dict_type FULL_STATE_DICT"
$L scripts/fsdp_train.py $ARGS max_steps=3
$L scripts/fsdp_train.py $ARGS max_steps=4 --resume
ls $D/out/final
python3 -c "import json; print('losses', [round(json.loads(l)['loss'], 5) for l in open('$D/out/metrics.jsonl')])"
$L -m agro.cli train --set model_name_or_path=$D/model --set train_data=$D/offline.jsonl --set prompt_template=raw --set output_dir=$D/gen --set max_prompt_length=32 --set max_completion_length=16 --set max_steps=1 --set report_to=none && echo "UNEXPECTED: generation ran" || echo "generation under FSDP refused, rc $?"
