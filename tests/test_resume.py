"""Crash safety: a run SIGKILLed anywhere and restarted with ``--resume`` ends exactly like an
uninterrupted one (CPU, same seed): same metrics (wall-time fields aside), same allocations, the
same trainable weights bit for bit, and no torn checkpoint is ever loaded.

Kills are real: every run is its own process and dies by SIGKILL, either at a named point through
the test hook ``gvm_mini.atomic.crash_point`` (``GVM_MINI_CRASH_AT=name[:k]``: the k-th time ``name``
is reached), after a delay chosen from outside, or (one end-to-end case) a plain
``python -m gvm_mini``-style subprocess killed from this process while it trains. Named points
include the inside of every atomic write of the run directory (``config.yaml``, ``checkpoint/``,
``adapter/``): half a file written, the new version complete under its temporary name, the old
directory moved aside, the new one in place.

Checkpoints are safetensors + JSON and nothing is ever unpickled: a run directory whose checkpoint
holds a pickle (old format, or planted to run code) is refused with one line and nothing runs.

Starting Python with torch + transformers + peft costs ~5 s here, so most runs are forked from one
pre-imported "zygote" process (a fork is a new process; the zygote never runs a torch op, and
every process is single-threaded). The verifier is replaced by a deterministic hash of the
completion (accepts ~1/3) so that updates have signal and the weights really move.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("GVM_MINI_CRASH_AT", None)

CONFIG = """\
model: tiny-qwen2
lora: true
lora_r: 4
lora_alpha: 8
dataset: arithmetic
train_size: 32
test_size: 4
verifier: exact
system_prompt: null
instruction: ""
algorithm: raftpp
allocation: gvm
num_pilot: 4
samples_per_prompt: 4
max_completion_length: 8
iterations: 3
prompts_per_step: 4
steps_per_iteration: 2
mini_batch_size: 8
learning_rate: 0.01
kl_coef: 0.01
reset_optimizer: false
eval_every: 1
eval_samples: 1
progress: false
seed: 0
"""

PATCH = textwrap.dedent("""
    import hashlib
    import gvm_mini.rewards as _R

    def _hash_verifier(text, answer):  # deterministic, accepts about one completion in three
        return float(hashlib.sha256(str(text).encode()).digest()[0] % 3 == 0)

    _R.get_verifier = lambda name: _hash_verifier
