"""`async_generation`: the actor process k updates ahead; k = 0 is the synchronous loop; faults and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import overrides, read_metrics

from agro.config import load_config
from agro.errors import AgroError
from agro.trainer import Trainer

pytestmark = pytest.mark.slow  # each run spawns an actor process (a few seconds to import torch)


def run(assets, out, **extra):
    threads = torch.get_num_threads()
    try:
        return Trainer(load_config(None, overrides(assets, out, **extra))).train()
    finally:
        torch.set_num_threads(threads)


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time_") and k != "tokens_per_s"} for r in rows]


def test_k0_is_the_synchronous_loop_bit_for_bit(assets, tmp_path):
    extra = {"max_steps": 3, "objective": "grpo", "num_iterations": 2}
    run(assets, tmp_path / "sync", **extra)
    run(assets, tmp_path / "k0", async_generation="true", max_staleness=0, **extra)
    assert without_times(read_metrics(tmp_path / "k0")) == without_times(read_metrics(tmp_path / "sync"))
    a, b = (load_file(tmp_path / r / "final" / "model.safetensors") for r in ("sync", "k0"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("k", [1, 2])
def test_every_batch_is_sampled_at_most_k_updates_before_it_is_trained_on(assets, tmp_path, k):
    out = tmp_path / f"k{k}"
    run(assets, out, async_generation="true", max_staleness=k, max_steps=6, objective="grpo", save_steps=0)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:  # staleness = learner step − the version that sampled the step's on-policy samples
        assert 0 <= r["staleness/mean"] <= r["staleness/max"] <= min(k, r["step"] - 1)
    assert max(r["staleness/max"] for r in rows) > 0  # the actor did run ahead
    # GRPO's π_old is the sampler's log-probs: the ratio is not 1 where the batch is stale
    stale = [r for r in rows if r["staleness/max"] > 0]
    assert any(r["objective/clip_fraction"] > 0 for r in stale)
    assert (out / "final" / "model.safetensors").exists()


def test_the_actor_ends_when_the_run_ends_and_settings_are_checked(assets, tmp_path):
    with pytest.raises(AgroError, match="key 'async_generation': runs the hf backend"):
        load_config(None, overrides(assets, tmp_path / "x", async_generation="true", generation_backend="vllm"))
    with pytest.raises(AgroError, match="key 'max_staleness': must be ≥ 0"):
        load_config(None, overrides(assets, tmp_path / "x", async_generation="true", max_staleness=-1))
    trainer = Trainer(load_config(None, overrides(assets, tmp_path / "run", async_generation="true", max_steps=2)))
    try:
        trainer.train()
    finally:
        torch.set_num_threads(1)
    assert not trainer.actor.process.process.is_alive()


def children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


def wait_for_step(out, step, proc, deadline=300):
    end = time.monotonic() + deadline
    while not (out / "metrics.jsonl").exists() or not any(
            json.loads(line).get("step", 0) >= step for line in (out / "metrics.jsonl").read_text().splitlines()
            if line.endswith("}")):
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.05)


@pytest.mark.parametrize("victim", ["actor", "learner"])
def test_kill_9_of_either_process_then_resume_finishes_the_run(assets, tmp_path, victim):
    out, log = tmp_path / "run", tmp_path / "stdout.txt"
    settings = overrides(assets, out, async_generation="true", max_staleness=1, max_steps=8, save_steps=2)
    cmd = [sys.executable, "-m", "agro.cli", "train", *(x for s in settings for x in ("--set", s))]
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    wait_for_step(out, 3, proc)
    actor = int(re.search(r"agro: actor process (\d+)", log.read_text()).group(1))
    assert actor in children(proc.pid)
    if victim == "actor":
        os.kill(actor, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err[-3000:]
        assert re.fullmatch(r"agro: error: step (\d+): the actor process \(pid \d+\) ended with exit code -9 before "
                            r"sending the batch of step \1; \S+checkpoint-\d+ is kept: rerun with --resume", err.splitlines()[-1])
    else:
        workers = children(proc.pid)  # the actor and the reward workers
        proc.kill()
        proc.wait(timeout=60)
        end = time.monotonic() + 30  # orphaned, they notice and exit
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < end, "an orphaned child process is still running"
            time.sleep(0.2)
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 9)) and (out / "final" / "model.safetensors").exists()


def alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False
