"""agro.data: one-line validation errors, skip reports, sources, problem formats, parser properties."""

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agro.data import (
    INSTRUCTION,
    MAX_ABS_REWARD,
    OFFLINE_FIELDS,
    DataError,
    OfflineRecord,
    Problem,
    detect_format,
    format_prompt,
    load_offline_records,
    load_problems,
    parse_offline_record,
    prompt_key,
    write_offline_records,
)
from agro.errors import AgroError

DATA = Path(__file__).parent / "data"
GOOD = '{"prompt": "Q", "completion": "A", "reward": 1.0}'


def write(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


# ----------------------------------------------------------------------------- offline records: bad input

BAD_LINES = [
    ('{"prompt": "Q", "completion": "A"', "malformed JSON: Expecting ',' delimiter (column 34)"),
    ('{"prompt": "Q", "completion": "A"} x', "malformed JSON: Extra data (column 36)"),
    ("[1, 2]", "expected a JSON object, got array [1, 2]"),
    ('"just a string"', 'expected a JSON object, got string "just a string"'),
    (b'{"prompt": "Q", "completion": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at column 35)"),
    ('{"completion": "A"}', "field 'prompt': missing required field"),
    ('{"prompt": "Q"}', "field 'completion': missing required field"),
    ('{"prompt": 3, "completion": "A"}',
     "field 'prompt': must be a string or a non-empty list of chat messages, got number 3"),
    ('{"prompt": [], "completion": "A"}',
     "field 'prompt': must be a string or a non-empty list of chat messages, got array []"),
    ('{"prompt": " ", "completion": "A"}', "field 'prompt': must be a non-empty string, got string \" \""),
    ('{"prompt": ["hi"], "completion": "A"}', "field 'prompt': message 0 must be an object, got string \"hi\""),
    ('{"prompt": [{"role": "user", "content": "hi"}, {"role": "user"}], "completion": "A"}',
     "field 'prompt': message 1: 'content' must be a string, got null"),
    ('{"prompt": [{"role": 1, "content": "hi"}], "completion": "A"}',
     "field 'prompt': message 0: 'role' must be a string, got number 1"),
    ('{"prompt": "Q", "completion": ["A"]}', "field 'completion': must be a non-empty string, got array [\"A\"]"),
    ('{"prompt": "Q", "completion": null}', "field 'completion': must be a non-empty string, got null"),
    ('{"prompt": "Q", "completion": ""}', "field 'completion': must be a non-empty string, got string \"\""),
    ('{"prompt": "Q", "completion": " \\n\\t"}',
     "field 'completion': must be a non-empty string, got string \" \\n\\t\""),
    ('{"prompt": "Q", "completion": "A", "reward": "1.0"}', "field 'reward': must be a number, got string \"1.0\""),
    ('{"prompt": "Q", "completion": "A", "reward": true}', "field 'reward': must be a number, got boolean true"),
    ('{"prompt": "Q", "completion": "A", "reward": NaN}', "field 'reward': must be a finite number, got NaN"),
    ('{"prompt": "Q", "completion": "A", "reward": Infinity}',
     "field 'reward': must be a finite number, got Infinity"),
    ('{"prompt": "Q", "completion": "A", "reward": -Infinity}',
     "field 'reward': must be a finite number, got -Infinity"),
    ('{"prompt": "Q", "completion": "A", "reward": 1e300}', "field 'reward': |reward| must be <= 1e+06, got number 1e+300"),
    ('{"prompt": "Q", "completion": "A", "reward": -1000001}',
     "field 'reward': |reward| must be <= 1e+06, got number -1000001"),
    ('{"prompt": "Q", "completion": "A", "answer": false}',
     "field 'answer': must be a non-empty string or a finite number, got boolean false"),
    ('{"prompt": "Q", "completion": "A", "source": 7}', "field 'source': must be a non-empty string, got number 7"),
    ('{"prompt": "Q", "completion": "A", "behavior_logprobs": "-0.5"}',
     "field 'behavior_logprobs': must be a non-empty list of numbers, got string \"-0.5\""),
    ('{"prompt": "Q", "completion": "A", "behavior_logprobs": []}',
     "field 'behavior_logprobs': must be a non-empty list of numbers, got array []"),
    ('{"prompt": "Q", "completion": "A", "behavior_logprobs": [-0.1, 0.5]}',
     "field 'behavior_logprobs': element 1 must be a finite number <= 0, got number 0.5"),
    ('{"prompt": "Q", "completion": "A", "behavior_logprobs": [-0.1, NaN]}',
     "field 'behavior_logprobs': element 1 must be a finite number <= 0, got NaN"),
]


@pytest.mark.parametrize("line, expected", BAD_LINES)
def test_bad_line_gives_one_line_error_with_line_number_and_field(tmp_path, line, expected):
    path = write(tmp_path / "off.jsonl", [GOOD, "", line, '{"prompt": "Q", "completion": "B"}'])
    with pytest.raises(DataError) as info:
        load_offline_records(path)
    err = info.value
    assert str(err) == f"{path}:3: {expected}"
    assert len(str(err).splitlines()) == 1
    assert (err.file, err.line) == (str(path), 3)
    assert err.field == (expected.split("'")[1] if expected.startswith("field") else None)
    assert isinstance(err, AgroError)


def test_skip_mode_counts_bad_records_and_keeps_good_ones(tmp_path):
    lines = [GOOD] + [line for line, _ in BAD_LINES] + ["", '{"prompt": "Q", "completion": "B", "answer": 4}']
    records, report = load_offline_records(write(tmp_path / "off.jsonl", lines), on_bad_record="skip")
    assert [(r.completion, r.reward, r.answer, r.line) for r in records] == [("A", 1.0, None, 1), ("B", None, "4", len(lines))]
    assert report.loaded == 2 and report.duplicates == 0
    assert [err.line for err in report.skipped] == list(range(2, 2 + len(BAD_LINES)))
    counts = report.skipped_by_field()
    assert counts["record"] == 5 and counts["reward"] == 7 and counts["prompt"] == 7
    assert sum(counts.values()) == len(BAD_LINES)
    summary = report.summary()
    assert summary.splitlines()[0].startswith(f"{tmp_path / 'off.jsonl'}: 2 loaded, {len(BAD_LINES)} skipped (")
    assert summary.splitlines()[1] == f"  skipped {report.skipped[0]}"


def test_all_records_bad_is_an_error_even_in_skip_mode(tmp_path):
    path = write(tmp_path / "off.jsonl", ["[]", "{}"])
    with pytest.raises(DataError, match=r"no valid records \(2 skipped, first: .*:1: expected a JSON object"):
        load_offline_records(path, on_bad_record="skip")


@pytest.mark.parametrize("content", [b"", b"\n  \n\r\n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_offline_records(path)
    assert str(info.value) == f"{path}: no records"


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_offline_records(tmp_path / "nope.jsonl")
    assert str(info.value) == f"{tmp_path / 'nope.jsonl'}: file not found"
    assert info.value.line is None and info.value.field is None
    (tmp_path / "off.csv").write_text("prompt,completion\n")
    with pytest.raises(DataError, match=r"off\.csv: unsupported file type '\.csv'"):
        load_offline_records(tmp_path / "off.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read Parquet: ArrowInvalid"):
        load_offline_records(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="on_bad_record"):
        load_offline_records(write(tmp_path / "ok.jsonl", [GOOD]), on_bad_record="ignore")


def test_fields_defaults_extra_bom_and_crlf(tmp_path):
    chat = [{"role": "system", "content": ""}, {"role": "user", "content": "2+2?", "name": "u"}]
    lines = [
        b"\xef\xbb\xbf" + json.dumps({"prompt": chat, "completion": "4", "reward": 1, "answer": 4.5,
                                      "behavior_logprobs": [-0.25, 0, -3], "model": "m", "meta": {"t": 1}}).encode(),
        b'{"prompt": "Q", "completion": "A", "reward": null, "source": "teacher"}\r',
    ]
    records, _ = load_offline_records(write(tmp_path / "off.jsonl", lines))
    first, second = records
    assert first == OfflineRecord(prompt=chat, completion="4", reward=1.0, answer="4.5", source="offline",
                                  behavior_logprobs=[-0.25, 0.0, -3.0], extra={"model": "m", "meta": {"t": 1}})
    assert isinstance(first.reward, float) and all(isinstance(x, float) for x in first.behavior_logprobs)
    assert (first.file, first.line, second.line) == (str(tmp_path / "off.jsonl"), 1, 2)
    assert (second.reward, second.source, second.extra) == (None, "teacher", {})


def test_duplicates_keep_the_first_and_are_counted(tmp_path):
    lines = [
        '{"prompt": "Q", "completion": "A", "reward": 1}',
        '{"prompt": "Q", "completion": "A", "reward": 0}',
        '{"prompt": "Q", "completion": "A "}',
        '{"prompt": [{"role": "user", "content": "Q"}], "completion": "A"}',
        '{"prompt": [{"content": "Q", "role": "user"}], "completion": "A", "reward": 0.5}',
    ]
    records, report = load_offline_records(write(tmp_path / "off.jsonl", lines))
    assert [(r.line, r.reward) for r in records] == [(1, 1.0), (3, None), (4, None)]
    assert (report.loaded, report.duplicates) == (3, 2)
    assert "2 duplicates dropped" in report.summary()


def test_prompt_key_is_canonical_and_separates_strings_from_chats():
    assert prompt_key([{"role": "user", "content": "Q"}]) == prompt_key([{"content": "Q", "role": "user"}])
    assert prompt_key("Q") != prompt_key([{"role": "user", "content": "Q"}])
    assert prompt_key("Q") != prompt_key("Q ")
    text = prompt_key([{"content": "Q", "role": "user"}])
    assert prompt_key(text) != text


# ----------------------------------------------------------------------------- other sources


def test_parquet_rows(tmp_path):
    path = tmp_path / "off.parquet"
    table = pa.Table.from_pylist([
        {"prompt": "Q1", "completion": "A", "reward": 1.0, "behavior_logprobs": [-0.5, -1.0]},
        {"prompt": "Q2", "completion": "B", "reward": float("nan"), "behavior_logprobs": None},
        {"prompt": "Q3", "completion": "C", "reward": None, "behavior_logprobs": [-2.0]},
    ])
    pq.write_table(table, path)
    with pytest.raises(DataError) as info:
        load_offline_records(path)
    assert str(info.value) == f"{path}:row 1: field 'reward': must be a finite number, got NaN"
    assert (info.value.line, info.value.unit) == (1, "row")
    records, report = load_offline_records(path, on_bad_record="skip")
    assert [(r.prompt, r.reward, r.behavior_logprobs, r.line) for r in records] == [
        ("Q1", 1.0, [-0.5, -1.0], 0), ("Q3", None, [-2.0], 2)]
    assert len(report.skipped) == 1


def test_parquet_chat_prompts_round_trip(tmp_path):
    chat = [{"role": "user", "content": "Q"}]
    pq.write_table(pa.Table.from_pylist([{"prompt": chat, "completion": "A"}]), tmp_path / "chat.parquet")
    (record,), _ = load_offline_records(tmp_path / "chat.parquet")
    assert record.prompt == chat


def test_json_array_and_json_lines_files(tmp_path):
    array = tmp_path / "arr.json"
    array.write_text(json.dumps([{"prompt": "Q", "completion": "A"}, {"prompt": "Q", "completion": 5}], indent=1))
    with pytest.raises(DataError) as info:
        load_offline_records(array)
    assert str(info.value) == f"{array}:row 1: field 'completion': must be a non-empty string, got number 5"
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"prompt": "Q",\n "completion": }\n]')
    with pytest.raises(DataError) as info:
        load_offline_records(broken)
    assert str(info.value) == f"{broken}:3: malformed JSON: Expecting value (column 16)"
    lines = write(tmp_path / "lines.json", [GOOD, "{"])
    with pytest.raises(DataError, match=r"lines\.json:2: malformed JSON"):
        load_offline_records(lines)


def test_datasets_saved_to_disk(tmp_path):
    import datasets

    rows = [{"prompt": "Q", "completion": "A", "reward": 0.5}, {"prompt": "Q", "completion": "B", "reward": 2e6}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError) as info:
        load_offline_records(tmp_path / "ds")
    assert str(info.value) == f"{tmp_path / 'ds'}:row 1: field 'reward': |reward| must be <= 1e+06, got number 2000000.0"
    records, report = load_offline_records(tmp_path / "ds", on_bad_record="skip")
    assert [(r.completion, r.reward) for r in records] == [("A", 0.5)] and len(report.skipped) == 1

    problems = [{"question": "How many legs do 2 cats have?", "answer": "Each has 4.\n#### 8"}]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(problems)}).save_to_disk(str(tmp_path / "dd"))
    loaded, _ = load_problems(tmp_path / "dd", split="test")
    assert loaded == [Problem(prompt=format_prompt("How many legs do 2 cats have?"), answer="8", category=None,
                              id="dd-test:0")]
    with pytest.raises(DataError, match=r"dd: cannot load dataset \(split 'train'\): KeyError"):
        load_problems(tmp_path / "dd", split="train")


