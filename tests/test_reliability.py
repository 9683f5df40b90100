"""Faults end to end through the trainer and the CLI: reward faults, non-finite steps, kill -9 and resume,
safe loading. Bad configs and records are in test_trainer.py and test_data.py, scorer faults in test_rewards.py."""

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import agro.checkpoint
import agro.checkpoint as checkpoint
import agro.models
import agro.rewards.scoring
import agro.trainer
from agro.cli import main
from agro.config import TrainConfig, load_config
from agro.learner import Learner
from agro.trainer import Trainer

TESTS = Path(__file__).parent
MISBEHAVING = f"{TESTS / 'reward_fns.py'}:by_completion"  # 1.0, or raises / NaN / sleeps / 1e300 on cue
DENSE = f"{TESTS / 'trainer_rewards.py'}:digit_fraction"
SLEEPS = f"{TESTS / 'trainer_rewards.py'}:sleeps"  # every call hangs waiting
HANGS_IN_STEP_TWO = f"{TESTS / 'trainer_rewards.py'}:hangs_in_step_two"
CHECKPOINT_FILES = {"model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng_state_0.json",
                    "trainer_state.json"}


def settings(assets, out, **extra) -> list[str]:
    """`key=value` overrides of a tiny run on the shared assets."""
    base = {
        "model_name_or_path": assets / "model", "train_data": assets / "train.jsonl", "prompt_template": "raw",
        "reward_function": DENSE, "max_completion_length": 32, "max_prompt_length": 32, "num_generations": 3,
        "prompts_per_step": 2, "max_steps": 2, "learning_rate": 1e-2, "output_dir": out, "save_steps": 0,
        "offline_per_group": 0, "mini_batch_size": 8, "report_to": "none", "seed": 3, "num_threads": 1,
        "truncated_completions": "keep",  # the tiny random model rarely ends a completion: score them all
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def train_args(assets, out, **extra) -> list[str]:
    """`agro train` arguments of a tiny run."""
    return ["train", *(arg for item in settings(assets, out, **extra) for arg in ("--set", item))]


def cli(args, capsys) -> tuple[int, str, str]:
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_one_line_error(err: str, message: str) -> None:
    """The CLI's error is one line, on a line of its own, with no traceback."""
    errors = [line for line in err.split("\n") if "agro: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("agro: error: ") and message in errors[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------ a huge record

PEAK_RSS = """
import resource, sys
from agro.cli import main
rc = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # bytes: Linux reports KiB
sys.exit(rc)
"""


@pytest.mark.slow
def test_a_huge_offline_record_is_rejected_from_its_length_before_tokenisation(assets, tmp_path):
    """A 20 MB completion is refused from its character count: exit 2 with the one-line error, in about the
    time and memory of a run refused for a 40-token completion (tokenising it took minutes and GBs)."""
    prompt = json.loads((assets / "train.jsonl").read_text().splitlines()[0])["prompt"]
    runs = {}
    for name, size in (("small", 40), ("huge", 20_000_000)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps({"prompt": prompt, "completion": "1" * size}) + "\n")
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *train_args(assets, tmp_path / name, offline_data=path,
                                                                            offline_per_group=1)],
                              capture_output=True, text=True, timeout=600)
        runs[name] = (proc.returncode, proc.stderr, int(proc.stdout.split()[-1]), time.monotonic() - start)
    (rc_small, err_small, peak_small, time_small), (rc, err, peak, seconds) = runs["small"], runs["huge"]
    assert rc_small == 2 and "completion has 40 tokens, more than max_completion_length 32" in err_small
    assert rc == 2
    assert_one_line_error(err, f"{tmp_path / 'huge.jsonl'}:1: field 'completion': completion has 20000000 "
                               "characters, more than max_completion_length 32 tokens can hold")
    assert peak - peak_small < 512 * 2**20, (peak, peak_small)
    assert seconds - time_small < 10, (seconds, time_small)


# ------------------------------------------------------------------ reward faults


@pytest.fixture
def faulty_offline(assets, tmp_path):
    """Two prompts; their offline records have no reward and make the reward function misbehave."""
    prompts = [json.loads(line)["prompt"] for line in (assets / "train.jsonl").read_text().splitlines()[:2]]
    rows = [(prompts[0], "raise"), (prompts[0], "nan"), (prompts[1], "sleep"), (prompts[1], "huge")]
    path = tmp_path / "faulty.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": c, "answer": "1"}) + "\n" for p, c in rows))
    return path


