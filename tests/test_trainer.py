"""The trainer end to end on a tiny locally-built model: regimes, checkpoints, resume, final/, errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import agro.assembly
from agro.cli import main
from agro.config import load_config
from agro.generators import HFGenerator
from agro.trainer import Trainer

REWARD = f"{Path(__file__).parent / 'trainer_rewards.py'}:digit_fraction"


def overrides(assets, out, **extra):
    base = {
        "model_name_or_path": assets / "model", "train_data": assets / "train.jsonl", "prompt_template": "raw",
        "reward_function": REWARD, "max_completion_length": 32, "num_generations": 3, "prompts_per_step": 2,
        "max_steps": 2, "learning_rate": 1e-2, "output_dir": out, "save_steps": 1, "offline_per_group": 0,
        "mini_batch_size": 5, "report_to": "none", "seed": 3, "max_prompt_length": 32,
        "truncated_completions": "keep",  # the tiny random model rarely ends a completion: score them all
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


REGIMES = {
    "on_policy": {},
    "offline_only": {"num_generations": 0, "offline_data": "OFF", "offline_per_group": 3, "train_data": "null"},
    "mixed": {"offline_data": "OFF", "offline_per_group": 2, "offline_weight": 0.5},
    "replay": {"replay_per_group": 2, "replay_max_staleness": 2, "max_steps": 3, "train_data": "TWO"},
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_regimes_train_log_checkpoint_and_reload(assets, tmp_path, regime):
    out = tmp_path / "run"
    files = {"OFF": assets / "offline.jsonl", "TWO": assets / "two.jsonl"}
    extra = {k: files.get(v, v) for k, v in REGIMES[regime].items()}
    config = load_config(None, overrides(assets, out, **extra))
    last = Trainer(config).train()
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, config.max_steps + 1))
    for r in rows:
        assert all(k in r for k in ("loss", "log_ratio_mean", "tokens_per_s", "learning_rate",
                                    "objective/advantage_mean", "time_generation", "time_policy"))
        assert all(isinstance(v, float | int) for v in r.values())
    sources = {k.split("/")[1] for r in rows for k in r if k.startswith("count/")}
    expected = {"on_policy": {"on_policy"}, "offline_only": {"offline"}, "mixed": {"on_policy", "offline"},
                "replay": {"on_policy", "replay"}}[regime]
    assert sources == expected
    if regime != "offline_only":
        assert rows[0]["count/on_policy"] == 6 and "kl" in rows[0]
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # first step: policy == reference
        assert abs(rows[-1]["kl"]) > 0  # the policy moved
    if regime == "replay":
        assert "count/replay" not in rows[0] and rows[1]["count/replay"] >= 1
    if regime == "offline_only":
        assert rows[0]["count/offline"] == 6 and rows[0]["reward/offline"] == pytest.approx(1 / 3)
    assert last["step"] == config.max_steps
    ckpts = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert ckpts == [f"checkpoint-{config.max_steps - 1}", f"checkpoint-{config.max_steps}"]  # save_total_limit 2
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    state = json.loads((out / ckpts[-1] / "trainer_state.json").read_text())
    assert state["step"] == config.max_steps
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    for model_dir in (out / "final", out / ckpts[-1]):  # what agro eval / generate default to
        assert json.loads((model_dir / "agro.json").read_text()) == {
            "prompt_template": "raw", "instruction": None, "system_prompt": None, "reward_function": REWARD,
            "max_completion_length": 32, "truncated_completions": "keep", "reward_timeout": 10.0,
            "step": config.max_steps}
    trained = load_file(out / ckpts[-1] / "model.safetensors")
    for name, tensor in final.state_dict().items():
        if name in trained:
            torch.testing.assert_close(tensor, trained[name], rtol=0, atol=0)
    initial = AutoModelForCausalLM.from_pretrained(assets / "model").state_dict()
    assert any(not torch.equal(initial[n], t) for n, t in final.state_dict().items())


def final_weights(out):
    return load_file(out / "final" / "model.safetensors")


def checkpointed_after(assets, out, steps: int, **extra) -> tuple[Trainer, Path]:
    """A run interrupted after `steps` steps and a checkpoint: the trainer, and the checkpoint's path."""
    trainer = Trainer(load_config(None, overrides(assets, out, **extra)))
    trainer.output_dir.mkdir(parents=True)
    for _ in range(steps):
        trainer.train_step()
    return trainer, trainer.save_checkpoint()


