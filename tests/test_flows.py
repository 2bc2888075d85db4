"""Conditional flows: invertibility, exact log-determinants, identity at initialisation, save/load,
loading package 0.1.0 checkpoints, shared condition encoders. The layers one by one:
tests/test_flow_layers.py."""

import pytest
import torch

from manifold_aps import latlon_sphere
from manifold_aps.flows import ActNorm, ConditionalMeshFlow, ConditionalRealNVP

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MESH = latlon_sphere(60.0)  # 18 vertices: small enough for dense Jacobians


def make_flow(kind: str, **overrides):
    if kind.startswith("realnvp"):
        config = dict(dim=MESH.num_vertices, cond_dim=2 * MESH.num_vertices, depth=3, hidden=16, permutation="random",
                      aligned_features=0 if kind == "realnvp" else 2,
                      condition_features=6 if kind == "realnvp_encoded" else 0)
        config.update(overrides)
        return ConditionalRealNVP(**config)
    config = dict(num_vertices=MESH.num_vertices, cond_channels=2, depth=2, hidden=8, partition="parity",
                  order=1 if kind == "mesh_order1" else 3, condition_features=3 if kind == "mesh_encoded" else 0,
                  layers=1 if kind == "mesh_encoded" else 3)
    config.update(overrides)
    return ConditionalMeshFlow(MESH.edge_index, **config)


def condition(batch: int, device="cpu"):
    return torch.randn(batch, MESH.num_vertices, 2, device=device, dtype=torch.float64)


