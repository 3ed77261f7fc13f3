"""Put kernel attention into chosen layers of a Hugging Face encoder, and take it out again.

How it works under transformers 5: every DistilBERT/BERT attention module asks
``ALL_ATTENTION_FUNCTIONS`` for the function named by ``config._attn_implementation``.  We register
one function, ``qra_<base>`` (``<base>`` = the implementation the model had, e.g. ``sdpa``), that
runs kernel attention for modules carrying a :class:`~qra.attention.KernelAttention` and hands
every other module to the stock ``<base>`` function — with the very mask ``<base>`` would have
built, because ``qra_<base>`` is also registered in the mask interface with ``<base>``'s mask
function.  Without that second registration transformers gives unknown implementations
``attention_mask=None`` and padding would be silently ignored.  Unpatched layers therefore run
exactly the code they ran before, bit for bit.

A patched model saves with ``save_pretrained``: its config gains a ``qra`` entry (feature map,
its parameters, layers, mode, attention options) and its weights hold each layer's feature-map
buffers.  :func:`load_patched` rebuilds it.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention import KernelAttention, Mode, check_mode
from .featuremaps import FeatureMap
from .featuremaps import registry as featuremap_registry
from .featuremaps.base import parameter_names

#: model_type -> class name of its self-attention module (all follow the AttentionInterface protocol).
SUPPORTED_ATTENTION_CLASSES: dict[str, str] = {
    "distilbert": "DistilBertSelfAttention",
    "bert": "BertSelfAttention",
}
#: The base attention implementations qra can wrap (their masks are boolean or additive float).
WRAPPABLE_IMPLEMENTATIONS = ("sdpa", "eager")
KERNEL_ATTENTION_ATTRIBUTE = "qra_attention"
#: set on the attention modules of a patched model's unpatched layers: they run the stock function on purpose
STOCK_ATTENTION_ATTRIBUTE = "qra_stock_attention"
#: set on a patched attention module once a mask it was given passed the key-padding check on the host
MASK_CHECKED_ATTRIBUTE = "_qra_key_padding_checked"
#: the layers patched when none are named: the last two of a 6-layer DistilBERT/MiniLM (the seed's L4, L5)
DEFAULT_LAYERS: tuple[int, ...] = (4, 5)
CONFIG_KEY = "qra"
#: a map parameter that qra fills with the model's number of attention heads when the map declares it
PER_HEAD_PARAMETER = "heads"
IMPLEMENTATION_PREFIX = "qra_"


def stock_attention_function(base: str, module: nn.Module) -> Callable:
    """The function ``base`` would have run for ``module`` (eager lives in the model's own file)."""
    if base == "eager":
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


KEY_PADDING_ONLY = "qra kernel attention supports key-padding masks only (bidirectional encoders)"


def _key_padding_mask(attention_mask: torch.Tensor | None, module: nn.Module) -> torch.Tensor | None:
    """Turn the 4-D mask transformers built (bool: True = attend, or additive float) into [B, Nk].

    Kernel attention (in linear mode especially) needs a key-padding mask: every row the same.  A module's first
    mask is checked on the host, with a clear error; later ones on the device (``torch._assert_async``), because
    reading the answer back would make the host wait for the GPU in every patched layer of every step (a patched
    MiniLM step took 19.0 ms wall for 13.6 ms of GPU work, results/bench/train-step-profile-minilm-rff-h200.txt).
    The masks of one model all come from the same mask function, so the first one says what the rest are.
    """
    if attention_mask is None:
        return None
    attend = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
    if attend.dim() != 4:
        raise ValueError(f"qra expects a 4-D attention mask, got shape {tuple(attention_mask.shape)}")
    keep = attend[:, 0, 0, :] if attend.shape[2] > 0 else attend.new_ones(attend.shape[0], attend.shape[3])
    rows_agree = (attend == keep[:, None, None, :]).all()
    if attend.device.type == "cuda" and getattr(module, MASK_CHECKED_ATTRIBUTE, False):
        torch._assert_async(rows_agree, KEY_PADDING_ONLY)
    elif not rows_agree:
        raise ValueError(KEY_PADDING_ONLY)
    else:
        setattr(module, MASK_CHECKED_ATTRIBUTE, True)
    return keep


def _make_attention_function(base: str) -> Callable:
    def qra_attention_forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        kernel = getattr(module, KERNEL_ATTENTION_ATTRIBUTE, None)
        if kernel is None:
            if not getattr(module, STOCK_ATTENTION_ATTRIBUTE, False):
                raise RuntimeError(_missing_kernel_message(module, base))
            return stock_attention_function(base, module)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        out, weights = kernel(
            query,
            key,
            value,
            key_padding_mask=_key_padding_mask(attention_mask, module),
            dropout_p=dropout,
            return_weights=bool(kwargs.get("output_attentions", False)),
        )
        return out.transpose(1, 2).contiguous(), weights

    qra_attention_forward.__name__ = f"qra_{base}_attention_forward"
    return qra_attention_forward


def _missing_kernel_message(module: nn.Module, base: str) -> str:
    """Why a module reached ``qra_<base>`` without kernel attention: a patched save loaded without qra, or a
    model that was never patched; both would silently run stock attention."""
    settings = getattr(getattr(module, "config", None), CONFIG_KEY, None)
    if settings:
        return (
            f"this model was saved after qra.patch ({settings.get('featuremap')} kernel attention in layers "
            f"{settings.get('layers')}) but loaded without its kernel attention, so it would run stock attention; "
            "load it with qra.load_patched(path), or re-apply qra.patch"
        )
    return (
        f"attn_implementation={IMPLEMENTATION_PREFIX + base!r} runs qra kernel attention, but this model was not "
        f"patched: call qra.patch(model, ...) first, or load it with attn_implementation={base!r}"
    )


def register_attention(name: str, function: Callable, mask_of: str) -> str:
    """Register ``function`` as attention implementation ``name`` (once), with ``mask_of``'s mask function.

    Both registrations are needed: transformers hands unknown implementations no mask at all.
    """
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_of])
    return name


