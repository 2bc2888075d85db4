"""A diffusion prior over padded vertex signals: noise network + VPSDE + signal layout.

This is the object the rest of the data path uses: samplers call :meth:`DiffusionPrior.score`,
APS calls :meth:`DiffusionPrior.elbo`. Vectors are ``(B, d)`` with ``d = V_pad · C``.
"""

from __future__ import annotations

import dataclasses

import torch

from manifold_aps.diffusion.elbo import ImportanceTimeSampler, elbo_prior_term
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import VertexLayout

__all__ = ["DiffusionPrior"]


class DiffusionPrior(torch.nn.Module):
    """Arguments:
        network: ``ε_θ(x_t, t)``: ``(B, d), (B,) → (B, d)``.
        layout: the vertex layout of the signals (gives ``d`` and the real-vertex mask).
        sde: the forward SDE (default: the paper's VPSDE, β 0.1 → 20).
    """

    def __init__(self, network: torch.nn.Module, layout: VertexLayout, sde: VPSDE | None = None):
        super().__init__()
        self.network = network
        self.layout = layout
        self.sde = sde or VPSDE()
        self.time_sampler = ImportanceTimeSampler(self.sde)
        self._time_samplers = {self.sde.eps: self.time_sampler}  # by the ELBO's lower time limit

    @property
    def dim(self) -> int:
        return self.layout.dim

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``ε_θ(x_t, t)``."""
        return self.network(x, t)

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``s_θ(x_t, t) = −ε_θ(x_t, t) / σ_t``."""
        return -self.network(x, t) / self.sde.sigma(t)[:, None]

    def elbo(self, x0: torch.Tensor, num_times: int = 1, generator: torch.Generator | None = None,
             min_time: float | None = None) -> torch.Tensor:
        """The x0-dependent bound ``b'(x_0)`` per sample (see :mod:`manifold_aps.diffusion.elbo`),
        its time integral over ``[min_time, 1]`` (default ``[sde.eps, 1]``).

        Its x0-dependence is that of the prior smoothed by ``N(0, σ_ε²/α_ε² I)`` at ``ε = min_time``
        (exactly so for a Gaussian prior: docs/method.md); ``σ_ε ≈ 0.0105`` at ``ε = 10⁻³``.
        """
        eps = self.sde.eps if min_time is None else float(min_time)
        if eps not in self._time_samplers:
            self._time_samplers[eps] = ImportanceTimeSampler(dataclasses.replace(self.sde, eps=eps))
        sampler = self._time_samplers[eps]
        return elbo_prior_term(self.network, sampler.sde, x0, num_times, sampler, generator)

    def freeze(self) -> "DiffusionPrior":
        """Stop gradients into the prior's weights (APS trains only the flow)."""
        self.requires_grad_(False)
        return self.eval()
