"""Names and layer choices that the report's tables and plots share.

A row of ``summary.json`` is one configuration; :func:`label` names it and :func:`report_layers`
picks the layers whose per-layer measurements the tables and figures show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..featuremaps.base import parameter_defaults
from ..featuremaps.registry import feature_map_class
from .config import BASELINE

#: how many of the last layers a report of baseline runs alone shows
LAST_LAYERS_SHOWN = 2


def report_layers(rows: Sequence[dict[str, Any]]) -> list[int]:
    """The layers the runs patched (all configurations together), or the encoder's last two for baselines only."""
    patched = sorted({layer for row in rows if row.get("layers") for layer in row["layers"]})
    if patched:
        return patched
    depth = max((len(row.get("attention_entropy_normalized_mean") or []) for row in rows), default=0)
    return list(range(max(0, depth - LAST_LAYERS_SHOWN), depth))


def _non_default(featuremap: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that differ from the map's defaults (all of them if the map is not installed)."""
    try:
        map_class = feature_map_class(featuremap)
    except Exception:  # a report must not need the plugin that made the runs
        return params
    defaults, current = parameter_defaults(map_class), map_class.upgrade_params(params)
    return {key: value for key, value in params.items() if key not in defaults or defaults[key] != current[key]}


def label(row: dict[str, Any]) -> str:
    """A short name: ``baseline`` or ``rff(m=64) softmax L4,5`` (non-default parameters; a subset if not all data)."""
    budget = row.get("budget", {})
    subset = (
        f" [{budget.get('max_train_samples') or 'all'} train / {budget.get('max_eval_samples') or 'all'} test]"
        if budget.get("max_train_samples") or budget.get("max_eval_samples") else ""
    )  # fmt: skip
    if row["featuremap"] == BASELINE:
        return "baseline" + subset
    params = ",".join(f"{k}={v}" for k, v in sorted(_non_default(row["featuremap"], row["params"]).items()))
    layers = ",".join(map(str, row["layers"]))
    return f"{row['featuremap']}{f'({params})' if params else ''} {row['mode']} L{layers}{subset}"
