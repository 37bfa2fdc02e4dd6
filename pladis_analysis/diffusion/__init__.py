"""The seam into Hugging Face diffusers: find attention layers, run PLADIS (or any map) in them, load pipelines.

    from pladis_analysis.diffusion import apply_pladis, load_pipeline

    pipe = load_pipeline("/models/sd15", dtype="float16", device="cuda")
    with apply_pladis(pipe, scale=2.0, alpha=1.5):
        image = pipe("a red circle left of a blue square").images[0]
"""

from .layers import AttentionLayer, attention_layers, default_spec, describe_layers, select_layers
from .patch import ProcessorSwap, apply_pladis, current_processors
from .pipelines import load_pipeline, sample
from .processor import AttentionCall, AttentionMap, PladisAttnProcessor
from .tracking import SamplingState, infer_layout, track_sampling

__all__ = [
    "apply_pladis", "load_pipeline", "sample", "AttentionMap", "PladisAttnProcessor", "AttentionCall",
    "ProcessorSwap", "AttentionLayer", "attention_layers", "select_layers", "default_spec", "describe_layers",
    "current_processors", "SamplingState", "track_sampling", "infer_layout",
]
