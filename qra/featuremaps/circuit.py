"""The base of quantum-circuit feature maps: angles in, statevectors out, fidelity as the kernel.

A circuit map encodes a query/key vector x ∈ R^d_in into ``qubits`` rotation angles, prepares
|ψ(x)⟩ = U(angles)|0…0⟩ and scores pairs by the fidelity kernel |⟨ψ(x)|ψ(y)⟩|².  Subclasses (the
PennyLane and Qiskit backends, or yours) only say which circuit to run: :meth:`gates` for qra's
own batched engine, and optionally other engines by overriding :meth:`simulate`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import FeatureMap, compute_dtype
from .compiler import program_for, run_program
from .fused_program import fused_spec
from .statevector import Gate, check_memory, format_bytes, simulate

PROJECTIONS = ("identity", "random", "learned")
#: How a circuit map's states are computed: ``native`` = qra's batched, differentiable engine from
#: :meth:`CircuitFeatureMap.gates`; ``framework`` = the framework's own simulator (a PennyLane device,
#: Qiskit's ``Statevector`` or Aer), chosen by the backend's ``device`` parameter.
ENGINES = ("native", "framework")
#: engine names of earlier versions, as saved models may record them
LEGACY_ENGINES = {"pennylane": "framework", "statevector": "framework", "aer": "framework"}
NOISE_KINDS = ("depolarizing", "readout")
#: What a circuit map's features are: ``state`` = |ψ(x)⟩ (the fidelity kernel); ``projected`` = the 3n
#: single-qubit Pauli expectations ⟨X_k⟩, ⟨Y_k⟩, ⟨Z_k⟩ of |ψ(x)⟩ (projected quantum features)
FEATURES = ("state", "projected")
#: The kernel on projected features: ``linear`` = their dot product; ``trace`` = Σ_k Tr(ρ_k(x) ρ_k(y)), Huang et
#: al.'s linear projected kernel (a dot product too, never negative); ``gaussian`` = exp(−γ‖φ(x)−φ(y)‖²)
PROJECTED_KERNELS = ("linear", "trace", "gaussian")
#: The most qubits a map may have: one complex64 state of 2^30 amplitudes is already 8 GiB.
MAX_QUBITS = 30
#: Above this many qubits the real lift (4^q features per vector) is too large to be useful.
MAX_REAL_LIFT_QUBITS = 6


class CircuitFeatureMap(FeatureMap):
    """A feature map x ↦ |ψ(x)⟩ given by a parameterised circuit, with the fidelity kernel.

    Parameters
    ----------
    qubits:
        Number of qubits q; the state has 2^q amplitudes.  ``None`` means d_in (for ``identity``).
    projection:
        How x ∈ R^d_in becomes the circuit's angles z (one per qubit unless the circuit says
        otherwise with ``num_angles``): ``identity`` (z = x; needs d_in == angles), ``random`` (z = Wx
        with a fixed seeded W, entries N(0, 1/d_in), so each z_i has the mean square of x's entries)
        or ``learned`` (a linear layer initialised to that W, zero bias, trained with the model).
    angle_scale:
        The angles given to the circuit are ``angle_scale · z``.
    learn_angle_scale:
        Keep the angle scale as a trainable parameter (log-parametrised, so it stays positive; saved with the
        model, so a scale calibrated from data reloads too).  Needs ``angle_scale > 0``.
    seed:
        Seed of the random/learned projection's initial W.
    real_lift:
        Return the real vectorised density matrix (4^q features: |ψ_i|², and √2·Re, √2·Im of ψ_i ψ_j*
        for i < j) instead of the state.  Its dot product equals the fidelity, so the map becomes
        ``is_linear`` and usable in linear attention.  Only for q ≤ 6.
    engine:
        ``native`` (qra's engine, the default) or ``framework`` (the backend's own simulator, named by
        its ``device`` parameter); see :data:`ENGINES`.
    shots:
        ``None`` (default): exact fidelities.  An integer: every kernel value is what a QPU would
        return from that many shots of the compute–uncompute circuit U(y)†U(x)|0⟩ — the frequency
        of the all-zeros outcome, Binomial(shots, F)/shots — drawn from a generator seeded by
        ``seed`` and the call count, so a run is reproducible.  Gradients are those of the exact
        kernel (straight-through: the forward value is sampled, the backward pass treats it as F).
        A sampled kernel does not factor, so ``shots`` rules out linear attention.
    noise:
        Noise of the compute–uncompute estimate, e.g. ``{"depolarizing": 0.05, "readout": 0.01}``:
        a global depolarizing channel of strength p on the state before measurement,
        ρ → (1−p)ρ + p·I/2^q, and symmetric readout errors, each qubit's outcome flipped with
        probability e.  The kernel is then the probability of reading all zeros,
        k(x, y) = (1−p)·⟨φ|M|φ⟩ + p/2^q with φ = U(y)†U(x)|0⟩ and M = ⊗_k diag(1−e, e); with e = 0,
        ⟨φ|M|φ⟩ is the fidelity.  Readout errors need each key's U(y)MU(y)† (4^q numbers per vector,
        simulated on qra's engine from the map's gates) and n·m·4^q work per kernel matrix.
    features:
        ``state`` (default): the features are |ψ(x)⟩ and the kernel is the fidelity.  ``projected``:
        the projected quantum features of Huang et al. (Nat. Commun. 12, 2631, 2021), the 3q real
        single-qubit Pauli expectations φ(x) = (⟨X_0⟩…⟨X_{q−1}⟩, ⟨Y_0⟩…⟨Y_{q−1}⟩, ⟨Z_0⟩…⟨Z_{q−1}⟩)
        of |ψ(x)⟩ (qubit k = bit k of the basis index, Qiskit's order; PennyLane's wire q−1−k) —
        three measurement settings (X, Y, Z bases) per input instead of one circuit per pair.  Exact
        and differentiable from the statevector; with ``shots`` each expectation is estimated from
        that many shots, 2·Binomial(shots, (1+⟨P⟩)/2)/shots − 1 (seeded as the fidelity's shots,
        straight-through gradient); ``noise`` scales them as the channels do: ⟨P⟩ → (1−p)(1−2e)⟨P⟩.
    projected_kernel:
        With ``features="projected"``: ``linear`` (default) scores pairs by φ(x)·φ(y), a dot product,
        so the map is ``is_linear`` (linear attention works, also with shots and noise; the dot product
        may be negative: ``normalized`` attention clips it, ``linear`` divides by its row sums); ``trace``
        is Huang et al.'s linear projected kernel Σ_k Tr(ρ_k(x) ρ_k(y)) = (q + φ(x)·φ(y))/2 over the
        single-qubit reduced states ρ_k, in [0, q]: the features are then (φ/√2, √(q/2)), 3q + 1 of them,
        still a dot product (linear attention works) but never negative; ``gaussian`` is the projected
        quantum kernel exp(−γ‖φ(x)−φ(y)‖²) (not linear).
    gamma:
        The Gaussian projected kernel's bandwidth γ > 0.
    recompute_states:
        Do not keep the states for the backward pass.  On the fused circuit kernels (phase–Hadamard
        programs such as ZZ and IQP, complex64, CUDA) the backward kernel forms them again in registers
        from the phase coefficients it keeps (6 bytes a column and input, against 2^q·8 bytes for a
        state): one more forward pass inside the backward kernel.  On every other engine the states
        (``features="state"``) are simulated again from the inputs (activation checkpointing,
        ``torch.utils.checkpoint``), which keeps nothing of the simulation.  Off by default; measured
        in ``results/bench/train-round8.json``.

    States are complex128 for float64 inputs and complex64 otherwise, in Qiskit's little-endian
    basis order (qubit k is bit k of the index).  Angles are computed in float64 whatever the
    input, so complex64 states keep their accuracy when phases grow large.
    """

    fixed_parameters = ("num_angles",)
    #: the engines this class runs (a backend may add its own, as Qiskit's maps add ``sampler``)
    engines: ClassVar[tuple[str, ...]] = ENGINES

    def __init__(
        self,
        d_in: int,
        qubits: int | None = None,
        projection: str = "learned",
        angle_scale: float = 1.0,
        seed: int = 0,
        real_lift: bool = False,
        shots: int | None = None,
        noise: dict[str, float] | None = None,
        engine: str = "native",
        features: str = "state",
        projected_kernel: str = "linear",
        gamma: float = 1.0,
        learn_angle_scale: bool = False,
        recompute_states: bool = False,
        *,
        num_angles: int | None = None,
    ) -> None:
        super().__init__(d_in)
        if engine not in self.engines:
            raise ValueError(f"unknown engine {engine!r}; accepted: {', '.join(self.engines)}")
        qubits = d_in if qubits is None else qubits
        num_angles = qubits if num_angles is None else num_angles
        if not isinstance(qubits, int) or qubits < 1:
            raise ValueError(f"qubits must be a positive integer, got {qubits!r}")
        if qubits > MAX_QUBITS:
            state = 2**qubits * 8  # bytes of one complex64 statevector
            raise ValueError(
                f"qubits={qubits} needs {format_bytes(state)} for a single input's state (complex64), before any "
                f"batch; accepted: qubits <= {MAX_QUBITS} (attention-sized batches are practical up to about 12)"
            )
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; accepted: {', '.join(PROJECTIONS)}")
        if projection == "identity" and d_in != num_angles:
            raise ValueError(
                f"projection='identity' needs d_in equal to the circuit's {num_angles} angles, got d_in={d_in}; "
                "use projection='random' or 'learned' to map d_in values to the angles"
            )
        if real_lift and qubits > MAX_REAL_LIFT_QUBITS:
            raise ValueError(f"real_lift makes 4^qubits features; it is limited to qubits <= {MAX_REAL_LIFT_QUBITS}")
        if isinstance(angle_scale, bool) or not isinstance(angle_scale, (int, float)) or not math.isfinite(angle_scale):
            raise ValueError(f"angle_scale must be a finite number, got {angle_scale!r}")
        self.qubits = qubits
        self.num_angles = num_angles
        self.projection = projection
        self.angle_scale = float(angle_scale)
        if learn_angle_scale:
            if not self.angle_scale > 0:
                raise ValueError(f"learn_angle_scale needs angle_scale > 0 (it is learned as log), got {angle_scale!r}")
            self.log_angle_scale = nn.Parameter(torch.tensor(math.log(self.angle_scale), dtype=torch.float32))
        self.real_lift = bool(real_lift)
        self.recompute_states = bool(recompute_states)
        self.engine = engine
        self.seed = int(seed)
        self.set_measurement(shots, noise)
        self._init_features(features, projected_kernel, gamma)
        if projection != "identity":
            generator = torch.Generator().manual_seed(int(seed))
            weight = torch.randn(num_angles, d_in, generator=generator, dtype=torch.float64) / math.sqrt(d_in)
            if projection == "random":
                self.register_buffer("projection_weight", weight.float())
            else:
                self.encoder = nn.Linear(d_in, num_angles)
                with torch.no_grad():
                    self.encoder.weight.copy_(weight)
                    self.encoder.bias.zero_()

    @classmethod
    def upgrade_params(cls, params: dict[str, object]) -> dict[str, object]:
        """Engine names of earlier versions (``pennylane``, ``statevector``, ``aer``) become ``framework``."""
        params = dict(params)
        if params.get("engine") in LEGACY_ENGINES:
            params["engine"] = LEGACY_ENGINES[params["engine"]]
        return params

    def set_measurement(self, shots: int | None = None, noise: dict[str, float] | None = None) -> None:
        """Estimate kernel values as a QPU would: from ``shots`` samples, with ``noise`` (class docstring).

        ``shots=None`` and no noise give the exact fidelity.  The shot-noise stream restarts from the
        map's seed, so two evaluations with the same setting draw the same samples.
        """
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
            raise ValueError(f"shots must be a positive integer or None (exact kernel), got {shots!r}")
        noise = dict(noise or {})
        if unknown := sorted(set(noise) - set(NOISE_KINDS)):
            raise ValueError(f"unknown noise {', '.join(unknown)}; accepted: {', '.join(NOISE_KINDS)}")
        if any(not 0.0 <= float(value) <= 1.0 for value in noise.values()):
            raise ValueError(f"noise strengths are probabilities in [0, 1], got {noise}")
        self.shots = shots
        self.depolarizing = float(noise.get("depolarizing", 0.0))
        self.readout_error = float(noise.get("readout", 0.0))
        self._sampling_calls = 0

    @property
    def is_linear(self) -> bool:  # type: ignore[override]
        if self.projected:
            return self.projected_kernel in ("linear", "trace")
        return self.real_lift and self.shots is None and not self.noisy and not self.measures_kernel

    @property
    def is_fidelity(self) -> bool:  # type: ignore[override]
        """The features are the states and the kernel their exact fidelity (no lift, shots or noise)."""
        return (not self.real_lift and self.shots is None and not self.noisy and not self.projected
                and not self.measures_kernel)  # fmt: skip

    @property
    def keeps_features_for_backward(self) -> bool:  # type: ignore[override]
        """The native engine's adjoint keeps the output states for backward (both its PyTorch program and the
        fused kernels), unless ``recompute_states``; a framework's simulator may not."""
        return self.is_fidelity and self.engine == "native" and not self.recompute_states

    @property
    def measures_kernel(self) -> bool:
        """Whether the engine estimates each fidelity itself, from compute–uncompute circuits run with the map's
        shots (a sampler here; backends add their shot devices): the features are then the angles, and
        :meth:`measured_fidelities` gives the kernel of every query–key pair."""
        return self.engine == "sampler"

    @property
    def noisy(self) -> bool:
        return self.depolarizing > 0 or self.readout_error > 0

    @property
    def dim(self) -> int:
        if self.projected:
            return 3 * self.qubits + (self.projected_kernel == "trace")
        if self.measures_kernel:  # the features are the angles; the engine estimates each pair's kernel
            return self.num_angles
        if self.readout_error > 0:
            return 2**self.qubits + 4**self.qubits  # the state, then U M U† flattened
        return 4**self.qubits if self.real_lift else 2**self.qubits

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """The circuit's angles ``[..., num_angles]`` (float64) for inputs ``x[..., d_in]``."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"expected inputs with last dimension d_in={self.d_in}, got shape {tuple(x.shape)}")
        dtype = compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            if self.projection == "identity":
                z = x
            elif self.projection == "random":
                z = x.to(dtype) @ self.projection_weight.to(device=x.device, dtype=dtype).T
            else:
                z = nn.functional.linear(x.to(dtype), self.encoder.weight.to(dtype), self.encoder.bias.to(dtype))
        learned = getattr(self, "log_angle_scale", None)
        scale = self.angle_scale if learned is None else learned.to(device=x.device, dtype=torch.float64).exp()
        return z.to(torch.float64) * scale

    def gates(self, angles: torch.Tensor) -> list[Gate]:
        """The circuit as engine gates for a batch of angles ``[..., qubits]`` (float64)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its circuit for the native engine")

    def resources(self) -> dict[str, object]:
        """Depth and gate counts of the compute–uncompute circuit U(y)†U(x) that estimates one kernel value.

        This default counts qra's engine gates (both halves); the backends report their own
        framework's circuit, decomposed to single-qubit gates and CNOTs.
        """
        angles = torch.rand(1, self.num_angles, dtype=torch.float64)
        gates = self.gates(angles)
        circuit = [*gates, *reversed(gates)]  # U(y)† has U's gates in reverse order
        two_qubit = sum(len(g.qubits) >= 2 for g in circuit)
        return {"qubits": self.qubits, "depth": _depth(circuit), "gates": len(circuit), "two_qubit_gates": two_qubit,
                "basis": "qra engine gates"}  # fmt: skip

    def simulate(self, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """States ``[..., 2^q]`` for angles ``[..., num_angles]`` on the map's engine."""
        if self.engine == "sampler":
            raise RuntimeError("engine='sampler' measures circuits and gives no states; use engine='native' or "
                               "'framework' for states")  # fmt: skip
        if self.engine == "framework":
            return self.framework_states(angles, dtype)
        batched = self._batched_states(angles, dtype)
        if batched is not None:
            return batched
        return simulate(
            self.gates(angles), self.qubits, dtype=dtype, device=angles.device, batch_shape=angles.shape[:-1]
        )

    def _batched_states(self, angles: torch.Tensor, dtype: torch.dtype,
                        keep_states: bool = True) -> torch.Tensor | None:  # fmt: skip
        """States from the gate parameters in a few batched ops (:meth:`slot_basis` or :meth:`slot_values`) on
        the circuit compiled once; None when the map gives neither.  ``keep_states``: see ``run_program``."""
        flat = angles.reshape(-1, angles.shape[-1])
        basis = self.slot_basis(flat)
        values, expansion = basis if basis is not None else (self.slot_values(flat), None)
        if values is None:
            return None
        check_memory(self.qubits, flat.shape[0], dtype, angles.device)
        probe = values[:3] if expansion is None else values[:3] @ expansion.T
        program = self._checked_program(flat, probe, dtype)
        states = run_program(program, values, flat.shape[0], keep_states=keep_states, expansion=expansion)
        return states.reshape(*angles.shape[:-1], 2**self.qubits)

    def slot_basis(self, angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The gate parameters as a few distinct values and a fixed expansion, or None (the default).

        ``(values [B, S'], expansion [S, S'])`` with :meth:`slot_values` ``= values @ expansion.T``:
        where a circuit repeats its parameters (``reps``) or uses one value twice (a ZZ map's θ and the
        global phase −θ/2), the engine folds the expansion into its fixed mixing matrix, so the
        batch's values (float64), their gradient and the ops that build them shrink by S/S' (3.6×
        for the 8-qubit ZZ map: 36 distinct values of 128 gate parameters).  ``expansion`` float64 on
        the angles' device; ``values`` best as the transpose of a contiguous ``[S', B]`` tensor.
        """
        return None

    def slot_values(self, angles: torch.Tensor) -> torch.Tensor | None:
        """The circuit's gate parameters for angles ``[B, num_angles]`` as one tensor ``[B, S]``, or None.

        Column s is the s-th tensor parameter of :meth:`gates` (in gate order).  Best as the transpose of
        a contiguous ``[S, B]`` tensor (``angles.T.contiguous()``, then row-wise ops): the engine reads it
        that way, and building columns of a ``[B, S]`` tensor (``torch.stack(..., dim=1)``, a ``cat`` along
        dim 1) is a strided copy that took ~1 ms per call at 393,216 inputs on an H200.  A map whose parameters
        are simple functions of the angles returns them from a few batched tensor ops: per call, building
        the gate list costs a few tensor ops per gate (and as many autograd nodes), which at 6–8 qubits
        takes longer than simulating 196,608 circuits.  The circuit itself still comes from :meth:`gates`,
        recorded once per dtype and device, and the first call checks these values against its
        parameters.  The default: ``values @ expansion.T`` from :meth:`slot_basis` when the map gives one,
        else None (the engine takes the parameters from :meth:`gates` every call).
        """
        basis = self.slot_basis(angles)
        return None if basis is None else basis[0] @ basis[1].T

    def _checked_program(self, angles: torch.Tensor, values: torch.Tensor, dtype: torch.dtype):
        """The compiled program of :meth:`gates` (recorded on a few rows), once :meth:`slot_values` matches it."""
        cache = self.__dict__.setdefault("_slot_programs", {})
        key = (dtype, str(angles.device))
        if key not in cache:
            probe = angles[:3].detach()
            gates = self.gates(probe)
            program, expected = program_for(gates, self.qubits, dtype, angles.device)
            expected = torch.stack([v.expand(probe.shape[0]) for v in expected], dim=1) if expected else None
            found = values[: probe.shape[0]].detach()
            if expected is None or expected.shape != found.shape or not torch.allclose(
                    found.double(), expected.double(), rtol=1e-6, atol=1e-6):  # fmt: skip
                raise RuntimeError(
                    f"{type(self).__name__}.slot_values() disagrees with the parameters of its gates() (where the map "
                    "gives slot_basis(), its values times their expansion are checked): "
                    f"{None if expected is None else tuple(expected.shape)} expected, {tuple(found.shape)} found"
                )
            cache[key] = program
        return cache[key]

    def framework_states(self, angles: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """States from the framework's own simulator (``engine="framework"``); backends implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no framework simulator; use engine='native'")

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """|ψ(x)⟩ as a complex tensor ``[..., 2^qubits]`` in Qiskit's little-endian order."""
        dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        if self.recompute_states and torch.is_grad_enabled():
            if self._kernels_recompute_states(x, dtype):
                return self._batched_states(self.angles(x), dtype, keep_states=False)
            return checkpoint(self._simulated_states, x, dtype, use_reentrant=False)
        return self._simulated_states(x, dtype)

    def _simulated_states(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.simulate(self.angles(x), dtype)

    def _kernels_recompute_states(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """Whether the circuit runs on the fused kernels, whose backward forms the states again by itself.

        Then ``recompute_states`` needs no checkpoint: the kernels keep the phase coefficients (6 bytes a
        column and input), not the states, and the backward repeats neither the map's angles and gate
        parameters nor their autograd graph.  False: checkpoint.  The program is found once per dtype and
        device, from three rows, for the native engine's batched gate parameters (:meth:`slot_values`).
        """
        if self.engine != "native" or x.numel() == 0:
            return False
        programs = self.__dict__.setdefault("_slot_programs", {})  # filled by _checked_program
        key = (dtype, str(x.device))
        if key not in programs:
            with torch.no_grad():
                probe = self.angles(x.reshape(-1, x.shape[-1])[:3])
                values = self.slot_values(probe)
                if values is None:
                    return False
                self._checked_program(probe, values, dtype)
        return fused_spec(programs[key]) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projected and self.projected_kernel == "trace":  # (φ/√2, √(q/2)): dot = Σ_k Tr(ρ_k ρ'_k)
            features = self.projected_features(x)
            constant = features.new_full((*features.shape[:-1], 1), math.sqrt(self.qubits / 2))
            return torch.cat([features / math.sqrt(2), constant], dim=-1)
        if self.projected:
            return self.projected_features(x)
        if self.measures_kernel:
            self._check_sampling("the fidelity kernel")
            return self.angles(x)
        states = self.states(x)
        if self.readout_error > 0:
            return torch.cat([states, self.readout_operators(x).flatten(-2)], dim=-1)
        return density_features(states) if self.real_lift and not self.noisy else states

    @property
    def joint_features(self) -> bool:  # type: ignore[override]
        """Queries and keys share one simulation, except when keys carry the readout-noise operators."""
        return not (self.readout_error > 0 and not self.projected)

    def query_features(self, x: torch.Tensor) -> torch.Tensor:
        """With readout noise a query needs only its state: the operator U M U† is the key's."""
        return self.states(x) if self.readout_error > 0 and not self.projected else self(x)

    def readout_operators(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) M U(x)† ``[..., 2^q, 2^q]``, M = ⊗_k diag(1−e, e): the readout-noisy all-zeros projector."""
        dim = 2**self.qubits
        dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        angles = self.angles(x)
        batch = angles.shape[:-1]
        # one circuit per (input, basis state j), flattened: some maps flatten the angles they get
        repeated = angles.unsqueeze(-2).expand(*batch, dim, self.num_angles).reshape(-1, self.num_angles)
        basis = torch.eye(dim, dtype=dtype, device=x.device).expand(*batch, dim, dim).reshape(-1, dim)
        columns = simulate(self.gates(repeated), self.qubits, dtype=dtype, device=x.device, initial_state=basis)
        unitary = columns.reshape(*batch, dim, dim).transpose(-1, -2)  # unitary[..., :, j] = U|j⟩
        ones = torch.tensor([bin(b).count("1") for b in range(dim)], device=x.device, dtype=torch.float64)
        weights = ((1 - self.readout_error) ** (self.qubits - ones) * self.readout_error**ones).to(dtype)
        return (unitary * weights) @ unitary.conj().transpose(-1, -2)

    def similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Fidelities |⟨ψ(x)|ψ(y)⟩|² ``[..., n, m]`` (or the lifted features' dot product, the same value).

        With ``noise`` the value is the noisy all-zeros probability, with ``shots`` it is sampled
        as a QPU would estimate it (see the class docstring).
        """
        if self.projected:
            return self.projected_similarity(fx, fy)
        if self.measures_kernel:
            return self.measured_fidelities(fx, fy)
        dim = 2**self.qubits
        if self.readout_error > 0:
            # ⟨ψ_n|O_m|ψ_n⟩ = Σ_ij conj(ψ_n,i) ψ_n,j O_m,ij: one matrix product of the flattened
            # |ψ⟩⟨ψ|ᵀ with the keys' operators, with no [n, m, 2^q] intermediate
            states, operators = fx[..., :dim], fy[..., dim:]
            outer = (states.conj().unsqueeze(-1) * states.unsqueeze(-2)).flatten(-2)
            kernel = (outer @ operators.transpose(-1, -2)).real
        elif self.real_lift and not self.noisy:
            kernel = fx @ fy.transpose(-1, -2)
        else:
            overlap = fx @ fy.conj().transpose(-1, -2)
            kernel = overlap.real.square() + overlap.imag.square()
        if self.depolarizing > 0:
            kernel = (1 - self.depolarizing) * kernel + self.depolarizing / dim
        return kernel if self.shots is None else self.sample_shots(kernel)

    def sample_shots(self, fidelity: torch.Tensor) -> torch.Tensor:
        """Binomial(shots, F)/shots per value, with the exact kernel's gradient (straight-through)."""
        generator = torch.Generator(device=fidelity.device)
        generator.manual_seed(hash((self.seed, self._sampling_calls)) & 0x7FFF_FFFF_FFFF_FFFF)
        self._sampling_calls += 1
        probability = fidelity.detach().clamp(0.0, 1.0)
        counts = torch.binomial(torch.full_like(probability, float(self.shots)), probability, generator=generator)
        return fidelity + (counts / self.shots - fidelity).detach()

    # -- projected quantum features, and engines that measure (samplers, shot devices) ---------------------

    def _init_features(self, features: str, projected_kernel: str, gamma: float) -> None:
        """Validate and set ``features``, ``projected_kernel`` and ``gamma`` (class docstring)."""
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; accepted: {', '.join(FEATURES)}")
        if projected_kernel not in PROJECTED_KERNELS:
            raise ValueError(
                f"unknown projected_kernel {projected_kernel!r}; accepted: {', '.join(PROJECTED_KERNELS)}"
            )
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"gamma is the Gaussian projected kernel's bandwidth, a finite number > 0; got {gamma!r}")
        if features == "projected" and self.real_lift:
            raise ValueError("real_lift lifts the state's density matrix; projected features are real already (and "
                             "linear): use features='projected' or real_lift=True, not both")  # fmt: skip
        self.features = features
        self.projected_kernel = projected_kernel
        self.gamma = float(gamma)

    @property
    def projected(self) -> bool:
        """The features are single-qubit Pauli expectations (``features="projected"``)."""
        return getattr(self, "features", "state") == "projected"

    def projected_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) = (⟨X_k⟩…, ⟨Y_k⟩…, ⟨Z_k⟩…) ``[..., 3q]``: exact, noisy or sampled (class docstring)."""
        dtype = compute_dtype(x) if x.dtype.is_floating_point else torch.float32
        angles = self.angles(x)
        if self.engine == "sampler":
            self._check_sampling("the Pauli expectations")
        measured = self.measured_paulis(angles)
        if measured is not None:  # the engine measured them itself (a sampler, a device with shots)
            return measured.to(device=x.device, dtype=dtype)
        states = self.simulate(angles, torch.complex128 if dtype == torch.float64 else torch.complex64)
        expectations = pauli_expectations(states, self.qubits)
        scale = (1 - self.depolarizing) * (1 - 2 * self.readout_error)
        if scale != 1:
            expectations = expectations * scale
        if self.shots is not None:  # each ⟨P⟩ from shots ±1 outcomes: P(+1) = (1 + ⟨P⟩)/2
            expectations = 2 * self.sample_shots((1 + expectations) / 2) - 1
        return expectations.to(dtype)

    def projected_similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """φ(x)·φ(y) (``linear``; ``trace`` through its augmented features) or exp(−γ‖φ(x)−φ(y)‖²), ``[..., n, m]``."""
        dot = fx @ fy.transpose(-1, -2)
        if self.projected_kernel in ("linear", "trace"):
            return dot
        distance = fx.square().sum(-1).unsqueeze(-1) + fy.square().sum(-1).unsqueeze(-2) - 2 * dot
        return torch.exp(-self.gamma * distance.clamp_min(0))

    def measured_paulis(self, angles: torch.Tensor) -> torch.Tensor | None:
        """Pauli expectations ``[..., 3q]`` estimated by an engine that measures (a sampler, a shot device).

        None (the default) means: compute them from the engine's states.  Backends override it.
        """
        if self.engine == "sampler":
            raise NotImplementedError(f"{type(self).__name__} does not implement engine='sampler'")
        return None

    def measured_fidelities(self, angles_x: torch.Tensor, angles_y: torch.Tensor) -> torch.Tensor:
        """Fidelity kernel ``[..., n, m]`` estimated from compute–uncompute circuits (:attr:`measures_kernel`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement engine={self.engine!r} with shots")

    def _check_sampling(self, what: str) -> None:
        """An engine that measures estimates from the map's ``shots``, with its backend's own noise (not qra's)."""
        if self.shots is None:
            raise ValueError(f"engine={self.engine!r} estimates {what} from shots: set shots=N "
                             "(or set_measurement(shots=N))")  # fmt: skip
        if self.noisy:
            raise ValueError(f"noise= is qra's model of a QPU's noise for the simulators; engine={self.engine!r} with "
                             "shots has its backend's own noise: set_measurement(shots=N) without noise (for a "
                             "PennyLane map, a noisy PennyLane device, e.g. default.mixed with noise "
                             "channels)")  # fmt: skip

    def set_engine(self, engine: str, backend: object | None = None, **options: object) -> None:
        """Switch a built (e.g. trained) map to another engine, for instance to evaluate it on a sampler.

        ``backend`` and ``options`` are the backend's: a simulator device name, a sampler or the name
        of one (see the backends' ``set_engine``).  This base class takes neither.
        """
        if engine not in self.engines:
            raise ValueError(f"unknown engine {engine!r}; accepted: {', '.join(self.engines)}")
        if backend is not None or options:
            raise ValueError(f"{type(self).__name__} takes no backend or options for engine={engine!r}")
        self.engine = engine


def _depth(gates: list[Gate]) -> int:
    """Circuit depth: the longest chain of gates sharing qubits."""
    level: dict[int, int] = {}
    for gate in gates:
        layer = max((level.get(q, 0) for q in gate.qubits), default=0) + 1
        for q in gate.qubits:
            level[q] = layer
    return max(level.values(), default=0)


def pauli_expectations(states: torch.Tensor, qubits: int) -> torch.Tensor:
    """⟨X_k⟩, ⟨Y_k⟩, ⟨Z_k⟩ of states ``[..., 2^q]`` (qubit k = bit k): ``[..., 3q]``, all X, then all Y, then all Z.

    With a_b the amplitudes whose bit k is b and c = Σ conj(a_0)·a_1: ⟨X_k⟩ = 2 Re c, ⟨Y_k⟩ = 2 Im c,
    ⟨Z_k⟩ = Σ|a_0|² − Σ|a_1|².  Tensor operations only, so gradients flow to the states.
    """
    batch = states.shape[:-1]
    x, y, z = [], [], []
    for k in range(qubits):
        split = states.reshape(*batch, 2 ** (qubits - 1 - k), 2, 2**k)
        zero, one = split[..., 0, :], split[..., 1, :]
        coherence = (zero.conj() * one).sum((-2, -1))
        x.append(2 * coherence.real)
        y.append(2 * coherence.imag)
        z.append((zero.real.square() + zero.imag.square() - one.real.square() - one.imag.square()).sum((-2, -1)))
    return torch.stack(x + y + z, dim=-1)


def density_features(states: torch.Tensor) -> torch.Tensor:
    """Real features of ρ = |ψ⟩⟨ψ| whose dot products are Tr(ρ_x ρ_y) = |⟨ψ_x|ψ_y⟩|² (4^q of them)."""
    dim = states.shape[-1]
    rho = states.unsqueeze(-1) * states.conj().unsqueeze(-2)
    upper = torch.triu_indices(dim, dim, offset=1, device=states.device)
    off_diagonal = rho[..., upper[0], upper[1]] * math.sqrt(2)
    diagonal = torch.diagonal(rho, dim1=-2, dim2=-1).real
    return torch.cat([diagonal, off_diagonal.real, off_diagonal.imag], dim=-1)
