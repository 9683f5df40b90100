"""benchmarks/real_model.py, the real-model study's driver: flags, each method's config, the Wilson interval, and a
tiny run of every regime (the tiny arithmetic model on reasoning-gym's chain_sum) that resumes, skips what is
written, and generates the offline data once."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "real_model.py"
sys.path.insert(0, str(SCRIPT.parent))  # the script imports common.py from its folder, as `python` runs it
spec = importlib.util.spec_from_file_location("real_model", SCRIPT)
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_wilson_interval_matches_hand_values():
    # z = 1.96: 0/10 → [0, 0.2775], 5/10 → [0.2366, 0.7634], 10/10 → [0.7225, 1], 50/200 → [0.1951, 0.3143]
    for (k, n), (low, high) in {(0, 10): (0.0, 0.2775), (5, 10): (0.2366, 0.7634), (10, 10): (0.7225, 1.0),
                                (50, 200): (0.1951, 0.3143)}.items():
        assert study.wilson(k, n) == pytest.approx([low, high], abs=1e-4)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "agro,ppo"], "unknown method 'ppo'"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--max-steps", "0"], "--max-steps must be at least 1"),
    (["--config", "missing.yaml"], "--config missing.yaml: file not found"),
])
def test_bad_flags_are_one_line_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        study.parse(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1


def test_each_method_sets_only_its_own_keys(tmp_path):
    args = study.parse(["--seeds", "3", "--task", "chain_sum_2", "--max-steps", "7"])
    configs = {m: study.load(study.cell_settings(args, m, 3, tmp_path / "offline.jsonl"), args.config).to_dict()
               for m in study.METHODS if m != "pi_ref"}
    assert {m: c["objective"] for m, c in configs.items()} == {
        "agro": "agro", "grpo": "grpo", "agro_stale": "agro", "grpo_stale": "grpo", "agro_offline": "agro",
        "kl_pg_offline": "kl_pg", "topr_offline": "topr", "agro_stale_sum_no_taper": "agro", "agro_stale_sum": "agro",
        "agro_stale_sum_beta_0.01": "agro", "agro_sum": "agro", "agro_offline_sum": "agro",
        "agro_offline_strong": "agro", "kl_pg_offline_strong": "kl_pg", "topr_offline_strong": "topr"}
    assert configs["agro_stale_sum_no_taper"]["taper"] == "none" and configs["agro_stale"]["taper"] == "clip"
    assert configs["agro_stale_sum"]["taper"] == "clip"
    # the AGRO methods without a suffix run the config's default scale, the *_sum ones the estimator as written
    assert {m: c["agro_loss_type"] for m, c in configs.items() if c["objective"] == "agro"} == {
        "agro": "dr_grpo", "agro_stale": "dr_grpo", "agro_offline": "dr_grpo", "agro_stale_sum_no_taper": "sum",
        "agro_stale_sum": "sum", "agro_stale_sum_beta_0.01": "sum", "agro_sum": "sum", "agro_offline_sum": "sum",
        "agro_offline_strong": "dr_grpo"}
    assert {m: c["beta"] for m, c in configs.items() if c["beta"] != 0.05} == {"agro_stale_sum_beta_0.01": 0.01}
    # each *_sum method is its default-scale method in the same regime, but for agro_loss_type
    for default, sums in study.SUM.items():
        assert study.METHODS[sums][0] == study.METHODS[default][0]
        assert {**configs[sums], "agro_loss_type": "dr_grpo"} == configs[default]
    for m, c in configs.items():
        stale, offline = study.METHODS[m][0] == "stale", study.METHODS[m][0] in study.OFFLINE
        assert c["async_generation"] == c["lagged_generation"] == stale
        assert c["max_staleness"] == (4 if stale else 1)
        assert c["num_generations"] == (0 if offline else 8) and c["offline_per_group"] == (8 if offline else 4)
        assert c["offline_data"] == (str(tmp_path / "offline.jsonl") if offline else None)
        assert c["train_data"] == (None if offline else "reasoning_gym:chain_sum")
        assert c["seed"] == 3 and c["max_steps"] == 7 and c["eval_data_kwargs"]["size"] == 200
    method_keys = {"objective", "async_generation", "lagged_generation", "max_staleness", "num_generations",
                   "offline_data", "offline_per_group", "train_data", "train_data_kwargs", "reward_function", "taper",
                   "agro_loss_type", "beta"}
    shared = [{k: v for k, v in c.items() if k not in method_keys} for c in configs.values()]
    assert all(s == shared[0] for s in shared)  # the same hyper-parameters, budget and held-out problems
    assert shared[0]["learning_rate"] == 2e-5 and configs["agro"]["beta"] == configs["grpo"]["beta"] == 0.05


def test_report_tables_goals_and_plot(tmp_path):
    def cell(method, seed, accuracy, start=0.1):
        return {"cell": f"t/{method}/{seed}", "method": method, "seed": seed, "accuracy": accuracy, "n": 200,
                "ci95": study.wilson(round(accuracy * 200), 200), "curve": [[0, start], [10, accuracy]],
                "accuracy_start": start, "kl": 0.5, "kl_se": 0.1, "step_seconds_median": 20.0,
                "training": {"grad_clipped_share": accuracy, "grad_norm_median": 2.0, "zero_std_groups": 0.5,
                             "completion_length": 20.0, "cut_share": 0.25, "cut_curve": [[1, 0.5], [2, 0.0]]}}
    rows = [cell("pi_ref", 0, 0.1, 0.1), cell("agro_sum", 0, 0.40), cell("agro_sum", 1, 0.30), cell("grpo", 0, 0.38),
            cell("agro_offline_sum", 0, 0.15), cell("topr_offline", 0, 0.30), cell("grpo_stale", 0, 0.30),
            cell("agro", 0, 0.30), cell("agro_stale", 0, 0.35), cell("agro_stale", 1, 0.50)]
    rows[-1]["training"] = {**rows[-1]["training"], "equal_reward_steps": 0.1, "equal_reward_step_ratio": 0.2}
    out = tmp_path / "cells.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = study.report(out, tmp_path / "curves.png")
    assert "| agro_sum | 2 | 0.350 ± 0.071 | 0.300–0.400 | 0.350 | 0.500 |" in text
    assert "| grpo | 1 | 0.380 | 0.380–0.380 | 0.380 | 0.500 |" in text
    # training batches: the mean over seeds
    assert "| agro_sum | 0.35 | 0.50 | 20.0 | 0.25 | 2.00 | – | – |" in text
    # one seed of two recorded the steps without a reward signal
    assert "| agro_stale | 0.42 | 0.50 | 20.0 | 0.25 | 2.00 | 0.10 (1 of 2 seeds) | 0.20 (1 of 2 seeds) |" in text
    defaults, sums = text.split("The same goals, AGRO at the summed scale (`agro_loss_type: sum`):")
    sums, scales = sums.split("The two scales on the same seeds:")
    # the goals put to the AGRO methods as the config has them (dr_grpo), each on the seeds both sides have
    assert "The goals, AGRO with its defaults (`agro_loss_type: dr_grpo`):" in defaults
    assert ("| AGRO on-policy ≥ GRPO − 0.02 | agro 0.300 vs grpo 0.380 (-0.080; seeds 0) | missed | "
            "-0.060 |") in defaults
    assert ("| AGRO stale ≥ GRPO stale | agro_stale 0.350 vs grpo_stale 0.300 (+0.050; seeds 0) | met | "
            "+0.050 |") in defaults
    assert ("| AGRO stale within 0.03 of AGRO on-policy | agro_stale 0.350 vs agro 0.300 (+0.050; "
            "seeds 0) | met | +0.080 |") in defaults
    assert "| AGRO offline ≥ π_ref + 0.10 | not run |" in defaults
    # the same goals with each AGRO method replaced by its sum cell: agro_sum's seed 0 against grpo's only seed
    assert ("| AGRO on-policy ≥ GRPO − 0.02 | agro_sum 0.400 vs grpo 0.380 (+0.020; seeds 0) | met | "
            "+0.040 |") in sums
    assert ("| AGRO offline ≥ π_ref + 0.10 | agro_offline_sum 0.150 vs pi_ref 0.100 (+0.050; seeds 0) | missed | "
            "-0.050 |") in sums
    assert "| AGRO stale ≥ GRPO stale | not run |" in sums
    # the two scales paired by seed: agro's seed 0 against agro_sum's seed 0; agro_stale has no sum cell
    assert "| agro_sum → agro | 0 | -0.100 | -0.100 | 0 of 1 |" in scales
    assert "agro_stale_sum → " not in scales
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without a sum cell the report has the defaults' goals only
    out.write_text("".join(json.dumps(r) + "\n" for r in rows if not r["method"].endswith("_sum")))
    text = study.report(out, None)
    assert "The goals, AGRO with its defaults" in text and "summed scale" not in text and "two scales" not in text


def test_noise_is_the_larger_of_binomial_and_seed_spread():
    def stats(accs, n=200):
        rows = [{"method": "agro", "seed": i, "accuracy": a, "n": n, "curve": [[0, 0.1], [20, a]], "kl": 0.0}
                for i, a in enumerate(accs)]
        return study.summary(rows)["agro"]
    steady, spread = stats([0.30, 0.30, 0.30]), stats([0.20, 0.30, 0.40])
    binomial = study.Z95 * math.sqrt(2 * 0.3 * 0.7 / 600)
    assert study.noise(steady, steady) == pytest.approx(binomial)  # no spread over seeds: the problems' noise
    assert study.noise(spread, steady) == pytest.approx(study.Z95 * math.sqrt(0.1 ** 2 / 3))  # std 0.1 over 3 seeds
    # one seed against three: its binomial variance beside the other's spread over seeds
    assert study.noise(stats([0.3]), spread) == pytest.approx(study.Z95 * math.sqrt(0.21 / 200 + 0.1 ** 2 / 3))


def test_training_stats_of_a_run():
    steps = [{"step": 1, "grad_norm": 3.0, "frac_reward_zero_std": 0.5, "objective/completion_length_mean": 10.0,
              "completions/clipped_ratio": 0.25},
             {"step": 2, "grad_norm": 0.5, "frac_reward_zero_std": 1.0, "objective/completion_length_mean": 20.0,
              "completions/clipped_ratio": 0.75},
             {"step": 3, "grad_norm": float("nan"), "frac_reward_zero_std": 0.0},  # a skipped step
             {"step": 4, "grad_norm": 0.0, "frac_reward_zero_std": 1.0}]  # nothing to move: not an update
    stats = study.training_stats(steps, 1.0)
    # of the two updates, the one with equal rewards everywhere reached the optimiser at norm 0.5, the other at 3
    # clipped to 1
    assert stats == {"grad_clipped_share": 1 / 3, "grad_norm_median": 0.5, "equal_reward_steps": 0.5,
                     "equal_reward_step_ratio": 0.5, "zero_std_groups": 0.625, "completion_length": 15.0,
                     "cut_share": 0.5, "cut_curve": [[1, 0.25], [2, 0.75]]}
    unclipped = study.training_stats(steps, 0.0)
    assert unclipped["grad_clipped_share"] is None and unclipped["equal_reward_step_ratio"] == pytest.approx(0.5 / 3)
    assert study.training_stats(steps[:1], 1.0)["equal_reward_step_ratio"] is None  # no step without signal


def test_tiny_study_every_regime_resumes_and_skips(chain_sum_model, tmp_path, monkeypatch, capsys):
    """Every regime with the tiny model: cells of the right shape; an interrupted training cell resumes from
    its checkpoint, an interrupted stale cell starts again (a resume would sample its in-flight batches with
    newer weights); the offline data is generated once for the three offline methods; a rerun runs nothing."""
    calls = []
    real = study.agro_cli

    def spy(*argv):
        calls.append(argv)
        kind = "stale" if "lagged_generation=true" in argv else "agro" if "objective=\"agro\"" in argv else None
        if argv[0] == "train" and kind and kind not in interrupted:
            real(*argv, "--set", "max_steps=1")  # the run stops after its first step, as if killed there
            interrupted.append(kind)
            raise KeyboardInterrupt
        real(*argv)

    interrupted = []
    monkeypatch.setattr(study, "agro_cli", spy)
    out, runs = tmp_path / "cells.jsonl", tmp_path / "runs"
    argv = ["--methods", "pi_ref,agro,grpo_stale,agro_offline,kl_pg_offline,topr_offline", "--seeds", "0",
            "--max-steps", "2", "--eval-every", "1", "--heldout", "8", "--kl-samples", "4", "--task", "chain_sum_2",
            "--model", str(chain_sum_model), "--out", str(out), "--runs", str(runs),
            "--set", "prompt_template=raw", "--set", "instruction=null", "--set", "max_prompt_length=128",
            "--set", "max_completion_length=8",
            "--set", "num_generations=2", "--set", "prompts_per_step=2", "--set", "num_threads=1",
            "--set", "mini_batch_size=8", "--set", "learning_rate=0.01"]
    with pytest.raises(KeyboardInterrupt):
        study.main(argv)
    assert [json.loads(line)["method"] for line in out.read_text().splitlines()] == ["pi_ref"]
    with pytest.raises(KeyboardInterrupt):
        study.main(argv)
    assert study.main(argv) == 0
    cells = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cells"]
    assert [c["method"] for c in cells] == ["pi_ref", "agro", "grpo_stale", "agro_offline", "kl_pg_offline",
                                            "topr_offline"]
    trains = [a for a in calls if a[0] == "train"]
    assert sum("--resume" in a for a in trains) == 1  # the interrupted agro cell went on from its checkpoint
    assert not any("--resume" in a and "lagged_generation=true" in a for a in trains)
    assert sum(a[0] == "generate" for a in calls) == 1 and len(list((runs / "offline").iterdir())) == 1
    reference = cells[0]
    for c in cells:
        assert c["seed"] == 0 and c["n"] == 8 and 0 <= c["ci95"][0] <= c["accuracy"] <= c["ci95"][1] <= 1
        assert c["ci95"] == pytest.approx(study.wilson(round(c["accuracy"] * 8), 8))
        if c["method"] != "pi_ref":
            assert [s for s, _ in c["curve"]] == [0, 1, 2]
            assert c["curve"][0][1] == reference["accuracy"]  # step 0 is π_ref, scored as the pi_ref cell is
            assert c["kl_samples"] == 4 and c["kl"] == c["kl"]  # finite
    stale = next(c for c in cells if c["method"] == "grpo_stale")
    assert stale["objective"] == "grpo" and stale["staleness_mean"] == 0.5  # steps 1, 2: both sampled by version 0
    offline = next(c for c in cells if c["method"] == "topr_offline")
    assert 0 < offline["offline_data"]["records"] <= 2 * offline["offline_data"]["prompts"] <= 8
    resumed = [json.loads(line) for line in (runs / cells[1]["cell"].replace("/", "-") / "metrics.jsonl")
               .read_text().splitlines()]
    assert [r["step"] for r in resumed if "time_step" in r] == [1, 2]
    restarted = [json.loads(line) for line in (runs / cells[2]["cell"].replace("/", "-") / "metrics.jsonl")
                 .read_text().splitlines()]
    assert [r["step"] for r in restarted if "time_step" in r] == [1, 2]  # one fresh run, not the first step again
    assert not list((runs / cells[1]["cell"].replace("/", "-")).glob("checkpoint-*"))  # cleaned once written
    calls.clear()
    assert study.main(argv) == 0 and calls == []  # everything written: nothing runs again
    assert len(out.read_text().splitlines()) == 6


@pytest.mark.parametrize("folder", ["real_model", "real_model/fp32", "real_model/basic_arithmetic_1",
                                    "real_model/products"])
def test_the_committed_tables_are_the_report_of_the_committed_cells(folder):
    """docs/real_model/study.md is `--report` of docs/real_model/cells.jsonl, as committed, and so are the float32
    replication's in docs/real_model/fp32/ and the harder tasks' in docs/real_model/basic_arithmetic_1/ and
    docs/real_model/products/: no figure by hand."""
    docs = SCRIPT.parents[1] / "docs" / folder
    committed = (docs / "study.md").read_text(encoding="utf-8")
    assert committed == study.report(docs / "cells.jsonl", None) + "\n", (
        f"docs/{folder}/study.md is out of date: python benchmarks/real_model.py --report "
        f"--out docs/{folder}/cells.jsonl > docs/{folder}/study.md")


def test_the_settings_hash_reads_the_configs_values_not_its_comments(tmp_path):
    """A cell's id hashes what the config sets: a comment or layout edit keeps every committed cell resumable, a
    changed value starts new cells."""
    base = tmp_path / "a.yaml"
    base.write_text("beta: 0.05\nlearning_rate: 2.0e-5\n")
    commented = tmp_path / "b.yaml"
    commented.write_text("# a note\nlearning_rate: 2.0e-5   # the step size\nbeta:  0.05\n")
    changed = tmp_path / "c.yaml"
    changed.write_text("beta: 0.1\nlearning_rate: 2.0e-5\n")
    digest = study.settings_hash(base, ["max_steps=20"])
    assert study.settings_hash(commented, ["max_steps=20"]) == digest
    assert study.settings_hash(changed, ["max_steps=20"]) != digest
    assert study.settings_hash(base, ["max_steps=40"]) != digest


@pytest.mark.parametrize("folder, argv", [
    ("real_model", ["--task", "chain_sum_2", "--max-steps", "20", "--eval-every", "10"]),
    ("real_model/fp32", ["--task", "chain_sum_2", "--max-steps", "20", "--eval-every", "10", "--set", "bf16=false"]),
    ("real_model/basic_arithmetic_1", ["--task", "basic_arithmetic_1", "--max-steps", "40", "--eval-every", "20"]),
    ("real_model/products", ["--task", "products", "--max-steps", "40", "--eval-every", "20"]),
])
def test_the_committed_cells_are_those_of_the_shipped_config(folder, argv):
    """Every committed cell has the id its documented command gives with configs/smollm2-135m-cpu.yaml as it is
    now: the figures are the shipped config's, and rerunning the command resumes instead of starting over."""
    args = study.parse(argv)
    cells = [json.loads(line) for line in (SCRIPT.parents[1] / "docs" / folder / "cells.jsonl").read_text().splitlines()]
    assert cells and {c["cell"] for c in cells} == {study.cell_id(args, c["method"], c["seed"]) for c in cells}


