"""A finished run at a glance: held-out accuracy before and after, and its curves in output_dir/curves.png.

Read from the run's metrics.jsonl: `eval/accuracy` (greedy held-out accuracy, step 0 is the model before
training), the on-policy reward, the share of completions cut at the length limit (`completions/clipped_ratio`)
and the on-policy completion length.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_rows(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def accuracy_line(rows: list[dict]) -> str | None:
    """'held-out accuracy 0.109 at step 0 → 0.453 at step 20', or None without two evaluations."""
    points = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    if len(points) < 2:
        return None
    (s0, a0), (s1, a1) = points[0], points[-1]
    return f"held-out accuracy {a0:.3f} at step {s0} → {a1:.3f} at step {s1} ({a1 - a0:+.3f})"


def plot_curves(rows: list[dict], path: Path, title: str) -> bool:
    """Held-out accuracy and on-policy reward (left), clipped ratio and completion length (right), by step."""
    accuracy = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    if not accuracy:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return [(r["step"], r[key]) for r in rows if key in r]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(*zip(*accuracy), marker="o", label="greedy held-out accuracy")
    if reward := series("reward/on_policy"):
        left.plot(*zip(*reward), alpha=0.6, label="on-policy reward (sampled)")
    left.set_xlabel("step")
    left.set_ylim(0, 1)
    left.legend()
    if clipped := series("completions/clipped_ratio"):
        right.plot(*zip(*clipped), color="tab:red", label="share cut at the length limit")
        right.set_ylim(0, 1)
        right.set_ylabel("share")
    right.set_xlabel("step")
    if length := series("length/on_policy"):
        twin = right.twinx()
        twin.plot(*zip(*length), color="tab:gray", label="completion length (tokens)")
        twin.set_ylabel("tokens")
        twin.legend(loc="upper right")
    right.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
