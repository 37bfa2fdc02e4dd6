"""The maths of the torch path: thresholds, forward maps and closed-form Jacobian-vector products.

Everything here works on the LAST dimension of a tensor that is already in the working dtype (float32;
float64 for float64 inputs and for α outside [:data:`FLOAT32_MIN_ALPHA`, :data:`FLOAT32_MAX_ALPHA`]);
:mod:`.functions` handles dtypes, devices and autograd.

All maps are computed in the shifted and scaled space used by Peters, Niculae & Martins (2019):

    z' = (α − 1)(z − max z),      p_i = [z'_i − τ]_+^{q},      q = 1/(α − 1),

with τ the unique root of f(τ) = Σ_i [z'_i − τ]_+^q − 1. Because max z' = 0 and p ≤ 1,
τ always lies in the bracket [−1, −d^{1−α}] (d = row length): at τ = −1 the largest entry alone
already has mass 1, at τ = −d^{1−α} every entry has mass at most 1/d.

How τ is found (all rows of a chunk at once, the whole loop vectorised over rows):

* 1 < α ≤ 2 (q ≥ 1): Newton's method on h(τ) = ‖[z' − τ]_+‖_q − 1 rather than on f. h is convex and
  decreasing (a monotone norm of a componentwise convex map), so Newton started at the lower bracket end
  τ = −1 climbs monotonically to τ* and never overshoots: the bisection branch of a safeguarded
  Newton–bisection hybrid is provably never taken, and steps are merely clamped to the bracket against
  rounding. h is also nearly linear (exactly linear while the support is fixed and the active t_i are
  equal), so rows need 2–7 steps (mean ~5 for 1.5-entmax on N(0, 1) scores). For α = 2 the step is
  Michelot's fixed point τ ← (Σ_S z' − 1)/|S|, exact once the support S is found.
* α > 2 (q < 1): h is neither convex nor smooth at the kinks, so a true safeguarded Newton–bisection
  (Newton steps on h) keeps a bracket [lo, hi] with f(lo) ≥ 0 > f(hi) and bisects whenever a step does
  not land inside it. Rows it can only bring to the working precision's resolution (τ* within rounding
  of a score, where p = t^q has infinite slope) are solved again in scores measured from the entry
  nearest τ, where τ is resolved relatively (:func:`_entmax_safeguarded`).
* Stopping: a row is done when |f(τ)| = |Σp − 1| ≤ ε (ε = :data:`SUM_TOLERANCE` of the working dtype),
  or when the Newton step is below two ulps of |τ| ≤ 1 — τ is then as close to τ* as the working precision
  can hold, and |f| ≲ 2u · |f'(τ)|, |f'| = q Σ t^{q−1}, u the machine epsilon (this floor exceeds ε
  for α near 1 or long rows).
* Exact maps: sparsemax ends on Michelot's closed form. For α = 1.5 the support S of the last Newton
  iterate is used to solve Σ_S (z' − τ)² = 1 in closed form (Peters, Niculae & Martins 2019); the result
  is kept when Σp is within ε of 1 (always, unless an entry sits within ~|f| of τ*), otherwise the row
  falls back to the renormalised Newton iterate.
* General α: p is renormalised, p ← p/Σp.

Error bound. p_i(τ) is monotone in τ for every i, so p(τ) − p* has one sign and
‖p(τ) − p*‖₁ = |Σp(τ) − 1| = |f(τ)|; renormalising moves p by another |f(τ)| in ℓ₁. Hence

    ‖p − p*‖_∞ ≤ ‖p − p*‖₁ ≤ 2 |f(τ_final)| ≤ 2 max(ε, 2u · q Σ_i t_i^{q−1}),

plus the rounding of evaluating f and writing p in the working precision (O(log d · u)).
``tests/test_maps_torch.py`` checks this bound against the NumPy float64 reference.

Jacobians (Peters et al. 2019, Prop. 1; Blondel et al. 2020): for α-entmax, J = diag(s) − s sᵀ/Σs with
s_i = p_i^{2−α} on the support and 0 off it. With t = [z' − τ]_+ we have p = t^q and s = t^{q−1}, so
the forward pass hands t^{q−1} to the backward pass and no power is taken there. Softmax:
J = diag(p) − p pᵀ. Both are symmetric, so the vector-Jacobian product is J v.
"""

from __future__ import annotations

import math
import numbers

import torch