def register_implementation(base: str) -> str:
    """Register ``qra_<base>``: kernel attention for patched modules, ``base`` for the rest."""
    return register_attention(IMPLEMENTATION_PREFIX + base, _make_attention_function(base), base)


for _base in WRAPPABLE_IMPLEMENTATIONS:  # so that a saved patched model names a known implementation
    register_implementation(_base)


def attention_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The self-attention module of every layer, in layer order; errors for unsupported models."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_ATTENTION_CLASSES:
        raise ValueError(
            f"qra cannot patch model_type {model_type!r} ({type(model).__name__}); supported: "
            f"{', '.join(sorted(SUPPORTED_ATTENTION_CLASSES))}"
        )
    if getattr(model.config, "is_decoder", False) or getattr(model.config, "add_cross_attention", False):
        raise ValueError("qra patches bidirectional encoders only; this config is a decoder / has cross-attention")
    class_name = SUPPORTED_ATTENTION_CLASSES[model_type]
    return [module for module in model.modules() if type(module).__name__ == class_name]


def _head_layout(model: PreTrainedModel) -> tuple[int, int]:
    config = model.config
    heads = config.num_attention_heads
    return heads, config.hidden_size // heads


def _validate_layers(layers: Iterable[int], count: int) -> list[int]:
    chosen = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < count:
            raise ValueError(f"layer {layer!r} is out of range: the model has {count} layers (0..{count - 1})")
        if layer not in chosen:
            chosen.append(layer)
    if not chosen:
        raise ValueError("no layers to patch: pass at least one layer index")
    return sorted(chosen)


def _base_implementation(model: PreTrainedModel) -> str:
    current = model.config._attn_implementation
    if current.startswith(IMPLEMENTATION_PREFIX):
        return current[len(IMPLEMENTATION_PREFIX) :]
    if current not in WRAPPABLE_IMPLEMENTATIONS:
        raise ValueError(
            f"qra wraps attn_implementation {' or '.join(WRAPPABLE_IMPLEMENTATIONS)}; this model uses {current!r}. "
            "Load it with attn_implementation='sdpa'."
        )
    return current


def is_patched(model: PreTrainedModel) -> bool:
    """True when ``model`` runs kernel attention in at least one layer (the modules are checked, not the config:
    a patched save loaded with plain ``from_pretrained`` has the config entry but no kernel attention)."""
    return any(isinstance(getattr(module, KERNEL_ATTENTION_ATTRIBUTE, None), KernelAttention)
               for module in model.modules())  # fmt: skip


