"""`agro eval` and `agro generate` end to end on the math fixtures with a tiny locally-built model."""

import json
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from agro.cli import main
from agro.data import Problem, load_offline_records, load_problems
from agro.evaluate import evaluate
from agro.logprobs import completion_logprobs
from agro.rewards.workers import RewardScorer
from agro.sample_records import generate_records
from agro.tokens import collate, encode_prompt

DATA = Path(__file__).parent / "data"
GENERIC, MATH, GSM8K = DATA / "math_problems.jsonl", DATA / "math_style.jsonl", DATA / "gsm8k_style.jsonl"
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
MAX_LEN = 12


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, EOS doubling as padding, and a chat template."""
    chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(["<eos>", *chars])}))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def math_scorer():
    with RewardScorer("math", timeout=30) as scorer:
        yield scorer


def run(args, capsys):
    rc = main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


class GoldGenerator:
    """Stands in for the model: returns the given completion texts, prompt-major, k per prompt."""

    def __init__(self, tokenizer, texts: list[list[str]]):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, []

    def generate(self, model, prompts, num_generations=1, do_sample=True):
        self.calls.append((len(prompts), num_generations, do_sample))
        assert len(prompts) == len(self.texts) and all(len(t) == num_generations for t in self.texts)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for per in self.texts for t in per]
        return [x + [self.tokenizer.eos_token_id] for x in ids]


def other_form(answer: str, right: bool) -> str:
    """`answer` written differently (a/b as \\frac), or a wrong answer, in a worked-solution sentence."""
    num, _, den = answer.partition("/")
    if den:
        value = f"\\frac{{{num}}}{{{den}}}" if right else f"\\frac{{{den}}}{{{num}}}"
    else:
        value = answer if right else str(int(answer) + 1)
    return f"Working it out step by step, the result is \\boxed{{{value}}}."


# ----------------------------------------------------------------------------- scoring is exact


def test_greedy_accuracy_and_categories_are_exact(math_scorer):
    tokenizer = char_tokenizer()
    problems, _ = load_problems(GENERIC)
    texts = [[other_form(p.answer, right=i % 3 == 0)] for i, p in enumerate(problems)]
    generator = GoldGenerator(tokenizer, texts)
    result = evaluate(None, tokenizer, problems, math_scorer, MAX_LEN, generator=generator)
    assert generator.calls == [(22, 1, False)]  # greedy
    assert result["accuracy"] == result["pass@1"] == result["mean@1"] == 8 / 22
    assert result["by_category"] == {"algebra": 1 / 5, "arithmetic": 2 / 5, "fractions": 2 / 5,
                                     "geometry": 1.0, "number_theory": 0.0, "percent": 2 / 4}
    assert [s["rewards"] for s in result["samples"]] == [[float(i % 3 == 0)] for i in range(22)]
    assert result["reward_failures"] == 0


def test_pass_at_k_and_mean_at_k_are_exact(math_scorer):
    tokenizer = char_tokenizer()
    problems, _ = load_problems(GENERIC)
    texts = [[other_form(p.answer, right=j < i % 5) for j in range(4)] for i, p in enumerate(problems)]
    generator = GoldGenerator(tokenizer, texts)
    result = evaluate(None, tokenizer, problems, math_scorer, MAX_LEN, num_samples=4, generator=generator)
    assert generator.calls == [(22, 4, True)]  # sampling
    assert result["pass@4"] == 17 / 22  # problems 0, 5, 10, 15, 20 get no correct sample
    assert result["mean@4"] == result["accuracy"] == 41 / 88
    assert result["by_category"]["geometry"] == 1.0 and result["by_category"]["number_theory"] == 0.5
    assert all(len(s["completions"]) == len(s["rewards"]) == 4 for s in result["samples"])


def test_gold_is_the_last_box_and_equivalent_forms_count(math_scorer):
    tokenizer = char_tokenizer()
    problems, _ = load_problems(MATH, template="chat")
    answers = ["7/8", "6", "1 + x^2", "7", "2"]  # 7 is the first, wrong box of the distance solution
    generator = GoldGenerator(tokenizer, [[f"So \\boxed{{{a}}}"] for a in answers])
    result = evaluate(None, tokenizer, problems, math_scorer, MAX_LEN, generator=generator)
    assert [p.answer for p in problems] == ["\\frac{7}{8}", "6", "x^{2}+1", "5", "2"]
    assert result["accuracy"] == 4 / 5 and result["by_category"]["Geometry"] == 0.0
    problems, _ = load_problems(GSM8K)
    generator = GoldGenerator(tokenizer, [["\\boxed{26}"], ["\\boxed{1,250}"], ["\\boxed{45}"], ["\\boxed{12}"]])
    result = evaluate(None, tokenizer, problems, math_scorer, MAX_LEN, generator=generator)
    assert result["accuracy"] == 3 / 4 and result["by_category"] == {"uncategorized": 3 / 4}


def test_eval_cli_writes_the_exact_accuracy(model_dir, tmp_path, capsys, monkeypatch):
    problems, _ = load_problems(GENERIC)
    texts = [[other_form(p.answer, right=i % 2 == 1)] for i, p in enumerate(problems)]
    monkeypatch.setattr("agro.generators.make_generator", lambda backend, tok, *a, **kw: GoldGenerator(tok, texts))
    out = tmp_path / "eval.json"
    rc, stdout, err = run(["eval", "--model", model_dir, "--data", GENERIC, "--reward", "exact", "--out", out], capsys)
    assert rc == 0, err
    result = json.loads(out.read_text())
    assert result["accuracy"] == 11 / 22 and result["by_category"]["geometry"] == 1.0
    assert "all" in stdout and "0.500" in stdout


# ----------------------------------------------------------------------------- the real model path


@pytest.mark.parametrize(
    "data, template, reward, categories",
    [
        (GENERIC, "chat", "exact", {"arithmetic", "fractions", "algebra", "percent", "number_theory", "geometry"}),
        (MATH, "plain", "math", {"Prealgebra", "Algebra", "Geometry", "Level 2"}),
        (GSM8K, "chat", "exact", {"uncategorized"}),
    ],
    ids=["generic", "math", "gsm8k"],
)
def test_eval_greedy_end_to_end(model_dir, tmp_path, capsys, data, template, reward, categories):
    out = tmp_path / "eval.json"
    rc, stdout, err = run(["eval", "--model", model_dir, "--data", data, "--prompt-template", template,
                           "--reward", reward, "--max-completion-length", MAX_LEN, "--out", out], capsys)
    assert rc == 0, err
    result = json.loads(out.read_text())
    num = len(data.read_text().splitlines())
    assert result["num_problems"] == num and len(result["samples"]) == num
    assert result["greedy"] and result["num_samples"] == 1
    assert result["accuracy"] == result["pass@1"] == result["mean@1"]
    assert 0.0 <= result["accuracy"] <= 1.0
    assert set(result["by_category"]) == categories
    assert all(len(s["completions"]) == 1 and len(s["rewards"]) == 1 for s in result["samples"])
    assert result["args"]["prompt_template"] == template and result["data"] == str(data)
    assert f"wrote {out}" in stdout


@pytest.mark.slow
def test_eval_and_generate_default_to_what_the_model_was_trained_with(model_dir, tmp_path, capsys):
    """`agro.json` in the model directory (agro train writes it into final/ and checkpoints) gives the defaults
    of the flags left unset; a flag given wins; without it, the generic defaults. Progress bars on stderr."""
    trained = tmp_path / "trained"
    trained.mkdir()
    for f in model_dir.iterdir():
        (trained / f.name).write_bytes(f.read_bytes())
    (trained / "agro.json").write_text(json.dumps({"prompt_template": "chat", "reward_function": "exact",
                                                   "max_completion_length": 5, "reward_timeout": 7.0}))
    out = tmp_path / "eval.json"
    rc, _, err = run(["eval", "--model", trained, "--data", GENERIC, "--max-problems", 3, "--out", out], capsys)
    assert rc == 0, err
    args = json.loads(out.read_text())["args"]
    assert (args["prompt_template"], args["reward"], args["max_completion_length"], args["reward_timeout"]) == (
        "chat", "exact", 5, 7.0)
    assert "; as the model was trained (" in err and "prompt_template=chat" in err
    assert "generate: 100%" in err and "score: 100%" in err
    assert all(len(char_tokenizer()(c, add_special_tokens=False)["input_ids"]) <= 5
               for s in json.loads(out.read_text())["samples"] for c in s["completions"])
    rc, _, err = run(["eval", "--model", trained, "--data", GENERIC, "--max-problems", 3, "--out", out,
                      "--prompt-template", "plain", "--max-completion-length", 6], capsys)
    args = json.loads(out.read_text())["args"]
    assert rc == 0 and (args["prompt_template"], args["reward"], args["max_completion_length"]) == ("plain", "exact", 6)
    rc, _, err = run(["eval", "--model", model_dir, "--data", GENERIC, "--max-problems", 3, "--out", out], capsys)
    args = json.loads(out.read_text())["args"]
    # an untrained model with a chat template: what training uses (the chat template, no instruction, the
    # config's default length)
    assert rc == 0 and (args["prompt_template"], args["reward"], args["max_completion_length"]) == ("chat", "math", 256)
    assert "as the model was trained" not in err
    off = tmp_path / "off.jsonl"
    rc, stdout, err = run(["generate", "--model", trained, "--data", GENERIC, "--out", off, "--max-problems", 2,
                           "--num-generations", 2], capsys)
    assert rc == 0, err
    records, _ = load_offline_records(off)
    assert records and all(r.reward in (0.0, 1.0) and isinstance(r.prompt, list) for r in records)  # scored, chat
    assert "generate: 100%" in err
    rc, _, err = run(["generate", "--model", trained, "--data", GENERIC, "--out", tmp_path / "raw.jsonl",
                      "--max-problems", 2, "--no-reward"], capsys)
    assert rc == 0 and all(r.reward is None for r in load_offline_records(tmp_path / "raw.jsonl")[0])


def test_eval_sampling_end_to_end_is_seeded(model_dir, tmp_path, capsys):
    def sample(seed):
        out = tmp_path / f"eval-{seed}.json"
        args = ["eval", "--model", model_dir, "--data", GENERIC, "--reward", "exact", "--num-samples", 4,
                "--max-problems", 6, "--max-completion-length", MAX_LEN, "--seed", seed, "--out", out]
        rc, stdout, err = run(args, capsys)
        assert rc == 0, err
        assert "mean@4" in stdout
        return json.loads(out.read_text())

    first, again, other = sample(0), sample(0), sample(1)
    assert first["num_problems"] == 6 and first["num_samples"] == 4 and not first["greedy"]
    assert {"pass@4", "mean@4", "accuracy", "by_category"} <= set(first)
    assert first["pass@4"] >= first["mean@4"] == first["accuracy"]
    assert all(len(s["completions"]) == 4 for s in first["samples"])
    completions = [[s["completions"] for s in r["samples"]] for r in (first, again, other)]
    assert completions[0] == completions[1] != completions[2]


def test_generate_writes_records_that_load_back(model_dir, tmp_path, capsys):
    out = tmp_path / "off.jsonl"
    rc, stdout, err = run(["generate", "--model", model_dir, "--data", GENERIC, "--out", out, "--prompt-template",
                           "chat", "--num-generations", 2, "--max-problems", 4, "--max-completion-length",
                           MAX_LEN, "--reward", "exact"], capsys)
    assert rc == 0, err
    records, report = load_offline_records(out)
    assert f"wrote {len(records) + report.duplicates} records" in stdout and records
    tokenizer = char_tokenizer()
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    problems, _ = load_problems(GENERIC, template="chat")
    prompts = {json.dumps(p.prompt): p for p in problems[:4]}
    for r in records:
        assert json.dumps(r.prompt) in prompts and r.answer == prompts[json.dumps(r.prompt)].answer
        assert r.source == str(model_dir) and r.reward in (0.0, 1.0)
        ids = tokenizer(r.completion, add_special_tokens=False)["input_ids"]
        if len(ids) < MAX_LEN:  # stopped at EOS, which has a log-prob too
            ids.append(tokenizer.eos_token_id)
        assert len(r.behavior_logprobs) == len(ids) and all(x <= 0 for x in r.behavior_logprobs)
        batch = collate([encode_prompt(tokenizer, r.prompt)], [ids], tokenizer.pad_token_id)
        with torch.no_grad():
            expected = completion_logprobs(model, batch.input_ids, batch.attention_mask, len(ids))[0]
        assert r.behavior_logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_generate_refuses_to_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "off.jsonl"
    out.write_text("precious\n")
    rc, _, err = run(["generate", "--model", model_dir, "--data", GENERIC, "--out", out], capsys)
    assert rc == 2 and "already exists" in err and err.count("\n") == 1
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize(
    "command, extra, message",
    [
        ("eval", ["--data", "DATA/missing.jsonl"], "missing.jsonl: file not found"),
        ("generate", ["--data", "DATA/missing.jsonl"], "missing.jsonl: file not found"),
        ("eval", ["--data", "DATA/bad.jsonl"], "bad.jsonl:2: field 'answer': missing required field"),
        ("eval", ["--data", GENERIC, "--num-samples", 0], "--num-samples must be at least 1, got 0"),
        ("eval", ["--data", GENERIC, "--max-problems", -1], "--max-problems must be ≥ 0"),
        ("generate", ["--data", GENERIC, "--temperature", 0], "--temperature must be > 0"),
        ("eval", ["--data", GENERIC, "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        ("eval", ["--data", GENERIC, "--device", "nonsense"], "--device 'nonsense':"),
        ("eval", ["--data", GENERIC, "--reward", "nope"], "reward 'nope': unknown reward function"),
    ],
)
def test_bad_input_is_one_line_exit_2(model_dir, tmp_path, capsys, command, extra, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    extra = [str(a).replace("DATA", str(tmp_path)) for a in extra]
    out = tmp_path / "out.json"
    rc, _, err = run([command, "--model", model_dir, *extra, "--out", out], capsys)
    assert rc == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_records_keep_the_sampled_tokens_and_their_behaviour_logprobs(assets):
    """A sample with special tokens inside decodes without them; the record keeps the sampled tokens
    (`completion_ids`, what the trainer reads back) and the behaviour log-probs of exactly those tokens."""
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(assets / "model").eval()
    digits = tokenizer("12+3=15;A=15", add_special_tokens=False)["input_ids"]
    sampled = [digits[:3] + [tokenizer.bos_token_id, tokenizer.pad_token_id] + digits[3:] + [tokenizer.eos_token_id],
               digits + [tokenizer.eos_token_id]]

    class FixedSamples:  # stands in for HFGenerator: returns these samples for the one prompt
        max_new_tokens = 20

        def generate(self, model, prompts, num_generations):
            return sampled

    problem = Problem(prompt="12+3=", answer="15", category=None, id="0")
    records = generate_records(model, tokenizer, [problem], 2, FixedSamples(), source="test")
    assert [r.completion for r in records] == ["12+3=15;A=15"] * 2
    assert [r.completion_ids for r in records] == sampled
    for r, ids in zip(records, sampled):
        batch = collate([encode_prompt(tokenizer, "12+3=")], [ids], tokenizer.pad_token_id)
        with torch.no_grad():
            expected = completion_logprobs(model, batch.input_ids, batch.attention_mask, len(ids))[0].tolist()
        assert r.behavior_logprobs == pytest.approx(expected, abs=1e-5)


def test_generate_scores_a_batched_reward_one_problem_a_call(assets):
    """A batched reward gets one call (and one time limit) per problem, not one for every record."""
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(assets / "model").eval()
    sampled = tokenizer("1+1=2", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    class FixedSamples:
        max_new_tokens = 20

        def generate(self, model, prompts, num_generations):
            return [sampled] * (len(prompts) * num_generations)

    def group_size(prompts, completions, answer, **kwargs):
        assert len(set(answer)) == 1  # the samples of one problem
        return [float(len(completions))] * len(completions)

    problems = [Problem(prompt=f"{a}+1=", answer=str(a + 1), category=None, id=str(a)) for a in range(3)]
    with RewardScorer(group_size, in_process=True) as scorer:
        records = generate_records(model, tokenizer, problems, 2, FixedSamples(), source="test", scorer=scorer)
    assert [r.reward for r in records] == [2.0] * 6
