"""Rewards as TRL runs them: Python callables in the trainer's process (state persists) with a time limit,
`isolated` ones and specs in workers, TRL's keywords (truncated, trainer_state, log_metric, log_extra), async
functions, reward models; every completion scored before the truncated_completions rule, the failure message
counting what it says, and the warnings of a run with cut completions or no reward signal."""

import asyncio
import json
import os
import signal
import threading
import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, TrainerState

from agro import AGROConfig, AGROTrainer
from agro.errors import AgroError
from agro.records import Generation
from agro.rewards.functions import (
    RewardContext,
    RewardModelSpec,
    Samples,
    is_model_spec,
    isolated,
    load_reward_function,
)
from agro.rewards.in_process import TimeLimit
from agro.rewards.reward_models import RewardModelScorer
from agro.rewards.scoring import RewardWarnings, WeightedRewards, score
from agro.rewards.workers import RewardScorer, open_scorer
from agro.run_inputs import RunInputs
from agro.tasks.arithmetic import build_tokenizer

EOS = 2


def groups_of(completions: list[str], size: int = 2, truncated: list[bool] | None = None) -> Samples:
    """Samples in groups of `size` (one batched call each)."""
    groups = [f"p{i // size}" for i in range(len(completions))]
    return Samples(prompts=groups, completions=completions, answers=[None] * len(completions), groups=groups,
                   truncated=truncated)


def gens(completions: list[str], cut: list[bool], group_size: int = 2) -> list[Generation]:
    return [Generation(group=f"g{i // group_size}", prompt_ids=[1], completion_ids=[5, 6] + ([] if c else [EOS]),
                       source="on_policy", prompt="p", completion=text, answer="1")
            for i, (text, c) in enumerate(zip(completions, cut))]


# ------------------------------------------------------------------ where calls run


def test_a_closure_runs_in_process_and_keeps_its_state_isolated_ones_do_not():
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(os.getpid())
        return [float(len(calls))] * len(completions)

    with RewardScorer(counting) as scorer:
        assert scorer.in_process
        assert scorer.score_samples(groups_of(["a", "b", "c", "d"])).rewards == [1.0, 1.0, 2.0, 2.0]
        assert scorer.score_samples(groups_of(["e", "f"])).rewards == [3.0, 3.0]  # the counter goes on
    assert calls == [os.getpid()] * 3
    kept = []

    @isolated
    def in_a_worker(prompt, completion, answer):
        kept.append(completion)
        return float(os.getpid())

    with RewardScorer(in_a_worker) as scorer:
        assert not scorer.in_process
        (pid,) = scorer.score(["p"], ["c"], [None]).rewards
    assert pid != os.getpid() and kept == []  # the worker's state stays there
    assert not RewardScorer("reward_fns:completion_length").in_process  # a spec: spawn workers, as before
    class Scorer:
        def reward(self, prompt, completion, answer):
            return 1.0

    with pytest.raises(ValueError, match="cannot mark a method; wrap it in a function first"):
        isolated(Scorer().reward)


def test_in_process_calls_are_cut_at_their_time_limit_and_scoring_goes_on():
    def per_sample(prompt, completion, answer):
        if completion == "sleep":
            time.sleep(60)
        if completion == "spin":
            while True:
                pass
        if completion == "catch":  # a reward that swallows every Exception is cut all the same
            try:
                time.sleep(60)
            except Exception:
                time.sleep(60)
        return 1.0

    before = signal.getsignal(signal.SIGALRM)
    with RewardScorer(per_sample, timeout=0.3) as scorer:
        start = time.monotonic()
        result = scorer.score(["p"] * 5, ["ok", "sleep", "spin", "catch", "ok"], [None] * 5)
        elapsed = time.monotonic() - start
    assert result.rewards == [1.0, 0.0, 0.0, 0.0, 1.0] and result.timeouts == 3 and result.errors == 0
    assert result.first_failure == "sample 1: timeout: exceeded 0.3 s"
    assert elapsed < 3.0, elapsed  # 3 × 0.3 s, not minutes
    assert signal.getsignal(signal.SIGALRM) is before  # the trainer's own handler is back


