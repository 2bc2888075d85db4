import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from manifold_aps.metrics import crps, interval_coverage, mse, psnr, ssim


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


def test_coverage_of_calibrated_gaussian_samples():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 2000, generator=generator)
    samples = torch.randn(400, 4, 2000, generator=generator)
    coverage = interval_coverage(samples, truth, level=0.9)
    assert torch.allclose(coverage, torch.full((4,), 0.9, dtype=torch.float64), atol=0.02)
    overconfident = interval_coverage(0.3 * samples, truth, level=0.9)
    assert (overconfident < 0.5).all()


def test_crps_known_cases():
    truth = torch.zeros(1, 3)
    single = torch.tensor([[[1.0, -2.0, 0.5]]])
    assert torch.allclose(crps(single, truth), torch.tensor([3.5 / 3], dtype=torch.float64))  # one draw: MAE
    # standard normal ensemble vs truth 0: CRPS = (sqrt(2) - 1) / sqrt(pi)
    draws = torch.randn(4000, 1, 50, generator=torch.Generator().manual_seed(1))
    expected = (np.sqrt(2) - 1) / np.sqrt(np.pi)
    assert crps(draws, torch.zeros(1, 50)).item() == pytest.approx(expected, rel=0.03)