# |Σp − 1| at which the general-α solver stops, per working dtype (see the module docstring for the
# resulting bound 2ε on ‖p − p*‖₁). Both are ~8 units in the last place of a sum of d ≲ 10⁴ terms ≤ 1:
# lower would ask the iteration for accuracy that evaluating f in that precision cannot deliver.
SUM_TOLERANCE: dict[torch.dtype, float] = {torch.float32: 2.0**-21, torch.float64: 2.0**-41}

# Newton on h needs a handful of steps; bisection alone would need ~log2(1/ε) ≈ 40 (float64).
# The cap is only reached by pathological rows, which then keep their last iterate (renormalised for
# general α).
MAX_ITERATIONS = 64

# Above this α a float32 search cannot hold every weight: an entry tied (with k others) δ under the one-hot gap
# has t* ≈ (δ/k)^{α−1} and weight ≈ δ/k, and for a δ of one float32 ulp of the scores (~1e-8) that t* falls
# under float32's smallest subnormal (1.4e-45) once α − 1 ≳ 5.6, so such weights round to 0 or to a few bits.
# Measured on such rows (results/search_precision.csv, experiments/search_precision.py): a float32 search keeps
# every row within the float32 tolerance up to α = 6.5 (worst error 5e-6), then fails 2% of the rows at α = 7
# (2.3e-5), 17% at α = 8 (1.8e-4) and 58% at α = 20 (0.33); float64 stays within 4.4e-13 up to α = 20. Maps
# above the limit compute in float64 (working_dtype), and the float32 kernels hand such α to this path.
FLOAT32_MAX_ALPHA = 6.0

# Below this α a float32 search loses the scores' differences: z' = (α − 1)(z − max z) and t = z' − τ sit next
# to 1 (τ ≈ −1), so only about ε/(α − 1) of them survive, and the power t^{1/(α−1)} magnifies what is lost. On
# N(0, 4) rows of 77 the float32 weights were within the float32 tolerance down to α = 1.001 and failed 13% of
# the elements at α = 1.0001 (85% at 1 + 10⁻⁶); tests/test_maps_torch.py::test_alpha_next_to_one_computes_in_
# float64 holds both ends. Maps below the limit compute in float64, and the float32 kernels hand such α to this
# path. (Float64 degrades the same way much later: α − 1 of order 10⁻⁸ and below.)
FLOAT32_MIN_ALPHA = 1.01

# An additive mask value at or below this masks its key for the per-row statistics (support fraction, top gap):
# diffusers' text-padding bias is −10000, which the maps see as a very low score, not as −inf.
MASKED_BIAS_THRESHOLD = -1000.0


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------

def finite_number(x: float) -> bool:
    """``math.isfinite(x)`` in a form torch.compile traces with ``dynamic=True`` (it cannot trace isfinite)."""
    return abs(x) < math.inf


def check_alpha(alpha, name: str = "alpha") -> float:
    """``alpha`` as a float, or ValueError (naming the argument ``name``) unless it is a finite real number > 1."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(alpha.shape)}")
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"{name}={alpha!r} must be a real number > 1")
    alpha = float(alpha)
    if not finite_number(alpha) or alpha <= 1.0:
        raise ValueError(f"{name}={alpha!r} must be a finite real number > 1 (alpha -> 1 is softmax)")
    return alpha


def check_scale(scale, name: str = "scale") -> float:
    """The PLADIS scale λ as a float, or ValueError (naming the argument ``name``) unless it is a finite real
    number >= 0.

    λ < 0 would extrapolate *away* from the sparse map; the reference and the attention functions reject it too.
    """
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(scale.shape)}")
        scale = scale.item()
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise ValueError(f"{name}={scale!r} must be a finite real number")
    scale = float(scale)
    if not finite_number(scale) or scale < 0.0:
        raise ValueError(f"{name}={scale!r} (the PLADIS scale λ) must be a finite real number >= 0")
    return scale


def check_scores(z, dim) -> int:
    """Validate the score tensor and ``dim``; return ``dim`` as a non-negative index."""
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise ValueError(f"z.dtype={z.dtype} must be a floating dtype (float64, float32, float16, bfloat16)")
    if z.dim() == 0:
        raise ValueError("z must have at least one dimension, got a 0-d tensor")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):  # NumPy integers are Integral too
        raise ValueError(f"dim={dim!r} must be an integer, got {type(dim).__name__}")
    if not -z.dim() <= dim < z.dim():
        raise ValueError(f"dim={dim!r} is out of range for z with {z.dim()} dimensions")
    return int(dim) % z.dim()


def working_dtype(dtype: torch.dtype, alpha: float | None = None) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32, except α-entmax (and PLADIS) above
    :data:`FLOAT32_MAX_ALPHA` or below :data:`FLOAT32_MIN_ALPHA`, which is computed in float64 whatever the input
    dtype."""
    if dtype == torch.float64 or (alpha is not None and not FLOAT32_MIN_ALPHA <= alpha <= FLOAT32_MAX_ALPHA):
        return torch.float64
    return torch.float32


