"""The maps under ``torch.compile``: one custom operator each (``pladis_analysis::map``) with a backward operator.

``torch.library.opcheck`` checks the registration (schema, fake tensors, autograd, AOT dispatch with the
backward); compiled with ``fullgraph=True`` (any graph break fails) every map gives the eager weights and
gradients, and ``gradcheck`` holds through the compiled function in float64.
"""

from __future__ import annotations

import functools
import shutil
import math

import pytest
import torch

from pladis_analysis import maps
from pladis_analysis.testing import assert_close

# Inductor compiles the CPU code it generates with a C++ compiler.
NEEDS_CXX = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                               reason="Inductor on CPU needs a C++ compiler (g++, c++ or clang++) on PATH")

OPERATOR = torch.ops.pladis_analysis.map.default

MAPS = {
    "softmax": maps.softmax,
    "sparsemax": maps.sparsemax,
    "entmax15": maps.entmax15,
    "entmax(1.25)": functools.partial(maps.entmax, alpha=1.25),
    "entmax(3)": functools.partial(maps.entmax, alpha=3.0),
    "pladis(2, 1.5)": functools.partial(maps.pladis_weights, scale=2.0, alpha=1.5),
    "pladis(0.5, 4)": functools.partial(maps.pladis_weights, scale=0.5, alpha=4.0),
}


def _scores(dtype=torch.float64, seed=0) -> torch.Tensor:
    """(3, 5, 9) scores with a −inf-padded row and a fully masked row."""
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(3, 5, 9, generator=gen) * 2).to(dtype)
    z[0, 1, -3:] = -math.inf
    z[2, 4] = -math.inf
    return z


def _compiled(fn, **kwargs):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager", **kwargs)


@pytest.mark.parametrize("function, a, b", [("SoftmaxFunction", 0.0, 0.0), ("EntmaxFunction", 2.0, 0.0),
                                            ("EntmaxFunction", 1.5, 0.0), ("EntmaxFunction", 3.0, 0.0),
                                            ("PladisFunction", 2.0, 1.25)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "moved_dim"])
def test_operator_registration_passes_opcheck(function, a, b, dtype, layout):
    z = _scores(dtype)
    if layout == "moved_dim":                          # what maps(dim=1) hands the operator: a strided view
        z = z.transpose(1, 2).contiguous().transpose(1, 2)
    torch.library.opcheck(OPERATOR, (z.requires_grad_(), function, a, b, "torch"))


@pytest.mark.parametrize("dim", [-1, 1])
@pytest.mark.parametrize("name", list(MAPS))
def test_compiled_map_has_no_graph_break_and_eager_weights_and_gradients(name, dim):
    fn = functools.partial(MAPS[name], dim=dim)
    z = _scores()
    g = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(1))
    results = []
    for f in (_compiled(fn), fn):
        zz = z.clone().requires_grad_()
        p = f(zz)
        p.backward(g)
        results.append((p.detach(), zz.grad))
    (p_c, g_c), (p_e, g_e) = results
    assert_close(p_c, p_e, name=f"{name} weights")
    assert_close(g_c, g_e, name=f"{name} gradient")


@pytest.mark.parametrize("name", ["entmax(1.25)", "pladis(2, 1.5)", "sparsemax"])
def test_compiled_map_passes_gradcheck(name):
    z = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    assert torch.autograd.gradcheck(_compiled(MAPS[name]), (z,))


def test_compiled_map_follows_changing_shapes_with_dynamic_true():
    compiled = _compiled(functools.partial(maps.entmax, alpha=1.25), dynamic=True)
    for rows, cols in ((3, 5), (4, 11), (7, 2)):
        z = torch.randn(rows, cols)
        assert_close(compiled(z), maps.entmax(z, 1.25), name=f"{rows}×{cols}")


def test_support_sizes_are_traced_and_still_right():
    """return_support=True is not the operator (the support is not one of its outputs): traced, same values."""
    z = _scores(torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(functools.partial(maps.entmax15, return_support=True), backend="aot_eager")
    (p_c, s_c), (p_e, s_e) = compiled(z), maps.entmax15(z, return_support=True)
    assert_close(p_c, p_e)
    assert torch.equal(s_c, s_e)


def test_bad_scores_under_compile_are_the_eager_error():
    z = _scores(torch.float32)
    z[1, 2, 3] = math.nan
    with pytest.raises(ValueError, match="NaN scores"):
        _compiled(maps.sparsemax)(z)


@NEEDS_CXX
def test_inductor_code_around_the_operator_reads_its_layout():
    """Inductor (not just AOT tracing) generates code before and after the operator from its fake output: a map
    over a moved dim, with arithmetic on both sides, gives the eager result."""
    fn = lambda t: (maps.entmax(t * 2.0, 1.25, dim=1) + 1.0).sum(dim=1)  # noqa: E731
    z = torch.randn(3, 9, 5, generator=torch.Generator().manual_seed(3))
    torch._dynamo.reset()
    assert_close(torch.compile(fn, fullgraph=True)(z), fn(z))
