"""Reconstruction and calibration metrics on the real vertices.

All functions take torch tensors or numpy arrays shaped ``(..., V)`` or ``(..., V, C)`` and an
optional boolean ``region`` ``(..., V)`` (e.g. the real vertices, or the hidden ones only) that
selects the vertices scored; results are per sample (leading axes kept).

- PSNR with data range 1 (signals normalised to [0, 1]): ``10 log10(1 / MSE)``.
- SSIM on lat-lon images with an 11-tap Gaussian window (σ = 1.5), matching
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``.
- Coverage of central credible intervals and the CRPS from posterior samples. Both are estimated
  from a finite ensemble, so both refuse fewer than :data:`MIN_SAMPLES` (32) samples per
  measurement (a ``ValueError``; pass ``min_samples`` to override in a unit check): with few
  samples the empirical interval and the spread term are too noisy to compare methods by.
- :func:`evaluate_sampler`: the held-out report of :func:`manifold_aps.aps.fit` (PSNR of the mean
  and of one draw, coverage, time per measurement), measured with the sampler's operator.
"""

from __future__ import annotations

import time

import numpy as np
import torch

__all__ = ["MIN_SAMPLES", "mse", "psnr", "ssim", "interval_coverage", "crps", "evaluate_sampler"]

#: Posterior samples per measurement below which coverage and CRPS are refused.
MIN_SAMPLES = 32


def _as_tensor(value) -> torch.Tensor:
    return value.detach().double() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value), dtype=torch.float64)


def _vertexwise(estimate, truth, region):
    estimate, truth = _as_tensor(estimate), _as_tensor(truth).to(_as_tensor(estimate).device)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate shape {tuple(estimate.shape)} differs from truth shape {tuple(truth.shape)}")
    squared = (estimate - truth) ** 2
    if region is None:
        weights = torch.ones(squared.shape, dtype=torch.float64)
    else:
        weights = _as_tensor(region).to(squared.device)
        if weights.shape != squared.shape:
            weights = weights[..., None].expand_as(squared) if weights.shape == squared.shape[:-1] else weights.expand_as(squared)
    return squared, weights.to(squared.device)


def mse(estimate, truth, region=None, vertex_axes: int = 1) -> torch.Tensor:
    """Mean squared error over the last ``vertex_axes`` axes (use 2 for ``(..., V, C)``)."""
    squared, weights = _vertexwise(estimate, truth, region)
    dims = tuple(range(-vertex_axes, 0))
    count = weights.sum(dim=dims)
    if (count == 0).any():
        raise ValueError("the scored region is empty for at least one sample")
    return (squared * weights).sum(dim=dims) / count


def psnr(estimate, truth, region=None, data_range: float = 1.0, vertex_axes: int = 1) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(data_range² / MSE)`` in dB."""
    return 10.0 * torch.log10(data_range**2 / mse(estimate, truth, region, vertex_axes))


def _gaussian_filter(images: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(images, sigma=(0,) * (images.ndim - 2) + (sigma, sigma), truncate=truncate, mode="reflect")


def ssim(estimate, truth, data_range: float = 1.0, sigma: float = 1.5, window: int = 11) -> torch.Tensor:
    """Mean structural similarity of images ``(..., H, W)`` (e.g. 46 × 90 lat-lon fields).

    Gaussian-weighted local statistics (σ = 1.5, an ``window``-tap kernel), ``K1 = 0.01``,
    ``K2 = 0.03``, population covariances, and the SSIM map averaged after cropping
    ``(window − 1) / 2`` pixels on each border — the conventions of Wang et al. 2004 as implemented
    by scikit-image.
    """
    x = _as_tensor(estimate).cpu().numpy()
    y = _as_tensor(truth).cpu().numpy()
    if x.shape != y.shape or x.ndim < 2:
        raise ValueError(f"ssim needs two images of the same shape (..., H, W), got {x.shape} and {y.shape}")
    truncate = ((window - 1) / 2) / sigma
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _gaussian_filter(x, sigma, truncate), _gaussian_filter(y, sigma, truncate)
    var_x = _gaussian_filter(x * x, sigma, truncate) - mu_x**2
    var_y = _gaussian_filter(y * y, sigma, truncate) - mu_y**2
    cov = _gaussian_filter(x * y, sigma, truncate) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    pad = (window - 1) // 2
    cropped = ssim_map[..., pad:-pad, pad:-pad]
    return torch.as_tensor(cropped.mean(axis=(-2, -1)))


def _ensemble(samples, truth, min_samples: int):
    """``samples`` ``(S, *truth.shape)`` and ``truth`` as float64 tensors, with ``S ≥ min_samples``."""
    samples, truth = _as_tensor(samples), _as_tensor(truth)
    if samples.shape[1:] != truth.shape:
        raise ValueError(f"samples {tuple(samples.shape)} must be (S, *truth.shape) with truth {tuple(truth.shape)}")
    if samples.shape[0] < min_samples:
        raise ValueError(f"{samples.shape[0]} samples per measurement are too few for a calibration score: "
                         f"need at least {min_samples} (metrics.MIN_SAMPLES = {MIN_SAMPLES})")
    return samples, truth.to(samples.device)


def _region_mean(score: torch.Tensor, truth: torch.Tensor, region, vertex_axes: int) -> torch.Tensor:
    _, weights = _vertexwise(truth, truth, region)
    dims = tuple(range(-vertex_axes, 0))
    return (score * weights).sum(dim=dims) / weights.sum(dim=dims)


def interval_coverage(samples, truth, level: float = 0.9, region=None, vertex_axes: int = 1,
                      min_samples: int = MIN_SAMPLES) -> torch.Tensor:
    """Fraction of true values inside the central ``level`` interval of the samples.

    ``samples``: ``(S, ...)`` draws with the shape of ``truth`` after the first axis, ``S ≥
    min_samples``. The interval ends are the per-entry sample quantiles at ``p = (1 ∓ level) / 2``
    with the Weibull plotting position: the order statistic of (1-based, interpolated) rank
    ``p (S + 1)``. A truth drawn from the same distribution as ``S`` samples falls below the
    ``k``-th smallest with probability ``k / (S + 1)``, so a calibrated sampler scores ``level``
    on average at any ``S`` (the linear ``p (S − 1) + 1`` rank undercovers: 0.85 at ``S = 32``).
    This is ``numpy.quantile(..., method="weibull")``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    samples, truth = _ensemble(samples, truth, min_samples)
    count = samples.shape[0]
    ordered = samples.sort(dim=0).values
    tail = (1 - level) / 2

    def quantile(probability: float) -> torch.Tensor:
        rank = min(max(probability * (count + 1) - 1, 0.0), count - 1.0)  # 0-based, clamped to the sample range
        below = int(rank)
        above = min(below + 1, count - 1)
        fraction = rank - below
        return (1 - fraction) * ordered[below] + fraction * ordered[above]

    inside = ((truth >= quantile(tail)) & (truth <= quantile(1 - tail))).double()
    return _region_mean(inside, truth, region, vertex_axes)