def row_max(x: torch.Tensor) -> torch.Tensor:
    """max over the last dim (keepdim), raising on NaN or +inf scores.

    The maps need the row maximum anyway, so validating costs one reduction over the row maxima only:
    ``amax`` propagates NaN (also when the row holds finite values) and returns +inf for a row with +inf.
    A row of only −inf (fully masked) has max −inf, which is allowed.
    """
    m = x.amax(dim=-1, keepdim=True)
    bad = ~(m < math.inf)  # NaN or +inf
    if bool(bad.any()):
        kind = "NaN" if bool(torch.isnan(m).any()) else "+inf"
        raise ValueError(f"z contains {kind} scores; mask with -inf instead (rows of only -inf give zero weights)")
    return m


# --------------------------------------------------------------------------------------------------
# softmax
# --------------------------------------------------------------------------------------------------

def softmax_forward(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim of ``x`` (working dtype); all −inf rows give zeros, not NaN."""
    p = torch.softmax(x, dim=-1)
    masked_rows = m == -math.inf
    if bool(masked_rows.any()):
        p = p.masked_fill(masked_rows, 0.0)
    return p


def softmax_support(x: torch.Tensor) -> torch.Tensor:
    """Support size of softmax: the number of entries with a finite score (every such weight is > 0)."""
    return (x > -math.inf).sum(dim=-1)


def softmax_jvp(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(diag(p) − p pᵀ) v over the last dim."""
    g = p * v
    g.addcmul_(p, g.sum(dim=-1, keepdim=True), value=-1.0)
    return g


# --------------------------------------------------------------------------------------------------
# α-entmax
# --------------------------------------------------------------------------------------------------

# Rows are processed in chunks of about this many elements (1 MiB in float32), so the solver's buffers
# (z', t, t^{q−1}) stay in a core's L2 cache across its passes: at [16, 4096, 77] on one CPU thread the
# bare Newton loop ran ~1.5x faster in chunks of 2^17 elements than in chunks of 2^20. Much smaller chunks
# lose to the per-operation overhead of the row-wise bookkeeping.
CHUNK_ELEMENTS = 2**18
# α > 2's safeguarded search runs more steps of more row-wise bookkeeping ((rows, 1) tensors: brackets,
# tests, splits), whose per-operation overhead the chunk's row count amortises: at [16, 4096, 77] and α = 3
# on one thread of an AMD EPYC it ran in 0.6x the time in chunks of 2^20 elements than of 2^18 (0.64x at
# [16, 1024, 300]; 2^21 was no faster).
SAFEGUARDED_CHUNK_ELEMENTS = 2**20
# On a GPU the same loop is bound by kernel launches, not cache: one chunk of up to 2^24 elements.
CUDA_CHUNK_ELEMENTS = 2**24


def entmax_forward(x: torch.Tensor, alpha: float, need_support: bool = False, need_s: bool = True,
                   m: torch.Tensor | None = None):
    """α-entmax over the last dim of ``x`` (working dtype).

    ``m`` is the validated row max (keepdim) if the caller has it; otherwise each chunk computes and
    validates its own, while the chunk is in cache. Returns ``(p, s, support)``: ``s = p^{2−α}`` on the
    support (what the backward pass needs; ``None`` unless ``need_s``, and for α = 2, where s is the
    support indicator) and ``support`` the int64 support size, or ``None`` unless ``need_support``.
    """
    shape = x.shape
    d = shape[-1]
    q = 1.0 / (alpha - 1.0)
    x2 = x.reshape(-1, d)  # (R, d)
    m2 = None if m is None else m.reshape(-1, 1)  # (R, 1)
    rows = x2.shape[0]
    p = torch.empty_like(x2)
    s = torch.empty_like(x2) if (need_s and q != 1.0) else None
    if x.device.type != "cpu":
        chunk_elements = CUDA_CHUNK_ELEMENTS
    else:
        chunk_elements = CHUNK_ELEMENTS if q >= 1.0 else SAFEGUARDED_CHUNK_ELEMENTS
    chunk = min(rows, max(1, chunk_elements // d))
    zs_buf = x.new_empty((chunk, d))
    # sparsemax counts its support each step; without s the other maps iterate in this buffer instead
    work = x.new_empty((chunk, d)) if (q == 1.0 or s is None) else None
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        n = stop - start
        x_c = x2[start:stop]  # (n, d)
        m_c = row_max(x_c) if m2 is None else m2[start:stop]  # (n, 1)
        # A fully masked row has max −inf; shift it by 0 instead so z' stays −inf (weights 0), not NaN.
        m_c = torch.where(m_c == -math.inf, torch.zeros_like(m_c), m_c)
        # z' = (α − 1)(z − max z): subtract first, so scores of 1e4 keep their small differences exact
        zs = torch.sub(x_c, m_c, out=zs_buf[:n])  # (n, d)
        if alpha != 2.0:
            zs.mul_(alpha - 1.0)
        p_c = p[start:stop]
        s_c = s[start:stop] if s is not None else (None if q == 1.0 else work[:n])
        if q >= 1.0:
            _entmax_newton(zs, alpha, p_c, s_c, work[:n] if q == 1.0 else None)
        else:
            _entmax_safeguarded(x_c, zs, m_c, alpha, p_c, s_c)
    support = None
    if need_support:
        support = torch.sign(p).sum(dim=-1).to(torch.int64).reshape(shape[:-1])
    return p.reshape(shape), (None if s is None else s.reshape(shape)), support


def _power_into(t: torch.Tensor, e: float, out: torch.Tensor) -> torch.Tensor:
    """out = t ** e (t ≥ 0), by multiplication for small integer e; 0 where t = 0 even for e < 0."""
    if e == 1.0:
        return out.copy_(t)
    if e == 2.0:
        return torch.mul(t, t, out=out)
    if e == 3.0:
        return torch.mul(t, t, out=out).mul_(t)
    if e == 4.0:
        return torch.mul(t, t, out=out).square_()
    if e == -0.5:  # α = 3
        torch.rsqrt(t, out=out)
    elif e > 0.0 and t.device.type == "cpu":
        # 1 < α < 2. t^e = 2^{e·log2 t}: on a CPU torch.pow with a scalar exponent costs ~1.8x these five
        # passes (it was 57% of α = 1.75's forward). log2 takes a slow path at 0 (10x), so t is floored at the
        # smallest normal and the entries off the support are zeroed after; the floor changes nothing else, as
        # t = z' − τ with |τ| ≥ d^{1−α} is 0 or far above it. The relative error, ~u(2 + e|ln t|), grows only
        # where t is small, so that of t^q = t·t^{q−1} stays below ~u in absolute terms (t^q |ln t| ≤ 1/(q·exp 1)).
        # On a GPU pow is one memory pass, these five.
        torch.clamp(t, min=torch.finfo(t.dtype).tiny, out=out).log2_().mul_(e).exp2_().mul_(t > 0)
    else:
        torch.pow(t, e, out=out)
    if e < 0.0:
        # α > 2: t^{q−1} has a negative exponent, so t = 0 (off the support) gave +inf; it is 0 there.
        # Only t = 0 gives +inf unless e < log(max)/log(smallest subnormal) (about −0.95 in float64: α > 21;
        # −0.86 in float32, α > 8, which float32 never sees above FLOAT32_MAX_ALPHA), where a subnormal t > 0
        # overflows too and is zeroed with it. One pass, where a boolean mask and masked_fill_ cost ten times
        # more on a CPU.
        out.nan_to_num_(nan=math.nan, posinf=0.0)
    return out


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij b_ij as (R, 1), one fused pass (a batched 1×d by d×1 product)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1, 1)


# Rows that have converged are dropped from the Newton loop (copying the others into a compact buffer)
# once at least this fraction of the still-active rows is done; converged rows are otherwise carried along.
# Rows need 2-7 steps: without compaction every step would cost as much as the slowest row's.
COMPACT_FRACTION = 0.3


def _record_finished(final: dict, values: dict, sel, active, selected: tuple[str, ...] = ()) -> None:
    """Write the per-row ``values`` of the finished rows into ``final`` at their chunk indices.

    ``values`` hold one row per active row (``selected`` names those already reduced to the finished ones);
    ``sel`` are the finished rows' active positions (None: all active rows finished); ``active`` the chunk
    index of each active row (None: all rows, in their original order)."""
    rows_done = active if sel is None else (sel if active is None else active.index_select(0, sel))
    for key, value in values.items():
        if sel is not None and key not in selected:
            value = value.index_select(0, sel)
        if rows_done is None:
            final[key].copy_(value)
        else:
            final[key].index_copy_(0, rows_done, value)


def _entmax_newton(zs, alpha, p, s, scratch):
    """α-entmax, 1 < α ≤ 2, of the rows of ``zs`` (R, d) = z' (max 0 per row), written into ``p`` and ``s``.

    Newton on the convex, decreasing h(τ) = ‖t‖_q − 1, t = [z' − τ]_+, from τ = −1: the iterates rise
    monotonically to τ* (tangents of a convex function lie below it), so the bisection branch of a
    safeguarded Newton is provably never taken; steps are still clamped to the bracket against rounding.
    Stops when every row has |f| ≤ ε or cannot move (see the module docstring). The output buffers double
    as the iteration's workspace: t lives in ``p`` (``s`` for α = 1.5), t^{q−1} in ``s``.
    """
    rows, d = zs.shape
    q = 1.0 / (alpha - 1.0)
    eps = SUM_TOLERANCE[zs.dtype]
    tiny = torch.finfo(zs.dtype).tiny
    lo, hi = -1.0, -float(d) ** (1.0 - alpha)
    step_floor = 2.0 * torch.finfo(zs.dtype).eps * max(abs(lo), abs(hi))  # two ulps of |τ| ≤ 1
    t_buf = s if q == 2.0 else p
    # per-row results, filled in as rows converge: τ, Σt^q, Σt^{q−1} and (α = 1.5) |S| at τ
    final = {key: zs.new_empty((rows, 1)) for key in ("tau", "sum_q", "sum_q1", "count")}
    tau = zs.new_full((rows, 1), lo)
    active = None  # chunk indices of the rows still iterating; None: all rows, in their original order
    z_act = zs
    spare = None  # the buffer the next compaction copies into (two alternate)
    for iteration in range(MAX_ITERATIONS):
        n = z_act.shape[0]
        t = torch.sub(z_act, tau, out=t_buf[:n]).clamp_(min=0.0)
        if q == 1.0:
            sum_q = t.sum(dim=-1, keepdim=True)
            sum_q1 = torch.sign(t, out=scratch[:n]).sum(dim=-1, keepdim=True)  # |S|
            step = (sum_q - 1.0) / sum_q1.clamp(min=1.0)  # = Michelot's closed form on the support
        elif q == 2.0:
            norm = torch.linalg.vector_norm(t, 2, dim=-1, keepdim=True)
            sum_q1 = t.sum(dim=-1, keepdim=True)
            sum_q = norm * norm
            step = (norm - 1.0) * norm / sum_q1.clamp(min=tiny)
        else:
            w = _power_into(t, q - 1.0, s[:n])
            sum_q1 = w.sum(dim=-1, keepdim=True)
            sum_q = _row_dot(w, t)
            norm = sum_q.pow(1.0 / q)
            # δ = h/|h'| = (‖t‖_q − 1) ‖t‖_q^{q−1} / Σ t^{q−1} = (‖t‖_q − 1) Σt^q / (‖t‖_q Σt^{q−1})
            step = (norm - 1.0) * sum_q / (norm * sum_q1).clamp(min=tiny)
        new = (tau + step).clamp_(lo, hi)
        # Stop a row when Σp is within ε of 1, or when the Newton step is below two ulps of τ: τ is then
        # as close to τ* as the working precision can hold, and |f| ≤ 2u |f'(τ)| (this floor is above ε
        # when |f'| = q Σt^{q−1} is large: α near 1, or long rows). A fully masked row has f = −1 and
        # step 0, so it stops at once with weights 0.
        done = (sum_q - 1.0).abs_() <= eps
        done |= step.abs_() <= step_floor
        n_done = n if iteration == MAX_ITERATIONS - 1 else int(done.sum())
        if n_done == n or n_done >= COMPACT_FRACTION * n:
            sel = None if n_done == n else done.view(-1).nonzero().view(-1)  # active positions that are done
            stats = {"tau": tau, "sum_q": sum_q, "sum_q1": sum_q1}
            if q == 2.0:
                stats["count"] = torch.sign(t if sel is None else t.index_select(0, sel)).sum(dim=-1, keepdim=True)
            _record_finished(final, stats, sel, active, selected=("count",))
            if n_done == n:
                break
            keep = (~done).view(-1).nonzero().view(-1)
            if spare is None:
                spare = [zs.new_empty((n - n_done, d)), zs.new_empty((n - n_done, d))]
            out = spare[0] if z_act.data_ptr() != spare[0].data_ptr() else spare[1]
            z_act = torch.index_select(z_act, 0, keep, out=out[: n - n_done])
            active = keep if active is None else active.index_select(0, keep)
            tau = new.index_select(0, keep)
        else:
            tau = new  # rows already done take steps below their tolerance; harmless
    t_is_final = active is None  # no row was dropped, so t (and t^{q−1}) still hold every row's final value
    tau, sum_q, sum_q1 = final["tau"], final["sum_q"], final["sum_q1"]
    if q == 1.0:
        if not t_is_final:
            torch.sub(zs, tau, out=p).clamp_(min=0.0)
        return  # p = t at the final τ
    if q == 2.0:
        # Exact 1.5-entmax: on the support S of the last iterate, Σ_S (z' − τ − δ)² = 1 is the quadratic
        # |S| δ² − 2 Σt δ + (Σt² − 1) = 0, whose smaller root gives τ* exactly when S is the true support
        # (Peters, Niculae & Martins 2019, Alg. 2 solves the same equation after a sort).
        f = sum_q - 1.0
        disc = (sum_q1 * sum_q1 - final["count"] * f).clamp_(min=0.0)
        tau_exact = tau + f / (sum_q1 + disc.sqrt_()).clamp_(min=tiny)
        t = torch.sub(zs, tau_exact, out=s).clamp_(min=0.0)
        total = torch.linalg.vector_norm(t, 2, dim=-1, keepdim=True).square_()
        torch.mul(t, t, out=p)
        # If S still held an entry that τ* drops (only possible within about |f| of τ*), τ_exact
        # overshoots and Σp < 1; p(τ) − p* has one sign, so ‖p − p*‖₁ = |Σp − 1|. Rows off by more than
        # ε fall back to the Newton iterate, renormalised (bound 2ε); the rest are exact.
        reject = ((total - 1.0).abs() > eps).view(-1).nonzero().view(-1)
        if reject.numel():
            total = sum_q.index_select(0, reject).clamp(min=tiny)
            tr = (zs.index_select(0, reject) - tau.index_select(0, reject)).clamp_(min=0.0)
            s.index_copy_(0, reject, tr / total.sqrt())
            p.index_copy_(0, reject, tr * tr / total)
        return
    # general α: p = t^q / Σt^q, s = p^{2−α} = t^{q−1} / (Σt^q)^{2−α}; a fully masked row keeps zeros
    if not t_is_final:
        torch.sub(zs, tau, out=p).clamp_(min=0.0)
        _power_into(p, q - 1.0, s)
    total = torch.where(sum_q > 0, sum_q, torch.ones_like(sum_q))
    p.mul_(s).div_(total)
    s.div_(total.pow(2.0 - alpha))


def _split(lo, hi, relative: bool):
    """Where a bisection of [lo, hi] evaluates: the midpoint; with ``relative`` (τ measured from a nearby score,
    whose kink is at 0), 0 for a bracket around it and the geometric mean (from the dtype's smallest normal up) for
    one that spans more than a factor 4, so that a root of any magnitude is reached in a few halvings of its
    exponent (the Triton kernel's ``_split``)."""
    mid = 0.5 * (lo + hi)
    if not relative:
        return mid
    small = torch.minimum(lo.abs(), hi.abs()).clamp_(min=torch.finfo(lo.dtype).tiny)
    large = torch.maximum(lo.abs(), hi.abs())
    geometric = torch.where(hi <= 0, -1.0, 1.0) * small.sqrt() * large.sqrt()
    return torch.where((lo < 0) & (hi > 0), torch.zeros_like(mid), torch.where(large > 4.0 * small, geometric, mid))


def _safeguarded_tau(zs, q, lo, hi, tau, t_out, w_out, relative=False):
    """Safeguarded Newton–bisection for the rows of ``zs`` from ``tau`` inside [``lo``, ``hi``] (f(lo) ≥ 0 > f(hi)).

    Here h is not convex and its slope is infinite at every kink, so plain Newton can stall or cycle: the Newton
    step on h is taken only when it lands strictly inside the bracket, otherwise the row bisects (at
    :func:`_split`). A row stops at |f| ≤ ε (``converged``), when its bracket has shrunk to rounding, relative to
    the larger |end| (so a bracket near 0 keeps shrinking: see :func:`_entmax_safeguarded`), or, unless
    ``relative``, when the Newton step cannot move τ at all. Returns ``(τ, Σt^q, converged, lo, hi)`` with
    t = [zs − τ]_+ in ``t_out`` and t^{q−1} in ``w_out``, all at the returned τ.

    Rows differ a lot here (3–5 Newton steps for most, ~15 for rows whose Newton steps leave the bracket near a
    kink and bisect), so rows that are done leave the loop as in :func:`_entmax_newton`: once
    :data:`COMPACT_FRACTION` of the active rows are done they are recorded and the rest copied into a compact
    buffer. ``t_out``/``w_out`` serve as the loop's scratch; when rows were dropped, one last pass fills them
    for every row (otherwise the last iteration already did).
    """
    eps = SUM_TOLERANCE[zs.dtype]
    tiny = torch.finfo(zs.dtype).tiny
    ulp = 2.0 * torch.finfo(zs.dtype).eps
    cap = 4 * MAX_ITERATIONS  # bisection alone needs up to ~log2(1/ulp) steps
    final = {"tau": tau.clone(), "converged": torch.zeros_like(tau, dtype=torch.bool), "lo": lo.clone(),
             "hi": hi.clone()}
    active = None  # indices of the rows still iterating; None: all rows, in their original order
    z_act = zs
    for iteration in range(cap):
        n = z_act.shape[0]
        t = torch.sub(z_act, tau, out=t_out[:n]).clamp_(min=0.0)
        w = _power_into(t, q - 1.0, w_out[:n])
        sum_q1 = w.sum(dim=-1, keepdim=True)
        sum_q = _row_dot(w, t)
        f = sum_q - 1.0
        lo = torch.where(f >= 0, tau, lo)
        hi = torch.where(f < 0, tau, hi)
        # Newton on h(τ) = ‖t‖_q − 1, which has f's root and sign, rather than on f: h is linear while a single
        # entry is in the support and nearly so with a few, so rows need fewer steps. The step of
        # _entmax_newton, (1 − 1/‖t‖_q) Σt^q / Σt^{q−1}, written so that ‖t‖_q = (Σt^q)^{α−1}, which
        # overflows for large α, gives the step Σt^q / Σt^{q−1} there instead of 0.
        newton = tau + (1.0 - sum_q.pow(-1.0 / q)) * sum_q / sum_q1.clamp(min=tiny)
        converged = (f.abs() <= eps) | (sum_q == 0)
        done = converged | ((hi - lo) <= ulp * torch.maximum(lo.abs(), hi.abs()) + tiny)
        if not relative:
            # Newton cannot move τ although |f| > ε: the step is below half an ulp of τ, so the slope is that
            # of an entry within rounding of τ* (where t^q has infinite slope). Bisecting on would only bring
            # the bracket down to the same resolution, in up to ~20 more steps, and such a row is solved
            # again from that entry anyway (:func:`_entmax_safeguarded`).
            done |= newton == tau
        if iteration == cap - 1:
            done = torch.ones_like(done)  # at the cap: τ stays where t and Σt^q were evaluated
        n_done = int(done.sum())
        if n_done == n or n_done >= COMPACT_FRACTION * n:
            sel = None if n_done == n else done.view(-1).nonzero().view(-1)  # active positions that are done
            _record_finished(final, {"tau": tau, "converged": converged, "lo": lo, "hi": hi}, sel, active)
            if n_done == n:
                break
            keep = (~done).view(-1).nonzero().view(-1)
            z_act = z_act.index_select(0, keep)
            active = keep if active is None else active.index_select(0, keep)
            tau, lo, hi, newton = (v.index_select(0, keep) for v in (tau, lo, hi, newton))
            done = done.new_zeros((n - n_done, 1))  # every kept row is still active
        inside = (newton > lo) & (newton < hi)  # False for NaN
        new = torch.where(inside, newton, _split(lo, hi, relative))
        tau = torch.where(done, tau, new)  # stopped rows stay put, so t and f stay theirs
    tau = final["tau"]
    if active is not None:  # rows were dropped: t_out/w_out hold scratch, not every row's final t
        t = torch.sub(zs, tau, out=t_out).clamp_(min=0.0)
        sum_q = _row_dot(_power_into(t, q - 1.0, w_out), t)
    return tau, sum_q, final["converged"], final["lo"], final["hi"]


def _entmax_safeguarded(x, zs, m, alpha, p, s):
    """α-entmax for α > 2 (q < 1) of the rows of ``zs`` = (α−1)(x − m) into ``p`` and ``s``.

    :func:`_safeguarded_tau` on the bracket [−1, −d^{1−α}]; then the rows it left at the bracket's resolution
    (|f| > ε) are solved again in scores measured from the entry nearest their τ, w = (α−1)(x − x_r). Why:
    p = t^q with q < 1 has infinite slope at t = 0, so when τ* lies within rounding of a score (a tied group of
    padding tokens at the edge of the support, say), no τ of the working dtype near −1…0 gives weights within
    tolerance: a rounding δ of τ moves each such weight by up to δ^q. In w the entries near τ* are exact or
    nearly (x − x_r of nearby floats is exact, Sterbenz's lemma) and τ_w lies near 0, where it is resolved
    relatively. The weights are renormalised at the end.
    """
    rows, d = zs.shape
    q = 1.0 / (alpha - 1.0)
    lo = zs.new_full((rows, 1), -1.0)
    hi = zs.new_full((rows, 1), -float(d) ** (1.0 - alpha))
    tau, sum_q, converged, lo, hi = _safeguarded_tau(zs, q, lo, hi, lo.clone(), p, s)
    redo = (~converged).view(-1).nonzero().view(-1)
    if redo.numel():
        x_redo, zs_redo, tau_redo, m_redo, lo_redo, hi_redo = (
            v.index_select(0, redo) for v in (x, zs, tau, m, lo, hi))
        nearest = (zs_redo - tau_redo).abs_().argmin(dim=-1, keepdim=True)  # masked entries are at distance inf
        x_r = x_redo.gather(-1, nearest)
        w = (x_redo - x_r).mul_(alpha - 1.0)  # (n_redo, d)
        zs_r = (x_r - m_redo).mul_(alpha - 1.0)  # rounded as zs was
        # The first bracket, moved and widened by 8 ulps of 1: more than the rounding of zs against w.
        margin = 8.0 * torch.finfo(zs.dtype).eps
        t_redo, w_pow_redo = torch.empty_like(w), torch.empty_like(w)
        _, sum_q_redo, _, _, _ = _safeguarded_tau(w, q, lo_redo - zs_r - margin, hi_redo - zs_r + margin,
                                                  tau_redo - zs_r, t_redo, w_pow_redo, relative=True)
        p.index_copy_(0, redo, t_redo)
        s.index_copy_(0, redo, w_pow_redo)
        sum_q.index_copy_(0, redo, sum_q_redo)
    total = torch.where(sum_q > 0, sum_q, torch.ones_like(sum_q))
    p.mul_(s).div_(total)
    s.div_(total.pow(2.0 - alpha))


def entmax_jvp(s: torch.Tensor | None, p: torch.Tensor, v: torch.Tensor, centre: bool = False) -> torch.Tensor:
    """(diag(s) − s sᵀ/Σs) v over the last dim; ``s=None`` means sparsemax (s = 1 on the support).

    ``centre`` (for α > 2) first measures v from its value at the entry of largest s. J·1 = 0 makes that exact,
    and it matters there: s = p^{2−α} is largest at the smallest weight, and without it that entry's
    s_k v_k − s_k (s_k v_k)/Σs cancels, leaving s_k·ε of rounding in a gradient of order 1.
    """
    if s is None:
        s = torch.sign(p)  # p ≥ 0: the support indicator in one pass, already in v's dtype
    if centre:
        v = v - v.gather(-1, s.argmax(dim=-1, keepdim=True))
    g = s * v
    total = s.sum(dim=-1, keepdim=True)
    coef = g.sum(dim=-1, keepdim=True) / torch.where(total > 0, total, torch.ones_like(total))
    g.addcmul_(s, coef, value=-1.0)
    return g
