"""Atomic writes, the bottom layer of everything gvm-mini keeps on disk.

A file is written to a temporary name in the same directory, flushed and fsynced, renamed over the
final name, and the directory is fsynced (:func:`atomic_write_bytes`, :func:`atomic_write_text`,
:func:`atomic_savefig`). A directory is built beside its final name and swapped in with two renames
(:func:`atomic_dir`). A kill at any instant leaves either the old or the new version complete, plus at
most a leftover ``.NAME.tmp-PID`` / ``.NAME.tmp`` / ``.NAME.old`` entry, which :func:`clean_leftovers`
removes or, for a directory whose swap was cut between its two renames, puts back.

:func:`crash_point` is the test hook that kills the process at a named point; the writers here and the
training loop call it. This module imports nothing from gvm-mini.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
from pathlib import Path

__all__ = ["crash_point", "fsync_dir", "atomic_write_bytes", "atomic_write_text", "atomic_savefig", "atomic_dir",
           "clean_leftovers", "LEFTOVER"]


# ---------------------------------------------------------------------------------------------
# test hook: kill the process at a named point (tests/test_resume.py)
# ---------------------------------------------------------------------------------------------

_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook, not a user feature: if the environment variable ``GVM_MINI_CRASH_AT`` is ``name``
    (or ``name:k``), the process SIGKILLs itself the first (k-th) time it reaches ``name``. The
    crash-safety tests use it to kill a run in a precise phase; unset, it costs one dict lookup.

    The atomic writers below pass ``NAME_partial`` (half of a file's bytes written), ``NAME_written``
    (the new version complete under its temporary name), and for directories ``NAME_renamed`` (old
    version moved aside) and ``NAME_replaced`` (new version in place, old one not yet removed)."""
    want = os.environ.get("GVM_MINI_CRASH_AT")
    if not want:
        return
    target, _, k = want.rpartition(":") if want.rpartition(":")[2].isdigit() else (want, "", "")
    if target != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp(?:-\d+)?|old)$")


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory, so that renames and new entries in it survive a power loss (no-op where
    the OS cannot open directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: after a crash at any instant ``path`` holds either its
    previous content (or does not exist) or ``data``, never a mix. Written to ``.NAME.tmp-PID`` in the
    same directory, fsynced, renamed over ``path``; the directory is fsynced. Returns ``path``."""
    path = Path(path)
    tmp = _tmp_file(path)
    try:
        with open(tmp, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            crash_point(f"{path.name}_partial")
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        crash_point(f"{path.name}_written")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text (``encoding`` UTF-8 by default). Returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)`` for a matplotlib figure, atomically (see :func:`atomic_write_bytes`).

    The format comes from ``kwargs["format"]`` or else from the suffix of ``path`` (``.png``, ``.pdf``,
    ``.svg``), as ``savefig`` itself would choose it. Returns ``path``."""
    import io

    path = Path(path)
    fmt = kwargs.pop("format", None) or (path.suffix[1:].lower() or None)
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap the complete directory ``tmp`` in as ``final`` (the crash points of :func:`atomic_dir`)."""
    old = final.with_name(f".{final.name}.old")
    fsync_dir(tmp)
    crash_point(f"{final.name}_written")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    crash_point(f"{final.name}_renamed")
    os.rename(tmp, final)
    fsync_dir(final.parent)
    crash_point(f"{final.name}_replaced")
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Build a directory atomically: ``with atomic_dir(path) as tmp:`` write the files into ``tmp``;
    on a normal exit every file in it is fsynced and it replaces ``path`` (the previous version is
    moved to ``.NAME.old`` and removed once the new one is in place). If the block raises, ``tmp`` is
    removed and ``path`` is left as it was. After a crash ``path`` is the old or the new version, or
    (killed between the two renames) only ``.NAME.old`` exists, which :func:`clean_leftovers` renames
    back. One writer per ``path`` at a time."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            elif p.is_dir():
                fsync_dir(p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, final)


def clean_leftovers(directory: str | os.PathLike, *, keep_old_if=None) -> list[str]:
    """Remove what a kill in the middle of an atomic write left in ``directory``; returns the names
    acted on (removed or restored).

    ``.NAME.tmp-PID`` files and ``.NAME.tmp`` directories were never renamed into place: removed.
    ``.NAME.old`` is the previous version of directory ``NAME``: removed when ``NAME`` exists, renamed
    back to ``NAME`` when it does not (the swap was cut between its two renames). ``keep_old_if``
    (optional ``fn(final: Path, old: Path) -> bool``) may ask for ``.NAME.old`` to replace an existing
    ``NAME`` instead (a checkpoint directory without its ``COMPLETE`` marker). Entries not named like
    this module's temporaries are never touched."""
    directory = Path(directory)
    done = []
    if not directory.is_dir():
        return done
    for entry in sorted(directory.iterdir()):
        m = LEFTOVER.match(entry.name)
        if not m:
            continue
        final = directory / m["name"]
        if m["kind"] == "old":
            if final.exists() and not (keep_old_if and keep_old_if(final, entry)):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
            else:
                if final.exists():
                    shutil.rmtree(final, ignore_errors=True) if final.is_dir() else final.unlink()
                os.rename(entry, final)
        else:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
        done.append(entry.name)
    if done:
        fsync_dir(directory)
    return done
