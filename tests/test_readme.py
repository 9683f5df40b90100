"""README.md cannot drift from the code: every fenced code block is run or checked, every docs/ file it names
exists, every config key it names is one, and docs/guide/config.md is the dataclass's reference."""

import json
import re
import shlex
from pathlib import Path

import pytest

from agro.config import FIELDS, load_config, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", README, flags=re.S | re.M)


def test_the_readme_is_short_and_its_blocks_are_python_or_bash():
    assert len(README.splitlines()) <= 120
    assert {lang for lang, _ in BLOCKS} == {"python", "bash"}


def test_the_python_example_runs(assets, tmp_path, monkeypatch, one_thread):
    """The example as written, on the tiny local model: one step, outputs in tmp_path."""
    (code,) = [body for lang, body in BLOCKS if lang == "python"]
    assert len(code.splitlines()) <= 25
    swaps = {'"smollm2-135m-instruct"': repr(str(assets / "model")), "max_steps=20": "max_steps=1",
             '"runs/sums"': repr(str(tmp_path / "sums")),  # the tiny model's context is 64 tokens:
             "max_completion_length=16": "max_completion_length=16, max_prompt_length=32"}
    for text, replacement in swaps.items():
        assert code.count(text) == 1, text
        code = code.replace(text, replacement)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    rows = [json.loads(line) for line in (tmp_path / "sums" / "metrics.jsonl").read_text().splitlines()]
    assert "rewards/last_number_is_answer/mean" in rows[-1]
    assert (tmp_path / "sums" / "final" / "config.json").is_file()


def test_the_shell_commands_exist():
    """`make X`: a Makefile target; `agro train CONFIG`: a config that loads; nothing else is in a block."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    commands = [line.split("#")[0].strip() for lang, body in BLOCKS if lang == "bash" for line in body.splitlines()]
    assert commands
    for command in filter(None, commands):
        words = shlex.split(command)
        if words[0] == "make":
            assert words[1] in targets, command
        else:
            assert words[:2] == [".venv/bin/agro", "train"] and len(words) == 3, command
            load_config(ROOT / words[2])


def test_named_docs_and_config_keys_exist():
    for path in set(re.findall(r"`(docs/[\w./-]+)`", README)):
        assert (ROOT / path).is_file(), path
    table = README[README.index("## The config keys"):README.index("## Results")]
    keys = {k for row in table.splitlines() if row.startswith("| `") for k in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert keys and keys <= set(FIELDS), keys - set(FIELDS)


def test_docs_config_is_the_reference():
    if (ROOT / "docs" / "guide" / "config.md").read_text(encoding="utf-8") != reference_markdown():
        pytest.fail("docs/guide/config.md is out of date: python -c \"from agro.config import reference_markdown; "
                    "open('docs/guide/config.md', 'w').write(reference_markdown())\"")
