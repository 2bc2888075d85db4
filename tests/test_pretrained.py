"""Shipped models: export writes a compact prior + prior-less samplers + card; loading restores them."""

import pytest
import torch

import manifold_aps as aps
from manifold_aps import pretrained
from manifold_aps.checkpoint import CheckpointError
from manifold_aps.diffusion import DiffusionPrior, build_network

from test_aps import LAYOUT, MESH, NOISE
from test_gaussian_base import measurement_of


@pytest.fixture(scope="module")
def trained():
    from manifold_aps.data.gaussian_fields import GaussianRandomField

    field = GaussianRandomField(MESH, length_scale=1.0, num_modes=40, nugget=0.1, mean=0.5, variance=0.02)
    torch.manual_seed(0)
    prior = DiffusionPrior(build_network("mlp", LAYOUT, width=64, depth=2), LAYOUT)
    signals = field.sample(32, torch.Generator().manual_seed(0)).float().numpy()
    model = aps.fit(MESH, signals, noise_std=NOISE, prior=prior, scale="smoke", progress=False, iterations=3)
    return field, prior, model


def test_export_and_load_round_trip(trained, tmp_path):
    field, prior, model = trained
    written = pretrained.export("grf", prior, {"aps": model}, "# card\n", folder=tmp_path)
    assert [p.name for p in written] == ["grf_prior.pt", "grf_aps.pt", "grf.md"]
    assert pretrained.available(tmp_path) == ["grf"]
    assert pretrained.model_card("grf", tmp_path) == "# card\n"
    loaded = pretrained.load_sampler("grf", folder=tmp_path)
    measurement = measurement_of(field)
    draws = loaded.sample_measurement(measurement, 8, torch.Generator().manual_seed(1))
    reference = model.sample_measurement(measurement, 8, torch.Generator().manual_seed(1))
    assert (draws - reference).abs().max() < 0.02  # float16 storage of the large weights only
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    loaded_prior = pretrained.load_prior("grf", tmp_path)
    x = torch.rand(4, LAYOUT.padded_vertices)
    t = torch.full((4,), 0.3)
    assert (loaded_prior.network(x, t) - prior.network(x, t)).abs().max() < 0.02


def test_missing_and_mismatched_models_are_named(trained, tmp_path):
    field, prior, model = trained
    with pytest.raises(FileNotFoundError, match="no shipped model 'grf_blind'"):
        pretrained.export("grf", prior, {"aps": model}, "card", folder=tmp_path)
        pretrained.load_sampler("grf", blind=True, folder=tmp_path)
    other = DiffusionPrior(build_network("mlp", LAYOUT, width=64, depth=2), LAYOUT)
    with pytest.raises(ValueError, match="different prior"):
        pretrained.export("grf", other, {"aps": model}, "card", folder=tmp_path / "x")
    with pytest.raises(ValueError, match="'aps' and/or 'blind'"):
        pretrained.export("grf", prior, {"known": model}, "card", folder=tmp_path / "y")
    (tmp_path / "grf_aps.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        pretrained.load_sampler("grf", folder=tmp_path)


def test_shipped_models_load():
    for name in pretrained.available():
        task, blind = name.removesuffix("_blind"), name.endswith("_blind")
        model = pretrained.load_sampler(task, blind=blind)
        assert model.blind == blind and pretrained.model_card(task).startswith("#")
    for name in pretrained.priors():
        prior = pretrained.load_prior(name)
        assert prior.normalizer is not None and pretrained.model_card(name).startswith("#")


def test_a_gaussian_residual_prior_keeps_its_gaussian_in_float32(trained, tmp_path):
    from manifold_aps.diffusion.training import gaussian_residual_prior

    field, _, model = trained
    signals = field.sample(64, torch.Generator().manual_seed(2)).float()[..., None]
    prior = gaussian_residual_prior(signals, LAYOUT, base="vertex_mlp", rank=8, width=16, depth=1)
    trained_against = model.prior
    model.prior = prior  # export only checks that the sampler was trained against the prior
    try:
        pretrained.export("grf", prior, {"aps": model}, "# card\n", folder=tmp_path)
    finally:
        model.prior = trained_against
    loaded = pretrained.load_prior("grf", tmp_path).network.gaussian
    assert torch.equal(loaded.eigenvectors, prior.network.gaussian.eigenvectors.float().double())
    assert torch.equal(loaded.mean, prior.network.gaussian.mean.float().double())


def test_large_sampler_matrices_are_stored_per_row_in_int8():
    big = torch.randn(64, pretrained.ROW_QUANTISED_MIN_SIZE // 64, generator=torch.Generator().manual_seed(0))
    big[3] = 0.0  # an all-zero row stays exactly zero
    state = {"big": big, "small": torch.randn(64, 64), "vector": torch.randn(2**20)}
    stored = pretrained._quantise_rows(state)
    assert stored["big"]["int8"].dtype == torch.int8 and stored["small"].dtype == torch.float16
    assert stored["vector"].dtype == torch.float16
    expanded = pretrained._expand(stored)
    scale = big.abs().amax(dim=1) / 127
    assert ((expanded["big"] - big).abs() <= scale[:, None] / 2 + 1e-6).all() and (expanded["big"][3] == 0).all()
    assert expanded["small"] is stored["small"]


def test_a_mixture_base_is_stored_in_float32(trained, tmp_path):
    from manifold_aps.data import matern_mixture

    field, prior, model = trained
    mixture = matern_mixture(MESH, means=(0.4, 0.6), length_fractions=(0.5, 0.2), stds=(0.1, 0.1), num_modes=20)
    with_mixture = aps.AmortizedPosteriorSampler(model.flow, prior, model.operator, base=mixture, marginal=model.marginal)
    pretrained.export("grf", prior, {"aps": with_mixture}, "# card\n", folder=tmp_path)
    loaded = pretrained.load_sampler("grf", folder=tmp_path)
    assert loaded.mixture_base and loaded.base.num_components == 2
    for ours, theirs in zip(loaded.base.components, mixture.components):
        assert torch.equal(ours.modes, theirs.modes.float().double()) and ours.modes.dtype == torch.float64
    torch.testing.assert_close(loaded.base.weights, mixture.weights.float().double())
