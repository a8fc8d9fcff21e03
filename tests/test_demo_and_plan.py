"""Demo pieces (the deliberate slips of the warm start) and the --dry-run plan."""

import random
import re

import pytest

from gvm_mini.config import Config, load_config
from gvm_mini.demo import demo_config, slipped_solution
from gvm_mini.plan import make_plan


def _wrong_steps(text):
    steps = re.findall(r"(-?\d+)([+-])(\d+)=(-?\d+)", text)
    return steps, [s for s in steps if (int(s[0]) + int(s[2]) if s[1] == "+" else int(s[0]) - int(s[2])) != int(s[3])]


def test_slipped_solution_without_slips_is_the_worked_solution():
    assert slipped_solution("7-5+3", random.Random(0), 0.0, 0.0) == "7-5=2. 2+3=5. \\boxed{5}"


def test_slipped_solution_carries_an_off_by_one_slip_to_the_answer():
    # slip probability 1 at every step: each step is off by one from its (slipped) left operand
    text = slipped_solution("7-5+3", random.Random(0), 1.0, 0.0)
    steps, wrong = _wrong_steps(text)
    assert len(steps) == 2 and len(wrong) == 2
    assert int(steps[0][3]) == int(steps[1][0])  # the slipped value is carried into the next step
    assert all(abs(int(s[3]) - (int(s[0]) + int(s[2]) if s[1] == "+" else int(s[0]) - int(s[2]))) == 1 for s in steps)
    assert text.endswith(f"\\boxed{{{steps[-1][3]}}}")


def test_slip_rate_grows_along_the_chain():
    # slip_base + slip_growth * j = 0.05, 0.35, 0.65 for steps j = 0, 1, 2 of "1+1+1+1"
    rng = random.Random(0)
    counts = [0, 0, 0]
    for _ in range(4000):
        steps = re.findall(r"(-?\d+)([+-])(\d+)=(-?\d+)", slipped_solution("1+1+1+1", rng, 0.05, 0.3))
        for j, s in enumerate(steps):
            counts[j] += int(s[3]) != int(s[0]) + int(s[2])
    assert [round(c / 4000, 2) for c in counts] == pytest.approx([0.05, 0.35, 0.65], abs=0.03)


def test_demo_config_is_equal_budget_across_methods(tmp_path):
    from gvm_mini.demo import METHODS

    for task in ("rules", "chains"):
        for quick in (True, False):
            cfgs = [demo_config(tmp_path, alg, alloc, 0, quick=quick, task=task) for _, alg, alloc in METHODS]
            assert len({c.token_budget for c in cfgs}) == 1
            assert len({(c.samples_per_prompt, c.prompts_per_step, c.eval_size, c.test_size, c.learning_rate,
                         c.max_completion_length, c.dataset) for c in cfgs}) == 1


def test_rule_sft_mixture_writes_the_correct_procedure_at_its_share():
    from gvm_mini.demo.task import rule_problems
    from gvm_mini.demo import RuleSFT, rule_sft_solution

    train, _ = rule_problems(16, seed=1234)
    g = next(p for p in train if p.meta["family"] == "G")
    h = next(p for p in train if p.meta["family"] == "H")
    rng = random.Random(0)
    sft = RuleSFT()
    outs = [rule_sft_solution(g, rng, sft) for _ in range(20000)]
    share = sum(o.startswith("dbl:") for o in outs) / len(outs)
    assert share == pytest.approx(dict(sft.shares)["G"], abs=0.005)  # 0.04 +- 3.5 standard errors
    assert {o.split(":")[0] for o in outs} == {"dbl", *dict(sft.wrong)["G"]}
    # family H's procedure (mul) never appears: its pass rate starts at 0
    assert not any(rule_sft_solution(h, rng, sft).startswith("mul:") for _ in range(2000))
    always = RuleSFT(shares=tuple((f, 1.0) for f, _ in sft.shares))
    assert rule_sft_solution(g, rng, always) == g.solution


