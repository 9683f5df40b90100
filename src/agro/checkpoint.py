"""Atomic checkpoints: write into a temporary directory, fsync, then rename.

A `kill -9` at any moment leaves either the previous complete checkpoint or the new one, never a
half-written one. Model weights go through safetensors; optimizer and scheduler states are
loaded with `torch.load(weights_only=True)` and RNG states are JSON (no arbitrary pickle).

Layout of `checkpoint-<step>/`: model (save_pretrained, safetensors), `optimizer.pt`,
`scheduler.pt`, `rng_state_<rank>.json`, `trainer_state.json` (step, data position, reward warnings given),
each process's replay: `replay_<rank>.json` (its per-prompt samples, `replay_per_group`; a checkpoint
without it kept one buffer in trainer_state.json) and `replay_groups_<rank>.json` (its whole groups,
`replay_groups_per_step`), and, when saved in the middle of a generation batch's `num_iterations` optimizer
steps, `batch_<rank>.json` (each process's batch: its generations, rewards, cached log-probs), and
`agro.json` (what `agro eval` and `agro generate` default to). `final/` has the model, tokenizer and
`agro.json`.

Also the run's hold on output_dir: a run is refused where one exists unless resumed or overwritten
(overwrite_output_dir removes the previous run's outputs only, never other files; a resume ignores it), an
output_dir that cannot be written is refused before anything starts, and what a run created is removed again
when it stops before finishing a step.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from agro.errors import AgroError
from agro.rewards.functions import absolute_spec

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINING_ARGS = "agro.json"  # in final/ and checkpoints: what `agro eval` / `agro generate` default to


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict:
    """torch, CUDA, Python and NumPy generator states as plain JSON values."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "python": [version, list(mt), gauss],
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_state = state["numpy"]
    np_state["state"]["key"] = np.array(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)


def staging_dir(output_dir: Path, step: int | str, create: bool = True) -> Path:
    """Temporary directory a checkpoint (`step` an int) or `final/` ("final") is written into before `publish`
    or `replace_dir` renames it; made empty with `create` (one process), else only named (the others)."""
    path = output_dir / (f".tmp-checkpoint-{step}" if isinstance(step, int) else f".tmp-{step}")
    if not create:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, output_dir: Path, step: int, keep: int) -> Path:
    """fsync and atomically rename `staging` to `checkpoint-<step>`; keep the newest `keep`."""
    final = replace_dir(staging, output_dir / f"checkpoint-{step}")
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            doomed = old.with_name(f".tmp-delete-{old.name}")  # renamed first: never listed half-deleted
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    return final


def replace_dir(staging: Path, final: Path) -> Path:
    """fsync `staging`, then rename it to `final` (an existing `final` is moved aside first, then removed)."""
    _fsync_tree(staging)
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging directories are never listed)."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_states(path: Path, optimizer, scheduler, trainer_state: dict, rank: int,
                batch: dict | None = None) -> None:
    """`batch`: this process's generation batch still in use (None: the next step generates)."""
    (path / f"rng_state_{rank}.json").write_text(json.dumps(rng_state()))
    if batch is not None:
        (path / f"batch_{rank}.json").write_text(json.dumps(batch))
    if rank == 0:
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
        torch.save(scheduler.state_dict(), path / "scheduler.pt")
        (path / "trainer_state.json").write_text(json.dumps(trainer_state))


def load_states(path: Path, optimizer, scheduler, rank: int) -> dict:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(json.loads((path / f"rng_state_{rank}.json").read_text()))
    return json.loads((path / "trainer_state.json").read_text())


def load_batch(path: Path, rank: int) -> dict | None:
    """This process's generation batch saved in checkpoint `path`, or None when there is none."""
    file = path / f"batch_{rank}.json"
    return json.loads(file.read_text()) if file.exists() else None


def batch_files(path: Path) -> int:
    """How many processes saved a generation batch in checkpoint `path`."""
    return len(list(path.glob("batch_*.json")))


def write_training_args(path: Path, config, step: int) -> None:
    """`agro.json`: what the model was trained with, the defaults `agro eval` and `agro generate` take
    (reward_function null: functions given in Python, which `agro eval` cannot default to)."""
    c = config
    reward = absolute_spec(c.reward_function) if c.reward_function is not None else None
    args = {"prompt_template": c.prompt_template, "instruction": c.instruction, "system_prompt": c.system_prompt,
            "reward_function": reward, "max_completion_length": c.max_completion_length,
            "truncated_completions": c.truncated_completions, "reward_timeout": c.reward_timeout, "step": step}
    (path / TRAINING_ARGS).write_text(json.dumps(args, indent=1) + "\n", encoding="utf-8")


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool = False) -> None:
    """A run in output_dir (config.yaml or a checkpoint; a run killed before its first checkpoint resumes from
    step 0) is refused unless resumed or overwritten (`clear_run` then removes its outputs); the rules are
    phrased for Python and the CLI alike. Resume and overwrite both given: resume wins, as in transformers'
    Trainer (the run continues, nothing is removed)."""
    has_run = (output_dir / "config.yaml").exists() or list_checkpoints(output_dir)
    if has_run and not resume and not overwrite:
        raise AgroError(f"{output_dir}: output_dir already holds a run; continue it (Python: "
                        "trainer.train(resume_from_checkpoint=True); CLI: agro train --resume), replace its outputs "
                        "(overwrite_output_dir=True; CLI: --set overwrite_output_dir=true) or choose another "
                        "output_dir")
    if resume and not has_run:
        raise AgroError(f"{output_dir}: --resume given but there is no run to resume from (Python: "
                        "resume_from_checkpoint); start a new run without it")
    check_writable(output_dir)


def check_writable(output_dir: Path) -> None:
    """output_dir, or the nearest folder above it that exists, is a folder this process may write in."""
    existing = next(p for p in (output_dir, *output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise AgroError(f"{output_dir}: output_dir cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AgroError(f"{output_dir}: output_dir cannot be written: no write permission in {existing}")


RUN_OUTPUTS = ("config.yaml", "metrics.jsonl", "completions.jsonl", "tensorboard", "wandb", "final", "curves.png")
RUN_STAGING = re.compile(r"^\.(tmp|old)-")  # staging_dir, replace_dir, publish: half-written or half-deleted


def clear_run(output_dir: Path) -> list[Path]:
    """overwrite_output_dir: remove the previous run's outputs (config, metrics, trackers' logs, checkpoints,
    final/, curves.png, staging folders) from output_dir; anything else in it stays. Returns what it removed."""
    removed = [p for p in sorted(output_dir.iterdir()) if p.name in RUN_OUTPUTS or RUN_STAGING.match(p.name)
               or (CHECKPOINT_RE.match(p.name) and p.is_dir())] if output_dir.is_dir() else []
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def remove_staging(output_dir: Path) -> None:
    """On resume: drop the staging directories a killed run left."""
    for stale in [*output_dir.glob(".tmp-*"), *output_dir.glob(".old-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def remove_created(output_dir: Path, created: list[Path]) -> None:
    """Remove what a run created: its output_dir when the run made it, else the listed entries in it."""
    for path in [output_dir] if output_dir in created else created:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()
