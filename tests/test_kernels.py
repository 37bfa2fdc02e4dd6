"""Triton kernels against the NumPy float64 reference, at the tolerance table.

On a machine without CUDA these run on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``,
exported by ``make test`` and set here if missing); where CUDA is present the same tests also run on the
GPU. Shapes are small because the interpreter executes the kernels in Python.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides interpreter vs compiler when a kernel is decorated: set this before the kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pladis_analysis.maps import reference as R  # noqa: E402
from pladis_analysis.maps.kernels import dispatch  # noqa: E402
from pladis_analysis.testing import assert_close, tolerance  # noqa: E402
from attention_calls import (DTYPES, as_reference, assert_matches_reference, attention_calls,  # noqa: E402
                             call_tensors, reference_attention)

pytestmark = pytest.mark.triton

_TRITON_ERROR = dispatch.triton_import_error()
if _TRITON_ERROR is not None:
    pytest.skip(f"Triton kernels not testable: {_TRITON_ERROR}", allow_module_level=True)

from pladis_analysis.maps.kernels.cross_attention import STAT_NAMES, fused_attention_forward, fused_pladis_attention  # noqa: E402,E501
from pladis_analysis.maps.kernels.entmax_rowwise import entmax_forward, entmax_rowwise  # noqa: E402


def _devices() -> list:
    params = []
    params.append(pytest.param("cpu", marks=pytest.mark.skipif(
        not dispatch.interpreter_ready(),
        reason="CPU needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)")))
    cuda_ok = torch.cuda.is_available() and not dispatch.kernels_interpreted()
    params.append(pytest.param("cuda", marks=pytest.mark.skipif(
        not cuda_ok, reason="no CUDA device (or kernels built for the interpreter)")))
    return params


DEVICES = _devices()
_INTERPRETED = dispatch.interpreter_ready()
_NEEDS_INTERPRETER = "needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)"
ALPHAS = [1.5, 2.0, 1.25, 4.0 / 3.0, 1.1, 3.0]


def _special_rows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Rows that break naive implementations: masks, an all-masked row, ties, huge and tiny scales."""
    rows = [torch.randn(n, generator=gen) * s for s in (1.0, 3.0)]
    masked = torch.randn(n, generator=gen)
    masked[::2] = -math.inf                                  # −inf padding between real entries
    rows.append(masked)
    rows.append(torch.full((n,), -math.inf))                 # all masked: zeros, never NaN
    rows.append(torch.zeros(n))                              # uniform
    tie = torch.randn(n, generator=gen)
    tie[: min(n, 2)] = tie.max() + 1.0                       # two-way tie at the top
    rows.append(tie)
    rows.append(torch.randn(n, generator=gen) * 1e4)         # one-hot regime, large scores
    rows.append(torch.randn(n, generator=gen) * 1e-5)        # nearly uniform
    return torch.stack(rows)                                 # (8, n)


def _near_threshold(z64: np.ndarray, alpha: float) -> np.ndarray:
    """Entries whose (α−1)z lies within float32 rounding of the exact threshold τ, which a float32 path may put on
    either side of the support's edge (every entry of a row whose τ is not finite, as when all keys are masked)."""
    tau = R.entmax_threshold(z64, alpha, keepdims=True)
    finite_max = np.max(np.abs(np.where(np.isfinite(z64), z64, 0.0)), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore"):
        clear = np.abs((alpha - 1.0) * z64 - tau) > 1e-5 * (1.0 + (alpha - 1.0) * finite_max)
    return ~clear | ~np.isfinite(tau)


# --------------------------------------------------------------------------------------------------
# Row-wise α-entmax
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("n", [1, 7, 77, 300])
def test_rowwise_entmax_matches_reference_float32(device, alpha, n):
    gen = torch.Generator().manual_seed(n)
    z = _special_rows(n, gen).to(device)
    p = entmax_forward(z, alpha)
    assert not torch.isnan(p).any()
    assert_close(p, R.entmax(as_reference(z), alpha), name=f"entmax(alpha={alpha}) n={n}")
    assert torch.all(p[3] == 0), "an all −inf row must give zero weights"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_rowwise_entmax_low_precision(device, dtype, alpha):
    gen = torch.Generator().manual_seed(1)
    z = _special_rows(77, gen).to(device=device, dtype=dtype)
    p = entmax_rowwise(z, alpha)
    assert p.dtype == dtype
    assert_close(p, R.entmax(as_reference(z), alpha), name=f"entmax(alpha={alpha}) {dtype}")


def test_alpha_flavour_picks_the_search_and_integer_powers():
    from pladis_analysis.maps.kernels.entmax_rowwise import KIND_HALLEY, KIND_NEWTON, alpha_flavour

    assert alpha_flavour(2.0) == (KIND_NEWTON, 1)
    assert alpha_flavour(1.5) == (KIND_NEWTON, 2)
    assert alpha_flavour(4.0 / 3.0) == (KIND_NEWTON, 3)
    assert alpha_flavour(1.25) == (KIND_NEWTON, 4)
    assert alpha_flavour(1.2) == (KIND_NEWTON, 0)        # q = 5: beyond the multiplication cases
    assert alpha_flavour(1.25 + 1e-6) == (KIND_NEWTON, 0)
    assert alpha_flavour(2.0 + 1e-9) == (KIND_HALLEY, 0)
    assert alpha_flavour(3.0) == (KIND_HALLEY, 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0 / 3.0, 1.25])
def test_rowwise_integer_powers_agree_with_log_exp_powers(device, alpha):
    """The multiplication path (integer q) and the log2/exp2 path give the same weights at α and α + 1e-7
    (the nudge changes the weights by ~1e-6 relative, far inside the float32 tolerance)."""
    gen = torch.Generator().manual_seed(9)
    z = _special_rows(77, gen).to(device)
    p_int = entmax_forward(z, alpha)
    p_gen = entmax_forward(z, alpha + 1e-7)
    assert_close(p_int, p_gen.double(), name=f"integer vs log/exp powers alpha={alpha}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.1, 3.0])
def test_rowwise_search_steps(device, alpha):
    """``return_steps`` leaves the weights alone and counts what the search did: no step on an all-masked row,
    one on a one-hot row (τ = −1 is already the root), two on a uniform row for α ≤ 2 (h is linear there, so
    Newton lands on the root and the second step confirms), never more than the cap."""
    from pladis_analysis.maps.kernels.entmax_rowwise import KIND_NEWTON, alpha_flavour, max_iterations

    gen = torch.Generator().manual_seed(3)
    z = _special_rows(77, gen).to(device)
    z[6] = -1e4
    z[6, 5] = 1e4                                            # one entry dominates: one-hot
    p, steps = entmax_forward(z, alpha, return_steps=True)
    assert steps.shape == (8,) and steps.dtype == torch.int32
    assert torch.equal(p, entmax_forward(z, alpha))
    assert steps[3] == 0, "an all −inf row has nothing to search"
    assert steps[6] == 1, f"one-hot row took {int(steps[6])} steps"
    if alpha_flavour(alpha)[0] == KIND_NEWTON:
        assert steps[4] == 2, f"uniform row took {int(steps[4])} steps"
    assert int(steps.max()) <= max_iterations(alpha_flavour(alpha)[0])
    assert torch.all(steps[[0, 1, 2, 5, 7]] >= 1)
    for bad in (float("nan"), -1e-3, float("inf")):
        with pytest.raises(ValueError, match="stop_tol"):
            entmax_forward(z, alpha, stop_tol=bad)


# Next to a kink of f at α > 2, f'' = Σ x^{q−2} overflows to −inf and the Halley step to 0 or NaN, which the
# search replaces by a bisection by design. On a GPU that is silent IEEE arithmetic; the interpreter runs it in
# NumPy, which warns. The tests check that every weight comes out finite and right.
INF_INTERMEDIATES = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                               "ignore:invalid value encountered in subtract:RuntimeWarning")


