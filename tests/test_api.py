"""The Python API (agro.AGROTrainer, AGROConfig) on a tiny locally-built model, and TRL-style reward functions
in the scorer: TRL's own reward functions unchanged, columns as keywords, None, failures, weights, callbacks."""

import json
import math
import os
import signal
import types

import datasets
import pytest
import torch
import yaml
from peft import LoraConfig
from transformers import AutoModelForCausalLM, TrainerCallback
from transformers.trainer_utils import TrainOutput

from agro import AGROConfig, AGROTrainer, run_inputs
from agro.cli import main
from agro.errors import AgroError
from agro.records import Generation
from agro.rewards.functions import Samples, isolated
from agro.rewards.scoring import WeightedRewards, score
from agro.rewards.workers import RewardScorer


def rows(assets, extra=True):
    out = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    return [{**r, "difficulty": i % 3} for i, r in enumerate(out)] if extra else out


def config(out, **extra):
    base = dict(output_dir=str(out), max_completion_length=16, num_generations=3, prompts_per_step=2, max_steps=2,
                learning_rate=1e-2, save_steps=0, offline_per_group=0, report_to=["none"], seed=3,
                max_prompt_length=32, truncated_completions="keep")
    return AGROConfig(**{**base, **extra})


def digits(prompts, completions, completion_ids, difficulty, **kwargs):
    """TRL-style: the share of digits, and the extra column `difficulty` must arrive as a list."""
    assert isinstance(difficulty, list) and len(difficulty) == len(completions)
    assert all(len(ids) >= 1 for ids in completion_ids)
    return [sum(c.isdigit() for c in text) / max(1, len(text)) for text in completions]


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_trl_style_functions_with_columns_train_log_and_save(assets, tmp_path, capsys, one_thread):
    seen = []

    def length(prompts, completions, **kwargs):  # a closure: runs in a forked worker
        seen.append(kwargs["difficulty"])  # in the trainer's process, as in TRL
        return [len(c) / 16 for c in completions]

    out = tmp_path / "run"
    trainer = AGROTrainer(str(assets / "model"), reward_funcs=[digits, length],
                          args=config(out, reward_weights=[1.0, 0.5]),
                          train_dataset=datasets.Dataset.from_list(rows(assets)))
    last = trainer.train()
    assert [len(d) for d in seen] == [3] * 4  # the functions run in this process: the closure's state persists
    metrics = read_metrics(out)
    for row in metrics:
        for name in ("digits", "length"):
            assert math.isfinite(row[f"rewards/{name}/mean"]) and f"rewards/{name}/std" in row
    # the weighted sum is the reward: mean over the on-policy samples, all scored
    row = metrics[-1]
    assert row["reward/on_policy"] == pytest.approx(row["rewards/digits/mean"] + 0.5 * row["rewards/length/mean"])
    assert isinstance(last, TrainOutput) and last.global_step == 2 and last.metrics["step"] == 2
    assert last.training_loss == pytest.approx(sum(r["loss"] for r in metrics) / 2) and row["reward_failures"] == 0
    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None
    assert [r["step"] for r in trainer.state.log_history] == [1, 2]
    # what was trained with is recorded: no config reward, which `agro eval` would have taken for the default
    assert json.loads((out / "final" / "agro.json").read_text())["reward_function"] is None
    assert yaml.safe_load((out / "config.yaml").read_text())["reward_function"] is None
    assert main(["eval", "--model", str(out / "final"), "--data", str(assets / "train.jsonl"),
                 "--out", str(tmp_path / "eval.json")]) == 2
    assert capsys.readouterr().err.endswith("trained with reward functions given in Python, which agro.json "
                                            "cannot name; give --reward\n")
    # resumed from a checkpoint path: output_dir's latest one only (the one a resumed run takes)
    again = AGROTrainer(str(assets / "model"), reward_funcs=[digits, length],
                        args=config(out, reward_weights=[1.0, 0.5], max_steps=3), train_dataset=rows(assets))
    with pytest.raises(AgroError, match=r"checkpoint-1: a run resumes from the latest checkpoint of output_dir "
                                        r"only \(.*checkpoint-2\)$"):
        again.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert again.train(resume_from_checkpoint=out / "checkpoint-2").global_step == 3


