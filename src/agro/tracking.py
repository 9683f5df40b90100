"""Metrics: metrics.jsonl, and accelerate's trackers (TensorBoard, wandb, trackio...: `report_to`).

metrics.jsonl is our own writer, not a tracker: it is the run's record that `agro demo`, the study and the
tests read line by line, and on resume it is cut back to the checkpoint's step (`discard_after`), which no
tracker does. Every row carries "step" and "iteration"; the trackers get the same numbers at that step.
With `log_completions` (TRL's), completions.jsonl holds the table of completions TRL logs: the rows of
every generation batch a logging step trains on, one per generation, written when the batch is scored and
tagged with the step that first trains on it (`CompletionsLog`), cut back on resume too: nothing waits
unsaved, so a resumed run's table is an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from accelerate import Accelerator, PartialState
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker, WandBTracker, get_available_trackers
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from agro.config import TRACKERS, TrainConfig

RUN_NAME_KEY = {"wandb": "name", "trackio": "name", "mlflow": "run_name"}  # each tracker's name for run_name


def trackers(config: TrainConfig, output_dir: Path) -> list:
    """accelerate trackers for `report_to`: TensorBoard in output_dir/tensorboard, wandb (project "agro") in
    output_dir/wandb, the others by accelerate's defaults; "all": every one installed. A tracker that is not
    installed is skipped with a warning. For `Accelerator(log_with=...)`; none starts before `MetricsLog` opens."""
    available = {str(t) for t in get_available_trackers()} | {"tensorboard"}
    names = [n for n in TRACKERS if n in available] if "all" in config.report_to else \
        [n for n in dict.fromkeys(config.report_to) if n != "none"]
    out = []
    for name in names:
        if name not in available:
            if PartialState().is_main_process:
                tqdm.write(f"agro: report_to includes {name} but {name} is not installed; skipping it")
            continue
        named = {RUN_NAME_KEY[name]: config.run_name} if config.run_name and name in RUN_NAME_KEY else {}
        if name == "tensorboard":
            out.append(TensorBoardTracker("tensorboard", output_dir))
        elif name == "wandb":
            out.append(WandBTracker("agro", dir=str(output_dir), config=config.to_dict(), **named))
        else:
            out.append(LOGGER_TYPE_TO_CLASS[name]("agro", **named))
    return out


class MetricsLog:
    """One row per logged step: appended to output_dir/metrics.jsonl (main process) and sent to the trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: Path):
        self.accelerator = accelerator
        accelerator.init_trackers("agro")
        self.file = open(output_dir / "metrics.jsonl", "a", encoding="utf-8") if accelerator.is_main_process else None

    def log(self, metrics: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(metrics) + "\n")
            self.file.flush()
        self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.accelerator.end_training()


class CompletionsLog:
    """output_dir/completions.jsonl (main process, when `enabled`: TRL's log_completions): step, source, prompt,
    completion, reward and the columns reward functions logged with `log_extra`, one row per generation of a
    generation batch, written as it is scored; every process's rows, gathered. It keeps nothing between
    calls, so a checkpoint has nothing of it to save."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, enabled: bool):
        self.accelerator, self.path, self.enabled = accelerator, output_dir / "completions.jsonl", enabled
        self.file = None

    def write(self, step: int, gens: list, columns: dict[str, list]) -> None:
        """The rows of a new batch's scored generations, with the columns logged for them in the same order,
        tagged `step` (the step that first trains on the batch); every process calls it."""
        if not self.enabled:
            return
        rows = [{"step": step, "source": g.source, "prompt": g.prompt, "completion": g.completion,
                 "reward": g.reward, **{name: values[i] for name, values in columns.items()}}
                for i, g in enumerate(gens)]
        if self.accelerator.num_processes > 1:
            rows = gather_object(rows)
        if self.accelerator.is_main_process:
            self.file = self.file or open(self.path, "a", encoding="utf-8")
            self.file.write("".join(json.dumps(row, default=str) + "\n" for row in rows))
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def logged_batch(config: TrainConfig, first: int) -> bool:
    """Whether a logging step trains on the generation batch first trained on at step `first` (its rows go to
    completions.jsonl as it is scored, so that nothing waits unsaved for that logging step)."""
    c = config
    return any(s % c.logging_steps == 0 or s == c.max_steps
               for s in range(first, min(first + c.num_iterations - 1, c.max_steps) + 1))


def discard_after(output_dir: Path, step: int) -> None:
    """Keep only the metrics.jsonl and completions.jsonl rows of steps 1..`step` (none when 0); torn lines go
    too."""
    for name in ("metrics.jsonl", "completions.jsonl"):
        _discard_after(output_dir / name, step)


def _discard_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if step and isinstance(row, dict) and row.get("step", math.inf) <= step:
            kept.append(line + "\n")
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(kept), encoding="utf-8")
    os.replace(partial, path)
