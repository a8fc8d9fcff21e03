"""bench/rss_by_phase.py's meter: a phase's number is the most resident memory the process held inside it
(Linux's VmHWM, reset when the phase starts), and an outer phase includes what its inner phases held."""

import mmap
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _can_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _can_reset(), reason="needs Linux's /proc/self/clear_refs (peak-RSS reset)")


def _touch(mib: int) -> mmap.mmap:
    """``mib`` MiB of fresh anonymous pages, each written once so it is resident. Mapped directly, not through
    the process's allocator: in a long pytest run malloc (or a preloaded tcmalloc) may hand back memory that is
    already resident from earlier tests, and the RSS would not grow (CI saw exactly that)."""
    buf = mmap.mmap(-1, mib * 2**20)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return buf


def test_each_phase_records_the_peak_inside_it(monkeypatch):
    import rss_by_phase as R

    from gvm_mini.rundir import Recorder, RunState

    monkeypatch.setattr(Recorder, "phase", Recorder.phase)  # restored after the test
    stats = {}
    R.install_phase_meter(stats)
    rec = Recorder(RunState())
    R.reset_peak()  # the counter holds the process's peak so far (earlier tests): start it from now
    base = R.peak_mib()
    with rec.phase("update", crash=False):
        buf = _touch(300)
        buf.close()  # freed before the phase ends: the peak still counts it
    with rec.phase("eval", crash=False):
        with rec.phase("reward", crash=False):
            buf = _touch(200)
            buf.close()
        small = _touch(20)
        small.close()
    with rec.phase("allocate", crash=False):
        pass
    assert stats["update"][0] >= base + 290
    assert stats["reward"][0] >= base + 190 and stats["eval"][0] >= stats["reward"][0]  # the outer phase includes it
    assert stats["allocate"][0] < stats["update"][0] - 250  # the counter was reset: the earlier peak is not carried over
    assert rec.state.wall["update"] > 0  # the phases are still timed