def test_off_the_main_thread_calls_run_without_a_limit():
    seen = {}

    def run():
        seen["enforced"] = TimeLimit(1.0).enforced
        with RewardScorer(lambda prompt, completion, answer: 0.5) as scorer:
            seen["rewards"] = scorer.score(["p"], ["c"], [None]).rewards

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"enforced": False, "rewards": [0.5]}
    assert TimeLimit(1.0).enforced


# ------------------------------------------------------------------ TRL's keywords


def test_trl_keywords_reach_the_functions_that_take_them():
    state = TrainerState(global_step=4)
    seen = []

    def takes_all(prompts, completions, truncated, trainer_state, log_metric, log_extra, **kwargs):
        seen.append((list(truncated), trainer_state))
        log_metric("calls", 1.0)
        log_metric("size", len(completions))
        log_extra("upper", [c.upper() for c in completions])
        return [float(t) for t in truncated]

    def takes_none(prompts, completions, completion_ids):  # no **kwargs: nothing it did not name
        return [float(len(c)) for c in completions]

    samples = groups_of(["a", "bb", "c", "dd"], truncated=[True, False, False, True])
    samples.completion_ids = [[1]] * 4
    with WeightedRewards([RewardScorer(takes_all), RewardScorer(takes_none)]) as functions:
        functions.trainer_state = state
        result = functions.score_samples(samples)
    assert seen == [([True, False], state), ([False, True], state)]  # the live state, in process
    assert result.by_function == {"takes_all": [1.0, 0.0, 0.0, 1.0], "takes_none": [1.0, 2.0, 1.0, 2.0]}
    assert result.logged_metrics == {"calls": 1.0, "size": 2.0}
    assert result.logged_columns == {"upper": ["A", "BB", "C", "DD"]}
    assert result.calls == 4 and result.failures == 0


def test_a_data_column_named_truncated_is_passed_as_the_data_has_it():
    def reads(prompts, completions, truncated, **kwargs):
        return [float(t == "mine") for t in truncated]

    samples = groups_of(["a", "b"], truncated=[True, True])
    samples.columns = {"truncated": ["mine", "other"]}
    with RewardScorer(reads) as scorer:
        assert scorer.score_samples(samples).rewards == [1.0, 0.0]


def test_log_extra_of_the_wrong_length_fails_the_call():
    def wrong(prompts, completions, log_extra, **kwargs):
        log_extra("x", [1])
        return [1.0] * len(completions)

    with RewardScorer(wrong) as scorer:
        result = scorer.score_samples(groups_of(["a", "b"]))
    assert result.errors == 2 and "log_extra('x'): 1 values for the call's 2 samples" in result.first_failure


def test_a_worker_gets_a_copy_of_trainer_state_and_sends_back_what_it_logged():
    state = TrainerState(global_step=7)
    state.log_history = [{"loss": 1.0}] * 3
    with RewardScorer("reward_fns:reads_state_and_logs", timeout=30) as scorer:
        result = scorer.score_samples(groups_of(["a", "b", "c"], size=3), context=RewardContext(trainer_state=state))
    assert result.rewards == [7.0] * 3  # global_step 7, and no log_history in the copy
    assert result.logged_metrics == {"group_size": 3.0}
    (pid,) = set(result.logged_columns["pid"])
    assert pid != os.getpid() and len(state.log_history) == 3


# ------------------------------------------------------------------ async functions


def test_async_functions_are_awaited_concurrently_with_a_time_limit():
    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0.4)
        if completions[0] == "hang":
            await asyncio.sleep(60)
        return [float(len(c)) for c in completions]

    async def per_sample(prompt, completion, answer):
        return 2.0

    with RewardScorer(judge, timeout=1.0) as scorer:
        assert scorer.asynchronous
        start = time.monotonic()
        result = scorer.score_samples(groups_of(["a", "bb", "c", "dd", "e", "ff", "hang", "x"]))
        elapsed = time.monotonic() - start
    assert result.rewards == [1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 0.0, 0.0] and result.timeouts == 2
    assert elapsed < 2.5, elapsed  # 4 calls side by side: one limit, not 4 × 0.4 s plus one
    with RewardScorer(per_sample) as scorer:
        assert scorer.score(["p", "p"], ["a", "b"], [None, None]).rewards == [2.0, 2.0]
    with RewardScorer(isolated(judge), timeout=5.0) as scorer:  # in a worker: awaited there
        assert scorer.score_samples(groups_of(["a", "bb"])).rewards == [1.0, 2.0]