def faulty_run(assets, out, offline, **extra):
    return train_args(assets, out, train_data="null", offline_data=offline, offline_per_group=2,
                    reward_function=MISBEHAVING, reward_timeout=1, **extra)


def test_reward_faults_get_zero_are_counted_and_the_run_goes_on(assets, tmp_path, capsys, faulty_offline):
    out = tmp_path / "run"
    rc, _, err = cli(faulty_run(assets, out, faulty_offline), capsys)
    assert rc == 0, err
    first, second = read_metrics(out)
    # step 1: 6 on-policy samples score 1.0; the 4 offline records raise, return NaN, hang, return 1e300
    assert (first["reward_errors"], first["reward_timeouts"], first["reward_non_finite"]) == (1, 1, 2)
    assert first["reward_failures"] == 4 and first["reward/offline"] == 0.0 and first["reward/on_policy"] == 1.0
    assert first["skipped_update"] == 0 and math.isfinite(first["loss"])
    # step 2: the offline records keep their (zero) rewards; nothing is scored twice
    assert second["reward_failures"] == 0 and second["reward_timeouts"] == 0
    assert (out / "final" / "model.safetensors").exists()


def test_offline_rewards_kept_across_a_resume_are_not_scored_again(assets, tmp_path, capsys, faulty_offline):
    """A checkpoint keeps the offline records' scored rewards: a run resumed after step 1 does not call the
    misbehaving reward again at step 2 (no 1 s timeout, no error), as a straight run does not."""
    out = tmp_path / "run"
    assert cli(faulty_run(assets, out, faulty_offline, max_steps=1, save_steps=1), capsys)[0] == 0
    state = json.loads((checkpoint.list_checkpoints(out)[-1] / "trainer_state.json").read_text())
    assert sorted(len(v) for v in state["offline_rewards"].values()) == [2, 2]
    assert all(r == 0.0 for v in state["offline_rewards"].values() for _, r in v)
    rc, _, err = cli(faulty_run(assets, out, faulty_offline, max_steps=2, save_steps=1) + ["--resume"], capsys)
    assert rc == 0, err
    second = read_metrics(out)[-1]
    assert second["step"] == 2 and second["reward_failures"] == 0 and second["reward_timeouts"] == 0


@pytest.mark.slow
def test_too_many_reward_failures_abort_with_one_line(assets, tmp_path, capsys, faulty_offline):
    out = tmp_path / "run"
    args = faulty_run(assets, out, faulty_offline, max_reward_failure_fraction=0.3)
    rc, _, err = cli(args, capsys)
    assert rc == 2
    assert_one_line_error(err, "step 1: 4 of 10 reward calls failed (1 errors, 1 timeouts, 2 non-finite), "
                               "above max_reward_failure_fraction 0.3; first: sample ")
    assert not (out / "final").exists() and not checkpoint.list_checkpoints(out)
    # nothing of the stopped run is left to mistake for a run to resume: the corrected rerun just runs
    assert not out.exists()
    rc, _, err = cli(faulty_run(assets, out, faulty_offline, max_reward_failure_fraction=0.5), capsys)
    assert rc == 0, err
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_a_run_stopped_before_its_first_step_leaves_what_was_there_untouched(assets, tmp_path, capsys,
                                                                           faulty_offline):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    rc, _, err = cli(faulty_run(assets, out, faulty_offline, max_reward_failure_fraction=0.3), capsys)
    assert rc == 2 and "reward calls failed" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_a_hanging_reward_is_reported_waited_for_in_parallel_and_stops_the_step(assets, tmp_path, capsys,
                                                                               monkeypatch):
    """Every call hangs waiting: each is reported as it times out; the time limits run side by side, and
    the step stops once 4 of its 6 calls have failed (more than max_reward_failure_fraction 0.5): one after
    another, 4 time limits of 3 s would take 12 s."""
    said = []

    class Stamped(agro.rewards.scoring.tqdm):
        @classmethod
        def write(cls, text, *args, **kwargs):
            said.append((time.monotonic(), text))

    monkeypatch.setattr(agro.rewards.scoring, "tqdm", Stamped)
    timeout = 3
    start = time.monotonic()
    rc, _, err = cli(train_args(assets, tmp_path / "run", reward_function=SLEEPS, reward_timeout=timeout), capsys)
    elapsed = time.monotonic() - start
    assert rc == 2
    assert re.search(r"step 1: [456] of 6 reward calls failed \(0 errors, [456] timeouts, 0 non-finite\), above "
                     r"max_reward_failure_fraction 0.5 \(stopped there, [012] calls not run\); first: sample \d: "
                     r"timeout: exceeded 3 s", err), err
    assert_one_line_error(err, "reward calls failed")
    timeouts = [(t, text) for t, text in said if "timed out" in text]
    assert timeouts and re.fullmatch(r"agro: step 1: reward call [1-6] of 6 timed out \(exceeded 3 s\)", timeouts[0][1])
    assert timeouts[0][0] - start < timeout + 5  # reported as it happens (start-up included)
    assert elapsed < 4 * timeout, elapsed


