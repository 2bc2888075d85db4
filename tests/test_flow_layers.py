"""Every flow layer through the same call ``layer(z, c) → (x, log_det)``: inverse round trip, log-det
against the autograd Jacobian, identity at initialisation, save/load; the Chebyshev convolution
against ``torch_geometric.nn.ChebConv``; the condition encoders; recomputed activations."""

import pytest
import torch
from torch_geometric.nn import ChebConv

from manifold_aps import latlon_sphere
from manifold_aps.flows import (ActNorm, AffineCoupling, ChebyshevConv, GraphConditioner, MeshConditionEncoder,
                                MLPConditioner, Permutation, scaled_laplacian)

MESH = latlon_sphere(60.0)  # 18 vertices: small enough for dense Jacobians
V = MESH.num_vertices
ACTIVE_VERTICES = torch.arange(V) % 3 == 0


def graph_coupling(channels: int, order: int, recompute: bool = False):
    conditioner = GraphConditioner(MESH.edge_index, V, channels, 2, ACTIVE_VERTICES, hidden=8, layers=2, order=order,
                                   recompute=recompute)
    return AffineCoupling(ACTIVE_VERTICES.repeat_interleave(channels), conditioner, scale_bound=1.5), V * channels, (V, 2)


def mlp_coupling(cond_dim: int, aligned_features: int = 0, encoded_features: int = 0):
    mask = torch.arange(V) % 2 == 1  # not contiguous: the coupling reads and writes by mask
    coordinates = torch.randperm(V, generator=torch.Generator().manual_seed(0))[mask] if aligned_features else None
    conditioner = MLPConditioner(V - int(mask.sum()), int(mask.sum()), cond_dim, hidden=16, layers=2,
                                 aligned_features=aligned_features, active_coordinates=coordinates,
                                 encoded_features=encoded_features)
    return AffineCoupling(mask, conditioner), V, (encoded_features + cond_dim,) if cond_dim else None


LAYERS = {  # name: () → (layer, d, condition shape per sample or None)
    "actnorm": lambda: (ActNorm(V), V, None),
    "permutation": lambda: (Permutation(torch.randperm(V, generator=torch.Generator().manual_seed(0))), V, None),
    "coupling_mlp": lambda: mlp_coupling(cond_dim=3),
    "coupling_mlp_unconditional": lambda: mlp_coupling(cond_dim=0),
    "coupling_mlp_aligned": lambda: mlp_coupling(cond_dim=2 * V, aligned_features=2),
    # condition [e, c]: 5 shared encoder features, then the raw aligned condition
    "coupling_mlp_encoded": lambda: mlp_coupling(cond_dim=2 * V, aligned_features=2, encoded_features=5),
    "coupling_graph": lambda: graph_coupling(channels=1, order=3),
    "coupling_graph_order1": lambda: graph_coupling(channels=1, order=1),
    "coupling_graph_two_channels": lambda: graph_coupling(channels=2, order=2),
    "coupling_graph_recompute": lambda: graph_coupling(channels=1, order=3, recompute=True),
}


def make(name: str, perturb: bool = True):
    torch.manual_seed(0)
    layer, dim, condition_shape = LAYERS[name]()
    layer = layer.double()
    if perturb:  # move every zero-initialised part away from the identity so the checks test something
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in layer.parameters():
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return layer.eval(), dim, condition_shape


def inputs(dim: int, condition_shape, batch: int):
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    condition = None if condition_shape is None else torch.randn(batch, *condition_shape, generator=generator,
                                                                  dtype=torch.float64)
    return z, condition