@pytest.mark.parametrize("native, bf16, warned", [(False, "true", True), (False, "false", False), (True, "true", False)])
def test_emulated_bf16_is_warned_and_each_cell_records_its_precision(chain_sum_model, tmp_path, monkeypatch, capsys, native, bf16, warned):
    """A CPU without native bf16 runs the config's bf16 emulated (several times slower than float32): the study
    says so once, up front, where a cell's own warning would scroll by; each cell records its precision."""
    import agro.models

    monkeypatch.setattr(agro.models, "native_bf16", lambda device_type: native)
    out = tmp_path / "cells.jsonl"
    assert study.main(["--methods", "pi_ref", "--seeds", "0", "--heldout", "4", "--task", "chain_sum_2",
                       "--model", str(chain_sum_model), "--out", str(out), "--runs", str(tmp_path / "runs"),
                       "--set", "prompt_template=raw", "--set", "instruction=null", "--set", "max_prompt_length=128",
                       "--set", "max_completion_length=4", "--set", "num_threads=1", "--set", f"bf16={bf16}"]) == 0
    err = capsys.readouterr().err
    assert ("bf16 is emulated on this CPU" in err) == warned
    assert json.loads(out.read_text())["bf16"] == (bf16 == "true")


def final_cells(*cells: tuple[str, int, float]) -> list[dict]:
    """Cells of (method, seed, final accuracy) on 200 problems, as the report reads them."""
    return [{"method": m, "seed": seed, "accuracy": a, "n": 200, "curve": [[0, 0.1], [20, a]], "kl": 0.0}
            for m, seed, a in cells]


