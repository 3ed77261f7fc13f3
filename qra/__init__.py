"""qra: kernelized, quantum-ready attention for pretrained encoders.

The attention similarity q·k/√d becomes a kernel similarity built from a pluggable feature map φ
(Random Fourier Features, FAVOR+, quantum circuits from plugins) in chosen layers of a
DistilBERT / BERT-family model.

This package is the library: ``qra.featuremaps`` (maps and their registry), ``qra.attention``
(the attention modes), ``qra.patching`` (putting them into a model) and ``qra.kernels`` (fused GPU
kernels).  The IMDb experiment application is built on it in ``qra.experiment``; the ``qra``
command (``qra.cli``) is a thin layer over both.  ARCHITECTURE.md has the picture.

>>> import qra
>>> fm = qra.featuremaps.get("rff", d_in=64, m=128, sigma=1.0)   # doctest: +SKIP
>>> qra.patch(model, fm, layers=(4, 5), mode="softmax")           # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from . import featuremaps
from .attention import KernelAttention, kernel_attention
from .featuremaps import FeatureMap
from .patching import is_patched, load_patched, patch, unpatch

try:
    __version__ = version("qra")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "FeatureMap",
    "KernelAttention",
    "__version__",
    "featuremaps",
    "is_patched",
    "kernel_attention",
    "load_patched",
    "patch",
    "unpatch",
]
