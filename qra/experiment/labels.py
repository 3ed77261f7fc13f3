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
    subset += protocol_suffix(budget)
    if row["featuremap"] == BASELINE:
        return "baseline" + subset
    params = ",".join(f"{k}={v}" for k, v in sorted(_non_default(row["featuremap"], row["params"]).items()))
    layers = ",".join(map(str, row["layers"]))
    return f"{row['featuremap']}{f'({params})' if params else ''} {row['mode']} L{layers}{subset}"


def protocol_suffix(budget: dict[str, Any]) -> str:
    """What a run's protocol settings (those a budget records only when not at their defaults) add to its label:
    e.g. `` eager, N=512``; nothing for runs without them."""
    parts = []
    if budget.get("attn_implementation"):
        parts.append(str(budget["attn_implementation"]))
    if budget.get("freeze"):
        parts.append("frozen " + freeze_text(budget["freeze"]))
    if budget.get("distill_steps"):
        parts.append(f"distilled {budget['distill_steps']}")
    if budget.get("calibrate_angle_scale"):
        parts.append(f"scale {budget['calibrate_angle_scale']}")
    if budget.get("calibrate_temperature"):
        parts.append(f"β {budget['calibrate_temperature']}")
    if not any(key in budget for key in PROTOCOL_DEFAULTS):
        return ""
    parts.append(f"N={budget.get('max_length')}")
    return f" [{', '.join(parts)}]"


def freeze_text(parts: list) -> str:
    """``["embeddings", 0, 1, 2, 3]`` -> ``emb+L0-3``."""
    names = ["emb" for part in parts if part == "embeddings"]
    layers = sorted(part for part in parts if not isinstance(part, str))
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    names += [f"L{low}" if low == high else f"L{low}-{high}" for low, high in runs]
    return "+".join(names)


#: settings that define the protocol's runs: a report records them (in a row's budget) only when not at these
PROTOCOL_DEFAULTS: dict[str, Any] = {"freeze": [], "warmup_ratio": 0.0, "attn_implementation": "sdpa",
                                     "data_order": "trainer", "distill_steps": 0, "calibrate_angle_scale": "off",
                                     "calibrate_temperature": "off"}
