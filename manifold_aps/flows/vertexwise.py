"""A per-entry monotone map in signal space, applied after APS's Gaussian base: what lets a sampler
sharpen the base's Gaussian marginals (MNIST strokes are 0 or 1) without paying for it V-fold.

At every real entry ``(v, c)``, with the base's posterior mean ``m`` there,

    g(x) = m + d + a (x − m) + Σ_k b_k tanh((x − c_k) / w_k),      a, b_k, w_k > 0,

    log|g'(x)| = log(a + Σ_k (b_k / w_k) sech²((x − c_k) / w_k)),

strictly increasing, so invertible. Its parameters ``(a, d, b, c, w)`` come from one small MLP
shared by all vertices, reading per vertex what the sampler knows there (``y``, the observed mask,
the base's posterior mean and marginal std, the prior's mean and std): ``O(V · width²)`` per
measurement, once for all its draws, and every vertex of every measurement is a training example.
Centres and widths are in units of the base's marginal std around its mean, so one map fits any
data scale. It starts as the identity up to ``b_k ≈ 0.002 σ``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VertexwiseMonotone"]

_SOFTPLUS_INVERSE_OF_ONE = math.log(math.e - 1.0)


class VertexwiseMonotone(nn.Module):
    """Arguments:
        channels: signal channels ``C``; features: per-vertex feature channels ``F``.
        components: tanh terms ``K``; width, depth: the shared MLP.

    Call ``map(x, features, mean, scale)`` with ``x`` ``(..., B, V, C)`` (leading axes: draws),
    ``features`` ``(B, V, F)``, ``mean`` and ``scale`` ``(B, V, C)`` (the base's posterior mean and
    marginal std): returns ``(g(x), log|det ∂g/∂x|)``, the log-det ``(..., B)``.
    """

    def __init__(self, channels: int, features: int, components: int = 4, width: int = 32, depth: int = 2):
        super().__init__()
        if min(channels, features, components, width, depth) < 1:
            raise ValueError(f"need channels, features, components, width, depth ≥ 1, got "
                             f"{channels}, {features}, {components}, {width}, {depth}")
        self.config = dict(channels=channels, features=features, components=components, width=width, depth=depth)
        layers, size = [], features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, channels * (2 + 3 * components))  # a, d, then b, c, w per component
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            bias = self.head.bias.view(channels, 2 + 3 * components)
            bias.zero_()
            bias[:, 0] = _SOFTPLUS_INVERSE_OF_ONE  # a = 1
            bias[:, 2:2 + components] = -6.0  # b ≈ 0.0025 σ
            bias[:, 2 + components:2 + 2 * components] = torch.linspace(-2.0, 2.0, components)  # centres in σ
            bias[:, 2 + 2 * components:] = _SOFTPLUS_INVERSE_OF_ONE  # widths σ

    def parameters_at(self, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> dict:
        """``a, d, b, c, w``: ``(B, V, C)`` for ``a, d``, ``(B, V, C, K)`` for the others, in signal units."""
        K, C = self.config["components"], self.config["channels"]
        raw = self.head(self.trunk(features)).view(*features.shape[:2], C, 2 + 3 * K)
        scale_ = scale[..., None]
        return dict(a=nn.functional.softplus(raw[..., 0]), d=raw[..., 1] * scale,
                    b=nn.functional.softplus(raw[..., 2:2 + K]) * scale_,
                    c=mean[..., None] + raw[..., 2 + K:2 + 2 * K] * scale_,
                    w=nn.functional.softplus(raw[..., 2 + 2 * K:]) * scale_ + 1e-6)

    def forward(self, x: torch.Tensor, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                log_det: bool = True):
        """``(g(x), log|det ∂g/∂x|)``; with ``log_det=False`` (sampling) ``(g(x), None)``, cheaper."""
        if features.shape[-1] != self.config["features"] or x.shape[-3:] != mean.shape[-3:]:
            raise ValueError(f"expected x (..., B, V, {self.config['channels']}) and features (B, V, "
                             f"{self.config['features']}), got {tuple(x.shape)} and {tuple(features.shape)}")
        y, slope = self.evaluate(x, mean, self.parameters_at(features, mean, scale), slope=log_det)
        return y, None if slope is None else torch.log(slope).flatten(-2).sum(-1)

    @staticmethod
    def evaluate(x: torch.Tensor, mean: torch.Tensor, p: dict, slope: bool = True):
        """``(g(x), g'(x))`` entry by entry for the parameters ``p`` of :meth:`parameters_at`
        (``g'`` None when ``slope`` is False)."""
        tanh = torch.tanh((x[..., None] - p["c"]) / p["w"])
        y = mean + p["d"] + p["a"] * (x - mean) + (p["b"] * tanh).sum(-1)
        if not slope:
            return y, None
        return y, p["a"] + (p["b"] / p["w"] * (1 - tanh**2)).sum(-1)