@INF_INTERMEDIATES
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [3.0, 2.5, 4.0])
def test_rowwise_entmax_above_two_with_a_tied_group_near_the_threshold(device, alpha):
    """Rows whose τ* lies next to a tied group: two cross-attention rows of the bundled model (24 tokens, 19 and 22
    padding tokens with the same score 0) and constructed rows with a leading score just under the one-hot gap
    (group weights ≈ δ/k at t* down to 1e-30). There f has infinite slope: unguarded Halley steps stalled far from
    the root (ℓ1 error 0.24), and no float32 τ near −1 resolves t* (ℓ1 error 8e-3 on the second bundled row at
    α = 3); the search re-centres on the nearest score and meets the float32 tolerance."""
    from pladis_analysis.maps.kernels.entmax_rowwise import KIND_HALLEY, max_iterations
    from pladis_analysis.testing import tied_group_rows

    bundled = torch.tensor([[-0.559, 0.0221, -0.3024, -0.6582, 0.2246] + [0.0] * 19,
                            [-1.1354, 0.495] + [0.0] * 22])
    constructed = torch.from_numpy(tied_group_rows(alpha, margins=[1e-2, 1e-4, 1e-6, -1e-6],
                                                   group_sizes=[1, 22, 60], length=77)).float()
    for z in (bundled.to(device), constructed.to(device)):
        p, steps = entmax_forward(z, alpha, return_steps=True)
        assert_close(p, R.entmax(as_reference(z), alpha), name=f"tied group, alpha={alpha}")
        assert int(steps.max()) < 2 * max_iterations(KIND_HALLEY), "the search ran into its cap"


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_sparsemax_steps_bounded_by_start_support(device):
    """For sparsemax the search is Michelot's: every step that does not end it drops entries from the support
    {z' > τ}, which starts as {z' > −1}; so a row takes at most |{z' > −1}| + 1 steps."""
    gen = torch.Generator().manual_seed(5)
    z = (torch.randn(64, 300, generator=gen) * torch.logspace(-1, 1, 64)[:, None]).to(device)
    _, steps = entmax_forward(z, 2.0, return_steps=True)
    start_support = ((z - z.amax(dim=-1, keepdim=True)) > -1.0).sum(dim=-1)
    assert torch.all(steps.long() <= start_support + 1), (steps.long() - start_support).max()


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_sparsemax_start_confirms_small_supports(device):
    """Sparsemax starts from Michelot's thresholds on the row's largest distinct scores: when the support has at
    most SPARSEMAX_START_RANKS entries the start is τ* (to rounding) and the search only confirms it, in one step
    (two where rounding leaves a step above resolution); from τ = −1 the same rows take one step per support
    change. The weights are the same either way."""
    from pladis_analysis.maps.kernels.entmax_rowwise import SPARSEMAX_START_RANKS

    gen = torch.Generator().manual_seed(11)
    z = torch.randn(256, 77, generator=gen) * torch.logspace(-1.0, 0.6, 256)[:, None]      # std 0.1–4
    p_ref = R.entmax(z.double().numpy(), 2.0)
    support = torch.from_numpy((p_ref > 0).sum(axis=-1))
    small = support <= SPARSEMAX_START_RANKS
    assert small.sum() >= 64 and (~small).sum() >= 16, "the rows must cover both cases"
    p, steps = entmax_forward(z.to(device), 2.0, return_steps=True)
    p_minus_one, steps_minus_one = entmax_forward(z.to(device), 2.0, return_steps=True, start_ranks=1)
    steps, steps_minus_one = steps.cpu().long(), steps_minus_one.cpu().long()
    assert_close(p, p_ref, name="sparsemax, default start")
    assert_close(p_minus_one, p_ref, name="sparsemax from τ = −1")
    assert torch.all(steps[small] <= 2) and steps[small].float().mean() <= 1.1, steps[small].bincount()
    assert steps_minus_one[small & (support > 1)].float().mean() >= 2.0
    assert torch.all(steps[~small] >= 2)         # the start is a strict lower bound there: at least one real step


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [2.0, 1.5, 1.25, 1.75])
@pytest.mark.parametrize("ranks", [1, 2, 6, 32])
def test_rowwise_any_start_gives_the_same_weights(device, alpha, ranks):
    """The start is a lower bound for every α ≤ 2 (power means), so any number of ranks gives the reference's
    weights, on rows with masks, ties, an all-masked row and huge or tiny scales; and fewer steps, never more,
    for a row whose start moved (the iterates from a higher start stay above those from −1)."""
    gen = torch.Generator().manual_seed(ranks)
    z = _special_rows(77, gen).to(device)
    p, steps = entmax_forward(z, alpha, return_steps=True, start_ranks=ranks)
    assert_close(p, R.entmax(as_reference(z), alpha), name=f"entmax(alpha={alpha}), start on {ranks} ranks")
    _, steps_minus_one = entmax_forward(z, alpha, return_steps=True, start_ranks=1)
    assert torch.all(steps <= steps_minus_one + 1), (steps, steps_minus_one)


@pytest.mark.parametrize("bad", [0, 33, 2.0, True, "6"])
def test_rowwise_rejects_bad_start_ranks_by_name(bad):
    with pytest.raises(ValueError, match="start_ranks"):
        entmax_forward(torch.zeros(2, 5), 2.0, start_ranks=bad)


