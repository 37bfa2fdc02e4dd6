"""Record attention statistics while a model samples: ``record_attention(...)`` → tidy DataFrame.

    with record_attention(pipe, variants=("softmax", "entmax(1.5)", "pladis(2, 1.5)")) as rec:
        pipe(prompt, num_inference_steps=25)
    df = rec.to_dataframe()   # one row per (step, timestep, layer, head, branch, variant)

Counterfactual by design: the model runs whatever its processors run (stock softmax, or PLADIS when
``apply_pladis`` is active — both orders of nesting work), and at every selected attention call the probe
recomputes, *on the same q/k/v*, the weights of every requested variant and measures them side by side.

Streaming: each call is reduced at once to per-head means over the query positions and the batch items of each
guidance branch, and added into an accumulator keyed by (step, timestep, layer, branch, variant); nothing of size
Lq·Lk is kept, so memory is the result rows (plus heat maps at the few steps asked for). Repeated sampling runs
inside one context (several prompts) are averaged per step over their batch items, so a run of three prompts
weighs three times a run of one (``n_calls`` counts the calls, ``n_items`` the items); a ``*_max`` column
(``lipschitz_max``) is the maximum over them all, not a mean of maxima.

Step and timestep come from a forward pre-hook on the denoiser (:mod:`pladis_analysis.diffusion.tracking`), so
they reach the probe for bare models in hand-written loops and for models that pass no kwargs to their
processors (SANA).

On CUDA the per-row statistics come from the fused kernel instead (``backend="auto"``, the default): one launch
per distinct (α, λ) among the variants writes every weight statistic of softmax, α-entmax and the PLADIS mix
and the top gap (:data:`pladis_analysis.maps.kernels.STAT_NAMES`), so the probe never materialises a score
matrix. The weight and gap statistics only: output statistics, sensitivities and heat maps need the weights,
and take the torch path. One convention differs: every statistic is computed from the model's own q/k/v dtype
with float32 accumulation (the torch path upcasts q/k/v first), so the two agree to float32 rounding of the
scores.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..diffusion.layers import LayerSpec, _group_and_block
from ..diffusion.patch import processor_for, swap_processors
from ..diffusion.processor import AttentionCall, AttentionMap
from ..diffusion.tracking import parse_layout
from ..maps.kernels.dispatch import check_backend, maybe_triton_attention
from . import stats as st
from .sensitivity import SensitivityConfig, lipschitz_power_iteration, relative_perturbation

DEFAULT_VARIANTS = ("softmax", "entmax(1.5)", "pladis(2, 1.5)")
STAT_GROUPS = {
    "basic": st.BASIC_STATS,
    "weights": st.WEIGHT_STATS,
    "gap": st.GAP_STATS,
    "output": st.OUTPUT_STATS,
    "all": st.BASIC_STATS + st.OUTPUT_STATS,
}
KNOWN_STATS = st.BASIC_STATS + st.OUTPUT_STATS
# what the fused kernel's statistics give (weight statistics and the top gap, not the outputs)
FUSED_STATS = st.BASIC_STATS
KEY_COLUMNS = ("step", "timestep", "layer", "head", "branch", "variant")


def parse_stats(stats: str | Iterable[str]) -> tuple[str, ...]:
    """Expand group names (``basic``, ``weights``, ``gap``, ``output``, ``all``) into statistic names."""
    items = [stats] if isinstance(stats, str) else list(stats)
    out: list[str] = []
    for item in items:
        names = STAT_GROUPS.get(item, (item,))
        for name in names:
            if name not in KNOWN_STATS:
                raise ValueError(f"stats: {item!r} is not a statistic or group; statistics: {KNOWN_STATS}, "
                                 f"groups: {sorted(STAT_GROUPS)} (sensitivity is configured with sensitivity=)")
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError(f"stats={stats!r}: no statistic named; statistics: {KNOWN_STATS}, "
                         f"groups: {sorted(STAT_GROUPS)}")
    return tuple(out)


def _chain(first, second):
    def both(call):
        first(call)
        second(call)
    return both


class AttentionRecorder:
    """The object :func:`record_attention` returns; see the module docstring.

    Processors are installed on construction and removed by :meth:`remove` (``__exit__`` calls it, also when
    the body raises). Results stay readable after removal.
    """

    def __init__(self, model_or_pipeline, stats: str | Iterable[str] = "basic",
                 variants: Sequence[str | AttentionMap] = DEFAULT_VARIANTS, layers: LayerSpec = "cross",
                 sensitivity: SensitivityConfig | bool | None = None, heatmap_steps: Iterable[int] = (),
                 heatmap_size: int = 16, batch_layout: str | Sequence[str] | None = "auto",
                 tsallis_alpha: float = 1.5, backend: str = "auto"):
        self.stats = parse_stats(stats)
        self.variants = tuple(AttentionMap.parse(v) for v in variants)
        if not self.variants:
            raise ValueError("variants=(): give at least one map, e.g. ('softmax',)")
        labels = [v.label for v in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variants={labels}: duplicates")
        if sensitivity is True:
            sensitivity = SensitivityConfig()
        self.sensitivity: SensitivityConfig | None = sensitivity or None
        self.heatmap_steps = frozenset(int(s) for s in heatmap_steps)
        if heatmap_size < 1:
            raise ValueError(f"heatmap_size={heatmap_size!r}: must be ≥ 1")
        self.heatmap_size = int(heatmap_size)
        if not (tsallis_alpha > 0 and math.isfinite(tsallis_alpha)):
            raise ValueError(f"tsallis_alpha={tsallis_alpha!r}: must be finite and > 0")
        self.tsallis_alpha = float(tsallis_alpha)
        self.backend = check_backend(backend)
        self._why_not_fused = _why_not_fused(self.stats, self.sensitivity, self.heatmap_steps)
        if backend == "triton" and self._why_not_fused:
            raise ValueError(f"backend='triton': {self._why_not_fused}; use backend='auto' or 'torch'")
        self._launches = _fused_launches(self.variants)
        self.calls_by_path = {"triton": 0, "torch": 0}   # how many attention calls each path measured
        self.layers_spec = layers
        self.batch_layout = parse_layout(batch_layout)
        self.stat_names = self.stats + (self.sensitivity.stat_names() if self.sensitivity else ())
        # (step, timestep, layer, layout, variant, running maps, query_tokens) -> _Accumulator
        self._acc: dict[tuple, _Accumulator] = {}
        self._max_rows = [i for i, name in enumerate(self.stat_names) if name.endswith("_max")]
        self._heat: dict[tuple, list] = {}
        self._generator = torch.Generator().manual_seed(self.sensitivity.seed if self.sensitivity else 0)
        self.state = None

        def make(layer, state):
            if self.state is None:
                self.state = state
                state.reset()  # steps count from the first model call inside this recorder
            probe = self._make_probe(layer.name)
            current = layer.module.processor
            existing = getattr(current, "probe", None)
            changes = {"probe": probe if existing is None else _chain(existing, probe), "state": state}
            if self.batch_layout is not None:
                changes["probe_layout"] = self.batch_layout
            return processor_for(layer, **changes)

        self._swap = swap_processors(model_or_pipeline, layers, make)
        self.layers = list(self._swap.layers)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Restore the processors that were there before recording (after any swap installed later is removed:
        see :meth:`~pladis_analysis.diffusion.patch.ProcessorSwap.remove`)."""
        self._swap.remove()

    def __enter__(self) -> "AttentionRecorder":
        self._swap.__enter__()  # refuses a removed recorder, which would record nothing
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def reset(self) -> None:
        """Drop the results so far and restart step counting."""
        self._acc.clear()
        self._heat.clear()
        if self.state is not None:
            self.state.reset()

    # -- the probe ------------------------------------------------------------------------------------------
    def _make_probe(self, layer: str):
        def probe(call: AttentionCall) -> None:
            with torch.no_grad():
                self._observe(layer, call)
        return probe

    def _observe(self, layer: str, call: AttentionCall) -> None:
        state = call.state
        step = state.step if state is not None else -1
        timestep = state.timestep if state is not None else float("nan")
        layout = call.layout
        n_chunks = len(layout)

        if self.backend != "torch" and not self._why_not_fused:
            fused = self._fused_rows(call)
            if fused is not None:
                self.calls_by_path["triton"] += 1
                for variant, rows in fused.items():
                    values = [_branch_means(rows[name], n_chunks) for name in self.stats]  # each (n_chunks, H)
                    self._accumulate((step, timestep, layer, layout, variant.label, _running(call),
                                      call.query.shape[-2]), torch.stack(values).double(), call)
                return
        self.calls_by_path["torch"] += 1

        q, k, v = call.query.float(), call.key.float(), call.value.float()  # (B, H, Lq|Lk, d)
        mask = call.mask
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.float()
        scores = st.masked_scores((q @ k.transpose(-1, -2)) * call.scale, mask)  # (B, H, Lq, Lk)
        weights = _VariantWeights(scores)
        gap = st.top_gap(st.gap_scores(scores, mask)) if set(self.stats) & set(st.GAP_STATS) else None
        need_out = bool(set(self.stats) & set(st.OUTPUT_STATS))
        out_softmax = weights.get(AttentionMap.softmax()) @ v if need_out else None
        heat = step in self.heatmap_steps

        for variant in self.variants:
            a = weights.get(variant)
            rows = st.row_stats(a, mask=mask, alpha=variant.entmax_alpha, tsallis_alpha=self.tsallis_alpha,
                                names=self.stats, gap=gap)
            if need_out:
                out = a @ v
                if "out_delta" in self.stats:
                    rows["out_delta"] = (out - out_softmax).norm(dim=-1)
                if "out_norm" in self.stats:
                    rows["out_norm"] = out.norm(dim=-1)
            values = [_branch_means(rows[name], n_chunks) for name in self.stats]  # each (n_chunks, H)
            if self.sensitivity is not None:
                values += self._sensitivity(call, q, k, v, mask, weights, variant, n_chunks)
            stacked = torch.stack(values).double()  # (n_stats, n_chunks, H)
            self._accumulate((step, timestep, layer, layout, variant.label, _running(call), q.shape[-2]), stacked,
                             call)
            if heat:
                self._add_heatmap(step, layer, layout, variant.label, a, call)

    def _accumulate(self, key: tuple, stacked: torch.Tensor, call: AttentionCall) -> None:
        """Add one call's per-chunk means (n_stats, n_chunks, H), weighted by the batch items of a chunk."""
        slot = self._acc.get(key)
        if slot is None:
            slot = self._acc[key] = _Accumulator(stacked, self._max_rows)
        slot.add(stacked, items=call.query.shape[0] // len(call.layout))

    def _fused_rows(self, call: AttentionCall) -> dict[AttentionMap, dict[str, torch.Tensor]] | None:
        """Per-row statistics (B, H, Lq) of every variant from the fused kernel's, or ``None`` where the dispatch
        sends this call to the torch path (under ``auto``: not CUDA, a shape or dtype the kernel does not take,
        a kernel that does not build)."""
        from ..maps.kernels import STAT_NAMES

        per_launch = {}
        for alpha, lam in self._launches:
            result = maybe_triton_attention(call.query, call.key, call.value, map_name="pladis",
                                            attn_mask=call.mask, score_scale=call.scale, pladis_scale=lam,
                                            alpha=alpha, backend=self.backend, return_stats=True,
                                            tsallis_alpha=self.tsallis_alpha)
            if result is None:
                return None
            per_launch[alpha, lam] = result[1]                                               # (B, H, Lq, n_stats)
        out = {}
        for variant in self.variants:
            launch, map_name = _fused_source(variant, self._launches)
            stats = per_launch[launch]
            column = lambda name: stats[..., STAT_NAMES.index(name)]  # noqa: E731
            rows = {name: column(f"{name}_{map_name}") for name in st.WEIGHT_STATS if name != "support_fraction"}
            rows["support_fraction"] = st.support_fraction(rows["support_size"], call.mask, call.key.shape[-2])
            rows["top_gap"] = column("top_gap")
            rows["onehot_fraction"] = (rows["top_gap"] >= st.onehot_threshold(variant.entmax_alpha)).float()
            out[variant] = rows
        return out

    def _sensitivity(self, call, q, k, v, mask, weights, variant, n_chunks) -> list[torch.Tensor]:
        cfg = self.sensitivity
        gen = self._generator
        n_q = q.shape[-2]
        rows = torch.randperm(n_q, generator=gen)[:min(cfg.max_rows, n_q)].to(q.device)
        q_r = q[..., rows, :]  # (B, H, R, d)
        mask_r = mask if mask is None or mask.shape[-2] == 1 else mask[..., rows, :]

        def attend(query, key, value):
            z = st.masked_scores((query @ key.transpose(-1, -2)) * call.scale, mask_r)
            return _VariantWeights(z).get(variant) @ value

        base = weights.get(variant)[..., rows, :] @ v  # (B, H, R, dv)
        out: list[torch.Tensor] = []
        if "text" in cfg.targets:
            # The text perturbation goes through the key/value projections in float32 (the weights upcast):
            # rounded to a half-precision model's dtype, a relative 1e-3 would mostly vanish (bfloat16's half-ulp
            # is 2e-3) and the projections' own rounding would swamp the rest. Base keys and values the same way.
            context = call.context.float()
            attended = None  # (B, Lk, 1): tokens some head and query may attend; padding is left alone
            if call.mask is not None:
                attended = st.unmasked_keys(call.mask).flatten(1, -2).any(1)                    # (B or 1, Lk)
                attended = attended.expand(context.shape[0], -1)[..., None].to(context.dtype)
            k_text, v_text = call.project_kv(context)
            base_text = attend(q_r, k_text.float(), v_text.float())
        for target in cfg.targets:
            for eps in cfg.eps:
                if target == "query":
                    delta = relative_perturbation(q_r, eps, (-1,), gen)  # per row
                    moved = attend(q_r + delta, k, v)
                    ratio = (moved - base).norm(dim=-1) / delta.norm(dim=-1).clamp_min(1e-30)
                else:
                    delta = relative_perturbation(context, eps, (-2, -1), gen, keep=attended)  # per batch item
                    k2, v2 = call.project_kv(context + delta)
                    moved = attend(q_r, k2.float(), v2.float())
                    # (B, H, R) / (B, 1, 1)
                    ratio = (moved - base_text).norm(dim=-1) / delta.flatten(1).norm(dim=-1).clamp_min(1e-30)[
                        :, None, None]
                out.append(_branch_means(ratio, n_chunks))
        if cfg.lipschitz:
            z_r = st.masked_scores((q_r @ k.transpose(-1, -2)) * call.scale, mask_r)
            parts = _VariantWeights(z_r).jacobian_parts(variant)
            lip = lipschitz_power_iteration(parts, k, v, call.scale, cfg.iterations, gen)  # (B, H, R)
            out.append(_branch_means(lip, n_chunks))
            b = lip.shape[0]
            out.append(lip.reshape(n_chunks, b // n_chunks, *lip.shape[1:]).amax(dim=(1, 3)))
        return out

    def _add_heatmap(self, step, layer, layout, variant, weights, call) -> None:
        b, h, n_q, n_k = weights.shape
        hw = call.spatial or _spatial_shape(n_q, call.state.latent_hw if call.state is not None else None)
        if hw is None:
            return
        n_chunks = len(layout)
        # (B, H, Lq, Lk) -> (chunks, Lk, h, w): mean over heads and the branch's batch items
        maps = weights.float().mean(1).reshape(n_chunks, b // n_chunks, n_q, n_k).mean(1)
        maps = maps.transpose(1, 2).reshape(n_chunks, n_k, *hw)
        maps = F.interpolate(maps, size=(self.heatmap_size, self.heatmap_size), mode="bilinear",
                             align_corners=False)
        for c, branch in enumerate(layout):
            key = (step, layer, branch, variant)
            slot = self._heat.get(key)
            if slot is None:
                self._heat[key] = [maps[c].double(), 1]
            else:
                slot[0] += maps[c].double()
                slot[1] += 1

    # -- results ----------------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes held by the accumulators (statistics and heat maps)."""
        total = sum(slot.nbytes() for slot in self._acc.values())
        return total + sum(t.numel() * t.element_size() for t, _ in self._heat.values())

    def to_dataframe(self) -> pd.DataFrame:
        """Tidy results: one row per (step, timestep, layer, head, branch, variant); statistic columns are means
        over query positions and the branch's batch items (and over repeated runs: ``n_calls`` calls of
        ``n_items`` items per branch in all), ``*_max`` columns maxima; ``running_map`` is what the branch ran."""
        records = []
        for (step, timestep, layer, layout, variant, running, n_q), slot in self._acc.items():
            mean = slot.result().cpu().numpy()  # (n_stats, n_chunks, H)
            group, block = _group_and_block(layer)
            for c, branch in enumerate(layout):
                for head in range(mean.shape[-1]):
                    row = {"step": step, "timestep": timestep, "layer": layer, "head": head, "branch": branch,
                           "variant": variant, "group": group, "running_map": running[c], "query_tokens": n_q,
                           "n_calls": slot.calls, "n_items": slot.items}
                    row.update({name: float(mean[i, c, head]) for i, name in enumerate(self.stat_names)})
                    records.append(row)
        columns = (list(KEY_COLUMNS) + ["group", "running_map", "query_tokens", "n_calls", "n_items"]
                   + list(self.stat_names))
        df = pd.DataFrame.from_records(records, columns=columns)
        return df.sort_values(["step", "layer", "branch", "variant", "head"], kind="stable").reset_index(drop=True)

    def heatmaps(self) -> dict[tuple, torch.Tensor]:
        """``{(step, layer, branch, variant): (Lk, S, S)}`` mean per-token maps, S = ``heatmap_size``."""
        return {key: (total / calls).float().cpu() for key, (total, calls) in self._heat.items()}

    def heatmap(self, step: int, variant: str = "softmax", branch: str = "cond",
                layers: Iterable[str] | None = None) -> torch.Tensor:
        """Per-token map (Lk, S, S) at ``step``, averaged over ``layers`` (default: all recorded), DAAM-style."""
        variant = AttentionMap.parse(variant).label
        chosen = [m for (s, layer, b, v), m in self.heatmaps().items()
                  if s == step and b == branch and v == variant and (layers is None or layer in set(layers))]
        if not chosen:
            raise ValueError(f"no heat map for step={step}, variant={variant!r}, branch={branch!r}; recorded "
                             f"steps: {sorted({k[0] for k in self._heat})} (set heatmap_steps=)")
        return torch.stack(chosen).mean(0)

    def config(self) -> dict:
        """The recorder's settings, for provenance."""
        return {"stats": list(self.stats), "variants": [v.label for v in self.variants],
                "layers": self.layers, "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None,
                "heatmap_steps": sorted(self.heatmap_steps), "heatmap_size": self.heatmap_size,
                "batch_layout": list(self.batch_layout) if self.batch_layout else "auto",
                "tsallis_alpha": self.tsallis_alpha, "backend": self.backend,
                "calls_by_path": dict(self.calls_by_path)}

    def save(self, path, seeds: Iterable[int] | None = None, **meta) -> "object":
        """Write :meth:`to_dataframe` as CSV with ``<name>.meta.json`` (provenance + :meth:`config`)."""
        from ..results import provenance, write_table

        return write_table(self.to_dataframe(), path, provenance({"recorder": self.config(), **meta}, seeds))


class _Accumulator:
    """Running item-weighted sums of per-chunk means (n_stats, n_chunks, H) over calls, and the running maxima of
    the statistics in the rows ``max_rows`` (the ``*_max`` columns)."""

    def __init__(self, like: torch.Tensor, max_rows: list[int]):
        self.total = torch.zeros_like(like)
        self.max_rows = max_rows
        self.maximum = torch.full_like(like[max_rows], -math.inf)
        self.items = 0
        self.calls = 0

    def add(self, values: torch.Tensor, items: int) -> None:
        self.total += values * items
        torch.maximum(self.maximum, values[self.max_rows], out=self.maximum)
        self.items += items
        self.calls += 1

    def result(self) -> torch.Tensor:
        """Item-weighted means, maxima in the rows ``max_rows``."""
        out = self.total / self.items
        out[self.max_rows] = self.maximum
        return out

    def nbytes(self) -> int:
        return (self.total.numel() + self.maximum.numel()) * self.total.element_size()


def _running(call: AttentionCall) -> tuple[str, ...]:
    """The label of the map each guidance chunk of the call ran."""
    return tuple(m.label for m in call.chunk_maps) or (call.map.label,) * len(call.layout)


class _VariantWeights:
    """Weights of several maps on one score tensor, sharing softmax and each α-entmax between variants."""

    def __init__(self, scores: torch.Tensor):
        self.scores = scores
        self._softmax: torch.Tensor | None = None
        self._entmax: dict[float, torch.Tensor] = {}

    def softmax(self) -> torch.Tensor:
        if self._softmax is None:
            from .. import maps

            self._softmax = maps.softmax(self.scores, dim=-1)
        return self._softmax

    def entmax(self, alpha: float) -> torch.Tensor:
        if alpha not in self._entmax:
            from .. import maps

            self._entmax[alpha] = maps.entmax(self.scores, alpha, dim=-1)
        return self._entmax[alpha]

    def get(self, variant: AttentionMap) -> torch.Tensor:
        if variant.kind == "softmax":
            return self.softmax()
        if variant.kind in ("entmax", "sparsemax"):
            return self.entmax(variant.alpha)
        # A = S + λ(E − S)
        return torch.lerp(self.softmax(), self.entmax(variant.alpha), variant.scale)

    def jacobian_parts(self, variant: AttentionMap) -> dict:
        if variant.kind == "softmax":
            return {"softmax": self.softmax()}
        if variant.kind in ("entmax", "sparsemax"):
            return {"entmax": self.entmax(variant.alpha), "alpha": variant.alpha}
        return {"softmax": self.softmax(), "entmax": self.entmax(variant.alpha), "alpha": variant.alpha,
                "scale": variant.scale}


def _why_not_fused(stats: Sequence[str], sensitivity, heatmap_steps) -> str:
    """Why the fused kernel's statistics cannot serve this recorder ('' when they can)."""
    missing = [name for name in stats if name not in FUSED_STATS]
    if missing:
        return f"stats {missing} need the weights themselves (the kernel gives {list(FUSED_STATS)})"
    if sensitivity is not None:
        return "sensitivity= perturbs the inputs and recomputes the weights"
    if heatmap_steps:
        return "heatmap_steps= keeps the weights themselves"
    return ""


def _fused_launches(variants: Sequence[AttentionMap]) -> list[tuple[float, float]]:
    """The (α, λ) of the kernel launches that cover ``variants``: one per PLADIS (α, λ), one per other α-entmax
    α (λ = 1), and for softmax alone any one (every launch also gives softmax's statistics)."""
    launches: list[tuple[float, float]] = []
    for variant in variants:
        if variant.kind == "pladis" and (variant.alpha, variant.scale) not in launches:
            launches.append((variant.alpha, variant.scale))
    for variant in variants:
        if variant.kind in ("entmax", "sparsemax") and all(a != variant.alpha for a, _ in launches):
            launches.append((variant.alpha, 1.0))
    return launches or [(2.0, 0.0)]


def _fused_source(variant: AttentionMap, launches: list[tuple[float, float]]) -> tuple[tuple[float, float], str]:
    """The launch whose statistics hold ``variant``'s, and the map's name among them."""
    if variant.kind == "softmax":
        return launches[0], "softmax"
    if variant.kind == "pladis":
        return (variant.alpha, variant.scale), "pladis"
    return next(launch for launch in launches if launch[0] == variant.alpha), "entmax"


def _branch_means(rows: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(B, H, L) per-row values -> (n_chunks, H): mean over each chunk's batch items and the rows."""
    b = rows.shape[0]
    return rows.reshape(n_chunks, b // n_chunks, *rows.shape[1:]).mean(dim=(1, 3))


def _spatial_shape(n_tokens: int, latent_hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """(h, w) of a layer's token grid, assuming it downsamples the latent (H, W) by one factor on both axes."""
    if latent_hw is None:
        side = math.isqrt(n_tokens)
        return (side, side) if side * side == n_tokens else None
    height, width = latent_hw
    factor = math.sqrt(height * width / n_tokens)
    h = max(1, round(height / factor))
    w = n_tokens // h
    return (h, w) if h * w == n_tokens else None


def record_attention(model_or_pipeline, stats: str | Iterable[str] = "basic",
                     variants: Sequence[str | AttentionMap] = DEFAULT_VARIANTS, layers: LayerSpec = "cross",
                     sensitivity: SensitivityConfig | bool | None = None, heatmap_steps: Iterable[int] = (),
                     heatmap_size: int = 16, batch_layout: str | Sequence[str] | None = "auto",
                     tsallis_alpha: float = 1.5, backend: str = "auto") -> AttentionRecorder:
    """Record attention statistics of ``variants`` at the selected layers while the model runs.

    Args:
        model_or_pipeline: a pipeline with ``unet``/``transformer``, or a bare denoiser.
        stats: statistic names or groups (``"basic"``: entropy, Tsallis entropy, support size and fraction, max
            weight, BOS mass, ‖A‖₁, negative mass, top gap, one-hot fraction; ``"output"``: ``out_delta`` =
            ‖A V − S V‖ and ``out_norm``; ``"all"``).
        variants: maps measured side by side on the same q/k/v (labels or :class:`AttentionMap`).
        layers: a layer spec (default every cross-attention).
        sensitivity: ``True`` or a :class:`~.sensitivity.SensitivityConfig` to add perturbation sensitivities
            and the power-iteration Lipschitz estimate (costly; priced in ``experiments/bench_probe_overhead.py``).
        heatmap_steps: steps at which to keep per-token maps downsampled to ``heatmap_size``².
        batch_layout: guidance layout (``"auto"``, ``"cfg"``, ``"cfg+pag"``, ...), see
            :mod:`pladis_analysis.diffusion.tracking`.
        tsallis_alpha: α of the Tsallis entropy column (one α for all variants, so they compare).
        backend: where the weight and gap statistics come from: ``"auto"`` (the fused kernel on CUDA when the
            requested statistics allow, else torch), ``"triton"`` (the kernel, also on CPU under
            ``TRITON_INTERPRET=1``; a ValueError if the statistics need the weights), ``"torch"``.
            :meth:`AttentionRecorder.config` counts the calls each path measured.

    Use as ``with record_attention(model) as rec: ...`` then ``rec.to_dataframe()``.
    """
    return AttentionRecorder(model_or_pipeline, stats=stats, variants=variants, layers=layers,
                             sensitivity=sensitivity, heatmap_steps=heatmap_steps, heatmap_size=heatmap_size,
                             batch_layout=batch_layout, tsallis_alpha=tsallis_alpha, backend=backend)
