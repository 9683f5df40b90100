"""Smoke run of benchmarks/throughput.py --quick, with TRL hidden: the agro side alone, a clean message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` skips them

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "throughput.py"


def test_throughput_quick_without_trl(tmp_path):
    hidden = tmp_path / "trl"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('trl hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # spares the script its restart
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trl is not installed" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["config"]["trl"] is False
    phases = {"generation", "reward", "reference", "policy", "optimizer", "other"}
    for size in ("3M", "11M"):
        r = result[size]
        for key in ("agro_tokens_per_s", "agro_grpo_tokens_per_s", "train_flops_per_s",
                    "matmul_peak_flops_per_s"):
            assert r[key] > 0, key
        assert "trl_tokens_per_s" not in r
        length = result["config"]["completion_length"]
        assert r["agro_completion_length"] == r["agro_grpo_completion_length"] == length
        assert set(r["agro_phases_s"]) == phases


def quick_sweep(script: str, axis: str, length: int) -> dict:
    """One repeat of a pass benchmark on the 3M model at one length: its result."""
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name(script)), "--sizes", "3M", f"--{axis}-lengths",
                           str(length), "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])[f"3M/{axis}{length}"]


def test_prefix_sharing_benchmark_quick():
    result = quick_sweep("prefix_sharing.py", "prompt", 9)
    assert result["parameters"] > 3_000_000 and result["max_abs_diff"] < 1e-4
    for key in ("reference_shared_s", "reference_full_s", "policy_shared_s", "policy_full_s", "generate_shared_s",
                "generate_full_s"):
        assert result[key] > 0


def test_generation_cache_benchmark_quick():
    result = quick_sweep("generation_cache.py", "completion", 8)
    assert result["same_samples"] and result["parameters"] > 3_000_000
    assert result["in_place_s"] > 0 and result["concatenated_s"] > 0


def test_tabular_bias_quick(tmp_path):
    """The candidates' table: the tapered AGRO and TOPR agree when μ = π_ref and AsymRE keeps a bias."""
    script = Path(__file__).parents[1] / "benchmarks" / "tabular_bias.py"
    proc = subprocess.run([sys.executable, str(script), "--instances", "2", "--steps", "300"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["regimes"]) == {"reference", "fixed"}
    ref = result["regimes"]["reference"]
    assert ref["agro_taper_ref"]["values"] == ref["topr"]["values"]
    for r in result["regimes"].values():  # the consistent candidates have moved toward π* from π_ref
        assert all(0 < v < 1 for name in ("agro_untapered", "agro_taper_ref", "topr") for v in r[name]["values"])
    assert ref["asymre_delta_0.1"]["min"] > ref["agro_untapered"]["max"]


def test_async_generation_benchmark_quick():
    """Both sides run the same steps; the async side's batches are at most one update old."""
    proc = subprocess.run([sys.executable, str(SCRIPT.with_name("async_generation.py")), "--quick"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sync_steps_per_s"] > 0 and result["async_k1_steps_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["async_k1_steps_per_s"] / result["sync_steps_per_s"])
    assert 0 < result["async_staleness_mean"] <= 1
    assert result["sync_phase_share"]["generation"] > 0

EFFICIENCY = SCRIPT.with_name("efficiency.py")


def load_efficiency():
    """benchmarks/efficiency.py as a module (its summary functions)."""
    import importlib.util

    if str(EFFICIENCY.parent) not in sys.path:  # the script imports common.py from its folder, as `python` runs it
        sys.path.insert(0, str(EFFICIENCY.parent))
    spec = importlib.util.spec_from_file_location("efficiency", EFFICIENCY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def efficiency_run(tmp_path, *args: str, hide_trl: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ)
    if hide_trl:
        hidden = tmp_path / "hide" / "trl"
        hidden.mkdir(parents=True, exist_ok=True)
        (hidden / "__init__.py").write_text("raise ImportError('trl hidden for this test')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(hidden.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(EFFICIENCY), "--quick", "--out", str(tmp_path / "out"),
                           "--cache-dir", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_efficiency_summary_aggregates_seeds(tmp_path):
    """Target from grpo's final accuracies; a method is null where a seed never reached it, with the count."""
    eff = load_efficiency()

    def run(method, seed, accs, per_eval=100):  # evaluations at 0, 1, 2, ... with `per_eval` fresh samples each
        return {"method": method, "seed": seed, "final_accuracy": accs[-1], "fresh_generations": per_eval * (len(accs) - 1),
                "seconds": 2.0 * (len(accs) - 1), "offline_records": 0, "reference_accuracy": accs[0],
                "curve": [[i, per_eval * i, 2.0 * i, a] for i, a in enumerate(accs)]}

    runs = [run("grpo", 0, [0.1, 0.5, 0.8]), run("grpo", 1, [0.1, 0.7, 0.6]),  # target 0.9 * 0.7 = 0.63
            run("agro_num_iterations_4", 0, [0.1, 0.65, 0.7], per_eval=25),
            run("agro_num_iterations_4", 1, [0.1, 0.2, 0.72], per_eval=25),
            run("agro_replay", 0, [0.1, 0.7, 0.7]), run("agro_replay", 1, [0.1, 0.3, 0.5]),
            run("trl_grpo_num_iterations_4", 0, [0.1, 0.65, 0.6]), run("trl_grpo_num_iterations_4", 1, [0.1, 0.7, 0.7])]
    s = eff.summarise(runs, 0.9)
    assert abs(s["target"] - 0.63) < 1e-12
    grpo, ni4, replay = (s["methods"][m] for m in ("grpo", "agro_num_iterations_4", "agro_replay"))
    assert grpo["fresh_generations_to_target"] == 150 and grpo["seconds_to_target"] == 3.0  # seeds: 200, 100
    assert ni4["fresh_generations_to_target"] == 37.5 and ni4["seeds_reached"] == 2  # 25, 50
    assert abs(ni4["final_accuracy"] - 0.71) < 1e-12
    assert abs(ni4["lowest_after_target_reached_mean"] - (0.65 + 0.72) / 2) < 1e-12  # seed 0 dips to 0.65
    assert replay["fresh_generations_to_target"] is None and replay["seconds_to_target"] is None
    assert replay["seeds_reached"] == 1 and replay["fresh_generations_to_target_reached_mean"] == 100
    goal = eff.goal_check(s)
    assert "| agro_num_iterations_4 | yes (0.25×) | yes (38 vs 100) | yes (+0.010) | met |" in goal
    assert "| agro_replay | no (—) | no (— vs 100) | no (-0.100) | not met |" in goal
    assert goal[-1] == "Goal: met by agro_num_iterations_4."
    assert s["seeds_reference_reaches_target"] == [] and s["reference_accuracy"] == {0: 0.1, 1: 0.1}
    low = eff.summarise(runs, 0.1)  # target 0.07: π_ref (0.1) already reaches it, every run at step 0
    assert low["seeds_reference_reaches_target"] == [0, 1] and low["methods"]["grpo"]["fresh_generations_to_target"] == 0
    eff.write_table(low, runs, tmp_path / "table.md", "cmd")
    assert "**Warning:** π_ref already reaches the target on seed(s) [0, 1]" in (tmp_path / "table.md").read_text()
    assert eff.goal_check(low)[-1].endswith("(not meaningful: π_ref already reaches the target on seed(s) [0, 1]).")


def test_efficiency_quick(tmp_path):
    """--quick: every method, fresh generations counted per method, curves, table, plot, resume."""
    try:
        import trl  # noqa: F401
        has_trl = True
    except ImportError:
        has_trl = False
    proc, result = efficiency_run(tmp_path)
    assert result["trl"] is has_trl and ("trl is not installed" in proc.stdout) is not has_trl
    methods = result["methods"]
    expected = {"grpo", "agro", "agro_num_iterations_2", "agro_num_iterations_4", "agro_replay",
                "agro_offline_plus_one"} | ({"trl_grpo_num_iterations_1", "trl_grpo_num_iterations_4"} if has_trl else set())
    assert set(methods) == expected
    rows = {r["method"]: r for r in map(json.loads, (tmp_path / "out" / "runs.jsonl").read_text().splitlines())}
    assert set(rows) == expected
    # 2 steps of 4 prompts, groups of 4: fresh samples so far at steps 0, 1, 2 (num_iterations ≥ 2: one
    # generation batch; replay: 2 fresh + 2 replayed per prompt; offline_plus_one: 1 fresh + 3 π_ref records)
    fresh = {"grpo": [0, 16, 32], "agro": [0, 16, 32], "agro_num_iterations_2": [0, 16, 16],
             "agro_num_iterations_4": [0, 16, 16], "agro_replay": [0, 8, 16], "agro_offline_plus_one": [0, 4, 8],
             "trl_grpo_num_iterations_1": [0, 16, 32], "trl_grpo_num_iterations_4": [0, 16, 16]}
    for method, row in rows.items():
        assert [c[0] for c in row["curve"]] == [0, 1, 2], method  # evaluations at step 0 and after each step
        assert [c[1] for c in row["curve"]] == fresh[method], method
        assert row["curve"][0][3] == row["reference_accuracy"], method  # every method starts from π_ref
        assert row["curve"][0][2] == 0 < row["curve"][1][2] < row["curve"][2][2], method
        assert methods[method]["final_accuracy"] == row["final_accuracy"] == row["curve"][-1][3]
    assert rows["agro_offline_plus_one"]["offline_records"] > 0
    assert rows["agro_replay"]["generations_trained"] > rows["agro_replay"]["fresh_generations"]
    assert rows["agro_num_iterations_2"]["generations_trained"] == 2 * 16
    # diagnostics: the within-batch drift needs a batch trained on twice; agro's runs report KL to π_ref
    assert rows["agro_num_iterations_2"]["batch_drift"] is not None and rows["agro"]["batch_drift"] is None
    assert all((rows[m]["kl_end"] is None) is m.startswith("trl") for m in rows)
    assert all((rows[m]["grad_norm_median"] is None) is m.startswith("trl") for m in rows)
    assert all(0 <= rows[m]["grad_norm_above_1"] <= 1 for m in rows if not m.startswith("trl"))
    assert abs(result["target"] - 0.9 * rows["grpo"]["final_accuracy"]) < 1e-12
    for name, m in methods.items():
        reached = [c for c in rows[name]["curve"] if c[3] >= result["target"]]
        assert m["fresh_generations_to_target"] == (reached[0][1] if reached else None)
    table = (tmp_path / "out" / "efficiency.md").read_text()
    assert table.startswith("Command: `python benchmarks/efficiency.py --task")
    assert all(f"| {m} |" in table for m in expected)
    assert (tmp_path / "out" / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run finds every (method, seed) done: nothing is rerun, the same summary is printed
    again, result_again = efficiency_run(tmp_path)
    assert len((tmp_path / "out" / "runs.jsonl").read_text().splitlines()) == len(expected)
    assert result_again["methods"] == methods


def test_efficiency_agro_settings_carry_the_shared_clip_and_agros_loss_type():
    eff = load_efficiency()
    prep = {"ref_path": "m", "train": "t", "heldout": "h", "reward": "r", "max_len": 9, "max_prompt_len": 4,
            "seed": 0, "offline": "o"}
    job = {"group_size": 8, "eval_every": 1, "steps": 2, "prompts_per_step": 4, "learning_rate": 1e-3, "beta": 0.1,
           "max_grad_norm": 0.0, "agro_loss_type": "dr_grpo", "threads": 1, "run_dir": "d", "staleness": 8}
    for method in ("grpo", "agro", "agro_num_iterations_4", "agro_replay", "agro_offline_plus_one"):
        settings = eff.agro_settings(method, prep, job)
        assert "max_grad_norm=0.0" in settings
        assert ("agro_loss_type=dr_grpo" in settings) is (method != "grpo")


def test_efficiency_reuse_diagnostics_on_hand_rows():
    eff = load_efficiency()
    rows = [{"step": 0, "iteration": 0},  # the evaluation at step 0: no update
            {"iteration": 1, "log_ratio_mean": 0.5, "kl": 1.0, "grad_norm": 3.0},
            {"iteration": 2, "log_ratio_mean": 0.2, "grad_norm": 0.5},
            {"iteration": 1, "log_ratio_mean": 0.1, "kl": 2.0, "grad_norm": float("nan")},  # a skipped update
            {"iteration": 2, "log_ratio_mean": 0.4, "grad_norm": 2.0}]
    d = eff.reuse_diagnostics(rows)
    assert d["batch_drift"] == pytest.approx(((0.2 - 0.5) + (0.4 - 0.1)) / 2)
    assert d["kl_end"] == pytest.approx(1.5)
    assert d["grad_norm_median"] == 2.0 and d["grad_norm_above_1"] == pytest.approx(2 / 3)


def test_efficiency_refuses_to_resume_with_other_settings(tmp_path, capsys):
    eff = load_efficiency()
    shared = {"steps": 2, "beta": 0.1, "max_grad_norm": 1.0, "agro_loss_type": "sum", "threads": 1}
    log = tmp_path / "runs.jsonl"
    rows = [{"method": "grpo", "seed": 0, "shared": eff.relevant_shared("grpo", shared)},
            {"method": "agro", "seed": 0, "shared": eff.relevant_shared("agro", shared)},
            {"method": "agro_replay", "seed": 1}]  # written before rows recorded their settings
    eff.check_resumable(rows, {**shared, "threads": 2}, log)  # the thread count does not change a run's settings
    eff.check_resumable(rows[:1], {**shared, "agro_loss_type": "dr_grpo"}, log)  # grpo's loss has no agro_loss_type
    with pytest.raises(SystemExit) as err:
        eff.check_resumable(rows, {**shared, "agro_loss_type": "dr_grpo"}, log)
    assert err.value.code == 2
    assert capsys.readouterr().err.strip() == (f"{log}:2: agro seed 0 was run with agro_loss_type=sum but this command "
                                               "has agro_loss_type=dr_grpo: use another --out")


def test_efficiency_without_trl(tmp_path):
    """Without trl installed, TRL's methods are skipped with a message, and the JSON says so."""
    proc, result = efficiency_run(tmp_path, "--methods", "grpo", "trl_grpo_num_iterations_4", hide_trl=True)
    assert "trl is not installed" in proc.stdout
    assert result["trl"] is False and set(result["methods"]) == {"grpo"}
    assert "--no-trl" in result["command"] and "trl_grpo" not in result["command"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU the script runs the whole check")
@pytest.mark.parametrize("name", ["gpu_check.sh", "gpu_study.sh"])
def test_gpu_scripts_parse_and_stop_at_once_without_a_gpu(tmp_path, name):
    script = Path(__file__).parents[1] / "scripts" / name
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          cwd=script.parents[1], env={**os.environ, "OUT": str(tmp_path / "out"),
                                                      "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not list((tmp_path / "out").glob("*/"))  # nothing ran
