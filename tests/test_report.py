"""A finished run's summary line and curves (agro.report), read from metrics.jsonl."""

import json

from agro.report import accuracy_line, plot_curves, read_rows


def test_accuracy_line_and_curves(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.25},
            *({"step": s, "reward/on_policy": 0.1 * s, "completions/clipped_ratio": 0.5 / s, "length/on_policy": 20 - s}
              for s in range(1, 5)),
            {"step": 4, "eval/accuracy": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    read = read_rows(tmp_path)
    assert read == rows
    assert accuracy_line(read) == "held-out accuracy 0.250 at step 0 → 0.500 at step 4 (+0.250)"
    assert plot_curves(read, tmp_path / "curves.png", "t") and (tmp_path / "curves.png").stat().st_size > 1000


def test_nothing_to_report_without_evaluations(tmp_path):
    assert read_rows(tmp_path) == []
    rows = [{"step": 1, "loss": 0.1}]
    assert accuracy_line(rows) is None and not plot_curves(rows, tmp_path / "c.png", "t")
    assert not (tmp_path / "c.png").exists()