# ------------------------------------------------------------------ every completion scored, then the rule


@pytest.mark.parametrize("rule", ["zero", "mask", "keep"])
def test_cut_completions_are_scored_and_logged_then_the_rule_applies(rule):
    seen = []

    def reward_len(completions, truncated, **kwargs):  # TRL's quickstart reward, with truncation
        seen.extend(truncated)
        return [-abs(4 - len(c)) for c in completions]

    texts, cut = ["abcd", "ab", "abcdef", "abc"], [True, False, True, True]
    with WeightedRewards([RewardScorer(reward_len)]) as functions:
        scored, metrics = score(functions, gens(texts, cut), 0, 0.5, {EOS}, rule)
    assert seen == cut  # every completion was seen, cut ones too
    assert metrics["rewards/reward_len/mean"] == pytest.approx((0 - 2 - 2 - 1) / 4)
    raw = [0.0, -2.0, -2.0, -1.0]
    assert [g.reward for g in scored] == ([0.0, -2.0, 0.0, 0.0] if rule == "zero" else raw)
    assert [g.weight for g in scored] == ([0.0, 1.0, 0.0, 0.0] if rule == "mask" else [1.0] * 4)


def test_the_built_in_rewards_give_the_same_training_rewards_as_before():
    """`exact` under zero: a cut completion scores 0 although it states the right answer (as when it was not
    called); its own reward only reaches rewards/exact_answer_reward/mean; a None-giving function's cut sample
    keeps reward 0 and weight 1 under zero (as before), and counts in reward_none under mask."""
    with WeightedRewards([RewardScorer("exact")]) as functions:
        scored, metrics = score(functions, gens(["\\boxed{1}", "\\boxed{1}", "2", "1"], [True, False, True, False]),
                                0, 0.5, {EOS}, "zero")
    assert [g.reward for g in scored] == [0.0, 1.0, 0.0, 1.0] and [g.weight for g in scored] == [1.0] * 4
    assert metrics["rewards/exact_answer_reward/mean"] == 0.75

    def none(prompts, completions, **kwargs):
        return [None] * len(completions)

    with WeightedRewards([RewardScorer(none)]) as functions:
        zero, zero_metrics = score(functions, gens(["a", "b"], [True, False]), 0, 0.5, {EOS}, "zero")
        mask, mask_metrics = score(functions, gens(["a", "b"], [True, False]), 0, 0.5, {EOS}, "mask")
    assert [(g.reward, g.weight) for g in zero] == [(0.0, 1.0), (0.0, 0.0)] and zero_metrics["reward_none"] == 1
    assert [(g.reward, g.weight) for g in mask] == [(0.0, 0.0), (0.0, 0.0)] and mask_metrics["reward_none"] == 2


def test_the_failure_message_counts_rewards_and_calls():
    def broken(prompts, completions, **kwargs):
        raise RuntimeError("no")

    with WeightedRewards([RewardScorer(broken)]) as functions, pytest.raises(AgroError) as err:
        score(functions, gens(["a"] * 6, [False] * 6, group_size=3), 0, 0.5, {EOS}, "keep")
    assert str(err.value).startswith("step 1: 6 of 6 rewards failed (6 errors, 0 timeouts, 0 non-finite) in 2 "
                                     "reward calls, above max_reward_failure_fraction 0.5; first: sample 0: error: "
                                     "RuntimeError: no")

    def per_sample(prompt, completion, answer):
        raise RuntimeError("no")

    with WeightedRewards([RewardScorer(per_sample)]) as functions, pytest.raises(AgroError) as err:
        score(functions, gens(["a"] * 4, [False] * 4), 2, 0.5, {EOS}, "keep")
    assert str(err.value).startswith("step 3: 3 of 4 reward calls failed (3 errors, 0 timeouts, 0 non-finite), "
                                     "above max_reward_failure_fraction 0.5 (stopped there, 1 calls not run)")


