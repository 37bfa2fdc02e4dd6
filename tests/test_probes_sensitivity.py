"""Sensitivity probes: closed-form map JVPs, power iteration, finite perturbations, and the recorder columns."""

import pytest
import torch

from pladis_analysis import maps
from pladis_analysis.probes import SensitivityConfig, lipschitz_power_iteration, map_jvp, record_attention
from pladis_analysis.testing import assert_close
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import make_inputs, run_model, tiny_unet

SPECS = {
    "softmax": (lambda z: maps.softmax(z), lambda z: {"softmax": maps.softmax(z)}),
    "entmax(1.5)": (lambda z: maps.entmax(z, 1.5), lambda z: {"entmax": maps.entmax(z, 1.5), "alpha": 1.5}),
    "entmax(1.25)": (lambda z: maps.entmax(z, 1.25), lambda z: {"entmax": maps.entmax(z, 1.25), "alpha": 1.25}),
    "sparsemax": (lambda z: maps.sparsemax(z), lambda z: {"entmax": maps.sparsemax(z), "alpha": 2.0}),
    "pladis(2, 1.5)": (lambda z: maps.pladis_weights(z, 2.0, 1.5),
                       lambda z: {"softmax": maps.softmax(z), "entmax": maps.entmax(z, 1.5), "alpha": 1.5,
                                  "scale": 2.0}),
}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_map_jvp_equals_autograd(spec):
    # the closed forms used by the power iteration against the maps' own autograd (float64)
    fn, parts = SPECS[spec]
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    dz = torch.randn(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, expected = torch.autograd.functional.jvp(fn, z, dz)
    assert_close(map_jvp(parts(z), dz), expected, name=f"{spec} JVP")


@pytest.mark.parametrize("alpha", [3.0, 4.0, 7.0, 9.0])
def test_map_jvp_next_to_a_vanishing_weight(alpha):
    # for α > 2 the largest σ = p^{2−α} sits at the smallest weight (10¹⁶ at α = 4 here): the JVP must not
    # cancel it against itself. Above α = 6 it is computed in float64, as the maps are: at α = 7 the weight 1e-8
    # has σ = 1e40, over float32's range, and float32 turned those rows into NaN.
    from pladis_analysis.testing import assert_entmax_jvp_close, edge_weight_rows

    p = torch.from_numpy(edge_weight_rows(9, seed=3)).float()
    dz = torch.randn(p.shape, generator=torch.Generator().manual_seed(4))
    assert_entmax_jvp_close(map_jvp({"entmax": p, "alpha": alpha}, dz), p, dz, alpha, name=f"alpha={alpha} JVP")


def explicit_jacobian_norm(fn, q, k, v, scale):
    """‖∂(ρ(s·K q) V)/∂q‖₂ per row by autograd, one row at a time (float64)."""
    norms = []
    for row in q:
        jac = torch.autograd.functional.jacobian(lambda x: fn(scale * (k @ x)) @ v, row)  # (dv, d)
        norms.append(torch.linalg.matrix_norm(jac, ord=2))
    return torch.stack(norms)


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_power_iteration_converges_to_the_spectral_norm(spec):
    fn, parts = SPECS[spec]
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64),
               torch.randn(9, 5, generator=g, dtype=torch.float64))
    scale = 0.8
    estimate = lipschitz_power_iteration(parts(scale * q @ k.T), k, v, scale, iterations=200, generator=g)
    exact = explicit_jacobian_norm(fn, q, k, v, scale)
    assert (estimate <= exact * (1 + 1e-9)).all()  # a lower bound at every iteration count
    assert_close(estimate, exact, atol=1e-6, rtol=1e-4, name=f"{spec} power iteration")
    if spec == "softmax":  # ‖J_softmax‖ ≤ ½, so ‖J‖ ≤ s/2 ‖K‖₂ ‖V‖₂ (THEORY: bound)
        bound = scale / 2 * torch.linalg.matrix_norm(k, ord=2) * torch.linalg.matrix_norm(v, ord=2)
        assert (exact <= bound).all()


def test_small_query_perturbations_stay_below_the_lipschitz_constant():
    cfg = SensitivityConfig(eps=(1e-4,), targets=("query",), iterations=30, max_rows=1000)
    unet = tiny_unet()
    sample, timestep, text = make_inputs("unet")
    with record_attention(unet, variants=("softmax", "entmax(1.5)", "pladis(2, 1.5)"), sensitivity=cfg) as rec:
        run_model(unet, sample, timestep, text)
    df = rec.to_dataframe()
    # per row ‖J δ̂‖ ≤ ‖J‖₂ (+O(ε)); means and maxima inherit it
    assert (df["sens_query_0.0001"] <= df["lipschitz_max"] * (1 + 1e-3) + 1e-7).all()
    assert (df["lipschitz"] <= df["lipschitz_max"] * (1 + 1e-6)).all()
    assert (df["sens_query_0.0001"] > 0).all()