def test_rowwise_rejects_a_start_for_the_search_above_two():
    with pytest.raises(ValueError, match="start_ranks=6 with alpha=3.0"):
        entmax_forward(torch.zeros(2, 5), 3.0, start_ranks=6)


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_entmax_dim_and_layout(device):
    """Any dim, non-contiguous input: equal to the reference along that axis."""
    z = torch.randn(5, 33, 4).to(device).transpose(0, 2)      # (4, 33, 5), non-contiguous
    p = entmax_rowwise(z, 1.5, dim=1)
    assert p.shape == z.shape
    assert_close(p, R.entmax(as_reference(z), 1.5, axis=1), name="entmax15 along dim=1")


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_entmax_padding_equals_truncation(device):
    z = torch.randn(6, 40).to(device)
    padded = torch.cat([z, torch.full((6, 23), -math.inf, device=device)], dim=1)
    for alpha in (1.5, 2.0, 1.3):
        p_pad = entmax_rowwise(padded, alpha)
        assert torch.all(p_pad[:, 40:] == 0)
        assert_close(p_pad[:, :40], entmax_rowwise(z, alpha), name=f"padding vs truncation alpha={alpha}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 3.0])
def test_rowwise_entmax_backward_is_reference_jvp(device, alpha):
    """grad_z = Jᵀ g with J the reference Jacobian diag(s) − s sᵀ/Σs (J is symmetric)."""
    gen = torch.Generator().manual_seed(2)
    z = (torch.randn(6, 50, generator=gen) * 2).to(device)
    z[1, :10] = -math.inf
    z[2] = -math.inf
    z.requires_grad_(True)
    g = torch.randn(6, 50, generator=gen).to(device)
    (grad,) = torch.autograd.grad(entmax_rowwise(z, alpha), z, g)
    jac = R.entmax_jacobian(as_reference(z), alpha)                                   # (6, 50, 50)
    expected = np.einsum("rij,ri->rj", jac, as_reference(g))
    assert_close(grad, expected, name=f"entmax backward alpha={alpha}")
    assert torch.all(grad[2] == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_scores_give_nan_rows(device):
    """The kernels skip the torch path's NaN check (it would synchronise); instead a NaN score, which their
    `z > −inf` validity test reads as a masked key, makes its row NaN rather than a plausible row without that
    key (an fp16 overflow upstream must not pass for attention)."""
    from pladis_analysis import maps

    z = torch.tensor([[2.0, math.nan, 0.5, 0.1], [1.0, 0.5, -1.0, 0.2]], device=device)
    for alpha in (1.5, 2.0, 1.25, 3.0):
        p = maps.entmax(z, alpha, backend="triton").cpu()
        assert torch.isnan(p[0]).all() and not torch.isnan(p[1]).any(), alpha
    assert torch.isnan(maps.pladis_weights(z, 2.0, 1.5, backend="triton")[0]).all()
    q, k, v = _qkv((1, 1, 3, 5, 8), torch.float32, device, seed=4)
    q[0, 0, 1, 0] = math.nan
    out = fused_pladis_attention(q, k, v).cpu()
    assert torch.isnan(out[0, 0, 1]).all() and not torch.isnan(out[0, 0, [0, 2]]).any()


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_pladis_gradient_of_a_fully_masked_row_is_zero(device):
    """PLADIS by the row-wise kernel mixes in torch's softmax, NaN on an all −inf row: zeroing it after the fact
    fixed the weights but left NaN in the gradient, which reached q and k through the scores."""
    from pladis_analysis import maps

    z = torch.tensor([[1.0, 0.5, -1.0], [-math.inf] * 3, [0.3, -math.inf, 0.1]], device=device, requires_grad=True)
    p = maps.pladis_weights(z, 2.0, 1.5, backend="triton")
    (p * torch.tensor([1.0, 2.0, 3.0], device=device)).sum().backward()
    expected = z.detach().clone().requires_grad_(True)
    (maps.pladis_weights(expected, 2.0, 1.5, backend="torch") * torch.tensor([1.0, 2.0, 3.0], device=device)).sum(
        ).backward()
    assert torch.all(p[1] == 0) and torch.all(z.grad[1] == 0)
    assert_close(z.grad, expected.grad.double(), name="gradient vs the torch path")


@pytest.mark.parametrize("device", DEVICES)
def test_a_mask_that_needs_its_gradient_takes_the_torch_path(device):
    """The fused kernel's backward returns gradients for q, k and v only: a learnable additive mask (a bias
    being trained) goes to the torch path, whose gradient it then gets."""
    from pladis_analysis.attention import pladis_attention

    q, k, v = _qkv((1, 1, 3, 5, 8), torch.float32, device, seed=6)
    bias = torch.zeros(5, device=device, requires_grad=True)
    with pytest.raises(ValueError, match="attn_mask requires grad"):
        dispatch.choose_attention_backend(q, k, v, bias, backend="triton")
    with torch.no_grad():  # no gradient wanted: the kernel takes it
        assert dispatch.choose_attention_backend(q, k, v, bias, backend="triton")[0] == "triton"
    grads = []
    for backend in ("auto", "torch"):  # auto: the torch path on CUDA too, so the mask gets its gradient
        bias.grad = None
        pladis_attention(q, k, v, attn_mask=bias, backend=backend).pow(2).sum().backward()
        grads.append(bias.grad.clone())
    assert grads[1].abs().sum() > 0 and torch.equal(grads[0], grads[1])


def test_batch_times_heads_beyond_the_launch_grid_takes_the_torch_path():
    q = torch.randn(1, 1, 1, 4).expand(70_000, 1, 1, 4)
    with pytest.raises(ValueError, match="batch × heads = 70000 > 65535"):
        dispatch.choose_attention_backend(q, q, q, backend="triton")


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_double_backward_jacobian_vector_products(device):
    """create_graph=True: the kernels' backwards are differentiable in the incoming gradient, as the torch path's
    are, so the double-backward JVP (torch.autograd.functional.jvp) equals the torch path's."""
    from pladis_analysis import maps
    from pladis_analysis.attention import pladis_attention

    gen = torch.Generator().manual_seed(5)
    z, dz = (torch.randn(3, 10, generator=gen).to(device) for _ in range(2))
    _, kernel = torch.autograd.functional.jvp(lambda x: entmax_rowwise(x, 1.5), z, dz)
    _, torch_path = torch.autograd.functional.jvp(lambda x: maps.entmax(x, 1.5, backend="torch"), z, dz)
    assert_close(kernel, torch_path.double(), name="row-wise kernel JVP")
    q, k, v = (torch.randn(1, 1, n, 4, generator=gen).to(device) for n in (3, 5, 5))
    dq = torch.randn(q.shape, generator=gen).to(device)
    _, kernel = torch.autograd.functional.jvp(lambda x: fused_pladis_attention(x, k, v), q, dq)
    _, torch_path = torch.autograd.functional.jvp(lambda x: pladis_attention(x, k, v, backend="torch"), q, dq)
    assert_close(kernel, torch_path.double(), name="fused kernel JVP in q")


@pytest.mark.parametrize("device", DEVICES)
def test_rowwise_entmax_matches_torch_path_and_its_gradient(device):
    """One rung up the ladder: the kernel agrees with the torch path of :mod:`pladis_analysis.maps`."""
    from pladis_analysis import maps

    z = torch.randn(8, 77, device=device) * 2
    for alpha in (1.5, 2.0, 1.25):
        z1 = z.clone().requires_grad_(True)
        z2 = z.clone().requires_grad_(True)
        p1, p2 = entmax_rowwise(z1, alpha), maps.entmax(z2, alpha)
        assert_close(p1, p2.detach().double(), name="kernel vs torch path")
        g = torch.randn_like(p1)
        (g1,) = torch.autograd.grad(p1, z1, g)
        (g2,) = torch.autograd.grad(p2, z2, g)
        assert_close(g1, g2.detach().double(), name="kernel vs torch path gradient")


# --------------------------------------------------------------------------------------------------
# Fused cross-attention
# --------------------------------------------------------------------------------------------------

def _qkv(shape, dtype, device, seed=0, dv=None):
    b, h, lq, lk, d = shape
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen) * 1.5
    k = torch.randn(b, h, lk, d, generator=gen)
    v = torch.randn(b, h, lk, dv or d, generator=gen)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_fused_attention_matches_reference(device, dtype, alpha):
    """Lk = 77 (not a power of two), a boolean key mask with one all-masked batch row, λ = 2."""
    q, k, v = _qkv((2, 2, 19, 77, 64), dtype, device)
    mask = torch.rand(2, 1, 1, 77, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[1, ..., :] = False                                 # every key of batch item 1 masked
    mask = mask.to(device)
    out = fused_pladis_attention(q, k, v, pladis_scale=2.0, alpha=alpha, attn_mask=mask)
    expected, _, _ = reference_attention(q, k, v, 2.0, alpha, mask)
    assert out.dtype == dtype and not torch.isnan(out).any()
    assert torch.all(out[1] == 0), "all-masked rows must give zero output"
    assert_close(out, expected, name=f"fused pladis alpha={alpha} {dtype}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lam", [0.0, 1.0, 3.0])
def test_fused_attention_scales_and_odd_sizes(device, lam):
    """λ ∈ {0, 1, 3}; Lk = 5, d = 40, dv = 24 (none a power of two); custom score scale; 3-D inputs."""
    q, k, v = _qkv((1, 3, 21, 5, 40), torch.float32, device, seed=4, dv=24)
    q, k, v = q[0], k[0], v[0]                                                          # (H, L, d)
    out = fused_pladis_attention(q, k, v, pladis_scale=lam, alpha=1.5, score_scale=0.3)
    expected, _, _ = reference_attention(q, k, v, lam, 1.5, score_scale=0.3)
    assert_close(out, expected, name=f"fused lam={lam}")


@pytest.mark.parametrize("bad", [dict(pladis_scale=-0.5), dict(pladis_scale=math.nan), dict(alpha=1.0),
                                 dict(alpha=math.inf), dict(tsallis_alpha=0.0), dict(score_scale=math.nan)])
def test_fused_attention_rejects_bad_scalars_by_name(bad):
    """The kernel's entry point checks its scalars as the public functions do (λ >= 0, α > 1, a finite score
    scale), naming them: never a silent NaN."""
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(ValueError, match=next(iter(bad))):
        fused_pladis_attention(q, q, q, **bad)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_broadcasting(device):
    """k/v shared across heads (stride 0), 5-D inputs, and a diffusers-style (B·H, 1, Lk) additive mask."""
    q, k, v = _qkv((2, 3, 11, 9, 16), torch.float32, device, seed=9)
    k1, v1 = k[:, :1], v[:, :1]                                                         # (B, 1, Lk, d)
    out = fused_pladis_attention(q, k1, v1, alpha=1.25)
    assert_close(out, reference_attention(q, k1.expand_as(k), v1.expand_as(v), 2.0, 1.25)[0], name="shared k/v")
    q5 = q.reshape(2, 3, 1, 11, 16).expand(2, 3, 2, 11, 16)                             # (B, H, 2, Lq, d)
    k5, v5 = k[:, :, None].expand(2, 3, 2, 9, 16), v[:, :, None].expand(2, 3, 2, 9, 16)
    assert_close(fused_pladis_attention(q5, k5, v5), reference_attention(q5, k5, v5, 2.0, 1.5)[0], name="5-D")
    bias = torch.zeros(2 * 3, 1, 9, device=device)
    bias[:, :, 6:] = -10000.0
    out = fused_pladis_attention(q.reshape(6, 11, 16), k.reshape(6, 9, 16), v.reshape(6, 9, 16), attn_mask=bias)
    expected = reference_attention(q.reshape(6, 11, 16), k.reshape(6, 9, 16), v.reshape(6, 9, 16), 2.0, 1.5, bias)
    assert_close(out, expected[0], name="(B·H, 1, Lk) bias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lk", [45, 300, 500])
def test_fused_attention_reads_keys_and_values_in_chunks(device, lk, monkeypatch):
    """q kᵀ accumulates over chunks of head dimensions and A·V over chunks of keys, split off register tiles by
    halving: with head-dim chunks of 16, d = 40 is 3 chunks (the last partly past d); 45 keys are one head block
    of 32 and a tail of 16, 300 are 256 (4 key chunks) + 64, 500 one block of 512 (8 key chunks, the most);
    dv = 24; Lq = 19 in blocks of 16 leaves the last block partly past the end; masks and statistics as usual."""
    from pladis_analysis.maps.kernels import cross_attention as ca

    monkeypatch.setattr(ca, "HEAD_DIM_CHUNK", 16)
    monkeypatch.setattr(ca, "_block_m", lambda n_cols, block_d: 16)
    monkeypatch.setattr(ca, "_CALLS", {})                            # call plans derived before the patches
    monkeypatch.setenv("PLADIS_TRITON_AUTOTUNE", "0")
    q, k, v = _qkv((1, 2, 19, lk, 40), torch.float32, device, seed=15, dv=24)
    mask = torch.rand(1, 1, 19, lk, generator=torch.Generator().manual_seed(16)) > 0.3
    mask[0, 0, 3] = False
    mask = mask.to(device)
    out, stats = fused_pladis_attention(q, k, v, alpha=1.5, attn_mask=mask, return_stats=True)
    assert out.shape == (1, 2, 19, 24) and stats.shape == (1, 2, 19, len(STAT_NAMES))
    assert torch.all(out[0, :, 3] == 0)
    assert_close(out, reference_attention(q, k, v, 2.0, 1.5, mask)[0], name=f"chunks, Lk = {lk}")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_head_split_views_keep_their_layout(device):
    """q, k, v as attention processors make them, head-split views of (B, L, H·d): the output comes back in the
    same (B, Lq, H, d) memory layout, so merging the heads again is a view; the values are unchanged."""
    q, k, v = _qkv((2, 3, 13, 9, 16), torch.float32, device, seed=11)
    q_split = q.transpose(1, 2).contiguous().transpose(1, 2)                            # (B, H, Lq, d) view
    k_split, v_split = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    out = fused_pladis_attention(q_split, k_split, v_split, alpha=1.5)
    assert out.shape == (2, 3, 13, 16)
    assert out.transpose(1, 2).is_contiguous()
    assert torch.equal(out, fused_pladis_attention(q, k, v, alpha=1.5))
    assert fused_pladis_attention(q, k, v, alpha=1.5).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_masks(device):
    """Additive masks (−10000 padding bias, arbitrary float bias), full per-query boolean masks, large scores."""
    q, k, v = _qkv((2, 2, 17, 30, 16), torch.float32, device, seed=5)
    keep = torch.ones(2, 30, dtype=torch.bool)
    keep[0, 20:] = False
    keep[1, 7:] = False
    bias = torch.where(keep, 0.0, -10000.0)[:, None, None, :].to(device)               # (B, 1, 1, Lk)
    out_bias = fused_pladis_attention(q, k, v, attn_mask=bias)
    assert_close(out_bias, reference_attention(q, k, v, 2.0, 1.5, bias)[0], name="-10000 bias")
    # Padding by −10000 equals truncating the keys.
    for b, n in ((0, 20), (1, 7)):
        trunc = fused_pladis_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n])
        assert_close(out_bias[b:b + 1], trunc.double(), name=f"padding vs truncation batch {b}")
    gen = torch.Generator().manual_seed(6)
    float_bias = torch.randn(2, 2, 17, 30, generator=gen).to(device)
    out = fused_pladis_attention(q, k, v, attn_mask=float_bias, alpha=1.25)
    assert_close(out, reference_attention(q, k, v, 2.0, 1.25, float_bias)[0], name="float bias")
    full = (torch.rand(2, 1, 17, 30, generator=gen) > 0.5).to(device)
    full[0, 0, :3] = False                                                              # some all-masked queries
    out = fused_pladis_attention(q * 40, k, v, attn_mask=full, alpha=2.0)             # large scores too
    assert not torch.isnan(out).any()
    assert torch.all(out[0, :, :3] == 0)
    assert_close(out, reference_attention(q * 40, k, v, 2.0, 2.0, full)[0], name="per-query bool mask")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 3.0])
