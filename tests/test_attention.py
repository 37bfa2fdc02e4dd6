"""attention() and pladis_attention() against an independent NumPy float64 computation built from
``maps.reference``, at the per-dtype tolerance table; masks (boolean, additive, diffusers' −10000 padding),
all-masked rows, λ = 0 against torch SDPA, gradients, shapes and every input error."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from pladis_analysis import maps
from pladis_analysis.attention import NamedMap, attention, parse_map_name, pladis_attention, resolve_map
from pladis_analysis.maps import reference as R
from pladis_analysis.testing import assert_close

from attention_calls import assert_matches_reference, attention_calls, call_tensors
from hypothesis_budget import examples

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# name understood by attention() → the NumPy reference map (acting on the last axis)
REFERENCE_MAPS = {
    "softmax": R.softmax,
    "sparsemax": R.sparsemax,
    "entmax15": R.entmax15,
    "entmax:1.25": lambda z: R.entmax(z, 1.25),
    "entmax:3": lambda z: R.entmax(z, 3.0),
    "pladis": lambda z: R.pladis_weights(z, 2.0, 1.5),
    "pladis:3:1.25": lambda z: R.pladis_weights(z, 3.0, 1.25),
}
MAP_NAMES = list(REFERENCE_MAPS)


def reference_attention(q, k, v, map_name: str, attn_mask=None, scale=None) -> np.ndarray:
    """Float64 NumPy attention from the *same* (possibly low-precision) inputs: only the computation differs."""
    q64, k64, v64 = (t.detach().to(torch.float64).numpy() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q64.shape[-1]) if scale is None else scale
    z = q64 @ np.swapaxes(k64, -1, -2) * scale  # (..., Lq, Lk)
    if attn_mask is not None:
        m = attn_mask.detach().numpy() if attn_mask.dtype == torch.bool else attn_mask.detach().double().numpy()
        z = np.where(m, z, -np.inf) if attn_mask.dtype == torch.bool else z + m
    return REFERENCE_MAPS[map_name](z) @ v64  # (..., Lq, dv)


def make_qkv(dtype=torch.float32, lead=(2, 3), lq=5, lk=9, d=16, dv=8, spread=2.0, seed=0):
    """Random q, k, v; ``spread`` scales q so the scores have a spread of a few units (sparse entmax rows)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*lead, lq, d, generator=g, dtype=torch.float64) * spread
    k = torch.randn(*lead, lk, d, generator=g, dtype=torch.float64)
    v = torch.randn(*lead, lk, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


# --------------------------------------------------------------------------------------------------
# Against the NumPy float64 reference
# --------------------------------------------------------------------------------------------------

# For α > 2 entmax is only Hölder-continuous: p = t^{1/(α−1)} near the support boundary, so a score rounded to
# float32 (error ~1e-7) can move a weight with t ~ 1e-7 by ~(1e-7)^{1/2} = 3e-4 at α = 3. No fixed tolerance
# table holds there; α = 3 is compared in float64 only, where the same effect is ~1e-8 at worst.
WELL_CONDITIONED = [(m, d) for m in MAP_NAMES for d in DTYPES if m != "entmax:3" or d == torch.float64]


@pytest.mark.parametrize(("map_name", "dtype"), WELL_CONDITIONED, ids=lambda x: str(x))
def test_matches_numpy_reference(map_name, dtype):
    q, k, v = make_qkv(dtype)
    out = attention(q, k, v, map=map_name)
    assert out.dtype == dtype and out.shape == (2, 3, 5, 8)
    assert_close(out, reference_attention(q, k, v, map_name), name=f"attention[{map_name}]")


def _masks(lead=(2, 3), lq=5, lk=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    padding = torch.ones(lead[0], 1, 1, lk, dtype=torch.bool)
    padding[0, ..., 6:] = False  # first batch element: last 3 keys are padding
    pattern = torch.rand(lq, lk, generator=g) > 0.4
    pattern[0] = False  # query 0 sees no key at all
    pattern[1, 3] = True  # query 1 sees at least one
    bias = torch.randn(*lead, lq, lk, generator=g, dtype=torch.float64)
    bias[..., 2, :4] = float("-inf")
    bias[1, 2, 4, :] = float("-inf")  # one all-masked row through the additive path
    return {"bool_padding": padding, "bool_pattern": pattern, "float_bias": bias}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_kind", ["bool_padding", "bool_pattern", "float_bias"])
@pytest.mark.parametrize("map_name", ["softmax", "sparsemax", "entmax15", "entmax:1.25", "pladis"])
def test_masks_match_numpy_reference(map_name, mask_kind, dtype):
    q, k, v = make_qkv(dtype)
    mask = _masks()[mask_kind]
    if mask.is_floating_point():
        mask = mask.to(dtype)  # as diffusers passes it: in the activations' dtype
    out = attention(q, k, v, map=map_name, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert_close(out, reference_attention(q, k, v, map_name, attn_mask=mask), name=f"{map_name}/{mask_kind}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("map_name", ["softmax", "sparsemax", "entmax15", "entmax:1.25", "pladis", "pladis:3:1.25"])
def test_minus_10000_padding_equals_truncation(map_name, dtype):
    # diffusers (SANA, PixArt) pads the text tokens and adds −10000 to their scores. The padded keys carry
    # huge values, so any weight they kept (even 1e-12) would show in the output.
    q, k, v = make_qkv(dtype, lk=6)
    g = torch.Generator().manual_seed(7)
    k_pad = torch.cat([k, torch.randn(2, 3, 4, 16, generator=g).to(dtype)], dim=-2)
    v_pad = torch.cat([v, (1e4 * torch.randn(2, 3, 4, 8, generator=g)).to(dtype)], dim=-2)
    bias = torch.zeros(2, 1, 1, 10, dtype=dtype)
    bias[..., 6:] = -10000.0
    padded = attention(q, k_pad, v_pad, map=map_name, attn_mask=bias)
    truncated = attention(q, k, v, map=map_name)
    # Both outputs come from the same float32 computation up to the summation order of the zero terms.
    assert_close(padded, truncated, name=f"{map_name}: -10000 padding vs truncation")
    # ... and the weights of the padded keys are exactly zero (softmax: e^{-10000} underflows; entmax: gap).
    z = torch.cat([torch.zeros(6), torch.full((4,), -10000.0)]) + torch.randn(10)
    for weights in (maps.softmax(z), maps.entmax15(z), maps.entmax(z, 1.25), maps.pladis_weights(z)):
        assert torch.all(weights[6:] == 0)


@pytest.mark.parametrize("map_name", MAP_NAMES)
@pytest.mark.parametrize("masked_with", ["bool", "-inf"])
def test_all_masked_rows_give_zero_output_and_finite_gradients(map_name, masked_with):
    q, k, v = make_qkv(torch.float64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    keep = torch.ones(5, 9, dtype=torch.bool)
    keep[2] = False  # query 2 sees nothing
    mask = keep if masked_with == "bool" else torch.zeros(5, 9, dtype=torch.float64).masked_fill(~keep, -math.inf)
    out = attention(q, k, v, map=map_name, attn_mask=mask)
    assert torch.all(out[..., 2, :] == 0)
    assert torch.isfinite(out).all()
    out.pow(2).sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.all(q.grad[..., 2, :] == 0)  # no signal flows through an empty row


# --------------------------------------------------------------------------------------------------
# λ = 0 is softmax attention; pladis_attention is attention with the PLADIS map
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", [None, "bool_padding", "float_bias"])
def test_pladis_at_lambda_zero_is_softmax_attention(dtype, mask_kind):
    q, k, v = make_qkv(dtype)
    mask = None if mask_kind is None else _masks()[mask_kind]
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)
    ours = pladis_attention(q, k, v, scale=0.0, alpha=1.5, attn_mask=mask)
    # bit for bit the softmax path of attention() ...
    assert torch.equal(ours, attention(q, k, v, map="softmax", attn_mask=mask))
    # ... and torch SDPA, run in float64 on the same inputs as an independent reference, at the table.
    sdpa_mask = None if mask is None else (mask if mask.dtype == torch.bool else mask.double())
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=sdpa_mask)
    rows = torch.isfinite(expected).all(-1, keepdim=True)  # SDPA gives NaN on all-masked rows (none here)
    assert rows.all()
    assert_close(ours, expected, name=f"pladis λ=0 vs SDPA ({mask_kind})")


def test_pladis_attention_is_attention_with_the_pladis_map():
    q, k, v = make_qkv(torch.float32)
    mask = _masks()["bool_pattern"]
    a = pladis_attention(q, k, v, 3.0, 1.25, attn_mask=mask, score_scale=0.3)
    b = attention(q, k, v, map="pladis:3:1.25", attn_mask=mask, scale=0.3)
    c = attention(q, k, v, map=functools.partial(maps.pladis_weights, scale=3.0, alpha=1.25), attn_mask=mask,
                  scale=0.3)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(pladis_attention(q, k, v), attention(q, k, v, map="pladis"))  # defaults λ = 2, α = 1.5


def test_pladis_output_is_the_lambda_extrapolation_of_softmax_and_entmax_outputs():
    # A = (1−λ)S + λE is linear in λ, so out_λ = (1−λ) out_S + λ out_E (THEORY.md: ‖out_λ − out_S‖ = λ‖out_E − out_S‖).
    q, k, v = make_qkv(torch.float64)
    out_s = attention(q, k, v, map="softmax")
    out_e = attention(q, k, v, map="entmax15")
    for lam in (0.5, 2.0, 4.0):
        assert_close(pladis_attention(q, k, v, scale=lam), (1 - lam) * out_s + lam * out_e, name=f"λ={lam}")


def test_default_score_scale_is_one_over_sqrt_d_as_sdpa():
    q, k, v = make_qkv(torch.float64, d=12)
    assert torch.equal(attention(q, k, v), attention(q, k, v, scale=1 / math.sqrt(12)))
    assert_close(attention(q, k, v, scale=0.7), F.scaled_dot_product_attention(q, k, v, scale=0.7))


# --------------------------------------------------------------------------------------------------
# Map names and callables
# --------------------------------------------------------------------------------------------------

def test_map_names_resolve_to_the_exact_paths():
    q, k, v = make_qkv(torch.float32)
    assert torch.equal(attention(q, k, v, map="entmax:1.5"), attention(q, k, v, map="entmax15"))
    assert torch.equal(attention(q, k, v, map="entmax:2"), attention(q, k, v, map="sparsemax"))
    assert torch.equal(attention(q, k, v, map="pladis:2"), attention(q, k, v, map="pladis"))
    assert torch.equal(attention(q, k, v, map="pladis:1:2"), attention(q, k, v, map="sparsemax"))
    assert resolve_map(torch.sigmoid) is torch.sigmoid
    assert parse_map_name(" pladis:3:1.25") == NamedMap("pladis", alpha=1.25, scale=3.0)
    assert parse_map_name("entmax:1.3") == NamedMap("entmax", alpha=1.3)
    assert parse_map_name("sparsemax").alpha == 2.0 and parse_map_name("softmax").alpha is None


def test_callable_map():
    q, k, v = make_qkv(torch.float64)
    out = attention(q, k, v, map=lambda z: torch.softmax(z, dim=-1))
    assert_close(out, reference_attention(q, k, v, "softmax"))


# --------------------------------------------------------------------------------------------------
# Gradients and shapes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("map_name", ["softmax", "sparsemax", "entmax15", "entmax:1.25", "pladis"])
def test_gradcheck_float64(map_name):
    # Small random inputs: no entry lies on a support boundary (a measure-zero event), where the map has a kink.
    q, k, v = make_qkv(torch.float64, lead=(2,), lq=3, lk=5, d=4, dv=3, seed=3)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 0] = False
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, map=map_name, attn_mask=mask), inputs)


