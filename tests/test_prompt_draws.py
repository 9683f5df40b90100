"""The prompt draw: no prompt twice in a step (also where a step wraps into the next epoch), each prompt once
an epoch, the seeded permutations' order wherever no repeat would occur, data sets smaller than a step, the
draw's checkpoint state; and offline behaviour log-probs of the wrong length refused for every objective."""

import json
import warnings

import pytest
import torch
from test_trainer import checkpointed_after, final_weights, overrides, read_metrics, run_cli, write_offline

import agro.data as data
from agro.config import load_config
from agro.errors import AgroError
from agro.models import load_tokenizer
from agro.objective_table import OBJECTIVES
from agro.prompts import PromptPool
from agro.trainer import Trainer


@pytest.fixture(scope="module")
def tokenizer(assets):
    return load_tokenizer(str(assets / "model"), False)


def pool_of(assets, tokenizer, prompts: int, prompts_per_step: int, seed: int = 0) -> PromptPool:
    """A pool of `prompts` prompts given in memory (train_data, which the config needs, is not read)."""
    config = load_config(None, [f"model_name_or_path={assets / 'model'}", f"train_data={assets / 'train.jsonl'}",
                                f"prompts_per_step={prompts_per_step}", f"seed={seed}", "max_prompt_length=32",
                                "report_to=none"])
    problems = [data.Problem(f"{i}+{i}=", None, None, str(i)) for i in range(prompts)]
    return PromptPool(config, tokenizer, (problems, data.DataReport("memory")))


