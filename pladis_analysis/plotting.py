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


def plot_hopfield_retrieval(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Retrieval error of each map relative to softmax's, by pattern family, noise and β
    (from ``results/hopfield_retrieval.csv``). Points below 1 mean the map retrieves better than softmax."""
    df = _load(table)
    df = df[df["map"] != "softmax"].copy()
    # Ratio of errors per trial. The 1e-6 floor (patterns have norm ~1) keeps exact retrievals, whose error is
    # rounding noise, from spreading the log axis over ten decades: they show as ratios near 1e-6/error_S.
    df["error_ratio"] = (df["error"] + 1e-6) / (df["dense_error"] + 1e-6)
    grid = sns.catplot(data=df, x="noise", y="error_ratio", hue="map", col="family", row="beta", kind="box",
                       height=2.4, aspect=1.5, showfliers=False, sharey=False)
    grid.set(yscale="log")
    for ax in grid.axes.flat:
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    grid.set_axis_labels("query noise (relative)", "error / softmax error")
    grid.figure.suptitle("One-step Hopfield retrieval: sparse and PLADIS vs dense", y=1.02)
    return grid.figure


def plot_bench_maps(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Map benchmark (``experiments/bench_maps.py``): time relative to ``torch.softmax`` per map and
    implementation, one panel per (device, shape) and mode; log scale, lower is faster."""
    df = _load(table).copy()
    df["panel"] = df["device"].astype(str) + "  [" + df["shape"].astype(str).str.replace("x", ", ") + "]"
    order = [m for m in ("softmax", "sparsemax", "entmax15", "entmax(1.25)", "pladis(2, 1.5)") if m in set(df["map"])]
    impls = [i for i in ("torch.softmax", "pladis_analysis", "entmax package") if i in set(df["impl"])]
    grid = sns.catplot(data=df, x="map", y="x_torch_softmax", hue="impl", col="panel", row="mode", kind="bar",
                       order=order, hue_order=impls, height=3.2, aspect=1.5, sharey=True, legend_out=True)
    for ax in grid.axes.flat:
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.tick_params(axis="x", rotation=20)
    grid.set_axis_labels("", "median time / torch.softmax")
    grid.set_titles("{row_name} | {col_name}")
    grid.figure.suptitle("Attention maps: our torch path vs the entmax package (lower is faster)", y=1.02)
    return grid.figure
