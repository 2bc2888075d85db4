"""Exact noise predictors for Gaussian data: the ground truth every diffusion check uses.

For data ``x_0 ~ N(μ, Σ)`` the VPSDE marginal is ``p_t = N(α_t μ, α_t² Σ + σ_t² I)``, so the
score is ``∇log p_t(x) = −(α_t² Σ + σ_t² I)^{-1}(x − α_t μ)`` and the ideal noise predictor is
``ε*(x, t) = −σ_t ∇log p_t(x)``.

``Σ`` is stored as ``U diag(λ) Uᵀ + diag(c)(I − U Uᵀ)``: ``U`` ``(d, k)`` orthonormal columns,
``λ`` the variances along them and ``c`` a per-entry variance on the orthogonal complement,
constant on the entries ``U`` is supported on (a nugget) and 0 on others (e.g. padding). Then

    (α² Σ + σ² I)^{-1} r = U diag(1 / (α² λ + σ²)) Uᵀ r + (r − U Uᵀ r) / (α² c + σ²),

which costs ``O(d k)``: a low-rank-plus-nugget prior on the 4160-entry sphere layout is evaluated
without any ``d × d`` matrix. A dense ``Σ`` is the case ``k = d``, ``c = 0``.
"""

from __future__ import annotations

import math

import torch

from manifold_aps.diffusion.sde import VPSDE

__all__ = ["GaussianNoisePredictor", "MixtureNoisePredictor", "exact_gaussian_prior"]


