"""record_attention: statistics against direct computations, streaming memory, step tracking, scheduler loops."""

import contextlib
import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hs

from pladis_analysis import maps
from pladis_analysis.diffusion import apply_pladis
from pladis_analysis.maps import reference as ref
from pladis_analysis.probes import BASIC_STATS, parse_stats, record_attention, row_stats, row_stats_reference
from pladis_analysis.probes import stats as st
from pladis_analysis.testing import assert_close
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import make_inputs, run_model, tiny_model, tiny_unet

LAYER = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


# -- per-row statistics against the float64 twin ----------------------------------------------------------------

@pytest.mark.parametrize("spec", ["softmax", "entmax15", "sparsemax", "pladis"])
def test_row_stats_match_reference(spec):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 5, 9, generator=g) * 3
    keep = torch.ones(3, 1, 9, dtype=torch.bool)
    keep[:, :, 7:] = False
    z = scores.masked_fill(~keep, float("-inf"))
    weights = {"softmax": lambda: maps.softmax(z), "entmax15": lambda: maps.entmax15(z),
               "sparsemax": lambda: maps.sparsemax(z), "pladis": lambda: maps.pladis_weights(z, 2.0, 1.5)}[spec]()
    alpha = {"softmax": None, "entmax15": 1.5, "sparsemax": 2.0, "pladis": 1.5}[spec]
    ours = row_stats(weights, z, mask=keep, alpha=alpha, names=BASIC_STATS)
    expected = row_stats_reference(weights.double().numpy(), z.double().numpy(), valid=keep.sum(-1).numpy(),
                                   alpha=alpha)
    for name in BASIC_STATS:
        assert_close(ours[name], expected[name], atol=2e-6, rtol=2e-5, name=f"{spec} {name}")
    # and the textbook entropies for proper distributions
    if spec != "pladis":
        assert_close(ours["entropy"], ref.shannon_entropy(weights.double().numpy()), name="Shannon")
        assert_close(ours["tsallis_entropy"], ref.tsallis_entropy(weights.double().numpy(), 1.5), name="Tsallis")


