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
    assert synth["uniform"]["paired_diff"] == 0.0 and len(synth["gvm_robust"]["finals"]) == 2
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


def _fake_run(d: Path, final: float, pilot: int) -> None:
    d.mkdir(parents=True)
    recs = [{"kind": "eval", "tokens": 0, "avg_at_k": 0.1},
            {"kind": "eval", "tokens": 6000, "avg_at_k": final},
            {"kind": "iteration", "tokens": 6000, "pilot_tokens": pilot,
             "wall": {"pilot": 1.0, "gradnorm": 1.0, "allocate": 0.0, "rollout": 5.0, "update": 3.0}}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "done.json").write_text("{}")


def test_smollm2_task_pairs_realmodel_runs_by_seed(tmp_path):
    """The SmolLM2 task reads bench/realmodel_curve.py's run directories: finals at the 5,500-token budget
    (interpolated between evaluations), paired by seed, only over seeds every rule finished."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("allocation_study", ROOT / "bench" / "allocation_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    finals = {"uniform": (0.7, 0.4), "gvm": (0.58, 0.4), "gvm_robust": (0.7, 0.46),
              "knapsack+history": (0.7, 0.4), "filter_extremes": (0.1, 0.1)}
    for rule, arm in study.SMOLLM2_ARMS.items():
        for s, f in enumerate(finals[rule]):
            _fake_run(tmp_path / arm / f"seed{s}", f, 0 if rule == "uniform" else 1500)
    _fake_run(tmp_path / "uniform-RAFT++" / "seed2", 0.9, 0)  # a seed only uniform finished: not paired
    res = study._smollm2(tmp_path)
    assert res["seeds"] == [0, 1]
    rows = res["by_algorithm"]["RAFT++"]
    at_budget = lambda f: 0.1 + (f - 0.1) * 5500 / 6000  # noqa: E731  (linear between the two evaluations)
    assert np.allclose(rows["uniform"]["finals"], [at_budget(0.7), at_budget(0.4)], rtol=0, atol=1e-12)
    assert abs(rows["gvm"]["paired_diff"] - (-0.12 * 5500 / 6000) / 2) < 1e-12
    assert abs(rows["gvm_robust"]["paired_diff"] - (0.06 * 5500 / 6000) / 2) < 1e-12
    assert abs(rows["knapsack+history"]["paired_diff"]) < 1e-12
    assert rows["gvm"]["pilot_token_share"] == 0.25  # 1,500 of 6,000 tokens
    assert "2 seeds" in res["n_pairs"]
    import shutil

    shutil.rmtree(tmp_path / "Filter-RAFT++")
    try:
        study._smollm2(tmp_path)
    except SystemExit as e:
        assert "Filter-RAFT++" in str(e) and "--resume" in str(e)
    else:
        raise AssertionError("a rule with no finished run must stop the task with a message")


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