class GaussianNoisePredictor(torch.nn.Module):
    """``ε*(x_t, t)`` for ``N(mean, covariance)`` data; a drop-in for a trained network.

    Arguments:
        mean: ``(d,)``; covariance: ``(d, d)`` symmetric positive semi-definite (zero-variance
            directions such as padding vertices are allowed).
        sde: the VPSDE whose marginals are used.

    Use :meth:`from_low_rank` for ``Φ S Φᵀ + τ² I`` covariances too large to form densely.
    """

    def __init__(self, mean: torch.Tensor, covariance: torch.Tensor | None = None, sde: VPSDE | None = None):
        super().__init__()
        self.sde = sde or VPSDE()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if covariance is not None:
            covariance = torch.as_tensor(covariance, dtype=torch.float64)
            if covariance.shape != (mean.shape[0], mean.shape[0]):
                raise ValueError(f"covariance must be (d, d) = {(mean.shape[0],) * 2}, got {tuple(covariance.shape)}")
            eigenvalues, eigenvectors = torch.linalg.eigh(0.5 * (covariance + covariance.T))
        else:  # filled by from_low_rank / from_state
            eigenvalues, eigenvectors = torch.zeros(0, dtype=torch.float64), torch.zeros(mean.shape[0], 0, dtype=torch.float64)
        self.register_buffer("mean", mean)
        self.register_buffer("eigenvalues", eigenvalues.clamp_min(0.0))
        self.register_buffer("eigenvectors", eigenvectors)
        self.register_buffer("complement_variance", torch.zeros_like(mean))

    @classmethod
    def from_low_rank(cls, mean, modes, spectrum, nugget_variance: float, support=None,
                      sde: VPSDE | None = None) -> "GaussianNoisePredictor":
        """Predictor for ``Σ = Φ diag(s) Φᵀ + τ² diag(support)``.

        Arguments:
            mean: ``(d,)``.
            modes: ``Φ`` ``(d, k)`` (any basis, zero outside ``support``).
            spectrum: ``s`` ``(k,)``.
            nugget_variance: ``τ²``.
            support: bool ``(d,)`` entries that carry the nugget (default all; padding entries are
                outside it and get variance 0).
        """
        mean = torch.as_tensor(mean, dtype=torch.float64)
        modes = torch.as_tensor(modes, dtype=torch.float64)
        spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        support = torch.ones_like(mean, dtype=torch.bool) if support is None else torch.as_tensor(support, dtype=torch.bool)
        if (modes[~support] != 0).any():
            raise ValueError("modes must vanish outside the support")
        # Φ S^{1/2} = Q R, then R Rᵀ = W Λ Wᵀ gives orthonormal U = Q W with variances Λ (+ τ²)
        factor_q, factor_r = torch.linalg.qr(modes * spectrum.clamp_min(0).sqrt())
        variances, rotation = torch.linalg.eigh(factor_r @ factor_r.T)
        predictor = cls(mean, None, sde)
        predictor.eigenvectors = factor_q @ rotation
        predictor.eigenvalues = variances.clamp_min(0.0) + nugget_variance
        predictor.complement_variance = nugget_variance * support.to(torch.float64)
        return predictor

    @classmethod
    def from_state(cls, state: dict, sde: VPSDE | None = None) -> "GaussianNoisePredictor":
        """Rebuild from :meth:`~torch.nn.Module.state_dict` (buffers only: safe for ``weights_only`` loading)."""
        predictor = cls(state["mean"], None, sde)
        for name in ("eigenvalues", "eigenvectors", "complement_variance"):
            setattr(predictor, name, state[name].to(torch.float64))
        return predictor

    def marginal_precision_apply(self, residual: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(α_t² Σ + σ_t² I)^{-1} r`` for a batch of residuals ``(B, d)``."""
        alpha2 = self.sde.alpha(t.double())[:, None] ** 2
        sigma2 = self.sde.sigma(t.double())[:, None] ** 2
        coefficients = residual @ self.eigenvectors
        in_span = coefficients @ self.eigenvectors.T
        return ((coefficients / (alpha2 * self.eigenvalues + sigma2)) @ self.eigenvectors.T
                + (residual - in_span) / (alpha2 * self.complement_variance + sigma2))

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        residual = x.double() - self.sde.alpha(t.double())[:, None] * self.mean
        return (-self.marginal_precision_apply(residual, t)).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (-self.sde.sigma(t)[:, None] * self.score(x, t)).to(x.dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact ``log N(x0; μ, Σ)`` (needs Σ positive definite)."""
        residual = x0.double() - self.mean
        coefficients = residual @ self.eigenvectors
        complement = residual - coefficients @ self.eigenvectors.T
        rank, dim = self.eigenvectors.shape[1], self.mean.shape[0]
        complement_dims = dim - rank
        if (self.eigenvalues <= 0).any() or (complement_dims > 0 and (self.complement_variance <= 0).any()):
            raise ValueError("log_prob needs a positive definite covariance")
        quadratic = (coefficients**2 / self.eigenvalues).sum(dim=1)
        log_det = torch.log(self.eigenvalues).sum()
        if complement_dims > 0:  # c is constant where positive
            c = float(self.complement_variance.max())
            quadratic = quadratic + (complement**2).sum(dim=1) / c
            log_det = log_det + complement_dims * math.log(c)
        return -0.5 * (quadratic + log_det + dim * math.log(2 * math.pi))


class MixtureNoisePredictor(torch.nn.Module):
    """``ε*(x_t, t)`` of noised Gaussian-mixture data; a drop-in for a trained network.

    Arguments:
        components: one :class:`~manifold_aps.diffusion.gaussian.GaussianNoisePredictor` per
            component, all over the same ``d`` entries and the same SDE.
        weights: ``(K,)`` mixture weights.

    The responsibilities ``ρ_k`` are a softmax of the log-joint (computed as
    ``exp(ℓ_k − logsumexp ℓ)``, stable for the ``|ℓ| ~ 10⁴`` of the sphere layout); the prediction
    is computed in float64 and returned in the input's dtype, differentiably in ``x``.
    """

    def __init__(self, components, weights):
        super().__init__()
        self.components = torch.nn.ModuleList(components)
        if len({component.mean.shape[0] for component in self.components}) != 1:
            raise ValueError("all component predictors must have the same dimension")
        self.sde = self.components[0].sde
        self.register_buffer("log_weights", torch.log(torch.as_tensor(weights, dtype=torch.float64)))

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean ``Σ_k w_k μ_k`` ``(d,)``."""
        return torch.einsum("k,kd->d", self.log_weights.exp(), torch.stack([c.mean for c in self.components]))

    def component_terms(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log w_k + log N(x; α_t μ_k, Γ_k)`` ``(B, K)`` and ``σ_t Γ_k⁻¹ (x − α_t μ_k)`` ``(K, B, d)``."""
        x, t = x.double(), t.double()
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        alpha2, sigma2 = alpha**2, sigma**2
        log_joint, predictions = [], []
        for component in self.components:
            residual = x - alpha * component.mean
            solved = component.marginal_precision_apply(residual, t)
            nugget = component.complement_variance.max()
            log_det = (torch.log(alpha2 * component.eigenvalues + sigma2).sum(1)
                       + torch.log(alpha2 * component.complement_variance + sigma2).sum(1)
                       - component.eigenvalues.shape[0] * torch.log(alpha2[:, 0] * nugget + sigma2[:, 0]))
            quadratic = (residual * solved).sum(1)
            log_joint.append(-0.5 * (quadratic + log_det + x.shape[1] * math.log(2 * math.pi)))
            predictions.append(sigma * solved)
        return torch.stack(log_joint, dim=1) + self.log_weights, torch.stack(predictions)

    def log_prob_noised(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log p_t(x)`` ``(B,)`` of the noised mixture."""
        return torch.logsumexp(self.component_terms(x, t)[0], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_joint, predictions = self.component_terms(x, t)
        responsibilities = torch.exp(log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True))
        return torch.einsum("bk,kbd->bd", responsibilities, predictions).to(x.dtype)


def exact_gaussian_prior(gaussian, layout, sde: VPSDE | None = None):
    """A :class:`~manifold_aps.diffusion.DiffusionPrior` with the exact score of a Gaussian signal.

    Arguments:
        gaussian: a :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` over the ``V · C``
            real entries in vertex-major order (e.g. a
            :class:`~manifold_aps.data.GaussianRandomField`).
        layout: the :class:`~manifold_aps.signals.VertexLayout`; padding entries get mean 0 and
            variance 0, as in padded training data.
    """
    from manifold_aps.diffusion.prior import DiffusionPrior

    real = layout.num_vertices * layout.num_channels
    if gaussian.dim != real:
        raise ValueError(f"the Gaussian has {gaussian.dim} entries, the layout {real} real entries (V·C)")
    mean = torch.zeros(layout.dim, dtype=torch.float64)
    mean[:real] = gaussian.mean
    modes = torch.zeros(layout.dim, gaussian.rank, dtype=torch.float64)
    modes[:real] = gaussian.modes
    support = torch.zeros(layout.dim, dtype=torch.bool)
    support[:real] = True
    sde = sde or VPSDE()
    predictor = GaussianNoisePredictor.from_low_rank(mean, modes, gaussian.spectrum, gaussian.nugget_variance, support, sde)
    return DiffusionPrior(predictor, layout, sde)
