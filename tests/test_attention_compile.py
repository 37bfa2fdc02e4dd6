"""Attention under ``torch.compile``: a named map is one custom operator, ``pladis_analysis::attention``.

The operator's registration is checked by ``torch.library.opcheck`` (schema, fake tensors, autograd
registration, AOT dispatch); compiled calls must give the eager outputs with no graph break (``fullgraph=True``
fails on any), whole diffusers models included; calls that need gradients take the traced torch path (the maps'
operators, tests/test_maps_compile.py) and keep eager's gradients, also with no graph break.
"""

from __future__ import annotations

import functools
import shutil
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # as in test_kernels.py: before Triton is first imported

from pladis_analysis import maps  # noqa: E402
from pladis_analysis.attention import attention, pladis_attention  # noqa: E402
from pladis_analysis.maps.kernels import dispatch  # noqa: E402
from pladis_analysis.testing import assert_close  # noqa: E402

# Inductor compiles the CPU code it generates with a C++ compiler.
NEEDS_CXX = pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
                               reason="Inductor on CPU needs a C++ compiler (g++, c++ or clang++) on PATH")

OPERATOR = torch.ops.pladis_analysis.attention.default
MAP_NAMES = ["softmax", "sparsemax", "entmax15", "entmax:1.25", "entmax:3", "pladis", "pladis:2.5:2"]


def _head_split_qkv(batch=2, heads=3, lq=7, lk=5, d=8, seed=0, dtype=torch.float32):
    """q, k, v as attention processors make them: head-split views (B, H, L, d) of (B, L, H·d) projections."""
    gen = torch.Generator().manual_seed(seed)

    def split(length):
        return torch.randn(batch, length, heads * d, generator=gen).to(dtype).view(batch, length, heads, d).transpose(1, 2)

    return split(lq), split(lk), split(lk)


def _masks(batch=2, heads=3, lk=5):
    keep = torch.ones(batch, 1, 1, lk, dtype=torch.bool)
    keep[0, ..., -2:] = False                                  # the first prompt is padded
    bias = torch.zeros(batch, heads, 1, lk).masked_fill(~keep, -10000.0)
    return {"none": None, "bool": keep, "additive": bias}


def _compiled(fn, **kwargs):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager", **kwargs)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("layout", ["head_split", "contiguous"])
@pytest.mark.parametrize("map_name", ["softmax", "entmax:1.25", "pladis:2:1.5"])
def test_operator_registration_passes_opcheck(map_name, layout, mask_kind):
    q, k, v = _head_split_qkv()
    if layout == "contiguous":
        q, k, v = (t.contiguous() for t in (q, k, v))
    torch.library.opcheck(OPERATOR, (q, k, v, _masks()[mask_kind], map_name, 0.3, "torch"))


def test_operator_output_layout_is_its_fake_layout():
    """The compiler plans memory from the fake output: the eager operator must return those strides, which for
    head-split queries interleave heads as the fused kernel does (merging heads is then a view)."""
    q, k, v = _head_split_qkv()
    out = OPERATOR(q, k, v, None, "pladis", 0.3, "torch")
    assert out.shape == (2, 3, 7, 8)
    assert out.stride() == torch.empty(2, 7, 3, 8).transpose(1, 2).stride()
    assert_close(out, attention(q, k, v, map="pladis", scale=0.3, backend="torch"))
    flat = OPERATOR(q.contiguous(), k, v, None, "pladis", 0.3, "torch")
    assert flat.is_contiguous()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("map_name", MAP_NAMES)
def test_compiled_attention_has_no_graph_break_and_gives_eager_outputs(map_name, mask_kind):
    q, k, v = _head_split_qkv()
    mask = _masks()[mask_kind]
    compiled = _compiled(functools.partial(attention, map=map_name, attn_mask=mask, backend="torch"))
    with torch.no_grad():
        assert_close(compiled(q, k, v), attention(q, k, v, map=map_name, attn_mask=mask, backend="torch"),
                     name=map_name)


