"""Demo pieces (the deliberate slips of the warm start) and the --dry-run plan."""

import random
import re

import pytest

from gvm_mini.config import Config, load_config
from gvm_mini.data import Problem
from gvm_mini.demo import _slipped, demo_config
from gvm_mini.plan import make_plan


def test_slipped_solution_has_exactly_one_wrong_step():
    p = Problem("Compute 12+7-3.", "16", "12+7=19. 19-3=16. The answer is \\boxed{16}.",
                {"expression": "12+7-3"})
    for seed in range(20):
        text = _slipped(p, random.Random(seed))
        steps = re.findall(r"(-?\d+)([+-])(\d+)=(-?\d+)", text)
        wrong = [s for s in steps if (int(s[0]) + int(s[2]) if s[1] == "+" else int(s[0]) - int(s[2])) != int(s[3])]
        assert len(steps) == 2 and len(wrong) == 1
        assert int(steps[0][3]) == int(steps[1][0])  # the slip is carried to the next step
        assert text.endswith(f"\\boxed{{{steps[-1][3]}}}.") and steps[-1][3] != "16"


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