def test_fused_attention_300_keys_in_two_blocks(device, alpha):
    """SANA's 300 text tokens run as 256 + 64 key columns: the largest scores sit in the tail block, a float
    bias masks keys in both blocks, one query has every key masked."""
    q, k, v = _qkv((1, 2, 9, 300, 16), torch.float32, device, seed=12)
    k[..., 290:, :] = k[..., 290:, :] * 3.0                                             # tail keys dominate
    bias = torch.zeros(1, 2, 9, 300)
    bias[..., 100:120] = -10000.0
    bias[..., 295:] = -10000.0
    bias[:, :, 4] = float("-inf")
    bias = bias.to(device)
    out = fused_pladis_attention(q, k, v, pladis_scale=2.0, alpha=alpha, attn_mask=bias)
    assert torch.all(out[:, :, 4] == 0)
    assert_close(out, reference_attention(q, k, v, 2.0, alpha, bias)[0], name=f"300 keys alpha={alpha}")


@INF_INTERMEDIATES
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [2.5, 4.0])
@pytest.mark.parametrize("lk", [77, 300])
def test_fused_attention_above_two_next_to_a_tied_group(device, alpha, lk):
    """The fused kernel's α > 2 search on rows whose τ* sits next to a tied group (see the row-wise test): with
    q = 0 the scores are exactly the additive bias, so the rows reach the kernel unrounded, in a head block and
    a tail block (77 = 64 + 16, 300 = 256 + 64 columns)."""
    from pladis_analysis.testing import tied_group_rows

    rows = tied_group_rows(alpha, margins=[1e-2, 1e-4, 1e-6], group_sizes=[1, 22, 60], length=lk, seed=lk)
    bias = torch.from_numpy(rows).float()[None, None].to(device)                       # (1, 1, 9, Lk)
    _, k, v = _qkv((1, 1, bias.shape[2], lk, 16), torch.float32, device, seed=13)
    q = torch.zeros(1, 1, bias.shape[2], 16, device=device)
    out = fused_pladis_attention(q, k, v, pladis_scale=2.0, alpha=alpha, attn_mask=bias)
    assert_close(out, reference_attention(q, k, v, 2.0, alpha, bias)[0], name=f"tied group alpha={alpha} Lk={lk}")


@pytest.mark.skipif(not (torch.cuda.is_available() and not dispatch.kernels_interpreted()),
                    reason="launch plans serve compiled kernels on CUDA only")
def test_fused_attention_launch_plans_repeat_the_first_call(monkeypatch):
    """With launch plans on (opt-in), from the second call of a signature on a cached plan launches the compiled
    kernel directly: the results must not change, for head-split views, boolean and additive masks, statistics,
    and inputs whose data pointers are not 16-byte aligned (a different compiled variant, so a different plan)."""
    from pladis_analysis.maps.kernels import cross_attention as ca

    monkeypatch.setenv("PLADIS_TRITON_PLANS", "1")

    q, k, v = _qkv((2, 3, 40, 77, 64), torch.bfloat16, "cuda", seed=13)
    q_split = q.transpose(1, 2).contiguous().transpose(1, 2)
    keep = (torch.rand(2, 1, 1, 77, generator=torch.Generator().manual_seed(14)) > 0.2).cuda()
    bias = torch.where(keep, 0.0, -10000.0).to(torch.bfloat16)
    flat = torch.randn(q.numel() + 1, device="cuda", dtype=torch.bfloat16)
    q_odd = flat[1:].view(q.shape)                                                      # 2-byte offset
    q_odd.copy_(q)
    assert q_odd.data_ptr() % 16 != 0
    cases = [dict(q=q_split), dict(q=q, attn_mask=keep), dict(q=q, attn_mask=bias), dict(q=q_odd),
             dict(q=q, attn_mask=keep, return_stats=True)]
    ca._PLANS.clear()
    for case in cases:
        case = dict(case)
        query = case.pop("q")
        first = fused_pladis_attention(query, k, v, alpha=1.25, **case)
        for _ in range(2):
            again = fused_pladis_attention(query, k, v, alpha=1.25, **case)
            for a, b in zip(first if isinstance(first, tuple) else (first,), again if isinstance(again, tuple) else (again,)):
                assert a.shape == b.shape and a.stride() == b.stride()
                assert torch.equal(a, b)
        mask = case.get("attn_mask")
        expected = reference_attention(query, k, v, 2.0, 1.25, mask)[0]
        assert_close(first[0] if isinstance(first, tuple) else first, expected, name=f"plan case {sorted(case)}")
    assert not ca._PLANS_DISABLED, ca._PLANS_DISABLED
    assert len(ca._PLANS) >= len(cases)                                                 # one per signature


@pytest.mark.parametrize("device", DEVICES)
def test_call_plans_are_kept_per_signature_and_hold_no_tensor(device, monkeypatch):
    """A call plan serves every later call of its signature (new data, same shapes, strides and scalars); other
    strides, masks or scalars get their own; inputs whose views are copies derive theirs per call."""
    import gc
    import weakref

    from pladis_analysis.maps.kernels import cross_attention as ca

    monkeypatch.setattr(ca, "_CALLS", {})
    shape = (2, 3, 13, 9, 16)
    for seed in (30, 31):                                               # same signature, new data: one plan
        q, k, v = _qkv(shape, torch.float32, device, seed=seed)
        assert_close(fused_pladis_attention(q, k, v), reference_attention(q, k, v, 2.0, 1.5)[0], name="plan")
    assert len(ca._CALLS) == 1
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)            # same shape, other strides
    keep = torch.rand(2, 1, 1, 9, generator=torch.Generator().manual_seed(32)).to(device) > 0.3
    cases = [dict(q=q_t), dict(attn_mask=keep), dict(attn_mask=torch.where(keep, 0.0, -10000.0)),
             dict(pladis_scale=3.0), dict(alpha=1.25)]
    for case in cases:
        args = {**dict(q=q, attn_mask=None, pladis_scale=2.0, alpha=1.5), **case}
        expected = reference_attention(args["q"], k, v, args["pladis_scale"], args["alpha"], args["attn_mask"])
        out = fused_pladis_attention(args.pop("q"), k, v, **args)
        assert_close(out, expected[0], name=f"plan for {sorted(case)}")
    assert len(ca._CALLS) == 1 + len(cases)
    mask64 = torch.where(keep, 0.0, -10000.0).double()                  # converted per call: no plan kept
    out = fused_pladis_attention(q, k, v, attn_mask=mask64)
    assert_close(out, reference_attention(q, k, v, 2.0, 1.5, mask64)[0], name="float64 mask")
    assert len(ca._CALLS) == 1 + len(cases)
    big = torch.randn(2, 3, 40, 16, device=device)
    ref = weakref.ref(big)
    fused_pladis_attention(big, k, v)
    del big
    gc.collect()
    assert ref() is None                                                # the plan did not keep its tensors


def test_launch_plan_keys_and_arguments(monkeypatch):
    """Host logic of the plans, without a GPU: which calls get a key, and what a plan passes to the kernel."""
    from pladis_analysis.maps.kernels import cross_attention as ca

    q = torch.randn(2, 3, 8, 16)
    assert not ca._plans_enabled()                                                                # opt-in
    with ca.launch_plans():
        assert ca._plans_enabled()
        with ca.launch_plans(False):
            assert not ca._plans_enabled()
        assert ca._plans_enabled()
    assert not ca._plans_enabled()
    monkeypatch.setenv("PLADIS_TRITON_PLANS", "1")
    assert ca._plans_enabled()
    key = ca._call_key(q, q, q, None, (2.0, 1.5, None, True, True, False, None, 1.5))
    assert key is not None and ca._plan_key(q, q, q, None, key) is None                       # CPU: never

    class Recorder:
        def __getitem__(self, grid):
            self.grid = grid
            return lambda *args: setattr(self, "args", args)

    compiled = Recorder()
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    head_split_q = torch.randn(2, 8, 3, 16).transpose(1, 2)                              # (B, H, L, d) view
    call, _, _ = ca._CallPlan.derive(head_split_q, q, q, mask, (2.0, 1.5, 0.25, True, True, False, None, 1.5))
    plan = ca._Plan(compiled, (1, 6), call, ("const",))
    out = plan.launch(q, q, q, mask)
    assert compiled.grid == (1, 6, 1)
    assert out.shape == (2, 3, 8, 16) and out.transpose(1, 2).is_contiguous()
    args = compiled.args
    assert args[0] is q and args[3].dtype == torch.uint8 and args[3].data_ptr() == mask.data_ptr()
    assert args[4] is out and args[5] is out and args[6:] == (*call.tail_args, "const")
    assert call.tail_args[:3] == (0.25, 1.5, 2.0)                                    # score scale, α, λ


