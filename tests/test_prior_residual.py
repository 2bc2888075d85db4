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
         "unet1d": dict(channels=8, channel_multipliers=(1, 2, 2), time_dim=16, groups=4),
         "vertex_mlp": dict(width=16, depth=2, time_dim=16),
         "sum": dict(parts=[dict(name="vertex_mlp", config=dict(width=8, depth=1, time_dim=16)),
                            dict(name="mlp", config=dict(width=16, depth=1, time_dim=16))])}


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


@pytest.mark.parametrize("guide", [True, False])
@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("channels", [1, 2])
def test_prior_equals_the_exact_gaussian_at_initialisation(base, channels, guide):
    train = _signals(200, channels)
    layout = VertexLayout(MESH.num_vertices, channels)
    prior = gaussian_residual_prior(train, layout, base=base, rank=10, mesh=MESH, guide=guide, **BASES[base])
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


@pytest.mark.parametrize("channels", [1, 2])
def test_guided_correction_reads_x_t_the_gaussian_estimate_and_the_mean_per_vertex(channels):
    train = _signals(200, channels)
    layout = VertexLayout(MESH.num_vertices, channels)
    network = gaussian_residual_prior(train, layout, base="vertex_mlp", rank=10, **BASES["vertex_mlp"]).network
    seen = []
    network.correction.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x, t = _batch(layout)
    with torch.no_grad():
        network(x, t)
        gaussian_noise = network.gaussian(x, t)
    alpha, sigma = network.sde.alpha(t)[:, None], network.sde.sigma(t)[:, None]
    scale = network.config["data_scale"]
    mean = network.gaussian.mean.float()
    expected_noisy = (x - alpha * mean) / torch.sqrt(alpha**2 * scale**2 + sigma**2)
    expected_guide = ((x - sigma * gaussian_noise) / alpha - mean) / scale  # (x̂_0^G − μ) / s_d
    inputs = network.correction.layout.unflatten(seen[0])  # (B, V_pad, 3C)
    real = layout.vertex_mask()
    assert torch.allclose(inputs[:, real, :channels], layout.unflatten(expected_noisy)[:, real], atol=1e-5)
    assert torch.allclose(inputs[:, real, channels:2 * channels], layout.unflatten(expected_guide)[:, real], atol=1e-4)
    expected_mean = layout.unflatten((mean / scale).expand_as(x))
    assert torch.allclose(inputs[:, real, 2 * channels:], expected_mean[:, real], atol=1e-5)
    assert abs(scale - float(train.std())) < 0.5 * float(train.std())  # the RMS std of the data


def test_vertex_mlp_does_not_mix_vertices():
    layout = VertexLayout(MESH.num_vertices, 2)
    network = build_network("vertex_mlp", layout, width=8, depth=2, time_dim=8)
    for parameter in network.parameters():  # leave the zero output layer: make every layer act
        torch.nn.init.normal_(parameter, std=0.3)
    x, t = _batch(layout)
    moved = layout.unflatten(x.clone())
    moved[:, 5] += 1.0
    with torch.no_grad():
        change = layout.unflatten(network(layout.flatten(moved), t) - network(x, t)).abs().sum(dim=(0, 2))
    assert change[5] > 0
    assert float(change.sum() - change[5]) == 0.0


@pytest.mark.parametrize("guide", [True, False])
def test_only_the_guided_correction_beats_the_gaussian_on_binary_signals(guide):
    """Signals that are 0 or 1 at every vertex: the Gaussian's estimate is a blur between the two, a
    per-vertex correction that reads it learns to push it back to 0 or 1 (a few hundred steps); an
    MLP correction that reads only x_t, trained the same way, barely moves."""
    torch.manual_seed(0)
    train = (_signals(2000) > 0.3).float()
    layout = VertexLayout(MESH.num_vertices)
    prior = gaussian_residual_prior(train, layout, base="vertex_mlp" if guide else "mlp", rank=10, width=32, depth=2,
                                    time_dim=16, guide=guide)
    config = aps.diffusion.prior_training_config("smoke", iterations=300, batch_size=64, learning_rate=3e-3,
                                                 ema_decay=0.9, warmup_iterations=20, progress=False)
    aps.diffusion.train_prior(prior, layout.pad(train), config)
    test = layout.flatten(layout.pad((_signals(2300)[2000:] > 0.3).float()))
    gaussian = exact_gaussian_prior(fit_ppca(train.reshape(2000, -1), 10), layout)
    t = torch.full((test.shape[0],), 0.05)
    noisy = prior.sde.perturb(test, t, torch.randn(test.shape, generator=torch.Generator().manual_seed(4)))
    alpha, sigma = prior.sde.alpha(t)[:, None], prior.sde.sigma(t)[:, None]
    with torch.no_grad():
        errors = [(((noisy - sigma * p(noisy, t)) / alpha - test)[:, prior.network.real_entries] ** 2).mean()
                  for p in (prior, gaussian)]
    assert errors[0] < 0.3 * errors[1] if guide else errors[0] > 0.8 * errors[1]


def test_a_mixture_of_ppca_can_stand_in_for_the_gaussian_and_round_trips(tmp_path):
    from manifold_aps.mixture_of_ppca import fit_mixture_of_ppca

    train = _signals(300)
    layout = VertexLayout(MESH.num_vertices)
    prior = gaussian_residual_prior(train, layout, base="vertex_mlp", rank=6, components=3, **BASES["vertex_mlp"])
    exact = fit_mixture_of_ppca(train.reshape(300, -1), 3, 6).exact_prior(layout)
    x, t = _batch(layout)
    with torch.no_grad():
        assert torch.allclose(prior(x, t), exact(x, t), atol=1e-5)  # the correction starts at zero
        rows = train.reshape(300, -1).double()
        assert abs(prior.network.config["data_scale"] - float(rows.var(0, unbiased=False).mean().sqrt())) < 0.05 * \
            float(rows.std())
        for parameter in prior.network.correction.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    save_prior(tmp_path / "prior.pt", prior)
    loaded = load_prior(tmp_path / "prior.pt")
    assert loaded.network.config["components"] == 3
    with torch.no_grad():
        assert torch.equal(loaded(x, t), prior(x, t))


def test_a_sum_correction_adds_its_parts_and_round_trips(tmp_path):
    train = _signals(200)
    layout = VertexLayout(MESH.num_vertices)
    prior = gaussian_residual_prior(train, layout, base="sum", rank=10, mesh=MESH, **BASES["sum"])
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(3)))
    correction = prior.network.correction
    inputs, t = _batch(correction.layout)
    with torch.no_grad():
        torch.testing.assert_close(correction.predict(inputs, t), sum(part.predict(inputs, t) for part in correction.parts))
    save_prior(tmp_path / "prior.pt", prior)
    loaded = load_prior(tmp_path / "prior.pt")
    x, t = _batch(layout)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), prior(x, t))
    with pytest.raises(ValueError, match="at least two"):
        build_network("sum", layout, parts=[dict(name="mlp", config={})])