def test_recorder_sensitivity_columns_are_finite_and_repeatable():
    unet = tiny_unet()
    sample, timestep, text = make_inputs("unet")
    frames = []
    for _ in range(2):
        with record_attention(unet, sensitivity=True, stats=["entropy"]) as rec:
            run_model(unet, sample, timestep, text)
        frames.append(rec.to_dataframe())
    columns = SensitivityConfig().stat_names()
    assert set(columns) <= set(frames[0].columns)
    values = frames[0][list(columns)]
    assert values.notna().all().all() and (values >= 0).all().all()
    assert (frames[0][list(columns)].to_numpy() == frames[1][list(columns)].to_numpy()).all()  # seeded
    # text perturbations move keys and values: non-zero for every variant and size
    assert (frames[0].filter(like="sens_text").to_numpy() > 0).all()


def test_text_sensitivity_of_a_half_precision_model_is_its_float32_twins():
    """The text perturbation (relative 1e-3, under bfloat16's half-ulp of 2e-3) goes through the key/value
    projections in float32, so a bfloat16 model's text sensitivity is its float32 twin's up to the rounding of
    its queries and keys (it was about twice as large when perturbed in bfloat16)."""
    from tiny_models import tiny_model

    cfg = SensitivityConfig(eps=(1e-3,), targets=("text",), lipschitz=False, max_rows=64)
    means = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model("pixart").to(dtype)
        sample, t, text = make_inputs("pixart")
        with torch.no_grad(), record_attention(model, stats=["entropy"], variants=("softmax", "entmax(1.5)"),
                                               sensitivity=cfg) as rec:
            model(hidden_states=sample.to(dtype), encoder_hidden_states=text.to(dtype), timestep=t)
        means[dtype] = rec.to_dataframe().groupby("variant")["sens_text_0.001"].mean().to_numpy()
    assert_close(means[torch.bfloat16], means[torch.float32], atol=0, rtol=0.05, name="bfloat16 vs float32")


def test_text_perturbation_leaves_padding_alone():
    """Padded text tokens (masked for every query) are neither moved nor counted in ‖δ‖: moving them moves no
    output, so their share of δ diluted the ratio (about their share of the tokens), and ‖δ‖ = ε‖c‖ sized the
    real tokens' move by the padding's norm too. Blowing the padded embeddings up 100× now leaves the text
    sensitivity exactly as it was (it moved it by 5% before)."""
    from pladis_analysis.probes.sensitivity import relative_perturbation
    from tiny_models import tiny_model

    x = torch.randn(2, 5, 3)
    keep = torch.tensor([[1.0, 1, 1, 0, 0], [1, 1, 1, 1, 0]])[..., None]
    delta = relative_perturbation(x, 0.1, (-2, -1), torch.Generator().manual_seed(0), keep=keep)
    assert torch.all(delta[keep.expand_as(x) == 0] == 0)
    assert_close(delta.flatten(1).norm(dim=-1), 0.1 * (x * keep).flatten(1).norm(dim=-1), name="‖δ‖")

    cfg = SensitivityConfig(eps=(1e-2,), targets=("text",), lipschitz=False, max_rows=64)
    model = tiny_model("pixart")
    sample, t, text = make_inputs("pixart", text_len=8)
    padding = torch.ones(text.shape[:2])
    padding[:, 5:] = 0
    sens = []
    for blow_up in (1.0, 100.0):
        padded = text.clone()
        padded[:, 5:] *= blow_up
        with torch.no_grad(), record_attention(model, stats=["entropy"], variants=("softmax",),
                                               sensitivity=cfg) as rec:
            model(hidden_states=sample, encoder_hidden_states=padded, timestep=t, encoder_attention_mask=padding)
        sens.append(rec.to_dataframe()["sens_text_0.01"].to_numpy())
    assert_close(sens[1], sens[0], atol=1e-6, rtol=1e-4, name="sensitivity with padding blown up")


@pytest.mark.parametrize("kwargs", [dict(eps=(0.0,)), dict(targets=("keys",)), dict(iterations=0),
                                    dict(max_rows=0)])
def test_bad_sensitivity_config(kwargs):
    with pytest.raises(ValueError):
        SensitivityConfig(**kwargs)
