"""The fused Triton kernels for phase–Hadamard circuits (qra.featuremaps.fused_program).

GPU tests (skipped without CUDA and triton) check the kernels' states against Qiskit's
``Statevector`` and the complex128 PyTorch engine, and their gradients against that engine's; the
CPU tests check the dispatch and the exact phase split the kernels rely on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qra import kernels
from qra.featuremaps import fused_program
from qra.featuremaps.compiler import program_for
from qra.featuremaps.fused_program import UNIT, fused_spec, hadamard_operand
from qra.featuremaps.statevector import Gate, simulate

from .test_statevector import qiskit_circuits

requires_gpu = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton_available()), reason="needs CUDA and triton"
)
DIAGONAL_ZOO = ["z", "s", "t", "p", "rz", "cz", "cp", "crz", "rzz", "multirz"]
ARITY = {"z": 1, "s": 1, "t": 1, "p": 1, "rz": 1, "cz": 2, "cp": 2, "crz": 2, "rzz": 2}
PARAMETERISED = {"p", "rz", "cp", "crz", "rzz", "multirz"}


def phase_circuit(num_qubits: int, reps: int, rng: np.random.Generator, batch: int, scale: float = 3.0,
                  shared: bool = False):  # fmt: skip
    """reps × (H on every qubit, then random diagonal gates): engine gates and their Qiskit twins.

    With ``shared`` one 0-d angle tensor is reused by several gates (a parameter shared across the batch).
    """
    gates, recipe = [], []
    common = torch.tensor(float(rng.normal() * scale), dtype=torch.float64)
    for _ in range(reps):
        for q in range(num_qubits):
            gates.append(Gate("h", (q,)))
            recipe.append(("h", (q,), np.zeros((0, batch))))
        for _ in range(3 * num_qubits):
            name = DIAGONAL_ZOO[rng.integers(len(DIAGONAL_ZOO))]
            arity = int(rng.integers(2, num_qubits + 1)) if name == "multirz" else ARITY[name]
            qubits = tuple(int(q) for q in rng.choice(num_qubits, arity, replace=False))
            if name not in PARAMETERISED:
                gates.append(Gate(name, qubits))
                recipe.append((name, qubits, np.zeros((0, batch))))
            elif shared and rng.random() < 0.3:
                gates.append(Gate(name, qubits, (common,)))
                recipe.append((name, qubits, np.full((1, batch), float(common))))
            else:
                angles = rng.normal(size=(1, batch)) * scale
                gates.append(Gate(name, qubits, (torch.tensor(angles[0]),)))
                recipe.append((name, qubits, angles))
    return gates, recipe


def with_leaves(gates, dtype=torch.float32):
    """The gates with every tensor parameter replaced by a fresh leaf (shared tensors stay shared)."""
    leaves: dict[int, torch.Tensor] = {}

    def leaf(p):
        if id(p) not in leaves:
            leaves[id(p)] = p.detach().to(dtype).clone().requires_grad_()
        return leaves[id(p)]

    rebuilt = [Gate(g.name, g.qubits, tuple(leaf(p) if isinstance(p, torch.Tensor) else p for p in g.params))
               for g in gates]  # fmt: skip
    return rebuilt, list(leaves.values())


# ----------------------------------------------------------------------------------------------
# CPU: the dispatch and the phase split


def test_the_pytorch_engine_runs_where_the_kernels_cannot():
    gates, _ = phase_circuit(4, 2, np.random.default_rng(0), 3)
    expected = simulate(gates, 4, dtype=torch.complex64, implementation="pytorch")
    torch.testing.assert_close(simulate(gates, 4, dtype=torch.complex64), expected)
    program, _ = program_for(gates, 4, torch.complex64, torch.device("cpu"))
    if not kernels.fused_available(torch.empty(1)):
        assert fused_spec(program) is None
        with pytest.raises(ValueError, match="on CUDA with Triton"):
            simulate(gates, 4, dtype=torch.complex64, implementation="fused")


def test_bad_implementation_names_are_refused_with_the_accepted_ones(monkeypatch):
    gates, _ = phase_circuit(4, 1, np.random.default_rng(1), 2)
    with pytest.raises(ValueError, match="accepted: auto, pytorch, fused"):
        simulate(gates, 4, implementation="triton")
    monkeypatch.setenv(fused_program.IMPLEMENTATION_ENV, "fast")
    with pytest.raises(ValueError, match="QRA_ENGINE_IMPLEMENTATION='fast'; accepted"):
        simulate(gates, 4)


@pytest.mark.parametrize("num_qubits", [4, 6, 8])
def test_the_kernels_phase_split_gives_the_engines_phases(num_qubits):
    """n·(2·pattern) mod 512 (exact integers) + constant + r·pattern equals coefficients @ pattern + constant mod 2π."""
    rng = np.random.default_rng(num_qubits)
    gates, _ = phase_circuit(num_qubits, 2, rng, 5, scale=40.0, shared=True)
    program, values = program_for(gates, num_qubits, torch.complex64, torch.device("cpu"))
    spec = fused_program._build_spec(program)
    turns, rest = fused_program.coefficients_reference(spec, torch.stack([v.expand(5) for v in values], dim=1))
    assert torch.equal(turns, turns.round()) and turns.min() >= 0 and turns.max() < 512
    assert rest.abs().max() <= UNIT / 2 + 1e-6
    for index, layer in enumerate(program.layers[1::2]):
        doubled = spec.doubled_patterns[index].double()
        whole = torch.remainder(turns[index].double().T @ doubled, 512) * (2 * math.pi / 512)
        ours = whole + spec.constants[index].double() + rest[index].double().T @ doubled / 2
        phase = torch.zeros(5, 2**num_qubits, dtype=torch.float64)
        if layer.varying:
            phase += torch.stack([values[s].double().expand(5) for s in layer.varying], -1) @ layer.pattern
        for slot, value in layer.uniform:
            phase += (values[slot].double() * value).expand(5)[:, None]
        if layer.constant is not None:
            phase += layer.constant
        difference = torch.remainder(ours - phase + math.pi, 2 * math.pi) - math.pi
        assert difference.abs().max() < 1e-6  # the fp32 rounding of r and of the constants only


def test_the_hadamard_operand_is_the_walsh_hadamard_matrix():
    from qra.featuremaps.statevector import _walsh_hadamard  # the Sylvester construction: independent of ours

    for n in (4, 6, 7):
        dense, factor = hadamard_operand(n, torch.device("cpu"))
        assert factor == 0
        torch.testing.assert_close(dense.double() / 2 ** (n / 2), _walsh_hadamard(n, "cpu", torch.float64))
    half, factor = hadamard_operand(8, torch.device("cpu"))
    assert factor == 16
    torch.testing.assert_close(torch.kron(half, half).double() / 16, _walsh_hadamard(8, "cpu", torch.float64))


# ----------------------------------------------------------------------------------------------
# GPU: the kernels


def _qiskit_states(recipe, num_qubits: int, batch: int) -> np.ndarray:
    from qiskit.quantum_info import Statevector

    return np.stack([Statevector(c).data for c in qiskit_circuits(recipe, num_qubits, batch)])


def kernel_inputs(num_qubits: int, seed: int, grad_seed: int, batch: int, device: torch.device):
    """A random 3-layer phase circuit's spec, the kernels' arguments, their output states and a random gradient."""
    from qra.kernels import phase_program

    gates, _ = phase_circuit(num_qubits, 3, np.random.default_rng(seed), batch, scale=40.0)
    program, values = program_for(gates, num_qubits, torch.complex64, device)
    spec = fused_spec(program)
    matrix = torch.stack([v.expand(batch) for v in values], dim=1).to(device)
    turns, rest = phase_program.phase_coefficients(matrix, spec.mixing, spec.doubled_patterns.shape[0])
    args = (turns, rest, spec.doubled_patterns, spec.constants, spec.hadamard, spec.factor)
    out = phase_program.phase_program_forward(*args)
    generator = torch.Generator(device).manual_seed(grad_seed)
    return spec, args, out, torch.randn(out.shape, dtype=out.dtype, device=device, generator=generator)


@requires_gpu
@pytest.mark.parametrize("num_qubits", [6, 8])
def test_the_backward_in_chunks_and_under_tf32_gives_the_same_gradients(num_qubits, monkeypatch):
    """Chunks of rows (the last one partial) and a process that allows TF32 leave ∂L/∂c as one IEEE pass gives it."""
    from qra.kernels import phase_program

    _, args, out, grad = kernel_inputs(num_qubits, num_qubits, grad_seed=1, batch=1000, device=torch.device("cuda"))
    whole = phase_program.phase_program_backward(*args, out, grad)
    monkeypatch.setattr(phase_program, "GRADIENT_CHUNK_BYTES", 4 * 3 * 2**num_qubits * 96)  # 96 rows a chunk
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        chunked = phase_program.phase_program_backward(*args, out, grad)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)
    assert (chunked - whole).abs().max() <= 1e-6 * whole.abs().max()


@requires_gpu
@pytest.mark.parametrize("num_qubits", [4, 6, 8])
def test_the_backward_without_saved_states_and_into_slot_values_gives_the_same_gradients(num_qubits, monkeypatch):
    """States formed again inside the backward kernel (``out=None``) give the gradient the saved states give, and
    the slot values' gradient formed chunk by chunk (``mixing``) equals mixing @ ∂L/∂c, in the values' dtype."""
    from qra.kernels import phase_program

    batch = 1000
    cuda = torch.device("cuda")
    spec, args, out, grad = kernel_inputs(num_qubits, 7 * num_qubits, grad_seed=2, batch=batch, device=cuda)
    kept = phase_program.phase_program_backward(*args, out, grad)
    formed_again = phase_program.phase_program_backward(*args, None, grad)
    assert (formed_again - kept).abs().max() <= 1e-5 * kept.abs().max()
    assert kept.shape == (batch, spec.mixing.shape[1])  # no mixing: ∂L/∂coefficients
    expected = kept.double() @ spec.mixing.double().T
    monkeypatch.setattr(phase_program, "GRADIENT_CHUNK_BYTES", 4 * 3 * 2**num_qubits * 96)  # 96 rows a chunk
    for states in (out, None):
        slots = phase_program.phase_program_backward(*args, states, grad, spec.mixing, torch.float64)
        assert slots.dtype == torch.float64 and slots.shape == (batch, spec.mixing.shape[0])
        assert (slots - expected).abs().max() <= 1e-5 * expected.abs().max()


@requires_gpu
@pytest.mark.parametrize("name", ["pennylane-zz", "pennylane-iqp"])
def test_recompute_states_on_the_kernels_saves_no_state_and_gives_the_same_gradients(name):
    """``recompute_states`` on the fused kernels: no checkpoint, nothing complex saved, the same results."""
    pytest.importorskip("qra_pennylane")
    from qra.featuremaps import get

    x = torch.randn(2, 3, 70, 16, device="cuda") * 2
    results = {}
    for recompute in (False, True):
        fm = get(name, d_in=16, qubits=6, engine="native", recompute_states=recompute).cuda()
        inputs = x.clone().requires_grad_()
        saved: list[torch.Tensor] = []

        def keep(tensor: torch.Tensor, saved: list[torch.Tensor] = saved) -> torch.Tensor:
            saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
            states = fm(inputs)
        (states.real.sin().sum() + states.imag.square().sum()).backward()
        results[recompute] = (states.detach(), inputs.grad, fm.encoder.weight.grad)
        assert any(t.is_complex() for t in saved) is not recompute
    assert fm._kernels_recompute_states(x, torch.complex64)
    (states_a, *grads_a), (states_b, *grads_b) = results.values()
    torch.testing.assert_close(states_b, states_a, rtol=0, atol=0)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@requires_gpu
@pytest.mark.parametrize(("name", "options"),
                         [("pennylane-zz", {"reps": 3}), ("pennylane-iqp", {"pattern": [[0, 3], [5, 1]]})])
def test_slot_basis_on_the_kernels_gives_the_gate_lists_states_and_gradients(name, options):
    """The expansion folded into the kernels' mixing matrix: states and input gradients as the complex128 gate list."""
    pytest.importorskip("qra_pennylane")
    from qra.featuremaps import get

    fm = get(name, d_in=6, qubits=6, engine="native", projection="identity", **options).cuda()
    x = torch.rand(2, 150, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) * 6
    values, expansion = fm.slot_basis(fm.angles(x).reshape(-1, 6))
    assert expansion.shape[0] > values.shape[1]  # fewer distinct values than gate parameters
    weights = torch.randn(2, 150, 64, dtype=torch.complex128, device="cuda")
    results = []
    for through_kernels in (True, False):
        leaf = x.clone().requires_grad_()
        if through_kernels:
            states = fm.states(leaf).to(torch.complex128)
        else:
            angles = fm.angles(leaf).reshape(-1, 6)
            states = simulate(fm.gates(angles), 6, dtype=torch.complex128, implementation="pytorch").reshape(2, 150, -1)
        loss = (states * weights).real.sum() + states.abs().square()[..., :5].sum()
        results.append((states.detach(), torch.autograd.grad(loss, leaf)[0]))
    (ours, our_grad), (exact, exact_grad) = results
    assert (ours - exact).abs().max() <= 1e-5
    assert (our_grad - exact_grad).abs().max() <= 2e-4 * (exact_grad.abs().max() + 1)