def patch(
    model: PreTrainedModel,
    featuremap: FeatureMap | str,
    layers: Sequence[int] = DEFAULT_LAYERS,
    mode: Mode = "softmax",
    *,
    featuremap_params: dict[str, Any] | None = None,
    beta: float = 1.0,
    learn_beta: bool = False,
    eps: float = 1e-6,
    implementation: str = "auto",
) -> PreTrainedModel:
    """Replace q·k/√d by kernel attention in ``layers`` of a DistilBERT or BERT-family model.

    Args:
        model: a transformers 5 DistilBERT/BERT model (any head) using ``sdpa`` or ``eager`` attention.
        featuremap: a :class:`FeatureMap` whose ``d_in`` is the head dimension, or a registered
            name (then built with ``featuremap_params`` and ``d_in`` = head dimension).
        layers: 0-based layer indices; every other layer stays bit-for-bit unchanged.
        mode: ``softmax`` (default), ``normalized`` or ``linear`` (see :mod:`qra.attention`).
        beta, learn_beta: per-head softmax temperature and whether it trains.
        eps: denominator guard of the normalized and linear modes.
        implementation: ``auto`` (fused GPU kernels where they apply), ``pytorch`` or ``fused``
            (see :func:`qra.attention.run_mode`); how attention is computed, not what, so it is
            not saved with the model.

    Each patched layer gets its own copy of the map (same draws), so per-layer learnable knobs
    train independently.  Patching a patched model replaces its previous patch.  Returns ``model``.
    """
    modules = attention_modules(model)
    chosen = _validate_layers(layers, len(modules))
    heads, head_dim = _head_layout(model)
    if isinstance(featuremap, str):
        params = dict(featuremap_params or {})
        if ":" not in featuremap and PER_HEAD_PARAMETER in parameter_names(
            featuremap_registry.feature_map_class(featuremap)
        ):
            params.setdefault(PER_HEAD_PARAMETER, heads)  # a per-head map (hedgehog) learns one set per head
        featuremap = featuremap_registry.get(featuremap, d_in=head_dim, **params)
    elif featuremap_params:
        raise ValueError("featuremap_params is only for a feature map given by name")
    if not isinstance(featuremap, FeatureMap):
        raise TypeError(f"featuremap must be a qra FeatureMap or a registered name, got {type(featuremap).__name__}")
    if featuremap.d_in != head_dim:
        raise ValueError(
            f"the feature map's d_in={featuremap.d_in} does not match the model's head dimension {head_dim} "
            f"(hidden size {model.config.hidden_size} / {heads} heads)"
        )
    map_heads = featuremap.featuremap_params.get(PER_HEAD_PARAMETER)
    if map_heads not in (None, heads) and PER_HEAD_PARAMETER in parameter_names(type(featuremap)):
        raise ValueError(
            f"the feature map was built for {PER_HEAD_PARAMETER}={map_heads}, but the model has {heads} attention "
            f"heads: build it with {PER_HEAD_PARAMETER}={heads} (or give it by name: qra fills it in)"
        )
    check_mode(mode, featuremap)
    base = _base_implementation(model)
    unpatch(model)

    device = next(model.parameters()).device
    for index, module in enumerate(modules):
        if index in chosen:
            kernel = KernelAttention(copy.deepcopy(featuremap), heads, mode, beta, learn_beta, eps, implementation)
            setattr(module, KERNEL_ATTENTION_ATTRIBUTE, kernel.to(device))
        else:
            setattr(module, STOCK_ATTENTION_ATTRIBUTE, True)
    implementation = register_implementation(base)
    model.set_attn_implementation(implementation)
    # saved into config.json: a plain from_pretrained then selects qra_<base>, which refuses to run stock attention
    # in the layers that should have kernel attention (see _missing_kernel_message) instead of running it silently
    model.config.attn_implementation = implementation
    setattr(
        model.config,
        CONFIG_KEY,
        {
            "featuremap": featuremap_registry.reference(type(featuremap)),
            "featuremap_params": featuremap.featuremap_params,
            "layers": chosen,
            "mode": mode,
            "beta": beta,
            "learn_beta": learn_beta,
            "eps": eps,
        },
    )
    return model