def test_load_dataset_on_a_local_data_dir(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    (tmp_path / "gsm").mkdir()
    (tmp_path / "gsm" / "test.jsonl").write_bytes((DATA / "gsm8k_style.jsonl").read_bytes())
    problems, _ = load_problems(tmp_path / "gsm", split="test")
    assert [p.answer for p in problems] == ["26", "1250", "45", "36"] and problems[1].id == "gsm-test:1"
    assert any((tmp_path / "cache").iterdir())
    with pytest.raises(DataError, match=r"not_here: cannot load dataset \(split 'train'\): FileNotFoundError"):
        load_problems(tmp_path / "not_here")


# ----------------------------------------------------------------------------- problem sets


def test_generic_fixture():
    problems, report = load_problems(DATA / "math_problems.jsonl")
    assert len(problems) == report.loaded == 22 and not report.skipped
    assert problems[0] == Problem(prompt=f"What is 17 + 26?\n{INSTRUCTION}\n", answer="43", category="arithmetic",
                                  id="math_problems:1")
    assert problems[5].answer == "7/8" and problems[5].category == "fractions"
    assert {p.category for p in problems} == {"arithmetic", "fractions", "algebra", "percent", "number_theory",
                                              "geometry"}
    assert len({p.id for p in problems}) == 22


def test_math_fixture_takes_the_last_boxed_answer():
    problems, _ = load_problems(DATA / "math_style.jsonl", template="raw")
    assert [p.answer for p in problems] == ["\\frac{7}{8}", "6", "x^{2}+1", "5", "2"]
    assert [p.category for p in problems] == ["Prealgebra", "Algebra", "Algebra", "Geometry", "Level 2"]
    assert problems[1].prompt == "Solve $2x - 3 = 9$ for $x$."


def test_gsm8k_fixture_takes_the_number_after_hashes():
    problems, _ = load_problems(DATA / "gsm8k_style.jsonl", template="chat")
    assert [p.answer for p in problems] == ["26", "1250", "45", "36"]
    assert problems[0].prompt == [{"role": "user", "content": problems[0].prompt[0]["content"]}]
    assert problems[0].prompt[0]["content"].startswith("Maya buys 3 packs")
    assert problems[0].prompt[0]["content"].endswith(f"\n{INSTRUCTION}")


def test_detect_format():
    assert detect_format({"problem": 1, "solution": 2, "type": 3}) == "math"
    assert detect_format(["problem", "answer"]) == "math"
    assert detect_format({"question": 1, "answer": 2}) == "gsm8k"
    assert detect_format({"prompt": 1}) == "generic"
    assert detect_format({"text": 1}) is None


def test_format_prompt_templates():
    assert format_prompt("What is 1+1?", "plain") == f"What is 1+1?\n{INSTRUCTION}\n"
    assert format_prompt("What is 1+1?", "chat") == [{"role": "user", "content": f"What is 1+1?\n{INSTRUCTION}"}]
    assert format_prompt("What is 1+1?", "raw") == "What is 1+1?"
    assert "\\boxed{}" in INSTRUCTION
    with pytest.raises(ValueError, match="unknown template"):
        format_prompt("x", "fancy")


def test_problem_answer_column_chat_prompts_and_numbers(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    path = write(tmp_path / "p.jsonl", [
        json.dumps({"problem": "Half of 1?", "solution": "No box here.", "answer": "\\frac{1}{2}", "subject": "Algebra"}),
    ])
    (problem,), _ = load_problems(path)
    assert (problem.answer, problem.category) == ("\\frac{1}{2}", "Algebra")
    path = write(tmp_path / "g.jsonl", [json.dumps({"prompt": chat, "answer": 2}), json.dumps({"prompt": "x", "answer": 0.5})])
    problems, _ = load_problems(path, template="chat")
    assert [(p.prompt, p.answer) for p in problems] == [(chat, "2"), (format_prompt("x", "chat"), "0.5")]


PROBLEM_ERRORS = [
    ("g.jsonl", {"prompt": "Q"}, {}, "g.jsonl:1: field 'answer': missing required field"),
    ("g.jsonl", {"prompt": 5, "answer": "1"}, {},
     "g.jsonl:1: field 'prompt': must be a string or a non-empty list of chat messages, got number 5"),
    ("m.jsonl", {"problem": "Q", "solution": "It is 4."}, {}, "m.jsonl:1: field 'solution': no \\boxed{} answer found"),
    ("m.jsonl", {"problem": "Q", "level": "Level 1"}, {}, "m.jsonl:1: field 'solution': missing required field"),
    ("m.jsonl", {"problem": ["Q"], "solution": "\\boxed{1}"}, {},
     "m.jsonl:1: field 'problem': must be a non-empty string, got array [\"Q\"]"),
    ("s.jsonl", {"question": "Q", "answer": "There are 5."}, {}, "s.jsonl:1: field 'answer': no '#### <answer>' found"),
    ("s.jsonl", {"question": "Q", "answer": None}, {}, "s.jsonl:1: field 'answer': missing required field"),
    ("s.jsonl", {"prompt": "Q", "answer": "1"}, {"format": "gsm8k"}, "s.jsonl:1: field 'question': missing required field"),
    ("x.jsonl", {"text": "Q", "label": "1"}, {},
     "x.jsonl:1: cannot detect the problem format from keys [\"label\", \"text\"]; "
     "expected 'problem' (MATH), 'question' (GSM8K) or 'prompt' (generic)"),
]


@pytest.mark.parametrize("name, row, kwargs, expected", PROBLEM_ERRORS)
def test_problem_errors(tmp_path, name, row, kwargs, expected):
    path = write(tmp_path / name, [json.dumps(row)])
    with pytest.raises(DataError) as info:
        load_problems(path, **kwargs)
    assert str(info.value) == f"{tmp_path}/{expected}"


def test_problems_without_answers_and_skip_mode(tmp_path):
    rows = [{"prompt": "A"}, {"prompt": "B", "answer": "2"}, {"problem": "C"}, "junk", {"prompt": "D", "answer": ""}]
    path = write(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])
    problems, report = load_problems(path, template="raw", require_answer=False, on_bad_record="skip")
    assert [(p.prompt, p.answer, p.id) for p in problems] == [("A", None, "p:1"), ("B", "2", "p:2")]
    assert [(e.line, e.field) for e in report.skipped] == [(3, "prompt"), (4, None), (5, "answer")]
    problems, report = load_problems(path, template="raw", on_bad_record="skip")
    assert [p.prompt for p in problems] == ["B"]
    assert [(e.line, e.field) for e in report.skipped] == [(1, "answer"), (3, "prompt"), (4, None), (5, "answer")]
    gsm = write(tmp_path / "s.jsonl", [json.dumps({"question": "Q", "answer": "no hashes"})])
    (problem,), _ = load_problems(gsm, require_answer=False)
    assert problem.answer is None
    with pytest.raises(ValueError, match="format"):
        load_problems(path, format="csv")


# ----------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -(10**400)]) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_values = {
    "prompt": json_values | st.just([{"role": "user", "content": "Q"}]),
    "completion": json_values,
    "reward": json_values | st.floats(-2e6, 2e6),
    "answer": json_values,
    "source": json_values,
    "behavior_logprobs": json_values | st.lists(st.floats(max_value=1.0), max_size=3),
    "completion_ids": json_values | st.lists(st.integers(-2, 10**6), max_size=3),
}
VALID = {"prompt": "Q", "completion": "A", "reward": 0.5, "answer": "1", "source": "s", "behavior_logprobs": [-1.0],
         "completion_ids": [5]}