def test_resume_is_bit_exact(assets, tmp_path):
    extra = {"max_steps": 4, "save_steps": 2, "offline_data": assets / "offline.jsonl", "offline_per_group": 1,
             "replay_per_group": 1, "lr_scheduler_type": "linear", "warmup_steps": 1}
    straight = tmp_path / "straight"
    Trainer(load_config(None, overrides(assets, straight, **extra))).train()

    broken = tmp_path / "broken"
    first, _ = checkpointed_after(assets, broken, 2, **extra)
    first.scorer.close()
    (broken / "config.yaml").write_text("")  # the interrupted run had started
    torch.manual_seed(12345)  # a fresh process would not share the first one's RNG
    Trainer(load_config(None, overrides(assets, broken, **extra)), resume=True).train()
    a, b = final_weights(straight), final_weights(broken)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    tail = [r["loss"] for r in read_metrics(straight)][2:]
    assert [r["loss"] for r in read_metrics(broken)] == tail


@pytest.mark.slow
def test_two_processes_match_one(assets, tmp_path):
    """2 CPU processes under DDP (gloo), offline-only, fixed seed: the loss trajectory of 1 process.

    `accelerate launch --cpu` starts a single process whatever --num_processes says, so the processes
    are started with torchrun, and accelerate's CPU flag makes them one MULTI_CPU group.
    """
    common = {"num_generations": 0, "offline_data": assets / "offline.jsonl", "offline_per_group": 4,
              "train_data": "null", "prompts_per_step": 4, "max_steps": 3, "save_steps": 0, "mini_batch_size": 3}
    losses = {}
    for procs in (1, 2):
        out = tmp_path / f"p{procs}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "agro.cli", "train"]  # --standalone: a free local port
        for item in overrides(assets, out, **common):
            cmd += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[procs] = [r["loss"] for r in read_metrics(out)]
        assert ("agro: 2 processes (MULTI_CPU)" in proc.stdout) == (procs == 2), proc.stdout[-2000:]
    assert len(losses[1]) == 3
    assert losses[1] == pytest.approx(losses[2], rel=1e-4, abs=1e-6)
    assert losses[1][0] != pytest.approx(losses[1][-1], abs=1e-6)  # training moved the loss
    # Same update: elementwise, Adam turns reduction-order noise in near-zero gradients into visible steps,
    # so compare the whole update, which without the gradient all-reduce would differ by its own size.
    start = load_file(assets / "model" / "model.safetensors")
    one, two = (final_weights(tmp_path / f"p{procs}") for procs in (1, 2))
    moved = sum(float((one[k] - start[k]).norm() ** 2) for k in start) ** 0.5
    apart = sum(float((one[k] - two[k]).norm() ** 2) for k in start) ** 0.5
    assert moved > 0.1 and apart < 1e-3 * moved, (moved, apart)


