"""Conditional affine coupling (Dinh et al. 2017, RealNVP; Sun & Bouman 2021, DPI): one class, split
by a boolean mask, with a pluggable conditioner network (zuko's ``MaskedCouplingTransform`` idea).

The mask splits the coordinates into an active set ``A`` (updated) and a passive set ``P`` (read).
The conditioner reads the passive values and the condition ``c`` and returns a raw log-scale and a
shift for every active coordinate:

    x_A = z_A · exp(s) + t,   x_P = z_P,   (ŝ, t) = conditioner(z_P, c),   s = bound · tanh(ŝ / bound),
    log|det ∂x/∂z| = Σ_A s.

The inverse reads the same (unchanged) passive values: ``z_A = (x_A − t) · exp(−s)``. The bounded
log-scale keeps a coupling's volume change in ``[−bound, bound]`` per coordinate; the conditioners
of :mod:`.conditioners` zero-initialise their last layer, so a fresh coupling is the identity.
"""

from __future__ import annotations

import torch

from manifold_aps.flows.base import FlowLayer

__all__ = ["AffineCoupling"]


class AffineCoupling(FlowLayer):
    """Arguments:
        mask: ``(d,)`` bool, True on the coordinates this coupling updates.
        conditioner: module called as ``conditioner(z_P, c) → (ŝ, t)``, with ``z_P`` ``(B, |P|)`` the
            passive values in coordinate order and ``ŝ``, ``t`` ``(B, |A|)`` in coordinate order
            (e.g. :class:`~manifold_aps.flows.conditioners.MLPConditioner`,
            :class:`~manifold_aps.flows.conditioners.GraphConditioner`).
        scale_bound: bound on ``|s|`` per coordinate.

    Example:
        >>> from manifold_aps.flows.conditioners import MLPConditioner
        >>> mask = torch.tensor([False, False, False, True, True, True])
        >>> coupling = AffineCoupling(mask, MLPConditioner(3, 3, cond_dim=2))
        >>> z, c = torch.randn(4, 6), torch.randn(4, 2)
        >>> x, log_det = coupling(z, c)
        >>> bool(torch.equal(x, z)), log_det.tolist()  # identity at initialisation
        (True, [0.0, 0.0, 0.0, 0.0])
    """

    def __init__(self, mask: torch.Tensor, conditioner: torch.nn.Module, scale_bound: float = 2.0):
        super().__init__()
        if mask.dim() != 1 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a (d,) bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
        self.conditioner = conditioner
        self.scale_bound = float(scale_bound)
        # rebuilt from the constructor arguments (the flows' configs), so not part of the state dict
        self.register_buffer("active", mask.nonzero().squeeze(1), persistent=False)
        self.register_buffer("passive", (~mask).nonzero().squeeze(1), persistent=False)
        passive_count = int((~mask).sum())
        self.split = passive_count if not mask[:passive_count].any() else None  # passive first, then active

    def _scale_shift(self, passive: torch.Tensor, condition: torch.Tensor | None):
        raw_scale, shift = self.conditioner(passive, condition)
        return self.scale_bound * torch.tanh(raw_scale / self.scale_bound), shift

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``z → x``; returns ``(x, log|det ∂x/∂z|)``."""
        log_scale, shift = self._scale_shift(self._passive_values(z), condition)
        return self._with_active(z, self._active_values(z) * log_scale.exp() + shift), log_scale.sum(dim=1)

    def inverse(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x → z``; returns ``(z, log|det ∂z/∂x|)``."""
        log_scale, shift = self._scale_shift(self._passive_values(x), condition)
        return self._with_active(x, (self._active_values(x) - shift) * torch.exp(-log_scale)), -log_scale.sum(dim=1)

    # A mask that splits the vector into a passive first part and an active rest (RealNVP's) is read
    # with slices; any other mask with index_select / index_copy (several times faster on CPU than
    # advanced indexing along dim 1).
    def _passive_values(self, values: torch.Tensor) -> torch.Tensor:
        if self.split is not None:
            return values[:, : self.split]
        return values.index_select(1, self.passive)

    def _active_values(self, values: torch.Tensor) -> torch.Tensor:
        if self.split is not None:
            return values[:, self.split:]
        return values.index_select(1, self.active)

    def _with_active(self, values: torch.Tensor, active_values: torch.Tensor) -> torch.Tensor:
        """``values`` with its active entries replaced by ``active_values`` (a new tensor)."""
        if self.split is not None:
            return torch.cat([values[:, : self.split], active_values], dim=1)
        return values.index_copy(1, self.active, active_values)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of package 0.1.0 stored the coupling network's entries on the coupling itself
        # (``net.*``, ``skip``, ``active_coordinates``; mesh couplings ``convs.*``, ``head.*``,
        # ``edge_index``, ``active``): they now belong to the conditioner.
        nested = prefix + "conditioner."
        for key in [key for key in state_dict if key.startswith(prefix) and not key.startswith(nested)]:
            state_dict[nested + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
