"""Bunny-MNIST: the chart lands digits upright on the flank; painting is exact, cached and informative."""

import os
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not os.environ.get("MANIFOLD_APS_DATA"),
                                reason="MANIFOLD_APS_DATA is not set: the bunny and MNIST come from the data mirror")

from manifold_aps.data import bunny_mnist as bm  # noqa: E402


@pytest.fixture(scope="module")
def mesh():
    import manifold_aps as aps

    return aps.bunny()


@pytest.fixture(scope="module")
def chart(mesh):
    return bm.bunny_digit_chart(mesh)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path))
    return tmp_path


def test_chart_covers_a_flank_patch(chart, mesh):
    assert chart.center_vertex == bm.CENTER_VERTEX
    np.testing.assert_allclose(chart.pixel_coordinates[bm.CENTER_VERTEX], [13.5, 13.5], atol=1e-9)
    inside = chart.inside
    assert 300 <= inside.sum() <= 400  # a few hundred vertices can carry ink
    vertices = mesh.vertices.numpy()
    assert vertices[inside, 2].min() > 0.0  # all on the +z (left) flank
    # geodesic chart: chart distance ≈ straight distance for nearby vertices (flank is gently curved)
    near = np.linalg.norm(vertices - vertices[bm.CENTER_VERTEX], axis=1) < 0.015
    chart_distance = np.linalg.norm(chart.pixel_coordinates[near] - 13.5, axis=1) * bm.PIXEL_SIZE
    straight = np.linalg.norm(vertices[near] - vertices[bm.CENTER_VERTEX], axis=1)
    assert np.abs(chart_distance - straight).max() < 0.2 * 0.015


def test_chart_orientation_is_upright_and_not_mirrored(chart, mesh):
    """Seen from +z (outside the left flank) with +y up, +x points right: row falls with y, column grows with x."""
    vertices = mesh.vertices.numpy()
    inside = chart.inside
    offsets = vertices[inside] - vertices[bm.CENTER_VERTEX]
    columns, rows = chart.pixel_coordinates[inside].T
    assert np.corrcoef(offsets[:, 0], columns)[0, 1] > 0.9
    assert np.corrcoef(offsets[:, 1], rows)[0, 1] < -0.9


def test_painting_matrix_is_bilinear(chart):
    matrix = bm.painting_matrix(chart)
    assert matrix.shape == (1889, 784)
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    coordinates = chart.pixel_coordinates
    interior = ((coordinates >= 0) & (coordinates <= 27)).all(axis=1)
    np.testing.assert_allclose(sums[interior], 1.0, atol=1e-12)  # partition of unity inside the image
    assert (sums[~chart.inside] == 0).all()
    # a linear image is reproduced exactly at interior vertices
    rows, columns = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    ramp = (0.02 * columns + 0.01 * rows)[None]
    painted = bm.paint_digits(ramp, matrix)[0]
    expected = 0.02 * coordinates[:, 0] + 0.01 * coordinates[:, 1]
    np.testing.assert_allclose(painted[interior], expected[interior], atol=1e-6)


def test_a_single_pixel_lands_where_the_chart_says(chart):
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 6, 20] = 255  # upper right
    painted = bm.paint_digits(image, bm.painting_matrix(chart))[0]
    brightest = painted.argmax()
    assert painted[brightest] > 0.3
    assert np.abs(chart.pixel_coordinates[brightest] - [20, 6]).max() < 1.0


def test_load_paints_caches_and_reloads(tmp_cache):
    start = time.perf_counter()
    signals, labels = bm.load_bunny_mnist("test")
    first = time.perf_counter() - start
    assert signals.shape == (10000, 1889, 1) and signals.dtype == torch.float32
    assert labels[:6].tolist() == [7, 2, 1, 0, 4, 1]  # official MNIST test order
    assert 0.0 <= signals.min() and signals.max() <= 1.0
    cached = list((tmp_cache / "bunny_mnist").glob("test_*.npy"))
    assert len(cached) == 1 and cached[0].stat().st_size > 10000 * 1889
    start = time.perf_counter()
    again, again_labels = bm.load_bunny_mnist("test", limit=50)
    assert torch.equal(again, signals[:50]) and torch.equal(again_labels, labels[:50])
    assert time.perf_counter() - start < first + 1.0
    # cached values equal a fresh painting up to the uint8 quantisation (≤ 1/510)
    images, _ = bm.load_mnist("test")
    fresh = bm.paint_digits(images[:50], bm.painting_matrix(bm.bunny_digit_chart()))
    assert np.abs(again[..., 0].numpy() - fresh).max() <= 1 / 510 + 1e-6
    inked = (signals[..., 0] > 0.5).sum(dim=1).float()
    assert 20 < inked.mean() < 120  # each digit inks tens of vertices


def test_limit_without_cache_paints_only_what_is_asked(tmp_cache):
    signals, labels = bm.load_bunny_mnist("train", limit=10)
    assert signals.shape == (10, 1889, 1) and labels.shape == (10,)
    assert not (tmp_cache / "bunny_mnist").exists()
    with pytest.raises(ValueError, match="split"):
        bm.load_bunny_mnist("validation")


def test_painted_digits_stay_recognisable(tmp_cache):
    """1-nearest-neighbour on the bunny vertices still classifies digits (information survives painting)."""
    train, train_labels = bm.load_bunny_mnist("train", limit=1000, use_cache=False)
    test, test_labels = bm.load_bunny_mnist("test", limit=300, use_cache=False)
    nearest = torch.cdist(test[..., 0], train[..., 0]).argmin(dim=1)
    accuracy = (train_labels[nearest] == test_labels).float().mean()
    assert accuracy > 0.8, accuracy
