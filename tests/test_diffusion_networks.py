"""Noise networks and prior files: shapes, the padding rule, time conditioning, save/load."""

import pytest
import torch

import manifold_aps as aps

from manifold_aps.checkpoint import CheckpointError, save_checkpoint
from manifold_aps.diffusion import DiffusionPrior, VPSDE
from manifold_aps.diffusion.networks import SinusoidalTimeEmbedding, UNet1D, build_network
from manifold_aps.diffusion.saving import load_prior, save_prior
from manifold_aps.diffusion.training import denoising_score_matching_loss, prior_training_config, train_prior
from manifold_aps.signals import MinMaxNormalizer, VertexLayout

CONFIGS = {"unet1d": dict(channels=8, channel_multipliers=(1, 2, 2), time_dim=16, groups=4),
           "mlp": dict(width=32, depth=2, time_dim=16),
           "spectral": dict(num_modes=12, width=32, depth=2, time_dim=16)}
MESH = aps.latlon_sphere(30.0)  # 84 vertices, padded to 96


def _perturbed(network):
    """Give the zero-initialised output layers weights so outputs depend on the input."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return network


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("channels", [1, 2])
def test_network_shapes_padding_rule_and_time_dependence(name, channels):
    layout = VertexLayout(MESH.num_vertices, channels)
    sde = VPSDE()
    network = _perturbed(build_network(name, layout, mesh=MESH, sde=sde, **CONFIGS[name]))
    x = torch.randn(5, layout.dim, generator=torch.Generator().manual_seed(3))
    t = torch.linspace(0.05, 0.95, 5)
    out = network(x, t)
    assert out.shape == (5, layout.dim) and torch.isfinite(out).all()
    padding = ~network.real_entries
    assert torch.allclose(out[:, padding], x[:, padding] / sde.sigma(t)[:, None])
    assert not torch.allclose(out, network(x, t.flip(0)))  # the time embedding matters
    # Channel-major mixing: changing one real vertex's value changes the prediction elsewhere.
    shifted = x.clone()
    shifted[:, 0] += 1.0
    assert (network(shifted, t) - out)[:, 1:][:, network.real_entries[1:]].abs().max() > 0


def test_zero_initialised_networks_start_from_unit_loss():
    layout = VertexLayout(MESH.num_vertices)
    data = torch.nn.functional.pad(torch.randn(256, 84, generator=torch.Generator().manual_seed(1)), (0, 12))
    for name in ("unet1d", "mlp"):
        network = build_network(name, layout, **CONFIGS[name])
        with torch.no_grad():
            loss = denoising_score_matching_loss(network, data, torch.Generator().manual_seed(0))
        # ε_θ = 0 on the real entries: the loss is the mean of e² there (84/96 of the entries).
        assert abs(float(loss) - 84 / 96) < 0.03


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="divisible"):
        UNet1D(VertexLayout(40, multiple=8), channel_multipliers=(1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown network"):
        build_network("transformer", VertexLayout(10))
    with pytest.raises(TypeError, match="VertexLayout"):
        build_network("mlp", 32)
    network = build_network("mlp", VertexLayout(10), width=8, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 32\)"):
        network(torch.zeros(2, 31), torch.zeros(2))
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(7)
    with pytest.raises(RuntimeError, match="without a mesh"):
        build_network("spectral", VertexLayout(84), num_modes=4)(torch.zeros(1, 96), torch.ones(1))
    with pytest.raises(ValueError, match="vertices"):
        build_network("spectral", VertexLayout(80), mesh=MESH)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_prior_file_round_trip(tmp_path, name):
    layout = VertexLayout(MESH.num_vertices)
    sde = VPSDE(beta_max=15.0)
    prior = DiffusionPrior(_perturbed(build_network(name, layout, mesh=MESH, sde=sde, **CONFIGS[name])), layout, sde)
    save_prior(tmp_path / "prior.pt", prior, normalizer=MinMaxNormalizer(202.66, 320.93))
    loaded = load_prior(tmp_path / "prior.pt")
    assert loaded.sde == sde and loaded.layout == layout and type(loaded.network) is type(prior.network)
    assert loaded.normalizer == MinMaxNormalizer(202.66, 320.93)
    x, t = torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(2)), torch.linspace(0.1, 0.9, 3)
    # (the spectral basis comes from the file; einsum may order its sums differently: allclose)
    assert torch.allclose(loaded.score(x, t), prior.eval().score(x, t), rtol=1e-5, atol=1e-5)
    generator = torch.Generator().manual_seed(0)
    assert torch.allclose(loaded.elbo(x, generator=generator), prior.elbo(x, generator=torch.Generator().manual_seed(0)),
                          rtol=1e-5)


def test_training_checkpoint_loads_as_prior_with_ema_weights(tmp_path):
    layout = VertexLayout(20)
    prior = DiffusionPrior(build_network("mlp", layout, **CONFIGS["mlp"]), layout)
    data = torch.nn.functional.pad(torch.randn(64, 20, generator=torch.Generator().manual_seed(1)), (0, 12))
    config = prior_training_config("smoke", iterations=6, progress=False, device="cpu")
    train_prior(prior, data, config, checkpoint_path=tmp_path / "train.pt")
    loaded = load_prior(tmp_path / "train.pt")
    for name, value in prior.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    with pytest.raises(ValueError, match="padding"):
        train_prior(prior, torch.randn(64, 32), config)
    save_checkpoint(tmp_path / "other.pt", {"x": 1}, kind="flow")
    with pytest.raises(CheckpointError, match="without a diffusion prior"):
        load_prior(tmp_path / "other.pt")


def test_presets():
    assert prior_training_config("paper", task="bunny").iterations == 500_000
    paper = prior_training_config("paper", task="era5")
    assert (paper.iterations, paper.batch_size, paper.learning_rate) == (360_000, 64, 2e-4)
    assert prior_training_config("smoke", iterations=3).iterations == 3
    with pytest.raises(ValueError, match="unknown scale"):
        prior_training_config("huge")
