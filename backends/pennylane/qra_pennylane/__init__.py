"""qra feature maps built from PennyLane circuits: ``pennylane-zz``, ``pennylane-iqp``, ``pennylane-angle``."""

from .maps import PennyLaneAngle, PennyLaneCircuitMap, PennyLaneIQP, PennyLaneZZ

__all__ = ["PennyLaneAngle", "PennyLaneCircuitMap", "PennyLaneIQP", "PennyLaneZZ"]
