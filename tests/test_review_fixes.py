"""Checks of fixes found in review: state that a resume keeps (per-process replay, reward warnings, the table of
completions), offline records of truncated prompts, resume beside overwrite_output_dir, async reward calls
stopped on request, and the staging directories' names."""

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agro import AGROConfig
from agro.checkpoint import check_output_dir, staging_dir
from agro.errors import AgroError
from agro.prompts import PromptPool
from agro.records import Generation
from agro.replay import ReplayBuffer
from agro.rewards.scoring import RewardWarnings
from agro.rewards.workers import RewardScorer, ScoringInterrupted
from agro.tokens import encode_prompt
from agro.trainer import Trainer


def test_async_reward_calls_stop_on_request_between_calls():
    async def slow(prompts, completions, **kwargs):
        await asyncio.sleep(5)
        return [1.0] * len(completions)

    with RewardScorer(slow, timeout=30.0) as scorer:
        assert scorer.asynchronous
        start = time.monotonic()
        scorer.should_stop = lambda: time.monotonic() > start + 0.3
        with pytest.raises(ScoringInterrupted):
            scorer.score(["p"] * 2, ["a", "b"], [None] * 2)
        assert time.monotonic() - start < 2.0
        scorer.should_stop = None

        async def quick(prompts, completions, **kwargs):
            return [2.0] * len(completions)

    with RewardScorer(quick) as scorer:
        scorer.should_stop = lambda: False
        assert scorer.score(["p"], ["a"], [None]).rewards == [2.0]


# ----------------------------------------------------------------------------- offline records of cut prompts


def test_an_offline_record_of_a_truncated_train_data_prompt_is_a_bad_record(assets, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    long_prompt, short_prompt = "1+" * 20 + "1=", "2+2="
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": "1"}) + "\n"
                                                  for p in (long_prompt, short_prompt)))
    (tmp_path / "offline.jsonl").write_text("".join(json.dumps({"prompt": p, "completion": "4", "reward": 1.0}) + "\n"
                                                    for p in (short_prompt, long_prompt)))
    base = {"model_name_or_path": str(assets / "model"), "train_data": str(tmp_path / "train.jsonl"),
            "offline_data": str(tmp_path / "offline.jsonl"), "offline_per_group": 1, "prompt_template": "raw",
            "max_prompt_length": 16, "max_completion_length": 16, "num_generations": 2, "prompts_per_step": 2,
            "report_to": "none", "output_dir": str(tmp_path / "run")}
    with pytest.raises(AgroError) as bad:
        PromptPool(AGROConfig(**base), tokenizer)
    whole = len(encode_prompt(tokenizer, long_prompt))
    message = str(bad.value)
    assert "\n" not in message and "offline.jsonl" in message and ":2" in message and "prompt" in message
    assert f"prompt has {whole} tokens, more than max_prompt_length 16" in message
    pool = PromptPool(AGROConfig(**base, on_bad_record="skip"), tokenizer)
    assert pool.truncated_prompts == 1 and len(pool.problems) == 2  # the train_data prompt itself is kept, cut
    long_key = next(k for k in pool.problems if pool.prompt_texts[k] == long_prompt)
    assert pool.prompt_ids[long_key] == encode_prompt(tokenizer, long_prompt)[-16:]
    assert long_key not in pool.offline_by_group and sum(map(len, pool.offline_by_group.values())) == 1
    assert len(pool.data_reports[-1].skipped) == 1


# ----------------------------------------------------------------------------- what a checkpoint keeps

REWARD = f"{Path(__file__).parent / 'trainer_rewards.py'}:digit_fraction"


def settings(assets, out, **extra):
    base = {"model_name_or_path": str(assets / "model"), "train_data": str(assets / "two.jsonl"),
            "prompt_template": "raw", "reward_function": REWARD, "max_completion_length": 16, "num_generations": 3,
            "prompts_per_step": 2, "max_steps": 2, "output_dir": str(out), "save_steps": 1, "save_total_limit": 0, "report_to": ["none"],
            "max_prompt_length": 32, "truncated_completions": "keep", "seed": 3, "offline_per_group": 0}
    return {**base, **extra}