def child_pids(pid: int) -> set[int]:
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.add(int(stat.parent.name))
    return pids


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_reward_scoring_stops_at_once_saves_the_last_step_and_resume_matches(assets, tmp_path,
                                                                                             how):
    """Step 2's reward call hangs (time limit 600 s). A signal ends the run within seconds: exit 128 + signal,
    "interrupted", the checkpoint of step 1 (the step 2 in progress is dropped), no process left behind;
    --resume then gives the weights and metrics of a straight run."""
    extra = {"reward_function": HANGS_IN_STEP_TWO, "reward_timeout": 600, "max_steps": 2}
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    pid_file = tmp_path / "hung.pids"
    cmd = [sys.executable, "-m", "agro.cli", *train_args(assets, broken, **extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AGRO_TEST_PID_FILE": str(pid_file)})
    try:
        deadline = time.monotonic() + 300
        while not pid_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        time.sleep(0.5)
        children = child_pids(proc.pid)
        hung = int(pid_file.read_text().split()[0])
        assert hung in children
        sent = time.monotonic()
        proc.send_signal(how)
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + how, err[-3000:]
    assert stopped < 5, stopped
    assert f"agro: interrupted by {how.name} at step 1; continue with --resume" in err
    assert [p.name for p in checkpoint.list_checkpoints(broken)] == ["checkpoint-1"]
    assert [r["step"] for r in read_metrics(broken)] == [1]
    for pid in children:
        deadline = time.monotonic() + 5
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pid), pid
    if how == signal.SIGINT:
        return  # the same handler: the resume is checked once
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    try:
        Trainer(load_config(None, settings(assets, straight, **extra))).train()
    finally:
        torch.set_num_threads(threads)
    a, b = (load_file(run / "final" / "model.safetensors") for run in (straight, broken))
    assert same_weights(a, b)
    assert [(r["step"], r["loss"]) for r in read_metrics(broken)] == [(r["step"], r["loss"])
                                                                      for r in read_metrics(straight)]


# ------------------------------------------------------------------ non-finite loss or gradient


@pytest.fixture
def inject(monkeypatch):
    """`inject({step: "loss" | "grad"})`: that step's loss (NaN rewards) or gradient (inf) is non-finite."""
    original_step, original_backward = Trainer.train_step, Learner.backward
    running = {}

    def arm(faults: dict[int, str]):
        def train_step(self):
            running["step"] = self.step + 1
            return original_step(self)

        def backward(self, gens, t, graph=None):
            fault = faults.get(running["step"])
            if fault == "loss":
                t = {**t, "rewards": torch.full_like(t["rewards"], math.nan)}
            out = original_backward(self, gens, t, graph)
            if fault == "grad":
                next(p for p in self.model.parameters() if p.grad is not None).grad.fill_(math.inf)
            return out

        monkeypatch.setattr(Trainer, "train_step", train_step)
        monkeypatch.setattr(Learner, "backward", backward)

    return arm


def checkpoint_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(out / f"checkpoint-{step}" / "model.safetensors")


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_steps_are_skipped_logged_and_leave_weights_unchanged(assets, tmp_path, capsys, inject):
    inject({2: "loss", 4: "grad"})
    out = tmp_path / "run"
    args = train_args(assets, out, max_steps=4, save_steps=1, save_total_limit=0, max_nonfinite_steps=2)
    rc, stdout, err = cli(args, capsys)
    assert rc == 0, err
    rows = read_metrics(out)
    assert [r["skipped_update"] for r in rows] == [0, 1, 0, 1]
    assert math.isnan(rows[1]["loss"]) and math.isfinite(rows[3]["loss"]) and rows[3]["grad_norm"] == math.inf
    for step in (2, 4):
        assert f"agro: step {step}: non-finite loss or gradient, update skipped" in stdout
    weights = {s: checkpoint_weights(out, s) for s in range(1, 5)}
    assert same_weights(weights[1], weights[2]) and same_weights(weights[3], weights[4])
    assert not same_weights(weights[2], weights[3])  # a good step after a skipped one trains again
    assert same_weights(load_file(out / "final" / "model.safetensors"), weights[4])
    states = [json.loads((out / f"checkpoint-{s}" / "trainer_state.json").read_text()) for s in (2, 3)]
    assert [s["nonfinite_run"] for s in states] == [1, 0]


def test_consecutive_non_finite_steps_abort_and_keep_a_checkpoint(assets, tmp_path, capsys, inject):
    inject({2: "grad", 3: "loss"})
    out = tmp_path / "run"
    args = train_args(assets, out, max_steps=5, save_steps=1, save_total_limit=0, max_nonfinite_steps=2)
    rc, _, err = cli(args, capsys)
    assert rc == 2
    assert_one_line_error(err, f"step 3: 2 consecutive non-finite steps (max_nonfinite_steps); "
                               f"last checkpoint kept at {out / 'checkpoint-3'}")
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert same_weights(checkpoint_weights(out, 3), checkpoint_weights(out, 1))
    assert not (out / "final").exists()


# ------------------------------------------------------------------ pre-emption: kill -9, SIGINT, resume


def logged_step(out: Path) -> int:
    """The last step in metrics.jsonl (a line being written is ignored)."""
    steps = [0]
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass
    return max(steps)


def check_checkpoints(out: Path) -> None:
    """Every listed checkpoint is complete and loadable; staging directories are never listed."""
    for path in checkpoint.list_checkpoints(out):
        assert not path.name.startswith("."), path
        assert CHECKPOINT_FILES <= {f.name for f in path.iterdir()}, sorted(f.name for f in path.iterdir())
        assert {f.suffix for f in path.iterdir()} <= {".safetensors", ".json", ".pt"}
        assert json.loads((path / "trainer_state.json").read_text())["step"] == int(path.name.split("-")[1])
        assert load_file(path / "model.safetensors")


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_matches_a_straight_run(assets, tmp_path):
    rng = random.Random(2503)
    extra = {"max_steps": 14, "save_steps": 3, "offline_data": assets / "offline.jsonl", "offline_per_group": 1,
             "replay_per_group": 1, "replay_groups_per_step": 1, "replay_sampling": "reward_variance",
             "lr_scheduler_type": "linear", "warmup_steps": 2}  # both replays: their buffers must come back exactly
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    threads = torch.get_num_threads()
    try:
        Trainer(load_config(None, settings(assets, straight, **extra))).train()
    finally:
        torch.set_num_threads(threads)

    evil = tmp_path / "evil.py"  # a reward function the user never configured: importing it leaves a mark
    evil.write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n\ndef reward(p, c, a):\n    return 1.0\n")
    # (how, after which step, extra delay): kill -9 before the first checkpoint, kill -9 while a
    # checkpoint is being staged, SIGINT, kill -9 at a random moment
    plan = [(signal.SIGKILL, rng.randint(1, 2), rng.uniform(0, 0.1)), ("staging", rng.randint(4, 5), 0.0),
            (signal.SIGINT, rng.randint(7, 8), 0.0), (signal.SIGKILL, rng.randint(9, 10), rng.uniform(0, 0.3))]
    cmd = [sys.executable, "-m", "agro.cli", *train_args(assets, broken, **extra)]
    log = tmp_path / "stderr.txt"
    for leg, (how, after, delay) in enumerate(plan):
        with open(log, "w") as stderr:
            proc = subprocess.Popen(cmd + (["--resume"] if leg else []), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        while logged_step(broken) < after or (how == "staging" and not any(broken.glob(".tmp-checkpoint-*"))
                                              and logged_step(broken) < after + 3):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL if how == "staging" else how)
        rc = proc.wait(timeout=300)
        assert rc == (130 if how == signal.SIGINT else -signal.SIGKILL), log.read_text()[-3000:]
        check_checkpoints(broken)
        newest = checkpoint.list_checkpoints(broken)
        if how == signal.SIGINT:  # a clean stop saves the step it stopped at
            assert newest and newest[-1].name == f"checkpoint-{logged_step(broken)}"
        if leg == 1:  # leave a half-written staging directory, a torn metrics line and a tampered config
            staging = broken / f".tmp-checkpoint-{logged_step(broken) + 1}"
            staging.mkdir(exist_ok=True)
            (staging / "model.safetensors").write_bytes(b"\x00" * 7)
            with open(broken / "metrics.jsonl", "a") as f:
                f.write('{"step": 99, "lo')
            (broken / "config.yaml").write_text(f"reward_function: {evil}:reward\n")
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    check_checkpoints(broken)
    assert not list(broken.glob(".tmp-*")) and not (tmp_path / "imported").exists()
    a, b = (load_file(run / "final" / "model.safetensors") for run in (straight, broken))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [(r["step"], r["loss"]) for r in read_metrics(broken)] == [(r["step"], r["loss"])
                                                                      for r in read_metrics(straight)]


def test_resume_before_the_first_checkpoint_starts_over_and_resume_of_nothing_is_an_error(assets, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = cli([*train_args(assets, out, max_steps=1), "--resume"], capsys)
    assert rc == 2
    assert_one_line_error(err, f"{out}: --resume given but there is no run to resume from")
    out.mkdir()
    (out / "config.yaml").write_text("written: before the kill\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # steps never checkpointed
    rc, _, err = cli([*train_args(assets, out, max_steps=1), "--resume"], capsys)
    assert rc == 0, err
    assert [r["step"] for r in read_metrics(out)] == [1] and read_metrics(out)[0]["loss"] != 0.5
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["checkpoint-1"]


# ------------------------------------------------------------------ safe loading


def test_checkpoint_states_load_without_arbitrary_pickle(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(agro.checkpoint.torch, "load", recording_load)
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoint.save_states(tmp_path, optimizer, scheduler, {"step": 1}, rank=0)
    assert checkpoint.load_states(tmp_path, optimizer, scheduler, rank=0) == {"step": 1}
    assert calls == [True, True]
    sources = "\n".join(p.read_text() for p in Path(agro.trainer.__file__).parent.rglob("*.py"))
    assert "import pickle" not in sources and "pickle.load" not in sources
    loads = re.findall(r"torch\.load\(([^)]*)\)", sources)
    assert loads and all("weights_only=True" in call for call in loads)


def test_pickled_model_weights_are_refused(assets, tmp_path, capsys):
    """A model directory with only a pickled `pytorch_model.bin` is not unpickled, let alone run."""
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text((assets / "model" / "config.json").read_text())
    marker = tmp_path / "unpickled"
    payload = (b"\x80\x04cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR.")  # os.system("touch ...")
    (model / "pytorch_model.bin").write_bytes(payload)
    args = train_args(assets, tmp_path / "run", model_name_or_path=model, tokenizer_name_or_path=assets / "model")
    rc, _, err = cli(args, capsys)
    assert rc == 2
    assert_one_line_error(err, f"{model}: cannot load a causal LM")
    assert not marker.exists()


def test_trust_remote_code_is_off_by_default_and_passed_through(assets, tmp_path, capsys, monkeypatch):
    assert TrainConfig().trust_remote_code is False
    seen = []
    real_tokenizer = agro.models.AutoTokenizer.from_pretrained

    class Model:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.append(("model", kwargs["trust_remote_code"], kwargs.get("use_safetensors")))
            raise OSError("stub: not loading")

    class Tokenizer:
        @staticmethod
        def from_pretrained(path, **kwargs):
            seen.append(("tokenizer", kwargs["trust_remote_code"]))
            return real_tokenizer(path, **kwargs)

    monkeypatch.setattr(agro.models, "AutoModelForCausalLM", Model)
    monkeypatch.setattr(agro.models, "AutoTokenizer", Tokenizer)
    for flag in ([], ["--set", "trust_remote_code=true"]):
        rc, _, err = cli([*train_args(assets, tmp_path / "run"), *flag], capsys)
        assert rc == 2 and "stub: not loading" in err
    assert seen == [("tokenizer", False), ("model", False, True), ("tokenizer", True), ("model", True, True)]