def test_plan_counts_by_hand():
    cfg = load_config("configs/tiny.yaml")
    plan = make_plan(cfg)
    # 8 prompts/step x 2 steps = 16 prompts; pilots 4 x 16 = 64; budget 4 x 16 = 64
    assert plan["prompts_per_iteration"] == 16
    assert plan["pilot_samples_per_iteration"] == 64 and plan["training_samples_per_iteration"] == 64
    assert plan["max_generated_tokens_per_iteration"] == 128 * 32
    assert plan["parameters"] == 164_544  # tiny-qwen2 (tests/test_models.py derives it by hand)
    uni = make_plan(Config(allocation="uniform"))
    assert uni["pilot_samples_per_iteration"] == 0


def test_plan_of_a_hub_model_uses_its_shape_twin():
    plan = make_plan(load_config("configs/qwen2.5-math-1.5b_gvm-raftpp.yaml"))
    assert plan["model_source"] == "shape twin qwen2.5-math-1.5b"
    assert plan["parameters"] == 1_543_714_304
    # bf16 weights: 1,543,714,304 x 2 bytes = 2.875 GiB
    assert plan["weights_gb"] == pytest.approx(2.88, abs=0.01)


@pytest.mark.slow
def test_quick_demo_end_to_end_with_a_short_warm_start(tmp_path):
    """The whole demo pipeline (warm start, six methods in two worker processes, curves, per-family
    curves, allocation picture, table) with a 30-step warm start: checks the plumbing and the
    equal-budget accounting."""
    import json

    from gvm_mini.demo import METHODS, QUICK_BUDGET, RuleSFT, demo_config, run_demo

    c = demo_config(tmp_path, "grpo", "gvm", 0, quick=True)
    # the budget is checked after every M-step; the pilot of the last iteration may also cross it
    overshoot = (c.num_pilot * c.prompts_per_iteration + c.budget_per_step) * c.max_completion_length
    summary = run_demo(tmp_path / "demo", quick=True, cache_root=tmp_path / "cache", workers=2, sft=RuleSFT(steps=30))
    for name in ("curves.png", "families.png", "allocation.png", "summary.md", "summary.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    methods = summary["methods"]
    assert list(methods) == [m[0] for m in METHODS]
    for label, s in methods.items():
        assert QUICK_BUDGET <= s["tokens"] < QUICK_BUDGET + overshoot
        assert (s["pilot_tokens"] > 0) == (s["allocation"] != "uniform")
        assert 0 <= s["final_acc_mean"] <= 1
        assert set(s["final_by_family"]) == set("ABCDEFGH")
    stored = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert stored["wall_seconds"]["total"] > 0 and stored["budget_tokens"] == QUICK_BUDGET
    assert "| GVM-GRPO |" in (tmp_path / "demo" / "summary.md").read_text()
    # each Robust arm is paired with uniform under its own weighting, and that one with plain uniform
    assert methods["Robust-GRPO"]["vs_uniform_same_weighting"]["baseline"] == "Prompt-GRPO"
    assert methods["Prompt-RAFT++"]["vs_uniform_same_weighting"]["baseline"] == "RAFT++"


def _fake_run(d, evals, *, pilot_tokens=0, n=None):
    """A run directory with the records summarize_runs reads: eval records at (tokens, M-steps, acc)."""
    import json

    d.mkdir(parents=True)
    wall = {"pilot": 1.0 if pilot_tokens else 0.0, "gradnorm": 0.0, "allocate": 0.0, "rollout": 3.0, "reward": 0.0,
            "update": 4.0, "eval": 5.0, "checkpoint": 0.0}
    recs = []
    for tokens, step, acc in evals:
        recs.append({"kind": "step", "tokens": tokens, "truncated_frac": 0.0})
        recs.append({"kind": "eval", "tokens": tokens, "global_step": step, "wall_train": step, "avg_at_k": acc,
                     "truncated_frac": 0.0, "by_group": {"A": acc, "B": acc / 2}})
    recs[-1].update(pilot_tokens=pilot_tokens, updates=10, wall=wall)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    allocs = [{"iteration": 0, "p": [0.5, 0.0], "G": [1.0, 0.0], "n": n or [8, 8], "difficulty": [0, 1]}]
    (d / "allocations.jsonl").write_text("".join(json.dumps(a) + "\n" for a in allocs))


def test_summary_reads_every_arm_at_equal_tokens_by_hand(tmp_path):
    """Interpolated at the budget, not read at the last point; ratios on the mean curves; by hand."""
    from gvm_mini.demo import summarize_runs

    # uniform: acc 0.2 -> 0.4 -> 0.6 at 0, 1000, 2000 tokens (M-steps 0, 4, 8); budget 1500 -> 0.5 for both seeds
    for s in (0, 1):
        _fake_run(tmp_path / f"RAFT++-s{s}", [(0, 0, 0.2), (1000, 4, 0.4), (2000, 8, 0.6)])
    # GVM: seed 0 reaches 0.6 at 1000 tokens (M-step 2), seed 1 0.4; at 1500: 0.7 and 0.5
    _fake_run(tmp_path / "GVM-RAFT++-s0", [(0, 0, 0.2), (1000, 2, 0.6), (2000, 4, 0.8)], pilot_tokens=500, n=[16, 0])
    _fake_run(tmp_path / "GVM-RAFT++-s1", [(0, 0, 0.2), (1000, 2, 0.4), (2000, 4, 0.6)], pilot_tokens=500, n=[16, 0])
    s = summarize_runs(tmp_path, ["RAFT++", "GVM-RAFT++"], [0, 1], budget=1500)
    u, g = s["methods"]["RAFT++"], s["methods"]["GVM-RAFT++"]
    assert u["final_acc_mean"] == pytest.approx(0.5) and u["final_acc_std"] == pytest.approx(0.0)
    assert g["final_acc_mean"] == pytest.approx(0.6) and g["final_acc_std"] == pytest.approx(0.1)
    assert g["final_by_family"] == pytest.approx({"A": 0.6, "B": 0.3})
    # GVM's mean curve 0.2 -> 0.5 -> 0.7 reaches uniform's 0.5 at 1000 tokens; uniform itself at 1500
    assert u["tokens_to_baseline_final"] == pytest.approx(1500, abs=10)
    assert g["tokens_to_baseline_final"] == pytest.approx(1000, abs=10)
    assert g["tokens_ratio_vs_baseline"] == pytest.approx(1.5, abs=0.02)
    # M-steps: uniform reaches 0.5 at M-step 6; GVM's mean curve over M-steps reaches it at 2
    assert g["m_steps_ratio_vs_baseline"] == pytest.approx(3.0, abs=0.1)
    # equal M-steps = the fewest any arm made inside the budget: GVM's 3 (1500 tokens on 0->2->4 steps)
    assert s["equal_m_steps"] == pytest.approx(3.0)
    assert g["dropped_prompt_frac"] == pytest.approx(0.5)
    assert g["gvm_stage_share_of_train_wall"] == pytest.approx(1.0 / 8.0)
    for name in ("summary.md", "summary.json", "curves.png", "families.png", "allocation.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_summary_pairs_each_arm_with_uniform_under_its_own_weighting_by_hand(tmp_path):
    """Robust-RAFT++'s baseline is Prompt-RAFT++ (uniform, per-prompt weighting), whose own is RAFT++: final
    accuracies at the budget (1000 tokens) per seed, differences paired by seed, SE = sd / sqrt(2)."""
    from gvm_mini.demo import summarize_runs

    finals = {"RAFT++": (0.50, 0.60), "Prompt-RAFT++": (0.40, 0.60), "Robust-RAFT++": (0.45, 0.50)}
    for lab, accs in finals.items():
        for s, acc in enumerate(accs):
            _fake_run(tmp_path / f"{lab}-s{s}", [(0, 0, 0.2), (1000, 4, acc)], pilot_tokens=100 if lab.startswith("Robust") else 0)
    out = summarize_runs(tmp_path, list(finals), [0, 1], budget=1000)["methods"]
    rob, pro = out["Robust-RAFT++"], out["Prompt-RAFT++"]
    # Robust - Prompt: +0.05, -0.10 -> mean -0.025, sd 0.10607, SE 0.075
    assert rob["vs_uniform_same_weighting"]["baseline"] == "Prompt-RAFT++"
    assert rob["vs_uniform_same_weighting"]["per_seed"] == pytest.approx([0.05, -0.10])
    assert rob["vs_uniform_same_weighting"]["mean"] == pytest.approx(-0.025)
    assert rob["vs_uniform_same_weighting"]["se"] == pytest.approx(0.075)
    # Robust - RAFT++ (two factors): -0.05, -0.10 -> -0.075 +- 0.025
    assert rob["vs_uniform_tokens"]["mean"] == pytest.approx(-0.075) and rob["vs_uniform_tokens"]["se"] == pytest.approx(0.025)
    # the weighting alone: Prompt - RAFT++ = -0.10, 0.00 -> -0.05 +- 0.05
    assert pro["vs_uniform_same_weighting"]["baseline"] == "RAFT++"
    assert pro["vs_uniform_same_weighting"]["mean"] == pytest.approx(-0.05) and pro["vs_uniform_same_weighting"]["se"] == pytest.approx(0.05)
    assert "vs_uniform_same_weighting" not in out["RAFT++"]
    table = (tmp_path / "summary.md").read_text()
    assert "| Robust-RAFT++ | Prompt-RAFT++ | -0.025 ± 0.075 | -0.075 ± 0.025 |" in table
    assert "| Prompt-RAFT++ | RAFT++ | -0.050 ± 0.050 | -0.050 ± 0.050 |" in table


def test_summary_gives_no_ratio_when_the_baseline_did_not_learn(tmp_path):
    from gvm_mini.demo import MIN_GAIN, summarize_runs

    _fake_run(tmp_path / "RAFT++-s0", [(0, 0, 0.2), (2000, 8, 0.2 + MIN_GAIN / 2)])
    _fake_run(tmp_path / "GVM-RAFT++-s0", [(0, 0, 0.2), (2000, 4, 0.9)], pilot_tokens=500)
    s = summarize_runs(tmp_path, ["RAFT++", "GVM-RAFT++"], [0], budget=2000)
    assert "tokens_ratio_vs_baseline" not in s["methods"]["GVM-RAFT++"]
    assert "n/a: baseline gained < 0.05" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("point", ["summary.md_partial", "summary.json_partial", "curves.png_written"])
def test_a_kill_inside_a_summary_write_leaves_no_torn_file_and_a_rerun_matches(tmp_path, point):
    """SIGKILL inside the demo's summary / figure writes: the file is absent (or whole), the leftover
    temporary is cleaned up by the next run, whose summary equals an uninterrupted one."""
    import os
    import subprocess
    import sys

    from gvm_mini.rundir import clean_leftovers

    for root in (tmp_path / "killed", tmp_path / "clean"):
        for s in (0, 1):
            _fake_run(root / f"RAFT++-s{s}", [(0, 0, 0.2), (1000, 4, 0.4), (2000, 8, 0.6)])
            _fake_run(root / f"GVM-RAFT++-s{s}", [(0, 0, 0.2), (1000, 2, 0.5), (2000, 4, 0.7)], pilot_tokens=500)
    code = ("import sys; from pathlib import Path; from gvm_mini.demo import summarize_runs; "
            "summarize_runs(Path(sys.argv[1]), ['RAFT++', 'GVM-RAFT++'], [0, 1], budget=1500)")
    env = {**os.environ, "GVM_MINI_CRASH_AT": point, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "killed")], env=env, capture_output=True, text=True)
    assert r.returncode == -9, r.stderr[-1000:]  # SIGKILL at the named point
    name = point.rsplit("_", 1)[0]
    assert not (tmp_path / "killed" / name).exists()  # the first write of it never became visible
    left = [p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(f".{name}.tmp")]
    assert left, "the interrupted write left its temporary behind"
    assert clean_leftovers(tmp_path / "killed") == left
    env.pop("GVM_MINI_CRASH_AT")
    for root in ("killed", "clean"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / root)], env=env, check=True, capture_output=True)
    for f in ("summary.json", "summary.md"):
        assert (tmp_path / "killed" / f).read_text() == (tmp_path / "clean" / f).read_text()
    assert not [p for p in (tmp_path / "killed").iterdir() if ".tmp" in p.name]


def test_one_seed_table_shows_no_spread(tmp_path):
    """With one seed (``demo --quick``) there is no spread: the table gives the mean alone, not ``± 0.000``."""
    from gvm_mini.demo import summarize_runs

    _fake_run(tmp_path / "RAFT++-s0", [(0, 0, 0.2), (1000, 4, 0.5)])
    summarize_runs(tmp_path, ["RAFT++"], [0], budget=1000)
    table = (tmp_path / "summary.md").read_text()
    assert "one seed (no spread)" in table and "| RAFT++ | 0.200 | 0.500 | " in table and "±" not in table
