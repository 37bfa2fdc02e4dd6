"""How many threshold-search steps does the Triton kernel take, per row and per block of queries?

The fused cross-attention kernel finds α-entmax's threshold τ for a block of BLOCK_M queries at once, and the
block iterates until its slowest row has converged (GPU lanes run in lockstep): its cost is the block's
*largest* step count, and every row that finished earlier idles for the rest. The benchmark
(``experiments/bench_cross_attention.py``) times the kernel on random scores; this experiment counts the steps
that decide that time, on random scores like the benchmark's and on the real cross-attention scores of the
bundled model, so one can tell whether the benchmark's inputs are representative.

The counts are the kernel's own: the row-wise kernel runs the same search (``entmax_rows``) and returns its
per-row step count (``entmax_forward(..., return_steps=True)``). On a CPU it runs in the Triton interpreter
(exact float32 arithmetic, so the counts are those a GPU takes, up to the order of floating-point sums).

Sources:

* ``random``: the benchmark's scores q kᵀ/√d with k ~ N(0, 1), q ~ N(0, σ²), d = 64: score std σ, for
  σ ∈ {0.5, 1, 1.5, 3} (the benchmark uses 1.5) and Lk ∈ {77, 300}.
* ``bundled``: the cross-attention calls of the bundled shapes model while it samples (both guidance
  branches, every layer), grouped by sampling step; per step a seeded sample of ``bundled_max_heads``
  (call, batch, head) slices, each with all its queries. Its prompts have 24 tokens (MiniLM), so these rows
  are shorter than SD's 77.

Each grid point runs in two views of its scores. ``rounding`` = ``scores``: the scores rounded to float32 or
bfloat16, what the row-wise kernel sees on tensors of that dtype. ``rounding`` = ``q, k``: q and k rounded to
bfloat16 and the scores their float32 products, searched with bfloat16's tolerance (``dtype`` = bfloat16), what
the fused kernel computes from bfloat16 inputs; counted for α ≤ 2 only, the α the search bound
(``experiments/search_issue_bound.py``) covers. Rounded scores tie far more often, which matters to
sparsemax's start. Each runs with two stopping rules of the Newton search (α ≤ 2): ``step`` stops a row when
its step is below float32 resolution (the rule alone, as before the bound existed), ``bound`` also stops it as
soon as the proved bound on its weights' ℓ1 error is below the dtype's tolerance (what the kernel does; see
``pladis_analysis.maps.kernels.entmax_rowwise``). For α > 2 the Halley search has no such rule and both rows
agree.

Sparsemax's search starts from Michelot's thresholds on each row's few largest scores
(``entmax_rowwise.default_start_ranks``; the other α start at τ = −1). Column ``start``: ``default`` (the
kernel's), or ``ranks N``: the start on N ranks (``ranks 1`` is τ = −1; ``start_ranks`` holds N either way).
For every α ≤ 2 whose default is not τ = −1, each view also counts from τ = −1; the fused kernel's view also
counts, for every α ≤ 2, each of ``compare_ranks`` that is not the default: so one run compares the kernel's
start with τ = −1 where it differs, and with the sparsemax start where the kernel does not use it.

Per (source, group, dtype, rounding, stop rule, α, start, BLOCK_M) the table has the mean, 90th percentile and
maximum steps per row, the mean steps per block (the block's maximum; blocks are BLOCK_M consecutive queries of
one head, as in the kernel), ``idle_fraction`` = 1 − Σ row steps / (BLOCK_M · Σ block steps) (the share of the
search's row-iterations spent on rows that had already converged) and ``max_l1_error``: the largest ℓ1 distance
of a row's float32 weights from the float64 reference on the same (rounded) scores, next to ``stop_tol``.

    python experiments/search_steps.py            # writes results/search_steps.csv (+ .meta.json); resumes
    python experiments/search_steps.py --quick    # a small grid (tests)
    python experiments/search_steps.py --sources random --out DIR   # the random scores only (GPU check)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

if not torch.cuda.is_available():
    # Triton picks interpreter or compiler when a kernel is decorated: decide before the kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]

from pladis_analysis.maps.kernels import dispatch  # noqa: E402
from pladis_analysis.results import ResultsTable  # noqa: E402


# stop rule → the ℓ1 tolerance passed to the kernel (None: the dtype's, as in normal use; 0: step size only)
STOP_RULES = {"step": 0.0, "bound": None}


@dataclass
class Config:
    sources: tuple[str, ...] = ("random", "bundled")
    alphas: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 3.0, 4.0)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    # input dtypes also counted as the fused kernel sees them: q and k rounded, the scores their float32 products
    qk_dtypes: tuple[str, ...] = ("bfloat16",)
    stop_rules: tuple[str, ...] = ("step", "bound")
    # starts (ranks) also counted on the fused kernel's view for α ≤ 2 where they are not the default
    compare_ranks: tuple[int, ...] = (1, 6)
    block_ms: tuple[int, ...] = (16, 32, 64, 128)
    # random source: score std σ, key counts, queries per head, heads, head dim
    score_stds: tuple[float, ...] = (0.5, 1.0, 1.5, 3.0)
    key_counts: tuple[int, ...] = (77, 300)
    queries: int = 1024
    heads: int = 2
    head_dim: int = 64
    # bundled source: prompts, sampling steps, guidance scale, and which steps to record
    bundled_prompts: tuple[str, ...] = ("a red circle", "a blue square left of a green triangle",
                                        "a yellow triangle", "a green circle above a red square")
    bundled_steps: int = 10
    bundled_record_steps: tuple[int, ...] = (0, 4, 9)
    # per recorded step, a seeded sample of this many (call, batch, head) slices (the interpreter is slow)
    bundled_max_heads: int = 96
    guidance_scale: float = 5.0
    seed: int = 0

    def __post_init__(self):
        if any(not a > 1.0 for a in self.alphas):
            raise ValueError(f"alphas={self.alphas}: every α must be > 1")
        if not set(self.sources) <= {"random", "bundled"}:
            raise ValueError(f"sources={self.sources}: known sources are 'random' and 'bundled'")
        if not set(self.dtypes) <= {"float32", "float16", "bfloat16"}:
            raise ValueError(f"dtypes={self.dtypes}: the kernel takes float32, float16 and bfloat16")
        if not all(1 <= n <= 32 for n in self.compare_ranks):
            raise ValueError(f"compare_ranks={self.compare_ranks}: a start uses 1 to 32 ranks")
        if not set(self.qk_dtypes) <= {"float16", "bfloat16"}:
            raise ValueError(f"qk_dtypes={self.qk_dtypes}: q and k can be rounded to float16 or bfloat16")
        if not set(self.stop_rules) <= set(STOP_RULES):
            raise ValueError(f"stop_rules={self.stop_rules}: known rules are {sorted(STOP_RULES)}")
        if any(b < 1 for b in self.block_ms):
            raise ValueError(f"block_ms={self.block_ms}: block sizes must be >= 1")
        bad = [s for s in self.bundled_record_steps if not 0 <= s < self.bundled_steps]
        if bad:
            raise ValueError(f"bundled_record_steps has {bad}, outside 0..{self.bundled_steps - 1}")

    @classmethod
    def quick(cls) -> "Config":
        return cls(alphas=(1.5, 2.0), block_ms=(32, 64), dtypes=("bfloat16",), score_stds=(1.5,), key_counts=(77,),
                   queries=128, heads=1,
                   bundled_prompts=("a red circle",), bundled_steps=2, bundled_record_steps=(1,), bundled_max_heads=8)

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# score sources: each yields (group, scores) with scores (heads, Lq, Lk), a head's queries consecutive
# --------------------------------------------------------------------------------------------------

def random_scores(config: Config, score_std: float, lk: int, qk_dtype: str | None = None) -> torch.Tensor:
    """The benchmark's scores at std ``score_std``: (heads, Lq, Lk) float32; with ``qk_dtype``, the products
    of q and k rounded to it (as the fused kernel computes them)."""
    gen = torch.Generator().manual_seed(config.seed)
    q = torch.randn(config.heads, config.queries, config.head_dim, generator=gen) * score_std  # (H, Lq, d)
    k = torch.randn(config.heads, lk, config.head_dim, generator=gen)                          # (H, Lk, d)
    return _products(q, k, qk_dtype) / config.head_dim ** 0.5                                  # (H, Lq, Lk)


def _products(q: torch.Tensor, k: torch.Tensor, qk_dtype: str | None) -> torch.Tensor:
    """q kᵀ in float32, of q and k first rounded to ``qk_dtype`` when given."""
    if qk_dtype is not None:
        q, k = (x.to(getattr(torch, qk_dtype)).float() for x in (q, k))
    return q.float() @ k.float().transpose(-1, -2)


def bundled_scores(config: Config) -> dict[tuple[int, str | None], torch.Tensor]:
    """Cross-attention scores of the bundled model per recorded sampling step, in float32 and from q and k
    rounded to each of ``config.qk_dtypes``: {(step, qk_dtype or None): (calls·B·H, Lq, Lk)} (layers with
    different Lq are kept apart: their rows are padded to the longest Lq with −inf rows, which the kernel
    counts as 0 steps and the summaries drop)."""
    from pladis_analysis.models.shapes import load_bundled
    from pladis_analysis.probes import capture_attention

    pipe = load_bundled()
    with capture_attention(pipe, "cross", steps=config.bundled_record_steps) as captured:
        gen = torch.Generator().manual_seed(config.seed)
        pipe(list(config.bundled_prompts), num_inference_steps=config.bundled_steps,
             guidance_scale=config.guidance_scale, generator=gen, output_type="np")
    variants = (None, *config.qk_dtypes)
    calls = {(s, v): [] for s in config.bundled_record_steps for v in variants}
    for call in captured:
        if call.mask is not None:
            raise ValueError("the bundled model passed an attention mask; this experiment does not apply it")
        for v in variants:
            scores = call.scores(None if v is None else getattr(torch, v))                 # (B, H, Lq, Lk)
            calls[(call.step, v)].append(scores.flatten(0, 1))                              # (B·H, Lq, Lk)
    out = {}
    for (s, v), tensors in calls.items():
        if not tensors:
            raise RuntimeError(f"no cross-attention call was recorded at step {s}; is 'cross' the right layer spec?")
        lq = max(t.shape[1] for t in tensors)
        padded = [torch.cat([t, t.new_full((t.shape[0], lq - t.shape[1], t.shape[2]), -torch.inf)], dim=1)
                  for t in tensors]                                                            # (B·H, lq, Lk) each
        slices = torch.cat(padded)                                                               # (slices, lq, Lk)
        keep = torch.randperm(len(slices), generator=torch.Generator().manual_seed(config.seed + s))
        out[(s, v)] = slices[keep[:config.bundled_max_heads].sort().values]
    return out


# --------------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------------

def row_steps(scores: torch.Tensor, alpha: float, stop_tol: float | None,
              start_ranks: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's float32 weights and threshold-search steps per row of ``scores`` (heads, Lq, Lk), in the
    scores' dtype: ``(p, steps)``, (heads, Lq, Lk) and (heads, Lq) int64. ``start_ranks``: the search's start
    (None: the kernel's default for ``alpha``; 1: τ = −1)."""
    from pladis_analysis.maps.kernels.entmax_rowwise import entmax_forward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    p, steps = entmax_forward(scores.to(device), alpha, out_dtype=torch.float32, return_steps=True,
                              stop_tol=stop_tol, start_ranks=start_ranks)
    return p.cpu(), steps.long().cpu()