@pytest.mark.property
@given(hs.integers(2, 40), hs.floats(0.0, 4.0), hs.floats(0.1, 20.0), hs.integers(0, 2**16))
def test_l1_norm_is_one_plus_twice_the_negative_mass(n, lam, spread, seed):
    z = torch.randn(4, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    stats = row_stats(maps.pladis_weights(z, lam, 1.5), z, alpha=1.5, names=("l1_norm", "negative_mass"))
    assert_close(stats["l1_norm"], 1 + 2 * stats["negative_mass"], atol=1e-5, rtol=1e-5, name="‖A‖₁ identity")


def test_onehot_fraction_uses_the_gap_threshold():
    z = torch.tensor([[3.0, 0.9, 0.0], [3.0, 1.1, 0.0]])  # gaps 2.1 and 1.9
    onehot = row_stats(maps.entmax15(z), z, alpha=1.5, names=("onehot_fraction", "support_size"))
    assert onehot["onehot_fraction"].tolist() == [1.0, 0.0]
    assert onehot["support_size"].tolist()[0] == 1.0 and onehot["support_size"].tolist()[1] > 1
    assert row_stats(maps.softmax(z), z, alpha=None, names=("onehot_fraction",))["onehot_fraction"].sum() == 0


def test_padding_bias_counts_as_masked_for_support_fraction_and_gap():
    """Diffusers' −10000 text-padding bias is a mask for the statistics, as a boolean mask is: a row with one
    unpadded key has top gap +inf (softmax over one key is one-hot), a row with every key padded has support
    fraction 0 (its weights are uniform over the padded keys, none of them unmasked), not Lk."""
    raw = torch.tensor([[2.0, 1.5, 0.5, -1.0], [2.0, 1.5, 0.5, -1.0], [2.0, 1.5, 0.5, -1.0]])
    keep = torch.tensor([[True, False, False, False], [True, True, False, False], [False, False, False, False]])
    for mask in (keep, torch.where(keep, 0.0, -10000.0)):
        z = st.masked_scores(raw, mask)
        weights = maps.softmax(z)
        stats = row_stats(weights, z, mask=mask, alpha=None, names=("top_gap", "onehot_fraction",
                                                                   "support_fraction"))
        assert stats["top_gap"][:2].tolist() == [math.inf, 0.5] and stats["onehot_fraction"][0] == 1
        assert stats["support_fraction"].tolist() == [1.0, 1.0, 0.0]
    expected = row_stats_reference(weights.numpy(), valid=keep.sum(-1).numpy())
    assert expected["support_fraction"].tolist() == [1.0, 1.0, 0.0]


def test_parse_stats():
    assert parse_stats("basic") == BASIC_STATS
    assert parse_stats(["entropy", "output"]) == ("entropy", "out_delta", "out_norm")
    with pytest.raises(ValueError, match="entropyy"):
        parse_stats("entropyy")


# -- statistics of a real layer against a direct computation ---------------------------------------------------

@torch.no_grad()
def direct_weights(attn, hidden, context, spec):
    """Weights (B, H, Lq, Lk) in float64 from the module's own projections, with the NumPy reference maps."""
    m = copy.deepcopy(attn).double()
    q, k = m.to_q(hidden.double()), m.to_k(context.double())
    split = lambda t: t.reshape(t.shape[0], t.shape[1], m.heads, -1).transpose(1, 2).numpy()  # noqa: E731
    scores = split(q) @ np.swapaxes(split(k), -1, -2) * m.scale
    return {"softmax": ref.softmax, "entmax(1.5)": lambda z: ref.entmax(z, 1.5),
            "pladis(2, 1.5)": lambda z: ref.pladis_weights(z, 2.0, 1.5)}[spec](scores), scores


@contextlib.contextmanager
def module_inputs(module):
    """Yields a dict that receives the attention module's ``hidden`` states and text ``context`` when it runs."""
    captured = {}
    hook = module.register_forward_pre_hook(
        lambda mod, args, kwargs: captured.update(hidden=args[0], context=kwargs["encoder_hidden_states"]),
        with_kwargs=True)
    try:
        yield captured
    finally:
        hook.remove()


def test_probe_statistics_equal_a_direct_computation(unet):
    sample, timestep, text = make_inputs("unet", batch=2)  # [u1, u2, c1, c2]
    module = dict(unet.named_modules())[LAYER]
    with module_inputs(module) as captured, record_attention(unet, layers=[LAYER]) as rec:
        run_model(unet, sample, timestep, text)
    df = rec.to_dataframe().set_index(["branch", "variant", "head"])
    for spec in ("softmax", "entmax(1.5)", "pladis(2, 1.5)"):
        weights, scores = direct_weights(module, captured["hidden"], captured["context"], spec)
        expected = row_stats_reference(weights, scores, alpha=None if spec == "softmax" else 1.5)
        for branch, rows in (("uncond", slice(0, 2)), ("cond", slice(2, 4))):
            for name in ("entropy", "support_size", "max_weight", "bos_mass", "negative_mass", "top_gap",
                         "tsallis_entropy"):
                per_head = expected[name][rows].mean(axis=(0, 2))  # mean over the branch's items and queries
                ours = df.loc[[(branch, spec, h) for h in range(len(per_head))], name].to_numpy()
                assert_close(ours, per_head, atol=1e-5, rtol=1e-5, name=f"{spec} {branch} {name}")


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
def test_out_delta_scales_exactly_with_lambda(unet, scale):
    # ‖out_λ − out_S‖ = λ ‖out_E − out_S‖, row by row, hence also for the means the recorder keeps
    sample, timestep, text = make_inputs("unet")
    variants = ("softmax", "entmax(1.5)", f"pladis({scale}, 1.5)")
    with record_attention(unet, stats=["out_delta", "entropy"], variants=variants) as rec:
        run_model(unet, sample, timestep, text)
    df = rec.to_dataframe().set_index(["layer", "head", "branch", "variant"])["out_delta"].unstack("variant")
    assert (df["softmax"] == 0).all()
    assert_close(df[f"pladis({scale:g}, 1.5)"].to_numpy(), scale * df["entmax(1.5)"].to_numpy(), atol=1e-6,
                 rtol=1e-4, name="λ identity per layer")
    assert len(df) == 7 * 2 * 2  # every cross-attention layer, head and branch


# -- streaming, steps, loops ----------------------------------------------------------------------------------

def hand_loop(model, family, steps, seed=0):
    """A hand-written sampler loop with CFG: timesteps walk down from 999."""
    sample, _, text = make_inputs(family, seed=seed)
    for t in torch.linspace(999, 1, steps).round():
        run_model(model, sample, t.expand(sample.shape[0]), text)


def test_memory_is_flat_in_steps(unet):
    sizes = {}
    for steps in (3, 12):
        with record_attention(unet, stats="all") as rec:
            hand_loop(unet, "unet", steps)
        df = rec.to_dataframe()
        assert sorted(df.step.unique()) == list(range(steps))
        sizes[steps] = (rec.nbytes(), len(df))
    # memory = result rows: bytes per row identical, i.e. 4× the steps costs 4× the rows and nothing else
    assert sizes[12][0] * sizes[3][1] == sizes[3][0] * sizes[12][1]
    n_stats = len(parse_stats("all"))
    assert sizes[3][0] == sizes[3][1] * n_stats * 8  # one float64 per statistic and row, no maps kept


@pytest.mark.parametrize("family", ["sana", "pixart"])
def test_step_and_timestep_reach_dit_probes(family):
    # SANA passes no kwargs to its processors: step/timestep come from the model's forward pre-hook
    model = tiny_model(family)
    with record_attention(model) as rec:
        hand_loop(model, family, 3)
    df = rec.to_dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2]
    assert sorted(df.timestep.unique(), reverse=True) == [999.0, 500.0, 1.0]
    assert set(df.branch) == {"uncond", "cond"}
    assert not df[list(BASIC_STATS)].isna().any().any()


