"""Activation normalisation (Kingma & Dhariwal 2018, Glow): a per-coordinate affine map.

    x = z · exp(log_scale) + bias,      log|det ∂x/∂z| = Σ log_scale

Data-dependent initialisation: the first batch passed in the normalising direction ``x → z``
(:meth:`ActNorm.inverse`) while training sets ``bias`` and ``log_scale`` to that batch's mean and
log standard deviation, so its ``z`` is standardised. Until then the layer is the identity.
"""

from __future__ import annotations

import torch

from manifold_aps.flows.base import FlowLayer

__all__ = ["ActNorm"]


class ActNorm(FlowLayer):
    """Arguments:
        dim: number of coordinates ``d``.

    Example:
        >>> layer = ActNorm(3)
        >>> z, log_det = layer.inverse(torch.randn(64, 3) * 5 + 2)  # initialises on this batch
        >>> bool(z.std(0).sub(1).abs().max() < 1e-3)
        True
    """

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(dim))
        self.bias = torch.nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor):
        """Set the parameters so that ``x`` ``(B, d)`` maps to zero mean and unit variance."""
        if x.shape[0] < 2:
            raise ValueError("ActNorm's data-dependent initialisation needs a batch of at least 2")
        self.bias.copy_(x.mean(dim=0))
        self.log_scale.copy_(x.std(dim=0).clamp_min(1e-6).log())
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``z → x``; returns ``(x, log|det ∂x/∂z|)`` with the log-det per sample ``(B,)``; ignores ``condition``."""
        x = z * self.log_scale.exp() + self.bias
        return x, self.log_scale.sum().expand(z.shape[0])

    def inverse(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x → z``; returns ``(z, log|det ∂z/∂x|)``. Initialises on the first training batch."""
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x - self.bias) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])
