"""Every setting of a training run, in one place: :class:`TrainConfig`.

The ``qra train`` options are generated from this dataclass (names, types, defaults and help
come from the fields below), so a default or a help text is written exactly once.  Fields whose
command-line form differs from their stored form (``--layers 4,5`` for ``[4, 5]``, ``--fm m=64``
for ``{"m": 64}``) say so in their :class:`CommandLine` metadata: the option's type, flag and the
parser that turns the option's value into the field's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attention import IMPLEMENTATIONS, MODES
from ..patching import DEFAULT_LAYERS
from .models import DEFAULT_MODEL
from .robustness import parse_settings

BASELINE = "none"
FEATUREMAP_PARAMS_FLAG = "--fm"
#: the stock attention implementations a run may load its encoder with (qra wraps either)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
#: ``trainer``: the Trainer's own shuffling (global RNG: arms with the same seed may see different orders);
#: ``seed``: an order made from the seed and the epoch only, the same in every arm (paired comparisons)
DATA_ORDERS = ("trainer", "seed")
#: ``off``; ``fixed``: each patched circuit map's angle scale set from data, then frozen; ``learned``: set, then trained
ANGLE_SCALE_CALIBRATIONS = ("off", "fixed", "learned")
#: ``off``; ``fixed``: each patched layer's per-head softmax temperature β set from data (as sharp as the layer's
#: own softmax attention), then frozen; ``learned``: set, then trained (needs ``learn_beta``)
TEMPERATURE_CALIBRATIONS = ("off", "fixed", "learned")
#: the part of the encoder that ``--freeze`` names besides layer indices
FREEZABLE_PARTS = ("embeddings",)


def parse_featuremap_params(pairs: list[str]) -> dict[str, Any]:
    """``["m=64", "orthogonal=true", "paulis=Z,ZZ"]`` -> ``{"m": 64, "orthogonal": True, "paulis": "Z,ZZ"}``.

    Values are JSON where they parse as JSON (numbers, lists, objects), ``true``/``false``/``none``
    in any case, and strings otherwise.
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{FEATUREMAP_PARAMS_FLAG} takes KEY=VALUE, got {pair!r}")
        lowered = raw.strip().lower()
        if lowered in ("true", "false"):
            value: Any = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        params[key.strip()] = value
    return params


def parse_ints(text: str, option: str, minimum: int = 1) -> list[int]:
    """``"4,5"`` -> ``[4, 5]``; a clear error for anything else or values below ``minimum``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, e.g. 4,5; got {text!r}") from None
    if not values or min(values) < minimum:
        raise ValueError(f"{option} takes integers >= {minimum}; got {text!r}")
    return values


def parse_floats(text: str, option: str) -> list[float]:
    """``"0.1,0.2"`` -> ``[0.1, 0.2]`` (empty text: no values)."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, e.g. 0.01,0.05; got {text!r}") from None


def parse_freeze(spec: str | list | tuple | None) -> list[str | int]:
    """``"embeddings,0-3"`` (or ``["embeddings", "0-3"]``, ``[0, 1]``) -> ``["embeddings", 0, 1, 2, 3]``.

    Items are ``embeddings`` or encoder layer indices: single (``2``) or inclusive ranges (``0-3``).  The
    result is canonical (embeddings first, then sorted unique layers), so equal choices record equally.
    Whether the layers exist is checked against the model when it is built.
    """
    accepted = ("--freeze takes comma-separated items: 'embeddings', a layer index (e.g. 3) or an inclusive "
                "range of layers (e.g. 0-3); e.g. --freeze embeddings,0-3")  # fmt: skip
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    parts: set[str] = set()
    layers: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"{accepted}; got {item!r}")
        if isinstance(item, int):
            if item < 0:
                raise ValueError(f"{accepted}; got the negative layer {item}")
            layers.add(item)
            continue
        text = str(item).strip().lower()
        if not text:
            continue
        if text in FREEZABLE_PARTS:
            parts.add(text)
            continue
        first, dash, last = text.partition("-")
        try:
            low, high = (int(first), int(last)) if dash else (int(text), int(text))
        except ValueError:
            raise ValueError(f"{accepted}; got {item!r}") from None
        if low < 0 or high < low:
            raise ValueError(f"{accepted}; got {item!r} (a range runs from a layer >= 0 up to a layer >= its start)")
        layers.update(range(low, high + 1))
    return [part for part in FREEZABLE_PARTS if part in parts] + sorted(layers)