""")

ZYGOTE = PATCH + textwrap.dedent("""
    import json, os, sys, time, traceback, signal
    import torch
    torch.set_num_threads(1)
    import transformers, peft  # the slow imports, done once
    import gvm_mini.cli, gvm_mini.em, gvm_mini.models, gvm_mini.gradnorm, gvm_mini.evaluate, gvm_mini.losses
    import gvm_mini.data, gvm_mini.rollout
    from transformers import Qwen2ForCausalLM, PreTrainedTokenizerFast
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1); os.dup2(fd, 2)
                os.environ.pop("GVM_MINI_CRASH_AT", None)
                if req.get("crash"):
                    os.environ["GVM_MINI_CRASH_AT"] = req["crash"]
                rc = gvm_mini.cli.main(req["argv"])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(rc)
        if req.get("kill_after") is not None:
            deadline = t0 + req["kill_after"]
            while time.perf_counter() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.005)
            else:
                os.kill(pid, signal.SIGKILL)
                done = 0
            if not done:
                _, status = os.waitpid(pid, 0)
        else:
            _, status = os.waitpid(pid, 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                          "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                          "seconds": time.perf_counter() - t0}), flush=True)
""")


class Zygote:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        script = workdir / "zygote.py"
        script.write_text(ZYGOTE)
        self.proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=ENV, cwd=str(ROOT))
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}
        self.n = 0

    def train(self, out: Path, *extra, crash: str | None = None, kill_after: float | None = None,
              config: Path | None = None) -> dict:
        self.n += 1
        log = self.workdir / f"run{self.n}.log"
        argv = ["train", "--config", str(config or self.workdir / "cfg.yaml"), "--out", str(out), *extra]
        self.proc.stdin.write(json.dumps({"argv": argv, "crash": crash, "kill_after": kill_after, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        res["log"] = log.read_text() if log.exists() else ""
        return res

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zyg(tmp_path_factory):
    work = tmp_path_factory.mktemp("resume")
    (work / "cfg.yaml").write_text(CONFIG)
    z = Zygote(work)
    yield z
    z.close()


@pytest.fixture(scope="module")
def ref(zyg):
    """The uninterrupted 3-iteration run every interrupted one must reproduce."""
    out = zyg.workdir / "ref3"
    r = zyg.train(out, "--resume")  # --resume on an empty/new directory simply starts
    assert r["rc"] == 0, r["log"]
    r2 = zyg.train(zyg.workdir / "ref3_again")  # and the run itself is reproducible
    assert r2["rc"] == 0, r2["log"]
    assert_same_run(zyg.workdir / "ref3_again", out)
    return out, r["seconds"]


# ---------------------------------------------------------------------------------------------
# comparison helpers
# ---------------------------------------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(x) for x in lines]


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("wall")}


def _state(out: Path) -> dict:
    from gvm_mini.rundir import read_checkpoint

    return read_checkpoint(out / "checkpoint")


LEFTOVER_NAMES = (".checkpoint.tmp", ".checkpoint.old", ".adapter.tmp", ".adapter.old")


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name in LEFTOVER_NAMES or ".tmp-" in p.name)


def assert_same_run(out: Path, ref: Path) -> None:
    got, want = _records(out / "metrics.jsonl"), _records(ref / "metrics.jsonl")
    assert [r["kind"] for r in got] == [r["kind"] for r in want]
    for i, (a, b) in enumerate(zip(got, want)):
        assert _strip(a) == _strip(b), f"metrics record {i} differs"
    assert (out / "allocations.jsonl").read_bytes() == (ref / "allocations.jsonl").read_bytes()
    sa, sb = _state(out), _state(ref)
    assert sa["trainable"].keys() == sb["trainable"].keys()
    for k in sb["trainable"]:
        assert torch.equal(sa["trainable"][k], sb["trainable"][k]), f"trainable tensor {k} differs"
    assert (sa["optimizer"] is None) == (sb["optimizer"] is None)
    if sb["optimizer"] is not None:  # AdamW moments and step counts, bit for bit
        assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
        for pid, entries in sb["optimizer"]["state"].items():
            for k, v in entries.items():
                assert torch.equal(sa["optimizer"]["state"][pid][k], v), f"optimizer state {pid}.{k} differs"
    assert sa["rng"] == sb["rng"]
    # the LoRA adapter of the last iteration (an atomic directory swap at the end of the run)
    if (ref / "adapter").exists():
        assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (
            ref / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (out / "config.yaml").read_bytes() == (ref / "config.yaml").read_bytes()
    # (metrics_bytes depends on how many digits the wall times printed with)
    drop = {"metrics_bytes"}
    assert {k: v for k, v in _strip(sa["state"]).items() if k not in drop} == {
        k: v for k, v in _strip(sb["state"]).items() if k not in drop}
    # nothing half-built or stale is left behind: the resume cleaned what the kill left
    assert _leftovers(out) == []


def _loadable_checkpoint_iteration(out: Path):
    """The iteration of the checkpoint a resume would load (None if none), checking it is whole."""
    from gvm_mini.rundir import find_checkpoint, read_checkpoint

    ck = find_checkpoint(out)
    if ck is None:
        return None
    payload = read_checkpoint(ck)  # a torn file would raise here
    assert json.loads((ck / "COMPLETE").read_text())["iteration"] == payload["state"]["iteration"]
    # the metrics it points at are all there and end on a whole line
    data = (out / "metrics.jsonl").read_bytes()
    assert len(data) >= payload["state"]["metrics_bytes"]
    assert data[: payload["state"]["metrics_bytes"]].endswith(b"\n") or payload["state"]["metrics_bytes"] == 0
    return payload["state"]["iteration"]


def test_weights_move_and_updates_have_signal(ref):
    out, _ = ref
    steps = [r for r in _records(out / "metrics.jsonl") if r["kind"] == "step"]
    assert len(steps) == 6 and all(r["accepted"] > 0 for r in steps)
    ups = [r["updates"] for r in steps]  # cumulative optimizer updates: >= 1 per M-step (mini-batches of 8)
    assert all(b > a for a, b in zip([0] + ups, ups)) and ups[-1] > len(steps)
    lora_b = [t for k, t in _state(out)["trainable"].items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: training moved it


# ---------------------------------------------------------------------------------------------
# kills at named points: (point, checkpointed iteration a resume must find afterwards)
# ---------------------------------------------------------------------------------------------

KILL_POINTS = [
    ("pilot:1", None),  # iteration 1, pilot sampling; only the initial eval record exists
    ("pilot:2", 1),
    ("gradnorm:2", 1),  # per-sample gradient norms
    ("allocate:3", 2),
    ("rollout:2", None),  # second M-step of iteration 1: one step record already written
    ("update:3", 1),
    ("optimizer_step:3", None),  # between the two optimizer updates of an M-step
    ("step_logged:4", 1),  # all step records of iteration 2 written, iteration record not yet
    ("eval:2", 1),
    ("checkpoint:2", 1),  # every record of iteration 2 written, checkpoint not started
    ("checkpoint_written:1", None),  # new checkpoint complete in .checkpoint.tmp, nothing renamed
    ("checkpoint_written:2", 1),
    ("checkpoint_renamed:2", 1),  # old checkpoint moved aside, new one not yet in place
    ("checkpoint_replaced:2", 2),  # new one in place, old one not yet removed
    ("checkpoint_replaced:3", 3),  # the end of the last iteration
    # config.yaml (atomic file write) at the start of the run
    ("config.yaml_partial:1", None),  # half of it written under its temporary name
    ("config.yaml_written:1", None),  # complete under its temporary name, not renamed
    # adapter/ (atomic directory swap) after the last iteration
    ("adapter_written:1", 3),  # built in .adapter.tmp
    ("adapter_renamed:1", 3),  # (no old one to move aside on the first save)
    ("adapter_replaced:1", 3),  # in place, nothing renamed
]


@pytest.mark.parametrize("point,expect_ck", KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_kill_at_point_then_resume(zyg, ref, point, expect_ck):
    ref_out, _ = ref
    out = zyg.workdir / f"kill_{point.replace(':', '_')}"
    r = zyg.train(out, crash=point)
    assert r["signal"] == signal.SIGKILL, f"did not die at {point}: {r}"
    assert _loadable_checkpoint_iteration(out) == expect_ck
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    assert "Traceback" not in r["log"]
    assert_same_run(out, ref_out)


def test_kill_twice_in_a_row_then_resume(zyg, ref):
    ref_out, _ = ref
    out = zyg.workdir / "kill_twice"
    assert zyg.train(out, crash="checkpoint_renamed:2")["signal"] == signal.SIGKILL
    assert zyg.train(out, "--resume", crash="optimizer_step:2")["signal"] == signal.SIGKILL
    assert zyg.train(out, "--resume", crash="checkpoint_written:1")["signal"] == signal.SIGKILL
    assert _loadable_checkpoint_iteration(out) == 1
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    assert_same_run(out, ref_out)


@pytest.mark.parametrize("frac", [0.15, 0.35, 0.5, 0.65, 0.8, 0.95])
def test_kill_at_arbitrary_time_then_resume(zyg, ref, frac):
    """SIGKILL from outside after a fraction of the reference run's wall time: wherever it lands
    (mid-sampling, mid-torch.save, mid-append), resume reproduces the reference."""
    ref_out, seconds = ref
    out = zyg.workdir / f"kill_time_{frac}"
    r = zyg.train(out, kill_after=frac * seconds)
    if r["signal"] is None:  # the machine was faster this time and the run finished: still valid
        assert r["rc"] == 0, r["log"]
    else:
        assert r["signal"] == signal.SIGKILL
        _loadable_checkpoint_iteration(out)
        r = zyg.train(out, "--resume")
        assert r["rc"] == 0, r["log"]
    assert_same_run(out, ref_out)


# ---------------------------------------------------------------------------------------------
# torn files, finished runs, longer runs
# ---------------------------------------------------------------------------------------------


def test_torn_metrics_line_is_truncated(zyg, ref):
    ref_out, _ = ref
    out = zyg.workdir / "torn_metrics"
    assert zyg.train(out, crash="checkpoint:2")["signal"] == signal.SIGKILL
    with open(out / "metrics.jsonl", "a") as f:  # a kill in the middle of a write
        f.write('{"kind": "step", "step_in_iteration": 0, "accep')
    with open(out / "allocations.jsonl", "a") as f:
        f.write('{"iteration": 2, "prompt_')
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    _records(out / "metrics.jsonl")  # every line parses
    assert_same_run(out, ref_out)


def test_torn_checkpoint_tmp_is_never_loaded(zyg, ref):
    ref_out, _ = ref
    out = zyg.workdir / "torn_tmp"
    assert zyg.train(out, crash="checkpoint_written:2")["signal"] == signal.SIGKILL
    tmp = out / ".checkpoint.tmp"
    data = (tmp / "trainable.safetensors").read_bytes()
    (tmp / "trainable.safetensors").write_bytes(data[: len(data) // 2])  # torn mid-write ...
    (tmp / "COMPLETE").unlink()  # ... so never marked complete
    assert _loadable_checkpoint_iteration(out) == 1
    # and a checkpoint directory without its COMPLETE marker is not trusted either
    shutil.copytree(out / "checkpoint", out / ".checkpoint.old")
    (out / "checkpoint" / "COMPLETE").unlink()
    (out / "checkpoint" / "trainable.safetensors").write_bytes(b"garbage")
    assert _loadable_checkpoint_iteration(out) == 1
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    assert_same_run(out, ref_out)


def test_resume_finished_run_does_nothing(zyg, ref):
    ref_out, _ = ref
    out = zyg.workdir / "finished"
    shutil.copytree(ref_out, out)
    before = {p: (out / p).read_bytes() for p in ("metrics.jsonl", "allocations.jsonl", "checkpoint/state.json",
                                                  "checkpoint/trainable.safetensors", "checkpoint/optimizer.safetensors")}
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    assert "done: 3 iterations" in r["log"]
    for p, b in before.items():
        assert (out / p).read_bytes() == b, f"{p} changed"


def test_resume_with_more_iterations_continues(zyg, ref):
    ref_out, _ = ref
    ref4 = zyg.workdir / "ref4"
    assert zyg.train(ref4, "--set", "iterations=4")["rc"] == 0
    out = zyg.workdir / "extended"
    shutil.copytree(ref_out, out)
    r = zyg.train(out, "--resume", "--set", "iterations=4")
    assert r["rc"] == 0, r["log"]
    assert "done: 4 iterations" in r["log"]
    assert_same_run(out, ref4)
    # the same, killed in the extra iteration
    out2 = zyg.workdir / "extended_killed"
    shutil.copytree(ref_out, out2)
    assert zyg.train(out2, "--resume", "--set", "iterations=4", crash="update:2")["signal"] == signal.SIGKILL
    assert zyg.train(out2, "--resume", "--set", "iterations=4")["rc"] == 0
    assert_same_run(out2, ref4)


def test_grpo_fresh_optimizer_kill_and_resume(zyg):
    """Another configuration: GRPO, a fresh optimizer every iteration, KL to the initial policy."""
    cfg = zyg.workdir / "grpo.yaml"
    cfg.write_text(CONFIG.replace("algorithm: raftpp", "algorithm: grpo").replace("reset_optimizer: false", "reset_optimizer: true")
                   + "kl_reference: initial\n")
    ref_out = zyg.workdir / "grpo_ref"
    assert zyg.train(ref_out, config=cfg)["rc"] == 0
    out = zyg.workdir / "grpo_kill"
    assert zyg.train(out, config=cfg, crash="optimizer_step:5")["signal"] == signal.SIGKILL
    r = zyg.train(out, "--resume", config=cfg)
    assert r["rc"] == 0, r["log"]
    assert_same_run(out, ref_out)


def test_real_cli_subprocess_killed_from_outside(zyg, ref, tmp_path):
    """End to end without the zygote or the hook: a fresh Python process running the CLI is
    SIGKILLed by this test once iteration 2 has started logging, then resumed by another one."""
    ref_out, _ = ref
    out = tmp_path / "run"
    code = PATCH + "import sys\nfrom gvm_mini.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = [sys.executable, "-c", code, "train", "--config", str(zyg.workdir / "cfg.yaml"), "--out", str(out)]
    proc = subprocess.Popen(argv, env=ENV, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "step"') >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _loadable_checkpoint_iteration(out) == 1
    res = subprocess.run(argv + ["--resume"], env=ENV, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_same_run(out, ref_out)


# ---------------------------------------------------------------------------------------------
# kills inside the atomic writes of a resumed run (an old version exists and must survive)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["config.yaml_partial", "config.yaml_written", "adapter_written",
                                   "adapter_renamed", "adapter_replaced"])
def test_kill_inside_a_rewrite_then_resume(zyg, ref, point):
    """A resume rewrites config.yaml at its start and adapter/ at its end, over complete old
    versions. Killed inside either write, the directory still holds a loadable config and (apart
    from the moment between the adapter's two renames) an adapter; the next resume cleans the
    leftovers and ends identical to the uninterrupted run."""
    ref_out, _ = ref
    out = zyg.workdir / f"rewrite_{point}"
    if point.startswith("config"):
        assert zyg.train(out, crash="checkpoint:2")["signal"] == signal.SIGKILL
    else:
        shutil.copytree(ref_out, out)  # a finished run: the resume only re-saves the adapter
    r = zyg.train(out, "--resume", crash=point)
    assert r["signal"] == signal.SIGKILL, f"did not die at {point}: {r}"
    assert (out / "config.yaml").read_bytes() == (ref_out / "config.yaml").read_bytes()  # the old one, whole
    assert _leftovers(out), "the kill should have left a temporary entry"
    if point == "adapter_renamed":
        assert not (out / "adapter").exists() and (out / ".adapter.old" / "adapter_model.safetensors").is_file()
    r = zyg.train(out, "--resume")
    assert r["rc"] == 0, r["log"]
    assert_same_run(out, ref_out)


# ---------------------------------------------------------------------------------------------
# no pickle: a checkpoint that would run code when unpickled is refused, and nothing runs
# ---------------------------------------------------------------------------------------------


def _evil_pickle(path: Path, marker: Path) -> None:
    """A file that creates ``marker`` when unpickled (as torch.load(weights_only=False) would)."""
    code = textwrap.dedent(f"""
        import os, pickle
        class Evil:
            def __reduce__(self):
                return (os.system, ({f"touch {marker}"!r},))
        with open({str(path)!r}, "wb") as f:
            pickle.dump({{"state": Evil()}}, f)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_planted_pickle_really_runs_code(tmp_path):
    """The check behind the next test: unpickling the planted file does create the marker."""
    marker = tmp_path / "PWNED"
    _evil_pickle(tmp_path / "state.pt", marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'state.pt')!r}, weights_only=False)"],
                   check=False, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("where", ["old_format", "old_format_in_old", "beside_new_files"])