def test_each_process_keeps_its_own_per_prompt_replay_and_older_checkpoints_still_load(assets, tmp_path):
    out = tmp_path / "run"
    config = AGROConfig(**settings(assets, out, replay_per_group=2))
    Trainer(config).train()
    saved = out / "checkpoint-2"
    held = json.loads((saved / "replay_0.json").read_text())
    assert held and "replay" not in json.loads((saved / "trainer_state.json").read_text())
    (saved / "replay_1.json").write_text(json.dumps(held[:1]))  # another process's samples
    shutil.copy(saved / "rng_state_0.json", saved / "rng_state_1.json")
    resumed = Trainer(config, resume=True)
    assert [g.to_state() for gs in resumed.replay.by_group.values() for g in gs] == held
    resumed.rank = 1
    resumed._resume(saved)
    assert len(resumed.replay) == 1  # its own file, not the main process's samples
    state = json.loads((saved / "trainer_state.json").read_text())  # a checkpoint of one buffer for all
    (saved / "trainer_state.json").write_text(json.dumps({**state, "replay": held[:2]}))
    for rank in (0, 1):
        (saved / f"replay_{rank}.json").unlink()
    older = Trainer(config, resume=True)
    assert len(older.replay) == 2


def test_replay_buffer_files_are_per_process(tmp_path):
    buffers = [ReplayBuffer(4, 1.0) for _ in range(2)]
    for rank, buffer in enumerate(buffers):
        buffer.add([Generation(group=f"g{rank}", prompt_ids=[1], completion_ids=[2] * (rank + 1), source="on_policy", step=1)])
        buffer.save(tmp_path, rank)
    for rank in (1, 0):
        loaded = ReplayBuffer(4, 1.0)
        loaded.load(tmp_path, rank, older=[])
        assert list(loaded.by_group) == [f"g{rank}"]
    fresh = ReplayBuffer(4, 1.0)
    fresh.load(tmp_path, 2)
    assert len(fresh) == 0
    ReplayBuffer(4, 1.0).save(tmp_path / "nothing", 0)  # an empty buffer writes no file


def test_reward_warnings_given_stay_given_after_a_resume(assets, tmp_path):
    out = tmp_path / "run"
    config = AGROConfig(**settings(assets, out))
    trainer = Trainer(config)
    trainer.reward_warnings.cut_run, trainer.reward_warnings.said = 2, {"signal"}
    trainer.train()
    saved = out / "checkpoint-2"
    state = json.loads((saved / "trainer_state.json").read_text())
    assert set(state["reward_warnings"]) == {"cut_run", "said"} and "signal" in state["reward_warnings"]["said"]
    state["reward_warnings"] = {"cut_run": 2, "said": ["signal"]}
    (saved / "trainer_state.json").write_text(json.dumps(state))
    resumed = Trainer(config, resume=True)
    assert (resumed.reward_warnings.cut_run, resumed.reward_warnings.said) == (2, {"signal"})
    warnings = RewardWarnings(16, "keep")
    warnings.load_state(resumed.reward_warnings.state())
    said = warnings.observe(3, {"frac_reward_zero_std": 1.0, "completions/clipped_ratio": 0.9})
    assert len(said) == 1 and "in each of the last 3 steps" in said[0]  # the run of cut batches goes on;
    # the no-signal warning was given before the resume
    del state["reward_warnings"]  # a checkpoint without them: none given yet
    (saved / "trainer_state.json").write_text(json.dumps(state))
    older = Trainer(config, resume=True)
    assert (older.reward_warnings.cut_run, older.reward_warnings.said) == (0, set())


def test_completions_after_a_resume_in_the_middle_of_a_batch_are_an_uninterrupted_runs(assets, tmp_path):
    out = tmp_path / "run"
    config = AGROConfig(**settings(assets, out, max_steps=4, num_iterations=2, logging_steps=2,
                                   log_completions=True))

    def table():
        return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]

    Trainer(config).train()
    straight = table()  # batches first trained at steps 1 and 3, each trained on at a logging step (2, 4)
    assert [r["step"] for r in straight] == [1] * 6 + [3] * 6
    for step in (2, 3, 4):
        shutil.rmtree(out / f"checkpoint-{step}")
    Trainer(config, resume=True).train()  # from step 1, in the middle of the first batch
    resumed = table()
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] and resumed[:6] == straight[:6]
    assert [r["prompt"] for r in resumed] == [r["prompt"] for r in straight]


# ----------------------------------------------------------------------------- output_dir, staging


def test_resume_wins_over_overwrite_output_dir(assets, tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(AGROConfig(**settings(assets, out))).train()
    check_output_dir(out, resume=True, overwrite=True)  # no error: resume wins, as in transformers' Trainer
    trainer = Trainer(AGROConfig(**settings(assets, out, max_steps=3, overwrite_output_dir=True)), resume=True)
    assert trainer.step == 2
    trainer.train()
    assert "overwrite_output_dir is ignored" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-3").is_dir()


def test_staging_directories_are_named_in_one_place(tmp_path):
    named = staging_dir(tmp_path, 3, create=False)
    assert named == tmp_path / ".tmp-checkpoint-3" and not named.exists()
    assert staging_dir(tmp_path, 3) == named and named.is_dir()
    assert staging_dir(tmp_path, "final", create=False) == tmp_path / ".tmp-final"
