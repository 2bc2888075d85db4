"""Reconstruction and calibration metrics on the real vertices.

All functions take torch tensors or numpy arrays shaped ``(..., V)`` or ``(..., V, C)`` and an
optional boolean ``region`` ``(..., V)`` (e.g. the real vertices, or the hidden ones only) that
selects the vertices scored; results are per sample (leading axes kept).

- PSNR with data range 1 (signals normalised to [0, 1]): ``10 log10(1 / MSE)``.
- SSIM on lat-lon images with an 11-tap Gaussian window (σ = 1.5), matching
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``.
- Coverage of central credible intervals and the CRPS from posterior samples.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mse", "psnr", "ssim", "interval_coverage", "crps"]


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


def interval_coverage(samples, truth, level: float = 0.9, region=None, vertex_axes: int = 1) -> torch.Tensor:
    """Fraction of true values inside the central ``level`` interval of the samples.

    ``samples``: ``(S, ...)`` draws with the shape of ``truth`` after the first axis; the interval
    is ``[q_{(1−level)/2}, q_{(1+level)/2}]`` of the empirical per-entry quantiles.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    samples, truth = _as_tensor(samples), _as_tensor(truth)
    if samples.shape[1:] != truth.shape:
        raise ValueError(f"samples {tuple(samples.shape)} must be (S, *truth.shape) with truth {tuple(truth.shape)}")
    tail = (1 - level) / 2
    low, high = torch.quantile(samples, torch.tensor([tail, 1 - tail], dtype=samples.dtype), dim=0)
    inside = ((truth >= low) & (truth <= high)).double()
    _, weights = _vertexwise(truth, truth, region)
    dims = tuple(range(-vertex_axes, 0))
    return (inside * weights).sum(dim=dims) / weights.sum(dim=dims)


def crps(samples, truth, region=None, vertex_axes: int = 1) -> torch.Tensor:
    """Continuous ranked probability score of the sample ensemble, averaged over the region.

    ``CRPS = E|X − y| − ½ E|X − X'|`` with the unbiased-in-expectation sorted-sample form
    ``E|X − X'| = 2 / S² Σ_i (2i − S − 1) x_(i)`` (lower is better; equals MAE for one sample).
    """
    samples, truth = _as_tensor(samples), _as_tensor(truth)
    if samples.shape[1:] != truth.shape:
        raise ValueError(f"samples {tuple(samples.shape)} must be (S, *truth.shape) with truth {tuple(truth.shape)}")
    count = samples.shape[0]
    absolute = (samples - truth).abs().mean(dim=0)
    ordered = samples.sort(dim=0).values
    ranks = torch.arange(1, count + 1, dtype=samples.dtype).reshape(-1, *([1] * truth.dim()))
    spread = (2.0 / count**2) * ((2 * ranks - count - 1) * ordered).sum(dim=0)
    score = absolute - 0.5 * spread
    _, weights = _vertexwise(truth, truth, region)
    dims = tuple(range(-vertex_axes, 0))
    return (score * weights).sum(dim=dims) / weights.sum(dim=dims)
