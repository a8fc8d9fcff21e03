"""The hand-off to the official verl pipeline: a JSON list of sample sizes indexed by dataset row."""

import json

import numpy as np

from gvm_mini.config import Config
from gvm_mini.verl_export import export_allocation, official_filename


def test_official_name_and_row_indexed_list(tmp_path):
    cfg = Config(samples_per_prompt=4)
    assert official_filename(cfg) == "sample_sizes_sample4_a0.001_b2.0.json"
    # rows 0, 2, 3 (row 1 had no answer and was skipped by the loader): N = 4 * 3 = 12
    # weights 1/sqrt(0.5+0.002)=1.4114, 0 (p=0), 1/sqrt(0.125+0.008)=2.7420 -> 12*[0.340, 0, 0.660]
    # = [4.08, 0, 7.92] -> [4, 0, 8]
    summary = export_allocation(cfg, np.array([0.5, 0.0, 0.125]), np.ones(3), tmp_path, rows=[0, 2, 3])
    sizes = json.loads((tmp_path / official_filename(cfg)).read_text())
    assert sizes == [4, 0, 0, 8]
    assert summary["budget"] == 12 and summary["dropped"] == 1
    stats = [json.loads(x) for x in (tmp_path / "pilot_stats.jsonl").read_text().splitlines()]
    assert [s["index"] for s in stats] == [0, 2, 3] and [s["n"] for s in stats] == [4, 0, 8]