def test_the_two_loss_scales_are_paired_by_seed():
    rows = final_cells(("agro_stale_sum", 0, 0.20), ("agro_stale_sum", 1, 0.40), ("agro_stale_sum", 2, 0.30),
                       ("agro_stale", 0, 0.30), ("agro_stale", 1, 0.35),
                       ("agro_stale", 3, 0.90))  # seed 3 has no sum cell: left out
    lines = study.scale_lines(study.summary(rows))
    std = math.sqrt(((0.1 - 0.025) ** 2 + (-0.05 - 0.025) ** 2) / 1)
    assert lines[2] == (f"| agro_stale_sum → agro_stale | 0,1 | +0.025 ± {std:.3f} | +0.100, -0.050 | 1 of 2 |")
    assert len(lines) == 3  # no on-policy or offline pair


def test_a_goal_against_two_references_takes_the_harder_on_their_own_seeds():
    """AGRO offline 0.40, 0.20, 0.20 (seeds 0–2); KL-PG 0.30 on all three, TOPR 0.32 on seed 0 only. Against TOPR
    (seed 0) AGRO is 0.08 ahead; against KL-PG (seeds 0–2) 0.033 behind: the goal is put to KL-PG, and missed."""
    rows = final_cells(("agro_offline", 0, 0.40), ("agro_offline", 1, 0.20), ("agro_offline", 2, 0.20),
                       ("kl_pg_offline", 0, 0.30), ("kl_pg_offline", 1, 0.30), ("kl_pg_offline", 2, 0.30),
                       ("topr_offline", 0, 0.32), ("grpo_stale", 7, 0.3), ("agro_stale", 6, 0.3))
    text = "\n".join(study.goal_lines(study.summary(rows)))
    assert ("| AGRO offline ≥ best of KL-PG and TOPR offline − 0.03 | agro_offline 0.267 vs kl_pg_offline 0.300 "
            "(-0.033; seeds 0,1,2) | missed | -0.003 |") in text
    assert "| AGRO stale ≥ GRPO stale | no seed in common |" in text
    assert "| AGRO on-policy ≥ GRPO − 0.02 | not run |" in text