def crps(samples, truth, region=None, vertex_axes: int = 1, min_samples: int = MIN_SAMPLES) -> torch.Tensor:
    """Continuous ranked probability score of the sample ensemble, averaged over the region.

    ``CRPS = E|X − y| − ½ E|X − X'|`` with the fair (unbiased) ensemble estimator (Ferro 2014):
    the spread term averages ``|x_i − x_j|`` over the ``S (S − 1)`` pairs ``i ≠ j``::

        CRPS_fair = 1/S Σ_i |x_i − y| − 1/(S (S − 1)) Σ_i (2i − S − 1) x_(i)

    (``x_(i)`` sorted ascending), whose expectation is the CRPS of the sampled distribution. The
    all-pairs V-statistic (``1/S²``) understates the spread by ``(S − 1)/S`` and so penalises
    small ensembles. Lower is better; needs ``S ≥ min_samples`` (at least 2).
    """
    samples, truth = _ensemble(samples, truth, max(min_samples, 2))
    count = samples.shape[0]
    absolute = (samples - truth).abs().mean(dim=0)
    ordered = samples.sort(dim=0).values
    ranks = torch.arange(1, count + 1, dtype=samples.dtype, device=samples.device).reshape(-1, *([1] * truth.dim()))
    half_spread = ((2 * ranks - count - 1) * ordered).sum(dim=0) / (count * (count - 1))
    return _region_mean(absolute - half_spread, truth, region, vertex_axes)


@torch.no_grad()
def evaluate_sampler(model, operator, test_signals, n: int = 128, seed: int = 1) -> dict:
    """Measure held-out clean signals with ``operator`` and score an APS ``model`` on them (real
    vertices): PSNR of the ``n``-sample posterior mean and of a single sample, 90 % interval
    coverage on the hidden vertices, and seconds per measurement for ``n`` samples. A sampler whose
    ``model_error`` is set is scored with it, as its users get it."""
    layout = model.layout
    truth, _ = layout.to_batch(test_signals)
    if not torch.isfinite(truth).all():
        raise ValueError("test_signals must be complete (no NaN or ±inf): they are the truth APS is scored against")
    generator = torch.Generator().manual_seed(seed)
    measurement = operator(truth, generator)
    start = time.perf_counter()
    draws = (model.sample_with_model_error(measurement, n, generator)[0] if getattr(model, "model_error", False)
             else model.sample_measurement(measurement, n, generator).cpu())
    seconds = (time.perf_counter() - start) / len(measurement)
    V = layout.num_vertices
    real_truth, real_draws = truth[:, :V], draws[:, :, :V]
    hidden = ~measurement.observed[:, :V]
    return dict(
        psnr_mean=float(psnr(real_draws.mean(0), real_truth, vertex_axes=2).mean()),
        psnr_single=float(psnr(real_draws[0], real_truth, vertex_axes=2).mean()),
        coverage_90_hidden=float(interval_coverage(real_draws, real_truth, 0.9, hidden, vertex_axes=2).mean()),
        seconds_per_measurement=seconds, samples=n, measurements=len(measurement),
    )
