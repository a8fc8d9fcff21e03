"""gvm_mini.rundir: atomic files and directories under real SIGKILLs, checkpoints without pickle.

Each kill runs in its own Python process that dies by SIGKILL at a named point inside a write
(``GVM_MINI_CRASH_AT``): half of the bytes written (``NAME_partial``), the new version complete under
its temporary name (``NAME_written``), for directories the old version moved aside (``NAME_renamed``)
and the new one in place (``NAME_replaced``). The demo's summary files and plots use the same helpers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gvm_mini import rundir
from gvm_mini.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _killed_at(point: str, code: str) -> subprocess.CompletedProcess:
    env = {**ENV, "GVM_MINI_CRASH_AT": point}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["summary.json", "summary.md"])
@pytest.mark.parametrize("stage", ["partial", "written"])
def test_kill_inside_a_file_write_keeps_the_old_file(tmp_path, name, stage):
    path = tmp_path / name
    rundir.atomic_write_text(path, "old version\n")
    new = "new version " * 10_000
    res = _killed_at(f"{name}_{stage}", f"""
        from gvm_mini.rundir import atomic_write_text
        atomic_write_text({str(path)!r}, {new!r})
    """)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert path.read_text() == "old version\n"  # never torn, never half new
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != name)
    assert len(left) == 1 and left[0].startswith(f".{name}.tmp-")
    size = (tmp_path / left[0]).stat().st_size
    assert size == (len(new) // 2 if stage == "partial" else len(new))
    assert rundir.clean_leftovers(tmp_path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    rundir.atomic_write_text(path, new)  # and the next write goes through
    assert path.read_text() == new


def test_kill_inside_a_plot_write_keeps_the_old_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = rundir.atomic_savefig(fig, tmp_path / "curves.png", dpi=50)
    plt.close(fig)
    old = path.read_bytes()
    assert old[:8] == b"\x89PNG\r\n\x1a\n"
    res = _killed_at("curves.png_written", f"""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from gvm_mini.rundir import atomic_savefig
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        atomic_savefig(fig, {str(path)!r}, dpi=50)
    """)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert path.read_bytes() == old
    assert len(rundir.clean_leftovers(tmp_path)) == 1


def test_savefig_format_follows_the_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    assert rundir.atomic_savefig(fig, tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in rundir.atomic_savefig(fig, tmp_path / "a.svg").read_bytes()[:400]
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# directories
# ---------------------------------------------------------------------------------------------

DIR_CODE = """
    from gvm_mini.rundir import atomic_dir
    with atomic_dir({path!r}) as tmp:
        (tmp / "a.txt").write_text("new")
"""


@pytest.mark.parametrize("stage,expect_dir,expect_old", [
    ("written", "old", None),  # new one complete in .adapter.tmp: removed
    ("renamed", None, "old"),  # old one moved aside, new one not in place: the old one comes back
    ("replaced", "new", "old"),  # new one in place, old one not yet removed: removed
])
def test_kill_inside_a_directory_swap(tmp_path, stage, expect_dir, expect_old):
    final = tmp_path / "adapter"
    with rundir.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("old")
    res = _killed_at(f"adapter_{stage}", DIR_CODE.format(path=str(final)))
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert ((final / "a.txt").read_text() if final.exists() else None) == expect_dir
    old = tmp_path / ".adapter.old"
    assert ((old / "a.txt").read_text() if old.exists() else None) == expect_old
    rundir.clean_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (final / "a.txt").read_text() == (expect_dir or "old")


def test_a_failed_build_leaves_the_old_directory(tmp_path):
    final = tmp_path / "d"
    with rundir.atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError):
        with rundir.atomic_dir(final) as tmp:
            (tmp / "x").write_text("2")
            raise RuntimeError("save failed")
    assert (final / "x").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_clean_leftovers_touches_only_its_own_names(tmp_path):
    for name in ("notes.txt", ".hidden", ".x.tmp.bak", "a.tmp", ".config.yaml.tmp-12", ".adapter.tmp"):
        (tmp_path / name).write_text("x")
    assert rundir.clean_leftovers(tmp_path) == [".adapter.tmp", ".config.yaml.tmp-12"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".x.tmp.bak", "a.tmp", "notes.txt"]


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].bias.requires_grad_(False)  # not trainable: not saved
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trip_is_exact_and_pickle_free(tmp_path):
    model, opt = _model_and_optimizer()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rundir.RunState(iteration=2, global_step=4, tokens=123, wall={"pilot": 0.1 + 0.2})
    rundir.save_checkpoint(tmp_path, model, opt, state)
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["COMPLETE", "optimizer.safetensors", "state.json", "trainable.safetensors"]
    draws = (random.random(), np.random.rand(), torch.rand(1).item())  # what the saved RNGs draw next

    model2, opt2 = _model_and_optimizer()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    opt2 = torch.optim.AdamW([p for p in model2.parameters() if p.requires_grad], lr=1e-2, betas=(0.8, 0.95))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    got = rundir.load_checkpoint(tmp_path, model2, opt2)
    assert got == state and got.wall["pilot"] == 0.1 + 0.2  # floats survive JSON exactly
    for (n, a), (_, b) in zip(model.named_parameters(), model2.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), n
    assert not torch.equal(model[0].bias, model2[0].bias)  # frozen parameters are not in the checkpoint
    sa, sb = opt.state_dict(), opt2.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sb["param_groups"][0]["betas"] == (0.8, 0.95)
    for pid in sa["state"]:
        for k, v in sa["state"][pid].items():
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    model, opt = _model_and_optimizer()
    rundir.save_checkpoint(tmp_path, model, None, rundir.RunState())
    other = torch.nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="do not match the model"):
        rundir.load_checkpoint(tmp_path, other, None)


def test_pickle_in_a_checkpoint_is_refused_unread(tmp_path):
    model, opt = _model_and_optimizer()
    rundir.save_checkpoint(tmp_path, model, opt, rundir.RunState())
    (tmp_path / "checkpoint" / "extra.pkl").write_bytes(b"\x80\x04not even read")
    with pytest.raises(ConfigError, match=r"extra.pkl is a pickle; gvm-mini never unpickles"):
        rundir.load_checkpoint(tmp_path, model, opt)
    with pytest.raises(ConfigError, match="never unpickles"):
        rundir.read_checkpoint(tmp_path / "checkpoint")


def test_no_torch_load_left_in_the_package():
    """Nothing in gvm_mini unpickles: no torch.load, pickle.load(s) or weights_only=False."""
    pkg = ROOT / "gvm_mini"
    hits = [f"{p.name}:{i}" for p in pkg.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if "torch.load(" in line or "pickle.load" in line or "weights_only=False" in line]
    assert hits == []


def test_resume_accepts_a_run_written_before_a_config_key_existed(tmp_path):
    """A config.yaml without a key added later (here `estimator`) is the same run if the key is at its
    default; a run that differs in a key's value is still refused."""
    import yaml

    from gvm_mini.config import Config, ConfigError, replace, save_config
    from gvm_mini.rundir import prepare_out_dir

    cfg = Config()
    save_config(cfg, tmp_path / "config.yaml")
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["estimator"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    prepare_out_dir(cfg, tmp_path, resume=True)  # no error
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["estimator"] == "paper"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match="differs in: estimator"):
        prepare_out_dir(replace(cfg, estimator="bayes"), tmp_path, resume=True)