def check_record(record: OfflineRecord) -> None:
    assert isinstance(record.completion, str) and record.completion.strip()
    assert record.reward is None or (math.isfinite(record.reward) and abs(record.reward) <= MAX_ABS_REWARD)
    assert record.answer is None or isinstance(record.answer, str)
    assert record.behavior_logprobs is None or all(math.isfinite(x) and x <= 0 for x in record.behavior_logprobs)
    assert isinstance(record.source, str) and record.source.strip()
    assert record.completion_ids is None or (record.completion_ids and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in record.completion_ids))


@given(name=st.sampled_from(OFFLINE_FIELDS), data=st.data())
def test_parser_one_arbitrary_field_errors_on_that_field(name, data):
    value = data.draw(field_values[name])
    obj = {**VALID, name: value}
    try:
        record = parse_offline_record(obj, "f.jsonl", 7)
    except DataError as err:
        assert err.field == name and err.line == 7
        assert str(err).startswith(f"f.jsonl:7: field '{name}': ") and len(str(err).splitlines()) == 1
    else:
        check_record(record)
        if value is not None and name != "source":
            assert getattr(record, name) is not None


@given(obj=json_values | st.dictionaries(st.sampled_from(OFFLINE_FIELDS) | st.text(max_size=3), json_values))
def test_parser_arbitrary_objects_give_a_record_or_a_data_error(obj):
    try:
        record = parse_offline_record(obj, "f.jsonl", 1)
    except DataError as err:
        assert err.field in (None, *OFFLINE_FIELDS)
        assert (err.field is None) == (not isinstance(obj, dict))
        assert len(str(err).splitlines()) == 1
    else:
        check_record(record)
        assert record.extra == {k: v for k, v in obj.items() if k not in OFFLINE_FIELDS}


