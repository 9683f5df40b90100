"""reasoning-gym tasks as problem sets (agro.gym): split, kwargs, the task's verifier, and the errors."""

import json

import pytest

import agro.data as data
import agro.gym as gym
from agro.cli import main
from agro.config import load_config
from agro.errors import AgroError
from agro.rewards.functions import load_reward_function

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # 200 distinct questions in all


def problems(split, **kwargs):
    return data.load_problems("reasoning_gym:chain_sum", split=split, kwargs={**SMALL, **kwargs},
                              template="raw")[0]


def test_held_out_questions_never_overlap_the_training_questions():
    """Even with the same seed, and with the task's whole question space drawn (sizes beyond it)."""
    for seed in (0, 1):
        train, heldout = problems("train", size=1000, seed=seed), problems("test", size=1000, seed=seed)
        assert train and heldout
        assert not {p.prompt for p in train} & {p.prompt for p in heldout}
        assert len(train) + len(heldout) <= 200


def test_size_seed_and_determinism():
    a, b = problems("train", size=20, seed=3), problems("train", size=20, seed=3)
    assert [p.prompt for p in a] == [p.prompt for p in b] and len(a) == 20
    assert [p.prompt for p in a] != [p.prompt for p in problems("train", size=20, seed=4)]
    assert len({p.prompt for p in a}) == 20  # distinct
    assert all(gym.split_of(p.prompt) == "train" for p in a)
    default = data.load_problems("reasoning_gym:chain_sum", split="test", kwargs=SMALL)[0]
    assert len(default) <= gym.DEFAULT_SIZE["heldout"]


def test_prompts_take_the_template_instruction_and_system_prompt():
    (p, *_), _ = data.load_problems("reasoning_gym:chain_sum", split="train", kwargs={**SMALL, "size": 1},
                                    template="chat", instruction="Be brief.", system_prompt="You add.")
    assert p.prompt[0] == {"role": "system", "content": "You add."}
    assert p.prompt[1]["content"].endswith("=\nBe brief.") and p.category == "chain_sum"
    (q, *_), _ = data.load_problems("reasoning_gym:chain_sum", split="train", kwargs={**SMALL, "size": 1},
                                    template="plain", instruction="")
    assert q.prompt.endswith("=\n") and "boxed" not in q.prompt


def test_the_reward_is_the_tasks_verifier_on_the_final_answer():
    entries = gym.load_entries("reasoning_gym:chain_sum", {**SMALL, "size": 5}, "train")
    reward = load_reward_function("reasoning_gym")
    for e in entries:
        answer = gym.encode_answer(e)
        assert gym.decode_answer(answer)["question"] == e["question"]
        assert reward("p", f"{e['metadata']['expression']} = {e['answer']}", answer) == 1.0
        assert reward("p", f"The answer is {int(e['answer']) + 1}.", answer) == 0.0
        assert reward("p", "I cannot tell.", answer) == 0.0
        assert load_reward_function("math")("p", f"so {e['answer']}", answer) == 1.0  # the gold answer unwrapped
    with pytest.raises(ValueError, match="reasoning_gym"):
        reward("p", "1", "1")


@pytest.mark.parametrize("source, kwargs, message", [
    ("reasoning_gym:chain_sums", {}, "reasoning_gym:chain_sums: unknown reasoning-gym task 'chain_sums'"),
    ("reasoning_gym:chain_sum", {"bogus": 1}, "cannot create the task"),
    ("reasoning_gym:chain_sum", {"min_terms": 5, "max_terms": 2}, "cannot create the task"),
    ("reasoning_gym:chain_sum", {"size": 0}, "size must be a positive integer"),
    ("reasoning_gym:chain_sum", {"seed": "x"}, "seed must be an integer"),
    ("reasoning_gym:", {}, "unknown reasoning-gym task ''$"),
])
def test_bad_task_or_kwargs(source, kwargs, message):
    with pytest.raises(AgroError, match=message):
        data.load_problems(source, kwargs=kwargs)


