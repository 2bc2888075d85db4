import pytest
import torch

from manifold_aps.tasks import load_task


def test_sphere_proxy_task_is_labelled_and_normalised(mirror):
    task = load_task("era5_proxy", limit=8)
    assert task.mesh.num_vertices == 4140 and task.train.shape == (8, 4140, 1)
    assert "PROXY" in task.data_label and "not ERA5" in task.data_label
    assert (task.operator.hidden_fraction, task.operator.noise_std) == (0.6, 0.05)
    assert 0.0 < float(task.train.min()) and float(task.train.max()) < 1.0  # GASP min-max constants
    real = task.extra_test["era5_real_24"]
    assert real.shape == (24, 4140, 1)
    # normalisation round trip back to kelvin: real ERA5 between 200 and 320 K
    kelvin = task.normalizer.denormalize(real)
    assert 200 < float(kelvin.min()) and float(kelvin.max()) < 320


def test_bunny_mnist_task_splits(mirror):
    task = load_task("bunny_mnist", limit=16)
    assert task.mesh.num_vertices == 1889 and task.train.shape == (16, 1889, 1)
    assert (task.operator.hidden_fraction, task.operator.noise_std) == (0.3, 0.1)
    assert not torch.equal(task.train, task.validation)


def test_unknown_task_and_missing_gasp_root():
    with pytest.raises(ValueError, match="unknown task"):
        load_task("mars")
    with pytest.raises(ValueError, match="gasp_root"):
        load_task("era5_gasp")
