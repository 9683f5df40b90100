"""TRL's generation, prompt and logging fields with TRL's meaning: top_k, min_p, repetition_penalty and
generation_kwargs reach generate; max_prompt_length truncates from the left; grpo with beta 0 has no reference;
log_completions writes completions.jsonl; the epoch strategies become steps."""

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from agro import AGROConfig
from agro.config import load_config
from agro.errors import AgroError
from agro.generators import HFGenerator, sampling_kwargs
from agro.learner import Learner
from agro.prompts import PromptPool
from agro.records import Generation, GenerationBatch
from agro.tokens import encode_prompt
from agro.trainer import Trainer

REWARD = f"{Path(__file__).parent / 'trainer_rewards.py'}:digit_fraction"
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]


def settings(assets, out, **extra):
    base = {"model_name_or_path": str(assets / "model"), "train_data": str(assets / "train.jsonl"),
            "prompt_template": "raw", "reward_function": REWARD, "max_completion_length": 16, "num_generations": 3,
            "prompts_per_step": 2, "max_steps": 1, "output_dir": str(out), "save_steps": 0, "report_to": "none",
            "max_prompt_length": 32, "truncated_completions": "keep", "seed": 3}
    return {**base, **extra}


@pytest.fixture
def model(assets):
    return AutoModelForCausalLM.from_pretrained(assets / "model").eval()


@pytest.fixture
def tokenizer(assets):
    return AutoTokenizer.from_pretrained(assets / "model")


# ----------------------------------------------------------------------------- sampling fields


def test_sampling_fields_off_pass_nothing_and_keep_the_generation_config(tokenizer, model):
    config = AGROConfig(model_name_or_path="m", top_k=None, min_p=None, repetition_penalty=1.0,
                        generation_kwargs=None)  # TRL's defaults
    assert sampling_kwargs(config) == {}
    plain, off = HFGenerator(tokenizer, 8), HFGenerator(tokenizer, 8, sampling=sampling_kwargs(config))
    assert off._config(model, True).to_dict() == plain._config(model, True).to_dict()
    torch.manual_seed(1)
    first = plain.generate(model, PROMPTS, 4)
    torch.manual_seed(1)
    assert off.generate(model, PROMPTS, 4) == first


def test_sampling_fields_reach_generate_and_generation_kwargs_go_last(tokenizer, model):
    config = AGROConfig(model_name_or_path="m", top_k=5, min_p=0.1, repetition_penalty=1.3,
                        generation_kwargs={"top_k": 1})
    assert sampling_kwargs(config) == {"top_k": 1, "min_p": 0.1, "repetition_penalty": 1.3}
    greedy = HFGenerator(tokenizer, 8).generate(model, PROMPTS, 1, do_sample=False)
    top1 = HFGenerator(tokenizer, 8, sampling={"top_k": 1})
    assert top1.generate(model, PROMPTS, 2) == [c for c in greedy for _ in range(2)]  # top_k 1 samples the argmax
    common = Counter(t for c in greedy for t in c).most_common(1)[0][0]
    banned = HFGenerator(tokenizer, 8, sampling={"top_k": 1, "suppress_tokens": [common]})
    assert all(common not in c for c in banned.generate(model, PROMPTS, 2))  # generation_kwargs reach generate
    assert HFGenerator(tokenizer, 8, sampling={"top_k": 1}).generate(model, PROMPTS, 1, do_sample=False) == greedy


def test_trainer_samples_with_the_sampling_fields(assets, tmp_path):
    trainer = Trainer(AGROConfig(**settings(assets, tmp_path / "run", top_k=3, repetition_penalty=1.2)))
    assert trainer.actor.generator.sampling == {"top_k": 3, "repetition_penalty": 1.2}
    assert trainer.actor.generator._config(trainer.policy, True).top_k == 3


@pytest.mark.parametrize("value, message", [
    ("{max_new_tokens: 4}", "--set generation_kwargs: key 'generation_kwargs': 'max_new_tokens' is agro's to set: "
                            "use max_completion_length"),
    ("{num_return_sequences: 2}", "'num_return_sequences' is agro's to set: use num_generations"),
])
def test_generation_kwargs_that_agro_sets_are_refused(assets, tmp_path, value, message):
    with pytest.raises(AgroError, match="^.*$") as err:
        load_config(None, [f"{k}={v}" for k, v in settings(assets, tmp_path / "run").items()]
                    + [f"generation_kwargs={value}"])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sampling_field_bounds_and_trl_json(assets, tmp_path):
    base = [f"{k}={v}" for k, v in settings(assets, tmp_path / "run").items()]
    for bad, message in (("top_k=-1", "key 'top_k': must be ≥ 0"), ("min_p=1.5", "key 'min_p': must be in [0, 1]"),
                         ("repetition_penalty=0", "key 'repetition_penalty': must be > 0")):
        with pytest.raises(AgroError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, [*base, bad])
    config = AGROConfig(model_name_or_path="m", generation_kwargs='{"suppress_tokens": [3]}')  # TRL's CLI: JSON
    assert config.generation_kwargs == {"suppress_tokens": [3]}
    with pytest.raises(AgroError, match="generation_kwargs='{bad': not a JSON object"):
        AGROConfig(model_name_or_path="m", generation_kwargs="{bad")


# ----------------------------------------------------------------------------- max_prompt_length


