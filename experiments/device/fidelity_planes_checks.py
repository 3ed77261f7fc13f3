"""The three-plane fidelity kernels checked on the GPU beside an earlier copy of the module.

    git show a25b1eb:qra/kernels/fidelity.py \\
        | sed 's/from \\._/from qra.kernels._/; s/from \\.flash/from qra.kernels.flash/' > old.py
    python experiments/device/fidelity_planes_checks.py old.py --scan 32,64,4,3   # errors by key-block tiles
    python experiments/device/fidelity_planes_checks.py old.py                    # precision and GPU time, both

``--scan``: errors of this checkout's kernels against the fp32 PyTorch path at N = 1 and 17, value dims 32, 64,
128, with the given key-block tiles (one process per tile set: a bad launch poisons the CUDA context).
Without it: the same errors for both modules at 2 and 6 qubits, then forward + backward GPU ms (CUDA-graph
replays) of SDPA and both modules at N = 512, three rounds.  Run from the repository root (it imports the
tests' helpers).
"""
import argparse
import importlib.util
import sys

import torch

sys.path.insert(0, "experiments/device")
from profiling import search_ms

from qra.kernels import fidelity as new
from tests.test_kernels import fidelity_against_oracle

parser = argparse.ArgumentParser()
parser.add_argument("old", help="an earlier copy of qra/kernels/fidelity.py with absolute imports")
parser.add_argument("--scan", help="key-block tiles BM,BN,warps,stages: only the error scan, with these tiles")
args = parser.parse_args()
spec = importlib.util.spec_from_file_location("fidelity_old", args.old)
old = importlib.util.module_from_spec(spec)
spec.loader.exec_module(old)


def errors(module, b, h, nq, nk, dim, dv, dtype, masked):
    out, got, exp, want = fidelity_against_oracle(b, h, nq, nk, dim, dv, dtype, masked, module=module)
    res = {"out": ((out.float() - exp).abs().max().item(), exp.abs().max().item())}
    for name, a, e in zip(("dq", "dk", "dv", "dbeta"), got, want, strict=True):
        a, e = (torch.view_as_real(x.resolve_conj()) if x.is_complex() else x.float() for x in (a, e))
        res[name] = ((a - e).abs().max().item(), e.abs().max().item())
    return " ".join(f"{k} {err:.2e}/{sc:.2e}" for k, (err, sc) in res.items())


if args.scan:
    tiles = tuple(int(x) for x in args.scan.split(","))
    new.BACKWARD_KV_TILES[(64, True)] = tiles
    for n in (1, 17):
        for dv in (32, 64, 128):
            print("new", tiles, "n", n, "dv", dv, errors(new, 3, 2, n, n, 64, dv, torch.bfloat16, n > 1), flush=True)
    sys.exit()
print("== dβ precision, 4 amplitudes, fp16 values, nq 17, nk 333, masked")
for name, module in (("new", new), ("old", old)):
    print(name, errors(module, 2, 3, 17, 333, 4, 64, torch.float16, True), flush=True)
    print(name, "bf16", errors(module, 2, 3, 17, 333, 4, 64, torch.bfloat16, True), flush=True)
    print(name, "64 amp bf16", errors(module, 2, 3, 100, 100, 64, 64, torch.bfloat16, True), flush=True)

print("== GPU ms (graph replays), B·N = 16,384, H = 12, 6 qubits, N = 512, bf16, fwd+bwd")
batch, heads, n, dim = 32, 12, 512, 64
s = [torch.randn(batch, heads, n, dim, dtype=torch.complex64, device="cuda") for _ in range(2)]
sq, sk = (x / torch.linalg.vector_norm(x, dim=-1, keepdim=True) for x in s)
v = torch.randn(batch, heads, n, 64, device="cuda", dtype=torch.bfloat16)
grad = torch.randn_like(v)
beta = torch.full((heads,), 8.0, device="cuda")
q, k = (torch.randn(batch, heads, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))


def step(module):
    def run():
        lv = [t.detach().requires_grad_() for t in (sq, sk, v)]
        torch.autograd.grad(module.fused_fidelity_attention(*lv, None, beta), lv, grad)
    return run


def sdpa():
    lv = [t.detach().requires_grad_() for t in (q, k, v)]
    torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(*lv), lv, grad)


for rnd in range(3):
    t = {"sdpa": search_ms(sdpa), "old": search_ms(step(old)), "new": search_ms(step(new))}
    print(rnd, " ".join(f"{k} {v:.3f}" for k, v in t.items()),
          f"ratio new {t['new'] / t['sdpa']:.3f} old {t['old'] / t['sdpa']:.3f}", flush=True)