def draw(pool: PromptPool, steps: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """`steps` steps' prompts, as indices into the pool's prompts."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [[pool.problems.index(k) for k in pool.next_keys(rank, world)] for _ in range(steps)]


def permutation(prompts: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def old_draw(prompts: int, prompts_per_step: int, seed: int, steps: int) -> list[list[int]]:
    """The draw before repeats were removed: the permutations read in order, repeats and all."""
    epoch, position, out = 0, 0, []
    for _ in range(steps):
        keys = []
        while len(keys) < prompts_per_step:
            order = permutation(prompts, seed, epoch)
            take = min(prompts_per_step - len(keys), prompts - position)
            keys += order[position : position + take]
            position += take
            if position >= prompts:
                epoch, position = epoch + 1, 0
        out.append(keys)
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("prompts", [1, 2, 3, 4, 5, 7, 12])
def test_no_prompt_twice_a_step_each_once_an_epoch_in_the_seeded_order_where_no_repeat(assets, tokenizer, prompts,
                                                                                         seed):
    for per_step in range(1, 9):
        steps = draw(pool_of(assets, tokenizer, prompts, per_step, seed), 12)
        size = min(per_step, prompts)
        assert all(len(s) == size and len(set(s)) == size for s in steps), (per_step, steps)
        flat = sum(steps, [])
        epochs = [flat[i : i + prompts] for i in range(0, len(flat) - prompts + 1, prompts)]
        for epoch, chunk in enumerate(epochs):
            # the step that reaches into this epoch: its prompts of the previous epoch come first; then this
            # epoch's first prompts not among them, and after those the rest in the permutation's order
            start = epoch * prompts
            before = set(flat[start - start % size : start])
            need = size - len(before) if before else 0
            seeded = permutation(prompts, seed, epoch)
            front = [i for i in seeded if i not in before][:need]
            assert chunk == front + [i for i in seeded if i not in front], (per_step, epoch, steps)
            if not before & set(seeded[:need]):
                assert chunk == seeded  # no repeat at the wrap: the seeded order, as before


@pytest.mark.parametrize("seed", [0, 3])
def test_draws_without_a_repeat_are_those_of_before(assets, tokenizer, seed):
    for prompts, per_step in ((12, 4), (12, 3), (12, 5), (12, 8), (7, 7), (5, 2)):
        old = old_draw(prompts, per_step, seed, 20)
        new = draw(pool_of(assets, tokenizer, prompts, per_step, seed), 20)
        clean = next((i for i, s in enumerate(old) if len(set(s)) < len(s)), len(old))
        assert new[:clean] == old[:clean]
        if per_step in (3, 4):  # divides 12: no step wraps, never a repeat
            assert clean == len(old)
    # seed 0 with 3 prompts: the permutations [2, 0, 1], [1, 2, 0], [0, 2, 1]; the old draw repeated prompt 1
    assert old_draw(3, 2, 0, 4) == [[2, 0], [1, 1], [2, 0], [0, 2]]
    assert draw(pool_of(assets, tokenizer, 3, 2, 0), 4) == [[2, 0], [1, 2], [1, 0], [0, 2]]


@pytest.mark.parametrize("prompts", [1, 2, 3])
@pytest.mark.parametrize("per_step", [4, 8])
def test_fewer_prompts_than_a_step_trains_each_once_a_step_with_one_warning(assets, tokenizer, prompts, per_step):
    pool = pool_of(assets, tokenizer, prompts, per_step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [[pool.problems.index(k) for k in pool.next_keys(0, 1)] for _ in range(5)]
    assert all(sorted(s) == list(range(prompts)) for s in steps)
    assert steps == [permutation(prompts, 0, e) for e in range(5)]  # one whole epoch a step
    assert [str(w.message) for w in caught] == [
        f"agro: the data has {prompts} usable prompts, fewer than prompts_per_step {per_step}: a step takes each "
        "of them once"]


def test_fewer_prompts_than_a_step_split_over_processes(assets, tokenizer):
    """3 prompts, 2 processes: 2 prompts a step, one on each, none twice; only the first process warns."""
    ranks = [pool_of(assets, tokenizer, 3, 4) for _ in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = [[ranks[r].problems.index(k) for r in (0, 1) for k in ranks[r].next_keys(r, 2)] for _ in range(6)]
    assert all(len(set(s)) == 2 for s in steps)
    assert all(sorted(sum(steps[i : i + 3], [])[j : j + 3]) == [0, 1, 2] for i in (0, 3) for j in (0, 3))
    assert len(caught) == 1 and "a step takes 2 of them, none twice (split evenly over 2 processes)" in str(
        caught[0].message)
    with pytest.raises(AgroError, match="the data has 1 usable prompts, fewer than the 2 processes"):
        pool_of(assets, tokenizer, 1, 4).next_keys(0, 2)


def test_state_resumes_the_draw_exactly_and_old_checkpoints_load(assets, tokenizer):
    pool = pool_of(assets, tokenizer, 3, 2)
    draw(pool, 1)
    assert pool.state() == {"epoch": 0, "position": 2, "ahead": []}  # no rearranged epoch: the old keys only
    draw(pool, 1)  # wraps with a repeat avoided: epoch 1 is rearranged
    state = json.loads(json.dumps(pool.state()))
    assert state == {"epoch": 1, "position": 1, "ahead": [], "order": [2, 1, 0]}
    resumed = pool_of(assets, tokenizer, 3, 2)
    resumed.load_state(state)
    assert draw(resumed, 6) == draw(pool, 6)
    old = pool_of(assets, tokenizer, 3, 2)
    old.load_state({"epoch": 1, "position": 1})  # a checkpoint from before `ahead` and `order`
    assert old.ahead == [] and old.order is None and draw(old, 1) == [[2, 0]]
    with pytest.raises(AgroError, match="trainer_state.json: key 'order': an epoch of 3 prompts, but the data has 4"):
        pool_of(assets, tokenizer, 4, 2).load_state(state)


@pytest.mark.parametrize("prompts, per_step, steps", [(2, 8, 2), (3, 2, 3), (1, 4, 1)])
def test_trainer_counts_each_generation_once(assets, tmp_path, one_thread, prompts, per_step, steps):
    """count/on_policy is prompts × num_generations: at a wrap (3 prompts, 2 a step) and with fewer prompts
    than a step."""
    lines = (assets / "train.jsonl").read_text().splitlines()[:prompts]
    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    out = tmp_path / "run"
    config = load_config(None, overrides(assets, out, train_data=tmp_path / "train.jsonl", prompts_per_step=per_step,
                                         max_steps=steps, save_steps=0, max_completion_length=8,
                                         seed=0))  # seed 0: step 2 of 3 prompts wraps onto a repeat
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(config).train()
    assert [r["count/on_policy"] for r in read_metrics(out)] == [min(prompts, per_step) * 3.0] * steps
    assert sum("fewer than prompts_per_step" in str(w.message) for w in caught) == (prompts < per_step)


def test_resume_in_a_rearranged_epoch_is_bit_exact(assets, tmp_path, one_thread):
    """3 prompts, 2 a step, seed 0: step 2 wraps onto a repeat and rearranges epoch 1; a checkpoint there
    resumes to the same draws and weights as the run that went straight on."""
    lines = (assets / "train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "train.jsonl").write_text("".join(line + "\n" for line in lines))
    extra = {"train_data": tmp_path / "train.jsonl", "max_steps": 4, "seed": 0, "max_completion_length": 8}
    straight = tmp_path / "straight"
    Trainer(load_config(None, overrides(assets, straight, **extra))).train()
    broken = tmp_path / "broken"
    first, _ = checkpointed_after(assets, broken, 2, **extra)
    assert first.prompts.order == [2, 1, 0]
    first.scorer.close()
    (broken / "config.yaml").write_text("")  # the interrupted run had started
    resumed = Trainer(load_config(None, overrides(assets, broken, **extra)), resume=True)
    assert resumed.prompts.state() == first.prompts.state()
    resumed.train()
    a, b = final_weights(straight), final_weights(broken)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [r["loss"] for r in read_metrics(broken)] == [r["loss"] for r in read_metrics(straight)][2:]


# ----------------------------------------------------------------------------- behaviour log-probs


COMPLETION = "11+12=23;23+13=36;A=36"


def offline_pool(assets, tokenizer, tmp_path, rows, objective="agro", on_bad_record="error") -> PromptPool:
    path = tmp_path / "off.jsonl"
    write_offline(path, rows)
    config = load_config(None, [f"model_name_or_path={assets / 'model'}", f"offline_data={path}", "num_generations=0",
                                "offline_per_group=2", f"objective={objective}", f"on_bad_record={on_bad_record}",
                                "max_prompt_length=32", "max_completion_length=32", "report_to=none"])
    return PromptPool(config, tokenizer)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_wrong_length_behaviour_logprobs_are_refused_for_every_objective(assets, tokenizer, tmp_path, objective):
    tokens = len(tokenizer(COMPLETION, add_special_tokens=False)["input_ids"])
    good = {"prompt": "11+12+13=", "completion": COMPLETION, "reward": 1.0, "behavior_logprobs": [-1.0] * tokens}
    bad = {**good, "completion": COMPLETION + ";", "behavior_logprobs": [-1.0] * 5}
    with pytest.raises(data.DataError, match=rf"/off.jsonl:2: field 'behavior_logprobs': has 5 values for "
                                             rf"{tokens + 1} completion tokens$"):
        offline_pool(assets, tokenizer, tmp_path, [good, bad], objective)
    pool = offline_pool(assets, tokenizer, tmp_path, [good, bad], objective, on_bad_record="skip")
    ((kept,),) = pool.offline_by_group.values()
    assert kept.completion == COMPLETION and pool.skipped_records == 1
    # read only by the objectives that need them
    assert (kept.behavior_logprobs is not None) == OBJECTIVES[objective].needs_behavior


def test_behaviour_logprobs_of_another_tokenizers_ids_count_those_ids(assets, tokenizer, tmp_path):
    """Ids that do not decode to the completion: under agro, which does not read the log-probs, they are
    still checked against the ids they count."""
    other = tokenizer("A=37", add_special_tokens=False)["input_ids"]
    row = {"prompt": "11+12+13=", "completion": COMPLETION, "reward": 1.0, "completion_ids": other}
    ((kept,),) = offline_pool(assets, tokenizer, tmp_path, [{**row, "behavior_logprobs": [-1.0] * len(other)}]
                              ).offline_by_group.values()
    assert kept.completion == COMPLETION and kept.behavior_logprobs is None
    with pytest.raises(data.DataError, match=f"field 'behavior_logprobs': has 9 values for {len(other)} completion"):
        offline_pool(assets, tokenizer, tmp_path, [{**row, "behavior_logprobs": [-1.0] * 9}])


def test_cli_refuses_wrong_length_behaviour_logprobs_under_agro_in_one_line(assets, tmp_path, capsys):
    off = tmp_path / "off.jsonl"
    write_offline(off, [{"prompt": "11+12+13=", "completion": COMPLETION, "behavior_logprobs": [-1.0, -2.0]}])
    out = tmp_path / "run"
    args = ["train", *sum((["--set", s] for s in overrides(
        assets, out, num_generations=0, offline_data=off, offline_per_group=2, train_data="null", max_steps=1,
        max_prompt_length=30)), [])]
    rc, err = run_cli(args, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "off.jsonl:1: field 'behavior_logprobs': has 2 values for" in err, err
    assert not out.exists()
