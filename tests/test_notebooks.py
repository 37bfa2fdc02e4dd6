"""Every notebook under notebooks/ runs top to bottom in the test suite (they are thin: load results, plot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    # Figures are written to a scratch folder so a test run never touches committed files.
    env_backup = os.environ.get("PLADIS_FIGURE_DIR")
    os.environ["PLADIS_FIGURE_DIR"] = str(tmp_path)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_backup is None:
            os.environ.pop("PLADIS_FIGURE_DIR", None)
        else:
            os.environ["PLADIS_FIGURE_DIR"] = env_backup
    assert list(tmp_path.glob("*.png")), f"{path.name} drew no figure into PLADIS_FIGURE_DIR"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
