import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from scipy.stats import norm

from manifold_aps.metrics import MIN_SAMPLES, crps, interval_coverage, mse, psnr, ssim


def test_psnr_and_mse_known_values():
    truth = torch.zeros(2, 100)
    estimate = torch.full((2, 100), 0.1)
    assert torch.allclose(mse(estimate, truth), torch.full((2,), 0.01, dtype=torch.float64))
    assert torch.allclose(psnr(estimate, truth), torch.full((2,), 20.0, dtype=torch.float64))


def test_region_restricts_scoring():
    truth = torch.zeros(1, 4)
    estimate = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    region = torch.tensor([[True, True, False, False]])
    assert mse(estimate, truth, ~region).item() == 1.0
    with pytest.raises(ValueError, match="empty"):
        mse(estimate, truth, torch.zeros(1, 4, dtype=torch.bool))


def test_multichannel_vertex_axes():
    truth = torch.zeros(3, 5, 2)
    estimate = torch.ones(3, 5, 2) * 0.5
    assert torch.allclose(mse(estimate, truth, vertex_axes=2), torch.full((3,), 0.25, dtype=torch.float64))


def test_ssim_agrees_with_scikit_image():
    rng = np.random.default_rng(0)
    truth = rng.random((46, 90))
    estimate = np.clip(truth + 0.1 * rng.normal(size=truth.shape), 0, 1)
    expected = structural_similarity(estimate, truth, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert ssim(estimate, truth).item() == pytest.approx(expected, abs=1e-10)
    assert ssim(truth, truth).item() == pytest.approx(1.0)
    batch = ssim(np.stack([estimate, truth]), np.stack([truth, truth]))
    assert batch.shape == (2,) and batch[0].item() == pytest.approx(expected, abs=1e-10)


def _calibrated_gaussian(count, entries=20000, seed=0):
    """Truth and ``count`` samples from the same N(0, 1), per entry: a perfectly calibrated sampler."""
    generator = torch.Generator().manual_seed(seed)
    truth = torch.randn(4, entries // 4, generator=generator, dtype=torch.float64)
    return torch.randn(count, *truth.shape, generator=generator, dtype=torch.float64), truth


@pytest.mark.parametrize("count", [MIN_SAMPLES, 400])
def test_coverage_of_calibrated_gaussian_samples(count):
    samples, truth = _calibrated_gaussian(count)
    coverage = interval_coverage(samples, truth, level=0.9)
    assert ((coverage > 0.88) & (coverage < 0.92)).all(), coverage
    overconfident = interval_coverage(0.3 * samples, truth, level=0.9)
    assert (overconfident < 0.5).all()


def test_interval_ends_are_numpy_weibull_quantiles():
    samples, truth = _calibrated_gaussian(MIN_SAMPLES, entries=40)
    low, high = np.quantile(samples.numpy(), [0.05, 0.95], axis=0, method="weibull")
    expected = ((truth.numpy() >= low) & (truth.numpy() <= high)).mean(axis=-1)
    assert np.allclose(interval_coverage(samples, truth, level=0.9).numpy(), expected)


def test_calibration_scores_refuse_small_ensembles():
    samples, truth = _calibrated_gaussian(MIN_SAMPLES - 1, entries=40)
    for score in (interval_coverage, crps):
        with pytest.raises(ValueError, match="at least 32"):
            score(samples, truth)
        assert score(samples, truth, min_samples=MIN_SAMPLES - 1).shape == (4,)


def test_crps_known_cases():
    truth = torch.zeros(1, 3)
    pair = torch.tensor([[[1.0, -2.0, 0.5]], [[-2.0, 1.0, 0.5]]])
    # per entry: (|1| + |−2|) / 2 − |1 − (−2)| / 2 = 0, twice; two equal draws 0.5: plain MAE
    assert torch.allclose(crps(pair, truth, min_samples=2), torch.tensor([0.5 / 3], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2"):
        crps(pair[:1], truth, min_samples=1)


def test_crps_is_the_fair_pairwise_estimator():
    generator = torch.Generator().manual_seed(1)
    samples = torch.randn(7, 2, 5, generator=generator, dtype=torch.float64)
    truth = torch.randn(2, 5, generator=generator, dtype=torch.float64)
    pairs = (samples[:, None] - samples[None]).abs().sum(dim=(0, 1)) / (7 * 6)
    expected = ((samples - truth).abs().mean(dim=0) - 0.5 * pairs).mean(dim=-1)
    assert torch.allclose(crps(samples, truth, min_samples=7), expected)


def test_crps_of_calibrated_gaussian_matches_closed_form():
    # CRPS(N(0, 1), y) = y (2Φ(y) − 1) + 2φ(y) − 1/√π; the V-statistic would be 1/S = 3 % too high here
    samples, truth = _calibrated_gaussian(MIN_SAMPLES)
    y = truth.numpy()
    exact = (y * (2 * norm.cdf(y) - 1) + 2 * norm.pdf(y) - 1 / np.sqrt(np.pi)).mean()
    assert crps(samples, truth).mean().item() == pytest.approx(exact, rel=0.02)
