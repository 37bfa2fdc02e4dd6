"""Measurement during sampling: per-layer, per-head, per-branch attention statistics of several maps side by side.

    from pladis_analysis.probes import record_attention

    with record_attention(pipe, variants=("softmax", "entmax(1.5)", "pladis(2, 1.5)")) as rec:
        pipe(prompt)
    df = rec.to_dataframe()

``capture_attention`` keeps the queries and keys of chosen calls instead, for studies of the score rows themselves.
"""

from .capture import CapturedCall, capture_attention
from .recorder import DEFAULT_VARIANTS, AttentionRecorder, parse_stats, record_attention
from .sensitivity import SensitivityConfig, lipschitz_power_iteration, map_jvp
from .stats import BASIC_STATS, OUTPUT_STATS, row_stats, row_stats_reference

__all__ = ["record_attention", "capture_attention", "CapturedCall", "AttentionRecorder", "SensitivityConfig",
           "DEFAULT_VARIANTS", "parse_stats", "row_stats", "row_stats_reference", "map_jvp",
           "lipschitz_power_iteration", "BASIC_STATS", "OUTPUT_STATS"]
