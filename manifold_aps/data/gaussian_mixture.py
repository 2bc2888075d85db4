"""Gaussian-mixture random fields: non-Gaussian signals whose score and posterior are exact.

The prior is a mixture of ``K`` low-rank-plus-nugget Gaussians over the ``D = V · C`` real entries
(:class:`~manifold_aps.gaussian_posterior.LowRankGaussian`, e.g. Matérn fields with different mean
levels, length scales and amplitudes, :func:`matern_mixture`):

    p(x) = Σ_k w_k N(x; μ_k, Σ_k),   Σ_k = Φ_k S_k Φ_kᵀ + τ_k² I.

**Posterior** under vertex masking, ``y_o = x_o + σ n``: a mixture of the components' Gaussian
posteriors ``N(m_k, C_k)`` (:meth:`LowRankGaussian.posterior
<manifold_aps.gaussian_posterior.LowRankGaussian.posterior>`), reweighted by each component's
evidence:

    p(x | y) = Σ_k r_k N(x; m_k, C_k),
    log r_k = log w_k + log N(y_o; μ_{k,o}, Σ_{k,oo} + σ² I) − logsumexp_j(same for j),
    mean = Σ_k r_k m_k,   var = Σ_k r_k (diag C_k + (m_k − mean)²)   (law of total variance).

The evidence is the log-density of the observed entries under the component with nugget
``τ_k² + σ²``, evaluated by :meth:`LowRankGaussian.log_prob
<manifold_aps.gaussian_posterior.LowRankGaussian.log_prob>` (Woodbury and the matrix determinant
lemma, ``O(D_o k²)``).

**Exact noise prediction.** Under the VPSDE each component is noised independently, so

    p_t(x) = Σ_k w_k N(x; α_t μ_k, Γ_k),   Γ_k = α_t² Σ_k + σ_t² I,
    ε*(x, t) = −σ_t ∇log p_t(x) = Σ_k ρ_k(x, t) σ_t Γ_k⁻¹ (x − α_t μ_k),
    log ρ_k = log w_k + log N(x; α_t μ_k, Γ_k) − logsumexp_j(same for j):

the component predictions of :class:`~manifold_aps.diffusion.gaussian.GaussianNoisePredictor`
weighted by their responsibilities. With ``Σ_k = U_k diag(λ_k) U_kᵀ + c_k (I − U_k U_kᵀ)`` in the
predictor's orthonormal form (``c_k = τ_k²`` on the real entries, 0 on padding),

    log det Γ_k = Σ_i log(α_t² λ_{k,i} + σ_t²) + Σ_v log(α_t² c_{k,v} + σ_t²) − r_k log(α_t² τ_k² + σ_t²),

so every term is ``O(d r_k)`` per sample: no ``d × d`` matrix on the 4160-entry sphere layout.
Everything is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.gaussian_posterior import LowRankGaussian

__all__ = ["GaussianMixtureField", "GaussianMixturePosterior", "matern_mixture", "mixture_moments"]


def _as_tensor(values, dtype=torch.float64) -> torch.Tensor:
    """A CPU tensor of ``dtype`` from a tensor, array or list."""
    array = values.detach().cpu() if isinstance(values, torch.Tensor) else np.asarray(values)
    return torch.as_tensor(array).to(dtype)


class GaussianMixtureField:
    """``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` over ``D`` real entries (see the module docstring).

    Arguments:
        components: ``K ≥ 1`` :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` of the same
            dimension ``D = V · C`` (vertex-major), each with a positive nugget (so every density
            exists).
        weights: ``(K,)`` positive, summing to 1.

    Example:
        >>> import torch, manifold_aps as aps
        >>> mixture = matern_mixture(aps.healpix_sphere(4), means=(0.3, 0.7), length_fractions=(0.1, 0.3),
        ...                          stds=(0.1, 0.05), num_modes=60)
        >>> mixture.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 192])
    """

    def __init__(self, components, weights):
        self.components = list(components)
        if not self.components:
            raise ValueError("a mixture needs at least one component (K = 0 given)")
        if not all(isinstance(component, LowRankGaussian) for component in self.components):
            raise TypeError("components must be LowRankGaussian instances")
        dims = {component.dim for component in self.components}
        if len(dims) != 1:
            raise ValueError(f"all components must have the same dimension V·C, got {sorted(dims)}")
        if any(component.nugget_variance <= 0 for component in self.components):
            raise ValueError("every component needs a positive nugget_variance (its density must exist)")
        weights = _as_tensor(weights)
        if weights.shape != (len(self.components),):
            raise ValueError(f"weights must have shape ({len(self.components)},), one per component, "
                             f"got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError(f"weights must be positive, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got sum {float(weights.sum()):.6g}")
        self.weights = weights / weights.sum()

    @property
    def dim(self) -> int:
        return self.components[0].dim

    @property
    def num_components(self) -> int:
        return len(self.components)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, D)`` draws: a component ``k ~ w``, then ``x ~ N(μ_k, Σ_k)``."""
        labels = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        draws = torch.empty(num_samples, self.dim, dtype=torch.float64)
        for index, component in enumerate(self.components):
            chosen = labels == index
            draws[chosen] = component.sample(int(chosen.sum()), generator)
        return draws

    def _log_joint(self, x) -> torch.Tensor:
        """``log w_k + log N(x; μ_k, Σ_k)`` ``(B, K)`` per row of ``x`` ``(B, D)``."""
        return torch.log(self.weights) + torch.stack([component.log_prob(x) for component in self.components], dim=1)

    def log_prob(self, x) -> torch.Tensor:
        """``log p(x) = logsumexp_k(log w_k + log N(x; μ_k, Σ_k))`` ``(B,)``."""
        return torch.logsumexp(self._log_joint(x), dim=1)

    def responsibilities(self, x) -> torch.Tensor:
        """``p(k | x) = w_k N(x; μ_k, Σ_k) / p(x)`` ``(B, K)``. Under vertex masking ``y`` depends on
        ``k`` only through ``x``, so ``p(k | x, y) = p(k | x)`` and the average over posterior draws
        ``E_{x ~ p(x|y)}[p(k | x)] = p(k | y)``: the posterior weights."""
        return torch.softmax(self._log_joint(x), dim=1)

    def posterior(self, y, observed, noise_std: float) -> "GaussianMixturePosterior":
        """Exact posterior given ``y`` on the ``observed`` entries (conventions of
        :meth:`LowRankGaussian.posterior <manifold_aps.gaussian_posterior.LowRankGaussian.posterior>`:
        ``y`` ``(D,)`` or ``(B, D)``, ``observed`` bool of the same shape or ``(D,)``)."""
        unbatched = np.ndim(y) == 1
        y, observed = torch.atleast_2d(_as_tensor(y)), torch.atleast_2d(_as_tensor(observed, torch.bool))
        observed = observed.expand(y.shape[0], -1) if observed.shape[0] == 1 else observed
        if y.shape[-1] != self.dim or observed.shape != y.shape:
            raise ValueError(f"y {tuple(y.shape)} and observed {tuple(observed.shape)} must be (D,) or (B, D) "
                             f"with D={self.dim} (vertices × channels)")
        parts = [component.posterior(y, observed, noise_std) for component in self.components]
        weights = self.posterior_log_weights(y, observed, noise_std).exp()
        mean, std = mixture_moments(weights, [part.mean for part in parts], [part.std for part in parts])
        return GaussianMixturePosterior(mean, std, weights, self, y, observed, float(noise_std), unbatched)

    def posterior_log_weights(self, y: torch.Tensor, observed: torch.Tensor, noise_std: float) -> torch.Tensor:
        """``log r_k`` ``(B, K)`` given ``y`` ``(B, D)`` on the ``observed`` entries (bool ``(B, D)``):
        ``log w_k`` plus each component's evidence, normalised in log space (module docstring)."""
        y, observed = _as_tensor(y), _as_tensor(observed, torch.bool)
        return self.posterior_log_weights_from(torch.stack([component.log_evidence(y, observed, noise_std)
                                                            for component in self.components], dim=1))

    def posterior_log_weights_from(self, log_evidence: torch.Tensor) -> torch.Tensor:
        """``log r_k = log w_k + log p_k(y_o) − logsumexp_j (…)`` ``(B, K)`` from each component's
        ``log_evidence`` ``(B, K)`` (:meth:`LowRankGaussian.log_evidence
        <manifold_aps.gaussian_posterior.LowRankGaussian.log_evidence>`)."""
        return torch.log_softmax(torch.log(self.weights) + log_evidence, dim=1)

    @property
    def mean(self) -> torch.Tensor:
        """``Σ_k w_k μ_k`` ``(D,)``."""
        return torch.einsum("k,kd->d", self.weights, torch.stack([component.mean for component in self.components]))

    def pointwise_variance(self) -> torch.Tensor:
        """Per-entry variance ``Σ_k w_k (Σ_k,dd + (μ_k,d − mean_d)²)`` ``(D,)`` (the law of total variance)."""
        mean = self.mean
        return sum(weight * (component.pointwise_variance() + (component.mean - mean) ** 2)
                   for weight, component in zip(self.weights, self.components))

    def exact_prior(self, layout, sde=None):
        """A :class:`~manifold_aps.diffusion.DiffusionPrior` whose noise prediction is the exact one of
        the noised mixture (:class:`~manifold_aps.diffusion.gaussian.MixtureNoisePredictor`); padding entries have mean 0 and variance 0
        in every component, as in padded training data."""
        from manifold_aps.diffusion.gaussian import MixtureNoisePredictor, exact_gaussian_prior
        from manifold_aps.diffusion.prior import DiffusionPrior

        priors = [exact_gaussian_prior(component, layout, sde) for component in self.components]
        return DiffusionPrior(MixtureNoisePredictor([prior.network for prior in priors], self.weights), layout,
                              priors[0].sde)


