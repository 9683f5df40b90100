"""The built-in countdown task: its verifier, problems and warm-up paths (its π_ref build: test_task_builds.py)."""

import random

import pytest

from agro.tasks import countdown as C
from agro.tasks import get_task


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("7*3=21;21+9=30", 1.0),  # correct
        ("3*7=21;9+21=30", 1.0),  # either operand order
        ("9-7=2;3*2=6;", 0.0),  # trailing separator: three steps for three numbers
        ("7*3=21;21+9=30<eos>", 1.0),  # up to a special token
        (" 7*3=21;21+9=30 ", 1.0),
        ("7*3=21;21+9=31", 0.0),  # wrong arithmetic
        ("7*3=20;20+9=29", 0.0),  # wrong arithmetic, even if consistent afterwards
        ("7*3=21;21+7=28", 0.0),  # 7 used twice (and 9 unused)
        ("7*3=21;21+21=42", 0.0),  # a result used twice
        ("7*3=21", 0.0),  # 9 unused: every number must be used
        ("7*3=21;21+9=30;30-9=21", 0.0),  # too many steps
        ("9/0=0;7*3=21", 0.0),  # division by zero (0 is not even available)
        ("9/7=1;1*3=3", 0.0),  # inexact division
        ("7-7=0;0+3=3", 0.0),  # non-positive result
        ("3-7=-4;-4+9=5", 0.0),  # negative numbers cannot be written
        ("07*3=21;21+9=30", 0.0),  # leading zero
        ("7x3=21;21+9=30", 0.0),
        ("", 0.0),
        ("<eos>", 0.0),
        ("garbage", 0.0),
        ("A=30", 0.0),
    ],
)
def test_reward_hand_cases(completion, expected):
    assert C.reward("7,3,9>30:", completion, "30") == expected


def test_reward_checks_the_answer_and_the_prompt():
    assert C.reward("7,3,9>30:", "7*3=21;21+9=30", None) == 0.0
    assert C.reward("7,3,9>30:", "7*3=21;21+9=30", "31") == 0.0  # the gold answer must be the prompt's target
    assert C.reward("7,3,9>30", "7*3=21;21+9=30", "30") == 0.0  # not a countdown prompt
    assert C.reward("8,4,2,5>9:", "8/4=2;2*2=4;4+5=9", "9") == 1.0  # a repeated value used as often as given
    assert C.reward("6,6,2>3:", "6/6=1;2+1=3", "3") == 1.0
    assert C.parse_prompt("12,3,9>30:") == ([12, 3, 9], 30) and C.parse_prompt("12,3>") is None


@pytest.mark.parametrize("settings", [C.Settings(), C.Settings(num_numbers=4, number_range=(1, 12))])
def test_problems_deterministic_disjoint_and_solvable(settings):
    train = C.generate_problems(500, 0, "train", settings)
    assert train == C.generate_problems(500, 0, "train", settings)
    assert train != C.generate_problems(500, 1, "train", settings)
    assert len({p.prompt for p in train}) == 500
    train_prompts = {p.prompt for s in (0, 1) for p in C.generate_problems(500, s, "train", settings)}
    for seed in (0, 1):
        heldout = C.generate_problems(100, seed, "heldout", settings)
        assert not train_prompts & {p.prompt for p in heldout}
    lo, hi = settings.target_range
    for p in train:
        assert C.parse_prompt(p.prompt) == (list(p.numbers), int(p.answer))
        assert len(p.numbers) == settings.num_numbers and lo <= int(p.answer) <= hi
        assert C.reward(p.prompt, p.solution, p.answer) == 1.0  # reachable by construction
    assert max(len(p.prompt) for p in train) <= C.max_prompt_tokens(settings)
    with pytest.raises(ValueError):
        C.generate_problems(10, 0, "test", settings)


def test_random_paths_are_valid_and_warmup_mixes_them_in():
    settings = C.Settings()
    rng = random.Random(0)
    problems = C.generate_problems(400, 0, "train", settings)
    bound = C.max_completion_tokens(settings)
    for p in problems:
        path, value = C.random_path(list(p.numbers), rng, settings.max_value)
        assert C.check(list(p.numbers), value, path) and len(path) + 1 <= bound
    own = [C.warmup_completion(p, 0.7, rng, settings) == p.solution for p in problems]
    assert 0.2 < sum(own) / len(own) < 0.45  # 30% the problem's own path, plus random paths that match it


def test_registry_and_tokenizer():
    assert get_task("countdown") is C and C.REWARD == "agro.tasks.countdown:reward"
    tok = C.build_tokenizer()
    text = "7,3,9>30:7*3=21;21/9=30"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids and tok.decode(ids) == text
