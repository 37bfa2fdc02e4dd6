"""Attention calls drawn by Hypothesis, and their float64 reference: shared by the property tests of the fused
kernel (test_kernels.py) and of the torch path (test_attention.py)."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import strategies as st

from pladis_analysis.maps import reference as R
from pladis_analysis.testing import assert_close, tolerance

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def as_reference(x: torch.Tensor) -> np.ndarray:
    """A tensor exactly as a fast path sees it (after rounding to its dtype), in float64."""
    return x.detach().to("cpu", torch.float64).numpy()


def reference_attention(q, k, v, lam, alpha, attn_mask=None, score_scale=None):
    """(out, A, z) in float64 from the inputs as the fast path sees them; λ = 0 is softmax attention."""
    q64, k64, v64 = (as_reference(t) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if score_scale is None else score_scale
    z = q64 @ np.swapaxes(k64, -1, -2) * scale                                          # (..., Lq, Lk)
    if attn_mask is not None:
        m = attn_mask.detach().cpu()
        if m.dtype == torch.bool:
            z = np.where(m.numpy(), z, -np.inf)
        else:
            z = z + m.double().numpy()
    a = R.softmax(z) if lam == 0 else R.pladis_weights(z, lam, alpha)
    return a @ v64, a, z


def on_a_grid(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Values m/8, |m| ≤ 32: exact in every input dtype, as is any float32 sum of ≤ 2¹⁴ of their products."""
    return torch.randint(-32, 33, shape, generator=gen).float() / 8


@st.composite
def attention_calls(draw):
    """One attention call drawn over everything the fused kernel specialises on: batch and head counts (k/v
    shared across heads or not), Lq across query blocks, Lk across the head/tail key blocks (≤ 320 = 256 + 64),
    head dims across chunks (d ≠ dv), dtype, α and λ ≥ 0 (0 and 1 included), the score scale, and no mask, a
    boolean or an additive mask in the three layouts diffusers passes, with all-masked rows.

    The scores are exact: q and k lie on a grid whose products sum exactly in float32, and the score scale is a
    power of two (score std 0.7–10). A float32 score off by its rounding, ~10⁻⁷·|z|, moves the weights by more
    than float32's tolerance where they are ill-conditioned (α > 2 near the support's edge, or many keys), and
    the float64 reference cannot model that rounding; on the grid it sees exactly the kernel's scores, and ties
    are common. The default scale 1/√d, which rounds, is drawn for the low-precision dtypes only."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    lq, lk = draw(st.integers(1, 40)), draw(st.integers(1, 320))
    d, dv = draw(st.integers(1, 72)), draw(st.integers(1, 72))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kv_heads = draw(st.sampled_from([h, 1]))
    q = on_a_grid(gen, b, h, lq, d)
    k = on_a_grid(gen, b, kv_heads, lk, d)
    v = torch.randn(b, kv_heads, lk, dv, generator=gen)
    power_of_two_scale = st.integers(0, 3).map(lambda i: 2.0 ** -(math.floor(math.log2(math.sqrt(d))) + i))
    score_scale = draw(power_of_two_scale if dtype == torch.float32 else st.one_of(st.none(), power_of_two_scale))
    mask_kind = draw(st.sampled_from(["none", "bool", "additive"]))
    mask = None
    if mask_kind != "none":
        layout = draw(st.sampled_from([(b, 1, 1, lk), (b, h, lq, lk), (b * h, 1, lk)]))
        keep = torch.rand(layout, generator=gen) > draw(st.floats(0.0, 0.9))
        fill = -math.inf if mask_kind == "bool" else draw(st.sampled_from([-10000.0, -math.inf]))
        rows = keep.view(-1, lk)
        if math.isfinite(fill):
            # A row whose every key carries −10000 is softmax of scores shifted by −10000: float32 rounds them to
            # 2⁻¹⁰, which the float64 reference does not model. Keep one key per row.
            rows[torch.arange(rows.shape[0]), torch.randint(lk, (rows.shape[0],), generator=gen)] = True
        else:
            rows[0] = False                                                   # at least one all-masked row
        mask = keep if mask_kind == "bool" else torch.where(keep, 0.0, fill)
        if len(layout) == 3:                                                   # (B·H, 1, Lk) goes with 3-D inputs
            q, k, v = (t.expand(b, h, *t.shape[2:]).reshape(b * h, *t.shape[2:]) for t in (q, k, v))
    return dict(q=q, k=k, v=v, attn_mask=mask, dtype=dtype, score_scale=score_scale,
                alpha=draw(st.one_of(st.sampled_from([1.5, 2.0, 1.25]), st.floats(1.05, 4.0))),
                lam=draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0]), st.floats(0.0, 4.0))))


def call_tensors(call: dict, device) -> tuple:
    """(q, k, v, mask) of a drawn call on ``device`` in its dtype (additive masks too, as diffusers passes them)."""
    dtype = call["dtype"]
    q, k, v = (call[name].to(device, dtype) for name in ("q", "k", "v"))
    mask = call["attn_mask"]
    if mask is not None:
        mask = mask.to(device=device, dtype=dtype if mask.is_floating_point() else torch.bool)
    return q, k, v, mask


def assert_matches_reference(out, q, k, v, lam, alpha, mask, score_scale) -> None:
    """``out`` is the float64 reference's at the dtype's tolerance, per unit of Σ|A||v| (A·V sums up to 320
    keys); rows whose keys are all masked are exactly zero."""
    expected, weights, z = reference_attention(q, k, v, lam, alpha, mask, score_scale)
    assert out.dtype == q.dtype and out.shape == expected.shape
    all_masked = torch.from_numpy(np.isneginf(z).all(axis=-1))
    assert torch.all(out.cpu()[all_masked] == 0), "every key masked must give zero output, not NaN"
    scale = np.abs(weights) @ np.abs(as_reference(v))
    assert_close(out, expected, atol=tolerance(q.dtype)["atol"] * np.maximum(scale, 1.0).max(),
                 name=f"λ={lam:.3g} α={alpha:.3g} {q.dtype} mask={None if mask is None else mask.dtype}")
