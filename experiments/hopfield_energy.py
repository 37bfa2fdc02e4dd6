"""Hopfield energy study: does the PLADIS-weighted update x ← X A(βXᵀx) descend its energy when λ > 1?

For λ ∈ [0, 1] the update is the concave–convex step of E_λ(x) = ½‖x‖² − [(1−λ) lse + λ Ψ*_α](βXᵀx)/β and
descends it (:mod:`pladis_analysis.theory.energy`; asserted in the tests). For λ > 1, PLADIS' regime, the
coefficient of log-sum-exp is negative and nothing guarantees descent: THEORY.md's "rare increases", measured
here. Each trajectory starts from a noisy copy of a pattern (equal or unequal pattern norms, several noise levels
and β) and takes a fixed number of steps; each step whose energy rises by more than rounding is counted.

    python experiments/hopfield_energy.py            # full grid
    python experiments/hopfield_energy.py --quick    # small grid (tests, demo)

Writes ``results/hopfield_energy.csv`` (one row per trajectory × map) and ``results/hopfield_energy_summary.csv``
(per family and map: the share of trajectories and of steps with an increase, the largest increase, the share
still moving after the last step and the share alternating between two points), each with its
``.meta.json``; reruns resume.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pladis_analysis.results import ResultsTable, provenance, write_table
from pladis_analysis.theory import (PATTERN_FAMILIES, check_families, pladis_energy, pladis_step,
                                    sample_patterns)

EPS = np.finfo(np.float64).eps
UNSETTLED = 1e-6  # a last step longer than this (patterns have norms of order 1) counts as not settled
# an unsettled trajectory back within this fraction of its last move to where it was two steps before alternates
# between two points: it is on, or converging to, a 2-cycle (20 steps do not reach one within 1e-6)
ALTERNATING = 0.01


@dataclass
class Config:
    families: tuple[str, ...] = ("equal_norm", "unequal_norm")
    dim: int = 32
    num_patterns: int = 64
    noise: tuple[float, ...] = (0.1, 0.5, 1.0)
    betas: tuple[float, ...] = (1.0, 4.0, 16.0)
    alphas: tuple[float, ...] = (1.5, 2.0)
    scales: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    steps: int = 20
    trials: int = 50
    seed: int = 0

    def __post_init__(self):
        check_families(self.families, PATTERN_FAMILIES)
        if self.trials < 1 or self.steps < 1 or self.dim < 1 or self.num_patterns < 2:
            raise ValueError(f"trials, steps, dim must be >= 1 and num_patterns >= 2, got {self.trials}, "
                             f"{self.steps}, {self.dim}, {self.num_patterns}")
        if any(not a > 1.0 for a in self.alphas) or any(not s >= 0.0 for s in self.scales):
            raise ValueError(f"alphas must be > 1 and scales >= 0, got alphas={self.alphas}, scales={self.scales}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(dim=8, num_patterns=16, noise=(0.5,), betas=(2.0, 8.0), scales=(0.5, 2.0), steps=8, trials=6)

    def to_dict(self) -> dict:
        return asdict(self)


def rounding_slack(X: np.ndarray, x: np.ndarray, x_next: np.ndarray, energies: tuple[float, float]) -> float:
    """What float64 rounding may add to E(x⁺) − E(x): a few ulps of the terms E is formed from: ½‖x‖², the
    conjugate term Φ/β = ½‖x‖² − E, and the scores' maximum (divided by β: Xᵀx) that Φ is shifted by."""
    half_norm = 0.5 * max(x @ x, x_next @ x_next)
    terms = 2 * half_norm + max(map(abs, energies)) + np.abs(X.T @ np.stack([x, x_next], axis=1)).max()
    return 64 * EPS * terms


def ending(last_three: list[np.ndarray]) -> dict:
    """How a trajectory ends, from its last three points x_{T−2}, x_{T−1}, x_T: ``last_move`` = ‖x_T − x_{T−1}‖
    and ``two_step_gap`` = ‖x_T − x_{T−2}‖ (a trajectory still moving whose two-step gap is far smaller than its
    last move alternates between two points). With fewer points the missing distances are NaN."""
    def gap(back: int) -> float:
        return float(np.linalg.norm(last_three[-1] - last_three[-1 - back])) if len(last_three) > back else np.nan
    return dict(last_move=gap(1), two_step_gap=gap(2))


