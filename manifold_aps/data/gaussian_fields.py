"""Matérn-type Gaussian random fields on any mesh, with exact posteriors under vertex masking.

The field lives in the span of the ``k`` lowest eigenpairs of the generalised eigenproblem

    L φ_i = λ_i M φ_i,   φ_iᵀ M φ_j = δ_ij,

with the cotan stiffness ``L = mesh.laplacian`` and the lumped mass ``M = diag(mesh.mass)`` (so
``λ_i`` approximate the Laplace-Beltrami eigenvalues). A sample is

    x = μ + Σ_i sqrt(s_i) a_i φ_i + τ ε,   a_i, ε_v ~ N(0, 1),
    s_i = c (2ν/ℓ² + λ_i)^(−ν − d/2),   d = 2 (surfaces),

the spectral Matérn field of Borovitskiy et al. (2020, "Matérn Gaussian processes on Riemannian
manifolds"), truncated to ``k`` modes. ``c`` makes the area-weighted mean of the pointwise variance
of the smooth part equal ``variance``: since ``φ_iᵀ M φ_i = 1``, ``c = variance · area / Σ_i
(2ν/ℓ² + λ_i)^(−ν−d/2)``. The small white "nugget" ``τ² = nugget · variance`` makes the covariance

    Σ = Φ S Φᵀ + τ² I

positive definite (the truncated part alone has rank ``k < V``); samples include it, so samples,
:meth:`GaussianRandomField.covariance <manifold_aps.gaussian_posterior.LowRankGaussian.covariance>`
and the posterior all describe the same distribution.

Measurements hide vertices and add noise: ``y_o = x_o + σ n``. The exact posterior is computed in
the ``k``-dimensional mode space (Woodbury), ``O(V k²)`` per measurement:

    P = (S⁻¹ + Φ_oᵀ Φ_o / (σ² + τ²))⁻¹,
    w_v = σ² / (σ² + τ²) on observed vertices, 1 on hidden ones,
    d_v = τ² σ² / (σ² + τ²) on observed vertices, τ² on hidden ones,
    Σ_post = diag(d) + W Φ P Φᵀ W,
    μ_post = μ + (τ² / (σ² + τ²)) o ⊙ (y − μ) + W Φ P Φ_oᵀ (y_o − μ) / (σ² + τ²),

which equals ``(Σ⁻¹ + AᵀA/σ²)⁻¹`` and ``Σ_post (Σ⁻¹ μ + Aᵀ y / σ²)`` for the selection ``A``.
Vertices used by no face (two on the bunny) have empty Laplacian rows and the median mass, so
each is its own component with eigenvalue 0: they get independent values, as they should.

Everything is float64.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from manifold_aps.gaussian_posterior import LowRankGaussian

__all__ = ["GaussianRandomField", "laplacian_eigenpairs"]



def laplacian_eigenpairs(mesh, num_modes: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num_modes`` smallest ``(λ, Φ)`` of ``L φ = λ M φ`` with ``Φᵀ M Φ = I``.

    Shift-invert Lanczos (``scipy.sparse.linalg.eigsh``) around a small negative shift, because ``L``
    is singular (constants on each connected component have ``λ = 0``) while ``L + δM`` is not.
    """
    num_vertices = mesh.num_vertices
    if not 1 <= num_modes < num_vertices:
        raise ValueError(f"num_modes must be in [1, {num_vertices - 1}] for a mesh of {num_vertices} vertices, got {num_modes}")
    stiffness = sp.csc_matrix(mesh.laplacian, dtype=np.float64)
    mass = mesh.mass.detach().cpu().numpy().astype(np.float64)
    mass_matrix = sp.diags(mass).tocsc()
    # shift relative to the spectrum's scale (1 / mean vertex area), so it works in any units
    shift = -1e-6 * stiffness.diagonal().max() / mass.max() if stiffness.nnz else -1.0
    if num_modes >= num_vertices // 2:  # dense is faster and exact for small meshes
        import scipy.linalg

        eigenvalues, eigenvectors = scipy.linalg.eigh(stiffness.toarray(), np.diag(mass), subset_by_index=[0, num_modes - 1])
    else:
        eigenvalues, eigenvectors = spla.eigsh(stiffness, k=num_modes, M=mass_matrix, sigma=shift, which="LM",
                                               v0=np.ones(num_vertices))
    order = np.argsort(eigenvalues)
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0.0, None), eigenvectors[:, order]
    # re-impose M-orthonormality (Lanczos returns it only to solver tolerance)
    gram = eigenvectors.T @ (mass[:, None] * eigenvectors)
    eigenvectors = eigenvectors @ np.linalg.inv(np.linalg.cholesky(gram)).T
    return eigenvalues, eigenvectors


class GaussianRandomField(LowRankGaussian):
    """A Matérn-type Gaussian random field on the vertices of ``mesh`` (see the module docstring).

    Arguments:
        mesh: a :class:`manifold_aps.Mesh`.
        length_scale: ``ℓ``, in the mesh's length units.
        smoothness: ``ν > 0`` (larger = smoother).
        variance: area-weighted mean pointwise variance of the smooth part.
        mean: constant mean ``μ``.
        num_modes: ``k``, eigenpairs kept (the field is smooth above the ``k``-th mode's scale).
        nugget: white-noise variance as a fraction of ``variance``; ``τ² = nugget · variance``.

    Example:
        >>> import torch, manifold_aps as aps
        >>> field = GaussianRandomField(aps.healpix_sphere(4), length_scale=0.5, num_modes=60)
        >>> field.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 192])
    """

    def __init__(
        self,
        mesh,
        length_scale: float = 0.3,
        smoothness: float = 1.5,
        variance: float = 1.0,
        mean: float = 0.0,
        num_modes: int = 128,
        nugget: float = 1e-6,
    ):
        for label, value in (("length_scale", length_scale), ("smoothness", smoothness), ("variance", variance)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a finite positive number, got {value}")
        if not (math.isfinite(nugget) and nugget >= 0) or not math.isfinite(mean):
            raise ValueError(f"need a finite mean and nugget ≥ 0, got mean={mean}, nugget={nugget}")
        self.mesh = mesh
        self.length_scale, self.smoothness = float(length_scale), float(smoothness)
        self.variance = float(variance)
        self.eigenvalues, modes = laplacian_eigenpairs(mesh, num_modes)
        dimension = 2
        shape = (2.0 * self.smoothness / self.length_scale**2 + self.eigenvalues) ** (-self.smoothness - dimension / 2)
        area = float(mesh.mass.sum())
        spectrum = self.variance * area * shape / shape.sum()
        super().__init__(float(mean), modes, spectrum, float(nugget) * self.variance)

    @property
    def num_vertices(self) -> int:
        return self.dim

    @property
    def num_modes(self) -> int:
        return self.rank