# ------------------------------------------------------------------ warnings


def test_warnings_for_most_completions_cut_and_for_no_reward_signal():
    warnings = RewardWarnings(16, "zero")
    cut = {"completions/clipped_ratio": 1.0, "frac_reward_zero_std": 0.5, "iteration": 1}
    assert warnings.observe(1, cut) == [] and warnings.observe(2, cut) == []
    assert warnings.observe(3, {**cut, "iteration": 2}) == []  # a batch's second iteration: the same completions
    (said,) = warnings.observe(3, cut)
    assert said.startswith("agro: warning: step 3: more than 50% of the completions were cut at "
                           "max_completion_length=16 in each of the last 3 steps (100% now); truncated_completions="
                           "zero scores each of them 0")
    assert warnings.observe(4, cut) == []  # once a run
    (flat,) = warnings.observe(5, {**cut, "frac_reward_zero_std": 1.0})
    assert "step 5: no reward signal: in every group all rewards are equal" in flat
    assert "max_completion_length=16" in flat and "truncated_completions=zero" in flat
    fine = RewardWarnings(16, "mask")
    assert [fine.observe(s, {"completions/clipped_ratio": 0.5, "frac_reward_zero_std": 0.0}) for s in range(5)] == [[]] * 5


# ------------------------------------------------------------------ reward models