def run_cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("beta: 0.1\nlearning_rat: 0.1\n", "cfg.yaml:5: unknown key 'learning_rat' (did you mean 'learning_rate'?)"),
        ("beta: -1\n", "cfg.yaml:4: key 'beta': must be > 0"),
        ("num_generations: two\n", "cfg.yaml:4: key 'num_generations': expected an integer"),
        ("num_generations: 1\n", "key 'num_generations': must be ≥ 2 with the group baseline"),
        ("objective: ppo\n", "key 'objective': must be one of"),
        ("taper: token\n", "cfg.yaml:4: key 'taper': must be one of none, ref"),
        ("epsilon: 1.0\n", "cfg.yaml:4: key 'epsilon': must be in [0, 1), got 1.0"),  # 1 − ε must stay > 0
        ("epsilon_high: -0.5\n", "cfg.yaml:4: key 'epsilon_high': must be ≥ 0"),
        ("objective: asymre\nasymre_delta: -0.1\n", "cfg.yaml:5: key 'asymre_delta': must be ≥ 0"),
        ("agro_loss_type: mean\n", "cfg.yaml:4: key 'agro_loss_type': must be one of dr_grpo, sum"),
        ("objective: rloo\nagro_loss_type: sum\n", "cfg.yaml:5: key 'agro_loss_type': applies to objective agro"),
        ("loss_type: dr_grpo\n", "cfg.yaml:4: key 'loss_type': applies to objective grpo only (objective is 'agro'; "
                                  "AGRO's loss scale is agro_loss_type)"),
        ("beta: [1\n", "cfg.yaml:5: invalid YAML"),
        ("reward_function: nothere.py:fn\n", "cfg.yaml:4: key 'reward_function': reward file not found for "
                                             "'nothere.py:fn'"),
        ("reward_function: nothere_module:fn\n", "cfg.yaml:4: key 'reward_function': cannot import module "
                                                 "'nothere_module'"),
        (f"reward_function: {REWARD.replace('digit_fraction', 'nothere')}\n", "cfg.yaml:4: key 'reward_function': "
                                                                            "reward "),
    ],
)
def test_bad_config_one_line_exit_2_nothing_written(assets, tmp_path, capsys, yaml_text, message):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model_name_or_path: {assets / 'model'}\ntrain_data: {assets / 'train.jsonl'}\n"
                   f"output_dir: {out}\n" + yaml_text + "max_steps: 1\nmax_prompt_length: 16\n"
                   "max_completion_length: 16\n")
    rc, err = run_cli(["train", str(cfg)], capsys)
    assert rc == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    """A typo or a bad value is found without the heavy imports (torch, transformers: seconds)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model_name_or_path: m\nlearning_rat: 0.1\n")
    check = ("import sys\nfrom agro.cli import main\nrc = main(sys.argv[1:])\n"
             "print(rc, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    for args in (["train", str(cfg)], ["train", str(cfg), "--set", "beta=-1"], ["eval", "--model", "m"]):
        proc = subprocess.run([sys.executable, "-c", check, *args], capture_output=True, text=True, timeout=120)
        assert proc.stdout.split("\n")[0] == "2 []", (args, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "agro: error: " in proc.stderr


def test_offline_records_of_prompts_outside_train_data_are_reported(assets, tmp_path, capsys):
    """train_data has 2 of the 12 prompts of the offline records: the other 40 records can never join a group."""
    config = load_config(None, overrides(assets, tmp_path / "run", train_data=assets / "two.jsonl",
                                         offline_data=assets / "offline.jsonl", offline_per_group=2, max_steps=1))
    trainer = Trainer(config)
    report = trainer.prompts.data_reports[-1]
    assert (report.loaded, report.unused, report.unused_prompts) == (48, 40, 10)
    assert sum(len(v) for v in trainer.prompts.offline_by_group.values()) == 8
    trainer.train()
    assert f"{assets / 'offline.jsonl'}: 48 loaded, 0 skipped, 0 duplicates dropped, 40 never used (10 prompts not " \
           "in train_data)" in capsys.readouterr().out


def write_offline(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ('{"prompt": "12+13+14=", "completion": "A=39", "reward": NaN}', "off.jsonl:2: field 'reward'"),
        ({"prompt": "12+13+14=", "completion": "   "}, "off.jsonl:2: field 'completion'"),
        ({"prompt": "1+" * 100 + "1=", "completion": "A=101"}, "off.jsonl:2: field 'prompt': prompt has 202 tokens"),
        ({"prompt": "1+" * 300 + "1=", "completion": "A=301"},  # beyond 30 tokens × 5 characters × 4: not tokenised
         "off.jsonl:2: field 'prompt': prompt has 602 characters, more than max_prompt_length 30 tokens can hold"),
        ({"completion": "A=3"}, "off.jsonl:2: field 'prompt'"),
    ],
)
def test_bad_offline_record_errors_or_is_skipped(assets, tmp_path, capsys, bad_row, message):
    off = tmp_path / "off.jsonl"
    write_offline(off, [{"prompt": "11+12+13=", "completion": "11+12=23;23+13=36;A=36", "answer": "36"}, bad_row])
    out = tmp_path / "run"
    args = ["train", *sum((["--set", s] for s in overrides(
        assets, out, num_generations=0, offline_data=off, offline_per_group=2, train_data="null", max_steps=1,
        max_prompt_length=30)), [])]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
    rc, _ = run_cli([*args, "--set", "on_bad_record=skip"], capsys)
    assert rc == 0
    assert read_metrics(out)[0]["skipped_records"] == 1


def test_topr_needs_behaviour_logprobs_of_offline_records(assets, tmp_path, capsys):
    off = tmp_path / "off.jsonl"
    write_offline(off, [{"prompt": "11+12+13=", "completion": "11+12=23;23+13=36;A=36", "answer": "36"}])
    args = ["train", *sum((["--set", s] for s in overrides(
        assets, tmp_path / "run", objective="topr", num_generations=0, offline_data=off, offline_per_group=2,
        train_data="null", max_steps=1, max_prompt_length=30)), [])]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and "off.jsonl:1: field 'behavior_logprobs': objective topr needs" in err, err


def test_context_too_long_for_model(assets, tmp_path, capsys):
    args = ["train", *sum((["--set", s] for s in overrides(assets, tmp_path / "run", max_prompt_length=60)), [])]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and "exceeds the model's context (max_position_embeddings 64)" in err


def test_model_path_that_is_not_a_model(tmp_path, capsys, assets):
    (tmp_path / "notamodel").mkdir()
    args = ["train", *sum((["--set", s] for s in overrides(assets, tmp_path / "run")), [])]
    rc, err = run_cli([*args, "--set", f"model_name_or_path={tmp_path / 'notamodel'}"], capsys)
    assert rc == 2 and "notamodel: cannot load" in err and err.count("\n") == 1


def test_existing_run_is_not_overwritten(assets, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("precious: true\n")
    args = ["train", *sum((["--set", s] for s in overrides(assets, out)), [])]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and "already holds a run" in err
    assert (out / "config.yaml").read_text() == "precious: true\n"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(assets, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "agro.cli", "train"]
    for item in overrides(assets, out, max_steps=1000, save_steps=0):
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]  # 143: scripts can tell it from a finished run
    assert "agro: interrupted by SIGTERM at step" in err and "agro: done" not in err
    ckpts = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert len(ckpts) == 1
    step = json.loads((ckpts[0] / "trainer_state.json").read_text())["step"]
    assert 1 <= step < 1000
    assert len(read_metrics(out)) == step


@pytest.mark.parametrize("rule", ["zero", "mask"])
def test_cut_completions_score_zero_or_leave_the_step_and_are_logged(assets, tmp_path, monkeypatch, rule):
    """truncated_completions reaches the step: every cut on-policy completion has reward 0 (zero) or weight 0
    (mask), and the step logs TRL's completions/clipped_ratio and frac_reward_zero_std."""
    seen = []
    tensors = agro.assembly.tensors

    def capture(gens, keys, logprobs_now, old_logprobs=None):
        seen.append(list(gens))
        return tensors(gens, keys, logprobs_now, old_logprobs)

    monkeypatch.setattr(agro.assembly, "tensors", capture)
    out = tmp_path / "run"
    trainer = Trainer(load_config(None, overrides(assets, out, max_steps=1, max_completion_length=4,
                                                  truncated_completions=rule)))
    trainer.train()
    (row,) = read_metrics(out)
    cut = [g for g in seen[0] if g.completion_ids[-1] not in trainer.eos_ids]
    assert cut and row["completions/clipped_ratio"] == len(cut) / len(seen[0])
    assert all((g.reward == 0.0) if rule == "zero" else (g.weight == 0.0) for g in cut)
    assert 0 <= row["frac_reward_zero_std"] <= 1


