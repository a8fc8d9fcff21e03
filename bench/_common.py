"""Shared by the benchmarks: a JSON record with the machine, the command and the git commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def record(name: str, payload: dict, *, smoke: bool = False) -> Path:
    """Append one JSON line to bench/results/<name>.jsonl (smoke runs go to <name>.smoke.jsonl, not kept)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'.smoke' if smoke else ''}.jsonl"
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "commit": git_commit(), "machine": machine(), **payload}
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return path
