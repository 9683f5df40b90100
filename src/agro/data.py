"""Problem sets and offline records: loading, validation and prompt templates.

Sources: a local .jsonl, .json (JSON lines, or one array of objects) or .parquet file, a directory
written by `datasets.save_to_disk`, or anything `datasets.load_dataset` takes (hub name, data dir).
Every bad record is a `DataError` naming the file, the line (1-based, JSON lines) or row (0-based:
Parquet, JSON arrays, datasets) and the field. on_bad_record="error" raises the first one;
on_bad_record="skip" drops bad records and lists them in the returned `DataReport`.

Problem sets, format detected from the first record's keys when format="auto":
    math     problem, solution (gold = last \\boxed{...}) or answer; category from type/subject/level
    gsm8k    question, answer ending in "#### N" (gold = N without commas)
    generic  prompt (string or chat messages), answer (string or number), category

Offline records (other fields are kept in `extra`):
    prompt             string, or chat messages [{"role": str, "content": str}, ...]    required
    completion         non-blank string                                                  required
    reward             finite number with |reward| <= MAX_ABS_REWARD (1e6): larger values are
                       taken to be sentinels or unit bugs, which would swamp advantage estimates
    answer             string or number (kept as a string)
    source             non-empty string, default "offline"
    behavior_logprobs  non-empty list of finite numbers <= 0, one per completion token (the count
                       is checked against the tokenizer later)
    completion_ids     non-empty list of token ids (integers >= 0): the tokens that were sampled, which
                       `agro generate` writes. Training uses them instead of re-encoding the text when this
                       tokenizer decodes them to `completion` (a sampled sequence is often not the canonical
                       encoding of its text, and re-encoded can be longer than the length limit that cut
                       it); behavior_logprobs then count these tokens (`agro.prompts`)
A record with the same prompt and completion as an earlier one is a duplicate: the first is kept,
the rest are dropped and counted in `DataReport.duplicates`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import agro.gym as gym
from agro.config import CHOICES
from agro.errors import AgroError
from agro.rewards.answers import extract_answer

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
TEMPLATES = CHOICES["prompt_template"]
PROBLEM_FORMATS = CHOICES["train_data_format"]
ON_BAD_RECORD = CHOICES["on_bad_record"]
MAX_ABS_REWARD = 1e6
OFFLINE_FIELDS = ("prompt", "completion", "reward", "answer", "source", "behavior_logprobs", "completion_ids")

Prompt = str | list[dict[str, Any]]


class DataError(AgroError):
    """One bad input, shown on one line as `file:line: field 'name': reason` (`file:row N: ...` for rows)."""

    def __init__(self, file: str, line: int | None, field: str | None, reason: str, unit: str = "line"):
        self.file, self.line, self.field, self.reason, self.unit = file, line, field, reason, unit
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" if self.unit == "line" else f":row {self.line}"
        what = f"field '{self.field}': {self.reason}" if self.field else self.reason
        return f"{where}: {what}"


@dataclass
class Problem:
    prompt: Prompt
    answer: str | None
    category: str | None
    id: str
    columns: dict[str, Any] = field(default_factory=dict)  # in-memory rows' other columns (load_problem_rows)


@dataclass
class OfflineRecord:
    prompt: Prompt
    completion: str
    reward: float | None = None
    answer: str | None = None
    source: str = "offline"
    behavior_logprobs: list[float] | None = None
    completion_ids: list[int] | None = None  # the sampled tokens, when the writer kept them
    extra: dict[str, Any] = field(default_factory=dict)
    file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object `load_offline_records` reads (None fields left out)."""
        row = {name: getattr(self, name) for name in OFFLINE_FIELDS}
        return {**self.extra, **{k: v for k, v in row.items() if v is not None}}


