"""A mixture of probabilistic PCA (Tipping & Bishop 1999) fitted by EM, and its selection on validation.

The prior over flattened complete signals ``x`` ``(D,)`` is::

    p(x) = Σ_k π_k N(x; μ_k, Φ_k diag(s_k) Φ_kᵀ + τ_k² I),   Φ_k (D × q) orthonormal,

fitted by expectation-maximisation::

    E-step   r_nk = π_k N(x_n; μ_k, Σ_k) / Σ_j π_j N(x_n; μ_j, Σ_j),
    M-step   π_k = N_k / N,  μ_k = Σ_n r_nk x_n / N_k,  S_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k,
             Φ_k, ℓ_k = the top-q eigenpairs of S_k,
             τ_k² = (tr S_k − Σ_i ℓ_{k,i}) / (D − q),  s_k = ℓ_k − τ_k²

(the maximum-likelihood PPCA of each component's weighted covariance). ``S_k`` is never formed:
its leading subspace comes from subspace iteration warm-started at the previous ``Φ_k``, each
product ``S_k Q = X_cᵀ (r ⊙ X_c Q) / N_k`` costing ``O(N D q)``, then a Rayleigh–Ritz step in the
``q``-dimensional mode space. EM starts from k-means in the leading principal coordinates.

:func:`select_mixture_of_ppca` picks the number of components and the rank by the hidden-entry
error of the exact mixture-posterior mean (:meth:`GaussianMixtureField.posterior
<manifold_aps.data.gaussian_mixture.GaussianMixtureField.posterior>`) on validation measurements,
as :func:`~manifold_aps.gaussian_posterior.optimal_interpolation` does for one Gaussian;
:func:`fit_mixture_base` is that choice of the rank for :func:`~manifold_aps.aps.fit`'s mixture
base, on a held-out tenth of the training signals.
"""

from __future__ import annotations

import time

import torch

from manifold_aps.data.gaussian_mixture import GaussianMixtureField
from manifold_aps.gaussian_posterior import LowRankGaussian, held_out_tenth
from manifold_aps.operators import Measurement, RandomVertexMask

__all__ = ["fit_mixture_of_ppca", "select_mixture_of_ppca", "fit_mixture_base"]

OVERSAMPLING = 8  # extra subspace columns: the top-q eigenpairs converge faster with a few spare ones


def _leading_subspace(centred: torch.Tensor, weights: torch.Tensor, basis: torch.Tensor, power_steps: int):
    """Top eigenpairs of ``S = centredᵀ diag(weights) centred`` by ``power_steps`` of subspace
    iteration from ``basis`` ``(D, m)`` and a Rayleigh–Ritz step: ``(eigenvalues ↓, vectors (D, m))``."""
    def apply(vectors):
        return centred.T @ (weights[:, None] * (centred @ vectors))

    for _ in range(power_steps):
        basis, _ = torch.linalg.qr(apply(basis))
    values, rotation = torch.linalg.eigh(basis.T @ apply(basis))
    order = torch.argsort(values, descending=True)
    return values[order], basis @ rotation[:, order]


def _kmeans(points: torch.Tensor, clusters: int, generator: torch.Generator, iterations: int = 25) -> torch.Tensor:
    """k-means labels ``(N,)`` of ``points`` ``(N, m)``, k-means++ seeding."""
    centres = [points[torch.randint(len(points), (1,), generator=generator)][0]]
    for _ in range(1, clusters):
        distances = torch.cdist(points, torch.stack(centres)).min(dim=1).values ** 2
        centres.append(points[torch.multinomial(distances / distances.sum(), 1, generator=generator)][0])
    centres = torch.stack(centres)
    for _ in range(iterations):
        labels = torch.cdist(points, centres).argmin(dim=1)
        for k in range(clusters):
            if (labels == k).any():
                centres[k] = points[labels == k].mean(dim=0)
    return torch.cdist(points, centres).argmin(dim=1)


def _component(data: torch.Tensor, responsibility: torch.Tensor, basis: torch.Tensor, rank: int, floor: float,
               power_steps: int):
    """M-step for one component: its :class:`LowRankGaussian` and the subspace to warm-start from."""
    weights = responsibility / responsibility.sum()
    mean = weights @ data
    centred = data - mean
    total = float(weights @ (centred**2).sum(dim=1))  # tr S_k
    values, vectors = _leading_subspace(centred, weights, basis, power_steps)
    nugget = max((total - float(values[:rank].sum())) / (data.shape[1] - rank), floor)
    spectrum = (values[:rank] - nugget).clamp_min(floor)
    return LowRankGaussian(mean, vectors[:, :rank], spectrum, nugget), vectors