@pytest.mark.parametrize("device", DEVICES)
def test_fused_top_gap_ignores_padded_keys(device):
    """Under diffusers' −10000 text-padding bias a padded key is no runner-up: a query with one unpadded key has
    top gap +inf (as under a boolean mask; an empty negative prompt leaves T5 or Gemma just one token), one with
    two has their difference, and the probes' torch path agrees (a query with every key padded: +inf in both)."""
    from pladis_analysis.probes import stats as st

    q, k, v = _qkv((1, 1, 4, 6, 8), torch.float32, device, seed=3)
    keep = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    keep[..., 0, 1:] = False                                                           # one unpadded key
    keep[..., 1, 2:] = False                                                           # two
    keep[..., 2, :] = False                                                            # none
    bias = torch.where(keep, 0.0, -10000.0).to(device)
    _, stats = fused_pladis_attention(q, k, v, attn_mask=bias, return_stats=True)
    gap = stats[..., STAT_NAMES.index("top_gap")].cpu()[0, 0]
    raw = (q @ k.transpose(-1, -2)).cpu()[0, 0] / math.sqrt(8)
    assert gap[0] == math.inf and gap[2] == math.inf
    assert_close(gap[1], (raw[1, 0] - raw[1, 1]).abs().double(), name="gap of the two unpadded keys")
    torch_gap = st.top_gap(st.gap_scores(st.masked_scores(raw, bias.cpu()[0, 0]), bias.cpu()[0, 0]))
    assert_close(gap, torch_gap.double(), name="kernel vs torch path gap")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tsallis_alpha,dtype", [(1.5, torch.float32), (1.0, torch.float32),
                                                 (3.0, torch.float32), (1.5, torch.bfloat16)])
def test_fused_attention_statistics(device, tsallis_alpha, dtype):
    """Every statistic of every map against the probes' NumPy twin (probes.stats.row_stats_reference) on the
    float64 weights: ties at the top (within and across the 32 + 16 key blocks), an all-masked query, a query
    with one key; Tsallis of order 1 is the Shannon entropy. bfloat16 inputs: the statistics are float32 all
    the same, computed from exact products of the rounded inputs (the reference's inputs too)."""
    from pladis_analysis.probes.stats import row_stats_reference

    q, k, v = _qkv((1, 2, 23, 45, 32), dtype, device, seed=7)
    k[0, 1, 3] = k[0, 1, 4]                                                             # duplicate key: exact ties
    k[0, 0, 40] = k[0, 0, 2]                                        # ...and one across the 32 + 16 key blocks
    mask = torch.ones(1, 1, 23, 45, dtype=torch.bool)
    mask[..., 5, :] = False                                                             # one all-masked query
    mask[..., 6, 1:] = False                                                            # one query with one key
    mask = mask.to(device)
    out, stats = fused_pladis_attention(q, k, v, pladis_scale=2.0, alpha=1.5, attn_mask=mask, return_stats=True,
                                        tsallis_alpha=tsallis_alpha)
    assert stats.shape == (1, 2, 23, len(STAT_NAMES)) and stats.dtype == torch.float32
    expected_out, a, z = reference_attention(q, k, v, 2.0, 1.5, mask)
    assert_close(out, expected_out, dtype=dtype, name="out with stats")
    weights = {"softmax": np.nan_to_num(R.softmax(z)), "entmax": np.nan_to_num(R.entmax(z, 1.5)), "pladis": a}
    expected = {}
    for name, w in weights.items():
        for stat, value in row_stats_reference(w, tsallis_alpha=tsallis_alpha).items():
            expected[f"{stat}_{name}"] = value
    zs = np.sort(z, axis=-1)
    with np.errstate(invalid="ignore"):
        expected["top_gap"] = np.where(np.isfinite(zs[..., -2]), zs[..., -1] - zs[..., -2], np.inf)
    assert set(STAT_NAMES) <= set(expected)
    tol = tolerance(torch.float32)
    for i, name in enumerate(STAT_NAMES):
        # Entropies and the gap come from float32 scores: a score error of ~1e-6 moves them by as much.
        loose = name == "top_gap" or "entropy" in name
        assert_close(stats[..., i], expected[name], dtype=torch.float32, atol=tol["atol"] * 10 if loose else None,
                     name=name)
    assert stats[0, 0, 5, STAT_NAMES.index("l1_norm_pladis")] == 0                 # the all-masked row: zero weights
    assert stats[0, 0, 6, STAT_NAMES.index("support_size_entmax")] == 1
    if tsallis_alpha == 1.0:
        assert torch.equal(stats[..., STAT_NAMES.index("tsallis_entropy_pladis")],
                           stats[..., STAT_NAMES.index("entropy_pladis")])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lam", [2.0, 1.0])
def test_fused_attention_gradients_match_torch_path(device, lam):
    """The backward recomputes through the torch maps: compare with autograd on the float64 reference formula."""
    from pladis_analysis import maps

    q, k, v = _qkv((1, 2, 9, 13, 16), torch.float32, device, seed=8)
    mask = torch.ones(1, 1, 1, 13, dtype=torch.bool, device=device)
    mask[..., -4:] = False
    q1, k1, v1 = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = fused_pladis_attention(q1, k1, v1, pladis_scale=lam, alpha=1.5, attn_mask=mask)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q1, k1, v1), g)
    q2, k2, v2 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    z = (q2 @ k2.transpose(-1, -2) / 4.0).masked_fill(~mask, -math.inf)                # (1, 2, 9, 13)
    ref = maps.pladis_weights(z, scale=lam, alpha=1.5) @ v2
    ref_grads = torch.autograd.grad(ref, (q2, k2, v2), g.double())
    for name, got, want in zip("qkv", grads, ref_grads):
        assert_close(got, want.detach(), name=f"grad {name} lam={lam}")


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------

def test_dispatch_reasons_on_cpu():
    z = torch.randn(4, 77)
    backend, reason = dispatch.choose_map_backend(z, "entmax", alpha=1.5, backend="auto")
    assert backend == "torch" and "CPU" in reason
    assert dispatch.choose_map_backend(z, "entmax", backend="torch")[0] == "torch"
    assert dispatch.choose_map_backend(z, "softmax", backend="triton")[0] == "torch"
    with pytest.raises(ValueError, match="backend="):
        dispatch.choose_map_backend(z, "entmax", backend="cuda")
    q = torch.randn(1, 2, 8, 16)
    k = torch.randn(1, 2, 600, 16)
    big = torch.randn(1, 2, 8, 256)
    if not dispatch.interpreter_ready():
        # The device is checked first: without the interpreter every CPU request names it.
        with pytest.raises(ValueError, match="TRITON_INTERPRET"):
            dispatch.choose_map_backend(z, "entmax", backend="triton")
        return
    with pytest.raises(ValueError, match="float64"):
        dispatch.choose_map_backend(z.double(), "entmax", backend="triton")
    with pytest.raises(ValueError, match="Lk=600"):
        dispatch.choose_attention_backend(q, k, k, backend="triton")
    with pytest.raises(ValueError, match="head dim"):
        dispatch.choose_attention_backend(big, big, big, backend="triton")
    # α above FLOAT32_MAX_ALPHA: the float32 kernels would lose weights next to the threshold
    with pytest.raises(ValueError, match="alpha=8.0 > 6.0: the kernels search in float32"):
        dispatch.choose_map_backend(z, "pladis", alpha=8.0, backend="triton")
    with pytest.raises(ValueError, match="alpha=6.5 > 6.0"):
        dispatch.choose_attention_backend(q, q, q, map_name="entmax", alpha=6.5, backend="triton")
    assert dispatch.choose_map_backend(z, "entmax", alpha=6.0, backend="triton")[0] == "triton"
    # α below FLOAT32_MIN_ALPHA: float32 would lose the scores' differences
    with pytest.raises(ValueError, match="alpha=1.001 < 1.01: the kernels search in float32"):
        dispatch.choose_attention_backend(q, q, q, map_name="pladis", alpha=1.001, backend="triton")
    assert dispatch.choose_map_backend(z, "entmax", alpha=1.01, backend="triton")[0] == "triton"
    # float32 at the largest shape: the kernel stages key/value chunks (≤ 68 KiB of shared memory compiled,
    # results/kernel_builds.csv), so nothing static refuses it; a GPU with less shared memory fails the launch
    # (a build failure: see the tests below).
    wide = torch.randn(1, 2, 500, 128)                                                  # 512 key columns
    assert dispatch.choose_attention_backend(q.new_zeros(1, 2, 8, 128), wide, wide, backend="triton")[0] == "triton"


@pytest.mark.skipif(not (dispatch.interpreter_ready()),
                    reason="needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)")
def test_dispatch_runs_kernels_on_cpu_under_interpreter():
    z = torch.randn(3, 20)
    backend, reason = dispatch.choose_map_backend(z, "entmax", alpha=1.5, backend="triton")
    assert backend == "triton", reason
    p, support = dispatch.maybe_triton_map("pladis", z, backend="triton", alpha=1.5, scale=2.0)
    assert_close(p, R.pladis_weights(as_reference(z), 2.0, 1.5), name="dispatched pladis weights")
    assert torch.equal(support, torch.as_tensor(R.support_size(as_reference(z), 1.5)))
    assert dispatch.maybe_triton_map("entmax", z, backend="auto", alpha=1.5) is None   # auto: CPU → torch
    q, k, v = _qkv((1, 1, 5, 7, 16), torch.float32, "cpu")
    out = dispatch.maybe_triton_attention(q, k, v, map_name="sparsemax", backend="triton")
    assert_close(out, reference_attention(q, k, v, 1.0, 2.0)[0], name="dispatched sparsemax attention")


# --------------------------------------------------------------------------------------------------
# Kernels that do not build: KernelBuildError, and the torch path under "auto"
# --------------------------------------------------------------------------------------------------

