"""The built-in multiplication task: its verifier, decoy facts, worked solutions, problems and token bounds
(its π_ref build: test_task_builds.py)."""

import random

import pytest

from agro.tasks import get_task
from agro.tasks import multiplication as M


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("7*8=56;3*4=12;56+12=68;A=68", 1.0),
        ("7*8=56;3*4=12;56+12=68;A=68<eos>", 1.0),  # up to a special token
        ("A=68", 1.0),  # the answer is what is graded, as in arithmetic
        ("7*8=63;3*4=12;63+12=75;A=75", 0.0),  # a decoy fact
        ("7*8=56;3*4=12;56+12=68;A=680", 0.0),
        ("7*8=56;3*4=12;56+12=68", 0.0),  # no answer
        ("", 0.0),
        ("garbage", 0.0),
    ],
)
def test_reward_hand_cases(completion, expected):
    assert M.reward("7*8+3*4=", completion, "68") == expected
    assert M.reward("7*8+3*4=", completion, None) == 0.0


def test_decoys_are_fixed_neighbouring_entries():
    for a in range(1, 13):
        for b in range(1, 13):
            d = M.decoy(a, b)
            assert d != a * b and d == M.decoy(a, b)
            assert d in {a * (b + 1), a * (b - 1), (a + 1) * b, (a - 1) * b} and d > 0
    assert M.decoy(7, 8) == 63 and M.decoy(3, 4) == 16  # the table row or column next to the fact
    assert len({M.decoy(a, b) - a * b for a in range(2, 10) for b in range(2, 10)}) > 4  # not one shift for all


def test_solutions_write_decoys_where_asked_and_add_what_they_wrote():
    p = M.Problem("7*8+3*4=", "68", ((7, 8), (3, 4)))
    assert M.solve(p) == "7*8=56;3*4=12;56+12=68;A=68"
    assert M.solve(p, [True, False]) == "7*8=63;3*4=12;63+12=75;A=75"
    assert M.solve(p, [False, True]) == "7*8=56;3*4=16;56+16=72;A=72"
    three = M.Problem("2*3+4*5+6*7=", "68", ((2, 3), (4, 5), (6, 7)))
    assert M.solve(three) == "2*3=6;4*5=20;6*7=42;6+20=26;26+42=68;A=68"
    rng = random.Random(0)
    problems = M.generate_problems(1000, 0, "train")
    flags = [[w != c for w, c in zip(M.warmup_solution(q, 0.6, rng).split(";"), M.solve(q).split(";"))][:2]
             for q in problems]
    assert 0.55 < sum(f[0] for f in flags) / len(flags) < 0.65  # each product step: its decoy w.p. error_rate
    assert 0.55 < sum(f[1] for f in flags) / len(flags) < 0.65


def test_fact_error_rates_spread_over_the_range_and_drive_the_warm_up():
    facts = [(a, b) for a in range(2, 10) for b in range(2, 10)]
    rates = {f: M.fact_error_rate(*f, 0.65, 0.25) for f in facts}
    assert all(0.4 <= r <= 0.9 for r in rates.values()) and rates == {f: M.fact_error_rate(*f, 0.65, 0.25) for f in facts}
    assert min(rates.values()) < 0.45 and max(rates.values()) > 0.85  # the whole range is used
    assert abs(sum(rates.values()) / len(rates) - 0.65) < 0.05
    assert {M.fact_error_rate(*f, 0.6) for f in facts} == {0.6}  # spread 0: one rate for all
    assert M.fact_error_rate(2, 3, 0.9, 0.5) <= 1.0 and M.fact_error_rate(2, 3, 0.1, 0.5) >= 0.0
    easy, hard = min(rates, key=rates.get), max(rates, key=rates.get)
    rng = random.Random(0)
    for fact in (easy, hard):  # a product step writes the decoy at its own fact's rate
        p = M.Problem("", "", (fact, (2, 2)))
        wrong = sum(M.warmup_solution(p, 0.65, rng, 0.25).split(";")[0] != M.solve(p).split(";")[0]
                    for _ in range(4000)) / 4000
        assert abs(wrong - rates[fact]) < 0.03


def test_a_build_from_before_the_spread_loads_with_none(tmp_path):
    import dataclasses
    import json

    task = dataclasses.asdict(M.Settings(error_rate=0.6))
    del task["error_rate_spread"]
    (tmp_path / "task.json").write_text(json.dumps({"task": task}))
    assert M.load_task(tmp_path)[0] == M.Settings(error_rate=0.6, error_rate_spread=0.0)
    task["error_rate_spread"] = 0.25
    (tmp_path / "task.json").write_text(json.dumps({"task": task}))
    assert M.load_task(tmp_path)[0] == M.Settings(error_rate=0.6, error_rate_spread=0.25)


@pytest.mark.parametrize("settings", [M.Settings(), M.Settings(num_products=3, factor_range=(2, 12))])
def test_problems_deterministic_disjoint_and_bounded(settings):
    train = M.generate_problems(500, 0, "train", settings)
    assert train == M.generate_problems(500, 0, "train", settings) != M.generate_problems(500, 1, "train", settings)
    assert len({p.prompt for p in train}) == 500
    train_prompts = {p.prompt for s in (0, 1) for p in M.generate_problems(500, s, "train", settings)}
    for seed in (0, 1):
        assert not train_prompts & {p.prompt for p in M.generate_problems(settings.num_heldout, seed, "heldout",
                                                                          settings)}
    lo, hi = settings.factor_range
    longest = max(len(M.solve(p, [True] * settings.num_products)) for p in train)
    for p in train:
        assert len(p.facts) == settings.num_products and all(lo <= x <= hi for f in p.facts for x in f)
        assert int(p.answer) == sum(a * b for a, b in p.facts) and M.reward(p.prompt, M.solve(p), p.answer) == 1.0
        assert len(p.prompt) <= M.max_prompt_tokens(settings)
    worst = M.Problem("", "", ((hi, hi),) * settings.num_products)  # the longest decoy solution
    assert max(longest, len(M.solve(worst, [True] * settings.num_products))) + 1 <= M.max_completion_tokens(settings)
    with pytest.raises(ValueError):
        M.generate_problems(10, 0, "test", settings)


def test_registry_and_tokenizer():
    assert get_task("multiplication") is M and M.REWARD == "agro.tasks.multiplication:reward"
    tok = M.build_tokenizer()
    text = "7*8+3*4=7*8=56;3*4=12;56+12=68;A=68"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids and tok.decode(ids) == text