def test_repeated_runs_average_per_step(unet):
    with record_attention(unet, variants=("softmax",)) as rec:
        hand_loop(unet, "unet", 3, seed=0)
        hand_loop(unet, "unet", 3, seed=1)  # timestep goes up: a new run, steps count from 0 again
    df = rec.to_dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2] and set(df.n_calls) == {2}
    with record_attention(unet, variants=("softmax",)) as one:
        hand_loop(unet, "unet", 3, seed=1)
    with record_attention(unet, variants=("softmax",)) as other:
        hand_loop(unet, "unet", 3, seed=0)
    mean = (one.to_dataframe().entropy.to_numpy() + other.to_dataframe().entropy.to_numpy()) / 2
    assert_close(df.entropy.to_numpy(), mean, atol=1e-6, rtol=1e-6, name="run average")


def test_repeated_runs_weigh_items_and_keep_maxima(unet):
    """Runs of 2 and 4 prompts in one context: means weigh each run by its items (2 : 4), ``lipschitz_max`` is
    the larger of the runs' maxima, not their mean."""
    from pladis_analysis.probes import SensitivityConfig

    sample, _, text = make_inputs("unet")
    runs = {2: (sample, text), 4: (torch.cat([sample, sample.flip(0)]), torch.cat([text, text.flip(0)]))}
    cfg = SensitivityConfig(eps=(1e-2,), targets=("query",), iterations=60, max_rows=10_000)

    def record(sizes):
        with record_attention(unet, variants=("softmax",), stats=["entropy"], batch_layout="none",
                              sensitivity=cfg) as rec:
            for size in sizes:
                x, context = runs[size]
                for t in (999.0, 1.0):  # the timestep going up again starts the next run at step 0
                    run_model(unet, x, torch.full((size,), t), context)
        return rec.to_dataframe()

    both, two, four = record([2, 4]), record([2]), record([4])
    assert set(both.n_calls) == {2} and set(both.n_items) == {6}
    assert_close(both.entropy.to_numpy(), (2 * two.entropy.to_numpy() + 4 * four.entropy.to_numpy()) / 6,
                 atol=1e-6, rtol=1e-6, name="item-weighted mean")
    # power iteration to convergence on every query row: the runs' maxima are reproducible to its tolerance
    expected = np.maximum(two.lipschitz_max.to_numpy(), four.lipschitz_max.to_numpy())
    assert_close(both.lipschitz_max.to_numpy(), expected, atol=1e-5, rtol=1e-4, name="maximum over runs")
    assert (both.lipschitz_max.to_numpy() > (two.lipschitz_max.to_numpy() + four.lipschitz_max.to_numpy()) / 2
            ).any()