def test_gradient_checkpointing_gives_the_same_step(assets, tmp_path):
    """Checkpointed activations (train mode, dropout off) must not change the update. Adam's first step moves each
    weight by lr·g/(|g| + ε): where |g| is near ε, the recomputation's rounding moves that step by a small fraction
    of lr (1e-2 here), hence a tolerance of 1e-3·lr."""
    weights = []
    for flag in (False, True):
        out = tmp_path / f"gc{flag}"
        config = load_config(None, overrides(assets, out, max_steps=1, gradient_checkpointing=flag))
        trainer = Trainer(config)
        if flag:
            assert trainer.policy.is_gradient_checkpointing and trainer.policy.training
        trainer.train()
        weights.append(final_weights(out))
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=1e-5)


def test_agro_loss_type_dr_grpo_reaches_the_trainer_as_the_sum_over_max_completion_length(assets, tmp_path):
    """The first step sees the same samples either way: its loss and gradient norm are the sum's ÷ 32."""
    rows = {}
    for kind in ("sum", "dr_grpo"):
        out = tmp_path / kind
        Trainer(load_config(None, overrides(assets, out, max_steps=1, agro_loss_type=kind))).train()
        rows[kind] = [r for r in read_metrics(out) if "loss" in r][0]
    assert rows["sum"]["loss"] != 0
    assert rows["dr_grpo"]["loss"] == pytest.approx(rows["sum"]["loss"] / 32, rel=1e-5)
    assert rows["dr_grpo"]["grad_norm"] == pytest.approx(rows["sum"]["grad_norm"] / 32, rel=1e-5)