def _out_of_resources():
    from triton.runtime.errors import OutOfResources

    return OutOfResources(101376, 65536, "shared memory")


class _FailingKernel:
    """Stands in for a @triton.jit kernel whose every launch fails with ``error`` (counts the launches)."""

    def __init__(self, error: Exception):
        self.error, self.launches = error, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
            raise self.error
        return launch


@pytest.fixture
def fresh_build_state(monkeypatch):
    """No kernel launched yet, no build failure remembered, no cached decision (module state restored after)."""
    from pladis_analysis.maps.kernels import build_failures

    monkeypatch.setattr(build_failures, "_LAUNCHED", set())
    monkeypatch.setattr(dispatch, "_BUILD_FAILURES", {})
    monkeypatch.setattr(dispatch, "_ATTENTION_DECISIONS", {})


def test_launching_tells_build_failures_from_input_errors(fresh_build_state):
    from pladis_analysis.maps.kernels.build_failures import KernelBuildError, launching

    cpu = torch.device("cpu")
    # Triton's own errors are build failures on any launch, and the message says which kernel and why.
    with pytest.raises(KernelBuildError, match=r"Triton toy kernel .*OutOfResources.*shared memory") as info:
        with launching("toy", ("sig",), cpu):
            raise _out_of_resources()
    assert type(info.value.__cause__).__name__ == "OutOfResources"
    # Anything else is one on the signature's first launch only (compiler passes raise plain RuntimeError) ...
    with pytest.raises(KernelBuildError, match="PassManager"):
        with launching("toy", ("sig",), cpu):
            raise RuntimeError("PassManager::run failed")
    with launching("toy", ("sig",), cpu):
        pass
    # ... after which the kernel evidently builds: the error is the caller's, unchanged.
    with pytest.raises(RuntimeError, match="device-side") as info:
        with launching("toy", ("sig",), cpu):
            raise RuntimeError("device-side assert")
    assert type(info.value) is RuntimeError
    with pytest.raises(KernelBuildError):                            # another signature: a first launch again
        with launching("toy", ("other",), cpu):
            raise RuntimeError("PassManager::run failed")
    with pytest.raises(torch.cuda.OutOfMemoryError):                 # memory is about the tensors, never the build
        with launching("toy", ("new",), cpu):
            raise torch.cuda.OutOfMemoryError("out of memory")


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_fused_kernel_that_does_not_build_raises_once_then_is_remembered(fresh_build_state, monkeypatch):
    from pladis_analysis import attention as A
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels.build_failures import KernelBuildError

    failing = _FailingKernel(_out_of_resources())
    monkeypatch.setattr(ca, "_fused_pladis_fwd_kernel", failing)
    q, k, v = _qkv((1, 2, 5, 9, 16), torch.float32, "cpu")
    with pytest.raises(KernelBuildError, match="fused cross-attention.*out of resource") as info:
        A.pladis_attention(q, k, v, scale=2.0, alpha=1.5, backend="triton")
    assert failing.launches == 1 and type(info.value.__cause__).__name__ == "OutOfResources"
    # The failure is remembered for the signature: no second compile, the same cause stated.
    with pytest.raises(KernelBuildError, match="failed earlier in this process.*out of resource"):
        A.pladis_attention(q, k, v, scale=2.0, alpha=1.5, backend="triton")
    assert failing.launches == 1
    # Another query count has the same signature; another map or key count does not.
    with pytest.raises(KernelBuildError, match="failed earlier"):
        A.pladis_attention(q[..., :3, :], k, v, scale=2.0, alpha=1.5, backend="triton")
    with pytest.raises(KernelBuildError, match="fused cross-attention"):
        A.pladis_attention(q, k[..., :7, :], v[..., :7, :], scale=2.0, alpha=1.5, backend="triton")
    assert failing.launches == 2
    # "auto" decides on the remembered failure like on any other reason (the device check is bypassed here:
    # on CPU "auto" never reaches the kernels).
    monkeypatch.setattr(dispatch, "_device_reason", lambda tensors, backend: None)
    chosen, reason = dispatch.choose_attention_backend(q, k, v, map_name="pladis", alpha=1.5, backend="auto")
    assert chosen == "torch" and "failed earlier" in reason and "out of resource" in reason


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_auto_takes_the_torch_path_when_a_kernel_does_not_build(fresh_build_state, monkeypatch, caplog):
    from pladis_analysis import maps
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels import entmax_rowwise as er

    monkeypatch.setattr(ca, "_fused_pladis_fwd_kernel", _FailingKernel(RuntimeError("PassManager::run failed")))
    monkeypatch.setattr(er, "_entmax_fwd_kernel", _FailingKernel(_out_of_resources()))
    q, k, v = _qkv((1, 2, 5, 9, 16), torch.float32, "cpu")
    signature = dispatch._attention_signature(q, k, v, None, "pladis", 1.5)
    launch = lambda: ca.fused_pladis_attention(q, k, v, pladis_scale=2.0, alpha=1.5)  # noqa: E731
    with caplog.at_level("WARNING", logger="pladis_analysis.kernels"):
        assert dispatch._kernel_or_torch(lambda: signature, "auto", launch) is None
    assert "torch path instead" in caplog.text and "PassManager" in caplog.text
    assert "PassManager" in dispatch._BUILD_FAILURES[signature]
    # The row-wise map kernel: the public map raises under "triton" and names the kernel.
    from pladis_analysis.maps.kernels.build_failures import KernelBuildError

    with pytest.raises(KernelBuildError, match="row-wise entmax"):
        maps.entmax(torch.randn(3, 20), 1.5, backend="triton")
    # A kernel that works is not affected by another one's failure.
    chosen, _ = dispatch.choose_map_backend(torch.randn(3, 21), "entmax", alpha=1.5, backend="triton")
    assert chosen == "triton"


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_statistics_variant_that_does_not_build_is_remembered_apart(fresh_build_state, monkeypatch):
    """The kernel with statistics (the probes') is a variant of its own: its build failure sends probes to the
    torch path but leaves PLADIS attention on the kernel."""
    from pladis_analysis.maps.kernels import cross_attention as ca
    from pladis_analysis.maps.kernels.build_failures import KernelBuildError

    real = ca._fused_pladis_fwd_kernel

    class FailsWithStatistics:
        launches = 0

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if kwargs["WITH_STATS"]:
                    self.launches += 1
                    raise _out_of_resources()
                return real[grid](*args, **kwargs)
            return launch

    kernel = FailsWithStatistics()
    monkeypatch.setattr(ca, "_fused_pladis_fwd_kernel", kernel)
    q, k, v = _qkv((1, 2, 5, 9, 16), torch.float32, "cpu")
    for _ in range(2):
        with pytest.raises(KernelBuildError, match="out of resource"):
            dispatch.maybe_triton_attention(q, k, v, backend="triton", return_stats=True)
    assert kernel.launches == 1                                                   # remembered: no second build
    out = dispatch.maybe_triton_attention(q, k, v, backend="triton")
    assert_close(out, reference_attention(q, k, v, 2.0, 1.5)[0], name="plain kernel after the stats failure")
    monkeypatch.setattr(dispatch, "_device_reason", lambda tensors, backend: None)   # as if on CUDA
    assert dispatch.choose_attention_backend(q, k, v, stats=True)[0] == "torch"
    assert dispatch.choose_attention_backend(q, k, v)[0] == "triton"


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 3.0])
def test_rowwise_backward_twin_equals_the_kernel(alpha):
    """The torch twin of the backward kernel (what a failed build falls back to), along a middle dim."""
    from pladis_analysis.maps.kernels.entmax_rowwise import entmax_backward, entmax_backward_torch

    gen = torch.Generator().manual_seed(21)
    z = torch.randn(3, 37, 4, generator=gen) * 3
    z[0, 5:, 1] = float("-inf")
    p = entmax_forward(z, alpha, dim=1, out_dtype=torch.float32)
    g = torch.randn(3, 37, 4, generator=gen)
    assert_close(entmax_backward_torch(p, g, alpha, dim=1), entmax_backward(p, g, alpha, dim=1),
                 dtype=torch.float32, name=f"backward twin, alpha={alpha}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [2.5, 4.0, 6.0])
def test_rowwise_backward_next_to_a_vanishing_weight(device, alpha):
    """For α > 2, s = p^{2−α} is largest at the smallest weight (up to 10³² here) while J g stays of the other
    entries' order: the backward kernel and its torch twin measure g from that entry first."""
    from pladis_analysis.maps.kernels.entmax_rowwise import entmax_backward, entmax_backward_torch
    from pladis_analysis.testing import assert_entmax_jvp_close, edge_weight_rows

    p = torch.from_numpy(edge_weight_rows(40, support=6, seed=int(alpha * 10))).float().to(device)
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(22)).to(device)
    assert_entmax_jvp_close(entmax_backward(p, g, alpha), p, g, alpha, name=f"backward kernel alpha={alpha}")
    assert_entmax_jvp_close(entmax_backward_torch(p, g, alpha), p, g, alpha, name=f"backward twin alpha={alpha}")


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_rowwise_backward_that_does_not_build(fresh_build_state, monkeypatch, caplog):
    """Under ``auto`` the backward takes its torch twin (one warning, remembered: no second compile); under
    ``triton`` the build error reaches the caller."""
    from pladis_analysis import maps
    from pladis_analysis.maps.kernels import entmax_rowwise as er
    from pladis_analysis.maps.kernels.build_failures import KernelBuildError

    failing = _FailingKernel(_out_of_resources())
    monkeypatch.setattr(er, "_entmax_bwd_kernel", failing)
    monkeypatch.setattr(er, "_BACKWARD_FAILURES", {})
    z = torch.randn(4, 30, generator=torch.Generator().manual_seed(22), requires_grad=True)
    g = torch.randn(4, 30, generator=torch.Generator().manual_seed(23))
    (expected,) = torch.autograd.grad(maps.entmax(z, 1.5, backend="torch"), z, g)
    with caplog.at_level("WARNING", logger="pladis_analysis.kernels"):
        for _ in range(2):
            (grad,) = torch.autograd.grad(er.entmax_rowwise(z, 1.5, torch_backward_on_failure=True), z, g)
            assert_close(grad, expected, dtype=torch.float32, name="torch twin after a failed build")
    assert failing.launches == 1 and caplog.text.count("backward takes the torch path") == 1
    with pytest.raises(KernelBuildError, match="row-wise entmax backward"):
        torch.autograd.grad(maps.entmax(z, 1.5, backend="triton"), z, g)