def _show_freeze(freeze: list[str | int]) -> str:
    return ",".join(map(str, freeze))


@dataclass(frozen=True)
class CommandLine:
    """How a field appears on the command line when that differs from the field itself.

    ``type`` is the option's Python type for the CLI library, ``parse`` turns the option's value
    into the field's, ``show`` turns the field's default into the option's default.
    """

    type: Any
    parse: Callable[[Any], Any]
    show: Callable[[Any], Any]
    flag: str | None = None


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            minimum: float | None = None, cli: CommandLine | None = None) -> Any:  # fmt: skip
    """A :class:`TrainConfig` field with what the command line needs to offer it."""
    metadata = {"help": help, "minimum": minimum, "cli": cli}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_LAYERS = CommandLine(
    str, lambda text: parse_ints(text, "--layers", minimum=0), lambda layers: ",".join(map(str, layers))
)
_PARAMS = CommandLine(list[str], parse_featuremap_params, lambda params: [], flag=FEATUREMAP_PARAMS_FLAG)
_ROBUSTNESS = CommandLine(list[str], parse_settings, lambda settings: [])
_FREEZE = CommandLine(str, parse_freeze, _show_freeze)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in ``config.json`` and enough to repeat the run."""

    featuremap: str = setting("rff", "Registered feature map (see `qra featuremaps`), or 'none' for the baseline.")
    featuremap_params: dict[str, Any] = setting(
        factory=dict, help="Feature-map parameter KEY=VALUE (repeatable), e.g. --fm m=64.", cli=_PARAMS
    )
    layers: list[int] = setting(
        factory=lambda: list(DEFAULT_LAYERS), help="Comma-separated 0-based layers to patch.", cli=_LAYERS
    )
    mode: str = setting("softmax", f"Attention mode: {', '.join(MODES)}.")
    beta: float = setting(1.0, "Softmax temperature per head (softmax mode).")
    learn_beta: bool = setting(False, "Train the per-head temperature.")
    model: str = setting(DEFAULT_MODEL, "Hub id, local directory or bundled:all-MiniLM-L6-v2.")
    data_dir: str | None = setting(None, "Folder with train/test .jsonl(.gz)/.csv/.parquet; default: hub imdb.")
    max_length: int = setting(512, "Tokens per review (longer ones are truncated).", minimum=8)
    epochs: float = setting(2.0, "Training epochs (> 0; fractions allowed).", minimum=0.0)
    batch_size: int = setting(32, "Training batch per process.", minimum=1)
    eval_batch_size: int = setting(64, "Evaluation batch per process.", minimum=1)
    lr: float = setting(5e-5, "AdamW learning rate.", minimum=0.0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", minimum=0.0)
    warmup_ratio: float = setting(0.0, "Share of the training steps with a linear learning-rate warm-up, in [0, 1).",
                                  minimum=0.0)  # fmt: skip
    freeze: list[str | int] = setting(
        factory=list, cli=_FREEZE,
        help="Parts not trained: 'embeddings' and encoder layers by index or range, e.g. embeddings,0-3. The "
             "classifier and the kernel attention's parameters always train.",
    )  # fmt: skip
    attn_implementation: str = setting(
        "sdpa", f"Stock attention of the encoder: {', '.join(ATTN_IMPLEMENTATIONS)} (patched layers run qra's)."
    )
    kernel_implementation: str = setting(
        "auto", f"How kernel attention runs: {', '.join(IMPLEMENTATIONS)} (auto: the fused GPU kernels where they "
        "were measured faster; the path taken is recorded in metrics.json).",
    )
    data_order: str = setting(
        "trainer", "Training order: trainer (the Trainer's shuffle) or seed (from the seed and epoch only: the same "
        "order in every arm with that seed, for paired comparisons)."
    )
    distill_steps: int = setting(
        0, "Before fine-tuning, fit the feature maps' parameters for N steps so that each patched layer's attention "
        "matches its own softmax attention (Hedgehog's distillation; needs a map with trainable parameters).",
        minimum=0,
    )  # fmt: skip
    calibrate_angle_scale: str = setting(
        "off", "Circuit maps: set each patched layer's angle scale so that its median query-key fidelity is ~0.5 "
        "on training batches: off, fixed (then frozen) or learned (then trained).",
    )
    calibrate_temperature: str = setting(
        "off", "Softmax mode: set each patched head's temperature beta so that its attention is as sharp (same "
        "normalised entropy) as the layer's own softmax attention on training batches, after any angle-scale "
        "calibration: off, fixed (beta then frozen; without --learn-beta) or learned (with --learn-beta).",
    )
    seed: int = setting(0, "Seed of the data order, the classifier head and the feature-map draws.")
    max_train_samples: int | None = setting(None, "Train on a seeded subset of this many reviews.", minimum=1)
    max_eval_samples: int | None = setting(None, "Test on a seeded subset of this many reviews.", minimum=1)
    attention_samples: int = setting(512, "Test reviews for attention entropy/distance.", minimum=1)
    save_steps: int = setting(500, "Checkpoint every N steps (what --resume restarts from).", minimum=1)
    keep_checkpoints: bool = setting(
        False, "Keep the Trainer checkpoints (optimizer state included) once the run completes; default: delete them."
    )
    device: str = setting("auto", "auto, cpu or cuda.")
    profile_steps: int = setting(0, "Profile N training steps after 10 (profile.txt in the run).", minimum=0)
    robustness: dict[str, list[float]] = setting(
        factory=dict, help="After training: e.g. word-dropout=0.1,0.2 (repeatable).", cli=_ROBUSTNESS
    )
    output_dir: str | None = setting(
        None, "Run directory (config.json, metrics.json, model/, logs); default runs/<map>-<settings>-seed<N>."
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "lr", "weight_decay", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not self.epochs > 0:
            raise ValueError(f"--epochs must be > 0 (a run that trains no step would report an untrained model), "
                             f"got {self.epochs!r}")  # fmt: skip
        self.freeze = parse_freeze(self.freeze)  # a sweep config may write "embeddings,0-3" or [embeddings, 0-3]
        if isinstance(self.warmup_ratio, bool) or not isinstance(self.warmup_ratio, (int, float)) or not (
            0.0 <= self.warmup_ratio < 1.0
        ):
            raise ValueError(f"--warmup-ratio must be a number in [0, 1), got {self.warmup_ratio!r}")
        choices = {"attn_implementation": ATTN_IMPLEMENTATIONS, "kernel_implementation": IMPLEMENTATIONS,
                   "data_order": DATA_ORDERS,
                   "calibrate_angle_scale": ANGLE_SCALE_CALIBRATIONS,
                   "calibrate_temperature": TEMPERATURE_CALIBRATIONS}  # fmt: skip
        for name, accepted in choices.items():
            if getattr(self, name) not in accepted:
                raise ValueError(f"--{name.replace('_', '-')} takes {', '.join(accepted)}; got {getattr(self, name)!r}")
        warm_ups = self.distill_steps or self.calibrate_angle_scale != "off" or self.calibrate_temperature != "off"
        if self.is_baseline and warm_ups:
            raise ValueError("--distill-steps, --calibrate-angle-scale and --calibrate-temperature act on kernel "
                             "attention; the baseline (--featuremap none) has none")  # fmt: skip
        if self.calibrate_temperature != "off" and not self.is_baseline:
            if self.mode != "softmax":
                raise ValueError(f"--calibrate-temperature sets softmax mode's temperature; --mode {self.mode} has "
                                 "none (use --mode softmax)")  # fmt: skip
            if self.learn_beta != (self.calibrate_temperature == "learned"):
                raise ValueError("--calibrate-temperature learned trains beta and needs --learn-beta; fixed freezes "
                                 f"it and takes no --learn-beta (got {self.calibrate_temperature} with learn_beta="
                                 f"{self.learn_beta})")  # fmt: skip
        if self.output_dir is None:
            self.output_dir = str(default_run_dir(self))

    @property
    def is_baseline(self) -> bool:
        return self.featuremap == BASELINE

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainConfig:
        """A config from a saved record; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in names})


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/none-seed0`` or ``runs/rff-softmax-L4,5-<hash of params>-seed0``: stable, so reruns resume."""
    if config.is_baseline:
        return Path("runs") / f"none-seed{config.seed}"
    digest = hashlib.sha1(json.dumps(config.featuremap_params, sort_keys=True).encode()).hexdigest()[:8]
    layers = ",".join(map(str, config.layers))
    return Path("runs") / f"{config.featuremap}-{config.mode}-L{layers}-{digest}-seed{config.seed}"
