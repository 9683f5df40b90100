"""benchmarks/real_model_screen.py's arithmetic: the share of groups with equal rewards, and its report."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "real_model_screen.py"
sys.path.insert(0, str(SCRIPT.parent))  # the script imports common.py from its folder, as `python` runs it
spec = importlib.util.spec_from_file_location("real_model_screen", SCRIPT)
screen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(screen)


def test_zero_std_share_counts_groups_of_consecutive_samples_of_one_problem():
    rewards = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    assert screen.zero_std_share(rewards, 2) == 1.0
    assert screen.zero_std_share(rewards, 4) == 0.5
    assert screen.zero_std_share([[1.0, 0.0, 1.0, 0.0]], 2) == 0.0


def test_every_screened_task_is_a_reasoning_gym_task_with_settings_it_accepts():
    import reasoning_gym

    for task, kwargs in screen.TASKS.values():
        reasoning_gym.create_dataset(task, size=2, seed=0, **kwargs)


def test_report_renders_both_phases(tmp_path, capsys):
    rows = [{"cell": "reference/t/greedy", "task": "t", "setting": "greedy", "k": 1, "problems": 100, "accuracy": 0.25,
             "pass@1": 0.25, "clipped_ratio": 0.5},
            {"cell": "train/t/zero/seed0/steps2", "task": "t", "truncated_completions": "zero", "temperature": 0.7,
             "seed": 0, "max_steps": 2, "curve": [[0, 0.25], [2, 0.5]], "accuracy_start": 0.25, "accuracy_end": 0.5,
             "clipped_ratio_first": 0.5, "clipped_ratio_last": 0.25, "length_first": 20.0, "length_last": 10.0,
             "frac_reward_zero_std": 0.5, "step_seconds_median": 30.0}]
    out = tmp_path / "s.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    screen.report(out)
    text = capsys.readouterr().out
    assert "| t | greedy | 100 | 0.250 ± 0.085 | 0.250 | 0.50 | – |" in text
    assert "| t | zero | 0.7 | 0 | 2 | 0.250 → 0.500 | +0.250 | 0.50 → 0.25 | 20.0 → 10.0 | 0.50 | 30.0 |" in text
