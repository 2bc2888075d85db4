"""Conditional RealNVP over vectors: the APS sampler ``x = G(z, c)`` of METHOD.md §4.

Each of the ``n_steps`` steps is, in the sampling direction ``z → x``,

    ActNorm → coupling (second half given the first and c) → fixed permutation
            → coupling (second half of the permuted vector)

With the ``"reverse"`` permutation the second coupling updates the half the first one read. The
permutations compose to a fixed permutation that is undone at the end, so coordinate ``i`` of ``x``
is coordinate ``i`` of the signal and a fresh flow is exactly the identity (all couplings start at
zero and ActNorm at the identity). Log-determinants are exact sums of the couplings' log-scales.
"""

from __future__ import annotations

import torch

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.coupling import AffineCoupling

__all__ = ["ConditionalRealNVP", "ConditionalFlow"]


class ConditionalFlow(torch.nn.Module):
    """Shared API of the conditional flows: ``forward``/``inverse`` over ``layers``, ``sample``, ``log_prob``.

    Subclasses fill ``self.layers`` (modules with ``forward(z, c) → (x, log_det)`` and
    ``inverse(x, c) → (z, log_det)``), set ``self.dim`` and implement :meth:`prepare_condition`.
    """

    dim: int

    def prepare_condition(self, condition: torch.Tensor) -> torch.Tensor:
        return condition

    def apply_layer(self, layer, values, condition, inverse: bool):
        """One layer ``z → x`` (or ``x → z`` when ``inverse``) with a condition from :meth:`prepare_condition`."""
        if isinstance(layer, (ActNorm, Permutation)):
            return layer.inverse(values) if inverse else layer(values)
        return layer.inverse(values, condition) if inverse else layer(values, condition)

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(B, d)`` → ``(x, log|det ∂x/∂z|)`` with ``x`` ``(B, d)`` and the log-det ``(B,)``."""
        self._check(z, condition)
        condition = self.prepare_condition(condition)
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, step = self.apply_layer(layer, z, condition, inverse=False)
            log_det = log_det + step
        return z, log_det

    def inverse(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, d)`` → ``(z, log|det ∂z/∂x|)``."""
        self._check(x, condition)
        condition = self.prepare_condition(condition)
        log_det = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for layer in reversed(self.layers):
            x, step = self.apply_layer(layer, x, condition, inverse=True)
            log_det = log_det + step
        return x, log_det

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``log q(x | c) = log N(z; 0, I) + log|det ∂z/∂x|``."""
        z, log_det = self.inverse(x, condition)
        return -0.5 * (z**2).sum(dim=1) - 0.5 * self.dim * torch.log(torch.tensor(2 * torch.pi)) + log_det

    def sample(self, condition: torch.Tensor, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws for each of the ``B`` conditions, ``(n, B, d)``, in one network evaluation."""
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        batch = condition.shape[0]
        repeated = condition.repeat(n, *([1] * (condition.dim() - 1)))
        z = torch.randn(n * batch, self.dim, generator=generator, device=condition.device, dtype=condition.dtype)
        return self(z, repeated)[0].reshape(n, batch, self.dim)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, condition: torch.Tensor):
        """Data-dependent ActNorm initialisation: pass example outputs ``x`` through ``x → z``."""
        training = self.training
        self.train()
        self.inverse(x, condition)
        self.train(training)

    def _check(self, values: torch.Tensor, condition: torch.Tensor):
        if values.dim() != 2 or values.shape[1] != self.dim:
            raise ValueError(f"expected a batch of vectors (B, {self.dim}), got {tuple(values.shape)}")
        if condition.shape[0] != values.shape[0]:
            raise ValueError(f"condition batch {condition.shape[0]} does not match the batch of {values.shape[0]} vectors")


class Permutation(torch.nn.Module):
    """A fixed permutation ``x = z[:, order]`` (volume preserving)."""

    def __init__(self, order: torch.Tensor):
        super().__init__()
        self.register_buffer("order", order.clone())
        self.register_buffer("inverse_order", torch.argsort(order))

    def forward(self, z):
        return z[:, self.order], z.new_zeros(z.shape[0])

    def inverse(self, x):
        return x[:, self.inverse_order], x.new_zeros(x.shape[0])


