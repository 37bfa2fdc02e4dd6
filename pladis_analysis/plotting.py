"""Seaborn figures drawn from saved results tables only.

Every function here takes a path to (or a DataFrame read from) a results file written by an experiment,
and returns a matplotlib Figure; :func:`save_figure` writes it next to its data. Nothing here computes the
numbers it draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window (CI has no screen)

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .results import read_table  # noqa: E402


def _load(table: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else read_table(table)


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` (PNG, 150 dpi) creating the folder, and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
