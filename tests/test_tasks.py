"""The built-in arithmetic task: problems, solutions, reward, tokenizer, and the cached π_ref build."""

import dataclasses
import random
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from agro.tasks import arithmetic as A

MIXED = A.ArithmeticTask(ops="+-", operand_range=(10, 99))  # 2-digit operands, carries and borrows
TINY = A.ArithmeticTask(
    hidden_size=16, num_layers=1, num_heads=2, train_steps=4, batch_size=8, warmup_steps=2, num_heldout=16
)
STEP = re.compile(r"^(\d+)([+-])(\d+)=(\d+)$")


def steps_of(solution: str) -> tuple[list[tuple[int, str, int, int]], str]:
    """([(x, op, y, written result)], final answer) of a worked solution."""
    *steps, final = solution.split(";")
    assert final.startswith("A=")
    parsed = []
    for s in steps:
        x, op, y, r = STEP.match(s).groups()
        parsed.append((int(x), op, int(y), int(r)))
    return parsed, final[2:]


def true_result(x: int, op: str, y: int) -> int:
    return x + y if op == "+" else x - y


@pytest.mark.parametrize("task", [A.ArithmeticTask(), MIXED])
def test_problems_deterministic_disjoint_and_answered(task):
    train = A.generate_problems(500, 0, "train", task)
    assert train == A.generate_problems(500, 0, "train", task)
    assert train != A.generate_problems(500, 1, "train", task)
    assert len({p.prompt for p in train}) == 500
    train_prompts = {p.prompt for s in (0, 1) for p in A.generate_problems(500, s, "train", task)}
    for seed in (0, 1):
        heldout = A.generate_problems(100, seed, "heldout", task)
        assert not train_prompts & {p.prompt for p in heldout}
    for p in train:
        assert p.prompt.endswith("=") and len(p.operands) == task.num_operands
        assert eval(p.prompt[:-1]) == int(p.answer)
    with pytest.raises(ValueError):
        A.generate_problems(10, 0, "test", task)


@pytest.mark.parametrize("task", [A.ArithmeticTask(), MIXED])
def test_correct_solutions_compute_the_answer(task):
    for p in A.generate_problems(300, 0, "train", task):
        steps, final = steps_of(A.solve(p))
        assert [y for _, _, y, _ in steps] == list(p.operands[1:]) and "".join(s[1] for s in steps) == p.ops
        for i, (x, op, y, r) in enumerate(steps):
            assert x == (steps[i - 1][3] if i else p.operands[0]) and r == true_result(x, op, y)
        assert final == p.answer
        assert A.reward(p.prompt, A.solve(p), p.answer) == 1.0


@pytest.mark.parametrize("task", [A.ArithmeticTask(), MIXED])
def test_imperfect_solutions_drop_carries_exactly_when_flagged(task):
    rng = random.Random(0)
    needed = dropped = 0
    for p in A.generate_problems(1000, 0, "train", task):
        text, flagged = A.imperfect_solution(p, 0.6, rng)
        steps, final = steps_of(text)
        drops = []
        for i, (x, op, y, r) in enumerate(steps):
            assert x == (steps[i - 1][3] if i else p.operands[0])  # continues from the written value
            carry = A.needs_carry(x, op, y)
            needed += carry
            if r != true_result(x, op, y):
                assert carry and r == true_result(x, op, y) + (-10 if op == "+" else 10)
                drops.append(True)
        dropped += len(drops)
        assert flagged == bool(drops)
        assert final == str(steps[-1][3])
        assert flagged == (text != A.solve(p))
    assert 0.55 < dropped / needed < 0.65


def test_needs_carry():
    assert A.needs_carry(47, "+", 8) and not A.needs_carry(41, "+", 8)
    assert A.needs_carry(85, "-", 19) and not A.needs_carry(89, "-", 15)
    p = A.Problem("47+8+6=", "61", (47, 8, 6), "++")
    assert A.solve(p) == "47+8=55;55+6=61;A=61"
    assert A.solve(p, [True, True]) == "47+8=45;45+6=41;A=41"
    assert A.solve(p, [False, True]) == "47+8=55;55+6=51;A=51"


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("47+8=55;55+6=61;A=61", 1.0),
        ("A=61", 1.0),
        ("47+8=55;55+6=61;A=61<eos>", 1.0),
        ("47+8=55;55+6=61;A=61 ", 1.0),
        ("47+8=45;45+6=51;A=51", 0.0),
        ("47+8=55;55+6=61;A=610", 0.0),
        ("47+8=55;55+6=61;A=061", 0.0),
        ("47+8=55;55+6=61;A=61;", 0.0),
        ("47+8=55;55+6=61", 0.0),
        ("47+8=55;55+6=61;A=", 0.0),
        ("", 0.0),
        ("A=-61", 0.0),
    ],
)
def test_reward(completion, expected):
    assert A.reward("47+8+6=", completion, "61") == expected


