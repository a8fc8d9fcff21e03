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
    cfgs = [demo_config(tmp_path, alg, alloc, 0, quick=True) for alg, alloc in
            [("raftpp", "uniform"), ("raftpp", "gvm"), ("grpo", "uniform"), ("grpo", "gvm")]]
    assert len({c.token_budget for c in cfgs}) == 1
    assert len({(c.samples_per_prompt, c.prompts_per_step, c.eval_size, c.learning_rate) for c in cfgs}) == 1


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
    """The whole demo pipeline (warm start, four methods in two worker processes, curves, allocation
    picture, table) with a 30-step warm start: checks the plumbing and the equal-budget accounting."""
    import json

    from gvm_mini.demo import METHODS, QUICK_BUDGET, SFT, demo_config, run_demo

    c = demo_config(tmp_path, "grpo", "gvm", 0, quick=True)
    per_iteration = (c.num_pilot + c.samples_per_prompt) * c.prompts_per_iteration * c.max_completion_length
    summary = run_demo(tmp_path / "demo", quick=True, cache_root=tmp_path / "cache", workers=2, sft=SFT(steps=30))
    for name in ("curves.png", "allocation.png", "summary.md", "summary.json"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    methods = summary["methods"]
    assert list(methods) == [m[0] for m in METHODS]
    for label, s in methods.items():
        # every run stops after the iteration that reaches the budget: at most one iteration over it
        assert QUICK_BUDGET <= s["tokens"] < QUICK_BUDGET + per_iteration
        assert (s["pilot_tokens"] > 0) == label.startswith("GVM")
        assert 0 <= s["final_acc_mean"] <= 1
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["wall_seconds"]["total"] > 0
    assert "| GVM-GRPO |" in (tmp_path / "demo" / "summary.md").read_text()
