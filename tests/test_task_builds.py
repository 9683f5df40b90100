"""The π_ref builds of the tasks that share `agro.tasks.builds`: deterministic, cached by settings and seed,
rebuilt when incomplete, and scored the same way when loaded back."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from agro.tasks import countdown as C
from agro.tasks import multiplication as M


@pytest.mark.parametrize("T", [C, M], ids=lambda t: t.NAME)
def test_build_is_deterministic_and_cached(T, tmp_path, one_thread, monkeypatch):
    TINY = T.Settings(hidden_size=16, num_layers=1, num_heads=2, train_steps=4, batch_size=8, warmup_steps=2,
                      num_heldout=16)
    a = T.build_reference_policy(tmp_path / "a", seed=3, settings=TINY)
    b = T.build_reference_policy(tmp_path / "b", seed=3, settings=TINY)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    settings, meta = T.load_task(a)
    assert settings == TINY and meta["seed"] == 3 and meta["name"] == T.NAME

    builds = []
    real_build = T.build_reference_policy
    monkeypatch.setattr(T, "build_reference_policy", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    model, tok, first = T.load_or_build_reference_policy(tmp_path / "cache", 0, TINY)
    assert first.name.startswith(f"{T.NAME}-") and first.name.endswith("-seed0") and len(builds) == 1
    heldout = T.generate_problems(TINY.num_heldout, 0, "heldout", TINY)
    assert T.evaluate_greedy(model, tok, heldout, settings=TINY) == T.load_task(first)[1]["heldout_greedy_accuracy"]
    assert T.load_or_build_reference_policy(tmp_path / "cache", 0, TINY)[2] == first and len(builds) == 1
    other = T.load_or_build_reference_policy(tmp_path / "cache", 0, dataclasses.replace(TINY, error_rate=0.1))[2]
    assert other != first and len(builds) == 2
    (first / "task.json").unlink()  # an incomplete build is rebuilt
    assert T.load_or_build_reference_policy(tmp_path / "cache", 0, TINY)[2] == first and len(builds) == 3
    mean, passed = T.sample_accuracy(model, tok, heldout[:4], num_samples=3, settings=TINY)
    assert 0.0 <= mean <= passed <= 1.0
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name] == []