def mixture_moments(weights: torch.Tensor, means, stds) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-entry std ``(B, D)`` of ``Σ_k r_k N(m_k, C_k)`` from the weights ``r`` ``(B, K)``
    and the components' means and marginal stds (``K`` tensors ``(B, D)``): ``mean = Σ_k r_k m_k``,
    ``var = Σ_k r_k (diag C_k + (m_k − mean)²)`` (the law of total variance)."""
    means, variances = torch.stack(list(means)), torch.stack(list(stds)) ** 2  # (K, B, D)
    mean = torch.einsum("bk,kbd->bd", weights, means)
    return mean, torch.einsum("bk,kbd->bd", weights, variances + (means - mean) ** 2).sqrt()


@dataclass
class GaussianMixturePosterior:
    """The exact posterior of a :class:`GaussianMixtureField`: ``mean`` and per-entry ``std`` ``(B, D)``
    and the posterior component probabilities ``weights`` ``(B, K)`` (unbatched input: ``(D,)`` and
    ``(K,)``); :meth:`sample` draws from the full (correlated) mixture."""

    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor
    field: GaussianMixtureField
    y: torch.Tensor
    observed: torch.Tensor
    noise_std: float
    unbatched: bool = False

    def __post_init__(self):
        if self.unbatched:
            self.mean, self.std, self.weights = self.mean[0], self.std[0], self.weights[0]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, B, D)`` draws (``(n, D)`` unbatched): per draw a component ``k ~ r(y)``, then ``x`` from
        its exact posterior (:meth:`LowRankGaussian.posterior_root
        <manifold_aps.gaussian_posterior.LowRankGaussian.posterior_root>` with every mode kept)."""
        weights = torch.atleast_2d(self.weights)
        labels = torch.multinomial(weights, num_samples, replacement=True, generator=generator).T  # (n, B)
        white = torch.randn(num_samples, *self.y.shape, generator=generator, dtype=torch.float64)
        draws = torch.empty_like(white)
        for index, component in enumerate(self.field.components):
            chosen = labels == index
            if chosen.any():
                root = component.posterior_root(self.y, self.observed, self.noise_std, component.rank)
                draws[chosen] = root.transform(white)[chosen]
        return draws[:, 0] if self.unbatched else draws


