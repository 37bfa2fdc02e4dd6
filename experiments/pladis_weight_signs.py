"""PLADIS weight signs: where are the weights A = (1−λ)S + λE negative, and how much negative mass is there?

Off the entmax support A_i = (1−λ)S_i < 0 for λ > 1, which gives the bound negative mass ≥ (λ−1) Σ_{i∉supp} S_i.
The bound is an equality only when no weight inside the support is negative, and THEORY.md says that fails
often: A_i < 0 inside the support whenever λE_i < (λ−1)S_i, "about half of random rows at α = 1.5,
λ ∈ [1, 4]". This measures that share, per score family, row length, α and λ, checks the bound on every row
("holds on N of N") and records how far the negative mass exceeds it.

    python experiments/pladis_weight_signs.py            # full grid
    python experiments/pladis_weight_signs.py --quick    # small grid (tests, demo)

Writes ``results/pladis_weight_signs.csv`` (one row per family, length, α and λ) and its ``.meta.json``; reruns
resume.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pladis_analysis.maps import reference as ref
from pladis_analysis.results import ResultsTable
from pladis_analysis.theory import SCORE_FAMILIES, sample_score_rows

@dataclass
class Config:
    families: tuple[str, ...] = SCORE_FAMILIES
    lengths: tuple[int, ...] = (8, 24, 77)
    alphas: tuple[float, ...] = (1.25, 1.5, 2.0)
    scales: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
    rows: int = 2000
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.families) - set(SCORE_FAMILIES)
        if unknown:
            raise ValueError(f"families contains unknown {sorted(unknown)}; known: {', '.join(SCORE_FAMILIES)}")
        if any(not a > 1.0 for a in self.alphas) or any(not s > 1.0 for s in self.scales):
            raise ValueError(f"alphas and scales must be > 1, got alphas={self.alphas}, scales={self.scales}")
        if min(self.lengths) < 2 or self.rows < 1:
            raise ValueError(f"lengths must be >= 2 and rows >= 1, got {self.lengths}, {self.rows}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(families=("gaussian", "rounded"), lengths=(8,), alphas=(1.5,), scales=(2.0, 4.0), rows=200)

    def to_dict(self) -> dict:
        return asdict(self)


def weight_signs(Z: np.ndarray, alpha: float, scale: float) -> dict:
    """Per-row sign statistics of the PLADIS weights of the rows of Z, averaged, and the bound checked per row."""
    S, E = ref.softmax(Z), ref.entmax(Z, alpha)
    A = (1.0 - scale) * S + scale * E  # the reference's pladis_weights, kept apart to reuse S and E
    inside = E > 0.0
    negative_mass = np.where(A < 0.0, -A, 0.0).sum(axis=-1)
    bound = (scale - 1.0) * np.where(inside, 0.0, S).sum(axis=-1)
    negative_inside = (inside & (A < 0.0)).any(axis=-1)
    slack = 1e-12 * (1.0 + scale)  # rounding of the sums (weights ≤ 1, λ ≤ a few)
    return dict(
        share_rows_negative_inside=float(negative_inside.mean()),
        share_rows_one_hot=float((inside.sum(axis=-1) == 1).mean()),
        mean_support=float(inside.sum(axis=-1).mean()),
        mean_negative_mass=float(negative_mass.mean()),
        mean_bound=float(bound.mean()),
        mean_excess_over_bound=float((negative_mass - bound).mean()),
        bound_holds=int((negative_mass >= bound - slack).sum()),
        l1_identity_holds=int((np.abs(np.abs(A).sum(axis=-1) - (1.0 + 2.0 * negative_mass)) <= slack).sum()),
    )


def run(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "pladis_weight_signs.csv", keys=["family", "d", "alpha", "scale"],
                         config=config.to_dict(), seeds=[config.seed])
    grid = [(f, d, a, s) for f in config.families for d in config.lengths for a in config.alphas
            for s in config.scales]
    for family, d, alpha, scale in tqdm(grid, desc="pladis weight signs"):
        if table.has(family=family, d=d, alpha=alpha, scale=scale):
            continue
        # the same rows for every α and λ of a (family, length)
        rng = np.random.default_rng([config.seed, SCORE_FAMILIES.index(family), d])
        Z = sample_score_rows(family, config.rows, d, rng)
        table.add(dict(family=family, d=d, alpha=alpha, scale=scale, rows=config.rows,
                       **weight_signs(Z, alpha, scale)))
    return table.flush()


def summarise(path: Path) -> None:
    df = pd.read_csv(path)
    print(f"negative mass ≥ (λ−1)·(softmax mass off the support): holds on {int(df.bound_holds.sum())} of "
          f"{int(df.rows.sum())} rows; ‖A‖₁ = 1 + 2·negative mass on {int(df.l1_identity_holds.sum())}")
    share = df.pivot_table(index=["family", "d"], columns=["alpha", "scale"], values="share_rows_negative_inside")
    print("share of rows with a negative weight inside the entmax support:\n" + share.to_string(float_format="%.2f"))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for tests and the demo")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the results table")
    args = parser.parse_args(argv)
    path = run(Config.quick() if args.quick else Config(), args.out)
    summarise(path)
    return path


if __name__ == "__main__":
    main()