# --------------------------------------------------------------------------------------------------
# Property: the kernel equals the reference on arbitrary rows (few examples: the interpreter is slow)
# --------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis_budget import examples  # noqa: E402


@pytest.mark.property
@pytest.mark.skipif(not (dispatch.interpreter_ready()),
                    reason="needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)")
@settings(max_examples=examples(25), deadline=None)
@given(n=st.integers(1, 130), alpha=st.sampled_from([1.5, 2.0, 1.25, 4.0 / 3.0, 1.2, 1.7, 2.5]),
       log_scale=st.floats(-5, 4), seed=st.integers(0, 2**31 - 1), n_ties=st.integers(0, 3),
       n_masked=st.integers(0, 5))
def test_rowwise_entmax_property(n, alpha, log_scale, seed, n_ties, n_masked):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(3, n, generator=gen) * 10.0 ** log_scale
    z[:, : min(n_ties, n)] = z[:, :1]                           # forced ties (at whatever rank z[0] has)
    z[1, torch.randperm(n, generator=gen)[: min(n_masked, n - 1)]] = -math.inf
    p = entmax_forward(z, alpha)
    expected = R.entmax(as_reference(z), alpha)
    assert_close(p, expected, name=f"entmax alpha={alpha} n={n}")
    # Exactly the reference support, except for entries within float32 rounding of the threshold.
    clear = ~_near_threshold(as_reference(z), alpha)
    assert np.array_equal((p.numpy() > 0)[clear], (expected > 0)[clear])


@pytest.mark.property
@pytest.mark.skipif(not (dispatch.interpreter_ready()),
                    reason="needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)")
@settings(max_examples=examples(25), deadline=None)
@given(n=st.integers(2, 130), alpha=st.sampled_from([1.5, 2.0, 1.25, 4.0 / 3.0, 1.2, 1.7]),
       log_scale=st.floats(-2, 2), seed=st.integers(0, 2**31 - 1), log2_tol=st.integers(-20, -4))
