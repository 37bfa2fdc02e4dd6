"""PLADIS weight signs: where are the weights A = (1−λ)S + λE negative, and how much negative mass is there?

Off the entmax support A_i = (1−λ)S_i < 0 for λ > 1, which gives the bound negative mass ≥ (λ−1) Σ_{i∉supp} S_i.
The bound is an equality only when no weight inside the support is negative, and THEORY.md says that fails
often: A_i < 0 inside the support whenever λE_i < (λ−1)S_i, "about half of random rows at α = 1.5,
λ ∈ [1, 4]". This measures that share, per score family, row length, α and λ, checks the bound on every row
("holds on N of N") and records how far the negative mass exceeds it.

Random rows are one source. The other is the bundled model's own cross-attention rows (24 text tokens), kept by
``capture_attention`` at a few sampling steps of prompts drawn from its dataset, on two trajectories: the stock
model's, and the one PLADIS (λ = 2, α = 1.5, the study's layers) samples. Every (α, λ) of the grid is then
applied to the same captured rows, per step, layer group (down, mid, up) and guidance branch.

    python experiments/pladis_weight_signs.py                     # full grid, both sources
    python experiments/pladis_weight_signs.py --quick             # small grid (tests, demo)
    python experiments/pladis_weight_signs.py --sources random    # random rows only

Writes ``results/pladis_weight_signs.csv`` (random rows: one row per family, length, α and λ) and
``results/pladis_weight_signs_bundled.csv`` (bundled model: one row per trajectory, step, group, branch, α and
λ), each with its ``.meta.json``; reruns resume.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pladis_analysis.maps import reference as ref
from pladis_analysis.results import ResultsTable
from pladis_analysis.theory import SCORE_FAMILIES, check_families, sample_score_rows

SOURCES = ("random", "bundled")
TRAJECTORIES = {"stock": None, "pladis(2, 1.5)": (2.0, 1.5)}  # label → (λ, α) applied while sampling


@dataclass
class Config:
    sources: tuple[str, ...] = SOURCES
    families: tuple[str, ...] = SCORE_FAMILIES
    lengths: tuple[int, ...] = (8, 24, 77)
    alphas: tuple[float, ...] = (1.25, 1.5, 2.0)
    scales: tuple[float, ...] = (1.5, 2.0, 3.0, 4.0)
    rows: int = 2000
    seed: int = 0
    # bundled model: prompts per dataset kind (single, pair), sampling steps, the steps captured, guidance
    bundled_prompts_per_kind: int = 8
    bundled_steps: int = 25
    bundled_record_steps: tuple[int, ...] = (0, 6, 12, 18, 24)
    trajectories: tuple[str, ...] = tuple(TRAJECTORIES)
    guidance_scale: float = 5.0
    prompt_seed: int = 3000  # disjoint from training (0), the model evaluation (1000) and the study (2000)

    def __post_init__(self):
        check_families(self.families, SCORE_FAMILIES)
        if any(not a > 1.0 for a in self.alphas) or any(not s > 1.0 for s in self.scales):
            raise ValueError(f"alphas and scales must be > 1, got alphas={self.alphas}, scales={self.scales}")
        if min(self.lengths) < 2 or self.rows < 1:
            raise ValueError(f"lengths must be >= 2 and rows >= 1, got {self.lengths}, {self.rows}")
        if not set(self.sources) <= set(SOURCES) or not set(self.trajectories) <= set(TRAJECTORIES):
            raise ValueError(f"sources={self.sources}, trajectories={self.trajectories}: known sources are "
                             f"{SOURCES}, known trajectories {tuple(TRAJECTORIES)}")
        bad = [s for s in self.bundled_record_steps if not 0 <= s < self.bundled_steps]
        if bad or self.bundled_prompts_per_kind < 1:
            raise ValueError(f"bundled_record_steps has {bad} outside 0..{self.bundled_steps - 1}, or "
                             f"bundled_prompts_per_kind={self.bundled_prompts_per_kind} < 1")

    @classmethod
    def quick(cls) -> "Config":
        return cls(families=("gaussian", "rounded"), lengths=(8,), alphas=(1.5,), scales=(2.0, 4.0), rows=200,
                   bundled_prompts_per_kind=1, bundled_steps=3, bundled_record_steps=(0, 2))

    def to_dict(self) -> dict:
        return asdict(self)

    def table_config(self, source: str) -> dict:
        """The fields that decide ``source``'s table (a rerun of one source leaves the other's table alone)."""
        shared = ("alphas", "scales", "seed")
        own = {"random": ("families", "lengths", "rows"),
               "bundled": ("bundled_prompts_per_kind", "bundled_steps", "bundled_record_steps", "trajectories",
                           "guidance_scale", "prompt_seed")}[source]
        return {name: value for name, value in self.to_dict().items() if name in shared + own}


def weight_signs(Z: np.ndarray, alpha: float, scale: float) -> dict:
    """Per-row sign statistics of the PLADIS weights of the rows of Z, averaged, and the bound checked per row."""
    S, E = ref.softmax(Z), ref.entmax(Z, alpha)
    A = (1.0 - scale) * S + scale * E  # the reference's pladis_weights, kept apart to reuse S and E
    inside = E > 0.0
    negative_mass = np.where(A < 0.0, -A, 0.0).sum(axis=-1)
    bound = (scale - 1.0) * np.where(inside, 0.0, S).sum(axis=-1)
    negative_inside = (inside & (A < 0.0)).any(axis=-1)
    one_hot = inside.sum(axis=-1) == 1
    slack = 1e-12 * (1.0 + scale)  # rounding of the sums (weights ≤ 1, λ ≤ a few)
    return dict(
        share_rows_negative_inside=float(negative_inside.mean()),
        share_rows_one_hot=float(one_hot.mean()),
        # one-hot on the first key: in a model's rows the start-of-text token, where PLADIS outputs
        # λ·v₀ + (1−λ)·(softmax's output), at λ = 2 the softmax output mirrored through v₀
        share_rows_one_hot_on_first_key=float((one_hot & inside[:, 0]).mean()),
        mean_support=float(inside.sum(axis=-1).mean()),
        mean_negative_mass=float(negative_mass.mean()),
        mean_bound=float(bound.mean()),
        mean_excess_over_bound=float((negative_mass - bound).mean()),
        bound_holds=int((negative_mass >= bound - slack).sum()),
        l1_identity_holds=int((np.abs(np.abs(A).sum(axis=-1) - (1.0 + 2.0 * negative_mass)) <= slack).sum()),
    )


def run(config: Config, out: Path) -> Path:
    table = ResultsTable(out / "pladis_weight_signs.csv", keys=["family", "d", "alpha", "scale"],
                         config=config.table_config("random"), seeds=[config.seed])
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


def bundled_prompts(config: Config) -> list[str]:
    """Prompts drawn from the bundled model's dataset, ``bundled_prompts_per_kind`` of each kind."""
    from pladis_analysis.models.shapes import make_scene

    return [make_scene(i, seed=config.prompt_seed, kind=kind).prompt
            for kind in ("single", "pair") for i in range(config.bundled_prompts_per_kind)]


