"""Find feature maps through the ``qra.featuremaps`` entry-point group.

qra's own maps are registered in its pyproject exactly as a plugin's would be, so there is one
path for everybody: a distribution declares

    [project.entry-points."qra.featuremaps"]
    my-map = "my_package.module:MyFeatureMap"

and ``qra.featuremaps.get("my-map", d_in=64, ...)`` builds it.  A plugin that fails to import is
reported by :func:`available` and never breaks the others.  A plugin that registers a name qra's own
maps use is reported as broken under ``"<name> (<distribution>)"``; qra's map keeps the name.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from .base import FeatureMap, accepts_any_parameter, parameter_names

ENTRY_POINT_GROUP = "qra.featuremaps"
#: the distribution whose registered names no plugin can take over
OWN_DISTRIBUTION = "qra"


class UnknownFeatureMapError(KeyError):
    """Raised for a name no installed distribution registers."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it.
        return str(self.args[0])


@dataclass(frozen=True)
class FeatureMapInfo:
    """What the registry knows about one entry point, whether or not it loads."""

    name: str
    distribution: str
    version: str
    target: str
    summary: str
    status: str  # "ok" or "error"
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _distribution(entry_point: metadata.EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist else "?"


def _all_entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """Entry points of the group by name; the same (name, target) seen twice on sys.path counts once."""
    by_name: dict[str, list[metadata.EntryPoint]] = {}
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        same = by_name.setdefault(entry_point.name, [])
        if all(existing.value != entry_point.value for existing in same):
            same.append(entry_point)
    return by_name


def _split_own(entry_points: list[metadata.EntryPoint]) -> tuple[list[metadata.EntryPoint], list]:
    """(the entry points that hold the name, plugins' entry points refused because qra's own map holds it)."""
    own = [ep for ep in entry_points if _distribution(ep) == OWN_DISTRIBUTION]
    if len(own) == 1 and len(entry_points) > 1:
        return own, [ep for ep in entry_points if ep is not own[0]]
    return entry_points, []


def _entry_points() -> dict[str, list[metadata.EntryPoint]]:
    """The entry points that hold each name (qra's own map wins its names over a plugin's)."""
    return {name: _split_own(entry_points)[0] for name, entry_points in _all_entry_points().items()}


def _load(entry_point: metadata.EntryPoint) -> type[FeatureMap]:
    target = entry_point.load()
    if not (isinstance(target, type) and issubclass(target, FeatureMap)):
        raise TypeError(f"{entry_point.value} is not a qra.featuremaps.FeatureMap subclass")
    return target


def _summary(map_class: type[FeatureMap]) -> str:
    doc = (map_class.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _describe(name: str, entry_point: metadata.EntryPoint) -> FeatureMapInfo:
    distribution = entry_point.dist.name if entry_point.dist else "?"
    version = entry_point.dist.version if entry_point.dist else "?"
    try:
        map_class = _load(entry_point)
    except (Exception, SystemExit) as error:  # a broken plugin is reported, never raised (even one calling exit())
        return FeatureMapInfo(
            name, distribution, version, entry_point.value, "", "error", f"{type(error).__name__}: {error}"
        )
    return FeatureMapInfo(name, distribution, version, entry_point.value, _summary(map_class), "ok")


def available() -> dict[str, FeatureMapInfo]:
    """Every registered feature map by name, with its distribution, version, summary and load status.

    A name registered by two different targets is reported with status ``error`` (and
    :func:`get` refuses it) rather than letting install order pick one silently.
    """
    listing: dict[str, FeatureMapInfo] = {}
    for name, registered in sorted(_all_entry_points().items()):
        entry_points, refused = _split_own(registered)
        for entry_point in refused:
            listing[f"{name} ({_distribution(entry_point)})"] = FeatureMapInfo(
                name, _distribution(entry_point), entry_point.dist.version if entry_point.dist else "?",
                entry_point.value, "", "error",
                f"the name {name!r} belongs to qra's own map ({entry_points[0].value}); the plugin's entry point "
                f"{entry_point.value} is ignored: register it under another name",
            )  # fmt: skip
        if len(entry_points) > 1:
            owners = ", ".join(f"{ep.value} ({ep.dist.name if ep.dist else '?'})" for ep in entry_points)
            first = _describe(name, entry_points[0])
            listing[name] = FeatureMapInfo(
                name,
                first.distribution,
                first.version,
                first.target,
                first.summary,
                "error",
                f"registered more than once: {owners}",
            )
        else:
            listing[name] = _describe(name, entry_points[0])
    return listing


def feature_map_class(name: str) -> type[FeatureMap]:
    """The class registered under ``name``; a clear error for unknown, duplicate or broken entries."""
    entry_points = _entry_points()
    if name not in entry_points:
        registered = sorted(entry_points)
        close = difflib.get_close_matches(name, registered, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownFeatureMapError(
            f"unknown feature map {name!r}.{hint} Registered feature maps: {', '.join(registered) or '(none)'}. "
            f"Plugins register under the entry-point group {ENTRY_POINT_GROUP!r}."
        )
    if len(entry_points[name]) > 1:
        raise RuntimeError(f"feature map {name!r}: {available()[name].error}")
    try:
        return _load(entry_points[name][0])
    except (Exception, SystemExit) as error:
        raise RuntimeError(
            f"feature map {name!r} is registered by {entry_points[name][0].value} but failed to load: "
            f"{type(error).__name__}: {error}"
        ) from error


def name_of(map_class: type[FeatureMap]) -> str | None:
    """The registered name of a map class, or None when it is not registered (or ambiguous)."""
    for name, entry_points in _entry_points().items():
        if len(entry_points) == 1 and entry_points[0].value == f"{map_class.__module__}:{map_class.__qualname__}":
            return name
    return None


def reference(map_class: type[FeatureMap]) -> str:
    """How to find ``map_class`` again: its registered name, else its ``module:Class`` import path."""
    return name_of(map_class) or f"{map_class.__module__}:{map_class.__qualname__}"


def get(name: str, d_in: int, **params: Any) -> FeatureMap:
    """Build the feature map registered as ``name`` for inputs of size ``d_in``.

    ``name`` may also be an import path ``"package.module:ClassName"`` for a map that is not
    registered (useful in notebooks).  Unknown parameters raise an error naming the accepted ones.
    """
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        map_class = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(map_class, type) and issubclass(map_class, FeatureMap)):
            raise TypeError(f"{name} is not a qra.featuremaps.FeatureMap subclass")
    else:
        map_class = feature_map_class(name)
    accepted = parameter_names(map_class)
    unknown = sorted(set(params) - set(accepted))
    if unknown and not accepts_any_parameter(map_class):
        raise TypeError(
            f"feature map {name!r} got unknown parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return map_class(d_in, **params)