@dataclass
class DataReport:
    source: str
    loaded: int = 0
    skipped: list[DataError] = field(default_factory=list)
    duplicates: int = 0
    unused: int = 0  # offline records whose prompt is not among the training prompts: they never join a group
    unused_prompts: int = 0  # the distinct prompts of those records

    def skipped_by_field(self) -> Counter[str]:
        """Skipped records per bad field ("record" for bad lines: malformed JSON, not an object...)."""
        return Counter(err.field or "record" for err in self.skipped)

    def summary(self, examples: int = 3) -> str:
        """Counts on one line, then the first `examples` skipped errors."""
        counts = ", ".join(f"{k}: {n}" for k, n in self.skipped_by_field().most_common())
        lines = [f"{self.source}: {self.loaded} loaded, {len(self.skipped)} skipped"
                 + (f" ({counts})" if counts else "") + f", {self.duplicates} duplicates dropped"
                 + (f", {self.unused} never used ({self.unused_prompts} prompts not in train_data)"
                    if self.unused else "")]
        lines += [f"  skipped {err}" for err in self.skipped[:examples]]
        return "\n".join(lines)


def prompt_key(prompt: Prompt) -> str:
    """Canonical string for grouping by prompt (JSON with sorted keys; distinct for str and chat)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def format_prompt(problem_text: str, template: str = "plain", instruction: str | None = None,
                  system_prompt: str | None = None) -> Prompt:
    """plain: the text, then the instruction line (None: INSTRUCTION; "": none); chat: the same as one user
    message, after a system message when `system_prompt` is set; raw: the text as is."""
    line = INSTRUCTION if instruction is None else instruction
    body = f"{problem_text}\n{line}" if line else problem_text
    if template == "plain":
        return f"{body}\n"
    if template == "chat":
        system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        return [*system, {"role": "user", "content": body}]
    if template == "raw":
        return problem_text
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


# ----------------------------------------------------------------------------- reading sources


class _Opened(NamedTuple):
    name: str  # shown in errors
    unit: str  # "line" or "row"
    id_prefix: str
    rows: Iterable[tuple[int, Any]]  # (line or row, JSON value or the DataError that replaced it)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _jsonl_rows(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip()
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                yield lineno, DataError(name, lineno, None, reason)
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, DataError(name, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})")
            except (ValueError, RecursionError) as e:
                yield lineno, DataError(name, lineno, None, f"malformed JSON: {_one_line(e)}")


def _open_json(path: Path, name: str) -> _Opened:
    """A .json file is one array of objects if it starts with '[', else JSON lines."""
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if not head.startswith(b"["):
        return _Opened(name, "line", path.stem, _jsonl_rows(path, name))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(name, line, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(name, e.lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from e
    except (ValueError, RecursionError) as e:
        raise DataError(name, None, None, f"malformed JSON: {_one_line(e)}") from e
    return _Opened(name, "row", path.stem, enumerate(data))


def _parquet_rows(path: Path, name: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
    except Exception as e:
        raise DataError(name, None, None, f"cannot read Parquet: {_one_line(e)}") from e
    row = 0
    for batch in batches:
        for value in batch.to_pylist():
            yield row, value
            row += 1


def _open_dataset(source: str, split: str, subset: str | None) -> _Opened:
    import datasets

    try:
        if Path(source, "state.json").is_file() or Path(source, "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(source, subset, split=split)
    except Exception as e:
        raise DataError(source, None, None, f"cannot load dataset (split {split!r}): {_one_line(e)}") from e
    return _Opened(source, "row", f"{Path(source).name}-{split}", enumerate(ds))


def _open(source: str | Path, split: str, subset: str | None) -> _Opened:
    path, name = Path(source), str(source)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        if not path.is_file():
            raise DataError(name, None, None, "file not found")
        if suffix == ".jsonl":
            return _Opened(name, "line", path.stem, _jsonl_rows(path, name))
        if suffix == ".json":
            return _open_json(path, name)
        return _Opened(name, "row", path.stem, _parquet_rows(path, name))
    if path.is_file():
        raise DataError(name, None, None, f"unsupported file type {suffix!r} (expected .jsonl, .json or .parquet)")
    return _open_dataset(name, split, subset)


def _load(opened: _Opened, parse: Callable[[Any, int], Any], on_bad_record: str) -> tuple[list, DataReport]:
    if on_bad_record not in ON_BAD_RECORD:
        raise ValueError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")
    items, report, seen = [], DataReport(opened.name), 0
    for line, value in opened.rows:
        seen += 1
        try:
            if isinstance(value, DataError):
                raise value
            items.append(parse(value, line))
        except DataError as err:
            if on_bad_record == "error":
                raise
            report.skipped.append(err)
    if not seen:
        raise DataError(opened.name, None, None, "no records")
    if not items:
        raise DataError(opened.name, None, None, f"no valid records ({seen} skipped, first: {report.skipped[0]})")
    report.loaded = len(items)
    return items, report


# ----------------------------------------------------------------------------- field checks


_JSON_TYPES = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _show(value: Any) -> str:
    """A short one-line description of a bad value: `string "abc"`, `NaN`, `null`..."""
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    text = json.dumps(value, default=repr)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{_JSON_TYPES.get(type(value), type(value).__name__)} {text}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number (not bool) that converts to a finite float."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # an int beyond float range
        return False


def _check_str(value: Any, bad: Callable[[str], DataError]) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad(f"must be a non-empty string, got {_show(value)}")
    return value


def _check_prompt(value: Any, bad: Callable[[str], DataError]) -> Prompt:
    if isinstance(value, str):
        return _check_str(value, bad)
    if not isinstance(value, list) or not value:
        raise bad(f"must be a string or a non-empty list of chat messages, got {_show(value)}")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise bad(f"message {i} must be an object, got {_show(message)}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise bad(f"message {i}: '{key}' must be a string, got {_show(message.get(key))}")
    return value


def _check_answer(value: Any, bad: Callable[[str], DataError]) -> str:
    if _is_finite(value):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise bad(f"must be a non-empty string or a finite number, got {_show(value)}")


def _check_reward(value: Any, bad: Callable[[str], DataError]) -> float:
    if not _is_number(value):
        raise bad(f"must be a number, got {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise bad(f"must be a finite number, got {_show(value)}")
    if abs(value) > MAX_ABS_REWARD:
        raise bad(f"|reward| must be <= {MAX_ABS_REWARD:g}, got {_show(value)}")
    return float(value)


def _check_logprobs(value: Any, bad: Callable[[str], DataError]) -> list[float]:
    if not isinstance(value, list) or not value:
        raise bad(f"must be a non-empty list of numbers, got {_show(value)}")
    for i, x in enumerate(value):
        if not _is_finite(x) or x > 0:
            raise bad(f"element {i} must be a finite number <= 0, got {_show(x)}")
    return [float(x) for x in value]


def _check_token_ids(value: Any, bad: Callable[[str], DataError]) -> list[int]:
    """Token ids as plain ints (numpy integers, common in pandas-built rows, included)."""
    if not isinstance(value, list) or not value:
        raise bad(f"must be a non-empty list of token ids, got {_show(value)}")
    for i, x in enumerate(value):
        if not isinstance(x, numbers.Integral) or isinstance(x, bool) or x < 0:
            raise bad(f"element {i} must be an integer >= 0, got {_show(x)}")
    return [int(x) for x in value]


# ----------------------------------------------------------------------------- offline records


def parse_offline_record(obj: Any, file: str = "<record>", line: int = 0, unit: str = "line") -> OfflineRecord:
    """Validate one parsed JSON value as an offline record; raises DataError naming the first bad field."""

    def check(name: str, fn: Callable[[Any, Callable[[str], DataError]], Any]) -> Any:
        return fn(obj[name], lambda reason: DataError(file, line, name, reason, unit))

    if not isinstance(obj, dict):
        raise DataError(file, line, None, f"expected a JSON object, got {_show(obj)}", unit)
    for name in ("prompt", "completion"):
        if name not in obj:
            raise DataError(file, line, name, "missing required field", unit)
    present = {name for name in OFFLINE_FIELDS if obj.get(name) is not None}
    return OfflineRecord(
        prompt=check("prompt", _check_prompt),
        completion=check("completion", _check_str),
        reward=check("reward", _check_reward) if "reward" in present else None,
        answer=check("answer", _check_answer) if "answer" in present else None,
        source=check("source", _check_str) if "source" in present else "offline",
        behavior_logprobs=check("behavior_logprobs", _check_logprobs) if "behavior_logprobs" in present else None,
        completion_ids=check("completion_ids", _check_token_ids) if "completion_ids" in present else None,
        extra={k: v for k, v in obj.items() if k not in OFFLINE_FIELDS},
        file=file,
        line=line,
    )


def load_offline_records(
    source: str | Path, on_bad_record: str = "error", split: str = "train", subset: str | None = None
) -> tuple[list[OfflineRecord], DataReport]:
    """Read, validate and de-duplicate offline records (see the module docstring for the fields); `source`
    may also be rows in memory (a datasets.Dataset or a list of dicts, named "offline_dataset")."""
    opened = _open(source, split, subset) if isinstance(source, str | Path) else _rows("offline_dataset", source)

    def parse(value: Any, line: int) -> OfflineRecord:
        return parse_offline_record(value, opened.name, line, opened.unit)

    records, report = _load(opened, parse, on_bad_record)
    unique, keys = [], set()
    for record in records:
        key = (prompt_key(record.prompt), record.completion)
        if key not in keys:
            keys.add(key)
            unique.append(record)
    report.duplicates = len(records) - len(unique)
    report.loaded = len(unique)
    return unique, report


def write_offline_records(path: str | Path, records: Iterable[OfflineRecord]) -> None:
    """Write records as JSON lines that `load_offline_records` reads back unchanged."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record.to_dict()) + "\n")