def test_static_cache_generates_what_the_dynamic_cache_does(assets):
    """cache_implementation=static: a cache of max_prompt_length + max_completion_length tokens for every
    generate call; greedy completions of prompts of several widths equal the dynamic cache's, and a step trains."""
    trainer = Trainer(load_config(None, overrides(assets, assets / "unused", cache_implementation="static")))
    try:
        static = trainer.actor.generator
        dynamic = HFGenerator(trainer.tokenizer, static.max_new_tokens)
        prompts = [trainer.prompts.prompt_ids[k][i % 3 :] for i, k in enumerate(trainer.prompts.problems[:6])]
        assert len({len(p) for p in prompts}) == 3  # left padding differs between rows and calls
        for chunk in (prompts[:2], prompts[2:]):
            assert static.generate(trainer.policy, chunk, 1, do_sample=False) == \
                dynamic.generate(trainer.policy, chunk, 1, do_sample=False)
        assert trainer.policy._previous_max_cache_length == 64  # generate built a static cache of that size
        metrics = trainer.train_step()
        assert metrics["length/on_policy"] > 0 and math.isfinite(metrics["loss"])
    finally:
        trainer.scorer.close()


@pytest.mark.slow
def test_mixed_precision_reference_runs_under_the_same_autocast(assets, tmp_path):
    """accelerate autocasts the prepared policy's forward; the reference pass must be cast alike, or the
    first step (policy = reference) would show a log-ratio from bf16 rounding alone."""
    out = tmp_path / "bf16"
    cmd = [sys.executable, "-m", "agro.cli", "train"]
    for item in overrides(assets, out, max_steps=1, save_steps=0):
        cmd += ["--set", item]
    env = {**os.environ, "ACCELERATE_MIXED_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = read_metrics(out)
    assert row["log_ratio_mean"] == 0.0 and row["kl"] == 0.0, row


def test_behaviour_logprobs_are_paired_by_identity(assets, tmp_path, monkeypatch):
    """Groups are on-policy, offline, then replayed samples per prompt, with several prompts per step:
    each on-policy sample gets its own log-probs (importance weight exactly 1) and a replayed sample
    carries the log-probs it had when it was fresh."""
    seen = []
    tensors = agro.assembly.tensors

    def capture(gens, keys, logprobs_now, old_logprobs=None):
        t = tensors(gens, keys, logprobs_now, old_logprobs)
        seen.append((list(gens), t))
        return t

    monkeypatch.setattr(agro.assembly, "tensors", capture)
    config = load_config(None, overrides(assets, tmp_path / "run", objective="is_pg", train_data=assets / "two.jsonl",
                                         offline_data=assets / "offline.jsonl", offline_per_group=2,
                                         replay_per_group=2, replay_max_staleness=2, max_steps=2, save_steps=0))
    trainer = Trainer(config)
    fresh_at_step1 = {}
    for step in range(2):
        trainer.train_step()
        gens, t = seen[-1]
        mask, now, behavior = t["mask"], t["logprobs_now"], t["behavior_logprobs"]
        log_weight = ((now - behavior) * mask).sum(-1)
        sources = [g.source for g in gens]
        assert sources.count("on_policy") == 6 and sources.count("offline") == 4
        assert sources[:3] == ["on_policy"] * 3  # the second prompt's samples are not at the front
        for i, g in enumerate(gens):
            if g.source == "on_policy":
                assert log_weight[i].item() == 0.0  # π/μ = 1 exactly
                fresh_at_step1.setdefault((g.group, tuple(g.completion_ids)), now[i].clone()) if step == 0 else None
            elif g.source == "offline":
                assert torch.equal(behavior[i, : len(g.completion_ids)], g.behavior_logprobs)  # the record's own
                assert g.behavior_logprobs[0].item() == -1.0
    gens, t = seen[-1]
    replayed = [i for i, g in enumerate(gens) if g.source == "replay"]
    assert replayed
    for i in replayed:
        own = fresh_at_step1[(gens[i].group, tuple(gens[i].completion_ids))]
        assert torch.equal(t["behavior_logprobs"][i], own)
        assert not torch.equal(t["logprobs_now"][i], own)  # the policy moved: the weight is not 1


@pytest.mark.parametrize("objective", ["agro", "topr", "asymre"])
def test_off_policy_objectives_train_offline_and_the_taper_spares_fresh_groups(assets, tmp_path, objective):
    offline = load_config(None, overrides(assets, tmp_path / "off", objective=objective, num_generations=0,
                                          offline_data=assets / "offline.jsonl", offline_per_group=4,
                                          train_data="null", max_steps=6, save_steps=0, learning_rate=0.05))
    rows = Trainer(offline).train() and read_metrics(tmp_path / "off")
    assert all(math.isfinite(r["loss"]) for r in rows)
    if objective != "asymre":  # negative records get weights below 1 (AGRO's start at 1: π = π_ref)
        assert min(r["objective/taper_mean"] for r in rows) < 1.0
        assert objective == "topr" or rows[0]["objective/taper_mean"] == 1.0
    if objective == "agro":  # groups with a fresh sample are never tapered
        mixed = load_config(None, overrides(assets, tmp_path / "mixed", offline_data=assets / "offline.jsonl",
                                            offline_per_group=2, max_steps=3, save_steps=0))
        Trainer(mixed).train()
        assert all(r["objective/taper_mean"] == 1.0 for r in read_metrics(tmp_path / "mixed"))


def test_bf16_computes_under_autocast_and_keeps_float32_weights(assets, tmp_path):
    """`bf16: true`: sampling, the policy pass and the π_ref pass all run bfloat16 matmuls (so Δ is 0 at
    the first step, as in float32), while weights and AdamW state stay float32 and are updated."""
    config = load_config(None, overrides(assets, tmp_path / "run", bf16="true", save_steps=0, max_steps=2))
    trainer = Trainer(config)
    seen = {"policy": set(), "reference": set()}
    for name, model in (("policy", trainer.policy), ("reference", trainer.learner.reference.lm)):
        layer = model.get_decoder().layers[0].mlp.down_proj
        layer.register_forward_hook(lambda m, i, o, name=name: seen[name].add(o.dtype))
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    rows = [trainer.train_step() for _ in range(2)]
    trainer.scorer.close()
    assert seen == {"policy": {torch.bfloat16}, "reference": {torch.bfloat16}}
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] != 0
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.learner.optimizer.state.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


@pytest.mark.parametrize("bf16", [False, True])
def test_generation_runs_under_bf16_autocast_only_when_asked(assets, bf16):
    from agro.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(str(assets / "model"), False), load_model(str(assets / "model"), "float32", False)
    seen = set()
    model.get_decoder().layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    prompt = tokenizer("12+3=", add_special_tokens=False)["input_ids"]
    completions = HFGenerator(tokenizer, 4, bf16=bf16).generate(model, [prompt], 2)
    assert len(completions) == 2 and seen == {torch.bfloat16 if bf16 else torch.float32}
