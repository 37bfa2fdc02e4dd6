"""Seaborn figures drawn from saved results tables only.

Every function here takes a path to (or a DataFrame read from) a results file written by an experiment,
and returns a matplotlib Figure; :func:`save_figure` writes it next to its data. Nothing here computes the
numbers it draws.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.ticker

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


def plot_hopfield_energy(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Share of PLADIS-weighted Hopfield steps that raise the energy E_λ, against λ, per α and pattern family
    (from ``results/hopfield_energy_summary.csv``). Descent is guaranteed for λ ≤ 1 (dotted line), not beyond."""
    df = _load(table).copy()
    df["map"] = "α = " + df["alpha"].map("{:g}".format)
    grid = sns.relplot(data=df, x="scale", y="share_steps_with_increase", hue="map", col="family", kind="line",
                       marker="o", height=3.0, aspect=1.3)
    for ax in grid.axes.flat:
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    grid.set_axis_labels("PLADIS scale λ", "steps that raise the energy")
    grid.figure.suptitle("Concave–convex PLADIS updates: energy increases appear only for λ > 1", y=1.03)
    return grid.figure


def plot_pladis_weight_signs(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Share of score rows whose PLADIS weights are negative somewhere inside the entmax support, against λ, per
    α, row length and score family (from ``results/pladis_weight_signs.csv``). Where that happens the negative
    mass exceeds its bound (λ−1)·(softmax mass off the support)."""
    df = _load(table).copy()
    df["map"] = "α = " + df["alpha"].map("{:g}".format)
    df["keys"] = df["d"].astype(str)
    grid = sns.relplot(data=df, x="scale", y="share_rows_negative_inside", hue="map", style="keys", col="family",
                       kind="line", markers=True, height=2.8, aspect=1.1)
    for ax in grid.axes.flat:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylim(0.0, 1.02)
    grid.set_axis_labels("PLADIS scale λ", "rows negative inside the support")
    grid.figure.suptitle("PLADIS weights: negative inside the entmax support, not only off it", y=1.03)
    return grid.figure


def plot_pladis_weight_signs_bundled(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """The same share on the bundled model's cross-attention rows, against the sampling step, per layer group
    (line style), α (colour), guidance branch (column) and λ (row); the stock model's trajectory, or the first
    the table has without it (from ``results/pladis_weight_signs_bundled.csv``)."""
    df = _load(table)
    trajectory = "stock" if (df["trajectory"] == "stock").any() else df["trajectory"].iloc[0]
    df = df[df["trajectory"] == trajectory].copy()
    df["map"] = "α = " + df["alpha"].map("{:g}".format)
    df["λ"] = df["scale"].map("{:g}".format)
    grid = sns.relplot(data=df, x="step", y="share_rows_negative_inside", hue="map", style="group",
                       col="branch", row="λ", kind="line", markers=True, height=2.4, aspect=1.4)
    for ax in grid.axes.flat:
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_ylim(0.0, 1.02)
    grid.set_axis_labels("sampling step", "rows negative inside")
    grid.figure.suptitle("Bundled model's cross-attention: PLADIS weights negative inside the entmax support "
                         f"({trajectory} sampling)", y=1.02)
    return grid.figure


def plot_map_jacobian_norm(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Largest ‖J‖₂ of α-entmax found by local search, per α and row length, against the two-way-tie value
    2^{α−2} (left); for α > 2, ‖J‖₂ of rows with two weights w next to one large weight, against w (right)
    (from ``results/map_jacobian_norm.csv``)."""
    df = _load(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    search = df[df["method"] == "search"].groupby(["alpha", "d"], as_index=False)["norm"].max()
    sns.lineplot(data=search, x="alpha", y="norm", hue="d", style="d", markers=True, dashes=False, ax=left,
                 palette="viridis")
    alphas = sorted(df["alpha"].unique())
    left.plot(alphas, [0.5 if a == 1.0 else 2.0 ** (a - 2.0) for a in alphas], color="black", lw=0.8, ls="--",
              label="2^(α−2) (two-way tie)")
    capped = df.loc[(df["method"] == "search") & df["reached_cap"].astype(bool), "norm"]
    if len(capped):  # the search stops climbing at its cap: those points are lower bounds
        left.axhline(capped.max(), color="grey", lw=0.8, ls=":", label="search cap")
    left.set(yscale="log", xlabel="α (1 = softmax)", ylabel="largest ‖J‖₂ found", title="local search")
    left.legend(title="row length", fontsize=8)
    edge = df[df["method"] == "edge_pair"].copy()
    if len(edge):
        edge["map"] = "α = " + edge["alpha"].map("{:g}".format)
        sns.lineplot(data=edge, x="edge_weight", y="norm", hue="map", marker="o", ax=right)
        right.set(xscale="log", yscale="log")
    right.set(xlabel="weight w of two entries (third: 1 − 2w)", ylabel="‖J‖₂", title="α > 2: two small weights")
    fig.suptitle("Jacobian norm of α-entmax: 2^(α−2) bounds it for α ≤ 2; for α > 2 it is unbounded", y=1.02)
    fig.tight_layout()
    return fig


def plot_bench_maps(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Map benchmark (``experiments/bench_maps.py``): time relative to ``torch.softmax`` per map and
    implementation, one panel per (device, shape) and mode; log scale, lower is faster."""
    df = _load(table).copy()
    df["panel"] = df["device"].astype(str) + "  [" + df["shape"].astype(str).str.replace("x", ", ") + "]"
    maps_drawn = ("softmax", "sparsemax", "entmax15", "entmax(1.25)", "entmax(1.75)", "entmax(3)",
                  "pladis(2, 1.5)")
    order = [m for m in maps_drawn if m in set(df["map"])]
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


def plot_bench_cross_attention(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Cross-attention benchmark (``experiments/bench_cross_attention.py``): time relative to SDPA softmax
    attention per model shape and method, one panel per α; log scale, the issue's 1.3× target dashed. The
    kernel is drawn eager (host launch included) and as CUDA-graph replay (device time), and, where the table
    has it, its softmax-only skeleton (λ = 0: no threshold search) as graph replay."""
    df = _load(table)
    df = df[df["case"] == "attention"].copy()
    graphs = []
    for method in ("triton", "triton_softmax"):
        graph = df[(df["method"] == method) & df["graph_ratio_vs_sdpa"].notna()].copy()
        graph["method"] = f"{method} (graph)"
        graph["ratio_vs_baseline"] = graph["graph_ratio_vs_sdpa"]
        graphs.append(graph)
    df = pd.concat([df[~df["method"].isin(["sdpa", "triton_softmax"])], *graphs], ignore_index=True)
    order = list(dict.fromkeys(df["shape"]))
    methods = [m for m in ("naive", "torch", "triton", "triton (graph)", "triton_softmax (graph)")
               if m in set(df["method"])]
    grid = sns.catplot(data=df, x="shape", y="ratio_vs_baseline", hue="method", col="alpha", kind="bar",
                       order=order, hue_order=methods, height=3.2, aspect=1.6, sharey=True)
    for ax in grid.axes.flat:
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axhline(1.3, color="red", lw=0.8, ls="--")
        ax.tick_params(axis="x", rotation=30)
    device = df["device_name"].iloc[0] if "device_name" in df and len(df) else "?"
    grid.set_axis_labels("", "median time / SDPA")
    grid.set_titles("α = {col_name}")
    dtypes = ", ".join(sorted(map(str, df["dtype"].unique()))) if "dtype" in df else "?"
    grid.figure.suptitle(f"PLADIS cross-attention on {device}, {dtypes} (lower is faster; dashed: 1.3× SDPA)",
                         y=1.03)
    return grid.figure


def plot_pladis_alignment(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """All-attributes alignment accuracy per variant, split and guidance, with the paired difference to stock
    and its bootstrap 95% interval (from ``results/pladis_shapes_alignment_summary.csv``)."""
    df = _load(table)
    if "attribute" in df:
        df = df[df["attribute"] == "all"]
    splits = list(dict.fromkeys(df["split"]))
    guidances = sorted(df["guidance_scale"].unique(), reverse=True)
    fig, axes = plt.subplots(len(guidances), len(splits), figsize=(3.2 * len(splits), 2.8 * len(guidances)),
                             squeeze=False, sharey=True)
    for r, g in enumerate(guidances):
        for c, split in enumerate(splits):
            ax = axes[r][c]
            sub = df[(df["split"] == split) & (df["guidance_scale"] == g)]
            x = range(len(sub))
            ax.bar(x, sub["accuracy"], color=sns.color_palette("deep", len(sub)))
            # Error bars: the paired interval of the difference to stock, drawn around the variant's accuracy.
            err_lo = (sub["delta_vs_stock"] - sub["delta_ci_low"]).clip(lower=0)
            err_hi = (sub["delta_ci_high"] - sub["delta_vs_stock"]).clip(lower=0)
            ax.errorbar(x, sub["accuracy"], yerr=[err_lo, err_hi], fmt="none", ecolor="black", capsize=3, lw=1)
            ax.set_xticks(list(x), sub["variant"], rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{split}, guidance {g:g}", fontsize=9)
            ax.set_ylim(0, 1)
        axes[r][0].set_ylabel("all attributes correct")
    fig.suptitle("Prompt alignment of the bundled model (bars: paired 95% CI of the change vs stock)", y=1.02)
    fig.tight_layout()
    return fig


def _query_row_means(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Means of the recorder's per-(layer, head) rows over the query rows they summarise: each row weighs its
    query tokens times its batch items (``n_items``; ``n_calls`` in tables from before that column), so a layer
    of 64 queries does not count as much as one of 256."""
    items = df["n_items"] if "n_items" in df else df.get("n_calls", 1)
    weight = df["query_tokens"] * items
    weighted = df[columns].mul(weight, axis=0).assign(_weight=weight)
    sums = weighted.groupby([df[c] for c in by]).sum()
    return sums[columns].div(sums["_weight"], axis=0).reset_index()


def plot_attention_regime(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Where cross-attention sits, per sampling step and layer group: the fraction of query rows in entmax's
    one-hot regime (top gap ≥ 1/(α−1)), the start-of-text mass of softmax, and the support size of each sparse
    map (from ``results/pladis_shapes_attention.csv``, conditional branch)."""
    df = _load(table)
    df = _query_row_means(df[df["branch"] == "cond"], ["step", "group", "variant"],
                          ["onehot_fraction", "bos_mass", "support_size"])
    sparse = df[df["variant"].str.startswith("entmax") | (df["variant"] == "sparsemax")]
    dense = df[df["variant"] == "softmax"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    sns.lineplot(data=sparse, x="step", y="onehot_fraction", hue="variant", style="group", ax=axes[0],
                 errorbar=None)
    axes[0].set_title("rows in the one-hot regime")
    sns.lineplot(data=dense, x="step", y="bos_mass", hue="group", ax=axes[1], errorbar=None)
    axes[1].set_title("softmax mass on the start-of-text token")
    sns.lineplot(data=sparse, x="step", y="support_size", hue="variant", style="group", ax=axes[2], errorbar=None)
    axes[2].set_title("entmax support size (tokens)")
    for ax in axes:
        ax.set_xlabel("sampling step")
    fig.tight_layout()
    return fig


def plot_gain_attention(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Does a prompt's change in alignment under PLADIS track its attention statistics? Spearman's ρ over
    prompts with its bootstrap 95% interval, per statistic (rows) and outcome (columns), one colour per split
    (from ``results/pladis_gain_attention_summary.csv``; filled markers: the interval excludes 0)."""
    df = _load(table)
    outcomes = list(dict.fromkeys(df["outcome"]))
    statistics = list(dict.fromkeys(df["statistic"]))
    splits = list(dict.fromkeys(df["split"]))
    guidances = sorted(df["guidance_scale"].unique(), reverse=True)
    colours = dict(zip(splits, sns.color_palette("deep", len(splits))))
    fig, axes = plt.subplots(len(guidances), len(outcomes), squeeze=False, sharex=True, sharey=True,
                             figsize=(3.6 * len(outcomes), 0.32 * len(statistics) * len(guidances) + 1.2))
    for r, g in enumerate(guidances):
        for c, outcome in enumerate(outcomes):
            ax = axes[r][c]
            for k, split in enumerate(splits):
                sub = df[(df["guidance_scale"] == g) & (df["outcome"] == outcome) & (df["split"] == split)]
                sub = sub.set_index("statistic").reindex(statistics)
                y = [i + (k - (len(splits) - 1) / 2) * 0.22 for i in range(len(statistics))]
                err = [(sub["spearman"] - sub["ci_low"]).clip(lower=0),
                       (sub["ci_high"] - sub["spearman"]).clip(lower=0)]
                ax.errorbar(sub["spearman"], y, xerr=err, fmt="none", ecolor=colours[split], lw=1)
                excludes = sub["excludes_zero"].fillna(False).astype(bool)
                ax.scatter(sub["spearman"], y, s=18, edgecolors=colours[split],
                           facecolors=[colours[split] if e else "white" for e in excludes], zorder=3)
            ax.axvline(0.0, color="grey", lw=0.8, ls="--")
            ax.set_yticks(range(len(statistics)), statistics, fontsize=8)
            ax.set_title(f"{outcome}, guidance {g:g}", fontsize=9)
            ax.set_xlim(-1, 1)
    axes[0][0].invert_yaxis()  # shared: the first statistic on top in every panel
    for ax in axes[-1]:
        ax.set_xlabel("Spearman ρ over prompts")
    handles = [matplotlib.lines.Line2D([], [], color=colours[split], marker="o", label=split) for split in splits]
    fig.legend(handles=handles, loc="upper center", ncol=len(splits), bbox_to_anchor=(0.5, 1.0), frameon=False,
               fontsize=8)
    fig.suptitle("Does PLADIS's change in alignment track the prompt's attention? (95% bootstrap CI)", y=1.04)
    fig.tight_layout()
    return fig


def plot_shapes_eval(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Alignment of the bundled model per attribute, split and guidance (``results/shapes_eval_summary.csv``)."""
    df = _load(table)
    grid = sns.catplot(data=df, x="attribute", y="accuracy", hue="guidance_scale", col="split", kind="bar",
                       col_wrap=2, height=2.6, aspect=1.6, palette="deep")
    grid.set(ylim=(0, 1))
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    grid.figure.suptitle("Bundled shapes model: exact alignment per attribute", y=1.02)
    return grid.figure


def plot_probe_overhead(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """Sampling-time overhead over stock of PLADIS and of the probes (``results/bench_probe_overhead.csv``),
    with each condition's target where the issue sets one."""
    df = _load(table)
    df = df[df["condition"] != "stock"]
    fig, ax = plt.subplots(figsize=(6.5, 3))
    sns.barplot(data=df, y="condition", x="overhead", hue="latent", ax=ax, orient="h", palette="deep")
    for i, target in enumerate(df.drop_duplicates("condition")["target"]):
        if pd.notna(target):
            ax.plot([target, target], [i - 0.4, i + 0.4], color="black", lw=1.5)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_xlabel("time over stock (black: target)")
    ax.set_title("Cost of PLADIS and of attention probes (SD1.5-shaped UNet)")
    return fig


def plot_kernel_resources(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """What the fused kernel costs an H100 SM, compiled offline (``results/kernel_resources.csv``): registers per
    thread, spilled stack and resident warps per SM for every launch configuration (queries per block × warps,
    ``/128``: registers capped at 128; ``wg``: its dots compiled to sm_90's warpgroup MMA), per key/head-dim
    family and kernel variant. Registers at 255 with a stack are spills; more resident warps hide more latency.
    With rows from several Triton versions (column ``triton``), one column of panels per family and version."""
    df = _load(table).copy()
    if "triton" in df and df["triton"].nunique() > 1:
        df["family"] = df["family"] + " · Triton " + df["triton"].astype(str)
    df["launch"] = (df["block_m"].astype(str) + "×" + df["num_warps"].astype(str)
                    + df["maxnreg"].map(lambda cap: f"/{cap}" if cap else ""))
    if "tensor_core_path" in df:  # tables before 7b97246 lack it
        df["launch"] += df["tensor_core_path"].map({"wgmma": " wg"}).fillna("")
    alpha = "α = " + df["alpha"].map("{:g}".format)
    df["kernel"] = df["variant"].where(df["variant"] != "pladis", alpha).where(df["variant"] != "pladis_stats",
                                                                               alpha + " + statistics")
    metrics = {"registers": "registers per thread", "stack_bytes": "spilled stack (bytes)",
               "warps_per_sm": "warps per SM (of 64)"}
    long = df.melt(id_vars=["family", "launch", "kernel"], value_vars=list(metrics), var_name="metric")
    long["metric"] = long["metric"].map(metrics)
    grid = sns.catplot(data=long, x="launch", y="value", hue="kernel", col="family", row="metric", kind="bar",
                       sharex="col", sharey="row", height=2.6, aspect=2.0, palette="deep",
                       row_order=list(metrics.values()))
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=30)
    grid.set_titles("{col_name} | {row_name}")
    grid.set_axis_labels("queries per block × warps [/register cap] [wg: warpgroup MMA]", "")
    grid.figure.suptitle("Fused kernel, compiled for sm_90 offline: registers, spills, occupancy", y=1.02)
    return grid.figure


def plot_search_steps(table: str | os.PathLike | pd.DataFrame) -> plt.Figure:
    """The Triton kernel's threshold-search steps per block of queries (``results/search_steps.csv``): what a
    block costs with the ℓ1 stopping bound (the fused kernel's scores from bfloat16 q and k where the table has
    them, else bfloat16 scores; the kernel's default rule and start), how many
    steps the bound saves against stopping on step size alone, and, where the table has both (sparsemax), how
    many the default start saves against starting at τ = −1. One bar per score source and α."""
    df = _load(table)
    block_m = 32 if 32 in set(df["block_m"]) else int(df["block_m"].max())
    df = df[(df["block_m"] == block_m) & (df["dtype"] == "bfloat16")].copy()
    if "rounding" in df and (df["rounding"] == "q, k").any():
        df = df[df["rounding"] == "q, k"]                    # the fused kernel's scores: products of bf16 q and k
    df["scores"] = df["source"] + " " + df["group"] + " (" + df["lk"].astype(str) + " keys)"
    if "start" not in df:                                     # tables from before the start was a column
        df["start"] = "default"
    from_minus_one = df[(df["start"] == "ranks 1") & (df["stop_rule"] == "bound")]
    df = df[df["start"] == "default"]
    bound = df[df["stop_rule"] == "bound"]
    paired = bound.merge(df[df["stop_rule"] == "step"], on=["scores", "alpha"], suffixes=("", "_step"))
    paired["saved"] = paired["mean_block_steps_step"] - paired["mean_block_steps"]
    starts = bound.merge(from_minus_one, on=["scores", "alpha"], suffixes=("", "_minus_one"))
    starts["saved"] = starts["mean_block_steps_minus_one"] - starts["mean_block_steps"]
    panels = 3 if len(starts) else 2
    fused = "rounding" in bound and (bound["rounding"] == "q, k").all()
    # one colour per α in every panel, and one legend (the middle panel's) for all
    alphas = sorted(bound["alpha"].unique())
    colours = dict(zip(alphas, sns.color_palette("deep", len(alphas))))
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 0.35 * bound["scores"].nunique() + 1.5), sharey=True)
    sns.barplot(data=bound, y="scores", x="mean_block_steps", hue="alpha", hue_order=alphas, palette=colours,
                orient="h", ax=axes[0])
    axes[0].set_xlabel(f"steps per block of {block_m} queries (its slowest row)")
    axes[0].set_ylabel("")
    axes[0].set_title("threshold search, " + ("bf16 q, k (fused kernel)" if fused else "bfloat16")
                      + ", ℓ1 stopping bound")
    axes[0].get_legend().remove()
    sns.barplot(data=paired, y="scores", x="saved", hue="alpha", hue_order=alphas, palette=colours, orient="h",
                ax=axes[1])
    axes[1].set_xlabel("steps per block saved by the bound (vs step-size rule alone)")
    axes[1].set_title("what the bound saves")
    if len(starts):
        shown = [a for a in alphas if a in set(starts["alpha"])]
        sns.barplot(data=starts, y="scores", x="saved", hue="alpha", hue_order=shown, palette=colours, orient="h",
                    ax=axes[2])
        axes[2].get_legend().remove()
        axes[2].set_xlabel("steps per block saved by the start (vs τ = −1), with the bound")
        axes[2].set_title("what sparsemax's start saves")
    fig.tight_layout()
    return fig
