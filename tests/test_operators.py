import math

import pytest
import torch

from manifold_aps.operators import BlindVertexMask, Measurement, RandomVertexMask, gaussian_log_likelihood


def test_exact_hidden_count_and_padding_never_observed():
    op = RandomVertexMask(num_vertices=4140, padded_vertices=4160, hidden_fraction=0.6, noise_std=0.05)
    m = op(torch.rand(8, 4160, 1), generator=torch.Generator().manual_seed(0))
    assert (m.observed[:, :4140].sum(dim=1) == 4140 - round(0.6 * 4140)).all()
    assert not m.observed[:, 4140:].any()
    assert (m.y[~m.observed] == 0).all()
    assert not torch.equal(m.observed[0], m.observed[1])  # each sample gets its own mask


def test_masks_and_noise_are_seed_reproducible():
    op = RandomVertexMask(100, 128, hidden_fraction=0.3, noise_std=0.1)
    x = torch.rand(4, 128, 2)
    a = op(x, generator=torch.Generator().manual_seed(7))
    b = op(x, generator=torch.Generator().manual_seed(7))
    c = op(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.y, b.y) and torch.equal(a.observed, b.observed)
    assert not torch.equal(a.observed, c.observed)


def test_noise_level_on_observed_entries():
    op = RandomVertexMask(2000, 2016, hidden_fraction=0.5, noise_std=0.2)
    x = torch.zeros(16, 2016, 1)
    m = op(x, generator=torch.Generator().manual_seed(1))
    assert m.y[m.observed].std().item() == pytest.approx(0.2, rel=0.03)


def test_blind_rates_vary_within_range():
    op = BlindVertexMask(1000, 1024, hidden_range=(0.3, 0.6), noise_std=0.05)
    m = op(torch.zeros(256, 1024, 1), generator=torch.Generator().manual_seed(2))
    rates = 1 - m.observed[:, :1000].float().mean(dim=1)
    assert rates.min() >= 0.3 - 1e-3 and rates.max() <= 0.6 + 1e-3
    assert rates.std() > 0.05
    assert op.blind and not RandomVertexMask(10).blind


def test_invalid_operator_arguments():
    with pytest.raises(ValueError, match="hidden_fraction"):
        RandomVertexMask(10, hidden_fraction=1.0)
    with pytest.raises(ValueError, match="hidden_fraction"):
        RandomVertexMask(10, hidden_fraction=-0.1)
    with pytest.raises(ValueError, match="noise_std"):
        RandomVertexMask(10, noise_std=-1)
    with pytest.raises(ValueError, match="low ≤ high"):
        BlindVertexMask(10, hidden_range=(0.6, 0.3))
    with pytest.raises(ValueError, match=r"\(B, 16, C\)"):
        RandomVertexMask(10, 16)(torch.zeros(2, 10, 1))


def test_gaussian_log_likelihood_matches_torch_distributions():
    op = RandomVertexMask(20, 32, hidden_fraction=0.4, noise_std=0.3)
    x = torch.randn(3, 32, 2, dtype=torch.float64)
    m = op(x, generator=torch.Generator().manual_seed(3))
    value = op.log_likelihood(m, x + 0.1)
    normal = torch.distributions.Normal(x + 0.1, 0.3)
    expected = (normal.log_prob(m.y) * m.observed[..., None]).flatten(1).sum(dim=1)
    assert torch.allclose(value, expected)
    with pytest.raises(ValueError):
        gaussian_log_likelihood(m.y, x, m.observed, 0.0)


def test_measurement_from_nan_marks_missing_and_padding_hidden():
    batch = torch.tensor([[[1.0], [math.nan], [3.0], [0.0]]])
    vertex_mask = torch.tensor([True, True, True, False])
    m = Measurement.from_nan(batch, vertex_mask)
    assert m.observed.tolist() == [[True, False, True, False]]
    assert m.y.flatten().tolist() == [1.0, 0.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="all NaN"):
        Measurement.from_nan(torch.full((1, 4, 1), math.nan), vertex_mask)