def perturb_weights(flow: torch.nn.Module, scale: float = 0.3):
    """Move every zero-initialised layer away from the identity so the checks test something."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype).to(parameter.device))
    return flow


FLOWS = ["realnvp", "realnvp_aligned", "realnvp_encoded", "mesh", "mesh_order1", "mesh_encoded"]
# aligned: per-coordinate skips from (y, mask); encoded: a condition encoder shared by the couplings
ENCODED = ["realnvp_encoded", "mesh_encoded"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", FLOWS)
def test_inverse_undoes_forward(kind, device):
    flow = perturb_weights(make_flow(kind).double().to(device)).eval()
    z, c = torch.randn(7, MESH.num_vertices, dtype=torch.float64, device=device), condition(7, device)
    x, log_det = flow(z, c)
    z_back, inverse_log_det = flow.inverse(x, c)
    assert (x - z).abs().max() > 1e-2  # the flow is not the identity here
    torch.testing.assert_close(z_back, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", FLOWS)
def test_log_det_matches_autograd_jacobian(kind):
    flow = perturb_weights(make_flow(kind).double()).eval()
    c = condition(1)
    z = torch.randn(1, MESH.num_vertices, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None], c)[0][0], z[0])
    sign, expected = torch.linalg.slogdet(jacobian)
    _, log_det = flow(z, c)
    assert abs(log_det.item() - expected.item()) < 1e-6
    assert abs(float(expected)) > 0.1


@pytest.mark.parametrize("kind", FLOWS)
def test_fresh_flow_is_identity(kind):
    flow = make_flow(kind).double()
    z, c = torch.randn(4, MESH.num_vertices, dtype=torch.float64), condition(4)
    x, log_det = flow(z, c)
    assert torch.equal(x, z)
    assert torch.equal(log_det, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("kind", FLOWS)
def test_save_load_round_trip(kind, tmp_path):
    flow = perturb_weights(make_flow(kind, seed=3))
    flow.initialize(torch.randn(16, MESH.num_vertices) * 3 + 1, condition(16).float())
    torch.save({"config": flow.config, "state": flow.state_dict()}, tmp_path / "flow.pt")
    saved = torch.load(tmp_path / "flow.pt", weights_only=True)
    rebuilt = make_flow(kind, **saved["config"])
    rebuilt.load_state_dict(saved["state"])
    z, c = torch.randn(5, MESH.num_vertices), condition(5).float()
    torch.testing.assert_close(rebuilt(z, c)[0], flow(z, c)[0], atol=0, rtol=0)


@pytest.mark.parametrize("kind", FLOWS)
def test_sample_shape_and_log_prob(kind):
    flow = perturb_weights(make_flow(kind).double(), 0.1).eval()
    c = condition(3)
    samples = flow.sample(c, n=4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 3, MESH.num_vertices)
    assert torch.isfinite(flow.log_prob(samples.reshape(12, -1), c.repeat(4, 1, 1))).all()


@pytest.mark.parametrize("kind", FLOWS)
def test_rejects_wrong_shapes(kind):
    flow = make_flow(kind)
    with pytest.raises(ValueError, match="expected a batch"):
        flow(torch.randn(2, MESH.num_vertices + 1), condition(2).float())
    with pytest.raises(ValueError, match="condition"):
        flow(torch.randn(2, MESH.num_vertices), torch.randn(2, MESH.num_vertices, 3))


def test_actnorm_initialises_on_first_batch():
    layer = ActNorm(4)
    data = torch.randn(256, 4) * torch.tensor([0.5, 2.0, 3.0, 1.0]) + torch.tensor([1.0, -2.0, 0.0, 5.0])
    z, _ = layer.inverse(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4), atol=1e-4, rtol=0)
    before = layer.bias.clone()
    layer.inverse(data * 10)  # later batches leave the initialisation alone
    assert torch.equal(layer.bias, before)


@pytest.mark.parametrize("kind", [kind for kind in FLOWS if kind not in ENCODED])
def test_loads_package_0_1_checkpoints(kind):
    """Package 0.1.0 called the depth ``n_steps`` in configs and stored each coupling's network
    entries on the coupling itself (``layers.1.net.0.weight``, ``layers.1.active_coordinates``, ...)."""
    flow = perturb_weights(make_flow(kind, seed=2))
    config = dict(flow.config)
    config["n_steps"] = config.pop("depth")
    state = {key.replace(".conditioner.", "."): value for key, value in flow.state_dict().items()}
    for key in [key for key in state if key.endswith(".net.0.weight")]:  # every 0.1.0 vector coupling had it
        state.setdefault(key.replace("net.0.weight", "active_coordinates"), torch.arange(MESH.num_vertices // 2))
    with pytest.warns(DeprecationWarning, match="depth"):
        rebuilt = ConditionalMeshFlow(MESH.edge_index, **config) if kind.startswith("mesh") else ConditionalRealNVP(**config)
    rebuilt.load_state_dict(state)
    assert rebuilt.config == flow.config
    z, c = torch.randn(5, MESH.num_vertices), condition(5).float()
    torch.testing.assert_close(rebuilt(z, c)[0], flow(z, c)[0], atol=0, rtol=0)


def test_depth_counts_coupling_steps():
    assert sum(isinstance(layer, ActNorm) for layer in make_flow("realnvp", depth=5).layers) == 5
    assert sum(isinstance(layer, ActNorm) for layer in make_flow("mesh", depth=4).layers) == 4


@pytest.mark.parametrize("kind", ENCODED)
def test_sample_encodes_each_condition_once_and_matches_forward(kind):
    flow = perturb_weights(make_flow(kind).double(), 0.1).eval()
    calls = []
    flow.encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    c = condition(3)
    samples = flow.sample(c, n=5, generator=torch.Generator().manual_seed(0))
    assert calls == [3]  # once for the 3 conditions, not once per draw or per coupling
    z = torch.randn(15, MESH.num_vertices, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(samples.reshape(15, -1), flow(z, c.repeat(5, 1, 1))[0], atol=1e-12, rtol=0)


def test_encoded_realnvp_couplings_do_not_read_the_raw_condition():
    """Coupling networks read ``[z_P, e]``: their size does not grow with the condition."""
    small, large = (make_flow("realnvp_encoded", cond_dim=k * MESH.num_vertices, aligned_features=k) for k in (2, 6))
    difference = sum(p.numel() for p in large.parameters()) - sum(p.numel() for p in small.parameters())
    encoder_difference = 4 * MESH.num_vertices * 6  # the encoder's first layer: 4 V more inputs × m = 6
    skip_difference = 4 * MESH.num_vertices // 2 * 6  # per-coordinate skips: 4 more features × |A| × 6 couplings
    assert difference == encoder_difference + skip_difference


def test_realnvp_projects_the_condition_once_and_computes_the_same_map():
    """Without an encoder each coupling's share of the condition (``W_c c`` and the aligned skip's
    shift) is prepared once per condition; the map equals the network reading ``[z_P, c]`` whole."""
    from manifold_aps.flows.realnvp import ConditionalRealNVP

    torch.manual_seed(0)
    flow = ConditionalRealNVP(6, 12, depth=2, hidden=8, aligned_features=2).eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.copy_(0.3 * torch.randn_like(parameter))
    z, condition = torch.randn(5, 6), torch.randn(5, 12)
    prepared = flow.prepare_condition(condition)
    assert prepared.shape == (5, 4 * (8 + 3))  # the 2 × depth couplings' W_c c (8) and skip shift (|A| = 3)
    x, log_det = flow(z, condition)
    for conditioner in flow._projecting:
        raw_scale, shift = conditioner(z[:, :3], prepared)
        whole_scale, whole_shift = conditioner.net(torch.cat([z[:, :3], condition], dim=1)).chunk(2, dim=1)
        aligned = condition.reshape(5, 6, 2)[:, conditioner.active_coordinates]
        torch.testing.assert_close(raw_scale, whole_scale)
        torch.testing.assert_close(shift, whole_shift + (aligned * conditioner.skip).sum(dim=-1))
    back, inverse_log_det = flow.inverse(x, condition)
    torch.testing.assert_close(back, z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-5, rtol=1e-5)
    draws = flow.sample(condition, n=3, generator=torch.Generator().manual_seed(1))
    z_draws = torch.randn(15, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(draws, flow(z_draws, condition.repeat(3, 1))[0].reshape(3, 5, 6))


def test_coupling_reads_a_split_mask_with_slices_and_any_mask_by_index():
    """A passive-first mask is read with slices, any other mask with index_select/index_copy: both
    give ``x_P = z_P``, ``x_A = z_A e^s + t`` and invert exactly."""
    from manifold_aps.flows.conditioners import MLPConditioner
    from manifold_aps.flows.coupling import AffineCoupling

    torch.manual_seed(0)
    for mask, split in [(torch.arange(7) >= 3, 3), (torch.arange(7) % 2 == 1, None)]:
        coupling = AffineCoupling(mask, MLPConditioner(int((~mask).sum()), int(mask.sum()), cond_dim=2, hidden=8))
        assert coupling.split == split
        with torch.no_grad():
            coupling.conditioner.net[-1].weight.normal_()
        z, condition = torch.randn(4, 7), torch.randn(4, 2)
        x, log_det = coupling(z, condition)
        log_scale, shift = coupling._scale_shift(z[:, ~mask], condition)
        torch.testing.assert_close(x[:, ~mask], z[:, ~mask])
        torch.testing.assert_close(x[:, mask], z[:, mask] * log_scale.exp() + shift)
        back, inverse_log_det = coupling.inverse(x, condition)
        torch.testing.assert_close(back, z)
        torch.testing.assert_close(inverse_log_det, -log_det)