def unpatch(model: PreTrainedModel) -> PreTrainedModel:
    """Remove every kernel attention and restore the model's original attention implementation."""
    for module in attention_modules(model):
        for attribute in (KERNEL_ATTENTION_ATTRIBUTE, STOCK_ATTENTION_ATTRIBUTE):
            if hasattr(module, attribute):
                delattr(module, attribute)
    current = model.config._attn_implementation
    if current.startswith(IMPLEMENTATION_PREFIX):
        model.set_attn_implementation(current[len(IMPLEMENTATION_PREFIX) :])
    for attribute in (CONFIG_KEY, "attn_implementation"):
        if attribute in vars(model.config):
            delattr(model.config, attribute)
    return model


def _saved_kernel_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The kernel-attention tensors of a saved model (sharded or not), by state-dict key."""
    from safetensors import safe_open

    tensors = {}
    marker = f".{KERNEL_ATTENTION_ATTRIBUTE}."
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                if marker in key:
                    tensors[key] = handle.get_tensor(key)
    return tensors


def _saved_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` directory; a clear error where there is none."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} not found: expected a save_pretrained directory")
    return json.loads(config_file.read_text())


def saved_patch_settings(path: str | Path) -> dict[str, Any] | None:
    """The qra settings a ``save_pretrained`` directory records, or None for a model saved unpatched."""
    return _saved_config(Path(path)).get(CONFIG_KEY)


def _base_implementation_of_saved(config: dict[str, Any]) -> str:
    """The stock implementation a saved patched model wraps (``sdpa`` when its config does not say)."""
    saved = config.get("attn_implementation") or ""
    base = saved[len(IMPLEMENTATION_PREFIX) :] if saved.startswith(IMPLEMENTATION_PREFIX) else "sdpa"
    return base if base in WRAPPABLE_IMPLEMENTATIONS else "sdpa"


def load_patched(
    path: str | Path,
    model_class: type[PreTrainedModel] | None = None,
    *,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model saved with ``save_pretrained`` after :func:`patch`, patched as it was saved.

    ``model_class`` defaults to the class recorded in the config's ``architectures``; ``kwargs``
    go to ``from_pretrained`` (e.g. ``torch_dtype``).  The feature maps' buffers and learned knobs
    are restored from the checkpoint, so the logits equal those of the saved model.

    The feature map is built by its registered name (an installed ``qra.featuremaps`` entry point).
    A config that names it by import path (``module:Class``, a map that was not registered) would
    import and run that module: as with Hugging Face's remote code, that needs ``trust_remote_code=True``.
    """
    import transformers

    path = Path(path)
    config_file = path / "config.json"
    config = _saved_config(path)
    settings = config.get(CONFIG_KEY)
    if settings is None:
        raise ValueError(f"{path} holds no qra settings (config.json has no {CONFIG_KEY!r} entry); use from_pretrained")
    featuremap_name = settings.get("featuremap")
    if not isinstance(featuremap_name, str):
        raise ValueError(f"{config_file}: qra.featuremap must be a feature-map name, got {featuremap_name!r}")
    if ":" in featuremap_name and not trust_remote_code:
        raise ValueError(
            f"{config_file} names its feature map by import path {featuremap_name!r}: loading it would import and run "
            "that module. Only registered feature maps (`qra featuremaps`) load by default; if you trust the code of "
            "this model folder, pass trust_remote_code=True"
        )
    if model_class is None:
        architecture = (config.get("architectures") or [None])[0]
        model_class = getattr(transformers, architecture or "", None)
        if model_class is None:
            raise ValueError(f"cannot tell the model class from architectures={config.get('architectures')}")

    register_implementation(_base_implementation_of_saved(config))
    previous_level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the kernel tensors are "unexpected" until we patch
    try:
        model = model_class.from_pretrained(path, **kwargs)
    finally:
        transformers.logging.set_verbosity(previous_level)
    _, head_dim = _head_layout(model)
    featuremap = featuremap_registry.get(featuremap_name, d_in=head_dim, **settings["featuremap_params"])
    patch(
        model,
        featuremap,
        layers=settings["layers"],
        mode=settings["mode"],
        beta=settings["beta"],
        learn_beta=settings["learn_beta"],
        eps=settings["eps"],
    )
    saved = _saved_kernel_tensors(path)
    expected = {key for key in model.state_dict() if f".{KERNEL_ATTENTION_ATTRIBUTE}." in key}
    if missing := sorted(expected - saved.keys()):
        raise ValueError(f"{path} lacks kernel-attention tensors {missing[:3]}... (saved by a different qra setup?)")
    model.load_state_dict(saved, strict=False)
    return model
