"""Map regularities: THEORY.md's empirical statements about the maps, measured.

1. **Jacobian norm.** "The largest spectral norms seen for α-entmax are 2^{α−2}, reached at a two-way tie." For
   each α and row length d, a local search (Nelder–Mead from random rows of several scales) maximises ‖J(z)‖₂.
   For α > 2 the search is not needed to settle it: s = p^{2−α} blows up as a weight goes to 0, and with two
   weights w → 0 next to one large one, J has the eigenvalue w^{2−α} on their difference. Those constructed
   rows (``method="edge_pair"``) are measured too, and the search runs on rows of at most 4 entries there, up
   to a cap of 10⁶.
2. **Monotonicity.** "Support size non-increasing in α and in β; Shannon entropy non-increasing in α." On rows
   of several families (Gaussian at two scales, heavy-tailed, rounded to ties), α and β are swept on fine grids
   and every step that increases support or entropy is counted; steps where an entry lies within rounding of
   the threshold are set apart as ambiguous. A local search (Nelder–Mead) also looks for a row whose entropy
   rises between two values of α.

    python experiments/map_regularities.py            # full grids
    python experiments/map_regularities.py --quick    # small grids (tests, demo)

Writes ``results/map_jacobian_norm.csv`` (one row per search start or constructed row) and
``results/map_monotonicity.csv`` (one row per family, row length, sweep), each with its ``.meta.json``; reruns
resume.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from tqdm import tqdm

from pladis_analysis.maps import reference as ref
from pladis_analysis.results import ResultsTable
from pladis_analysis.theory import SCORE_FAMILIES, check_families, sample_score_rows

@dataclass
class Config:
    alphas: tuple[float, ...] = (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
    lengths: tuple[int, ...] = (2, 3, 4, 8, 16)
    starts: int = 8
    search_iterations: int = 400  # Nelder–Mead iterations per coordinate, at most 4000 in all
    norm_cap: float = 1e6  # the search stops climbing here: for α > 2 the norm has no bound to find
    # For α > 2 the edge pairs already show the norm unbounded from d = 3 on, and each evaluation costs far more
    # (rows near the support's edge are solved twice): longer rows are not searched.
    max_length_above_two: int = 4
    edge_weights: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-6)
    families: tuple[str, ...] = SCORE_FAMILIES
    sweep_lengths: tuple[int, ...] = (8, 24, 77)
    rows: int = 300
    alpha_grid: int = 60  # α − 1 log-spaced over [0.02, 3], plus softmax (α = 1)
    beta_grid: int = 60  # β log-spaced over [0.1, 10]
    beta_alphas: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
    entropy_searches: int = 100
    seed: int = 0

    def __post_init__(self):
        check_families(self.families, SCORE_FAMILIES)
        if any(a < 1.0 for a in self.alphas + self.beta_alphas):
            raise ValueError(f"alphas must be >= 1 (1 is softmax), got {self.alphas} and {self.beta_alphas}")
        if min(self.lengths + self.sweep_lengths) < 2 or self.starts < 1 or self.rows < 1:
            raise ValueError("lengths must be >= 2, starts and rows >= 1")

    @classmethod
    def quick(cls) -> "Config":
        return cls(alphas=(1.0, 1.5, 2.0, 3.0), lengths=(2, 4), starts=3, search_iterations=150,
                   edge_weights=(1e-2, 1e-4), sweep_lengths=(8,), rows=20, alpha_grid=12, beta_grid=12,
                   beta_alphas=(1.5,), entropy_searches=4)

    def to_dict(self) -> dict:
        return asdict(self)


def weights(z: np.ndarray, alpha: float) -> np.ndarray:
    return ref.softmax(z) if alpha == 1.0 else ref.entmax(z, alpha)


def jacobian_norm(z: np.ndarray, alpha: float) -> float:
    """‖J(z)‖₂: J is symmetric positive semi-definite, so its largest eigenvalue."""
    return float(np.linalg.eigvalsh(ref.entmax_jacobian(z, alpha))[..., -1])


def two_way_tie_norm(alpha: float) -> float:
    """2^{α−2}: the norm at a two-way tie (s = 2^{α−2} each, J = s (I − ½ 11ᵀ)); ½ for softmax."""
    return 0.5 if alpha == 1.0 else 2.0 ** (alpha - 2.0)


def search_jacobian_norm(alpha: float, d: int, start: int, config: Config) -> dict:
    """Maximise ‖J(z)‖₂ (capped at ``config.norm_cap``) by Nelder–Mead from one random row; describe the row it
    ends on."""
    rng = np.random.default_rng([config.seed, 1, int(alpha * 1000), d, start])
    z0 = rng.standard_normal(d) * (0.3, 1.0, 3.0)[start % 3]
    result = minimize(lambda z: -min(jacobian_norm(z, alpha), config.norm_cap), z0, method="Nelder-Mead",
                      options=dict(maxiter=min(config.search_iterations * d, 4000), xatol=1e-10, fatol=1e-14))
    p = np.sort(weights(result.x, alpha))[::-1]
    return dict(norm_start=jacobian_norm(z0, alpha), norm=-float(result.fun),
                reached_cap=bool(-result.fun >= config.norm_cap), support=int((p > 0).sum()),
                top_weight=float(p[0]), second_weight=float(p[1]), smallest_weight=float(p[p > 0].min()),
                evaluations=int(result.nfev))


def edge_pair_row(alpha: float, w: float, d: int) -> np.ndarray:
    """Scores whose α-entmax weights are (1 − 2w, w, w, 0, …): in the scaled space z' = (α−1)z an entry of weight
    p sits at t = p^{α−1} above the threshold, placed at −½; the other entries lie 1 below it."""
    t = np.array([1.0 - 2.0 * w, w, w]) ** (alpha - 1.0)
    scaled = np.concatenate([t, np.full(d - 3, -1.0)]) - 0.5
    return scaled / (alpha - 1.0)


def run_jacobian_norms(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "map_jacobian_norm.csv", keys=["method", "alpha", "d", "start"],
                         config=config.to_dict(), seeds=[config.seed])
    grid = [(a, d, s) for a in config.alphas for d in config.lengths for s in range(config.starts)
            if a <= 2.0 or d <= config.max_length_above_two]
    for i, (alpha, d, start) in enumerate(tqdm(grid, desc="jacobian norm search")):
        if table.has(method="search", alpha=alpha, d=d, start=start):
            continue
        table.add(dict(method="search", alpha=alpha, d=d, start=start, edge_weight=np.nan,
                       two_way_tie=two_way_tie_norm(alpha), **search_jacobian_norm(alpha, d, start, config)))
        if i % 20 == 19:
            table.flush()  # a checkpoint: an interrupted run resumes from here
    for alpha in (a for a in config.alphas if a > 2.0):
        for start, w in enumerate(config.edge_weights):
            if table.has(method="edge_pair", alpha=alpha, d=3, start=start):
                continue
            z = edge_pair_row(alpha, w, 3)
            p = np.sort(weights(z, alpha))[::-1]
            table.add(dict(method="edge_pair", alpha=alpha, d=3, start=start, edge_weight=w,
                           two_way_tie=two_way_tie_norm(alpha), norm_start=np.nan, norm=jacobian_norm(z, alpha),
                           reached_cap=False, support=int((p > 0).sum()), top_weight=p[0], second_weight=p[1],
                           smallest_weight=p[p > 0].min(), evaluations=1))
    return table.flush()


def _sweep_counts(Z: np.ndarray, grid: np.ndarray, alphas: np.ndarray) -> dict:
    """Support and entropy of every row at every (scale, α) of the sweep, and the steps that increase them.

    ``grid`` multiplies the scores (β) and ``alphas`` gives α at each step (one of them is constant). A step is
    ambiguous when, at either end, some entry lies within 1e-9 (scaled) of the threshold: rounding could flip it.
    """
    support, entropy, near = [], [], []
    for beta, alpha in zip(grid, alphas):
        z = beta * Z
        if alpha == 1.0:
            support.append(np.full(len(Z), Z.shape[1]))
            near.append(np.zeros(len(Z), dtype=bool))
        else:
            tau = ref.entmax_threshold(z, alpha, keepdims=True)
            support.append(ref.support_size(z, alpha))
            near.append((np.abs((alpha - 1.0) * z - tau) < 1e-9).any(axis=-1))
        entropy.append(ref.shannon_entropy(weights(z, alpha)))
    support, entropy, near = (np.stack(v, axis=1) for v in (support, entropy, near))
    ambiguous = near[:, 1:] | near[:, :-1]
    clear = ~ambiguous
    return dict(steps=int(clear.size), ambiguous_steps=int(ambiguous.sum()),
                support_increases=int(((np.diff(support, axis=1) > 0) & clear).sum()),
                entropy_increases=int(((np.diff(entropy, axis=1) > 1e-12) & clear).sum()),
                largest_entropy_increase=float(np.max(np.diff(entropy, axis=1), initial=0.0)),
                support_range=f"{int(support.min())}-{int(support.max())}")


def search_entropy_increase(config: Config) -> dict:
    """Nelder–Mead on H(entmax_{α₂}(z)) − H(entmax_{α₁}(z)), α₁ < α₂, from random rows: the largest found."""
    largest, where = 0.0, ""
    for k in range(config.entropy_searches):
        rng = np.random.default_rng([config.seed, 3, k])
        d = int(rng.integers(3, 9))
        a1 = 1.0 + float(rng.uniform(0.0, 2.5))
        a2 = a1 + float(rng.uniform(0.01, 0.5))
        z0 = rng.standard_normal(d) * (0.3, 1.0, 3.0)[k % 3]
        result = minimize(lambda z: -(ref.shannon_entropy(weights(z, a2)) - ref.shannon_entropy(weights(z, a1))),
                          z0, method="Nelder-Mead", options=dict(maxiter=min(config.search_iterations * d, 4000)))
        if -result.fun > largest:
            largest, where = -float(result.fun), f"d={d}, alpha {a1:.3f} -> {a2:.3f}"
    return dict(largest_entropy_increase=largest, support_range="", steps=config.entropy_searches,
                ambiguous_steps=0, support_increases=0, entropy_increases=int(largest > 1e-12), where=where)


def run_monotonicity(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "map_monotonicity.csv", keys=["family", "d", "sweep", "alpha"],
                         config=config.to_dict(), seeds=[config.seed])
    alpha_steps = np.concatenate([[1.0], 1.0 + np.geomspace(0.02, 3.0, config.alpha_grid)])
    betas = np.geomspace(0.1, 10.0, config.beta_grid)
    sweeps = [("alpha", np.nan)] + [("beta", a) for a in config.beta_alphas]
    grid = [(f, d, s, a) for f in config.families for d in config.sweep_lengths for s, a in sweeps]
    for family, d, sweep, alpha in tqdm(grid, desc="monotonicity sweeps"):
        if table.has(family=family, d=d, sweep=sweep, alpha=alpha):
            continue
        rng = np.random.default_rng([config.seed, 2, SCORE_FAMILIES.index(family), d])
        Z = sample_score_rows(family, config.rows, d, rng)
        if sweep == "alpha":
            counts = _sweep_counts(Z, np.ones_like(alpha_steps), alpha_steps)
        else:
            counts = _sweep_counts(Z, betas, np.full_like(betas, alpha))
        table.add(dict(family=family, d=d, sweep=sweep, alpha=alpha, rows=config.rows, where="", **counts))
        table.flush()
    if not table.has(family="search", d=0, sweep="entropy_in_alpha", alpha=np.nan):
        table.add(dict(family="search", d=0, sweep="entropy_in_alpha", alpha=np.nan, rows=config.entropy_searches,
                       **search_entropy_increase(config)))
    return table.flush()


def summarise(norms: Path, monotone: Path) -> None:
    df = pd.read_csv(norms)
    search = df[df["method"] == "search"].groupby(["alpha", "d"]).agg(norm=("norm", "max"),
                                                                    two_way_tie=("two_way_tie", "first"))
    search["ratio"] = search["norm"] / search["two_way_tie"]
    print("largest ‖J‖₂ found / 2^(α−2):\n" + search["ratio"].unstack("d").to_string(float_format="%.4f"))
    edge = df[df["method"] == "edge_pair"]
    for _, r in edge.iterrows():
        print(f"α={r.alpha:g}: two weights of {r.edge_weight:g}: ‖J‖₂ = {r.norm:.4g}")
    mono = pd.read_csv(monotone)
    print("monotonicity (increasing steps / clear steps):")
    for _, r in mono.iterrows():
        print(f"  {r.family} d={r.d} {r.sweep} α={r.alpha}: support +{r.support_increases}, entropy "
              f"+{r.entropy_increases} of {r.steps} ({r.ambiguous_steps} ambiguous)")


def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grids for tests and the demo")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the results tables")
    args = parser.parse_args(argv)
    config = Config.quick() if args.quick else Config()
    paths = run_jacobian_norms(config, args.out), run_monotonicity(config, args.out)
    summarise(*paths)
    return paths


if __name__ == "__main__":
    main()
