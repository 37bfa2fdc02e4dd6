"""Shape arithmetic in plain Python, for hot paths: broadcasting, block sizes, output layouts.

``torch.broadcast_shapes`` goes through torch's reference implementation (symbolic-shape guards included) and
costs tens of microseconds; the diffusion processor checks shapes on every attention call of every layer and
step, where that overhead is comparable to a whole cross-attention kernel. Same semantics, same error type.
"""

from __future__ import annotations

from typing import Sequence


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...]:
    """The broadcast of ``shapes`` (NumPy rules), or a RuntimeError as ``torch.broadcast_shapes`` raises."""
    first = tuple(shapes[0]) if shapes else ()
    if all(tuple(s) == first for s in shapes[1:]):  # the common case: nothing to broadcast
        return first
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, size in enumerate(shape, start=ndim - len(shape)):
            if size == out[i] or size == 1:
                continue
            if out[i] != 1:
                raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} do not broadcast "
                                   f"(size {size} against {out[i]} at dim {i})")
            out[i] = size
    return tuple(out)


def writes_heads_interleaved(q, lead: Sequence[int]) -> bool:
    """Whether an attention output follows ``q``'s (B, Lq, H, d) memory order: ``q`` is a head-split view of a
    (B, Lq, H·d) projection, as attention processors make it (4-D, heads stride below the query stride). Such an
    output merges its heads back with a view, not a copy, as SDPA's does. The fused kernel and the compiled
    attention operator both lay out their outputs by this rule."""
    return q.dim() == 4 and len(lead) == 2 and q.stride(1) < q.stride(2)


def next_power_of_2(n: int) -> int:
    """Smallest power of two ≥ ``n`` (1 for n ≤ 1); ``triton.next_power_of_2`` is a JIT function, slow on the host."""
    return 1 << max(0, int(n) - 1).bit_length()


def block_size(n: int) -> int:
    """The Triton block that holds ``n`` elements: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, next_power_of_2(n))


def split_blocks(n: int) -> tuple[int, int]:
    """Two power-of-two blocks (head, tail) that cover ``n`` elements with less padding than one block, or
    ``(block_size(n), 0)`` when a split saves nothing: 77 → (64, 16), 300 → (256, 64), 100 → (128, 0)."""
    whole = block_size(n)
    head = max(16, whole // 2)
    if n <= head:
        return whole, 0
    tail = block_size(n - head)
    return (head, tail) if head + tail < whole else (whole, 0)


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for positive ``b``."""
    return -(-int(a) // int(b))
