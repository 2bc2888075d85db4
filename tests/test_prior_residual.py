"""Gaussian-residual priors: exact Gaussian at initialisation, bounded correction, save/load."""

import pytest
import torch

import manifold_aps as aps
from manifold_aps.diffusion import VPSDE, exact_gaussian_prior
from manifold_aps.diffusion.networks import build_network
from manifold_aps.diffusion.training import gaussian_residual_prior
from manifold_aps.diffusion.saving import load_prior, save_prior
from manifold_aps.gaussian_posterior import fit_ppca
from manifold_aps.signals import VertexLayout

MESH = aps.latlon_sphere(30.0)  # 84 vertices, padded to 96
BASES = {"mlp": dict(width=32, depth=2, time_dim=16),
         "unet1d": dict(channels=8, channel_multipliers=(1, 2, 2), time_dim=16, groups=4)}


def _signals(count: int, channels: int = 1) -> torch.Tensor:
    """Non-Gaussian signals: smooth bumps with random sign-squared amplitudes."""
    generator = torch.Generator().manual_seed(0)
    vertices = torch.as_tensor(MESH.vertices, dtype=torch.float32)
    centres = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator), dim=1)
    bumps = torch.exp(-4.0 * ((vertices[None] - centres[:, None]) ** 2).sum(-1))
    amplitudes = torch.randn(count, 1, channels, generator=generator) ** 2
    return bumps[..., None] * amplitudes


def _batch(layout, count=6):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(count, layout.dim, generator=generator), torch.linspace(0.02, 0.9, count)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("channels", [1, 2])
def test_prior_equals_the_exact_gaussian_at_initialisation(base, channels):
    train = _signals(200, channels)
    layout = VertexLayout(MESH.num_vertices, channels)
    prior = gaussian_residual_prior(train, layout, base=base, rank=10, mesh=MESH, **BASES[base])
    gaussian = exact_gaussian_prior(fit_ppca(train.reshape(200, -1), 10), layout)
    x, t = _batch(layout)
    real = prior.network.real_entries
    with torch.no_grad():
        ours, exact = prior(x, t), gaussian(x, t)
    assert torch.equal(ours[:, real], exact[:, real])
    assert torch.allclose(ours, exact, atol=1e-5)


def test_correction_gain_vanishes_at_large_noise():
    """Changing F_θ moves the denoised estimate by at most ≈ s·|ΔF| at large t (the
    preconditioning), but moves ε at full strength at small t."""
    train = _signals(200)
    layout = VertexLayout(MESH.num_vertices)
    network = gaussian_residual_prior(train, layout, rank=10, correction_scale=0.3, **BASES["mlp"]).network
    scale = network.config["correction_scale"]
    sde = VPSDE()
    x = torch.randn(4, layout.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = {t: network(x, torch.full((4,), t)) for t in (0.01, 0.9)}
        network.correction.output[-1].bias.fill_(1.0)  # F_θ = 1 on every real entry
        changes = {t: (network(x, torch.full((4,), t)) - before[t])[:, network.real_entries].abs().max()
                   for t in (0.01, 0.9)}
    alpha, sigma = sde.alpha(torch.tensor(0.9)), sde.sigma(torch.tensor(0.9))
    assert abs(float(changes[0.01]) - 1.0) < 0.05
    assert abs(float(changes[0.9] * sigma / alpha) - scale) < 0.01 * scale


def test_save_and_load_round_trip_keeps_the_gaussian(tmp_path):
    train = _signals(200)
    layout = VertexLayout(MESH.num_vertices)
    prior = gaussian_residual_prior(train, layout, rank=10, **BASES["mlp"])
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    save_prior(tmp_path / "prior.pt", prior)
    loaded = load_prior(tmp_path / "prior.pt")
    assert loaded.network.config == prior.network.config
    x, t = _batch(layout)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), prior(x, t))
    assert torch.equal(loaded.network.gaussian.eigenvectors, prior.network.gaussian.eigenvectors)


def test_bad_arguments_are_named():
    layout = VertexLayout(MESH.num_vertices)
    gaussian = fit_ppca(_signals(50).reshape(50, -1), 5)
    with pytest.raises(ValueError, match="rank"):
        build_network("gaussian_residual", layout, base="mlp", base_config=dict(width=16, depth=1), rank=6,
                      gaussian=gaussian)
    with pytest.raises(ValueError, match="start at zero"):
        build_network("gaussian_residual", layout, mesh=MESH, base="spectral", base_config=dict(num_modes=8), rank=5,
                      gaussian=gaussian)
    with pytest.raises(ValueError, match="correction_scale"):
        build_network("gaussian_residual", layout, base="mlp", base_config=dict(width=16, depth=1), rank=5,
                      correction_scale=0.0)