def test_shapes_and_broadcasting():
    # no batch dims
    q, k, v = make_qkv(torch.float32, lead=())
    assert attention(q, k, v, map="entmax15").shape == (5, 8)
    # five leading dims
    q, k, v = make_qkv(torch.float32, lead=(2, 1, 2, 1, 2), lq=3, lk=4, d=5, dv=6)
    assert attention(q, k, v, map="sparsemax").shape == (2, 1, 2, 1, 2, 3, 6)
    # keys/values shared across heads broadcast against per-head queries
    q, _, _ = make_qkv(torch.float64, lead=(2, 3))
    _, k, v = make_qkv(torch.float64, lead=(2, 1))
    out = attention(q, k, v, map="pladis")
    assert out.shape == (2, 3, 5, 8)
    assert_close(out, reference_attention(q, k, v, "pladis"))
    # no queries (Lq = 0) or an empty batch: empty outputs, as SDPA gives
    q, k, v = make_qkv(torch.float32, lead=(2, 3))
    for map_name in ("softmax", "entmax15", "pladis"):
        assert attention(q[..., :0, :], k, v, map=map_name).shape == (2, 3, 0, 8)
        assert attention(q[:0], k[:0], v[:0], map=map_name).shape == (0, 3, 5, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_numpy_reference(dtype):
    q, k, v = make_qkv(dtype)
    mask = _masks()["bool_pattern"]
    for map_name in ("softmax", "entmax15", "entmax:1.25", "pladis"):
        out = attention(q.cuda(), k.cuda(), v.cuda(), map=map_name, attn_mask=mask.cuda())
        assert out.device.type == "cuda"
        assert_close(out.cpu(), reference_attention(q, k, v, map_name, attn_mask=mask), name=map_name)


@pytest.mark.property
@settings(max_examples=examples(60), deadline=None)
@given(call=attention_calls())
def test_pladis_attention_property(call):
    """The torch path equals the float64 reference on any call the fused kernel's property test draws (shapes,
    shared k/v, dtypes, α, λ, score scale, boolean/additive masks in diffusers' layouts, all-masked rows)."""
    q, k, v, mask = call_tensors(call, "cpu")
    out = pladis_attention(q, k, v, scale=call["lam"], alpha=call["alpha"], attn_mask=mask,
                           score_scale=call["score_scale"], backend="torch")
    assert_matches_reference(out, q, k, v, call["lam"], call["alpha"], mask, call["score_scale"])


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------

def _error_cases():
    q, k, v = make_qkv(torch.float32)
    return [
        (lambda: attention(q, k[..., :15], v), r"feature size d.*q.shape=\(2, 3, 5, 16\)"),
        (lambda: attention(q, k, v[..., :8, :]), r"number of keys Lk.*v.shape=\(2, 3, 8, 8\)"),
        (lambda: attention(q, k.double(), v), r"share one dtype.*k.dtype=torch.float64"),
        (lambda: attention(q, k, v.half()), r"v.dtype=torch.float16"),
        (lambda: attention(q.long(), k, v), r"q.dtype=torch.int64 must be floating"),
        (lambda: attention(q[0, 0, 0], k, v), r"q must have shape \[..., L, d\].*\(16,\)"),
        (lambda: attention(q, k.numpy(), v), r"k must be a torch.Tensor, got ndarray"),
        (lambda: attention(q, k[:1].expand(1, 3, 9, 16)[:, :2], v), r"do not broadcast"),
        (lambda: attention(q, k, v, attn_mask=torch.ones(4, 9, dtype=torch.bool)), r"attn_mask.shape=\(4, 9\)"),
        (lambda: attention(q, k, v, attn_mask=torch.ones(5, 9, dtype=torch.int64)), r"attn_mask.dtype=torch.int64"),
        (lambda: attention(q, k, v, attn_mask=torch.full((5, 9), math.nan)), r"attn_mask must not contain NaN"),
        (lambda: attention(q, k, v, attn_mask=torch.full((5, 9), math.inf)), r"attn_mask must not contain NaN"),
        (lambda: attention(q.index_fill(-1, torch.tensor([0]), math.nan), k, v), r"scores.*contain nan"),
        (lambda: attention(q, k, v, scale=math.inf), r"scale=inf \(the score scale\)"),
        (lambda: attention(q, k, v, map="entmax:0.5"), r"alpha in map='entmax:0.5'=.*0.5.*> 1"),
        (lambda: attention(q, k, v, map="entmax:1"), r"alpha in map='entmax:1'"),
        (lambda: attention(q, k, v, map="entmax:nan"), r"alpha in map='entmax:nan'"),
        (lambda: attention(q, k, v, map="entmax:abc"), r"alpha in map='entmax:abc'"),
        (lambda: attention(q, k, v, map="pladis:-1"), r"scale in map='pladis:-1'"),
        (lambda: attention(q, k, v, map="gelu"), r"map='gelu' is not a known map"),
        (lambda: attention(q, k, v, map="entmax"), r"map='entmax' is not a known map"),
        (lambda: attention(q, k, v, map=1.5), r"map=1.5 must be a callable"),
        (lambda: attention(q, k, v, map=lambda z: z[..., :2]), r"returned \(2, 3, 5, 2\)"),
        (lambda: pladis_attention(q, k, v, alpha=1.0), r"alpha=1.0 must be a finite real number > 1"),
        (lambda: pladis_attention(q, k, v, alpha=math.nan), r"alpha=nan"),
        (lambda: pladis_attention(q, k, v, scale=-0.5), r"scale=-0.5 \(the PLADIS scale"),
        (lambda: pladis_attention(q, k, v, scale=math.inf), r"scale=inf \(the PLADIS scale"),
        (lambda: attention(q[..., :0], k[..., :0], v), r"q.shape\[-1\]=0: the default score scale"),
    ]


@pytest.mark.parametrize("case", range(len(_error_cases())))
def test_bad_inputs_raise_value_error_naming_argument_and_value(case):
    call, match = _error_cases()[case]
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("map_name", ["entmax:1.25", "pladis"])
def test_the_torch_path_hands_its_backend_to_the_map(monkeypatch, map_name, backend):
    """backend='torch' means no kernel at all: the map inside the torch path gets the same backend (it used to get
    'auto', which on CUDA launched the row-wise kernel)."""
    seen = []
    real = maps._dispatch.maybe_triton_map_for

    def spy(function, x, args, backend_given="auto"):
        seen.append(backend_given)
        return real(function, x, args, backend_given)

    monkeypatch.setattr(maps._dispatch, "maybe_triton_map_for", spy)
    q, k, v = make_qkv()
    if map_name == "pladis":
        pladis_attention(q, k, v, backend=backend)
    else:
        attention(q, k, v, map=map_name, backend=backend)
    assert seen == [backend]
