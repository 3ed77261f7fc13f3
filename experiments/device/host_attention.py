"""The host's time to issue one patched attention layer (forward + backward), and its pieces, at B = 1, N = 8.

    python experiments/device/host_attention.py [--calls 300] [--model distilbert]

At this size the GPU's work is negligible, so the time from a synchronised GPU to the last call issued is the host's
(``host_breakdown.py`` does the same for the benchmark's linear call).  Lines, host µs per call (min / p25 / median
over ``--calls``, all lines interleaved in rounds so that the host's drift touches each alike):

    layer <variant>        layer 4's self-attention module of ``qra bench train``'s model (projections, attention,
                           output projection) in train mode under bf16 autocast, ``.float().sum().backward()``
    sdpa d=64              ``F.scaled_dot_product_attention`` on q, k, v with dropout 0.1 (the stock attention)
    qra softmax            :func:`qra.attention.kernel_attention`, the rff map, softmax mode, dropout 0.1
    features q, k          :func:`qra.kernels.fourier_features` of q (times β) and of k: two calls, as the softmax
                           mode called them until round 22
    features pair          :func:`qra.kernels.fourier_query_key_features` of q (times β) and k: one call, as the
                           softmax mode calls it since round 22
    sdpa m=128             SDPA over given 128-wide features (the softmax mode's second half), dropout 0.1
    qra linear             :func:`qra.attention.kernel_attention`, rff, linear mode
    plain                  ``(v * 1).float().sum().backward()``: the ops every line shares
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from profiling import interleaved_issue_us, quartile_table

from qra import kernels
from qra.attention import _softmax_through_sdpa, kernel_attention
from qra.experiment.bench_train import train_step_model
from qra.featuremaps import get

HEADS, HEAD_DIM, FEATURES = 12, 64, 128


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--model", default="distilbert")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, not a measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    steps: dict[str, Callable[[], None]] = {}
    for variant in ("baseline", "rff-linear", "rff-softmax"):
        model = train_step_model(args.model, variant, 6, device).train()
        layer = model.distilbert.transformer.layer[4].attention if args.model == "distilbert" else None
        if layer is None:
            layer = model.bert.encoder.layer[4].attention
        hidden = torch.randn(args.batch, args.length, model.config.hidden_size, device=device)

        def layer_step(layer=layer, hidden=hidden) -> None:
            with autocast:
                out = layer(hidden.detach().requires_grad_())[0]
            out.float().sum().backward()

        steps[f"layer {variant}"] = layer_step
    shape = (args.batch, HEADS, args.length, HEAD_DIM)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    rff = get("rff", d_in=HEAD_DIM, m=FEATURES).to(device)
    prologue = rff.fourier_prologue()
    beta = torch.ones(HEADS, device=device)

    def leaves() -> list[torch.Tensor]:
        return [t.detach().requires_grad_() for t in (q, k, v)]

    def sdpa() -> None:
        F.scaled_dot_product_attention(*leaves(), dropout_p=0.1).float().sum().backward()

    def qra(mode: str) -> Callable[[], None]:
        def step() -> None:
            kernel_attention(*leaves(), rff, mode, beta=beta, dropout_p=0.1)[0].float().sum().backward()

        return step

    def features() -> None:
        lq, lk, _ = leaves()
        fq = kernels.fourier_features(lq, prologue.weight, prologue.phase, prologue.scale, beta)
        fk = kernels.fourier_features(lk, prologue.weight, prologue.phase, prologue.scale)
        (fq.float().sum() + fk.float().sum()).backward()

    def feature_pair() -> None:
        lq, lk, _ = leaves()
        fq, fk = kernels.fourier_query_key_features(lq, lk, prologue.weight, prologue.phase, prologue.scale, beta)
        (fq.float().sum() + fk.float().sum()).backward()

    fq, fk = (kernels.fourier_features(x, prologue.weight, prologue.phase, prologue.scale) for x in (q, k))

    def sdpa_features() -> None:
        lq, lk = fq.detach().requires_grad_(), fk.detach().requires_grad_()
        _softmax_through_sdpa(lq, lk, leaves()[2], None, None, 0.1).float().sum().backward()

    def plain() -> None:
        (leaves()[2] * 1).float().sum().backward()

    steps.update({"sdpa d=64": sdpa, "qra softmax": qra("softmax"), "features q, k": features,
                  "features pair": feature_pair, "sdpa m=128": sdpa_features, "qra linear": qra("linear"),
                  "plain": plain})  # fmt: skip
    times = interleaved_issue_us(steps, args.calls, synchronize=synchronize)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, {args.model}, B = {args.batch}, "
          f"N = {args.length}, {args.calls} calls; host µs to issue")  # fmt: skip
    print(quartile_table(times))

if __name__ == "__main__":
    main()
