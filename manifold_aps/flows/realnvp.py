"""Conditional RealNVP over vectors: the APS sampler ``x = G(z, c)`` (docs/method.md,
"The sampler: a conditional flow trained without clean data").

Each of the ``depth`` steps is, in the sampling direction ``z → x``,

    ActNorm → coupling (second half given the first and c) → fixed permutation
            → coupling (second half of the permuted vector)

The couplings are :class:`~manifold_aps.flows.coupling.AffineCoupling` with an
:class:`~manifold_aps.flows.conditioners.MLPConditioner`. By default every coupling network reads
the whole condition; with ``condition_features = m`` a
:class:`~manifold_aps.flows.encoders.VectorConditionEncoder` reads it once per flow call and the
couplings read its ``m`` features (and the raw condition only through the aligned skip); without
one, each coupling's share of the condition (``W_c c`` and the aligned skip) is computed once per condition
(:meth:`ConditionalRealNVP.prepare_condition`), not once per draw. With
the ``"reverse"`` permutation the second coupling updates the half the first one read. The permutations compose to a fixed
permutation that is undone at the end, so coordinate ``i`` of ``x`` is coordinate ``i`` of the
signal and a fresh flow is exactly the identity (all couplings start at zero and ActNorm at the
identity). Log-determinants are exact sums of the couplings' log-scales.
"""

from __future__ import annotations

import torch

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.base import ConditionalFlow
from manifold_aps.flows.conditioners import MLPConditioner
from manifold_aps.flows.coupling import AffineCoupling
from manifold_aps.flows.encoders import VectorConditionEncoder
from manifold_aps.flows.permutation import Permutation

__all__ = ["ConditionalRealNVP"]


class ConditionalRealNVP(ConditionalFlow):
    """Arguments:
        dim: vector length ``d``; cond_dim: condition length (the condition is ``(B, cond_dim)``,
            or any ``(B, ...)`` tensor with that many entries, flattened).
        depth: flow steps ``K`` (24 in the paper); hidden, layers: coupling networks.
        scale_bound: bound on each coupling's per-coordinate log-scale.
        permutation: ``"reverse"`` or ``"random"`` (seeded by ``seed``).
        aligned_features: ``k > 0`` when the condition is ``k`` features per coordinate
            (``cond_dim = k · d``, e.g. APS's ``y`` and observed mask per vertex): every coupling then
            adds a per-coordinate skip from them to its shift (see
            :class:`~manifold_aps.flows.conditioners.MLPConditioner`).
        condition_features: ``m > 0``: a shared encoder (two linear maps of width ``m``) turns
            the condition into ``m`` features once, and each coupling network reads those
            instead of the ``cond_dim`` raw values; 0 (default): no encoder.
        n_steps: deprecated name of ``depth``.

    Example:
        >>> flow = ConditionalRealNVP(dim=8, cond_dim=3, depth=2, hidden=16)
        >>> c = torch.randn(5, 3)
        >>> x, log_det = flow(torch.randn(5, 8), c)
        >>> flow.sample(c, n=4).shape
        torch.Size([4, 5, 8])
    """

    def __init__(self, dim: int, cond_dim: int, depth: int = 24, hidden: int = 256, layers: int = 2,
                 scale_bound: float = 2.0, permutation: str = "reverse", seed: int = 0, aligned_features: int = 0,
                 condition_features: int = 0, n_steps: int | None = None):
        super().__init__()
        depth = self._depth(depth, n_steps)
        if dim < 2 or cond_dim < 0 or depth < 1:
            raise ValueError(f"need dim ≥ 2, cond_dim ≥ 0, depth ≥ 1; got {dim}, {cond_dim}, {depth}")
        if condition_features < 0 or (condition_features and not cond_dim):
            raise ValueError(f"condition_features must be ≥ 0 and needs a condition, got {condition_features} "
                             f"with cond_dim {cond_dim}")
        if permutation not in ("reverse", "random"):
            raise ValueError(f"permutation must be 'reverse' or 'random', got {permutation!r}")
        if aligned_features and cond_dim != aligned_features * dim:
            raise ValueError(f"aligned_features={aligned_features} needs cond_dim = {aligned_features} × {dim}, got {cond_dim}")
        self.config = dict(dim=dim, cond_dim=cond_dim, depth=depth, hidden=hidden, layers=layers,
                           scale_bound=scale_bound, permutation=permutation, seed=seed,
                           aligned_features=aligned_features, condition_features=condition_features)
        self.aligned_features = aligned_features
        self.dim, self.cond_dim = dim, cond_dim
        self.encoder = VectorConditionEncoder(cond_dim, condition_features) if condition_features else None
        mask = torch.arange(dim) >= dim // 2  # every coupling updates the second half of its input

        def coupling(coordinates: torch.Tensor) -> AffineCoupling:  # coordinates: signal index of each input entry
            conditioner = MLPConditioner(int((~mask).sum()), int(mask.sum()), cond_dim, hidden, layers,
                                         aligned_features, coordinates[mask] if aligned_features else None,
                                         condition_features)
            return AffineCoupling(mask, conditioner, scale_bound)

        generator = torch.Generator().manual_seed(seed)
        steps, total = [], torch.arange(dim)
        for _ in range(depth):
            order = torch.arange(dim - 1, -1, -1) if permutation == "reverse" else torch.randperm(dim, generator=generator)
            first = coupling(total)
            total = total[order]
            steps += [ActNorm(dim), first, Permutation(order), coupling(total)]
        steps.append(Permutation(torch.argsort(total)))  # undo the composed permutation
        self.layers = torch.nn.ModuleList(steps)
        self._projecting = [] if condition_features or not cond_dim else [
            layer.conditioner for layer in steps if isinstance(layer, AffineCoupling)]
        offset = 0
        for conditioner in self._projecting:  # [P¹(c), P²(c), …]: see prepare_condition
            conditioner.projection_at = offset
            offset += conditioner.projection_width

    def prepare_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """``[E(c), c]`` with a shared encoder; otherwise ``[P¹(c), …, P^K(c)]``, each coupling
        network's share of the flat condition (its first-layer product ``W_c c`` and aligned-skip
        shift, :meth:`~manifold_aps.flows.conditioners.MLPConditioner.condition_projection`), so
        that draws repeating a prepared condition do not re-read the ``cond_dim``-wide condition
        (``(B, cond_dim)`` when there is no condition)."""
        condition = condition.reshape(condition.shape[0], -1)
        if condition.shape[1] != self.cond_dim:
            raise ValueError(f"condition has {condition.shape[1]} entries per sample, expected {self.cond_dim}")
        if self.encoder is not None:
            return torch.cat([self.encoder(condition), condition], dim=1)
        if not self._projecting:
            return condition
        return torch.cat([conditioner.condition_projection(condition) for conditioner in self._projecting], dim=1)
