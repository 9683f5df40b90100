"""`lagged_generation`: every batch sampled exactly max_staleness updates before the step that trains on it, in
the learner's process, whatever the timing; GRPO's π_old is then the sampler's log-probs."""

import pytest
from test_async_generation import run, without_times
from test_trainer import overrides, read_metrics

from agro.config import load_config
from agro.errors import AgroError


def test_each_batch_is_exactly_k_versions_old_and_runs_repeat(assets, tmp_path, one_thread):
    settings = {"async_generation": "true", "lagged_generation": "true", "max_staleness": 2, "max_steps": 5,
                "objective": "grpo", "save_steps": 0}
    run(assets, tmp_path / "a", **settings)
    rows = read_metrics(tmp_path / "a")
    # version of step s's batch = max(0, s − 1 − k): staleness min(k, s − 1)
    assert [r["staleness/max"] for r in rows] == [0.0, 1.0, 2.0, 2.0, 2.0]
    assert all(r["staleness/mean"] == r["staleness/max"] for r in rows)
    # GRPO's ratio is to the sampler's log-probs: clipped tokens where the batch is stale, none where it is fresh
    assert rows[0]["objective/clip_fraction"] == 0 and any(r["objective/clip_fraction"] > 0 for r in rows[2:])
    run(assets, tmp_path / "b", **settings)
    assert without_times(read_metrics(tmp_path / "b")) == without_times(rows)


def test_lagged_generation_needs_async_generation_with_staleness(assets, tmp_path):
    with pytest.raises(AgroError, match="key 'lagged_generation': applies to async_generation"):
        load_config(None, overrides(assets, tmp_path / "x", lagged_generation="true"))
    with pytest.raises(AgroError, match="key 'lagged_generation'"):
        load_config(None, overrides(assets, tmp_path / "x", lagged_generation="true", async_generation="true",
                                    max_staleness=0))