def test_none_drops_a_sample_from_its_group_and_failures_are_counted(assets, tmp_path, one_thread):
    def first_only(prompts, completions, **kwargs):
        return [1.0 if i == 0 else None for i in range(len(completions))]

    out = tmp_path / "run"
    AGROTrainer(str(assets / "model"), reward_funcs=first_only, args=config(out, max_steps=1),
                train_dataset=rows(assets, extra=False)).train()
    row = read_metrics(out)[0]
    assert row["reward_none"] == 4 and row["reward_failures"] == 0  # 2 groups × 2 unrewarded samples
    assert row["rewards/first_only/mean"] == 1.0

    def raises(prompts, completions, **kwargs):
        raise RuntimeError("broken reward")

    with pytest.raises(AgroError, match=r"6 of 6 rewards failed \(6 errors, 0 timeouts, 0 non-finite\) in 2 reward calls.*RuntimeError: broken reward"):
        AGROTrainer(str(assets / "model"), reward_funcs=raises, args=config(tmp_path / "bad", max_steps=1),
                    train_dataset=rows(assets)).train()


def test_a_loaded_model_and_callbacks(assets, tmp_path, one_thread):
    events = []

    class Recorder(TrainerCallback):
        def on_init_end(self, args, state, control, **kwargs):
            events.append(("init_end", state.global_step, kwargs["optimizer"] is not None))

        def on_step_begin(self, args, state, control, **kwargs):
            events.append(("step_begin", state.global_step, True))

        def on_step_end(self, args, state, control, **kwargs):
            events.append(("step_end", state.global_step, kwargs["model"] is not None))
            control.should_training_stop = state.global_step == 2

        def on_log(self, args, state, control, logs=None, **kwargs):
            events.append(("log", logs["step"], "rewards/digits/mean" in logs))

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            events.append(("evaluate", state.global_step, sorted(metrics)))

        def on_train_end(self, args, state, control, **kwargs):
            events.append(("train_end", state.global_step, args.max_steps))

    model = AutoModelForCausalLM.from_pretrained(assets / "model")
    out = tmp_path / "run"
    trainer = AGROTrainer(model, reward_funcs=[digits], args=config(out, max_steps=5),
                          train_dataset=rows(assets), eval_dataset=rows(assets)[:2], callbacks=[Recorder])
    evaluated = ["eval/accuracy", "eval/clipped_ratio"]
    assert set(trainer.evaluate()) == set(evaluated)  # before train(): its reward workers stay for train()
    trainer.train()
    assert trainer.model is model  # trained in place, as TRL does
    assert events == [("init_end", 0, True), ("evaluate", 0, evaluated),
                      ("evaluate", 0, evaluated), ("log", 0, False), ("step_begin", 0, True), ("step_end", 1, True),
                      ("log", 1, True), ("step_begin", 1, True), ("step_end", 2, True), ("log", 2, True),
                      ("evaluate", 2, evaluated), ("log", 2, False),
                      ("train_end", 2, 5)]  # a callback stopped the run after step 2
    del events[:]
    assert trainer.train().global_step == 2  # again: stopped still, the final evaluation with fresh workers
    assert events == [("evaluate", 2, evaluated), ("log", 2, False), ("train_end", 2, 5)]
    assert set(trainer.evaluate()) == set(evaluated)
    saved = trainer.save_model(tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(saved) is not None


def test_bad_inputs_are_one_line_errors(assets, tmp_path):
    model = str(assets / "model")
    cases = [
        (dict(args=AGROConfig(learning_rate="fast")), "key 'learning_rate': expected a finite number"),
        (dict(args=AGROConfig(beta=-1.0)), "key 'beta': must be > 0"),
        (dict(train_dataset="train.jsonl"), "train_dataset: expected a datasets.Dataset or a list of dicts"),
        (dict(train_dataset=[{"question": "1+1="}]), "train_dataset:row 0: field 'prompt': missing required field"),
        (dict(reward_funcs=[]), "reward_funcs: an empty list"),
        (dict(reward_funcs=[digits, digits], args=AGROConfig(reward_weights=[1.0])), "1 weights for 2 reward"),
        (dict(reward_funcs="nowhere:fn"), "key 'reward_function': cannot import module 'nowhere'"),
        (dict(model=3), "model: expected a name, a path or a PreTrainedModel, got a int"),
        (dict(args=types.SimpleNamespace(max_steps=2)), "args: expected an agro.AGROConfig, got a SimpleNamespace"),
        (dict(reward_funcs=[digits, 3]), "reward_funcs: expected spec strings or callables, got a int"),
        (dict(peft_config={"r": 4}), "peft_config: expected a peft.LoraConfig, got a dict"),
        (dict(args=AGROConfig(reward_function=None)), "key 'reward_function': is null: the run's reward functions"),
        (dict(peft_config=LoraConfig(lora_dropout=0.05, bias="all", use_rslora=True)),
         "peft_config: lora_dropout=0.05, bias='all', use_rslora=True: not supported"),
    ]
    for kwargs, message in cases:
        kwargs = {"model": model, "train_dataset": rows(assets), **kwargs}
        kwargs["args"] = kwargs.get("args") or AGROConfig()
        kwargs["args"].output_dir = str(tmp_path / "never")
        with pytest.raises(AgroError, match=message.replace("(", r"\(")) as err:
            AGROTrainer(**kwargs).train()
        assert "\n" not in str(err.value)
    assert not (tmp_path / "never").exists()
    with pytest.raises(AgroError, match="^config: key 'reward_weights': 1 weights for 2 reward functions$"):
        AGROTrainer(model, reward_funcs=[digits, digits], args=config(tmp_path / "never", reward_weights=[1.0]),
                    train_dataset=rows(assets))  # at once, before any worker or model starts


def test_lora_on_all_linear_layers_and_a_signal_ends_the_run_with_train_end(assets, tmp_path, one_thread):
    events = []

    class Stopper(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's stop would

        def on_train_end(self, args, state, control, **kwargs):
            events.append(("train_end", state.global_step))

    out = tmp_path / "run"
    trainer = AGROTrainer(str(assets / "model"), reward_funcs=digits, args=config(out, max_steps=3),
                          train_dataset=rows(assets), callbacks=[Stopper()],
                          peft_config=LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert trainer.args.lora_target_modules == "all-linear"  # a string is PEFT's, not a list of its characters
    assert trainer.train().global_step == 1
    assert events == [("train_end", 1)] and (out / "checkpoint-1").is_dir()
    assert any(name.endswith("mlp.down_proj.lora_A.default.weight") for name, _ in trainer.model.named_parameters())


# ------------------------------------------------------------------ TRL-style functions in the scorer


def test_trl_reward_functions_run_unchanged_on_chat_prompts():
    """TRL's own reward functions, as GRPOTrainer calls them: chat prompts give message-list completions."""
    rewards = pytest.importorskip("trl.rewards")  # trl is in the dev extra (make setup installs it)
    chat = [{"role": "user", "content": "What is 1/2 + 1/4?"}]
    samples = Samples(prompts=[chat] * 3, completions=["<think>add</think>\\boxed{\\frac{3}{4}}", "\\boxed{0.75}", "\\boxed{5}"],
                      answers=[None] * 3, completion_ids=[[1, 2, 3], [1] * 20, [1]],
                      columns={"solution": ["$\\frac{3}{4}$"] * 3}, groups=[0, 0, 0])
    scorers = [RewardScorer(fn, timeout=30) for fn in
               (rewards.accuracy_reward, rewards.think_format_reward, rewards.get_soft_overlong_punishment(20, 10))]
    with WeightedRewards(scorers) as functions:
        result = functions.score_samples(samples)
    assert result.by_function == {"accuracy_reward": [1.0, 1.0, 0.0], "think_format_reward": [1.0, 0.0, 0.0],
                                  "soft_overlong_punishment_reward": [0.0, -1.0, 0.0]}
    assert result.rewards == [2.0, 0.0, 0.0] and result.failures == 0


def test_batched_calls_are_one_per_group_with_a_time_limit_each():
    def per_group(prompts, completions, **kwargs):
        if completions[0] == "hang":
            while True:
                pass
        return [1.0] * len(completions) if completions[0] != "short" else [1.0]

    samples = Samples(prompts=["a", "a", "b", "b", "c", "c"], completions=["x", "y", "hang", "z", "short", "w"],
                      answers=[None] * 6, groups=["a", "a", "b", "b", "c", "c"])
    with RewardScorer(per_group, timeout=0.5) as scorer:  # a closure in a forked worker, killed at its limit
        assert scorer.batched and scorer.name == "per_group"
        result = scorer.score_samples(samples)
        assert scorer.score_samples(samples, max_failure_fraction=0.3).unscored == 2  # stopped after group b
    assert result.rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert (result.timeouts, result.errors) == (2, 2)
    assert result.first_failure == "sample 2: timeout: exceeded 0.5 s"


def test_a_lambda_and_a_per_sample_callable_run_in_workers():
    with RewardScorer(lambda prompts, completions, **kw: [float(len(c)) for c in completions]) as scorer:
        assert scorer.score(["p", "p"], ["ab", "abc"], [None, None]).rewards == [2.0, 3.0]
    with RewardScorer(lambda prompt, completion, answer: float(completion == answer)) as scorer:
        assert not scorer.batched
        assert scorer.score(["p", "p"], ["1", "2"], ["1", "1"]).rewards == [1.0, 0.0]


def test_one_function_stops_early_only_once_the_whole_batch_is_over_the_fraction():
    """Two functions, 5 groups, `a` fails on 3: 3 of 10 results failed, under 0.5, so `a` scores the other
    two groups (it used to stop at 3 of its own 5 and leave them at a made-up 0.0)."""
    def a(prompts, completions, **kwargs):
        if completions[0].startswith("bad"):
            raise RuntimeError("no")
        return [1.0] * len(completions)

    def b(prompts, completions, **kwargs):
        return [0.5] * len(completions)

    groups = [f"p{i // 2}" for i in range(10)]
    samples = Samples(prompts=groups, completions=["bad" if i < 6 else "ok" for i in range(10)],
                      answers=[None] * 10, groups=groups)
    with WeightedRewards([RewardScorer(f, in_process=True) for f in (a, b)]) as functions:
        result = functions.score_samples(samples, max_failure_fraction=0.5)
        assert result.unscored == 0 and result.errors == 6
        assert result.by_function["a"] == [0.0] * 6 + [1.0] * 4 and result.rewards[-1] == 1.5
        assert result.first_failure == "a: sample 0: error: RuntimeError: no"
        assert functions.score_samples(samples, max_failure_fraction=0.25).unscored > 0  # 6 of 10: over 0.25


def test_scoring_a_step_leaves_out_unscored_metrics_and_keeps_none():
    def big_or_none(prompts, completions, **kwargs):
        return [1e30 if c == "big" else None for c in completions]

    def one(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    gens = [Generation(group="g", prompt_ids=[1], completion_ids=[5, 2], source="on_policy", prompt="p",
                       completion=c) for c in ("big", "small")]
    with WeightedRewards([RewardScorer(f, in_process=True) for f in (big_or_none, one)]) as functions:
        scored, metrics = score(functions, gens, 0, 1.0, {2})
        assert metrics["reward_non_finite"] == 1 and [g.reward for g in scored] == [0.0, 1.0]
        # the too-large value is zeroed; `one`'s rewards are kept, and big_or_none's None stays None
        assert metrics["rewards/big_or_none/mean"] == 0.0 and "rewards/big_or_none/std" not in metrics
        # rewards already known (a batch's later iterations, stored rewards): no call, no NaN, keys left out
        _, again = score(functions, scored, 1, 1.0, {2})
    assert not [k for k in again if k.startswith("rewards/")]
    assert all(math.isfinite(v) for v in again.values())


def test_a_python_function_that_cannot_run_is_named():
    def broken(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    functions = run_inputs.RunInputs(reward_funcs=[broken]).reward_functions(AGROConfig(reward_timeout=5))
    with functions:
        functions.scorers[0].close()
        with pytest.raises(AgroError, match=r"^reward function broken: RewardScorer is closed$"):
            functions.score(["p"], ["c"], [None])


def test_a_forked_worker_runs_torch_on_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with RewardScorer(isolated(lambda prompts, completions, **kw: [float(torch.get_num_threads())] * len(completions)),
                          timeout=30) as scorer:
            assert scorer.score(["p"], ["c"], [None]).rewards == [1.0]
    finally:
        torch.set_num_threads(threads)