def test_reward_without_answer_and_parse():
    assert A.reward("47+8+6=", "A=61", None) == 0.0
    assert A.parse_answer("1+2=3;A=3") == "3" and A.parse_answer("1+2=3") is None


def test_tokenizer_round_trip_and_save_load(tmp_path):
    tok = A.build_tokenizer()
    prompt, completion = "47+8+6=", "47+8=55;55+6=61;A=61"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    assert len(p_ids) == len(prompt) and len(c_ids) == len(completion)
    assert p_ids + c_ids == tok(prompt + completion)["input_ids"]  # no special tokens added by default
    assert tok.decode(p_ids + c_ids) == prompt + completion
    assert tok.unk_token_id not in p_ids + c_ids
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert tok.decode(c_ids + [tok.eos_token_id], skip_special_tokens=True) == completion
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(prompt + completion)["input_ids"] == p_ids + c_ids
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert loaded.padding_side == "left" and len(loaded) == len(tok)


def test_build_is_deterministic_and_loadable(tmp_path, one_thread):
    a = A.build_reference_policy(tmp_path / "a", seed=3, task=TINY)
    b = A.build_reference_policy(tmp_path / "b", seed=3, task=TINY)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    task, meta = A.load_task(a)
    assert task == TINY and meta["seed"] == 3 and 0.0 <= meta["heldout_greedy_accuracy"] <= 1.0
    model = AutoModelForCausalLM.from_pretrained(a).eval()
    tok = AutoTokenizer.from_pretrained(a)
    assert sum(p.numel() for p in model.parameters()) == meta["num_parameters"]
    heldout = A.generate_problems(TINY.num_heldout, 3, "heldout", TINY)
    assert A.evaluate_greedy(model, tok, heldout) == meta["heldout_greedy_accuracy"]
    mean, passed = A.sample_accuracy(model, tok, heldout[:4], num_samples=3)
    assert 0.0 <= mean <= passed <= 1.0
    budget = A.max_completion_tokens(TINY)
    completions = A.generate_completions(model, tok, [p.prompt for p in heldout[:4]], budget)
    assert len(completions) == 4 and all(len(c) <= budget for c in completions)


@pytest.mark.parametrize("task", [A.ArithmeticTask(), MIXED, A.ArithmeticTask(num_operands=4)])
def test_max_completion_tokens_bounds_every_solution(task):
    rng = random.Random(0)
    bound = A.max_completion_tokens(task)
    lengths = [
        len(A.imperfect_solution(p, 0.5, rng)[0]) + 1 for p in A.generate_problems(2000, 0, "train", task)
    ]
    assert max(lengths) <= bound <= max(lengths) + 3


def test_cache_reuses_and_rebuilds(tmp_path, monkeypatch, one_thread):
    builds = []
    real_build = A.build_reference_policy
    monkeypatch.setattr(A, "build_reference_policy", lambda *a, **k: builds.append(a) or real_build(*a, **k))

    def path_of(seed, task):
        model, tok, path = A.load_or_build_reference_policy(tmp_path, seed=seed, task=task)
        assert isinstance(model, LlamaForCausalLM) and not model.training and tok.eos_token == "<eos>"
        return path

    first = path_of(0, TINY)
    assert path_of(0, TINY) == first and len(builds) == 1
    other = path_of(0, dataclasses.replace(TINY, error_rate=0.5))
    assert other != first and len(builds) == 2
    assert path_of(1, TINY) not in (first, other) and len(builds) == 3
    (first / "task.json").unlink()  # an incomplete build is rebuilt
    assert path_of(0, TINY) == first and len(builds) == 4
    assert (first / "model.safetensors").exists() and A.load_task(first)[0] == TINY
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_registry_names_every_task_and_its_interface():
    from agro.errors import AgroError
    from agro.tasks import TASK_NAMES, get_task

    assert "arithmetic" in TASK_NAMES
    for name in TASK_NAMES:
        task = get_task(name)
        assert task.NAME == name and task.REWARD == f"agro.tasks.{name}:reward"
        settings = task.Settings()
        assert hash(settings) is not None and settings.train_steps > 0 and 0 <= settings.error_rate <= 1
        problems = task.generate_problems(20, 0, "heldout", settings)
        assert max(len(p.prompt) for p in problems) <= task.max_prompt_tokens(settings)
        for name_ in ("load_or_build_reference_policy", "evaluate_greedy", "sample_accuracy", "reward"):
            assert callable(getattr(task, name_))
    assert get_task("arithmetic") is A and A.Settings is A.ArithmeticTask
    with pytest.raises(AgroError, match="unknown task .nope.; choose one of: arithmetic, countdown, multiplication"):
        get_task("nope")


def test_max_prompt_tokens_bounds_every_prompt():
    for task in (A.ArithmeticTask(), MIXED):
        bound = A.max_prompt_tokens(task)
        assert max(len(p.prompt) for p in A.generate_problems(2000, 0, "train", task)) == bound
