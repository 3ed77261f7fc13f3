"""qra feature maps built from Qiskit circuits: ``qiskit-zz``, ``qiskit-pauli`` and any parameterised circuit."""

from .maps import QiskitCircuitMap, QiskitPauli, QiskitZZ

__all__ = ["QiskitCircuitMap", "QiskitPauli", "QiskitZZ"]