def fit_mixture_of_ppca(train_signals, components: int, rank: int, iterations: int = 15, tolerance: float = 1e-4,
                        seed: int = 0) -> GaussianMixtureField:
    """EM for a mixture of ``components`` PPCA Gaussians of rank ``rank`` (see the module docstring).

    Arguments:
        train_signals: ``(N, D)`` or ``(N, V, C)`` complete signals (flattened vertex-major).
        iterations: EM iterations at most; stops earlier once the mean log-likelihood per entry
            changes by less than ``tolerance``.
        seed: the k-means seeding and the random start of the subspaces.

    Returns:
        A :class:`~manifold_aps.data.gaussian_mixture.GaussianMixtureField`.
    """
    data = torch.as_tensor(train_signals).detach().cpu().to(torch.float64).flatten(1)
    count, dim = data.shape
    if not torch.isfinite(data).all():
        raise ValueError("training signals for a mixture of PPCA must be complete (no NaN/inf)")
    if components < 1 or not 1 <= rank < dim - OVERSAMPLING or count < components * 2:
        raise ValueError(f"need components ≥ 1, 1 ≤ rank < D − {OVERSAMPLING} and ≥ 2 signals per component; "
                         f"got components {components}, rank {rank}, N {count}, D {dim}")
    generator = torch.Generator().manual_seed(seed)
    width = rank + OVERSAMPLING
    start = torch.randn(dim, width, generator=generator, dtype=torch.float64)
    floor = 1e-6 * float(data.var(dim=0).mean())
    whole, coordinates_basis = _component(data, torch.ones(count, dtype=torch.float64), start, rank, floor, 3)
    coordinates = (data - whole.mean) @ coordinates_basis[:, :min(16, rank)]
    labels = _kmeans(coordinates, components, generator)
    responsibilities = torch.nn.functional.one_hot(labels, components).to(torch.float64)
    bases = [coordinates_basis] * components
    previous = None
    for _ in range(iterations):
        counts = responsibilities.sum(dim=0).clamp_min(1e-9)
        fitted = [_component(data, responsibilities[:, k] + 1e-12, bases[k], rank, floor, 1) for k in range(components)]
        gaussians, bases = [g for g, _ in fitted], [b for _, b in fitted]
        weights = counts / counts.sum()
        field = GaussianMixtureField(gaussians, weights)
        log_joint = torch.log(weights) + torch.stack([g.log_prob(data) for g in gaussians], dim=1)
        likelihood = float(torch.logsumexp(log_joint, dim=1).mean()) / dim
        responsibilities = torch.softmax(log_joint, dim=1)
        if previous is not None and abs(likelihood - previous) < tolerance:
            break
        previous = likelihood
    return field


def select_mixture_of_ppca(train_signals: torch.Tensor, validation_signals: torch.Tensor,
                           validation_measurement: Measurement, noise_std: float, components=(2, 4, 8),
                           ranks=(16, 32, 64), log=None, **fit_options) -> tuple[GaussianMixtureField, list[dict]]:
    """Fit :func:`fit_mixture_of_ppca` for every ``(components, rank)`` and keep the one whose
    posterior mean best fills the hidden entries of the ``validation_measurement`` (padded) of the
    clean ``validation_signals`` ``(M, V, C)``; ``train_signals`` ``(N, V, C)``.

    Returns ``(field, table)``: the chosen mixture and one row per candidate with ``components``,
    ``rank``, ``hidden_mse`` (validation) and ``fit_seconds``.
    """
    count, num_vertices = validation_signals.shape[:2]
    y, observed = validation_measurement.real_entries(num_vertices)
    truth = validation_signals.reshape(count, -1).to(torch.float64)
    hidden = ~observed
    table, best = [], None
    for k in components:
        for rank in ranks:
            started = time.perf_counter()
            field = fit_mixture_of_ppca(train_signals, k, rank, **fit_options)
            seconds = time.perf_counter() - started
            mean = field.posterior(y, observed, noise_std).mean
            error = float(((mean - truth) ** 2)[hidden].mean())
            table.append(dict(components=k, rank=rank, hidden_mse=error, fit_seconds=seconds))
            if log is not None:
                log(f"mixture of PPCA K={k} rank={rank}: validation hidden MSE {error:.4g} ({seconds:.0f} s)")
            if best is None or error < best[0]:
                best = (error, field)
    return best[1], table


def fit_mixture_base(signals: torch.Tensor, operator: RandomVertexMask, components: int, ranks,
                     seed: int = 0) -> GaussianMixtureField:
    """:func:`~manifold_aps.aps.fit`'s mixture base: ``components`` PPCA Gaussians fitted to the
    complete ``signals`` ``(N, V, C)``, with the rank (among ``ranks``) whose mixture-posterior mean
    best fills the hidden entries of a held-out tenth measured by ``operator``; refitted on all of
    them (as :func:`~manifold_aps.gaussian_posterior.fit_gaussian_base` does for one Gaussian)."""
    complete = signals[torch.isfinite(signals).flatten(1).all(dim=1)].double()
    kept, held, measurement = held_out_tenth(complete, operator, seed)
    if len(kept) < 2 * components:
        raise ValueError(f"a mixture base of {components} components needs ≥ {2 * components} complete training "
                         f"signals besides a held-out tenth, got {len(complete)} complete signals")
    dim = complete[0].numel()
    candidates = tuple(r for r in ranks if r < min(len(kept) // components, dim - OVERSAMPLING)) or (1,)
    _, table = select_mixture_of_ppca(kept, held, measurement, operator.noise_std,
                                      components=(components,), ranks=candidates, seed=seed)
    best = min(table, key=lambda row: row["hidden_mse"])
    return fit_mixture_of_ppca(complete, components, best["rank"], seed=seed)
