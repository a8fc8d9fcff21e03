"""``python bench/allocation_study.py --smoke``: one tiny cell of the study runs end to end, and what it
writes is consistent (uniform's paired difference is 0 by construction; every run stopped at the
budget; the table lists each rule)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_study_smoke(tmp_path):
    out = tmp_path / "study"
    r = subprocess.run([sys.executable, "bench/allocation_study.py", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "allocation_study.json").read_text())
    assert set(res["tasks"]) == {"rules", "synthetic"}
    rules = res["tasks"]["rules"]["by_algorithm"]["RAFT++"]
    assert set(rules) == {"uniform", "uniform-prompt", "gvm_robust"}
    assert rules["uniform"]["paired_diff"] == 0.0  # the baseline against itself
    for label, row in rules.items():
        assert len(row["finals"]) == 1 and 0.0 <= row["final_mean"] <= 1.0
        assert row["paired_diff"] == row["final_mean"] - rules["uniform"]["final_mean"]
    # one factor at a time: gvm_robust runs Algorithm 1's weighting and is paired with uniform under it
    assert rules["gvm_robust"]["weighting"] == rules["uniform-prompt"]["weighting"] == "prompt"
    same = rules["gvm_robust"]["vs_uniform_same_weighting"]
    assert same["baseline"] == "uniform-prompt"
    assert same["mean"] == rules["gvm_robust"]["final_mean"] - rules["uniform-prompt"]["final_mean"]
    w = res["tasks"]["rules"]["weighting_only"]["RAFT++"]
    assert w["mean"] == rules["uniform-prompt"]["final_mean"] - rules["uniform"]["final_mean"]
    assert rules["uniform"]["pilot_token_share"] == 0.0 and rules["gvm_robust"]["pilot_token_share"] > 0.0
    for run in (out / "rules").iterdir():  # every run spent its budget (4,000 tokens), overshoot < one M-step
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert 4_000 <= last["tokens"] < 8_000, (run.name, last["tokens"])
    synth = res["tasks"]["synthetic"]["by_algorithm"]["Lemma-1 SGD"]
    assert synth["uniform-tokens"]["paired_diff"] == 0.0 and len(synth["gvm_robust"]["finals"]) == 2
    # uniform under each M-step weighting; the rules run Lemma 1's and are paired with uniform under it
    assert {synth[f"uniform{x}"]["weighting"] for x in ("", "-prompt", "-tokens")} == {"lemma1", "prompt", "tokens"}
    robust, lemma1 = np.array(synth["gvm_robust"]["finals"]), np.array(synth["uniform"]["finals"])
    assert synth["gvm_robust"]["vs_uniform_same_weighting"]["mean"] == pytest.approx((robust - lemma1).mean(), abs=1e-12)
    w = res["tasks"]["synthetic"]["weighting_only"]["Lemma-1 SGD"]
    assert w["mean"] == pytest.approx(synth["uniform"]["final_mean"] - synth["uniform-tokens"]["final_mean"], abs=1e-12)
    assert len({tuple(synth[f"uniform{x}"]["finals"]) for x in ("", "-prompt", "-tokens")}) == 3  # three different runs
    # N' = 8 pilots for 8 prompts against 4 x 8 x 5 training samples per E-step: 64 / 224
    assert synth["gvm_robust"]["pilot_sample_share"] == pytest.approx(64 / 224)
    md = (out / "allocation_study.md").read_text()
    assert "| RAFT++ | gvm_robust |" in md and "Pre-registration" in md
    assert (out / "allocation_study.png").stat().st_size > 10_000


def test_demo_robust_arm_uses_the_preregistered_settings():
    """The demo's gvm_robust arms run with exactly the settings the study pre-registered."""
    sys.path.insert(0, str(ROOT / "bench"))
    import allocation_study

    from gvm_mini.demo.runner import ROBUST_OPTIONS

    assert ROBUST_OPTIONS == {**allocation_study.ROBUST, **allocation_study.PREREGISTERED}
    # and a config that names the rule alone runs the same settings
    from gvm_mini.config import Config, validate

    cfg = validate(Config(allocation="gvm_robust"))
    assert {k: getattr(cfg, k) for k in ROBUST_OPTIONS} == ROBUST_OPTIONS