def capture_bundled_rows(config: Config, trajectory: str,
                         prompts: list[str]) -> tuple[dict[tuple, np.ndarray], dict[int, float]]:
    """The bundled model's cross-attention score rows at the recorded steps of one sampling run of ``prompts`` on
    ``trajectory``: ({(step, group, branch): float64 (rows, Lk)}, {step: timestep})."""
    from contextlib import nullcontext

    import torch

    from pladis_analysis.diffusion import apply_pladis
    from pladis_analysis.models.shapes import load_bundled
    from pladis_analysis.probes import capture_attention

    pipe = load_bundled()
    pladis = TRAJECTORIES[trajectory]
    sampling = nullcontext() if pladis is None else apply_pladis(pipe, scale=pladis[0], alpha=pladis[1])
    with sampling, capture_attention(pipe, "cross", steps=config.bundled_record_steps) as calls:
        pipe(prompts, num_inference_steps=config.bundled_steps,
             guidance_scale=config.guidance_scale, generator=torch.Generator().manual_seed(config.seed),
             output_type="np")
    rows: dict[tuple, list[np.ndarray]] = {}
    for call in calls:
        if call.mask is not None:
            raise ValueError("the bundled model passed an attention mask; this experiment does not apply it")
        scores = call.scores().double()                                                # (B, H, Lq, Lk)
        for branch in call.layout:
            part = scores[call.branch_rows(branch)]
            rows.setdefault((call.step, call.group, branch), []).append(part.reshape(-1, part.shape[-1]).numpy())
    timesteps = {call.step: call.timestep for call in calls}
    return {key: np.concatenate(parts) for key, parts in rows.items()}, timesteps


def run_bundled(config: Config, out: Path) -> Path:
    """The weight-sign statistics of every (α, λ) on the bundled model's captured rows."""
    table = ResultsTable(out / "pladis_weight_signs_bundled.csv",
                         keys=["trajectory", "step", "group", "branch", "alpha", "scale"],
                         config=config.table_config("bundled"), seeds=[config.seed, config.prompt_seed])
    prompts = bundled_prompts(config)
    for trajectory in tqdm(config.trajectories, desc="bundled model trajectories"):
        # a trajectory's rows are written together, so any row of it means all of them are there
        if any(row["trajectory"] == trajectory for row in table.rows):
            continue
        captured, timesteps = capture_bundled_rows(config, trajectory, prompts)
        for (step, group, branch), Z in captured.items():
            for alpha in config.alphas:
                for scale in config.scales:
                    table.add(dict(trajectory=trajectory, step=step, timestep=timesteps[step], group=group,
                                   branch=branch, alpha=alpha, scale=scale, d=Z.shape[-1], rows=len(Z),
                                   **weight_signs(Z, alpha, scale)))
        table.flush(prompts=prompts)
    return table.flush(prompts=prompts)


def summarise(path: Path) -> None:
    df = pd.read_csv(path)
    print(f"negative mass ≥ (λ−1)·(softmax mass off the support): holds on {int(df.bound_holds.sum())} of "
          f"{int(df.rows.sum())} rows; ‖A‖₁ = 1 + 2·negative mass on {int(df.l1_identity_holds.sum())}")
    index = ["trajectory", "group", "branch"] if "trajectory" in df else ["family", "d"]
    share = df.pivot_table(index=index, columns=["alpha", "scale"], values="share_rows_negative_inside")
    print("share of rows with a negative weight inside the entmax support:\n" + share.to_string(float_format="%.2f"))
    # one-hot rows do not depend on λ: one column per α
    one_hot = df.pivot_table(index=index, columns="alpha", values=["share_rows_one_hot",
                                                                    "share_rows_one_hot_on_first_key"])
    print("share of rows where entmax is one-hot, and one-hot on the first key:\n"
          + one_hot.to_string(float_format="%.3f"))


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for tests and the demo")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, help="row sources (default: both)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the results tables")
    args = parser.parse_args(argv)
    config = Config.quick() if args.quick else Config()
    if args.sources:
        config = replace(config, sources=tuple(args.sources))
    runs = {"random": run, "bundled": run_bundled}
    paths = [runs[source](config, args.out) for source in config.sources]
    for path in paths:
        summarise(path)
    return paths


if __name__ == "__main__":
    main()