def test_rowwise_stop_tolerance_bounds_the_l1_error(n, alpha, log_scale, seed, log2_tol):
    """With an ℓ1 stopping tolerance T the search may stop early, but every row stays within T of the exact
    weights (+ float32 rounding), and takes no more steps than with the step-size rule alone (T = 0)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(16, n, generator=gen) * 10.0 ** log_scale
    tol = 2.0 ** log2_tol
    p, steps = entmax_forward(z, alpha, return_steps=True, stop_tol=tol)
    _, steps_without = entmax_forward(z, alpha, return_steps=True, stop_tol=0.0)
    error = np.abs(p.double().numpy() - R.entmax(as_reference(z), alpha)).sum(axis=-1)
    assert error.max() <= tol + 1e-5, f"ℓ1 error {error.max():.3g} > tolerance {tol:.3g}"
    assert torch.all(steps <= steps_without)


# Every new specialisation compiles for seconds on a GPU, and not at all in the interpreter.
FUSED_PROPERTY_EXAMPLES = {"cpu": 40, "cuda": 6}


@pytest.mark.property
@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_property(device):
    """The fused kernel equals the float64 reference (on its inputs as rounded to the call's dtype) for any
    call :func:`attention_calls` draws; rows with every key masked give exactly zero."""

    @settings(max_examples=examples(FUSED_PROPERTY_EXAMPLES[device]), deadline=None)
    @given(call=attention_calls())
    def check(call):
        _check_fused_call(device, call)

    check()


def _check_fused_call(device, call):
    q, k, v, mask = call_tensors(call, device)
    out = fused_pladis_attention(q, k, v, pladis_scale=call["lam"], alpha=call["alpha"], attn_mask=mask,
                                 score_scale=call["score_scale"])
    assert_matches_reference(out, q, k, v, call["lam"], call["alpha"], mask, call["score_scale"])


@pytest.mark.property
@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_statistics_property(device):
    """Every statistic the kernel writes for the probes equals the probes' NumPy twin on the float64 weights, for
    any call :func:`attention_calls` draws and Tsallis orders 1, 1.5 and 3. Support sizes are compared for α-entmax
    on rows where no score lies within float32 rounding of the threshold and no weight underflows float32 (either
    makes a weight 0 or not by rounding); the dense maps' supports are all valid keys up to float32 underflow, and
    so not compared."""

    @settings(max_examples=examples(FUSED_PROPERTY_EXAMPLES[device]), deadline=None)
    @given(call=attention_calls(), tsallis_alpha=st.sampled_from([1.0, 1.5, 3.0]))
    def check(call, tsallis_alpha):
        _check_fused_statistics(device, call, tsallis_alpha)

    check()


def _check_fused_statistics(device, call, tsallis_alpha):
    from pladis_analysis.maps._threshold import MASKED_BIAS_THRESHOLD
    from pladis_analysis.maps.kernels.cross_attention import MAP_STATS
    from pladis_analysis.probes.stats import row_stats_reference

    lam, alpha = call["lam"], call["alpha"]
    # Statistics are float32 whatever the input dtype, so compared at float32's tolerance: keep the scores exact
    # (a power-of-two scale where the call has the default 1/√d, which rounds).
    score_scale = call["score_scale"] or 2.0 ** -math.floor(math.log2(math.sqrt(call["q"].shape[-1])))
    q, k, v, mask = call_tensors(call, device)
    _, stats = fused_pladis_attention(q, k, v, pladis_scale=lam, alpha=alpha, attn_mask=mask,
                                      score_scale=score_scale, return_stats=True, tsallis_alpha=tsallis_alpha)
    _, pladis, z = reference_attention(q, k, v, lam, alpha, mask, score_scale)
    stats = stats.cpu().double().numpy()
    weights = {"softmax": np.nan_to_num(R.softmax(z)), "entmax": np.nan_to_num(R.entmax(z, alpha)), "pladis": pladis}
    tol = tolerance(torch.float32)
    for name, w in weights.items():
        expected = row_stats_reference(w, tsallis_alpha=tsallis_alpha)
        for stat in MAP_STATS:
            column = stats[..., STAT_NAMES.index(f"{stat}_{name}")]
            if stat != "support_size":
                # Entropies sum p·log p over up to 320 keys: an error δ in a small weight moves it by δ·|log p|.
                loose = "entropy" in stat
                assert_close(column, expected[stat], dtype=torch.float32, atol=tol["atol"] * 10 if loose else None,
                             name=f"{stat}_{name}")
            elif name == "entmax":
                # Rows with no score near τ and no weight under float32's smallest normal (t = 0.01 at α = 1.05
                # is 10⁻⁴⁰): either puts a weight on the support's edge by rounding.
                near = _near_threshold(z, alpha) | ((w > 0) & (w < np.finfo(np.float32).tiny))
                clear = ~np.any(near & np.isfinite(z), axis=-1)
                assert np.array_equal(column[clear], expected[stat][clear]), "support_size_entmax"
    valid = np.isfinite(z).any(axis=-1)
    if mask is not None and mask.is_floating_point():  # keys under a padding bias are no runner-up for the gap
        z = np.where(as_reference(mask) <= MASKED_BIAS_THRESHOLD, -np.inf, z)
    zs = np.sort(z, axis=-1)
    with np.errstate(invalid="ignore"):                                    # −inf − (−inf) on masked rows
        gap = (zs[..., -1] - zs[..., -2]) if z.shape[-1] > 1 else np.full(z.shape[:-1], np.inf)
    gap = np.where(np.isfinite(zs[..., -2]) if z.shape[-1] > 1 else False, gap, np.inf)
    assert_close(stats[..., STAT_NAMES.index("top_gap")][valid], gap[valid], dtype=torch.float32, name="top_gap")


# --------------------------------------------------------------------------------------------------
# The public functions route backend="triton" to the kernels (CPU: under the interpreter)
# --------------------------------------------------------------------------------------------------

def _takes_backend(fn) -> bool:
    import inspect

    return "backend" in inspect.signature(fn).parameters




@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_public_maps_backend_triton():
    from pladis_analysis import maps

    if not _takes_backend(maps.entmax):
        pytest.skip("pladis_analysis.maps has no backend= keyword yet")
    z = torch.randn(4, 6, 50) * 2
    z[0, 0, :7] = -math.inf
    cases = [(maps.sparsemax, {}), (maps.entmax15, {}), (maps.entmax, {"alpha": 1.25}),
             (maps.pladis_weights, {"scale": 2.0, "alpha": 1.5}), (maps.softmax, {})]
    for fn, kwargs in cases:
        p_k, s_k = fn(z, **kwargs, dim=1, backend="triton", return_support=True)
        p_t, s_t = fn(z, **kwargs, dim=1, backend="torch", return_support=True)
        assert_close(p_k, p_t.double(), name=f"{fn.__name__} triton vs torch")
        assert torch.equal(s_k, s_t), fn.__name__
    with pytest.raises(ValueError, match="float64"):
        maps.entmax(z.double(), 1.5, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        maps.entmax(z, 1.5, backend="gpu")


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_public_attention_backend_triton():
    from pladis_analysis import attention as A

    if not (_takes_backend(A.attention) and _takes_backend(A.pladis_attention)):
        pytest.skip("pladis_analysis.attention has no backend= keyword yet")
    q, k, v = _qkv((2, 2, 13, 20, 16), torch.float32, "cpu", seed=10)
    mask = torch.ones(2, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., 12:] = False
    for lam, alpha in ((2.0, 1.5), (1.0, 1.25), (0.0, 2.0)):
        out_k = A.pladis_attention(q, k, v, scale=lam, alpha=alpha, attn_mask=mask, backend="triton")
        out_t = A.pladis_attention(q, k, v, scale=lam, alpha=alpha, attn_mask=mask, backend="torch")
        assert_close(out_k, out_t.double(), name=f"pladis_attention lam={lam} alpha={alpha}")
    for name in ("sparsemax", "entmax15", "entmax:1.3", "pladis:3:2"):
        out_k = A.attention(q, k, v, map=name, attn_mask=mask, scale=0.2, backend="triton")
        out_t = A.attention(q, k, v, map=name, attn_mask=mask, scale=0.2, backend="torch")
        assert_close(out_k, out_t.double(), name=f"attention map={name}")
    with pytest.raises(ValueError, match="callable"):
        A.attention(q, k, v, map=lambda s: s.softmax(-1), backend="triton")
    # auto on CPU is the torch path, bit for bit
    assert torch.equal(A.pladis_attention(q, k, v, backend="auto"), A.pladis_attention(q, k, v, backend="torch"))


@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
def test_diffusion_processor_backend_triton():
    pytest.importorskip("diffusers", reason="diffusers is not installed")
    from pladis_analysis import attention as A
    from pladis_analysis.diffusion import apply_pladis

    if not _takes_backend(A.pladis_attention):
        pytest.skip("pladis_analysis.attention has no backend= keyword yet")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import make_inputs, run_model, tiny_model

    for family in ("unet", "sana"):
        model = tiny_model(family)
        sample, timestep, text = make_inputs(family, cfg=True)
        padding = torch.ones(text.shape[:2])
        padding[:, 4:] = 0.0                                   # diffusers turns this into the −10000 bias
        # PLADIS, and a plain sparse map: the processor must hand both to the kernel by name
        for map_name in ("pladis(2, 1.5)", "entmax(1.25)"):
            outs = {}
            for backend in ("torch", "triton"):
                with apply_pladis(model, map=map_name, layers="cross", backend=backend):
                    outs[backend] = run_model(model, sample, timestep, text, encoder_attention_mask=padding)
            assert_close(outs["triton"], outs["torch"].double(), name=f"tiny {family} with {map_name}, triton vs torch")



@pytest.mark.skipif(not _INTERPRETED, reason=_NEEDS_INTERPRETER)
@pytest.mark.parametrize("family", ["unet", "sana", "pixart"])
def test_pladis_model_runs_the_stock_operations_but_the_kernel(family, monkeypatch):
    """PLADIS through the kernel adds no tensor operation to a model's forward: with the attention itself
    stubbed on both sides (SDPA in the stock model, the kernel launch under PLADIS, each leaving one empty output
    in q's layout), the two forwards run the same operations, counted by name, views aside. So its device time
    is the stock model's plus the kernel's difference to SDPA: no copies, casts or mask conversions around it
    (with a padding mask, and with the batch of classifier-free guidance)."""
    pytest.importorskip("diffusers", reason="diffusers is not installed")
    import collections

    import torch.nn.functional as F
    from tiny_models import make_inputs, run_model, tiny_model
    from torch.utils._python_dispatch import TorchDispatchMode

    from pladis_analysis.diffusion import apply_pladis
    from pladis_analysis.maps.kernels import cross_attention as ca

    class CountOperations(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                name = str(func)
                self.counts["allocation" if name.startswith(("aten.empty", "aten.new_empty")) else name] += 1
            return func(*args, **(kwargs or {}))

    def empty_attention(query, key, value, *args, **kwargs):
        # An output in q's memory layout, as SDPA's flash and memory-efficient kernels leave theirs: merging the
        # heads of a head-split view's output is then a view, in the stock processor as in this package's.
        assert value.shape[-1] == query.shape[-1]
        return torch.empty_like(query)

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    monkeypatch.setattr(F, "scaled_dot_product_attention", empty_attention)
    monkeypatch.setattr(ca, "_fused_pladis_fwd_kernel", NoLaunch())
    model = tiny_model(family)
    sample, timestep, text = make_inputs(family, cfg=True)
    padding = torch.ones(text.shape[:2])
    padding[:, 4:] = 0.0
    counts = {}
    for variant in ("stock", "pladis"):
        with contextlib.ExitStack() as stack:
            if variant == "pladis":
                stack.enter_context(apply_pladis(model, map="pladis(2, 1.5)", layers="cross", backend="triton"))
            log = stack.enter_context(CountOperations())
            run_model(model, sample, timestep, text, encoder_attention_mask=padding)
        counts[variant] = log.counts
    extra, missing = counts["pladis"] - counts["stock"], counts["stock"] - counts["pladis"]
    assert not extra and not missing, f"{family}: PLADIS adds {dict(extra)} and drops {dict(missing)}"


@pytest.mark.parametrize("opt_in", ["0", "1"])
def test_autotuner_tries_the_launch_candidates_with_their_register_caps(opt_in, monkeypatch):
    """The autotuner's configurations are exactly launch_candidates. With PLADIS_TRITON_REGISTER_CAP=1 that is
    every launch shape capped at REGISTER_CAP registers as well as uncapped for 77 keys (80 columns), and
    uncapped only for 300 (320 columns), where a cap spills; without it, uncapped only."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from pladis_analysis.maps.kernels import cross_attention as ca

    monkeypatch.setenv("PLADIS_TRITON_REGISTER_CAP", opt_in)
    for n_cols in (80, 320):
        tuner = ca._autotuned_kernel(n_cols)
        tried = [(c.kwargs["BLOCK_M"], c.num_warps, c.maxnreg) for c in tuner.configs]
        assert tried == ca.launch_candidates(n_cols)
    expected_caps = {None, ca.REGISTER_CAP} if opt_in == "1" else {None}
    assert {cap for _, _, cap in ca.launch_candidates(80)} == expected_caps
    assert {cap for _, _, cap in ca.launch_candidates(320)} == {None}


def test_launch_shapes_reach_warpgroup_mma_up_to_320_key_columns():
    """Tiles of fewer than WGMMA_MIN_ROWS queries cannot use sm_90's warpgroup MMA, so every key width the
    kernel holds without heavy spills (≤ 320 columns) gets a launch with at least that many queries; at 512
    columns, where such launches spill hundreds of bytes (tests/test_kernels_compile.py), none is tried."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from pladis_analysis.maps.kernels import cross_attention as ca

    for n_cols in (32, 80, 128, 256, 320):
        assert max(bm for bm, _ in ca.launch_shapes(n_cols)) >= ca.WGMMA_MIN_ROWS, n_cols
    assert max(bm for bm, _ in ca.launch_shapes(512)) < ca.WGMMA_MIN_ROWS


def test_autotuned_launch_records_every_candidate_time(monkeypatch):
    """The first call of a signature under the autotuner keeps its choice and the median time of every candidate
    it measured, and tuned_launch_configs reports both; a tuning that measured nothing (the autotuner's own
    cache) records no times rather than those of the previous tuning."""
    triton = pytest.importorskip("triton", reason="Triton is not installed")
    from pladis_analysis.maps.kernels import cross_attention as ca

    configs = [triton.Config({"BLOCK_M": 32}, num_warps=4), triton.Config({"BLOCK_M": 64}, num_warps=8)]

    class FakeTuner:
        configs_timings = {configs[0]: [9.0, 8.0, 10.0]}          # stale: a previous key's tuning

        def __init__(self, measure):
            self.measure = measure

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if self.measure:
                    self.configs_timings = {configs[0]: [0.5, 0.4, 0.6], configs[1]: [0.25, 0.2, 0.3]}
                self.best_config = configs[1]
            return launch

    monkeypatch.setattr(ca, "_TUNED", {})
    monkeypatch.setattr(ca, "_TUNING_MS", {})
    monkeypatch.setattr(ca, "_use_autotune", lambda device: True)
    for measure, lq in ((True, 64), (False, 128)):
        monkeypatch.setattr(ca, "_autotuned_kernel", lambda n_cols, measure=measure: FakeTuner(measure))
        q, k, v = (torch.randn(1, 2, n, 16) for n in (lq, 20, 20))
        with ca.call_plans(False):
            ca.fused_attention_forward(q, k, v, pladis_scale=2.0, alpha=1.5)
    first, second = sorted(ca.tuned_launch_configs(), key=lambda row: row["Lq"])
    assert (first["Lq"], first["BLOCK_M"], first["num_warps"], first["maxnreg"]) == (64, 64, 8, None)
    assert first["candidates"] == [{"BLOCK_M": 32, "num_warps": 4, "maxnreg": None, "median_ms": 0.5},
                                   {"BLOCK_M": 64, "num_warps": 8, "maxnreg": None, "median_ms": 0.25}]
    assert second["Lq"] == 128 and second["candidates"] == []
