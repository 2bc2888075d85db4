import pytest
import torch

from manifold_aps.data.gaussian_mixture import GaussianMixtureField
from manifold_aps.gaussian_posterior import LowRankGaussian
from manifold_aps.mixture_of_ppca import fit_mixture_of_ppca, select_mixture_of_ppca
from manifold_aps.operators import RandomVertexMask
from manifold_aps.signals import VertexLayout

DIM = 60


def truth_mixture() -> GaussianMixtureField:
    """Three rank-4 components with distinct means, weights 0.5 / 0.3 / 0.2."""
    generator = torch.Generator().manual_seed(0)
    components = []
    for level in (-1.0, 0.0, 1.0):
        modes, _ = torch.linalg.qr(torch.randn(DIM, 4, generator=generator, dtype=torch.float64))
        mean = level + 0.3 * torch.randn(DIM, generator=generator, dtype=torch.float64)
        components.append(LowRankGaussian(mean, modes, torch.tensor([0.4, 0.2, 0.1, 0.05]), 0.01))
    return GaussianMixtureField(components, torch.tensor([0.5, 0.3, 0.2]))


def matched(fitted: GaussianMixtureField, truth: GaussianMixtureField) -> list[int]:
    """For each true component, the index of the fitted component with the nearest mean."""
    means = torch.stack([c.mean for c in fitted.components])
    return [int(torch.cdist(c.mean[None], means).argmin()) for c in truth.components]


def test_em_recovers_the_weights_means_and_nugget_of_a_known_mixture():
    truth = truth_mixture()
    data = truth.sample(3000, torch.Generator().manual_seed(1))
    fitted = fit_mixture_of_ppca(data, components=3, rank=4, iterations=30)
    order = matched(fitted, truth)
    assert sorted(order) == [0, 1, 2]
    for index, component in zip(order, truth.components):
        assert float(fitted.weights[index]) == pytest.approx(float(truth.weights[truth.components.index(component)]),
                                                             abs=0.03)
        assert float((fitted.components[index].mean - component.mean).abs().max()) < 0.1
        assert fitted.components[index].nugget_variance == pytest.approx(0.01, rel=0.15)
        # the fitted modes span the true ones
        overlap = torch.linalg.svdvals(fitted.components[index].modes.T @ component.modes)
        assert float(overlap.min()) > 0.95


def test_selection_prefers_the_true_number_of_components_on_validation():
    truth = truth_mixture()
    generator = torch.Generator().manual_seed(2)
    train = truth.sample(2000, generator).float()[..., None]
    validation = truth.sample(64, generator).float()[..., None]
    layout = VertexLayout(DIM, 1)
    operator = RandomVertexMask(DIM, layout.padded_vertices, 0.5, 0.05)
    measurement = operator(layout.pad(validation), generator=torch.Generator().manual_seed(3))
    field, table = select_mixture_of_ppca(train, validation, measurement, 0.05, components=(1, 3), ranks=(4,))
    assert [(row["components"], row["rank"]) for row in table] == [(1, 4), (3, 4)]
    assert table[1]["hidden_mse"] < table[0]["hidden_mse"]
    assert field.num_components == 3


def test_incomplete_or_too_few_signals_are_refused():
    with pytest.raises(ValueError, match="complete"):
        fit_mixture_of_ppca(torch.full((10, DIM), float("nan")), 2, 4)
    with pytest.raises(ValueError, match="per component"):
        fit_mixture_of_ppca(torch.randn(3, DIM), 2, 4)


def test_mixture_method_returns_the_posterior_mean_and_draws_that_agree_with_it():
    from manifold_aps.methods import mixture_method

    truth = truth_mixture()
    layout = VertexLayout(DIM, 1)
    operator = RandomVertexMask(DIM, layout.padded_vertices, 0.5, 0.05)
    signals = truth.sample(3, torch.Generator().manual_seed(4)).float()[..., None]
    measurement = operator(layout.pad(signals), generator=torch.Generator().manual_seed(5))
    estimate = mixture_method(truth, layout, samples=4000)(measurement, operator, torch.Generator().manual_seed(6))
    exact = truth.posterior(*measurement.real_entries(DIM), 0.05)
    assert estimate.mean.shape == signals.shape and estimate.samples.shape == (4000, *signals.shape)
    assert torch.allclose(estimate.mean[..., 0], exact.mean.float())
    assert torch.allclose(estimate.samples.mean(0)[..., 0], exact.mean.float(), atol=0.05)
    assert torch.allclose(estimate.samples.std(0)[..., 0], exact.std.float(), rtol=0.1, atol=0.01)
