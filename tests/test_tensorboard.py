"""``report_to: tensorboard``: the event file holds the same numbers as ``metrics.jsonl``.

TensorBoard is an optional extra (``pip install 'gvm-mini[tensorboard]'``); the round-trip test is
skipped without it, the missing-extra message is tested either way.
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from gvm_mini.config import ConfigError, load_config, replace

TINY = dict(model="tiny-qwen2", lora=True, lora_r=4, lora_alpha=8, train_size=16, test_size=4, iterations=2,
            prompts_per_step=4, steps_per_iteration=2, num_pilot=2, samples_per_prompt=4,
            max_completion_length=8, mini_batch_size=8, eval_samples=1, progress=False, system_prompt=None,
            instruction="", reset_optimizer=False)


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_report_to_is_validated():
    with pytest.raises(ConfigError, match="report_to must be one of none, tensorboard; got 'wandb'"):
        load_config(None, ["report_to=wandb"])
    assert load_config(None).report_to == "none"  # the default writes no event file


def test_missing_tensorboard_is_one_line(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    from gvm_mini.cli import main

    rc = main(["train", "--out", str(tmp_path / "out"), "--set", "report_to=tensorboard"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1
    assert "report_to=tensorboard needs the tensorboard package: pip install 'gvm-mini[tensorboard]'" in err[0]
    assert not (tmp_path / "out").exists()  # refused before the run directory was made


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is an optional extra (pip install 'gvm-mini[tensorboard]')")
def test_event_file_holds_the_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gvm_mini.em import run

    cfg = replace(load_config(None), **TINY, report_to="tensorboard")
    run(cfg, tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    recs = _records(tmp_path / "metrics.jsonl")
    # every numeric field of every record, at its global_step, in float32
    for kind, fields in {"eval": ["avg_at_k", "pass_at_k"], "step": ["loss", "clip_frac", "kl", "tokens", "samples",
                                                                     "pilot_tokens", "wall/rollout", "zero_signal_frac"],
                         "iteration": ["tokens", "pilot_samples", "dropped_prompts", "wall/pilot"]}.items():
        mine = [r for r in recs if r["kind"] == kind]
        assert mine, kind
        for f in fields:
            tag = f"{kind}/{f}"
            assert tag in tags, (tag, sorted(tags))
            want = []
            for r in mine:
                v = r
                for part in f.split("/"):
                    v = v[part]
                want.append((r["global_step"], v))
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert [s for s, _ in got] == [s for s, _ in want], tag
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), tag
    # the allocation of each iteration as histograms: n_i sums to the iteration's budget
    hist = acc.Histograms("allocation/n")
    allocs = _records(tmp_path / "allocations.jsonl")
    assert len(hist) == len(allocs) == 2
    for h, a in zip(hist, allocs):
        assert h.histogram_value.num == len(a["n"])
        assert h.histogram_value.sum == pytest.approx(sum(a["n"]))
