"""`agro eval` evaluates what training trains: a model's chat template with no added instruction when its
tokenizer has one, the training config's length, one line of settings, and the gold answer in `answer`."""

import json
import shutil

import pytest
from test_eval_cli import GENERIC, GoldGenerator, model_dir, run  # noqa: F401 (model_dir: a fixture)

from agro.config import FIELDS
from agro.data import INSTRUCTION, load_problems
from agro.gym import decode_answer

LENGTH = FIELDS["max_completion_length"].default  # AGROConfig's
QUESTIONS = [p.prompt for p in load_problems(GENERIC, template="raw")[0][:3]]


@pytest.fixture(scope="module")
def chat_model(model_dir):  # noqa: F811 (the imported fixture, asked for by name)
    """A tiny random model whose tokenizer (one token a character) has a chat template: test_eval_cli's."""
    return model_dir


class Recorder(GoldGenerator):
    """GoldGenerator that also keeps the length it was made with and the prompts it was given, decoded."""

    def __init__(self, tokenizer, texts, max_new_tokens):
        super().__init__(tokenizer, texts)
        self.max_new_tokens, self.prompts = max_new_tokens, []

    def generate(self, model, prompts, num_generations=1, do_sample=True):
        self.prompts += [self.tokenizer.decode(p) for p in prompts]
        return super().generate(model, prompts, num_generations, do_sample)


@pytest.fixture
def recorded(monkeypatch):
    """Runs of `agro eval` with the model replaced by a generator that answers every problem right."""
    made = []

    def make(backend, tokenizer, max_new_tokens, *args, **kwargs):
        problems, _ = load_problems(GENERIC)
        made.append(Recorder(tokenizer, [[p.answer] for p in problems[:3]], max_new_tokens))
        return made[-1]

    monkeypatch.setattr("agro.generators.make_generator", make)
    return made


@pytest.fixture
def base_model(chat_model, tmp_path):
    """The tiny model with a tokenizer that has no chat template (a base model)."""
    path = tmp_path / "base"
    shutil.copytree(chat_model, path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def evaluate_cli(model, tmp_path, capsys, *flags):
    out = tmp_path / "eval.json"
    rc, _, err = run(["eval", "--model", model, "--data", GENERIC, "--reward", "exact", "--max-problems", 3,
                      "--out", out, *flags], capsys)
    assert rc == 0, err
    return json.loads(out.read_text()), [line for line in err.splitlines() if line.startswith("agro: eval with")]


def test_a_chat_model_is_evaluated_with_its_chat_template_no_instruction_and_the_training_length(
        chat_model, tmp_path, capsys, recorded):
    result, settings = evaluate_cli(chat_model, tmp_path, capsys)
    assert recorded[0].prompts == [f"<user>{q}\n<assistant>" for q in QUESTIONS]
    assert recorded[0].max_new_tokens == LENGTH and result["args"]["max_completion_length"] == LENGTH
    assert (result["args"]["prompt_template"], result["args"]["instruction"]) == ("chat", "")
    assert settings == [f"agro: eval with prompt_template=chat, instruction=none, max_completion_length={LENGTH}, "
                        "reward=exact, truncated_completions=zero, k=1 (greedy)"]
    assert result["accuracy"] == 1.0


def test_explicit_flags_behave_as_before(chat_model, tmp_path, capsys, recorded):
    """--prompt-template chat keeps the \\boxed{} instruction; plain is plain; the length flag wins."""
    question = QUESTIONS[0]
    _, settings = evaluate_cli(chat_model, tmp_path, capsys, "--prompt-template", "chat")
    assert recorded[-1].prompts[0] == f"<user>{question}\n{INSTRUCTION}\n<assistant>"
    assert settings[0].startswith("agro: eval with prompt_template=chat, instruction=\\boxed{} (default), ")
    _, settings = evaluate_cli(chat_model, tmp_path, capsys, "--prompt-template", "plain",
                                    "--max-completion-length", 7, "--instruction", "Answer:")
    assert recorded[-1].prompts[0] == f"{question}\nAnswer:\n" and recorded[-1].max_new_tokens == 7
    assert settings == ["agro: eval with prompt_template=plain, instruction='Answer:', max_completion_length=7, "
                        "reward=exact, truncated_completions=zero, k=1 (greedy)"]


def test_a_base_model_without_a_chat_template_is_evaluated_plain(base_model, tmp_path, capsys, recorded):
    result, settings = evaluate_cli(base_model, tmp_path, capsys)
    question = QUESTIONS[0]
    assert recorded[0].prompts[0] == f"{question}\n{INSTRUCTION}\n"
    assert recorded[0].max_new_tokens == LENGTH
    assert settings[0].startswith("agro: eval with prompt_template=plain, instruction=\\boxed{} (default), ")


def test_agro_json_still_decides_for_a_model_agro_trained(chat_model, tmp_path, capsys, recorded):
    trained = tmp_path / "trained"
    shutil.copytree(chat_model, trained)
    (trained / "agro.json").write_text(json.dumps({"prompt_template": "plain", "instruction": None,
                                                   "reward_function": "exact", "max_completion_length": 5}))
    out = tmp_path / "eval.json"
    rc, _, err = run(["eval", "--model", trained, "--data", GENERIC, "--max-problems", 3, "--out", out], capsys)
    assert rc == 0, err
    assert recorded[0].max_new_tokens == 5 and recorded[0].prompts[0].endswith(f"\n{INSTRUCTION}\n")
    settings = [line for line in err.splitlines() if line.startswith("agro: eval with")]
    assert settings == ["agro: eval with prompt_template=plain, instruction=\\boxed{} (default), "
                        "max_completion_length=5, reward=exact, truncated_completions=keep, k=1 (greedy); as the "
                        f"model was trained ({trained / 'agro.json'}): prompt_template, reward, "
                        "max_completion_length, truncated_completions"]


def test_the_answer_field_is_the_gold_answer_and_the_task_entry_has_its_own(chat_model, tmp_path, capsys,
                                                                           monkeypatch):
    data = "reasoning_gym:chain_sum"
    kwargs = '{"size": 4, "seed": 3}'
    problems, _ = load_problems(data, split="test", kwargs=json.loads(kwargs), template="chat", instruction="")
    entries = [decode_answer(p.answer) for p in problems]
    texts = [[f"The answer is {e['answer']}."] if i % 2 == 0 else ["no idea"] for i, e in enumerate(entries)]
    monkeypatch.setattr("agro.generators.make_generator", lambda backend, tok, *a, **kw: GoldGenerator(tok, texts))
    out = tmp_path / "eval.json"
    rc, _, err = run(["eval", "--model", chat_model, "--data", data, "--data-kwargs", kwargs, "--out", out], capsys)
    assert rc == 0, err
    samples = json.loads(out.read_text())["samples"]
    assert [s["answer"] for s in samples] == [e["answer"] for e in entries]
    assert [s["entry"] for s in samples] == json.loads(json.dumps(entries))
    assert all(s["entry"]["question"] and s["entry"]["task"] == "chain_sum" for s in samples)
    assert [s["rewards"] for s in samples] == [[1.0], [0.0], [1.0], [0.0]]
    assert "reward=reasoning_gym" in err


def test_other_data_has_no_entry(chat_model, tmp_path, capsys, recorded):
    result, _ = evaluate_cli(chat_model, tmp_path, capsys)
    problems, _ = load_problems(GENERIC)
    assert [(s["answer"], s["entry"]) for s in result["samples"]] == [(p.answer, None) for p in problems[:3]]