def test_config_defaults_the_reward_to_the_tasks_verifier_and_checks_kwargs(tmp_path):
    c = load_config(None, ["model_name_or_path=m", "train_data=reasoning_gym:chain_sum",
                           'train_data_kwargs={"size": 10, "max_terms": 2}'])
    assert c.reward_function == "reasoning_gym" and c.train_data_kwargs == {"size": 10, "max_terms": 2}
    assert load_config(None, ["model_name_or_path=m", "train_data=t.jsonl"]).reward_function == "math"
    with pytest.raises(AgroError, match="--set train_data_kwargs: key 'train_data_kwargs': applies to reasoning_gym"):
        load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "train_data_kwargs={size: 3}"])
    with pytest.raises(AgroError, match="expected a mapping"):
        load_config(None, ["model_name_or_path=m", "train_data=reasoning_gym:x", "train_data_kwargs=3"])
    with pytest.raises(AgroError, match="system_prompt.*chat only"):
        load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "system_prompt=hi"])
    with pytest.raises(AgroError, match="instruction.*plain and chat"):
        load_config(None, ["model_name_or_path=m", "train_data=t.jsonl", "prompt_template=raw", "instruction=hi"])
    with pytest.raises(AgroError, match="reward_function.*reasoning_gym:NAME data only .eval_data is 'e.jsonl'"):
        load_config(None, ["model_name_or_path=m", "train_data=reasoning_gym:chain_sum", "eval_data=e.jsonl"])


def test_agro_eval_unknown_task_is_one_line_exit_2(capsys, tmp_path):
    code = main(["eval", "--model", str(tmp_path / "none"), "--data", "reasoning_gym:no_such_task",
                 "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no_such_task" in err
    code = main(["eval", "--model", "m", "--data", "reasoning_gym:chain_sum", "--data-kwargs", "[1]"])
    assert code == 2 and "--data-kwargs" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_data_kwargs_are_for_reasoning_gym_only(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(AgroError, match="reasoning_gym:NAME data only"):
        data.load_problems(path, kwargs={"size": 3})


def test_the_files_task_kwargs_do_not_follow_another_task_set_on_the_command_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\ntrain_data: reasoning_gym:chain_sum\n"
                      "train_data_kwargs: {min_terms: 2, max_terms: 2}\n")
    c = load_config(config, ["train_data=reasoning_gym:leg_counting"])
    assert c.train_data_kwargs == {} and f"{config}:3: train_data_kwargs describe" in capsys.readouterr().err
    assert load_config(config, ["train_data=reasoning_gym:leg_counting", "train_data_kwargs={size: 4}"]
                       ).train_data_kwargs == {"size": 4}
    assert load_config(config).train_data_kwargs == {"min_terms": 2, "max_terms": 2}


def test_training_prompts_are_the_training_split_whatever_dataset_split_says(assets, tmp_path):
    from agro.evaluate import load_eval_problems
    from agro.prompts import PromptPool
    from agro.tokens import prompt_text

    settings = ["train_data=reasoning_gym:chain_sum", f"train_data_kwargs={json.dumps({**SMALL, 'size': 30})}",
                "eval_data=reasoning_gym:chain_sum", f"eval_data_kwargs={json.dumps({**SMALL, 'size': 30})}",
                f"model_name_or_path={assets / 'model'}", "prompt_template=raw", "max_prompt_length=512"]
    config = load_config(None, [*settings, "dataset_split=test", "eval_split=train"])
    from agro.models import load_tokenizer

    pool = PromptPool(config, load_tokenizer(str(assets / "model"), False))
    train = {pool.prompt_texts[k] for k in pool.problems}
    heldout = {prompt_text(None, p.prompt) for p in load_eval_problems(config)}
    assert train and heldout and not train & heldout
    assert all(gym.split_of(q) == "train" for q in train) and all(gym.split_of(q) == "heldout" for q in heldout)


def test_trained_defaults_fit_the_data_and_template_asked_for(tmp_path, capsys):
    import argparse

    from agro.cli import DEFAULTS, PROMPT_KEYS, _trained_defaults

    keys = (*PROMPT_KEYS, "reward", "max_completion_length", "truncated_completions", "reward_timeout")
    (tmp_path / "agro.json").write_text(json.dumps({
        "prompt_template": "chat", "instruction": "", "system_prompt": "Be brief.", "reward_function": "reasoning_gym",
        "max_completion_length": 32, "reward_timeout": 10.0, "step": 1}))  # written before truncated_completions

    def defaults(data, **flags):
        args = argparse.Namespace(model=str(tmp_path), data=data, **{k: None for k in keys})
        vars(args).update(flags)
        _trained_defaults(args, keys, DEFAULTS)
        return args

    gym_args = defaults("reasoning_gym:chain_sum")
    assert (gym_args.reward, gym_args.system_prompt, gym_args.instruction) == ("reasoning_gym", "Be brief.", "")
    assert gym_args.truncated_completions == "keep"  # what a model trained before the key was scored with
    assert defaults("problems.jsonl").reward is None  # the data's default, not a verifier for other data
    assert defaults("reasoning_gym:chain_sum", prompt_template="plain").system_prompt is None
