"""record_attention's fused path: the kernel's per-row statistics against the torch path's, on a real UNet.

On CPU the kernel runs under the Triton interpreter (``make test`` exports ``TRITON_INTERPRET=1``); on CUDA the
same tests run compiled.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton decides interpreter vs compiler when a kernel is decorated: set this before the kernels import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pladis_analysis.diffusion.processor import AttentionMap  # noqa: E402
from pladis_analysis.maps.kernels import dispatch  # noqa: E402
from pladis_analysis.probes import record_attention  # noqa: E402
from pladis_analysis.probes.recorder import _fused_launches, _fused_source  # noqa: E402
from pladis_analysis.testing import assert_close  # noqa: E402
from tiny_models import one_torch_thread  # noqa: E402,F401  (autouse)
from tiny_models import make_inputs, run_model, tiny_model, tiny_unet  # noqa: E402

pytestmark = pytest.mark.triton

LAYERS = ["down_blocks.1.attentions.0.transformer_blocks.0.attn2", "mid_block.attentions.0.transformer_blocks.0.attn2"]
VARIANTS = ("softmax", "entmax(1.5)", "sparsemax", "pladis(2, 1.5)", "pladis(3, 1.5)", "pladis(2, 1.25)")


def _kernel_device() -> str | None:
    if dispatch.triton_import_error() is not None:
        return None
    if torch.cuda.is_available() and not dispatch.kernels_interpreted():
        return "cuda"
    return "cpu" if dispatch.interpreter_ready() else None


DEVICE = _kernel_device()
needs_kernel = pytest.mark.skipif(
    DEVICE is None, reason="no CUDA device, and on CPU the kernels need Triton with TRITON_INTERPRET=1 set before "
                           "Triton was first imported (make test exports it)")


def test_launches_cover_every_variant():
    """One launch per PLADIS (α, λ), one per other α (λ = 1); softmax reads any launch."""
    variants = [AttentionMap.parse(v) for v in VARIANTS + ("entmax(1.25)",)]
    launches = _fused_launches(variants)
    assert launches == [(1.5, 2.0), (1.5, 3.0), (1.25, 2.0), (2.0, 1.0)]
    sources = {v.label: _fused_source(v, launches) for v in variants}
    assert sources["softmax"] == ((1.5, 2.0), "softmax")
    assert sources["entmax(1.5)"] == ((1.5, 2.0), "entmax") and sources["entmax(1.25)"] == ((1.25, 2.0), "entmax")
    assert sources["sparsemax"] == ((2.0, 1.0), "entmax")
    assert sources["pladis(3, 1.5)"] == ((1.5, 3.0), "pladis")
    assert _fused_launches([AttentionMap.softmax()]) == [(2.0, 0.0)]


def _record(model, backend, mask, family="unet", **options):
    sample, timestep, text = make_inputs(family, batch=2, text_len=7)                  # [u1, u2, c1, c2]
    layers = LAYERS if family == "unet" else "cross"
    device = next(model.parameters()).device
    with record_attention(model, layers=layers, variants=VARIANTS, backend=backend, **options) as rec:
        run_model(model, sample.to(device), timestep.to(device), text.to(device), encoder_attention_mask=mask)
    return rec


@needs_kernel
@pytest.mark.parametrize("family,masked", [("unet", False), ("unet", True), ("sana", True), ("pixart", True)])
def test_fused_statistics_equal_the_torch_path(family, masked):
    """Every basic statistic of every variant, per (layer, head, branch): kernel against torch, one run each.
    The mask pads the last keys of two prompts (diffusers turns it into a −10000 bias)."""
    model = tiny_model(family).to(DEVICE)
    mask = None
    if masked:
        mask = torch.ones(4, 7, dtype=torch.bool)
        mask[0, 4:] = False
        mask[3, 2:] = False
        mask = mask.to(DEVICE)
    tsallis_alpha = 2.0 if masked else 1.5
    torch_rec = _record(model, "torch", mask, family, tsallis_alpha=tsallis_alpha)
    fused_rec = _record(model, "triton", mask, family, tsallis_alpha=tsallis_alpha)
    n_calls = torch_rec.calls_by_path["torch"]
    assert n_calls >= 2 and torch_rec.calls_by_path["triton"] == 0
    assert fused_rec.calls_by_path == {"triton": n_calls, "torch": 0}
    ours, expected = fused_rec.to_dataframe(), torch_rec.to_dataframe()
    assert len(ours) == len(expected) and set(ours.variant) == set(VARIANTS) and set(ours.branch) == {"uncond", "cond"}
    key = ["step", "layer", "head", "branch", "variant"]
    assert ours[key].equals(expected[key])
    for name in fused_rec.stats:
        # Means over queries of float32 statistics; the kernel's scores differ from the torch path's by rounding.
        assert_close(ours[name].to_numpy(), expected[name].to_numpy(), atol=2e-5, rtol=2e-5, name=name)
    sparse = ours[ours.variant == "sparsemax"]
    assert (sparse.support_fraction < 1).any()   # the comparison covers sparse supports, not only full rows


def test_torch_statistics_on_cpu_under_auto():
    """``auto`` measures on CPU tensors with torch, whatever Triton can do."""
    rec = _record(tiny_unet(), "auto", None)
    assert rec.calls_by_path == {"triton": 0, "torch": 2}
    assert rec.config()["calls_by_path"] == {"triton": 0, "torch": 2}


def test_bad_fused_recorder_arguments():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="backend='cuda'"):
        record_attention(unet, backend="cuda")
    with pytest.raises(ValueError, match=r"backend='triton'.*out_delta"):
        record_attention(unet, stats="all", backend="triton")
    with pytest.raises(ValueError, match=r"backend='triton'.*sensitivity"):
        record_attention(unet, sensitivity=True, backend="triton")
    with pytest.raises(ValueError, match=r"backend='triton'.*heatmap_steps"):
        record_attention(unet, heatmap_steps=(0,), backend="triton")
    assert all(type(p).__name__ == "AttnProcessor2_0" for p in unet.attn_processors.values())