def matern_mixture(mesh, means=(0.35, 0.5, 0.65), length_fractions=(0.1, 0.2, 0.4), stds=(0.1, 0.15, 0.05),
                   weights=None, smoothness: float = 1.5, num_modes: int = 128, nugget: float = 0.05) -> GaussianMixtureField:
    """``K`` Matérn fields (:class:`~manifold_aps.data.gaussian_fields.GaussianRandomField`) on ``mesh``
    that differ in mean level, length scale and amplitude.

    Arguments:
        means, length_fractions, stds: one per component: the constant mean, the length scale as a
            fraction of the mesh's bounding-box diagonal (so the same numbers suit any mesh) and the
            area-averaged pointwise std of the smooth part.
        weights: mixture weights (default uniform).
        smoothness: ``ν`` of every component; num_modes: Laplace-Beltrami modes kept (at most V/2).
        nugget: white-noise variance of each component as a fraction of its variance.
    """
    if not len(means) == len(length_fractions) == len(stds):
        raise ValueError(f"means, length_fractions and stds need one entry per component, got lengths "
                         f"{len(means)}, {len(length_fractions)}, {len(stds)}")
    extent = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).norm())
    modes = min(num_modes, mesh.num_vertices // 2)
    components = [GaussianRandomField(mesh, length_scale=fraction * extent, smoothness=smoothness, variance=std**2,
                                      mean=mean, num_modes=modes, nugget=nugget)
                  for mean, fraction, std in zip(means, length_fractions, stds)]
    return GaussianMixtureField(components, torch.full((len(components),), 1.0 / len(components)) if weights is None
                                else weights)
