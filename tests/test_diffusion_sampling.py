"""The sampler plumbing: time grids, the deprecated step-count spellings, the progress switch and
the shared ancestral step (its accuracy is checked against Gaussian ground truth in
test_diffusion_gaussian.py)."""

import pytest
import torch

from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor, VPSDE
from manifold_aps.diffusion.sampling import (ancestral_step, sample_ancestral, sample_euler_maruyama, sample_ode,
                                             time_grid)
from manifold_aps.signals import VertexLayout

SAMPLERS = [sample_euler_maruyama, sample_ancestral, sample_ode]


@pytest.fixture(scope="module")
def prior():
    return DiffusionPrior(GaussianNoisePredictor(torch.zeros(3), torch.diag(torch.tensor([0.2, 1.0, 2.0]))),
                          VertexLayout(3, multiple=1))


def test_time_grid_is_uniform_from_one_to_t_min():
    grid = time_grid(4, t_min=0.2)
    assert torch.allclose(grid, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2], dtype=torch.float64))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="diffusion_steps"):
            time_grid(bad)
    with pytest.raises(ValueError, match="t_min"):
        time_grid(4, t_min=0.0)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda f: f.__name__)
def test_a_grid_and_a_step_count_give_the_same_samples(prior, sampler):
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    from_grid = sampler(prior, x_T, time_grid(6, prior.sde.eps), torch.Generator().manual_seed(1))
    from_count = sampler(prior, x_T, diffusion_steps=6, generator=torch.Generator().manual_seed(1))
    with pytest.warns(DeprecationWarning, match="num_steps"):
        old_keyword = sampler(prior, x_T, num_steps=6, generator=torch.Generator().manual_seed(1))
    with pytest.warns(DeprecationWarning, match="step count"):
        old_positional = sampler(prior, x_T, 6, torch.Generator().manual_seed(1))
    for other in (from_count, old_keyword, old_positional):
        assert torch.equal(from_grid.sample, other.sample) and from_grid.nfe == other.nfe
    with pytest.raises(TypeError, match="not both"):
        sampler(prior, x_T, time_grid(6, prior.sde.eps), diffusion_steps=6)


def test_a_non_uniform_grid_is_followed(prior):
    x_T = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.tensor([1.0, 0.3, 0.05, 0.001], dtype=torch.float64)
    seen = []
    result = sample_ancestral(prior, x_T, grid, callback=lambda info: seen.append(info["t"]))
    assert seen == grid[:-1].tolist() and result.nfe == 3
    with pytest.raises(ValueError, match="decrease"):
        sample_ancestral(prior, x_T, grid.flip(0))


def test_progress_bar_only_when_asked(prior, capsys):
    x_T = torch.randn(2, 3, dtype=torch.float64)
    sample_ancestral(prior, x_T, diffusion_steps=5)
    assert capsys.readouterr().err == ""
    sample_ancestral(prior, x_T, diffusion_steps=5, progress=True)
    assert "ancestral" in capsys.readouterr().err


def test_ancestral_step_is_the_forward_posterior_q_of_x_s_given_x_t_and_x_0():
    """Mean and variance of ``q(x_s | x_t, x_0)`` from the joint Gaussian of ``(x_t, x_s)`` given ``x_0``."""
    sde, t, s = VPSDE(), torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    alpha_t, sigma_t, alpha_s, sigma_s = sde.alpha(t), sde.sigma(t), sde.alpha(s), sde.sigma(s)
    x_0, x_t = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-0.5]], dtype=torch.float64)
    # x_t = (α_t/α_s) x_s + noise of variance σ_t² − (α_t/α_s)² σ_s², and x_s ~ N(α_s x_0, σ_s²)
    ratio = alpha_t / alpha_s
    gain = ratio * sigma_s**2 / sigma_t**2
    mean = alpha_s * x_0 + gain * (x_t - alpha_t * x_0)
    variance = sigma_s**2 - gain * ratio * sigma_s**2
    assert torch.allclose(ancestral_step(sde, x_t, x_0, t, s), mean)
    unit = torch.ones_like(x_t)
    assert torch.allclose((ancestral_step(sde, x_t, x_0, t, s, unit) - mean) ** 2, variance.expand_as(x_t))