@requires_gpu
@pytest.mark.parametrize(("num_qubits", "reps", "batch"), [(4, 1, 1), (6, 2, 300), (8, 3, 1000), (8, 5, 77)])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_coefficient_kernel_splits_as_the_pytorch_statement_does(num_qubits, reps, batch, transposed):
    """n float16 integers in [0, 512), |r| ≤ UNIT/2, and n·UNIT + r equal to the float64 split (mod 4π) to fp32's r."""
    from qra.kernels.phase_program import phase_coefficients

    gates, _ = phase_circuit(num_qubits, reps, np.random.default_rng(num_qubits + reps), batch, scale=60.0, shared=True)
    program, values = program_for(gates, num_qubits, torch.complex64, torch.device("cuda"))
    spec = fused_spec(program)
    rows = torch.stack([v.expand(batch) for v in values], dim=0 if transposed else 1).cuda()
    matrix = rows.T if transposed else rows  # [B, S], strided or not, float64 as the maps give them
    turns, rest = phase_coefficients(matrix, spec.mixing, spec.doubled_patterns.shape[0])
    expected_turns, expected_rest = fused_program.coefficients_reference(spec, matrix)
    assert turns.dtype == torch.float16 and turns.shape == expected_turns.shape
    assert torch.equal(turns, turns.round()) and turns.min() >= 0 and turns.max() < 512
    assert rest.abs().max() <= UNIT / 2 + 1e-6
    ours = turns.double() * UNIT + rest.double()
    theirs = expected_turns.double() * UNIT + expected_rest.double()
    difference = torch.remainder(ours - theirs + 2 * math.pi, 4 * math.pi) - 2 * math.pi
    assert difference.abs().max() < 1e-6


