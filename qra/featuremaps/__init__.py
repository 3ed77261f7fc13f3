"""Feature maps φ for kernel attention, and the entry-point registry that finds them.

>>> from qra import featuremaps
>>> fm = featuremaps.get("rff", d_in=64, m=128, sigma=1.0)
>>> sorted(featuremaps.available())  # doctest: +SKIP
['performer', 'rff']
"""

from .base import ExponentialPrologue, FeatureMap, FourierPrologue
from .hedgehog import HedgehogFeatureMap
from .performer import PositiveRandomFeatures
from .registry import ENTRY_POINT_GROUP, FeatureMapInfo, UnknownFeatureMapError, available, get
from .rff import RandomFourierFeatures

__all__ = [
    "ENTRY_POINT_GROUP",
    "ExponentialPrologue",
    "FeatureMap",
    "FeatureMapInfo",
    "FourierPrologue",
    "HedgehogFeatureMap",
    "PositiveRandomFeatures",
    "RandomFourierFeatures",
    "UnknownFeatureMapError",
    "available",
    "get",
]
