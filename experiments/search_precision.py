"""How precise is the threshold search at large α, per working precision? The measurement behind FLOAT32_MAX_ALPHA.

For α > 2 an entry at distance t above the threshold has weight t^{1/(α−1)}: infinitely steep at t = 0. The
hardest rows (``pladis_analysis.testing.tied_group_rows``) have a leading score δ under the one-hot gap
1/(α−1) and a group of k tied runners-up, whose t* ≈ (δ/k)^{α−1} is tiny while their weights ≈ δ/k are not.
For each α this script runs the torch path's search (``maps._threshold.entmax_forward``) on such rows in
float32 and in float64 and compares the weights with the NumPy float64 reference; on a subset of rows it also
compares the reference with :func:`pladis_analysis.testing.entmax_high_precision` (mpmath), so that the
reference itself is checked where it is the yardstick.

Rows: margins δ = 10^−7 … 10^−1 (13, log-spaced) and three negative ones (one-hot rows), tied groups of
k ∈ {1, 5, 50} in rows of 80 scores (float32 values), three seeds. Comparisons (column ``comparison``):

* ``float32 search``, ``float64 search``: the torch search in that working dtype against the reference;
* ``reference``: the reference against mpmath at 30 + 8(α − 1) digits or more (seed 0, δ ∈ {1e-7, 1e-4}).

Columns: ``max_abs_error`` (ℓ∞ over the row), ``l1_error``, ``within_tolerance`` (every weight within the
tolerance table's entry for the search's dtype, float64's for the reference); ``group_weight`` is the reference's
weight of one tied entry. One row per (α, comparison, margin, group, seed).

    python experiments/search_precision.py           # writes results/search_precision.csv (+ .meta.json)
    python experiments/search_precision.py --quick   # three α, one seed (tests)
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pladis_analysis.maps import _threshold
from pladis_analysis.maps import reference as ref
from pladis_analysis.results import ResultsTable
from pladis_analysis.testing import entmax_high_precision, tied_group_rows, tolerance

WORKING_DTYPES = {"float32 search": torch.float32, "float64 search": torch.float64}


@dataclass
class Config:
    alphas: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 6.5, 7.0, 8.0, 9.0, 10.0, 12.0, 16.0, 20.0)
    log_margins: tuple[float, ...] = tuple(float(x) for x in np.linspace(-7.0, -1.0, 13))
    negative_margins: tuple[float, ...] = (-1e-6, -1e-3, -1e-1)
    group_sizes: tuple[int, ...] = (1, 5, 50)
    length: int = 80
    seeds: tuple[int, ...] = (0, 1, 2)
    high_precision_log_margins: tuple[float, ...] = (-7.0, -4.0)

    def __post_init__(self):
        self.alphas = tuple(float(a) for a in self.alphas)
        if not all(a > 2.0 for a in self.alphas):
            raise ValueError(f"alphas={self.alphas}: the rows are hard for α > 2 only (p = t^{{1/(α−1)}} is steep "
                             f"at t = 0); α ≤ 2 needs no such study")
        if not all(0 < k < self.length for k in self.group_sizes):
            raise ValueError(f"group_sizes={self.group_sizes} must lie in [1, length − 1 = {self.length - 1}]")

    @classmethod
    def quick(cls) -> "Config":
        return cls(alphas=(4.0, 8.0, 12.0), log_margins=(-7.0, -4.0, -1.0), negative_margins=(-1e-3,),
                   group_sizes=(1, 5), length=24, seeds=(0,), high_precision_log_margins=(-7.0,))

    def margins(self) -> list[float]:
        return [10.0**e for e in self.log_margins] + list(self.negative_margins)

    def to_dict(self) -> dict:
        return asdict(self)


def _errors(weights: np.ndarray, truth: np.ndarray, dtype: torch.dtype = torch.float64):
    """Per row: ℓ∞ and ℓ1 error, and whether every weight is within ``dtype``'s entry of the tolerance table."""
    diff = np.abs(weights - truth)                                                      # (rows, length)
    tol = tolerance(dtype)
    within = (diff <= tol["atol"] + tol["rtol"] * np.abs(truth)).all(axis=-1)
    return diff.max(axis=-1), diff.sum(axis=-1), within


def run(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "search_precision.csv", keys=["alpha", "comparison", "margin", "group", "seed"],
                         config=config.to_dict(), seeds=list(config.seeds))
    margins = config.margins()
    # tied_group_rows makes one row per (margin, group), margins outermost
    labels = [(m, k) for m in margins for k in config.group_sizes]
    for alpha in tqdm(config.alphas, desc="search precision"):
        for seed in config.seeds:
            if table.has(alpha=alpha, comparison="float64 search", seed=seed, margin=labels[-1][0],
                         group=labels[-1][1]):
                continue
            rows = tied_group_rows(alpha, margins, config.group_sizes, config.length, seed=seed)  # (rows, length)
            truth = ref.entmax(rows, alpha)
            for comparison, dtype in WORKING_DTYPES.items():
                # the search itself, in this working dtype (the public maps would pick float64 above the limit)
                weights, _, _ = _threshold.entmax_forward(torch.from_numpy(rows).to(dtype), alpha, need_s=False)
                max_abs, l1, within = _errors(weights.double().numpy(), truth, dtype)
                for (margin, group), e_max, e_l1, ok, w in zip(labels, max_abs, l1, within, truth[:, 1]):
                    table.add(dict(alpha=alpha, comparison=comparison, margin=margin, group=group, seed=seed,
                                   max_abs_error=float(e_max), l1_error=float(e_l1), within_tolerance=bool(ok),
                                   group_weight=float(w)))
            if seed == config.seeds[0]:
                for i, (margin, group) in enumerate(labels):
                    if margin <= 0 or not np.isclose(np.log10(margin), config.high_precision_log_margins).any():
                        continue
                    exact = entmax_high_precision(rows[i], alpha)
                    max_abs, l1, within = _errors(truth[i : i + 1], exact[None])
                    table.add(dict(alpha=alpha, comparison="reference", margin=margin, group=group, seed=seed,
                                   max_abs_error=float(max_abs[0]), l1_error=float(l1[0]),
                                   within_tolerance=bool(within[0]), group_weight=float(exact[1])))
            table.flush()   # a checkpoint per (α, seed): an interrupted run resumes from here
    return table.flush()


def summarise(path: Path) -> None:
    import pandas as pd

    df = pd.read_csv(path)
    worst = df.pivot_table(index="alpha", columns="comparison", values="max_abs_error", aggfunc="max")
    print(f"worst |weight error| per α (float32 maps run in float64 above α = {_threshold.FLOAT32_MAX_ALPHA}):")
    print(worst.to_string(float_format=lambda x: f"{x:.2g}"))
    within = df.pivot_table(index="alpha", columns="comparison", values="within_tolerance", aggfunc="mean")
    print("share of rows within the tolerance table:")
    print(within.to_string(float_format=lambda x: f"{x:.3f}"))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three α, one seed (tests)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the results table")
    args = parser.parse_args(argv)
    path = run(Config.quick() if args.quick else Config(), args.out)
    summarise(path)
    return path


if __name__ == "__main__":
    main()
