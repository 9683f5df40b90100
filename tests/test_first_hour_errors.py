"""The errors of a new user's first hour, each one line: a missing model path, a near miss of the built-in
name (no hub look-up), a rerun into an output_dir that holds a run (for Python and the CLI alike, with
overwrite_output_dir as TRL has it), an output_dir that cannot be written."""

import os
from pathlib import Path

import pytest
from test_eval_cli import GENERIC, run
from test_trainer import overrides

from agro import AGROConfig, AGROTrainer
from agro.checkpoint import check_output_dir, check_writable, clear_run
from agro.errors import AgroError
from agro.models import check_name, resolve_model


def one_line_error(err: str) -> str:
    assert err.startswith("agro: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_hub(monkeypatch):
    """Any tokenizer or model load (a hub look-up for a name that is not a folder) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a load was attempted: {args}")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)


def test_a_missing_model_path_is_named(tmp_path, capsys, no_hub):
    missing = tmp_path / "runs" / "x" / "final"
    rc, _, err = run(["eval", "--model", missing, "--data", GENERIC], capsys)
    assert rc == 2 and one_line_error(err) == f"agro: error: {missing}: model path does not exist\n"
    for name in ("./final", "../x", "~/nowhere/model", "a/b/c"):
        with pytest.raises(AgroError, match="model path does not exist"):
            resolve_model(name)


def test_an_org_that_is_a_local_folder_makes_the_name_a_path(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(AgroError, match="^runs/x: model path does not exist$"):
        check_name("runs/x")


@pytest.mark.parametrize("name", ["smollm2-135m-instruc", "SmolLM2-135M-Instruct", "smollm2-135m",
                                  "smollm2_135m_instruct"])
def test_a_near_miss_of_the_built_in_name_suggests_it_without_a_hub_wait(name, capsys, no_hub):
    rc, _, err = run(["eval", "--model", name, "--data", GENERIC], capsys)
    assert rc == 2 and "did you mean 'smollm2-135m-instruct'?" in one_line_error(err)
    assert f"model {name!r}: no such file or folder, and not a built-in name" in err


@pytest.mark.parametrize("name", ["gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"])
def test_hub_ids_and_existing_paths_go_on_to_be_loaded(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_name(name)
    (tmp_path / "smollm2-135m-instruc").mkdir()  # a folder of that name is a path, not a typo
    check_name("smollm2-135m-instruc")
    assert resolve_model(name) == name


# ----------------------------------------------------------------------------- output_dir


def a_previous_run(out: Path) -> None:
    for folder in ("checkpoint-2", "checkpoint-4", "final", "tensorboard", ".tmp-checkpoint-6", ".old-final"):
        (out / folder).mkdir(parents=True)
        (out / folder / "model.safetensors").write_text("weights")
    for file in ("config.yaml", "metrics.jsonl", "curves.png"):
        (out / file).write_text("output")
    (out / "notes.md").write_text("mine")  # not a run's output
    (out / "data").mkdir()
    (out / "data" / "train.jsonl").write_text("{}\n")
    (out / "checkpoint-final-notes").write_text("mine too")


def test_a_rerun_is_refused_with_the_rule_for_python_and_the_cli(tmp_path):
    out = tmp_path / "run"
    a_previous_run(out)
    with pytest.raises(AgroError) as refused:
        check_output_dir(out, resume=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{out}: output_dir already holds a run; ")
    for rule in ("trainer.train(resume_from_checkpoint=True)", "agro train --resume", "overwrite_output_dir=True",
                 "--set overwrite_output_dir=true"):
        assert rule in message
    check_output_dir(out, resume=False, overwrite=True)
    check_output_dir(out, resume=True)
    check_output_dir(out, resume=True, overwrite=True)  # resume wins, as in transformers' Trainer


def test_a_rerun_from_python_names_the_python_rules(assets, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("precious: true\n")
    trainer = AGROTrainer(str(assets / "model"), args=AGROConfig(output_dir=str(out),
                                                                 train_data=str(assets / "train.jsonl")))
    with pytest.raises(AgroError, match=r"trainer\.train\(resume_from_checkpoint=True\)"):
        trainer.train()
    assert (out / "config.yaml").read_text() == "precious: true\n"


def test_overwrite_removes_the_previous_runs_outputs_only(tmp_path):
    out = tmp_path / "run"
    a_previous_run(out)
    removed = clear_run(out)
    assert sorted(p.name for p in removed) == sorted([".old-final", ".tmp-checkpoint-6", "checkpoint-2",
                                                      "checkpoint-4", "config.yaml", "curves.png", "final",
                                                      "metrics.jsonl", "tensorboard"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-final-notes", "data", "notes.md"]
    assert (out / "notes.md").read_text() == "mine" and (out / "data" / "train.jsonl").read_text() == "{}\n"
    check_output_dir(out, resume=False)  # no run left: a new one starts
    assert clear_run(tmp_path / "absent") == []


def test_overwrite_output_dir_is_a_config_key():
    assert AGROConfig(overwrite_output_dir=True).overwrite_output_dir is True
    assert AGROConfig().overwrite_output_dir is False


def test_an_output_dir_that_cannot_be_made_is_one_line(assets, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(AgroError) as refused:
        check_writable(blocker / "run" / "deeper")
    assert str(refused.value) == f"{blocker / 'run' / 'deeper'}: output_dir cannot be made: {blocker} is a file, not a folder"
    args = ["train", *sum((["--set", s] for s in overrides(assets, blocker / "run")), [])]
    rc, _, err = run(args, capsys)
    assert rc == 2 and "output_dir cannot be made" in one_line_error(err)
    assert blocker.read_text() == "not a folder"
    check_writable(tmp_path / "new" / "run")  # a folder that can be made is fine, and is not made yet
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_dir_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(AgroError, match="output_dir cannot be written: no write permission in"):
        check_writable(locked / "run")