@pytest.fixture(scope="module")
def reward_model():
    """A tiny LlamaForSequenceClassification (num_labels=1) with the arithmetic tokenizer and a chat template."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}A={% endif %}"
                               "{{ m['content'] }};{% endfor %}")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForSequenceClassification(config).eval(), tokenizer


def direct(model, tokenizer, text: str) -> float:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0, 0].item()


def test_a_reward_model_scores_prompt_and_completion_as_a_direct_forward_pass(reward_model):
    model, tokenizer = reward_model
    completions = ["12", "3", "45;6", "7777777"]
    plain = Samples(prompts=["1+2=", "3+4=", "5+6=", "7+8="], completions=completions, answers=[None] * 4)
    chat = Samples(prompts=[[{"role": "user", "content": "1+2="}]] * 4, completions=completions, answers=[None] * 4)
    with RewardModelScorer(model, tokenizer, batch_size=3) as scorer:  # 2 batches, right-padded
        result = scorer.score_samples(plain)
        assert result.rewards == pytest.approx([direct(model, tokenizer, p + c) for p, c in
                                                zip(plain.prompts, completions)], abs=1e-5)
        assert result.calls == 2 and result.failures == 0
        assert scorer.score_samples(chat).rewards == pytest.approx(
            [direct(model, tokenizer, f"1+2=;A={c};") for c in completions], abs=1e-5)


def test_reward_models_given_as_objects_or_paths_with_their_tokenizers(reward_model, tmp_path):
    model, tokenizer = reward_model
    path = tmp_path / "rm"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert is_model_spec(str(path)) and load_reward_function(str(path)) == RewardModelSpec(str(path))
    assert is_model_spec("owner/reward-model") and not is_model_spec("exactly") and not is_model_spec("m:f")
    samples = Samples(prompts=["1+2="], completions=["3"], answers=[None])
    expected = direct(model, tokenizer, "1+2=3")
    args = AGROConfig(reward_timeout=5, mini_batch_size=4)
    inputs = RunInputs(reward_funcs=[model, lambda prompt, completion, answer: 1.0, str(path)],
                       reward_processing_classes=[tokenizer, None, None])
    with inputs.reward_functions(args) as functions:
        assert functions.names == ["LlamaForSequenceClassification", "<lambda>", "rm"]
        result = functions.score_samples(samples)
    assert result.by_function["LlamaForSequenceClassification"] == pytest.approx([expected], abs=1e-5)
    assert result.by_function["rm"] == pytest.approx([expected], abs=1e-5)  # its own tokenizer, from the path
    with RunInputs().reward_functions(AGROConfig(reward_function=str(path))) as functions:  # a config's spec
        assert functions.score_samples(samples).rewards == pytest.approx([expected], abs=1e-5)


def test_bad_reward_models_are_one_line_errors(reward_model, tmp_path):
    model, tokenizer = reward_model
    causal = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                          num_attention_heads=2))
    with pytest.raises(AgroError, match=r"^reward_funcs\[1\]: a reward model must be for sequence classification "
                                        r"\(AutoModelForSequenceClassification, num_labels=1\), got a "
                                        r"LlamaForCausalLM$"):
        RunInputs(reward_funcs=["exact", causal])
    with pytest.raises(AgroError, match=r"^reward_processing_classes: 2 for 1 reward function "):
        RunInputs(reward_funcs=[model], reward_processing_classes=[tokenizer, tokenizer])
    with pytest.raises(AgroError, match=r"^reward model LlamaForSequenceClassification: .* was not loaded from a "
                                        r"name or path: give its tokenizer in reward_processing_classes$"):
        RunInputs(reward_funcs=[model]).reward_functions(AGROConfig())
    missing = str(tmp_path / "nowhere" / "rm")
    with pytest.raises(AgroError, match="unknown reward function .*or a reward model's directory or hub id"):
        RunInputs(reward_funcs=[missing]).reward_functions(AGROConfig())
    with pytest.raises(AgroError, match=r"^reward 'owner/rm': names a reward model \(a directory or hub id\): "
                                        r"training scores one"):
        open_scorer("owner/rm", 5.0)  # agro eval and agro generate take reward functions


# ------------------------------------------------------------------ in a run


def test_a_run_calls_a_stateful_reward_on_cut_completions_and_logs_what_it_logs(assets, tmp_path, reward_model,
                                                                                 one_thread):
    """TRL's quickstart shape: completions cut at 16 tokens (the tiny model rarely ends one) under the zero
    rule: the reward is called on every one of them, its mean and its log_metric are logged, and a closure's
    counter counts in this process; a reward model named by its path scores beside it."""
    model, tokenizer = reward_model
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    calls, cut_seen = [], []

    def reward_len(completions, truncated, log_metric, **kwargs):
        calls.append(len(completions))
        cut_seen.extend(truncated)
        log_metric("cut_share", sum(truncated) / len(truncated))
        return [-abs(8 - len(c)) for c in completions]

    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    out = tmp_path / "run"
    AGROTrainer(str(assets / "model"), reward_funcs=[reward_len, str(tmp_path / "rm")],
                args=AGROConfig(output_dir=str(out), max_completion_length=16, num_generations=3, prompts_per_step=2,
                                max_steps=2, save_steps=0, offline_per_group=0, report_to=["none"], seed=3,
                                max_prompt_length=32, truncated_completions="zero"),
                train_dataset=rows).train()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert calls == [3] * 4 and any(cut_seen)  # 2 groups a step, 2 steps, cut completions included
    for row in metrics:
        assert "rewards/reward_len/mean" in row and "rewards/rm/mean" in row
        assert 0 <= row["cut_share"] <= 1

def test_wired(assets, tmp_path, reward_model, capsys, one_thread):
    model, tokenizer = reward_model
    steps = []

    def reward_len(completions, trainer_state, **kwargs):
        steps.append(trainer_state.global_step)
        return [0.0 for c in completions]

    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]
    out = tmp_path / "run"
    AGROTrainer(str(assets / "model"), reward_funcs=[reward_len, model], reward_processing_classes=[None, tokenizer],
                args=AGROConfig(output_dir=str(out), max_completion_length=4, num_generations=3, prompts_per_step=2,
                                max_steps=3, save_steps=0, offline_per_group=0, report_to=["none"], seed=3,
                                max_prompt_length=32, truncated_completions="zero"),
                train_dataset=rows).train()
    captured = capsys.readouterr()
    err = captured.out + captured.err
    print(err[-3000:])
    assert steps == [0, 0, 1, 1, 2, 2]
    assert "more than 50% of the completions were cut at max_completion_length=4" in err
    assert "no reward signal" in err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/LlamaForSequenceClassification/mean" in r for r in metrics)
