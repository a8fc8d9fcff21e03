"""Execute every notebooks/*.ipynb (picked up by glob, so new notebooks are tested automatically).

Deselect with ``-m "not slow"``. Each cell has a timeout; the working directory is notebooks/.
"""

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NB_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # generous: CI machines are shared; the notebooks aim at well under a minute per cell


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}
    )
    t0 = time.perf_counter()
    client.execute()
    print(f"{path.name}: executed in {time.perf_counter() - t0:.1f} s")