class ConditionalRealNVP(ConditionalFlow):
    """Arguments:
        dim: vector length ``d``; cond_dim: condition length (the condition is ``(B, cond_dim)``,
            or any ``(B, ...)`` tensor with that many entries, flattened).
        n_steps: flow steps ``K`` (24 in the paper); hidden, layers: coupling networks.
        scale_bound: bound on each coupling's per-coordinate log-scale.
        permutation: ``"reverse"`` or ``"random"`` (seeded by ``seed``).
        aligned_features: ``k > 0`` when the condition is ``k`` features per coordinate
            (``cond_dim = k · d``, e.g. APS's ``y`` and observed mask per vertex): every coupling then
            adds a per-coordinate skip from them to its shift (see :mod:`.coupling`).

    Example:
        >>> flow = ConditionalRealNVP(dim=8, cond_dim=3, n_steps=2, hidden=16)
        >>> c = torch.randn(5, 3)
        >>> x, log_det = flow(torch.randn(5, 8), c)
        >>> flow.sample(c, n=4).shape
        torch.Size([4, 5, 8])
    """

    def __init__(self, dim: int, cond_dim: int, n_steps: int = 24, hidden: int = 256, layers: int = 2,
                 scale_bound: float = 2.0, permutation: str = "reverse", seed: int = 0, aligned_features: int = 0):
        super().__init__()
        if dim < 2 or cond_dim < 0 or n_steps < 1:
            raise ValueError(f"need dim ≥ 2, cond_dim ≥ 0, n_steps ≥ 1; got {dim}, {cond_dim}, {n_steps}")
        if permutation not in ("reverse", "random"):
            raise ValueError(f"permutation must be 'reverse' or 'random', got {permutation!r}")
        if aligned_features and cond_dim != aligned_features * dim:
            raise ValueError(f"aligned_features={aligned_features} needs cond_dim = {aligned_features} × {dim}, got {cond_dim}")
        self.config = dict(dim=dim, cond_dim=cond_dim, n_steps=n_steps, hidden=hidden, layers=layers,
                           scale_bound=scale_bound, permutation=permutation, seed=seed,
                           aligned_features=aligned_features)
        self.aligned_features = aligned_features
        self.dim, self.cond_dim = dim, cond_dim
        generator = torch.Generator().manual_seed(seed)
        layers_list, total = [], torch.arange(dim)
        for _ in range(n_steps):
            order = torch.arange(dim - 1, -1, -1) if permutation == "reverse" else torch.randperm(dim, generator=generator)
            first = AffineCoupling(dim, cond_dim, "second", hidden, layers, scale_bound, aligned_features)
            first.active_coordinates.copy_(total[first.active])
            total = total[order]
            second = AffineCoupling(dim, cond_dim, "second", hidden, layers, scale_bound, aligned_features)
            second.active_coordinates.copy_(total[second.active])
            layers_list += [ActNorm(dim), first, Permutation(order), second]
        layers_list.append(Permutation(torch.argsort(total)))  # undo the composed permutation
        self.layers = torch.nn.ModuleList(layers_list)

    def prepare_condition(self, condition: torch.Tensor):
        """``(flat condition (B, cond_dim), aligned features (B, d, k) or None)``."""
        condition = condition.reshape(condition.shape[0], -1)
        if condition.shape[1] != self.cond_dim:
            raise ValueError(f"condition has {condition.shape[1]} entries per sample, expected {self.cond_dim}")
        aligned = condition.reshape(condition.shape[0], self.dim, self.aligned_features) if self.aligned_features else None
        return condition, aligned

    def apply_layer(self, layer, values, condition, inverse: bool):
        if isinstance(layer, AffineCoupling):
            flat, aligned = condition
            return layer.inverse(values, flat, aligned) if inverse else layer(values, flat, aligned)
        return super().apply_layer(layer, values, condition, inverse)