def trajectory(X: np.ndarray, x: np.ndarray, beta: float, alpha: float, scale: float, steps: int) -> dict:
    """Iterate the update ``steps`` times from x; count the steps whose energy rises by more than rounding."""
    energy = pladis_energy(X, x, beta, alpha, scale)
    start, increases, first, largest, relative = energy, 0, np.nan, 0.0, 0.0
    last_three = [x]
    for step in range(1, steps + 1):
        x_next = pladis_step(X, x, beta, alpha, scale)
        energy_next = pladis_energy(X, x_next, beta, alpha, scale)
        rise = energy_next - energy
        if rise > rounding_slack(X, x, x_next, (energy, energy_next)):
            increases += 1
            first = step if increases == 1 else first
            largest = max(largest, rise)
            relative = max(relative, rise / max(abs(energy), 1.0))
        x, energy = x_next, energy_next
        last_three = [*last_three[-2:], x]
    return dict(increases=increases, first_increase=first, largest_increase=largest,
                largest_relative_increase=relative, energy_start=start, energy_end=energy, **ending(last_three),
                end_norm=float(np.linalg.norm(x)))


def run(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "hopfield_energy.csv", keys=["family", "noise", "beta", "trial", "alpha", "scale"],
                         config=config.to_dict(), seeds=[config.seed])
    grid = [(f, s, b, t) for f in config.families for s in config.noise for b in config.betas
            for t in range(config.trials)]
    for i, (family, noise, beta, trial) in enumerate(tqdm(grid, desc="hopfield energy")):
        if table.has(family=family, noise=noise, beta=beta, trial=trial, alpha=config.alphas[-1],
                     scale=config.scales[-1]):
            continue
        # One generator per trial, seeded by its grid coordinates, so a resumed run draws the same trials.
        rng = np.random.default_rng([config.seed, config.families.index(family), config.noise.index(noise),
                                     config.betas.index(beta), trial])
        X = sample_patterns(family, config.dim, config.num_patterns, rng)
        target = int(rng.integers(config.num_patterns))
        x = X[:, target] + noise * np.linalg.norm(X[:, target]) * rng.standard_normal(config.dim) / np.sqrt(config.dim)
        for alpha in config.alphas:
            for scale in config.scales:
                row = trajectory(X, x, beta, alpha, scale, config.steps)
                table.add(dict(family=family, noise=noise, beta=beta, trial=trial, alpha=alpha, scale=scale,
                               steps=config.steps, **row))
        if i % 50 == 49:
            table.flush()  # a checkpoint: an interrupted run resumes from here
    path = table.flush()
    summarise(path, config)
    # descent is proved for λ ∈ [0, 1] (the module docstring): a rise there is a bug, not a finding
    rises = [r for r in table.rows if r["scale"] <= 1.0 and r["increases"] > 0]
    if rises:
        raise AssertionError(f"{len(rises)} trajectories with λ ≤ 1 rose in energy, e.g. {rises[0]}; the table is "
                             f"written to {path}")
    return path


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per family, α and λ: trajectories and steps with an energy increase, the largest increase, and the
    trajectories still moving at the last step."""
    g = df.groupby(["family", "alpha", "scale"])
    return pd.DataFrame({
        "trajectories": g.size(),
        "trajectories_with_increase": g["increases"].apply(lambda s: int((s > 0).sum())),
        "share_trajectories_with_increase": g["increases"].apply(lambda s: float((s > 0).mean())),
        "share_steps_with_increase": g["increases"].sum() / g["steps"].sum(),
        "largest_increase": g["largest_increase"].max(),
        "largest_relative_increase": g["largest_relative_increase"].max(),
        # still moving at the last step (a cycle, or slow convergence): the patterns have norms of order 1
        "share_trajectories_unsettled": g["last_move"].apply(lambda s: float((s > UNSETTLED).mean())),
        # of those, the ones alternating between two points
        "share_trajectories_alternating": g[["last_move", "two_step_gap"]].apply(
            lambda t: float(((t.last_move > UNSETTLED) & (t.two_step_gap <= ALTERNATING * t.last_move)).mean())),
    }).reset_index()


def summarise(path: Path, config: Config) -> Path:
    summary = summary_table(pd.read_csv(path))
    out = path.with_name("hopfield_energy_summary.csv")
    write_table(summary, out, provenance(config.to_dict(), [config.seed], source=path.name))
    for _, r in summary.iterrows():
        print(f"{r.family:>12} α={r.alpha:g} λ={r.scale:g}: energy rose on {r.trajectories_with_increase} of "
              f"{r.trajectories} trajectories ({r.share_steps_with_increase:.2%} of steps), largest rise "
              f"{r.largest_increase:.3g}; {r.share_trajectories_unsettled:.0%} still moving, "
              f"{r.share_trajectories_alternating:.0%} alternating between two points")
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for tests and the demo")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the results tables")
    args = parser.parse_args(argv)
    return run(Config.quick() if args.quick else Config(), args.out)


if __name__ == "__main__":
    main()
