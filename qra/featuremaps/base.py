"""The FeatureMap contract that every kernel (ours and third parties') implements.

A feature map φ turns a query or key vector x ∈ R^d_in into features φ(x); kernel attention then
scores a query/key pair by ``similarity(φ(q), φ(k))`` instead of q·k/√d.  Maps are ``nn.Module`` s so
that their random draws travel with ``state_dict`` / ``save_pretrained`` and their learnable knobs
(e.g. RFF's σ) train with the model.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ..versioned import VersionedMemo

T = TypeVar("T")


@dataclass(frozen=True)
class FourierPrologue:
    """φ(x) = scale · cos(x·Wᵀ + phase): a map's features in a form fused kernels can compute in their tiles.

    A fused kernel given this never writes φ(q), φ(k) to memory: it forms the angles from each tile
    of queries or keys, takes the cosine, uses it and, in backward, recomputes it.  ``weight`` and
    ``phase`` are differentiable tensors (gradients flow back to whatever they were built from, e.g.
    a learnable bandwidth); a sine feature is a cosine with phase −π/2.
    """

    weight: torch.Tensor  # [dim, d_in]
    phase: torch.Tensor  # [dim]
    scale: float


@dataclass(frozen=True)
class ExponentialPrologue:
    """φ(x) = scale · exp(x·Wᵀ − norm_weight·‖x‖²): positive random features (FAVOR+) in a form fused kernels compute.

    With ``stabilize`` the linear mode subtracts each query's max and the max over a sequence's real keys from
    the exponents (constants that cancel there, as :meth:`FeatureMap.log_features` does on the PyTorch path).
    """

    weight: torch.Tensor  # [dim, d_in]
    norm_weight: float
    scale: float
    stabilize: bool


class FeatureMap(nn.Module, metaclass=ABCMeta):
    """Abstract feature map φ: R^d_in -> R^dim (or C^dim for quantum states).

    Subclasses take ``d_in`` as their first argument and every other setting as a keyword
    argument with a default; those keyword arguments are the map's *parameters*: the registry
    validates them by name, and :attr:`featuremap_params` records them so a patched model can be rebuilt
    from its saved config.

    Class attributes a subclass may override:

    ``is_linear``
        True when :meth:`similarity` is the real dot product of real features, which lets
        linear-time attention factor φ(Q)(φ(K)ᵀV).
    ``is_fidelity``
        True when features are statevectors and :meth:`similarity` is their fidelity.

    A map whose features are exponentials (FAVOR+) may also implement :meth:`log_features`.
    """

    is_linear: ClassVar[bool] = True
    #: True when :meth:`forward` gives complex states and :meth:`similarity` is the exact fidelity
    #: |⟨ψx|ψy⟩|²: the fused fidelity kernel may then compute attention from the states
    is_fidelity: ClassVar[bool] = False
    #: True when the tensors :meth:`forward` returns stay alive until backward anyway, because the map's own
    #: autograd graph keeps them (a circuit map's adjoint keeps its output states): attention kernels may then
    #: save these for their backward instead of copies of their own
    keeps_features_for_backward: ClassVar[bool] = False
    #: constructor parameters that this class sets itself, for itself or for a parent, and so does not
    #: take from users (read per class, not inherited; see :func:`parameter_names`)
    fixed_parameters: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> FeatureMap:
        # Record the constructor arguments without asking subclasses to do anything: this is what
        # lets any plugin's map be saved and rebuilt by name.  The record lists the arguments in the
        # order given, then every other parameter with its default (a parameter a subclass passes
        # on through **kwargs with the default of the class that declares it).
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
        except TypeError:  # e.g. copy/pickle call __new__ without arguments; __dict__ is restored after.
            return self
        positional = [name for name in bound.arguments if name not in kwargs][: len(args) + 1]  # self, then args
        arguments = {name: bound.arguments[name] for name in positional} | dict(kwargs)
        for name in ("self", "d_in"):
            arguments.pop(name, None)
        for name, default in parameter_defaults(cls).items():
            arguments.setdefault(name, default)
        object.__setattr__(self, "_featuremap_params", arguments)
        return self

    def __init__(self, d_in: int) -> None:
        super().__init__()
        if not isinstance(d_in, int) or isinstance(d_in, bool) or d_in < 1:
            raise ValueError(f"d_in must be a positive integer, got {d_in!r}")
        self.d_in = d_in

    @property
    @abstractmethod
    def dim(self) -> int:
        """Number of features per input vector (the last axis of :meth:`forward`'s output)."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x[..., d_in]`` to ``features[..., dim]`` on x's device, differentiably."""

    def similarity(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """Kernel values between two sets of features: ``fx[..., n, dim], fy[..., m, dim] -> [..., n, m]``.

        The default is the real dot product, i.e. k(x, y) ≈ φ(x)·φ(y).
        """
        return fx @ fy.transpose(-1, -2)

    def query_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) of the queries, the left argument of :meth:`similarity`; by default the same as :meth:`forward`.

        An asymmetric similarity may need less of its left argument (the readout-noisy quantum
        kernel reads only the query's state, not the operator it builds for a key).
        """
        return self(x)

    #: whether :meth:`query_features` is :meth:`forward` and maps each row on its own, so that queries and keys
    #: may go through one call (:meth:`query_and_key_features`); circuit maps set it: a call has a fixed cost
    joint_features: bool = False

    def query_and_key_features(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(query_features(q), forward(k))`` — through one call on both when :attr:`joint_features` allows."""
        if self.joint_features and q.shape[:-2] == k.shape[:-2] and q.shape[-1] == k.shape[-1] and q.dtype == k.dtype:
            return _SplitTokens.apply(self(torch.cat([q, k], dim=-2)), q.shape[-2])
        return self.query_features(q), self(k)

    def log_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """log φ(x) for maps with positive exponential features, else None (the default).

        When given, the ``normalized`` and ``linear`` attention modes apply the FAVOR+ stabiliser in
        log space — subtract each query's max and the max over a sequence's real keys — which
        cancels exactly there and keeps exp() from underflowing.
        """
        return None

    def memoized(self, name: str, build: Callable[[], T], sources: tuple[torch.Tensor, ...], settings: tuple = ()) -> T:
        """``build()``, reused while ``sources`` are the same tensors at the same versions and ``settings`` are
        equal (:class:`qra.versioned.VersionedMemo`): a prologue derived from fixed buffers (RFF's Ω/σ) is then not
        derived again on every attention call.  Built afresh whenever a gradient must flow through it and under
        inference mode."""
        memo = self.__dict__.setdefault("_memo", VersionedMemo())
        return memo.get(name, build, sources, settings)

    def fourier_prologue(self) -> FourierPrologue | None:
        """φ as scale · cos(x·Wᵀ + phase) for fused kernels, or None (the default: φ is computed as a tensor).

        Return one only when it equals both :meth:`forward` and :meth:`query_features` (up to rounding):
        the fused linear kernel then computes φ inside its tiles and never calls them.
        """
        return None

    def exponential_prologue(self) -> ExponentialPrologue | None:
        """φ as scale · exp(x·Wᵀ − η‖x‖²) for fused kernels, or None (the default: φ is computed as a tensor).

        Return one only when it equals both :meth:`forward` and :meth:`query_features` (up to rounding), and
        its ``stabilize`` says whether :meth:`log_features` is given.
        """
        return None

    @classmethod
    def upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters recorded by an earlier version, in today's names and values (default: unchanged)."""
        return dict(params)

    @property
    def featuremap_params(self) -> dict[str, Any]:
        """The keyword arguments this map was built with (everything but ``d_in``), defaults included."""
        return dict(getattr(self, "_featuremap_params", {}))

    def extra_repr(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.featuremap_params.items())
        return f"d_in={self.d_in}, dim={self.dim}" + (f", {settings}" if settings else "")


class _SplitTokens(torch.autograd.Function):
    """The queries' and the keys' rows of one joint feature tensor, as views.

    Its backward writes both gradients into one new tensor (``torch.cat``).  Two slices would each
    give a zero-filled gradient of the whole joint tensor, summed after: for a circuit map's states
    in a MiniLM-shaped step (B = 32, N = 512, 12 heads, 6 qubits) two 192 MiB buffers instead of one.
    """

    @staticmethod
    def forward(ctx, both: torch.Tensor, count: int):
        ctx.count, ctx.total = count, both.shape[-2]
        return both[..., :count, :], both[..., count:, :]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_first: torch.Tensor | None, grad_second: torch.Tensor | None):
        reference = grad_first if grad_first is not None else grad_second
        shape = list(reference.shape)
        if grad_first is None:
            grad_first = reference.new_zeros([*shape[:-2], ctx.count, shape[-1]])
        if grad_second is None:
            grad_second = reference.new_zeros([*shape[:-2], ctx.total - ctx.count, shape[-1]])
        return torch.cat([grad_first, grad_second], dim=-2), None


def _constructor_chain(map_class: type[FeatureMap]) -> list[inspect.Signature]:
    """The ``__init__`` signatures a map's parameters come from, outermost first.

    The chain follows ``**kwargs`` up the class hierarchy: a subclass that declares only its own
    parameters and hands the rest to ``super().__init__(d_in, **kwargs)`` accepts its parents' too.
    It stops at the first constructor without ``**kwargs``, and at :class:`FeatureMap` itself.
    """
    chain = []
    for klass in map_class.__mro__:
        if "__init__" not in vars(klass) or klass is FeatureMap or not issubclass(klass, FeatureMap):
            continue
        signature = inspect.signature(klass.__init__)
        chain.append(signature)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return chain


def _user_parameters(map_class: type[FeatureMap]) -> list[inspect.Parameter]:
    """The parameters users may give, outermost class first; each class's ``fixed_parameters`` hide
    that name in its own and its parents' constructors (a subclass that sets a parent's parameter)."""
    chain = _constructor_chain(map_class)
    classes = [k for k in map_class.__mro__ if "__init__" in vars(k) and k is not FeatureMap
               and issubclass(k, FeatureMap)][: len(chain)]  # fmt: skip
    hidden: set[str] = set()
    found: dict[str, inspect.Parameter] = {}
    for klass, signature in zip(classes, chain, strict=True):
        hidden |= set(vars(klass).get("fixed_parameters", ()))
        for name, parameter in signature.parameters.items():
            if name in ("self", "d_in") or name in hidden or name in found:
                continue
            if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
                found[name] = parameter
    return list(found.values())


def parameter_names(map_class: type[FeatureMap]) -> list[str]:
    """The keyword parameters a map class accepts besides ``d_in`` (what ``get(name, d_in, **params)`` takes).

    Includes the parameters its parents accept through ``**kwargs`` (see :func:`_constructor_chain`).
    """
    return [parameter.name for parameter in _user_parameters(map_class)]


def parameter_defaults(map_class: type[FeatureMap]) -> dict[str, Any]:
    """Each parameter's default, the outermost class's where a subclass re-declares a parent's parameter."""
    return {p.name: p.default for p in _user_parameters(map_class) if p.default is not inspect.Parameter.empty}


def accepts_any_parameter(map_class: type[FeatureMap]) -> bool:
    """True when the map validates its own parameters: its last constructor in the chain takes ``**kwargs``."""
    chain = _constructor_chain(map_class)
    return bool(chain) and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in chain[-1].parameters.values())


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute features in: half-precision inputs are lifted to float32.

    Random-feature phases and exponents lose too many bits in bf16/fp16; the result is cast back
    to x's dtype by the caller.
    """
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