@pytest.mark.parametrize("dynamic", [True, None], ids=["dynamic", "automatic"])
def test_compiled_attention_follows_changing_shapes(dynamic):
    """Symbolic shapes (``dynamic=True``, or the recompile after a shape changes): still one graph, eager outputs."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c, m: pladis_attention(a, b, c, attn_mask=m, backend="torch"),
                             fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for lq, lk in ((7, 5), (9, 6), (16, 11)):
        q, k, v = _head_split_qkv(lq=lq, lk=lk)
        mask = _masks(lk=lk)["additive"]
        with torch.no_grad():
            out = compiled(q, k, v, mask)
        assert out.stride() == torch.empty(2, lq, 3, 8).transpose(1, 2).stride()
        assert_close(out, pladis_attention(q, k, v, attn_mask=mask, backend="torch"), name=f"Lq={lq}, Lk={lk}")


@NEEDS_CXX
def test_inductor_merges_heads_of_the_operator_output_as_eager():
    """Inductor generates the head merge after the operator from its fake layout (heads interleaved)."""
    q, k, v = _head_split_qkv(seed=7)
    merge = lambda a, b, c: pladis_attention(a, b, c, backend="torch").transpose(1, 2).reshape(2, 7, 24) * 3.0  # noqa: E731,E501
    torch._dynamo.reset()
    with torch.no_grad():
        assert_close(torch.compile(merge, fullgraph=True)(q, k, v), merge(q, k, v))


def test_compiled_pladis_attention_is_the_operator():
    q, k, v = _head_split_qkv(seed=1)
    mask = _masks()["bool"]
    graph_ops = []

    def recording_backend(gm, example_inputs):
        graph_ops.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: pladis_attention(a, b, c, scale=3.0, alpha=1.25, attn_mask=mask,
                                                              score_scale=0.4, backend="torch"),
                             fullgraph=True, backend=recording_backend)
    with torch.no_grad():
        out = compiled(q, k, v)
    assert graph_ops == ["pladis_analysis.attention"], graph_ops                        # one node, nothing else
    assert_close(out, pladis_attention(q, k, v, scale=3.0, alpha=1.25, attn_mask=mask, score_scale=0.4,
                                       backend="torch"))


@pytest.mark.parametrize("mask_kind", ["none", "additive"])
@pytest.mark.parametrize("map_name", ["pladis", "entmax:3", "softmax"])
def test_compiled_calls_that_need_gradients_have_no_graph_break_and_eager_gradients(map_name, mask_kind):
    """Inputs that require grad take the traced torch path, whose map is an operator with a backward (the
    attention operator has none): one graph, eager's values and gradients."""
    q, k, v = _head_split_qkv(seed=2)
    mask = _masks()[mask_kind]
    grads = []
    for fn in (_compiled(functools.partial(attention, map=map_name, attn_mask=mask)),
               functools.partial(attention, map=map_name, attn_mask=mask, backend="torch")):
        inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        fn(*inputs).square().sum().backward()
        grads.append([t.grad for t in inputs])
    for got, want, name in zip(*grads, "qkv"):
        assert_close(got, want, name=f"grad {name}")


def test_compiled_pladis_attention_with_gradients_passes_gradcheck():
    q, k, v = (t.double().requires_grad_() for t in _head_split_qkv(seed=6, lq=3, lk=4, d=5))
    compiled = _compiled(lambda a, b, c: pladis_attention(a, b, c, scale=2.0, alpha=1.25))
    assert torch.autograd.gradcheck(compiled, (q, k, v))


def test_a_callable_map_is_traced_not_the_operator():
    q, k, v = _head_split_qkv(seed=3)
    entmax_13 = functools.partial(maps.entmax, alpha=1.3, dim=-1)
    torch._dynamo.reset()
    compiled = torch.compile(functools.partial(attention, map=entmax_13), backend="aot_eager")
    with torch.no_grad():
        assert_close(compiled(q, k, v), attention(q, k, v, map="entmax:1.3", backend="torch"))


def test_bad_scores_under_compile_are_the_eager_error():
    q, k, v = _head_split_qkv(seed=4)
    q = q.clone()
    q[0, 1, 2, 3] = float("nan")
    compiled = _compiled(functools.partial(attention, map="sparsemax"))
    with torch.no_grad(), pytest.raises(ValueError, match="scores .* contain nan"):
        compiled(q, k, v)
    with pytest.raises(ValueError, match="NaN scores"):                       # traced path: the map's check
        compiled(q.requires_grad_(), k, v)
    torch._dynamo.reset()
    bad_backend = torch.compile(functools.partial(attention, map="sparsemax", backend="cuda"), backend="aot_eager")
    with pytest.raises(ValueError, match="backend='cuda'"):
        bad_backend(q, k, v)


@pytest.mark.triton
@pytest.mark.skipif(not dispatch.interpreter_ready(),
                    reason="needs TRITON_INTERPRET=1 set before Triton was first imported (make test exports it)")
def test_compiled_attention_runs_the_kernel_inside_the_operator():
    """backend='triton' on CPU tensors (the interpreter): the operator's eager body launches the fused kernel."""
    q, k, v = _head_split_qkv(seed=5, lq=5, d=16)
    mask = _masks()["bool"]
    compiled = _compiled(lambda a, b, c: pladis_attention(a, b, c, attn_mask=mask, backend="triton"))
    with torch.no_grad():
        out = compiled(q, k, v)
    assert out.stride() == torch.empty(2, 5, 3, 16).transpose(1, 2).stride()   # the kernel's layout, no copy
    assert_close(out, pladis_attention(q, k, v, attn_mask=mask, backend="torch"))