def long_data(path, tokenizer, count=3):
    rows = [{"prompt": "1+" * (20 + i) + "1=", "answer": str(21 + i)} for i in range(count)]
    rows.append({"prompt": "2+2=", "answer": "4"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_long_prompts_keep_their_last_tokens_with_one_counted_warning(assets, tmp_path, tokenizer, capsys):
    rows = long_data(tmp_path / "long.jsonl", tokenizer)
    config = AGROConfig(**settings(assets, tmp_path / "run", train_data=str(tmp_path / "long.jsonl"),
                                   max_prompt_length=16))
    trainer = Trainer(config)
    pool = trainer.prompts
    assert pool.truncated_prompts == 3 and len(pool.problems) == 4
    for row in rows:
        full = encode_prompt(tokenizer, row["prompt"])
        key = next(k for k in pool.problems if pool.prompt_texts[k] == row["prompt"])
        assert pool.prompt_ids[key] == full[-16:]  # from the left, as TRL
        assert pool.answers[key] == row["answer"]
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("3 prompts longer than max_prompt_length were truncated from the left (to 16 tokens") == 1


def test_truncate_prompts_error_keeps_them_bad_records(assets, tmp_path, tokenizer):
    long_data(tmp_path / "long.jsonl", tokenizer)
    with pytest.raises(AgroError, match="more than max_prompt_length 16"):
        Trainer(AGROConfig(**settings(assets, tmp_path / "run", train_data=str(tmp_path / "long.jsonl"),
                                      max_prompt_length=16, truncate_prompts="error")))
    pool = PromptPool(AGROConfig(**settings(assets, tmp_path / "run", train_data=str(tmp_path / "long.jsonl"),
                                            max_prompt_length=16, truncate_prompts="error",
                                            on_bad_record="skip")), tokenizer)
    assert len(pool.problems) == 1 and pool.truncated_prompts == 0


# ----------------------------------------------------------------------------- beta 0


def grpo_batch(tokenizer):
    gens, keys = [], []
    for g, prompt in enumerate(["1+2=", "3+4=", "5+6="]):
        keys.append(prompt)
        for j in range(3):
            completion = tokenizer.encode(f"A={g + j}{j}", add_special_tokens=False) + [tokenizer.eos_token_id]
            gens.append(Generation(prompt, encode_prompt(tokenizer, prompt), completion, "on_policy",
                                   reward=float((g + j) % 2) + 0.1 * j))
    return GenerationBatch(keys, gens)


def test_grpo_beta_0_loads_no_reference_and_trains_as_with_one(assets, model, tokenizer):
    losses, grads, weights, metrics = [], [], [], []
    for beta in (0.0, 0.05):  # the second has a reference; its KL term is then multiplied by 0
        config = AGROConfig(model_name_or_path=str(assets / "model"), objective="grpo", beta=beta, learning_rate=1e-2, max_prompt_length=16,
                            max_completion_length=16,
                            train_data="x", reward_function=REWARD, report_to="none")
        learner = Learner(config, Accelerator(cpu=True), tokenizer.pad_token_id, None, copy.deepcopy(model))
        if beta == 0:
            assert learner.reference is None and not learner.uses_reference  # no reference model object
        else:
            assert learner.reference is not None
            config.beta = 0.0
        batch, loss, m = learner.update(grpo_batch(tokenizer), first=True)
        assert all((g.ref_logprobs is None) == (beta == 0) for g in batch.generations)  # no reference pass
        losses.append(loss), grads.append(m["grad_norm"]), metrics.append(m)
        weights.append(torch.cat([p.detach().flatten() for p in learner.policy.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and losses[0] != 0
    assert grads[0] == pytest.approx(grads[1], rel=1e-5)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert metrics[0]["kl"] == 0 and metrics[0]["log_ratio_mean"] == 0  # KL to π_ref: reported as 0


# ----------------------------------------------------------------------------- log_completions


def length_reward(completions, log_extra, **kwargs):
    log_extra("chars", [len(c) for c in completions])
    return [len(c) / 10 for c in completions]


def test_log_completions_writes_each_logged_batch_once_and_resume_cuts_it_back(assets, tmp_path):
    from agro import AGROTrainer

    out = tmp_path / "run"
    rows = [json.loads(line) for line in (assets / "train.jsonl").read_text().splitlines()]

    def run(max_steps, resume=None):
        args = AGROConfig(**{**settings(assets, out, max_steps=max_steps, save_steps=1, log_completions=True,
                                        logging_steps=2), "model_name_or_path": "", "train_data": None,
                             "reward_function": None})
        AGROTrainer(str(assets / "model"), reward_funcs=length_reward, args=args,
                    train_dataset=rows).train(resume_from_checkpoint=resume)
        return [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]

    table = run(3)  # logging steps 2 and 3 (the last): 6 generations each
    assert [r["step"] for r in table] == [2] * 6 + [3] * 6
    for r in table:
        assert set(r) == {"step", "source", "prompt", "completion", "reward", "chars"}
        assert r["chars"] == len(r["completion"]) and r["reward"] == pytest.approx(len(r["completion"]) / 10)
        assert r["source"] == "on_policy" and r["prompt"] in {row["prompt"] for row in rows}
    import shutil

    shutil.rmtree(out / "checkpoint-3")
    resumed = run(3, resume=True)  # from step 2: step 3's rows are cut back, then written again
    assert [r["step"] for r in resumed] == [2] * 6 + [3] * 6 and resumed[:6] == table[:6]
