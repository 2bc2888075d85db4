"""The shared parts of every noise network: the time embedding, the padding rule, the FiLM block.

A noise network maps ``(x_t, t)`` ``(B, d), (B,) → (B, d)`` over flattened padded vertex vectors,
``d = V_pad · C``. Padding vertices carry exactly zero data, so their ideal noise prediction is
known in closed form, ``ε*(x_t, t) = x_t / σ_t`` (``x_t = σ_t e`` there); :class:`NoiseNetwork`
hard-wires it so padding stays out of the learning problem.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import VertexLayout

__all__ = ["SinusoidalTimeEmbedding", "NoiseNetwork", "FiLMBlock"]


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style features of ``s = scale · t``: ``[sin(s ω_k), cos(s ω_k)]``,
    ``ω_k = 10000^{−k/(D/2−1)}``.

    Args:
        dim: embedding size ``D`` (even).
        scale: 1000 puts ``t ∈ [ε, 1]`` on DDPM's integer-step scale, so the frequencies resolve
            differences of one step.
    """

    def __init__(self, dim: int, scale: float = 1000.0):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim must be even and ≥ 4, got {dim}")
        half = dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half) / (half - 1))
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.scale = scale

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = self.scale * t.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class NoiseNetwork(nn.Module):
    """Base class: checks shapes and applies the padding rule ``ε = x_t / σ_t`` off the real vertices.

    Subclasses implement :meth:`predict` ``(B, d), (B,) → (B, d)`` and keep their constructor
    arguments in ``self.config`` (a dict of plain numbers) so :func:`~manifold_aps.diffusion.networks.build_network` can rebuild them
    from a checkpoint.
    """

    name = "base"
    uses_mesh = False  # build_network passes the mesh to networks that set this
    output_starts_at_zero = False  # True: zero-initialised output, usable as a Gaussian-residual correction

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None):
        super().__init__()
        if not isinstance(layout, VertexLayout):
            raise TypeError(f"layout must be a VertexLayout, got {type(layout).__name__}")
        self.layout = layout
        self.sde = sde or VPSDE()
        mask = layout.vertex_mask()[:, None].expand(layout.padded_vertices, layout.num_channels).reshape(-1)
        self.register_buffer("real_entries", mask.clone(), persistent=False)
        self.config: dict = {}

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.layout.dim:
            raise ValueError(f"expected x of shape (B, {self.layout.dim}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0]},), got {tuple(t.shape)}")
        dtype = next(self.parameters()).dtype
        prediction = self.predict(x.to(dtype), t.to(dtype)).to(x.dtype)
        if bool(self.real_entries.all()):
            return prediction
        padding_noise = x / self.sde.sigma(t.to(x.dtype))[:, None]
        return torch.where(self.real_entries, prediction, padding_noise)


class FiLMBlock(nn.Module):
    """``h + W₂ SiLU((1 + γ(t)) ⊙ W₁ LN(h) + β(t))`` with a zero-initialised ``W₂``."""

    zero_initialised_layer = "outer"

    def __init__(self, width: int, time_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.time = nn.Linear(time_dim, 2 * width)
        self.outer = nn.Linear(width, width)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, h: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        scale, shift = self.time(time_features).chunk(2, dim=1)
        return h + self.outer(nn.functional.silu(self.inner(self.norm(h)) * (1 + scale) + shift))
