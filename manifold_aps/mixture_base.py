"""The posterior of a Gaussian mixture as APS's base: draws, exact log-density and marginal moments.

A :class:`~manifold_aps.data.GaussianMixtureField` prior (e.g. a mixture of PPCA fitted to the
training signals, :func:`~manifold_aps.mixture_of_ppca.fit_mixture_of_ppca`) observed as ``y_o = x_o + σ n`` has
the posterior ``Σ_k r_k N(m_k, C_k)`` (docs/method.md, "Gaussian-mixture fields"). With each
component in :class:`~manifold_aps.gaussian_posterior.GaussianRoot` form,

    b = m_k + s_k ⊙ (u + E_k E_kᵀ u),   k ~ r(y),   u ~ N(0, I),
    log p(b | y) = logsumexp_k [log r_k + log N(u_k; 0, I) − log|det_k|],   u_k = root_k⁻¹(b),

each term ``O(D r_k)`` per draw; the mixture's mean and marginal std are
``m̄ = Σ r_k m_k`` and ``s̄² = Σ r_k (diag C_k + (m_k − m̄)²)`` (the law of total variance).

APS composes its flow with this base on standardised values: ``x = g(m̄ + s̄ ⊙ F((b − m̄)/s̄; c))``
with ``F`` the coupling flow and ``g`` the per-entry map, so that
``log q(x | y) = log p(b | y) − log|det ∂F| − log|det ∂g|`` (the standardisation cancels) and a
flow at the identity samples the mixture posterior exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from manifold_aps.data.gaussian_mixture import GaussianMixtureField, mixture_moments
from manifold_aps.gaussian_posterior import GaussianRoot

__all__ = ["MixtureRoot", "mixture_posterior_root"]


@dataclass
class MixtureRoot:
    """A batch of Gaussian-mixture posteriors: ``log_weights`` ``(B, K)`` (the ``log r_k``), one
    :class:`~manifold_aps.gaussian_posterior.GaussianRoot` per component in ``roots``, their
    ``log_dets`` ``(B, K)`` (``log|det_k|``, computed once: ``O(D r²)`` each), and the mixture's
    ``mean`` and marginal std ``scale`` ``(B, D)`` (the names APS's condition reads)."""

    log_weights: torch.Tensor
    roots: list[GaussianRoot]
    log_dets: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor

    def marginal_std(self) -> torch.Tensor:
        """``s̄`` ``(B, D)``: the mixture's exact per-entry posterior std."""
        return self.scale

    def to(self, *args, **kwargs) -> "MixtureRoot":
        """Every tensor moved or cast by ``Tensor.to(*args, **kwargs)``."""
        roots = [GaussianRoot(*(value.to(*args, **kwargs) for value in (root.mean, root.scale, root.directions)))
                 for root in self.roots]
        return MixtureRoot(self.log_weights.to(*args, **kwargs), roots, self.log_dets.to(*args, **kwargs),
                           self.mean.to(*args, **kwargs), self.scale.to(*args, **kwargs))

    def rows(self, index: torch.Tensor) -> "MixtureRoot":
        """The posteriors of the measurements ``index`` (a batch of indices)."""
        roots = [GaussianRoot(root.mean[index], root.scale[index], root.directions[index]) for root in self.roots]
        return MixtureRoot(self.log_weights[index], roots, self.log_dets[index], self.mean[index], self.scale[index])

    @staticmethod
    def cat(parts: list["MixtureRoot"]) -> "MixtureRoot":
        """One batch from consecutive batches ``parts`` of the same mixture."""
        roots = [GaussianRoot(*(torch.cat([getattr(part.roots[k], name) for part in parts]) for name in
                                ("mean", "scale", "directions"))) for k in range(len(parts[0].roots))]
        def joined(name):
            return torch.cat([getattr(part, name) for part in parts])

        return MixtureRoot(joined("log_weights"), roots, joined("log_dets"), joined("mean"), joined("scale"))

    def draw(self, u: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws ``b`` ``(..., B, D)`` from white noise ``u`` of that shape: a component ``k ~ r`` per
        draw (from ``generator``), then ``b = root_k.transform(u)``."""
        leading = u.shape[:-2]
        probabilities = self.log_weights.exp().expand(*leading, *self.log_weights.shape).reshape(-1, self.log_weights.shape[-1])
        labels = torch.multinomial(probabilities, 1, generator=generator).reshape(*leading, u.shape[-2], 1)
        draws = torch.zeros_like(u)
        for index, root in enumerate(self.roots):
            draws = torch.where(labels == index, root.transform(u), draws)
        return draws

    def log_prob(self, b: torch.Tensor) -> torch.Tensor:
        """``log p(b | y)`` ``(..., B)`` at ``b`` ``(..., B, D)`` (module docstring; differentiable in ``b``)."""
        dim = b.shape[-1]
        terms = []
        for index, root in enumerate(self.roots):
            u = root.whiten(b)
            terms.append(self.log_weights[:, index] - 0.5 * (u**2).sum(-1) - self.log_dets[:, index])
        return torch.logsumexp(torch.stack(terms, dim=-1), dim=-1) - 0.5 * dim * math.log(2 * math.pi)

    def standardise(self, b: torch.Tensor) -> torch.Tensor:
        """``(b − m̄) / s̄`` (the coupling flow's coordinates)."""
        return (b - self.mean) / self.scale

    def unstandardise(self, v: torch.Tensor) -> torch.Tensor:
        """``m̄ + s̄ ⊙ v``, the inverse of :meth:`standardise`."""
        return self.mean + self.scale * v


def mixture_posterior_root(field: GaussianMixtureField, y: torch.Tensor, observed: torch.Tensor,
                           noise_std: float) -> MixtureRoot:
    """The exact posterior of ``field`` given ``y`` ``(B, D)`` on the ``observed`` entries (bool,
    ``(B, D)``) with noise ``noise_std``, as a float64 :class:`MixtureRoot` (every component's
    posterior directions kept; roots and weights from one solve per component:
    :meth:`LowRankGaussian.posterior_root_and_evidence
    <manifold_aps.gaussian_posterior.LowRankGaussian.posterior_root_and_evidence>`)."""
    parts = [component.posterior_root_and_evidence(y, observed, noise_std) for component in field.components]
    roots = [root for root, _ in parts]
    log_weights = field.posterior_log_weights_from(torch.stack([evidence for _, evidence in parts], dim=1))
    mean, std = mixture_moments(log_weights.exp(), [root.mean for root in roots], [root.marginal_std() for root in roots])
    log_dets = torch.stack([root.log_det() for root in roots], dim=1)
    return MixtureRoot(log_weights, roots, log_dets, mean, std)