def max_l1_error(p: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, alpha: float) -> float:
    """max over real rows of ‖p − p*‖₁, p* the float64 reference on the same scores."""
    from pladis_analysis.maps import reference

    rows = scores[valid].double().numpy()                                                       # (rows, Lk)
    exact = torch.from_numpy(reference.entmax(rows, alpha))
    return float((p[valid].double() - exact).abs().sum(dim=-1).max())


def summarise_steps(steps: torch.Tensor, valid: torch.Tensor, block_m: int) -> dict[str, float]:
    """Row and block statistics of ``steps`` (heads, Lq); ``valid`` (heads, Lq) marks real rows."""
    heads, lq = steps.shape
    n_blocks = -(-lq // block_m)
    pad = n_blocks * block_m - lq
    blocks = torch.nn.functional.pad(steps, (0, pad)).view(heads, n_blocks, block_m)          # (H, blocks, BLOCK_M)
    real = torch.nn.functional.pad(valid, (0, pad)).view(heads, n_blocks, block_m)
    block_max = blocks.amax(dim=-1)[real.any(dim=-1)]                                        # blocks with a real row
    row = steps[valid].double()
    return {
        "rows": int(row.numel()),
        "mean_row_steps": float(row.mean()),
        "p90_row_steps": float(np.percentile(row.numpy(), 90)),
        "max_row_steps": int(row.max()),
        "mean_block_steps": float(block_max.double().mean()),
        # every lane of a block runs the block's steps, padding lanes of a short last block included
        "idle_fraction": float(1.0 - row.sum() / (block_m * block_max.double().sum())),
    }


def run(config: Config, out: Path) -> Path:
    error = dispatch.triton_import_error()
    if error is not None:
        raise RuntimeError(f"the kernels cannot run here: {error}")
    from pladis_analysis.maps.kernels.entmax_rowwise import default_start_ranks, stop_tolerance

    table = ResultsTable(out / "search_steps.csv",
                         keys=["source", "group", "lk", "dtype", "rounding", "stop_rule", "alpha", "start",
                               "block_m"],
                         config=config.to_dict(), seeds=[config.seed])
    # each job: (source, group, key count, scores(qk_dtype)) with qk_dtype None for float32 scores
    jobs = []
    if "random" in config.sources:
        jobs += [("random", f"std {s:g}", lk, lambda v, s=s, lk=lk: random_scores(config, s, lk, v))
                 for lk in config.key_counts for s in config.score_stds]
    bundled: dict[tuple[int, str | None], torch.Tensor] = {}

    def bundled_group(s: int, v: str | None) -> torch.Tensor:
        if not bundled:
            bundled.update(bundled_scores(config))
        return bundled[(s, v)]

    if "bundled" in config.sources:
        from pladis_analysis.models.shapes.text_encoder import MAX_LENGTH

        jobs += [("bundled", f"step {s}", MAX_LENGTH, lambda v, s=s: bundled_group(s, v))
                 for s in config.bundled_record_steps]

    def starts(alpha: float, rounding: str) -> dict[str, int]:
        """start label → ranks: the kernel's default; for α ≤ 2 also τ = −1 where that is not the default, and
        on the fused kernel's view each of compare_ranks."""
        default = default_start_ranks(alpha)
        found = {"default": default}
        if alpha <= 2.0:
            others = (1, *config.compare_ranks) if rounding == "q, k" else (1,)
            found.update({f"ranks {n}": n for n in others if n != default})
        return found

    # (dtype, rounding): the scores rounded to dtype (row-wise kernel), or q and k (fused kernel, α ≤ 2)
    variants = [(d, "scores") for d in config.dtypes] + [(d, "q, k") for d in config.qk_dtypes]
    grid = [(d, rounding, r, a, label, ranks) for d, rounding in variants for r in config.stop_rules
            for a in config.alphas if rounding == "scores" or a <= 2.0
            for label, ranks in starts(a, rounding).items()]
    for source, group, lk, make_scores in tqdm(jobs, desc="search steps"):
        made: dict[str | None, torch.Tensor] = {}
        for dtype_name, rounding, rule, alpha, start, ranks in grid:
            key = dict(source=source, group=group, dtype=dtype_name, rounding=rounding, stop_rule=rule, alpha=alpha,
                       start=start)
            if all(table.has(**key, lk=lk, block_m=b) for b in config.block_ms):  # this job's rows: resumed
                continue
            qk_dtype = dtype_name if rounding == "q, k" else None
            if qk_dtype not in made:
                made[qk_dtype] = make_scores(qk_dtype)
            scores = made[qk_dtype]
            dtype = getattr(torch, dtype_name)
            # the kernel's input: rounded scores, or the float32 products searched with the dtype's tolerance
            searched = scores.to(dtype) if rounding == "scores" else scores
            valid = torch.isfinite(scores).any(dim=-1)                                           # (H, Lq) real rows
            stop_tol = stop_tolerance(dtype) if STOP_RULES[rule] is None else STOP_RULES[rule]
            p, steps = row_steps(searched, alpha, stop_tol, ranks)
            measured = dict(start_ranks=ranks, lk=scores.shape[-1],
                            score_std=float(scores[valid].std(dim=-1).mean()),
                            stop_tol=stop_tol, max_l1_error=max_l1_error(p, searched, valid, alpha))
            for block_m in config.block_ms:
                table.add({**key, **measured, "block_m": block_m, **summarise_steps(steps, valid, block_m)})
            table.flush(kernel_mode="interpreter" if dispatch.kernels_interpreted() else "compiled")
    return table.flush(kernel_mode="interpreter" if dispatch.kernels_interpreted() else "compiled")


def report(path: Path) -> None:
    df = pd.read_csv(path)
    view = df[df.block_m == df.block_m.max()] if 32 not in set(df.block_m) else df[df.block_m == 32]
    cols = ["source", "group", "lk", "dtype", "rounding", "stop_rule", "alpha", "start", "score_std",
            "mean_row_steps", "max_row_steps", "mean_block_steps", "idle_fraction", "max_l1_error"]
    print(f"steps per row and per block of {int(view.block_m.iloc[0])} queries:")
    print(view[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small grid for tests")
    parser.add_argument("--sources", nargs="+", choices=("random", "bundled"), default=None,
                        help="score sources (default both; a GPU machine without the bundled model's text encoder: "
                             "random)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="folder for the results table")
    args = parser.parse_args(argv)
    config = Config.quick() if args.quick else Config()
    if args.sources:
        config = dataclasses.replace(config, sources=tuple(args.sources))
    path = run(config, args.out)
    report(path)
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