def _study_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("allocation_study", ROOT / "bench" / "allocation_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def _rm_arm(finals: dict, weighting: str, pilot_tokens: float = 0.0) -> dict:
    acc = {"generated_tokens": {"mean": 16_000.0}, "pilot_tokens": {"mean": pilot_tokens},
           "generated_samples": {"mean": 1_000.0}, "pilot_samples": {"mean": pilot_tokens / 16}, "m_steps": {"mean": 10.0}}
    return {"seeds": sorted(int(s) for s in finals), "final_acc_per_seed": finals, "start_acc": {"mean": 0.2},
            "weighting": weighting, "accounting": acc, "tokens_to_baseline_final": None}


def test_smollm2_task_pairs_the_realmodel_study_by_seed_and_weighting(tmp_path):
    """The SmolLM2 task reads bench/realmodel_study.py's stored results: per-seed finals, each rule paired with
    the uniform arm of its own weighting over the seeds every arm ran, the weighting alone as its own row.
    By hand (seeds 0, 1; seed 2 only in uniform's arm, so not paired): uniform 0.6, 0.7; uniform-prompt 0.65,
    0.7 -> weighting +0.025 (SE over seeds 0.025); gvm 0.5, 0.7 -> -0.05 +- 0.05 against uniform;
    gvm_robust 0.65, 0.8 -> +0.05 +- 0.05 against uniform-prompt, +0.075 +- 0.025 against token-mean uniform."""
    study = _study_module()
    arms = {"uniform-RAFT++": _rm_arm({"0": 0.6, "1": 0.7, "2": 0.9}, "tokens"),
            "uniform-RAFT++-prompt": _rm_arm({"0": 0.65, "1": 0.7}, "prompt"),
            "GVM-RAFT++": _rm_arm({"0": 0.5, "1": 0.7}, "tokens", 4_000.0),
            "gvm_robust-RAFT++": _rm_arm({"0": 0.65, "1": 0.8}, "prompt", 2_000.0)}
    path = tmp_path / "realmodel_study.json"
    path.write_text(json.dumps({"arms": arms, "budget_tokens": 16_000, "command": "python bench/realmodel_study.py",
                                "commit": "abc1234", "cpu": "some CPU",
                                "design": {"eval_k": 2, "eval_prompts": 256, "top_p": 0.9}}))
    res = study._smollm2(path)
    rows = res["by_algorithm"]["RAFT++"]
    assert res["seeds"] == [0, 1] and res["not_run"] == ["knapsack+history", "filter_extremes"]
    assert rows["uniform"]["finals"] == [0.6, 0.7]
    w = res["weighting_only"]["RAFT++"]
    assert w["mean"] == pytest.approx(0.025) and w["se"] == pytest.approx(0.025)
    assert rows["gvm"]["vs_uniform_same_weighting"]["baseline"] == "uniform"
    assert rows["gvm"]["vs_uniform_same_weighting"]["mean"] == pytest.approx(-0.05)
    assert rows["gvm"]["vs_uniform_same_weighting"]["se"] == pytest.approx(0.05)
    robust = rows["gvm_robust"]
    assert robust["vs_uniform_same_weighting"]["baseline"] == "uniform-prompt"
    assert robust["vs_uniform_same_weighting"]["mean"] == pytest.approx(0.05)
    assert robust["vs_uniform_same_weighting"]["se"] == pytest.approx(0.05)
    assert robust["paired_diff"] == pytest.approx(0.075) and robust["paired_se"] == pytest.approx(0.025)
    assert rows["gvm"]["pilot_token_share"] == 0.25  # 4,000 of 16,000 tokens
    assert "2 seeds" in res["n_pairs"] and "abc1234" in res["provenance"]
    del arms["uniform-RAFT++-prompt"]
    path.write_text(json.dumps({"arms": arms, "budget_tokens": 16_000, "command": "x", "commit": "y",
                                "design": {"eval_k": 2, "eval_prompts": 256, "top_p": 0.9}}))
    with pytest.raises(SystemExit, match="uniform-prompt"):
        study._smollm2(path)
    with pytest.raises(SystemExit, match="realmodel_study.py"):
        study._smollm2(tmp_path / "missing.json")


def test_stored_smollm2_row_matches_the_realmodel_study():
    """allocation_study.json's smollm2 task is the real-model study's pairs, re-derived: same means and SEs."""
    stored = json.loads((ROOT / "bench" / "results" / "allocation_study.json").read_text())["tasks"]["smollm2"]
    rm = json.loads((ROOT / "bench" / "results" / "realmodel_study.json").read_text())["arms"]
    study = _study_module()
    for label, arm in study.REALMODEL_ARMS.items():
        row = stored["by_algorithm"]["RAFT++"][label]
        if "vs_uniform_same_weighting" in row:
            for key in ("mean", "se"):
                assert row["vs_uniform_same_weighting"][key] == pytest.approx(rm[arm]["vs_uniform_same_weighting"][key], abs=1e-12)
    w = stored["weighting_only"]["RAFT++"]
    assert w["mean"] == pytest.approx(rm["uniform-RAFT++-prompt"]["vs_uniform_tokens"]["mean"], abs=1e-12)


def test_passes_counts_prompt_visits_per_run_and_prompt():
    """Two runs over 64 prompts with 96 + 32 + 64 = 192 visits in all: 192 / (2 x 64) = 1.5 passes."""
    sys.path.insert(0, str(ROOT / "bench"))
    import allocation_study

    mech = {"A": {"visits": 96}, "B": {"visits": 32}, "C": {"visits": 64}}
    assert allocation_study.passes(mech, runs=2, prompts=64) == 1.5
    assert allocation_study.passes(None, runs=2, prompts=64) is None


def test_map_smoke_has_a_one_pass_column(tmp_path):
    """``--map --smoke``: the one-pass cell runs at its own (smaller) budget, and uniform's measured passes
    over the 408 training prompts (16 held out) stay below one there; every rule is paired with its own weighting's uniform."""
    out = tmp_path / "map"
    r = subprocess.run([sys.executable, "bench/allocation_study.py", "--map", "--smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "allocation_map.json").read_text())
    assert list(res["cells"]) == ["2/8 extreme, 1 pass", "2/8 extreme, ~2 epochs"]
    one, two = res["cell_design"]["2/8 extreme, 1 pass"], res["cell_design"]["2/8 extreme, ~2 epochs"]
    assert one["budget_tokens"] == 2_000 and two["budget_tokens"] == 4_000 and one["train_prompts"] == 408
    assert 0 < one["passes_uniform"] < 1 and one["passes_uniform"] < two["passes_uniform"]
    for run in (out / "map" / "ext2of8-1pass").iterdir():  # the one-pass cell stopped at its own budget
        last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
        assert 2_000 <= last["tokens"] < 4_000, (run.name, last["tokens"])
    assert res["cells"]["2/8 extreme, 1 pass"]["gvm"]["vs_uniform_same_weighting"]["baseline"] == "uniform"
    assert "| 2/8 extreme, 1 pass | 2,000 | 408 |" in (out / "allocation_map.md").read_text()