@requires_gpu
@pytest.mark.parametrize("num_qubits", [4, 5, 6, 7, 8])
@pytest.mark.parametrize("reps", [1, 2, 3])
def test_random_phase_circuits_on_the_kernels_equal_qiskit(num_qubits, reps):
    pytest.importorskip("qiskit")
    rng = np.random.default_rng(10 * num_qubits + reps)
    gates, recipe = phase_circuit(num_qubits, reps, rng, 7)
    program, _ = program_for(gates, num_qubits, torch.complex64, torch.device("cuda"))
    assert fused_spec(program) is not None, program.describe()
    cuda = [Gate(g.name, g.qubits, tuple(p.cuda() if isinstance(p, torch.Tensor) else p for p in g.params))
            for g in gates]  # fmt: skip
    ours = simulate(cuda, num_qubits, dtype=torch.complex64, implementation="fused").cpu().numpy()
    assert np.abs(ours - _qiskit_states(recipe, num_qubits, 7)).max() <= 1e-5


@requires_gpu
@pytest.mark.parametrize("num_qubits", [4, 6, 8])
@pytest.mark.parametrize("shared", [False, True])
def test_kernel_states_and_gradients_equal_the_complex128_engine(num_qubits, shared):
    rng = np.random.default_rng(num_qubits + 100 * shared)
    batch = 300  # several programs, the last one partial
    gates, _ = phase_circuit(num_qubits, 2, rng, batch, scale=40.0, shared=shared)
    weights = torch.randn(batch, 2**num_qubits, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    results = []
    for dtype, implementation in ((torch.complex128, "pytorch"), (torch.complex64, "fused")):
        rebuilt, leaves = with_leaves(gates, torch.float64)
        rebuilt = [Gate(g.name, g.qubits, tuple(p.cuda() if isinstance(p, torch.Tensor) else p for p in g.params))
                   for g in rebuilt]  # fmt: skip
        states = simulate(rebuilt, num_qubits, dtype=dtype, implementation=implementation)
        loss = (states.to(torch.complex128) * weights.cuda()).real.sum() + states.abs().square()[:, :3].sum()
        results.append((states.detach().cpu().to(torch.complex128), torch.autograd.grad(loss, leaves)))
    (exact, exact_grads), (ours, our_grads) = results
    assert (ours - exact).abs().max() <= 1e-5
    for theirs, mine in zip(exact_grads, our_grads, strict=True):
        scale = theirs.abs().max().item() + 1.0
        assert (mine.cpu() - theirs.cpu()).abs().max() <= 2e-4 * scale


@requires_gpu
@pytest.mark.parametrize("name", ["pennylane-zz", "pennylane-iqp", "qiskit-zz"])
@pytest.mark.parametrize("qubits", [4, 6, 8])
def test_shipped_maps_take_the_kernels_and_match_the_pytorch_engine(name, qubits):
    pytest.importorskip("pennylane" if name.startswith("pennylane") else "qiskit")
    from qra.featuremaps import get

    fm = get(name, d_in=16, qubits=qubits).cuda()
    x = torch.randn(2, 3, 50, 16, device="cuda") * 2
    fused = fm.states(x)
    angles = fm.angles(x)
    program, _ = program_for(fm.gates(angles), qubits, torch.complex64, torch.device("cuda"))
    assert fused_spec(program) is not None
    exact = simulate(fm.gates(angles.double()), qubits, dtype=torch.complex128, implementation="pytorch")
    assert (fused.to(torch.complex128) - exact.reshape(fused.shape)).abs().max() <= 1e-5


@requires_gpu
def test_other_programs_stay_on_the_pytorch_engine_and_fused_refuses_them(monkeypatch):
    angles = torch.randn(8, 4, device="cuda", dtype=torch.float64)
    local = [Gate("ry", (q,), (angles[:, q],)) for q in range(4)] + [Gate("cx", (0, 1))]
    program, _ = program_for(local, 4, torch.complex64, torch.device("cuda"))
    assert fused_spec(program) is None
    with pytest.raises(ValueError, match="this program is"):
        simulate(local, 4, dtype=torch.complex64, implementation="fused")
    gates, _ = phase_circuit(5, 2, np.random.default_rng(3), 8)
    cuda = [Gate(g.name, g.qubits, tuple(p.cuda() if isinstance(p, torch.Tensor) else p for p in g.params))
            for g in gates]  # fmt: skip
    program, _ = program_for(cuda, 5, torch.complex64, torch.device("cuda"))
    monkeypatch.setenv(fused_program.IMPLEMENTATION_ENV, "pytorch")
    assert fused_spec(program) is None
    monkeypatch.setenv(fused_program.IMPLEMENTATION_ENV, "auto")
    assert fused_spec(program) is not None
    assert fused_spec(program, has_initial=True) is None  # an initial state: the PyTorch engine


@requires_gpu
@pytest.mark.parametrize("reps", [1, 4])
def test_kernel_memory_grows_with_the_states_not_with_the_layers(reps):
    """Forward + backward keeps the output and its gradient (2·B·2^n·8 bytes) plus [layers·K, B] coefficients.

    Per coefficient column and input: 6 bytes saved (n float16, r float32) and the slot values' gradient
    (as many slots as columns here, float32); and the backward's buffers for a chunk of rows (phase
    gradients, ``GRADIENT_CHUNK_BYTES``, and their coefficient and slot gradients), whatever the layers and rows.
    """
    from qra.kernels.phase_program import GRADIENT_CHUNK_BYTES

    n, batch = 8, 65_536
    x = torch.rand(batch, n, device="cuda", dtype=torch.float32, requires_grad=True)
    gates = []
    for _ in range(reps):
        gates += [Gate("h", (q,)) for q in range(n)] + [Gate("p", (q,), (2 * x[:, q],)) for q in range(n)]
        gates += [Gate("rzz", (i, j), (x[:, i] * x[:, j],)) for i in range(n) for j in range(i + 1, n)]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    states = simulate(gates, n, dtype=torch.complex64, implementation="fused")
    states.real.sum().backward()
    torch.cuda.synchronize()
    state_bytes = batch * 2**n * 8
    columns = reps * 48 * batch  # 36 terms padded to 48 columns a layer
    bound = 2.2 * state_bytes + (6 + 4) * columns + 1.5 * GRADIENT_CHUNK_BYTES
    assert torch.cuda.max_memory_allocated() - base <= bound


# ----------------------------------------------------------------------------------------------
# maps that give their gate parameters as one batched tensor


def assert_slot_values_match_the_gate_list(fm, x: torch.Tensor) -> None:
    """States and input gradients through ``slot_values`` equal those through the map's gate list (complex128)."""
    assert fm.slot_values(x.reshape(-1, fm.num_angles)) is not None
    results = []
    for through_values in (True, False):
        leaf = x.clone().requires_grad_()
        if through_values:
            states = fm.states(leaf)
        else:
            angles = fm.angles(leaf).reshape(-1, fm.num_angles)
            states = simulate(fm.gates(angles), fm.qubits, dtype=torch.complex128).reshape(*x.shape[:-1], -1)
        results.append((states, torch.autograd.grad((states.real * states.imag).sum() + states.real.sum(), leaf)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("name", "options"), [("pennylane-zz", {}), ("pennylane-zz", {"entanglement": "circular"}),
                                               ("pennylane-iqp", {}), ("pennylane-iqp", {"pattern": [[0, 3], [2, 1]]})])
def test_slot_values_give_the_states_and_gradients_of_the_gate_list(name, options):
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    fm = get(name, d_in=4, qubits=4, engine="native", projection="identity", **options)
    x = torch.rand(2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 6
    assert_slot_values_match_the_gate_list(fm, x)


def test_pair_products_are_the_products_of_angle_rows_and_keep_only_the_rows():
    from qra.featuremaps.slot_ops import pair_products

    rows = torch.randn(5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    first, second = torch.tensor([0, 1, 3, 4, 2]), torch.tensor([2, 4, 1, 0, 2])  # repeated qubits, a self-pair
    leaf = rows.clone().requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        theta = pair_products(leaf, first, second, shift=math.pi, scale=2.0)
    torch.testing.assert_close(theta, 2 * (math.pi - rows[first]) * (math.pi - rows[second]), rtol=1e-15, atol=0)
    assert sum(t.numel() for t in saved if t.is_floating_point()) == rows.numel()
    assert torch.autograd.gradcheck(lambda r: pair_products(r, first, second, 0.7, -1.5), (leaf,))
    with pytest.raises(ValueError, match="rows \\[qubits, batch\\]"):
        pair_products(rows[0], first, second)


def test_an_expansion_that_does_not_fit_the_program_is_refused():
    from qra.featuremaps.fused_program import _build_spec, run_fused

    gates, _ = phase_circuit(4, 2, np.random.default_rng(0), 5)
    program, _ = program_for(gates, 4, torch.complex64, torch.device("cpu"))
    spec = _build_spec(program)
    slots = spec.mixing.shape[0]
    values, wrong = torch.zeros(5, 3, dtype=torch.float64), torch.zeros(slots + 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"to the program's {slots} slots"):
        run_fused(spec, values, expansion=wrong)


def test_run_program_takes_the_slot_values_as_one_matrix():
    """A map's ``[B, S]`` slot values (here the transpose of ``[S, B]`` rows, as the maps build them) run the
    program as the list of their columns does, gradients included."""
    pytest.importorskip("pennylane")
    from qra.featuremaps import get
    from qra.featuremaps.compiler import run_program

    fm = get("pennylane-zz", d_in=4, qubits=4, engine="native", projection="identity")
    angles = torch.rand(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 6
    program, _ = program_for(fm.gates(angles[:2]), 4, torch.complex128, torch.device("cpu"))
    rows = fm.slot_values(angles).T.contiguous().requires_grad_()
    as_matrix = run_program(program, rows.T, 6)
    as_columns = run_program(program, list(rows.unbind(0)), 6)
    torch.testing.assert_close(as_matrix, as_columns, rtol=0, atol=1e-12)
    weights = torch.randn(6, 16, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    (grad_matrix,) = torch.autograd.grad((as_matrix * weights).real.sum(), rows)
    (grad_columns,) = torch.autograd.grad((as_columns * weights).real.sum(), rows)
    torch.testing.assert_close(grad_matrix, grad_columns, rtol=0, atol=1e-10)


def test_slot_values_that_disagree_with_the_gates_are_refused():
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    fm = get("pennylane-zz", d_in=4, qubits=4, engine="native", projection="identity")
    fm.slot_basis = lambda angles: (angles.T.contiguous().T, torch.ones(32, 4, dtype=torch.float64))  # a wrong one
    with pytest.raises(RuntimeError, match="slot_values\\(\\) disagrees with the parameters of its gates"):
        fm.states(torch.rand(3, 4))
    fm = get("pennylane-zz", d_in=4, qubits=4, engine="native", projection="identity")
    fm.slot_basis = lambda angles: None
    fm.slot_values = lambda angles: torch.zeros(angles.shape[0], 40, dtype=angles.dtype)  # a wrong formula
    with pytest.raises(RuntimeError, match="slot_values\\(\\) disagrees with the parameters of its gates"):
        fm.states(torch.rand(3, 4))


def test_circuit_maps_compute_queries_and_keys_in_one_call():
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    fm = get("pennylane-zz", d_in=4, qubits=4, engine="native", projection="identity")
    q, k = torch.rand(2, 3, 7, 4), torch.rand(2, 3, 5, 4)
    calls = []
    fm.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    fq, fk = fm.query_and_key_features(q, k)
    assert calls == [torch.Size([2, 3, 12, 4])]
    torch.testing.assert_close(fq, fm.query_features(q))
    torch.testing.assert_close(fk, fm(k))
    noisy = get("pennylane-zz", d_in=4, qubits=4, engine="native", projection="identity", noise={"readout": 0.1})
    assert not noisy.joint_features  # keys carry readout operators that queries do not
    assert not get("rff", d_in=4).joint_features


@pytest.mark.parametrize("used", ["both", "queries", "keys"])
def test_joint_features_give_the_gradients_of_separate_calls(used):
    """One call on queries and keys: the inputs' gradients as two calls give, also when one output is unused."""
    pytest.importorskip("pennylane")
    from qra.featuremaps import get

    fm = get("pennylane-zz", d_in=4, qubits=4, engine="native")
    generator = torch.Generator().manual_seed(0)
    q, k = torch.rand(2, 3, 7, 4, generator=generator), torch.rand(2, 3, 5, 4, generator=generator)
    weights = torch.randn(2, 3, 12, 16, dtype=torch.complex64, generator=generator)
    results = []
    for joint in (True, False):
        leaves = [q.clone().requires_grad_(), k.clone().requires_grad_()]
        fq, fk = fm.query_and_key_features(*leaves) if joint else (fm(leaves[0]), fm(leaves[1]))
        parts = {"queries": (fq * weights[..., :7, :]).real.sum(), "keys": (fk * weights[..., 7:, :]).imag.sum()}
        loss = sum(parts.values()) if used == "both" else parts[used]  # an unused output gets no gradient
        results.append(torch.autograd.grad(loss, [*leaves, fm.encoder.weight], allow_unused=True))
    for joint, separate in zip(*results, strict=True):  # an unused input: no gradient apart, zeros jointly
        # float32 sums over other batch shapes: the weight gradient differs in its last bits (3e-6 relative seen)
        expected = torch.zeros_like(joint) if separate is None else separate
        torch.testing.assert_close(joint, expected, rtol=2e-5, atol=2e-5)


def _qiskit_custom_circuit():
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    a = ParameterVector("a", 3)
    circuit = QuantumCircuit(3, global_phase=a[0] / 2)
    circuit.h(range(3))
    circuit.rz(a[0].sin() * 2, 0)
    circuit.cp(a[1] * a[2], 1, 2)
    circuit.ry(a[2], 1)
    circuit.rzz(a[1] * a[2], 0, 2)  # the same expression again: computed once
    circuit.p((a[0] - a[1]).sign() + a[2] ** 2, 2)
    return circuit


@pytest.mark.parametrize("which", ["zz-full", "zz-linear-reps3", "pauli", "custom"])
def test_qiskit_slot_values_give_the_states_and_gradients_of_the_gate_list(which):
    pytest.importorskip("qiskit")
    from qra_qiskit import QiskitCircuitMap, QiskitPauli, QiskitZZ

    if which == "custom":
        fm = QiskitCircuitMap(d_in=3, circuit=_qiskit_custom_circuit(), projection="identity")
    elif which == "pauli":
        fm = QiskitPauli(3, paulis=["Z", "XY"], reps=2, projection="identity")
    else:
        fm = QiskitZZ(4, reps=3 if "reps3" in which else 2, entanglement=which.split("-")[1], projection="identity")
    x = torch.rand(6, fm.num_angles, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 6
    assert_slot_values_match_the_gate_list(fm, x)