# ----------------------------------------------------------------------------- problem sets


def detect_format(keys: Iterable[str]) -> str | None:
    """math if there is a `problem`, gsm8k if a `question`, generic if a `prompt`; else None."""
    keys = set(keys)
    for fmt, key in (("math", "problem"), ("gsm8k", "question"), ("generic", "prompt")):
        if key in keys:
            return fmt
    return None


def _category(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = obj.get(key)
        if (isinstance(value, str) and value.strip()) or _is_number(value):
            return str(value)
    return None


def _parse_problem(obj: Any, fmt: str, template: str, require_answer: bool, file: str, line: int,
                   unit: str, id_prefix: str, instruction: str | None, system_prompt: str | None) -> Problem:
    def bad(name: str | None) -> Callable[[str], DataError]:
        return lambda reason: DataError(file, line, name, reason, unit)

    def get(name: str, required: bool) -> Any:
        if obj.get(name) is None and required:
            raise bad(name)("missing required field")
        return obj.get(name)

    if not isinstance(obj, dict):
        raise bad(None)(f"expected a JSON object, got {_show(obj)}")
    answer = None
    if fmt == "math":
        prompt = _check_str(get("problem", True), bad("problem"))
        if obj.get("answer") is not None:
            answer = _check_answer(obj["answer"], bad("answer"))
        elif (solution := get("solution", require_answer)) is not None:
            answer = extract_answer(_check_str(solution, bad("solution"))) or None
            if answer is None and require_answer:
                raise bad("solution")("no \\boxed{} answer found")
        category = _category(obj, ("type", "subject", "level"))
    elif fmt == "gsm8k":
        prompt = _check_str(get("question", True), bad("question"))
        if (raw := get("answer", require_answer)) is not None:
            text = _check_answer(raw, bad("answer"))
            gold = (extract_answer(text) if isinstance(raw, str) else text) or ""
            answer = gold.replace(",", "").strip() or None
            if answer is None and require_answer:
                raise bad("answer")("no '#### <answer>' found")
        category = _category(obj, ("category",))
    else:
        prompt = _check_prompt(get("prompt", True), bad("prompt"))
        if (raw := get("answer", require_answer)) is not None:
            answer = _check_answer(raw, bad("answer"))
        category = _category(obj, ("category",))
    if isinstance(prompt, str):
        prompt = format_prompt(prompt, template, instruction, system_prompt)
    return Problem(prompt=prompt, answer=answer, category=category, id=f"{id_prefix}:{line}")


def _gym_problems(source: str, kwargs: dict | None, split: str, template: str, instruction: str | None,
                  system_prompt: str | None) -> tuple[list[Problem], DataReport]:
    """reasoning_gym:NAME problems (`agro.gym`): split "train" takes the training questions, any other split
    the held-out ones."""
    entries = gym.load_entries(source, kwargs, "train" if split == "train" else "heldout")
    problems = [Problem(prompt=format_prompt(e["question"], template, instruction, system_prompt),
                        answer=gym.encode_answer(e), category=e["metadata"]["source_dataset"], id=f"{source}:{i}")
                for i, e in enumerate(entries)]
    return problems, DataReport(source, loaded=len(problems))


def load_problems(
    source: str | Path,
    format: str = "auto",
    template: str = "plain",
    require_answer: bool = True,
    on_bad_record: str = "error",
    split: str = "train",
    subset: str | None = None,
    kwargs: dict | None = None,
    instruction: str | None = None,
    system_prompt: str | None = None,
) -> tuple[list[Problem], DataReport]:
    """Read a problem set; string problems are wrapped with `format_prompt(text, template, instruction,
    system_prompt)`. `reasoning_gym:NAME` generates the task's problems with `kwargs` (`agro.gym`).

    format="auto" picks math/gsm8k/generic from the keys of the first record that is an object.
    With require_answer, a problem without a gold answer is a bad record.
    """
    if format not in PROBLEM_FORMATS:
        raise ValueError(f"format must be one of {PROBLEM_FORMATS}, got {format!r}")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
    if gym.is_gym_source(source):
        return _gym_problems(source, kwargs, split, template, instruction, system_prompt)
    if kwargs:
        raise AgroError(f"{source}: data arguments apply to reasoning_gym:NAME data only, got {kwargs}")
    opened = _open(source, split, subset)
    fmt = None if format == "auto" else format

    def parse(value: Any, line: int) -> Problem:
        nonlocal fmt
        if fmt is None and isinstance(value, dict):
            fmt = detect_format(value)
            if fmt is None:
                keys = json.dumps(sorted(value)[:10])
                raise DataError(opened.name, line, None, f"cannot detect the problem format from keys {keys}; "
                                "expected 'problem' (MATH), 'question' (GSM8K) or 'prompt' (generic)", opened.unit)
        return _parse_problem(value, fmt or "generic", template, require_answer, opened.name, line,
                              opened.unit, opened.id_prefix, instruction, system_prompt)

    return _load(opened, parse, on_bad_record)


def _rows(name: str, rows: Iterable) -> _Opened:
    """In-memory rows (a datasets.Dataset or a list of dicts) as a source; errors name `name` and the row."""
    return _Opened(name, "row", name, enumerate(rows))


def load_problem_rows(rows: Iterable, name: str = "train_dataset",
                      on_bad_record: str = "error") -> tuple[list[Problem], DataReport]:
    """Problems from in-memory rows, as TRL's trainers take them: `prompt` used as it is (a string, or chat
    messages for the chat template), optional `answer` and `category`; every column but `prompt` is kept
    in `Problem.columns` (batched reward functions get them as keywords)."""

    def parse(value: Any, row: int) -> Problem:
        problem = _parse_problem(value, "generic", "raw", False, name, row, "row", name, None, None)
        problem.columns = {k: v for k, v in value.items() if k != "prompt"}
        return problem

    return _load(_rows(name, rows), parse, on_bad_record)
