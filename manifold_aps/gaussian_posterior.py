"""Exact posteriors under low-rank-plus-nugget Gaussian priors, and optimal interpolation.

A prior ``x ~ N(μ, Σ)`` with ``Σ = Φ S Φᵀ + τ² I`` (``Φ`` ``(D, k)``, ``S = diag(s)``) observed
as ``y_o = x_o + σ n`` on a subset ``o`` of the entries has the closed-form posterior (Woodbury in
the ``k``-dimensional mode space, ``O(D k²)`` per measurement):

    P = (S⁻¹ + Φ_oᵀ Φ_o / (σ² + τ²))⁻¹,
    w = σ² / (σ² + τ²) on observed entries, 1 on hidden ones,
    d = τ² σ² / (σ² + τ²) on observed entries, τ² on hidden ones,
    Σ_post = diag(d) + W Φ P Φᵀ W,
    μ_post = μ + (τ² / (σ² + τ²)) o ⊙ (y − μ) + W Φ P Φ_oᵀ (y_o − μ_o) / (σ² + τ²),

equal to ``(Σ⁻¹ + AᵀA/σ²)⁻¹`` and ``Σ_post (Σ⁻¹ μ + Aᵀ y/σ²)`` for the selection ``A``.

*Optimal interpolation* (what climate scientists call it; kriging elsewhere) is this posterior
with the Gaussian fitted to training signals. :func:`fit_ppca` fits probabilistic PCA
(Tipping & Bishop 1999): ``Φ`` the top-``k`` principal directions, ``s_i = ℓ_i − τ²`` and ``τ²``
the mean of the discarded eigenvalues ``ℓ_{k+1..D}`` of the sample covariance.
:func:`optimal_interpolation` picks ``k`` on validation signals by the imputation error on hidden
entries under the task's own operator; :func:`fit_optimal_interpolation` does so for measured
vertex signals, and :func:`fit_gaussian_base` is the rank selection of
:func:`~manifold_aps.aps.fit` (a held-out tenth of the training signals serves as validation).
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from manifold_aps.operators import Measurement, RandomVertexMask
from manifold_aps.signals import VertexLayout

__all__ = ["LowRankGaussian", "GaussianPosterior", "GaussianRoot", "square_root", "fit_ppca", "optimal_interpolation",
           "fit_optimal_interpolation", "fit_gaussian_base", "candidate_ranks", "held_out_tenth",
           "posterior_root_every_direction"]

DEFAULT_RANKS = (4, 8, 16, 32, 64, 128, 256)


@dataclass
class GaussianPosterior:
    """Posterior ``mean`` and per-entry ``std`` ``(B, D)``; ``covariance`` ``(B, D, D)`` if asked."""

    mean: torch.Tensor
    std: torch.Tensor
    covariance: torch.Tensor | None = None

    def squeeze(self) -> "GaussianPosterior":
        covariance = None if self.covariance is None else self.covariance[0]
        return GaussianPosterior(self.mean[0], self.std[0], covariance)


@dataclass
class GaussianRoot:
    """Gaussians ``N(mean, Σ)`` in square-root form, one per row of the batch:

        x = mean + scale ⊙ (u + E (Eᵀ u)),   u ~ N(0, I),   log|det ∂x/∂u| = Σ log scale + log det(I_r + EᵀE)

    with ``mean, scale`` ``(B, D)`` and ``directions`` ``E`` ``(B, D, r)``; built by :func:`square_root`.
    """

    mean: torch.Tensor
    scale: torch.Tensor
    directions: torch.Tensor

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(..., B, D)`` → ``x`` of the same shape."""
        E = self.directions
        return self.mean + self.scale * (u + torch.einsum("bdr,...br->...bd", E, torch.einsum("bdr,...bd->...br", E, u)))

    def whiten(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`transform` for ``x`` ``(..., B, D)``: ``u = (I + E Eᵀ)⁻¹ ((x − mean) / scale)``
        with ``(I + E Eᵀ)⁻¹ = I − E diag(1 / (1 + ‖E_:r‖²)) Eᵀ`` (the columns of ``E`` are orthogonal,
        see :meth:`marginal_std`)."""
        w = (x - self.mean) / self.scale
        E = self.directions
        column_norms = (E**2).sum(dim=1)  # ‖E_:r‖², (B, r)
        return w - torch.einsum("bdr,...br->...bd", E, torch.einsum("bdr,...bd->...br", E, w) / (1 + column_norms))

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`whiten` for ``x`` ``(B, D)`` and ``log|det ∂u/∂x| = −log_det()``."""
        return self.whiten(x), -self.log_det()

    def marginal_std(self) -> torch.Tensor:
        """``√Σ_dd`` ``(B, D)``: ``Σ_dd = scale_d² [(I + E Eᵀ)²]_dd = scale_d² (1 + Σ_r E_dr² (2 + ‖E_:r‖²))``,
        in ``O(D r)``: the columns of ``E`` are orthogonal (``E = B U diag(c)`` with ``U`` the
        eigenvectors of ``BᵀB``, as :func:`square_root` and ``posterior_root_every_direction``
        build it), so ``EᵀE`` is diagonal."""
        squares = self.directions**2
        column_norms = squares.sum(dim=1)  # ‖E_:r‖², (B, r)
        return self.scale * (1 + torch.einsum("bdr,br->bd", squares, 2 + column_norms)).sqrt()

    def log_det(self) -> torch.Tensor:
        """``log|det ∂x/∂u|`` ``(B,)`` ``= Σ log scale + Σ_r log(1 + ‖E_:r‖²)`` (the columns of ``E``
        are orthogonal, see :meth:`marginal_std`, so ``det(I_r + EᵀE)`` is the product of its diagonal):
        ``O(D r)`` per row."""
        return torch.log(self.scale).sum(dim=-1) + torch.log1p((self.directions**2).sum(dim=1)).sum(dim=-1)


def square_root(mean: torch.Tensor, factor: torch.Tensor, diagonal: torch.Tensor, rank: int) -> GaussianRoot:
    """Symmetric square root of ``Σ = diag(diagonal) + A Aᵀ`` (``A`` = ``factor`` ``(B, D, k)``),
    keeping the ``rank`` leading directions of ``A Aᵀ`` exactly and every marginal variance exactly.

    ``F`` = the best rank-``r`` part of ``A``; ``scale² = diagonal + rowsum(A²) − rowsum(F²)``;
    with ``B = F / scale``, ``BᵀB = U diag(λ) Uᵀ`` and ``E = B U diag(1 / (1 + √(1 + λ)))^{1/2}``,
    ``(I + E Eᵀ)² = I + B Bᵀ``, so ``x`` of :class:`GaussianRoot` has covariance ``diag(scale²) + F Fᵀ``,
    and ``log det(I + E Eᵀ) = ½ Σ log(1 + λ)``.
    """
    gram = factor.transpose(1, 2) @ factor
    _, vectors = torch.linalg.eigh(gram)  # ascending
    leading = factor @ vectors[..., factor.shape[-1] - min(rank, factor.shape[-1]):]  # rank 0: diagonal only
    residual = ((factor**2).sum(-1) - (leading**2).sum(-1)).clamp_min(0)
    scale = (diagonal + residual).sqrt()
    whitened = leading / scale[..., None]
    values, rotation = torch.linalg.eigh(whitened.transpose(1, 2) @ whitened)
    values = values.clamp_min(0)
    directions = (whitened @ rotation) * (1.0 / (1.0 + torch.sqrt(1.0 + values))).sqrt()[:, None, :]
    return GaussianRoot(mean, scale, directions)


class LowRankGaussian:
    """``N(mean, modes · diag(spectrum) · modesᵀ + nugget_variance · I)`` in float64.

    Arguments:
        mean: ``(D,)`` or a scalar.
        modes: ``Φ`` ``(D, k)`` (any full-column-rank basis; not necessarily orthonormal).
        spectrum: ``s`` ``(k,)``, positive.
        nugget_variance: ``τ² ≥ 0``.
    """

    def __init__(self, mean, modes, spectrum, nugget_variance: float = 0.0):
        self.modes = torch.as_tensor(modes, dtype=torch.float64).contiguous()
        self.spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        mean = torch.as_tensor(mean, dtype=torch.float64)
        self.mean = mean.expand(self.modes.shape[0]).clone() if mean.dim() == 0 else mean
        self.nugget_variance = float(nugget_variance)
        if self.modes.dim() != 2 or self.spectrum.shape != (self.modes.shape[1],) or self.mean.shape != (self.modes.shape[0],):
            raise ValueError(f"inconsistent shapes: mean {tuple(self.mean.shape)}, modes {tuple(self.modes.shape)}, "
                             f"spectrum {tuple(self.spectrum.shape)}")
        if (self.spectrum <= 0).any() or self.nugget_variance < 0:
            raise ValueError("spectrum must be positive and nugget_variance ≥ 0")

    @property
    def dim(self) -> int:
        return self.modes.shape[0]

    @property
    def rank(self) -> int:
        return self.modes.shape[1]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, D)`` draws ``μ + Φ (√s ⊙ a) + τ ε``."""
        coefficients = torch.randn(num_samples, self.rank, generator=generator, dtype=torch.float64)
        white = torch.randn(num_samples, self.dim, generator=generator, dtype=torch.float64)
        return self.mean + (coefficients * self.spectrum.sqrt()) @ self.modes.T + math.sqrt(self.nugget_variance) * white

    def covariance(self) -> torch.Tensor:
        """Dense ``(D, D)`` covariance."""
        return (self.modes * self.spectrum) @ self.modes.T + self.nugget_variance * torch.eye(self.dim, dtype=torch.float64)

    def pointwise_variance(self) -> torch.Tensor:
        return (self.modes**2) @ self.spectrum + self.nugget_variance

    def log_prob(self, x) -> torch.Tensor:
        """``log N(x; μ, Σ)`` per row of ``x`` ``(B, D)`` (needs ``τ² > 0``), via Woodbury and the
        matrix determinant lemma."""
        if self.nugget_variance <= 0:
            raise ValueError("log_prob needs a positive nugget_variance")
        x = torch.as_tensor(x, dtype=torch.float64)
        residual = torch.atleast_2d(x) - self.mean
        tau2 = self.nugget_variance
        inner = torch.diag(1.0 / self.spectrum) + self.modes.T @ self.modes / tau2
        cholesky = torch.linalg.cholesky(inner)
        projected = residual @ self.modes / tau2
        solved = torch.cholesky_solve(projected.T, cholesky).T
        quadratic = (residual**2).sum(dim=1) / tau2 - (projected * solved).sum(dim=1)
        log_det = (self.dim * math.log(tau2) + torch.log(self.spectrum).sum()
                   + 2 * torch.log(torch.diagonal(cholesky)).sum())
        return -0.5 * (quadratic + log_det + self.dim * math.log(2 * math.pi))

    def log_evidence(self, y, observed, noise_std: float) -> torch.Tensor:
        """``log N(y_o; μ_o, Σ_oo + σ² I)`` ``(B,)``: the density of each row's ``observed`` entries of
        ``y`` ``(B, D)`` (conventions of :meth:`posterior`), in blocks, by Woodbury and the matrix
        determinant lemma with ``v = τ² + σ²``, ``M_o = Φᵀ diag(o) Φ``, ``L Lᵀ = S⁻¹ + M_o / v``,
        ``r = o ⊙ (y − μ)`` and ``n_o = Σ o``:

            −2 log p = rᵀr / v − ‖L⁻¹ Φᵀ r / v‖² + n_o log(2π v) + Σ log s + 2 Σ log diag L.
        """
        y, observed, noise_variance = self._checked(y, observed, noise_std)
        total = noise_variance + self.nugget_variance
        values = []
        for start in range(0, y.shape[0], self.BLOCK):
            rows, seen = y[start:start + self.BLOCK], observed[start:start + self.BLOCK]
            mask = seen.to(torch.float64)
            residual = torch.where(seen, rows - self.mean, torch.zeros_like(rows))
            observed_gram = (mask[:, :, None] * self.modes).transpose(1, 2) @ self.modes
            cholesky = torch.linalg.cholesky(torch.diag(1.0 / self.spectrum) + observed_gram / total)
            half = torch.linalg.solve_triangular(cholesky, (residual @ self.modes / total)[..., None], upper=False)
            values.append(_log_evidence(residual, mask, half, cholesky, total, self.spectrum))
        return torch.cat(values)

    def posterior(self, y, observed, noise_std: float, full_covariance: bool = False) -> GaussianPosterior:
        """Exact posterior given ``y`` on the ``observed`` entries (see the module docstring).

        Arguments:
            y: ``(D,)`` or ``(B, D)``; entries at hidden positions are ignored.
            observed: bool of the same shape (or ``(D,)`` shared by the batch).
            noise_std: ``σ ≥ 0`` (σ = 0 needs a positive nugget).
            full_covariance: also return ``(B, D, D)`` covariances (small ``D`` only).
        """
        unbatched = np.ndim(y) == 1
        means, variances, covariances = [], [], []
        for mean, diagonal, factor in self._parts_in_blocks(y, observed, noise_std):
            means.append(mean)
            variances.append(diagonal + (factor**2).sum(dim=-1))
            if full_covariance:
                covariances.append(factor @ factor.transpose(1, 2) + torch.diag_embed(diagonal))
        result = GaussianPosterior(torch.cat(means), torch.cat(variances).sqrt(),
                                   torch.cat(covariances) if full_covariance else None)
        return result.squeeze() if unbatched else result

    BLOCK = 16  # measurements per block: bounds the (block, k, D) work array

    def root(self, rank: int) -> GaussianRoot:
        """This Gaussian in :class:`GaussianRoot` form (batch of one), ``rank`` directions kept."""
        factor = (self.modes * self.spectrum.sqrt())[None]
        return square_root(self.mean[None], factor, torch.full((1, self.dim), self.nugget_variance, dtype=torch.float64),
                           rank)

    def posterior_root(self, y, observed, noise_std: float, rank: int) -> GaussianRoot:
        """The exact posterior (as :meth:`posterior`, ``(B, D)`` inputs) in :class:`GaussianRoot`
        form with the ``rank`` leading directions of its low-rank part (marginals exact).

        With every direction kept (``rank ≥`` :attr:`rank`) and ``τ² > 0`` the cheaper exact solve
        :func:`posterior_root_every_direction` is used (the same root up to rounding and the signs
        of the directions)."""
        y, observed, noise_variance = self._checked(y, observed, noise_std)
        starts = range(0, y.shape[0], self.BLOCK)
        if rank >= self.rank and self.nugget_variance > 0:
            roots = [posterior_root_every_direction(self, y[i:i + self.BLOCK], observed[i:i + self.BLOCK], noise_std,
                                                    self.modes_gram) for i in starts]
        else:
            roots = [square_root(mean, factor, diagonal, rank) for mean, diagonal, factor in
                     (self._posterior_parts(y[i:i + self.BLOCK], observed[i:i + self.BLOCK], noise_variance)
                      for i in starts)]
        return GaussianRoot(*(torch.cat([getattr(r, name) for r in roots]) for name in
                              ("mean", "scale", "directions")))

    def posterior_root_and_evidence(self, y, observed, noise_std: float) -> tuple[GaussianRoot, torch.Tensor]:
        """:meth:`posterior_root` with every direction kept and :meth:`log_evidence`, from one
        ``M_o`` and one Cholesky factor per measurement (``τ² > 0`` needed): what a mixture's
        posterior needs of each component."""
        y, observed, _ = self._checked(y, observed, noise_std)
        parts = [_root_and_evidence(self, y[i:i + self.BLOCK], observed[i:i + self.BLOCK], noise_std, self.modes_gram)
                 for i in range(0, y.shape[0], self.BLOCK)]
        root = GaussianRoot(*(torch.cat([getattr(part[0], name) for part in parts]) for name in
                              ("mean", "scale", "directions")))
        return root, torch.cat([part[1] for part in parts])

    @functools.cached_property
    def modes_gram(self) -> torch.Tensor:
        """``ΦᵀΦ`` ``(k, k)``, computed once per Gaussian."""
        return self.modes.T @ self.modes

    def _checked(self, y, observed, noise_std: float):
        """The inputs of :meth:`posterior` as float64 ``(B, D)`` and bool ``(B, D)``, and ``σ²``."""
        y = torch.as_tensor(y.detach().cpu() if isinstance(y, torch.Tensor) else np.asarray(y), dtype=torch.float64)
        observed = torch.as_tensor(observed.detach().cpu() if isinstance(observed, torch.Tensor) else np.asarray(observed))
        y, observed = torch.atleast_2d(y), torch.atleast_2d(observed).to(torch.bool)
        if observed.shape[0] == 1 and y.shape[0] > 1:
            observed = observed.expand(y.shape[0], -1)
        if y.shape[-1] != self.dim or observed.shape != y.shape:
            raise ValueError(f"y {tuple(y.shape)} and observed {tuple(observed.shape)} must be (D,) or (B, D) with D={self.dim} (vertices × channels)")
        noise_variance = float(noise_std) ** 2
        if not math.isfinite(noise_variance) or noise_variance + self.nugget_variance <= 0:
            raise ValueError("need noise_std > 0 or a positive nugget: a noise-free, nugget-free posterior is degenerate")
        return y, observed, noise_variance

    def _parts_in_blocks(self, y, observed, noise_std: float):
        """Check and batch the inputs of :meth:`posterior`; yield :meth:`_posterior_parts` per block."""
        y, observed, noise_variance = self._checked(y, observed, noise_std)
        for i in range(0, y.shape[0], self.BLOCK):
            yield self._posterior_parts(y[i:i + self.BLOCK], observed[i:i + self.BLOCK], noise_variance)

    def _posterior_parts(self, y, observed, noise_variance: float):
        """Posterior mean, diagonal ``d`` and factor ``A = W Φ chol(P)`` ``(B, D, k)`` (Σ_post = diag(d) + A Aᵀ)."""
        nugget = self.nugget_variance
        total = noise_variance + nugget
        mask = observed.to(torch.float64)
        residual = torch.where(observed, y - self.mean, torch.zeros_like(y))
        modes = self.modes
        precision = torch.diag_embed(1.0 / self.spectrum).expand(y.shape[0], -1, -1) + torch.einsum(
            "bv,vi,vj->bij", mask / total, modes, modes)
        cholesky = torch.linalg.cholesky(precision)
        weights = 1.0 - mask * (nugget / total)
        diagonal = torch.where(observed, torch.full_like(y, nugget * noise_variance / total), torch.full_like(y, nugget))
        projected = torch.cholesky_solve((residual / total @ modes)[..., None], cholesky)[..., 0]
        mean = self.mean + mask * residual * (nugget / total) + weights * (projected @ modes.T)
        whitened = torch.linalg.solve_triangular(cholesky, modes.T.expand(y.shape[0], -1, -1), upper=False)
        return mean, diagonal, whitened.transpose(1, 2) * weights[..., None]


def posterior_root_every_direction(base: LowRankGaussian, y: torch.Tensor, observed: torch.Tensor, noise_std: float,
                                   modes_gram: torch.Tensor | None = None) -> GaussianRoot:
    """``base.posterior_root(y, observed, noise_std, base.rank)`` (every posterior direction kept)
    with two ``D k²`` products per measurement instead of six (``τ² > 0`` needed).

    With ``Σ_post = diag(d) + A Aᵀ``, ``A = W Φ C``, ``C = L⁻ᵀ``,
    ``L Lᵀ = S⁻¹ + M_o / (σ² + τ²)``, ``M_o = Φᵀ diag(o) Φ`` (the notation of
    this module), keeping every direction of ``A Aᵀ`` gives
    ``scale = √d`` and, for ``B = A / scale`` (``W² / d`` is ``1/τ²`` on hidden entries and
    ``1/τ² − 1/(σ² + τ²)`` on observed ones),

        BᵀB = Cᵀ (ΦᵀΦ / τ² − M_o / (σ² + τ²)) C,

    a ``k × k`` matrix from ``ΦᵀΦ`` (``modes_gram``, computed once per Gaussian) and ``M_o`` (which
    the precision needs anyway). With ``BᵀB = U diag(λ) Uᵀ``,
    ``E = B U diag(1 / (1 + √(1 + λ)))^{1/2}`` as in :func:`~manifold_aps.gaussian_posterior.square_root`.
    Inputs are ``(B, D)``; the result is float64 (equal to ``posterior_root`` up to rounding and
    the signs of the columns of ``E``, which ``x = mean + scale ⊙ (u + E Eᵀ u)`` does not see).
    """
    return _root_and_evidence(base, y, observed, noise_std, modes_gram)[0]


def _root_and_evidence(base: LowRankGaussian, y: torch.Tensor, observed: torch.Tensor, noise_std: float,
                       modes_gram: torch.Tensor | None = None) -> tuple[GaussianRoot, torch.Tensor]:
    """:func:`posterior_root_every_direction` and :meth:`LowRankGaussian.log_evidence` of the same
    inputs, which share ``M_o`` and its Cholesky factor."""
    nugget = base.nugget_variance
    if nugget <= 0:
        raise ValueError("posterior_root_every_direction needs a positive nugget_variance")
    modes = base.modes
    if modes_gram is None:
        modes_gram = modes.T @ modes
    y, observed = y.to(torch.float64), observed.to(torch.bool)
    total = float(noise_std) ** 2 + nugget
    mask = observed.to(torch.float64)
    observed_gram = (mask[:, :, None] * modes).transpose(1, 2) @ modes  # M_o, (B, k, k)
    cholesky = torch.linalg.cholesky(torch.diag(1.0 / base.spectrum) + observed_gram / total)
    identity = torch.eye(base.rank, dtype=torch.float64).expand_as(observed_gram)
    inverse = torch.linalg.solve_triangular(cholesky, identity, upper=False)  # L⁻¹ = Cᵀ
    whitened_gram = inverse @ (modes_gram / nugget - observed_gram / total) @ inverse.transpose(1, 2)  # BᵀB
    values, vectors = torch.linalg.eigh(whitened_gram)
    shrink = (1.0 / (1.0 + torch.sqrt(1.0 + values.clamp_min(0)))).sqrt()
    weights = 1.0 - mask * (nugget / total)
    scale = torch.full_like(y, nugget).masked_fill_(observed, nugget * float(noise_std) ** 2 / total).sqrt()
    directions = (weights / scale)[..., None] * (modes @ (inverse.transpose(1, 2) @ vectors * shrink[:, None, :]))
    residual = torch.where(observed, y - base.mean, torch.zeros_like(y))
    projected_residual = (residual / total @ modes)[..., None]
    projected = torch.cholesky_solve(projected_residual, cholesky)[..., 0]
    half = torch.linalg.solve_triangular(cholesky, projected_residual, upper=False)
    mean = base.mean + mask * residual * (nugget / total) + weights * (projected @ modes.T)
    return GaussianRoot(mean, scale, directions), _log_evidence(residual, mask, half, cholesky, total, base.spectrum)


def _log_evidence(residual, mask, half, cholesky, total: float, spectrum) -> torch.Tensor:
    """``log N(y_o; μ_o, Σ_oo + σ² I)`` ``(B,)`` from the parts of :meth:`LowRankGaussian.log_evidence`:
    ``r`` (``residual``), the observed ``mask``, ``half = L⁻¹ Φᵀ r / v`` ``(B, k, 1)``, ``L`` and ``v``."""
    log_det = (mask.sum(dim=1) * math.log(2 * math.pi * total) + torch.log(spectrum).sum()
               + 2 * torch.log(torch.diagonal(cholesky, dim1=1, dim2=2)).sum(dim=1))
    return -0.5 * ((residual**2).sum(dim=1) / total - (half[..., 0] ** 2).sum(dim=1) + log_det)


def _as_matrix(signals) -> torch.Tensor:
    array = signals.detach().cpu() if isinstance(signals, torch.Tensor) else torch.as_tensor(np.asarray(signals))
    array = array.to(torch.float64).reshape(array.shape[0], -1)
    if array.shape[0] < 2:
        raise ValueError("fitting a Gaussian needs at least 2 training signals")
    if not torch.isfinite(array).all():
        raise ValueError("training signals for optimal interpolation must be complete (no NaN/inf)")
    return array


def _principal_components(data: torch.Tensor):
    """Mean, covariance eigenvalues (descending) and eigenvectors (rows) of ``(N, D)`` data, via one SVD."""
    mean = data.mean(dim=0)
    _, singular, right = torch.linalg.svd(data - mean, full_matrices=False)
    return mean, singular**2 / (data.shape[0] - 1), right


def _ppca_from_components(mean, eigenvalues, right, dim: int, rank: int) -> LowRankGaussian:
    nugget = max(float(eigenvalues[rank:].sum() / (dim - rank)), 1e-12 * float(eigenvalues[0]))
    spectrum = (eigenvalues[:rank] - nugget).clamp_min(1e-12 * float(eigenvalues[0]))
    return LowRankGaussian(mean, right[:rank].T, spectrum, nugget)


def fit_ppca(signals, rank: int) -> LowRankGaussian:
    """Probabilistic PCA of ``signals`` ``(N, D)`` (or ``(N, V, C)``, flattened) with ``rank`` modes.

    ``Σ = U_k diag(ℓ_k − τ²) U_kᵀ + τ² I`` with ``τ² = Σ_{i>k} ℓ_i / (D − k)`` (maximum likelihood).
    """
    data = _as_matrix(signals)
    count, dim = data.shape
    if not 1 <= rank < min(count, dim):
        raise ValueError(f"rank must be in [1, {min(count, dim) - 1}], got {rank}")
    return _ppca_from_components(*_principal_components(data), dim, rank)


def optimal_interpolation(train_signals, validation_measurements, validation_truth, noise_std: float,
                          ranks=(4, 8, 16, 32, 64, 128, 256)) -> tuple[LowRankGaussian, dict]:
    """Fit PPCA priors of several ranks and keep the one that imputes validation data best.

    Arguments:
        train_signals: ``(N, D)`` complete training signals (flattened real entries).
        validation_measurements: ``(y, observed)`` with ``y`` ``(B, D)`` and ``observed`` bool.
        validation_truth: ``(B, D)`` the clean validation signals.
        noise_std: the measurement noise ``σ``.

    Returns:
        ``(prior, scores)``: the chosen :class:`LowRankGaussian` and ``{rank: hidden-entry MSE}``.
    """
    data = _as_matrix(train_signals)
    y, observed = validation_measurements
    truth = torch.as_tensor(validation_truth.detach().cpu() if isinstance(validation_truth, torch.Tensor)
                            else np.asarray(validation_truth), dtype=torch.float64)
    hidden = ~torch.as_tensor(observed.detach().cpu() if isinstance(observed, torch.Tensor) else np.asarray(observed)).bool()
    components = _principal_components(data)  # one SVD serves every candidate rank
    scores, best = {}, None
    for rank in ranks:
        if rank >= min(data.shape):
            continue
        prior = _ppca_from_components(*components, data.shape[1], rank)
        mean = prior.posterior(y, ~hidden, noise_std).mean
        scores[rank] = float(((mean - truth) ** 2)[hidden].mean())
        if best is None or scores[rank] < scores[best[0]]:
            best = (rank, prior)
    if best is None:
        raise ValueError(f"no candidate rank in {ranks} is below min(N, D) = {min(data.shape)}")
    return best[1], scores


def fit_optimal_interpolation(train_signals: torch.Tensor, validation_signals: torch.Tensor,
                              validation_measurement: Measurement, noise_std: float,
                              ranks=DEFAULT_RANKS) -> tuple[LowRankGaussian, dict]:
    """:func:`optimal_interpolation` for vertex signals: ``train_signals`` ``(N, V, C)``, the clean
    ``validation_signals`` ``(M, V, C)`` and their padded ``validation_measurement``."""
    count, num_vertices = validation_signals.shape[:2]
    y, observed = validation_measurement.real_entries(num_vertices)
    return optimal_interpolation(train_signals.reshape(len(train_signals), -1), (y, observed),
                                 validation_signals.reshape(count, -1), noise_std, ranks=ranks)


def candidate_ranks(largest: int) -> tuple[int, ...]:
    """The PPCA ranks tried up to ``largest``: powers of two from 4, then ``largest`` itself."""
    if isinstance(largest, bool) or not isinstance(largest, numbers.Integral) or largest < 1:
        raise ValueError(f"base_rank must be a positive integer, got {largest!r}")
    return tuple(r for r in (4, 8, 16, 32, 64, 128, 256, 512) if r < largest) + (int(largest),)


def fit_gaussian_base(signals: torch.Tensor, operator: RandomVertexMask, seed: int = 0,
                      ranks=DEFAULT_RANKS) -> LowRankGaussian | None:
    """The Gaussian base of :func:`~manifold_aps.aps.fit`: PPCA of the complete ``signals`` ``(N, V, C)``
    with the rank whose optimal-interpolation mean best fills the hidden entries of a held-out
    tenth (measured by ``operator``); refitted on all complete signals. None with fewer than 8."""
    complete = signals[torch.isfinite(signals).flatten(1).all(dim=1)].double()
    if len(complete) < 8:
        warnings.warn(f"only {len(complete)} complete signals: no Gaussian base (need ≥ 8)", stacklevel=3)
        return None
    kept, held, measurement = held_out_tenth(complete, operator, seed)
    candidates = tuple(r for r in ranks if r < min(len(kept), complete[0].numel())) or (1,)
    chosen, _ = fit_optimal_interpolation(kept, held, measurement, operator.noise_std, candidates)
    return fit_ppca(complete.flatten(1), chosen.rank)


def held_out_tenth(complete: torch.Tensor, operator: RandomVertexMask, seed: int = 0):
    """A base's rank-selection split of complete signals ``(N, V, C)``: ``(kept, held, measurement)``
    with a random tenth (2 to 256 signals) held out and measured by ``operator``."""
    generator = torch.Generator().manual_seed(seed + 7)
    order = torch.randperm(len(complete), generator=generator)
    held = order[: max(2, min(256, len(complete) // 10))]
    layout = VertexLayout(complete.shape[1], complete.shape[2])
    return complete[order[len(held):]], complete[held], operator(layout.pad(complete[held].float()), generator)