def test_resume_refuses_a_pickle_checkpoint(zyg, ref, where, tmp_path):
    ref_out, _ = ref
    out = zyg.workdir / f"evil_{where}"
    shutil.copytree(ref_out, out)
    marker = tmp_path / "PWNED"
    if where == "old_format":  # a run directory from before safetensors: checkpoint/state.pt + COMPLETE
        shutil.rmtree(out / "checkpoint")
        (out / "checkpoint").mkdir()
        (out / "checkpoint" / "COMPLETE").write_text('{"iteration": 3}')
        _evil_pickle(out / "checkpoint" / "state.pt", marker)
    elif where == "old_format_in_old":  # the old layout's fallback copy
        shutil.rmtree(out / "checkpoint")
        (out / ".checkpoint.old").mkdir()
        (out / ".checkpoint.old" / "COMPLETE").write_text('{"iteration": 3}')
        _evil_pickle(out / ".checkpoint.old" / "state.pt", marker)
    else:  # planted next to a valid checkpoint
        _evil_pickle(out / "checkpoint" / "state.pt", marker)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = zyg.train(out, "--resume")
    assert r["rc"] == 2, r["log"]
    lines = [x for x in r["log"].splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r["log"], r["log"]
    assert "state.pt is a pickle" in lines[0] and "never unpickles" in lines[0]
    if where.startswith("old_format"):
        assert "before gvm-mini stored safetensors" in lines[0]
    assert not marker.exists(), "the pickle was loaded"
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing ran: no file written, truncated or cleaned
