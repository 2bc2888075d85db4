"""DiffusionNet noise network: operators, locality, padding rule, save/load, residual use."""

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.diffusion import VPSDE
from manifold_aps.diffusion.mesh_networks import DiffusionNet, eigenbasis_gradients
from manifold_aps.diffusion.networks import build_network
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.saving import load_prior, save_prior
from manifold_aps.signals import VertexLayout

MESH = aps.latlon_sphere(20.0)  # 10 × 18 = 180 vertices
CONFIG = dict(num_modes=16, width=8, depth=2, time_dim=16)


def _perturbed(network):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return network


def test_gradients_of_a_linear_function_are_its_tangent_projection():
    """∇(a·x) on the unit sphere is a minus its normal part: |∇f| = |a| sin(angle to the normal)."""
    vertices = MESH.vertices.numpy()
    direction = np.array([0.3, -0.5, 0.8])
    values = (vertices @ direction)[:, None]
    gradient = eigenbasis_gradients(vertices, MESH.edge_index.numpy(), values)[:, :, 0]
    normals = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    expected = np.linalg.norm(direction - (normals @ direction)[:, None] * normals, axis=1)
    away_from_poles = np.abs(normals[:, 2]) < 0.9
    relative = np.abs(np.linalg.norm(gradient, axis=1) - expected)[away_from_poles] / np.linalg.norm(direction)
    assert np.median(relative) < 0.05


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_padding_rule_zero_start_and_locality(channels):
    layout = VertexLayout(MESH.num_vertices, channels)
    sde = VPSDE()
    network = build_network("diffusion_net", layout, mesh=MESH, sde=sde, **CONFIG)
    x = torch.randn(3, layout.dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.4, 0.9])
    assert torch.equal(network(x, t)[:, network.real_entries], torch.zeros(3, int(network.real_entries.sum())))
    _perturbed(network)
    out = network(x, t)
    padding = ~network.real_entries
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out[:, padding], x[:, padding] / sde.sigma(t)[:, None])
    assert not torch.allclose(out, network(x, t.flip(0)))
    # A change at one vertex moves the prediction there more than at the far side of the sphere.
    shifted = x.clone()
    shifted[:, 5 * 18 * channels] += 3.0  # vertex (row 5, column 0)
    change = (network(shifted, t) - out).detach().abs().reshape(3, -1, channels)[:, : MESH.num_vertices].sum(dim=(0, 2))
    assert change[5 * 18] > 3 * change[5 * 18 + 9]


def test_save_and_load_without_the_mesh(tmp_path):
    layout = VertexLayout(MESH.num_vertices)
    prior = DiffusionPrior(_perturbed(build_network("diffusion_net", layout, mesh=MESH, **CONFIG)), layout)
    save_prior(tmp_path / "prior.pt", prior)
    loaded = load_prior(tmp_path / "prior.pt")
    x, t = torch.randn(2, layout.dim), torch.tensor([0.1, 0.6])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), prior(x, t))
    with pytest.raises(RuntimeError, match="without a mesh"):
        DiffusionNet(layout, **CONFIG)(x, t)


def test_usable_as_gaussian_residual_correction():
    from manifold_aps.gaussian_posterior import fit_ppca

    layout = VertexLayout(MESH.num_vertices)
    train = torch.randn(40, MESH.num_vertices, generator=torch.Generator().manual_seed(2))
    network = build_network("gaussian_residual", layout, mesh=MESH, base="diffusion_net", base_config=CONFIG, rank=5,
                            gaussian=fit_ppca(train, 5))
    assert isinstance(network.correction, DiffusionNet) and bool(network.correction.analysis.any())