texts = st.text(min_size=1, max_size=12).filter(str.strip)
finite_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                           "content": st.text(max_size=12)}), min_size=1, max_size=3)
records = st.builds(
    OfflineRecord,
    prompt=st.sampled_from(["Q1", "Q2"]) | texts | messages,
    completion=st.sampled_from(["A", "B"]) | texts,
    reward=st.none() | st.floats(-MAX_ABS_REWARD, MAX_ABS_REWARD),
    answer=st.none() | texts,
    source=texts,
    behavior_logprobs=st.none() | st.lists(st.floats(max_value=0.0, allow_infinity=False), min_size=1, max_size=4),
    extra=st.dictionaries(st.text(max_size=6).filter(lambda k: k not in OFFLINE_FIELDS), finite_json, max_size=3),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(written=st.lists(records, min_size=1, max_size=6))
def test_valid_records_round_trip_through_jsonl(tmp_path, written):
    path = tmp_path / "rt.jsonl"
    write_offline_records(path, written)
    read, report = load_offline_records(path)
    first = {}
    for record in written:
        first.setdefault((prompt_key(record.prompt), record.completion), record)
    assert read == list(first.values())
    assert report.duplicates == len(written) - len(first) and not report.skipped
    assert [r.line for r in read] == [written.index(r) + 1 for r in read]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=20) | st.sampled_from([GOOD.encode(), b"{}", b"", b"\xff"]), max_size=8))
def test_reader_never_raises_anything_but_data_error(tmp_path, lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        records, report = load_offline_records(path, on_bad_record="skip")
    except DataError as err:
        assert err.reason.startswith(("no records", "no valid records"))
    else:
        assert records and all(1 <= e.line <= len(path.read_bytes().split(b"\n")) for e in report.skipped)