@pytest.mark.parametrize("name", LAYERS)
def test_inverse_undoes_forward(name):
    layer, dim, condition_shape = make(name)
    z, c = inputs(dim, condition_shape, 6)
    x, log_det = layer(z, c)
    z_back, inverse_log_det = layer.inverse(x, c)
    assert x.shape == z.shape and log_det.shape == (6,)
    assert (x - z).abs().max() > 1e-2  # the layer is not the identity here
    torch.testing.assert_close(z_back, z, atol=1e-10, rtol=0)
    torch.testing.assert_close(inverse_log_det, -log_det, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", LAYERS)
def test_log_det_matches_autograd_jacobian(name):
    layer, dim, condition_shape = make(name)
    z, c = inputs(dim, condition_shape, 1)
    for direction in (layer, layer.inverse):
        jacobian = torch.autograd.functional.jacobian(lambda v: direction(v[None], c)[0][0], z[0])
        sign, expected = torch.linalg.slogdet(jacobian)
        _, log_det = direction(z, c)
        assert sign != 0
        assert abs(log_det.item() - expected.item()) < 1e-9
        if name != "permutation":
            assert abs(expected.item()) > 0.01  # not volume preserving


@pytest.mark.parametrize("name", [name for name in LAYERS if name != "permutation"])
def test_fresh_layer_is_identity(name):
    layer, dim, condition_shape = make(name, perturb=False)
    z, c = inputs(dim, condition_shape, 4)
    x, log_det = layer(z, c)
    assert torch.equal(x, z)
    assert torch.equal(log_det, torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("name", LAYERS)
def test_save_load_round_trip(name, tmp_path):
    layer, dim, condition_shape = make(name)
    torch.save(layer.state_dict(), tmp_path / "layer.pt")
    rebuilt, _, _ = make(name, perturb=False)
    rebuilt.load_state_dict(torch.load(tmp_path / "layer.pt", weights_only=True))
    z, c = inputs(dim, condition_shape, 3)
    torch.testing.assert_close(rebuilt(z, c), layer(z, c), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["coupling_mlp_aligned", "coupling_mlp_encoded", "coupling_graph_two_channels"])
def test_coupling_is_affine_in_the_active_entries_given_the_passive_ones(name):
    layer, dim, condition_shape = make(name)
    z, c = inputs(dim, condition_shape, 2)
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[layer.active] = True
    x, log_det = layer(z, c)
    assert torch.equal(x[:, ~mask], z[:, ~mask])
    moved = [layer(z + step * mask, c) for step in (1.0, 2.0)]
    for x_moved, log_det_moved in moved:
        assert torch.equal(x_moved[:, ~mask], z[:, ~mask])
        assert torch.equal(log_det_moved, log_det)  # s and t read the passive entries only
    scale = moved[0][0] - x  # exp(s) on the active entries
    torch.testing.assert_close(moved[1][0] - x, 2 * scale, atol=1e-12, rtol=0)
    torch.testing.assert_close(scale[:, mask].log().sum(dim=1), log_det, atol=1e-12, rtol=0)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("batched", [False, True])
def test_chebyshev_conv_matches_torch_geometric(order, batched):
    torch.manual_seed(order)
    reference = ChebConv(5, 7, K=order).double()
    with torch.no_grad():
        reference.bias.normal_()  # ChebConv starts it at zero
    conv = ChebyshevConv(5, 7, order).double()
    conv.load_state_dict(reference.state_dict())  # the same parameter names
    features = torch.randn(3, V, 5, dtype=torch.float64)
    index, weight = scaled_laplacian(MESH.edge_index, V, torch.float64)
    laplacian = torch.sparse_coo_tensor(index, weight, (V, V), check_invariants=False)
    expected = torch.stack([reference(item, MESH.edge_index) for item in features])
    out = conv(features, laplacian) if batched else torch.stack([conv(item, laplacian) for item in features])
    assert (expected - features[..., :1]).abs().max() > 0.1
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


def test_chebyshev_conv_initialises_as_torch_geometric():
    torch.manual_seed(3)
    reference, after_reference = ChebConv(4, 6, K=3).state_dict(), torch.randn(3)
    torch.manual_seed(3)
    ours, after_ours = ChebyshevConv(4, 6, order=3).state_dict(), torch.randn(3)
    assert list(ours) == list(reference)
    assert all(torch.equal(ours[key], reference[key]) for key in reference)
    assert torch.equal(after_ours, after_reference)  # the same draws: what is built next is the same too


def test_chebyshev_conv_rejects_order_zero():
    with pytest.raises(ValueError, match="order must be ≥ 1"):
        ChebyshevConv(3, 3, order=0)


def test_encoded_mlp_conditioner_reads_the_shared_features_and_skips_from_the_raw_condition():
    layer, dim, condition_shape = make("coupling_mlp_encoded")
    conditioner = layer.conditioner
    assert conditioner.net[0].in_features == V - len(layer.active) + 5  # |P| + m, whatever cond_dim is
    z, c = inputs(dim, condition_shape, 2)
    raw = c.clone()
    raw[:, 5:] += 1.0  # the raw condition reaches the output through the skip only: the shift moves
    scale, shift = conditioner(z[:, layer.passive], c)
    scale_moved, shift_moved = conditioner(z[:, layer.passive], raw)
    assert torch.equal(scale_moved, scale)
    torch.testing.assert_close(shift_moved - shift, conditioner.skip.sum(dim=1).expand(2, -1), atol=1e-12, rtol=0)


def test_recomputed_activations_give_the_same_gradients():
    torch.manual_seed(0)
    layer, dim, condition_shape = make("coupling_graph_recompute")
    kept = AffineCoupling(ACTIVE_VERTICES, GraphConditioner(MESH.edge_index, V, 1, 2, ACTIVE_VERTICES, hidden=8,
                                                            layers=2, order=3), scale_bound=1.5).double()
    kept.load_state_dict(layer.state_dict())
    z, c = inputs(dim, condition_shape, 3)
    gradients = []
    for coupling in (layer, kept):
        x, log_det = coupling(z, c)
        (x.square().sum() - log_det.sum()).backward()
        gradients.append([parameter.grad for parameter in coupling.parameters()])
    for recomputed, stored in zip(*gradients):
        torch.testing.assert_close(recomputed, stored, atol=1e-12, rtol=0)
    assert max(float(grad.abs().max()) for grad in gradients[0]) > 1e-3


@pytest.mark.parametrize("order", [1, 3])
def test_chebyshev_conv_vertex_major_layout_is_the_same_convolution(order):
    torch.manual_seed(order)
    conv = ChebyshevConv(5, 7, order).double()
    features = torch.randn(3, V, 5, dtype=torch.float64)
    index, weight = scaled_laplacian(MESH.edge_index, V, torch.float64)
    laplacian = torch.sparse_coo_tensor(index, weight, (V, V), check_invariants=False)
    vertex_major = conv(features.transpose(0, 1), laplacian, vertex_major=True)
    torch.testing.assert_close(vertex_major.transpose(0, 1), conv(features, laplacian), atol=1e-12, rtol=0)


def test_mesh_condition_encoder_keeps_the_raw_condition_and_mixes_neighbours():
    torch.manual_seed(0)
    encoder = MeshConditionEncoder(MESH.edge_index, V, 2, 6, order=2).double()
    condition = torch.randn(4, V, 2, dtype=torch.float64)
    encoded = encoder(condition)
    assert encoded.shape == (4, V, 8)
    assert torch.equal(encoded[..., :2], condition)
    moved = condition.clone()
    moved[:, 0] += 1.0  # one vertex: its neighbours' features change, far vertices' do not
    change = (encoder(moved) - encoded)[0, :, 2:].abs().sum(dim=-1)
    neighbours = MESH.edge_index[1, MESH.edge_index[0] == 0]
    assert (change[neighbours] > 1e-6).all()
    second = MESH.edge_index[1, torch.isin(MESH.edge_index[0], neighbours)]
    two_hops = set(second.tolist()) | set(neighbours.tolist()) | {0}
    far = [vertex for vertex in range(V) if vertex not in two_hops]
    assert far and (change[far] == 0).all()  # two order-2 convolutions: two hops at most


def test_vertexwise_monotone_is_increasing_with_the_autograd_log_det_and_starts_near_the_identity():
    from manifold_aps.flows import VertexwiseMonotone

    torch.manual_seed(0)
    B, V, C = 3, 5, 2
    features, mean, scale = torch.randn(B, V, 4), torch.randn(B, V, C), torch.rand(B, V, C) + 0.1
    fresh = VertexwiseMonotone(C, 4, components=3)
    x = torch.randn(7, B, V, C)
    y, log_det = fresh(x, features, mean, scale)
    assert y.shape == x.shape and log_det.shape == (7, B)
    torch.testing.assert_close(y, x, atol=0.01 * float(scale.max()), rtol=0)
    torch.nn.init.normal_(fresh.head.weight, std=1.0)
    x.requires_grad_(True)
    y, log_det = fresh(x, features, mean, scale)
    slope = torch.autograd.grad(y.sum(), x)[0]  # entrywise map: the Jacobian is diagonal
    assert (slope > 0).all()
    torch.testing.assert_close(log_det, slope.log().flatten(-2).sum(-1), atol=1e-4, rtol=1e-5)
    values_only, none = fresh(x, features, mean, scale, log_det=False)  # the sampling path
    assert none is None and torch.equal(values_only, y)
    with pytest.raises(ValueError, match="features"):
        fresh(x, features[..., :3], mean, scale)
