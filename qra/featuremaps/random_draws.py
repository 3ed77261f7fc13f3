"""Seeded random projection matrices shared by the random-feature maps.

Draws are made on the CPU from a private ``torch.Generator`` so that a seed gives the same matrix
on every device and never disturbs the global RNG.
"""

from __future__ import annotations

import torch


def gaussian_frequencies(rows: int, d_in: int, seed: int, orthogonal: bool = False) -> torch.Tensor:
    """A ``rows × d_in`` float32 matrix whose rows are marginally N(0, I_d_in).

    With ``orthogonal=True`` the rows come in blocks of ``d_in`` mutually orthogonal directions
    (Haar-random, from a sign-corrected QR), each row rescaled to the norm of an independent
    Gaussian vector (Yu et al. 2016, "Orthogonal Random Features").  Every row keeps its
    N(0, I) marginal, so kernel estimates stay unbiased, and their variance drops.
    """
    if rows < 1:
        raise ValueError(f"the number of random features must be >= 1, got {rows}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if not orthogonal:
        return torch.randn(rows, d_in, generator=generator, dtype=torch.float64).float()
    blocks = []
    for _ in range(-(-rows // d_in)):
        gaussian = torch.randn(d_in, d_in, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar measure, not QR's sign convention
        norms = torch.randn(d_in, d_in, generator=generator, dtype=torch.float64).norm(dim=1)
        blocks.append(q.T * norms.unsqueeze(1))
    return torch.cat(blocks)[:rows].float()


def uniform_phases(count: int, seed: int) -> torch.Tensor:
    """``count`` phases b ~ U(0, 2π) as float32, from a stream independent of the frequencies'."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed) + 0x9E3779B9)
    return (torch.rand(count, generator=generator, dtype=torch.float64) * (2 * torch.pi)).float()
