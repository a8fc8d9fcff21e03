"""The hand-off to the official verl pipeline: the same E-step as ``train``, written as a JSON list of
sample sizes indexed by dataset row."""

import json

import numpy as np
import pytest

import gvm_mini.rewards as rewards
from gvm_mini.cli import main
from gvm_mini.config import Config
from gvm_mini.estep import Counts, Estimates, allocate_budget
from gvm_mini.verl_export import PromptSetAllocation, official_filename, write_sample_sizes


def test_official_name_and_row_indexed_list(tmp_path):
    cfg = Config(samples_per_prompt=4)
    assert official_filename(cfg) == "sample_sizes_sample4_a0.001_b2.0.json"
    # rows 0, 2, 3 (row 1 had no answer and was skipped by the loader): N = 4 * 3 = 12
    # weights 1/sqrt(0.5+0.002)=1.4114, 0 (p=0), 1/sqrt(0.125+0.008)=2.7420 -> 12*[0.340, 0, 0.660]
    # = [4.08, 0, 7.92] -> [4, 0, 8]
    p, G = np.array([0.5, 0.0, 0.125]), np.ones(3)
    est = Estimates(p, G, np.ones(3), G, np.zeros(3, bool), None, None, Counts.zeros(3))
    n = allocate_budget(cfg, est, 12).n
    assert n.tolist() == [4, 0, 8]
    result = PromptSetAllocation(p, G, np.full(3, 5.0), n, pilot_tokens=60, fallback_chunks=0)
    summary = write_sample_sizes(cfg, result, tmp_path, rows=[0, 2, 3])
    assert json.loads((tmp_path / official_filename(cfg)).read_text()) == [4, 0, 0, 8]
    assert summary["budget"] == 12 and summary["dropped"] == 1 and summary["pilot_tokens"] == 60
    stats = [json.loads(x) for x in (tmp_path / "pilot_stats.jsonl").read_text().splitlines()]
    assert [s["index"] for s in stats] == [0, 2, 3] and [s["n"] for s in stats] == [4, 0, 8]
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left behind


@pytest.mark.parametrize("rule", ["gvm", "gvm_tokens", "knapsack"])
def test_allocate_gives_what_train_allocates_in_its_first_iteration(tmp_path, monkeypatch, rule):
    """``python -m gvm_mini allocate`` and iteration 0 of ``train`` on one seed: the same prompts get
    the same n_i (E-step with ``estimator: bayes``; ``gvm_tokens`` also needs the per-prompt costs).
    The verifier's answer depends on the gold answer (always / on even-length completions / never), so
    pass rates spread and n_i is not uniform."""

    def verify(text, ans):
        kind = int(ans) % 3 if ans.lstrip("-").isdigit() else 1
        return float(kind == 0 or (kind == 1 and len(text) % 2 == 0))

    monkeypatch.setattr(rewards, "get_verifier", lambda name: verify)
    common = ["--config", "configs/tiny.yaml", "--set", f"allocation={rule}", "--set", "estimator=bayes",
              "--set", "iterations=1", "--set", "eval_every=0", "--set", "progress=false", "--set", "train_size=32"]
    assert main(["allocate", *common, "--out", str(tmp_path / "alloc")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "train")]) == 0
    first = json.loads((tmp_path / "train" / "allocations.jsonl").read_text().splitlines()[0])
    exported = {s["index"]: s for s in map(json.loads, (tmp_path / "alloc" / "pilot_stats.jsonl").read_text().splitlines())}
    n_train = first["n"]
    n_alloc = [exported[i]["n"] for i in first["prompt_ids"]]
    assert n_alloc == n_train
    assert [exported[i]["p"] for i in first["prompt_ids"]] == pytest.approx(first["p"], abs=0)
    assert len(set(n_train)) > 1  # a real allocation, not the uniform fallback
    sizes = json.loads((tmp_path / "alloc" / "sample_sizes_sample4_a0.001_b2.0.json").read_text())
    assert len(sizes) == 32  # two chunks of 16 prompts
    if rule != "gvm_tokens":  # gvm_tokens spends a token budget, not a sample count
        assert sum(sizes) == 4 * 32