@pytest.mark.parametrize("family", ["unet", "pixart", "sana"])
def test_compiled_model_with_pladis_has_no_graph_break(family):
    """A whole denoiser with PLADIS compiles into one graph (``fullgraph=True``) and gives the eager output."""
    pytest.importorskip("diffusers")
    from tiny_models import make_inputs, run_model, tiny_model

    from pladis_analysis.diffusion import apply_pladis

    model = tiny_model(family).eval()
    sample, timestep, text = make_inputs(family, batch=1)
    mask = torch.ones(text.shape[:2], dtype=torch.long)
    mask[0, -2:] = 0                                           # padding: the −10000 bias path
    with apply_pladis(model, scale=2.0, alpha=1.5, backend="torch"):
        eager = run_model(model, sample, timestep, text, encoder_attention_mask=mask)
        torch._dynamo.reset()
        model.compile(fullgraph=True, backend="aot_eager")
        out = run_model(model, sample, timestep, text, encoder_attention_mask=mask)
    assert_close(out, eager, name=family)


def test_compiled_model_with_pladis_trains_with_no_graph_break():
    """Outside no_grad q, k, v require grad (through the weights): the traced path, still one graph, and every
    parameter gets eager's gradient."""
    pytest.importorskip("diffusers")
    from tiny_models import make_inputs, tiny_model

    from pladis_analysis.diffusion import apply_pladis

    model = tiny_model("unet")
    sample, timestep, text = make_inputs("unet", batch=1)
    results = []
    with apply_pladis(model, backend="torch"):
        torch._dynamo.reset()
        for forward in (model, torch.compile(model, fullgraph=True, backend="aot_eager")):
            model.zero_grad()
            out = forward(sample, timestep, encoder_hidden_states=text).sample
            out.square().mean().backward()
            results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (compiled, compiled_grads) = results
    assert_close(compiled, eager)
    for got, want in zip(compiled_grads, eager_grads):
        assert_close(got, want, name="parameter gradient")


def test_branch_selective_pladis_compiles_with_a_break_at_the_model_input():
    """PLADIS on the conditional chunk only: the sampling-state hook reads the timestep (one graph break before
    the model's graph); the output is still eager's."""
    pytest.importorskip("diffusers")
    from tiny_models import make_inputs, run_model, tiny_model

    from pladis_analysis.diffusion import apply_pladis

    model = tiny_model("unet").eval()
    sample, timestep, text = make_inputs("unet", batch=1)
    with apply_pladis(model, branches="cond", backend="torch"):
        eager = run_model(model, sample, timestep, text)
        torch._dynamo.reset()
        model.compile(backend="aot_eager")
        out = run_model(model, sample, timestep, text)
    assert_close(out, eager)


def test_probes_inside_a_compiled_model_record_the_eager_rows():
    """A probe is Python run after each attention call: compiled, it breaks the graph there and still records
    exactly the eager statistics."""
    pytest.importorskip("diffusers")
    from tiny_models import make_inputs, run_model, tiny_model

    from pladis_analysis.probes import record_attention

    sample, timestep, text = make_inputs("unet", batch=1)
    tables = []
    for compile_it in (False, True):
        model = tiny_model("unet").eval()
        with record_attention(model, variants=("softmax", "pladis(2, 1.5)"), backend="torch") as recorder:
            if compile_it:
                torch._dynamo.reset()
                model.compile(backend="aot_eager")
            run_model(model, sample, timestep, text)
        tables.append(recorder.to_dataframe())
    eager, compiled = tables
    assert len(eager) > 0 and list(compiled.columns) == list(eager.columns)
    numbers = eager.select_dtypes("number").columns
    assert_close(torch.tensor(compiled[numbers].to_numpy()), torch.tensor(eager[numbers].to_numpy()))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and not dispatch.kernels_interpreted()),
                    reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphs_capture_the_fused_kernel():
    """mode='reduce-overhead' replays the operator (the fused kernel) from a CUDA graph: same output as eager."""
    q, k, v = (t.cuda() for t in _head_split_qkv(batch=2, heads=10, lq=256, lk=77, d=64, dtype=torch.bfloat16))
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: pladis_attention(a, b, c, backend="triton"),
                             mode="reduce-overhead", fullgraph=True)
    with torch.no_grad():
        want = pladis_attention(q, k, v, backend="triton")
        for _ in range(3):                                     # warm-up, capture, replay
            got = compiled(q, k, v)
    assert_close(got.float(), want.float(), rtol=0, atol=0, name="graph replay")
