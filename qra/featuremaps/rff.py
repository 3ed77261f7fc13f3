"""Random Fourier Features of the Gaussian (RBF) kernel (Rahimi & Recht 2007)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import FeatureMap, FourierPrologue, compute_dtype
from .random_draws import gaussian_frequencies, uniform_phases


class RandomFourierFeatures(FeatureMap):
    """Random Fourier features of the RBF kernel exp(-‖x−y‖² / 2σ²).

    φ(x) = sqrt(2/m) · cos(Wx + b) with W = Ω/σ, Ω ~ N(0, I), b ~ U(0, 2π), so that
    E[φ(x)·φ(y)] = exp(-‖x−y‖² / 2σ²) and the error of the estimate falls as 1/√m.

    Parameters
    ----------
    m:
        Number of features (the compute knob): attention cost grows linearly in m.
    sigma:
        Kernel bandwidth σ (the geometry knob): pairs closer than ~σ score high.  Compare it with
        the typical query–key distance of the layer being patched.
    seed:
        Seed of Ω and b.  They are buffers, so a saved model reloads to the same function.
    orthogonal:
        Draw Ω in blocks of mutually orthogonal rows with Gaussian norms (orthogonal random
        features): still unbiased, lower variance.
    sincos:
        Use [cos(Wx), sin(Wx)] / sqrt(m/2) (m/2 frequencies, no random phase) instead of the random
        phase; lower variance for the same m.  ``m`` must then be even.
    learn_sigma:
        Make σ a trainable parameter (stored as log σ so it stays positive).
    """

    def __init__(
        self,
        d_in: int,
        m: int = 128,
        sigma: float = 1.0,
        seed: int = 0,
        orthogonal: bool = False,
        sincos: bool = False,
        learn_sigma: bool = False,
    ) -> None:
        super().__init__(d_in)
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"rff: m must be a positive integer, got {m!r}")
        if sincos and m % 2:
            raise ValueError(f"rff: sincos=True needs an even m (cos and sin per frequency), got m={m}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < sigma < math.inf):
            raise ValueError(f"rff: sigma must be a finite number > 0, got {sigma!r}")
        self.m = m
        self.sincos = bool(sincos)
        frequencies = m // 2 if sincos else m
        self.register_buffer("omega", gaussian_frequencies(frequencies, d_in, seed, orthogonal))
        if not sincos:
            self.register_buffer("phase", uniform_phases(m, seed))
        log_sigma = torch.tensor(math.log(sigma), dtype=torch.float32)
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    @property
    def dim(self) -> int:
        return self.m

    @property
    def sigma(self) -> torch.Tensor:
        """The current bandwidth σ (a 0-d tensor; trainable when ``learn_sigma``)."""
        return self.log_sigma.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            omega = self.omega.to(device=x.device, dtype=dtype)
            angles = (x.to(dtype) @ omega.T) / self.log_sigma.to(dtype).exp()
            if self.sincos:
                features = torch.cat([angles.cos(), angles.sin()], dim=-1) * math.sqrt(2.0 / self.m)
            else:
                angles = angles + self.phase.to(device=x.device, dtype=dtype)
                features = angles.cos() * math.sqrt(2.0 / self.m)
        return features.to(x.dtype)

    def fourier_prologue(self) -> FourierPrologue | None:
        """W = Ω/σ and the phases (sincos: the frequencies twice, phases 0 then −π/2, since sin a = cos(a − π/2)).

        None for a subclass that redefines :meth:`forward` or :meth:`query_features`, whose features
        this formula would no longer describe.
        """
        cls = type(self)
        if cls.forward is not RandomFourierFeatures.forward or cls.query_features is not FeatureMap.query_features:
            return None
        sources = (self.omega, self.log_sigma) if self.sincos else (self.omega, self.log_sigma, self.phase)
        return self.memoized("fourier_prologue", self._fourier_prologue, sources, (self.sincos, self.m))

    def _fourier_prologue(self) -> FourierPrologue:
        weight = self.omega.float() / self.log_sigma.float().exp()
        if self.sincos:
            half = weight.shape[0]
            weight = torch.cat([weight, weight])
            phase = torch.cat([weight.new_zeros(half), weight.new_full((half,), -math.pi / 2)])
        else:
            phase = self.phase.float()
        return FourierPrologue(weight, phase, math.sqrt(2.0 / self.m))