def test_running_map_is_what_each_branch_ran(unet):
    with apply_pladis(unet, layers="cross", branches="cond"), record_attention(unet, variants=("softmax",)) as rec:
        hand_loop(unet, "unet", 1)
    df = rec.to_dataframe()
    assert set(df[df.branch == "cond"].running_map) == {"pladis(2, 1.5)"}
    assert set(df[df.branch == "uncond"].running_map) == {"softmax"}


def test_ddim_loop_with_pladis_and_probes(unet):
    from diffusers import DDIMScheduler

    def loop(pladis: float):
        scheduler = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
        scheduler.set_timesteps(3)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(1, 4, 8, 8, generator=g)
        text = torch.randn(2, 6, 12, generator=g)  # [uncond, cond]
        with apply_pladis(unet, scale=pladis) as handle, \
                record_attention(unet, variants=("softmax", "entmax(1.5)", f"pladis({pladis}, 1.5)"),
                                 heatmap_steps=[2]) as rec:
            for t in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents] * 2), t)
                with torch.no_grad():
                    uncond, cond = unet(model_in, t, encoder_hidden_states=text).sample.chunk(2)
                latents = scheduler.step(uncond + 5.0 * (cond - uncond), t, latents).prev_sample
        return latents, rec, handle, scheduler

    stock, _, _, _ = loop(0.0)
    latents, rec, handle, scheduler = loop(2.0)
    assert torch.isfinite(latents).all() and (latents - stock).abs().max() > 1e-4
    df = rec.to_dataframe()
    assert sorted(df.step.unique()) == [0, 1, 2]
    assert df.groupby("step").timestep.first().tolist() == scheduler.timesteps.float().tolist()
    assert set(df.branch) == {"uncond", "cond"}
    assert set(df[df.layer.isin(handle.layers)].running_map) == {"pladis(2, 1.5)"}
    assert set(df[df.layer.str.startswith("mid_block")].running_map) == {"softmax"}
    assert not df[list(BASIC_STATS)].isna().any().any()
    # PLADIS' weights at λ=2 have negative mass and ‖A‖₁ > 1; softmax and entmax never do
    assert (df[df.variant == "pladis(2, 1.5)"].l1_norm > 1).all()
    assert (df[df.variant != "pladis(2, 1.5)"].negative_mass == 0).all()
    heat = rec.heatmap(step=2, variant="softmax", branch="cond")
    assert heat.shape == (6, 16, 16)
    assert_close(heat.sum(0), torch.ones(16, 16), atol=1e-5, rtol=0, name="heat map sums over tokens")
    with pytest.raises(ValueError, match="heatmap_steps"):
        rec.heatmap(step=0)


def test_pipeline_branches_follow_guidance(tmp_path):
    from tiny_models import SD_CALL, tiny_sd_pipeline

    pipe = tiny_sd_pipeline(tmp_path / "tok")
    with record_attention(pipe, variants=("softmax",)) as rec:
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **SD_CALL)
    assert set(rec.to_dataframe().branch) == {"uncond", "cond"}
    with record_attention(pipe, variants=("softmax",)) as rec:
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **{**SD_CALL, "guidance_scale": 1.0})
    assert set(rec.to_dataframe().branch) == {"cond"}


def test_recorder_saves_with_provenance(unet, tmp_path):
    from pladis_analysis.results import read_meta, read_table

    with record_attention(unet, variants=("softmax",)) as rec:
        hand_loop(unet, "unet", 2)
    path = rec.save(tmp_path / "stats.csv", seeds=[0], model="tiny")
    table, meta = read_table(path), read_meta(path)
    assert len(table) == len(rec.to_dataframe())
    assert meta["config"]["recorder"]["variants"] == ["softmax"] and meta["config"]["model"] == "tiny"
    assert meta["seeds"] == [0] and "git_commit" in meta


def test_bad_recorder_arguments(unet):
    with pytest.raises(ValueError, match="duplicates"):
        record_attention(unet, variants=("softmax", "softmax"))
    with pytest.raises(ValueError, match="variants"):
        record_attention(unet, variants=())
    with pytest.raises(ValueError):
        record_attention(unet, variants=("entmax(0.9)",))
    assert not unet._forward_pre_hooks
