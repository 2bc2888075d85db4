"""The data registry: every external file registered with a hash, clear errors, mirror/cache lookup."""

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from manifold_aps.data import registry
from manifold_aps.data.registry import REGISTRY, DataNotFoundError, fetch, natural_earth_dir, sha256_of

MIRROR = os.environ.get("MANIFOLD_APS_DATA")
needs_mirror = pytest.mark.skipif(not MIRROR, reason="MANIFOLD_APS_DATA is not set (CI points it at the shared data mirror)")


@pytest.fixture
def empty_places(tmp_path, monkeypatch):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    monkeypatch.setenv("MANIFOLD_APS_DATA", str(mirror))
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(cache))
    return mirror, cache


def test_every_external_file_is_registered_with_a_sha256():
    expected = {
        "bunny_res3", "bunny_full", "mnist_train_images", "mnist_train_labels", "mnist_test_images",
        "mnist_test_labels", "era5_sample", "gcm_t2m", "ne_110m_coastline_shp", "ne_110m_coastline_shx",
        "ne_110m_coastline_dbf", "ne_110m_coastline_prj", "ne_110m_land_shp", "ne_50m_coastline_shp",
    }
    assert expected <= set(REGISTRY)
    for entry in REGISTRY.values():
        assert entry.sha256 and len(entry.sha256) == 64, entry.name
        assert entry.url or entry.how_to_get, f"{entry.name} needs a URL or instructions"
        if entry.convert:
            assert entry.convert in registry.CONVERTERS and entry.upstream_hash


def test_missing_file_error_names_file_places_and_how_to_get_it(empty_places):
    mirror, cache = empty_places
    with pytest.raises(DataNotFoundError) as caught:
        fetch("mnist_test_labels")
    message = str(caught.value)
    assert "mnist_test_labels" in message and "mnist/mnist_test_labels.npy.gz" in message
    assert str(mirror / "mnist") in message and str(cache / "mnist") in message
    assert "download=True" in message and "ossci-datasets" in message


def test_file_without_public_url_says_so(empty_places):
    with pytest.raises(DataNotFoundError, match="no public URL") as caught:
        fetch("gcm_t2m")
    assert "PROXY" in str(caught.value) and "make_gcm_t2m.py" in str(caught.value)
    assert "download=True" not in str(caught.value)


def test_unset_mirror_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("MANIFOLD_APS_DATA", raising=False)
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"\$MANIFOLD_APS_DATA \(not set\)"):
        fetch("era5_sample")


def test_unknown_name_lists_registered_names():
    with pytest.raises(KeyError, match="bunny_res3"):
        fetch("no_such_file")


def test_the_110m_coastline_downloads_from_natural_earth():
    for suffix in ("shp", "shx", "dbf", "prj", "cpg"):
        assert REGISTRY[f"ne_110m_coastline_{suffix}"].url == "https://naciscdn.org/naturalearth/110m/physical/ne_110m_coastline.zip"


@needs_mirror
def test_mirror_hit_and_verified(monkeypatch, tmp_path):
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path))
    path = fetch("era5_sample", verify=True)
    assert path == Path(MIRROR) / "era5" / "era5_t2m_2026-03-25_to_31_46x90.npz"
    assert natural_earth_dir() == Path(MIRROR) / "natural_earth"
    assert (natural_earth_dir() / "shapefiles/natural_earth/physical/ne_110m_coastline.shp").is_file()


@needs_mirror
def test_cache_hit_and_corruption_detected(empty_places):
    _, cache = empty_places
    copy = cache / REGISTRY["mnist_test_labels"].path
    copy.parent.mkdir(parents=True)
    shutil.copyfile(Path(MIRROR) / REGISTRY["mnist_test_labels"].path, copy)
    assert fetch("mnist_test_labels", verify=True) == copy
    data = bytearray(copy.read_bytes())
    data[100] ^= 0xFF  # one flipped byte
    copy.write_bytes(bytes(data))
    assert fetch("mnist_test_labels") == copy  # no check unless asked
    with pytest.raises(ValueError, match="sha256"):
        fetch("mnist_test_labels", verify=True)


@needs_mirror
def test_mnist_idx_conversion_reproduces_mirror_bytes(tmp_path):
    """The download path converts official IDX files; its output must hash to the registered sha256."""
    with gzip.open(Path(MIRROR) / "mnist/mnist_test_labels.npy.gz") as handle:
        labels = np.load(handle)
    header = np.array([0x801, labels.size], dtype=">u4").tobytes()
    idx = tmp_path / "t10k-labels-idx1-ubyte.gz"
    idx.write_bytes(gzip.compress(header + labels.tobytes()))
    converted = tmp_path / "labels.npy.gz"
    convert, reproducible = registry.CONVERTERS["idx_gz_to_npy_gz"]
    convert(idx, converted)
    assert reproducible and sha256_of(converted) == REGISTRY["mnist_test_labels"].sha256


@needs_mirror
def test_download_checks_hash(empty_places, monkeypatch):
    """Downloads go through pooch with the registered hash: wrong bytes fail, right bytes land in the cache."""
    import pooch

    served = {}

    def serve(url, known_hash, fname=None, path=None, processor=None, **_):  # pooch.retrieve without network
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")  # like pooch: keep only verified downloads
        partial.write_bytes(served["bytes"])
        if known_hash and not pooch.hashes.hash_matches(str(partial), known_hash):
            partial.unlink()
            raise ValueError(f"hash of the download does not match {known_hash}")
        partial.replace(target)
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", serve)
    served["bytes"] = b"not a projection file"
    with pytest.raises(ValueError, match="does not match"):
        fetch("ne_110m_land_prj", download=True)
    served["bytes"] = (Path(MIRROR) / REGISTRY["ne_110m_land_prj"].path).read_bytes()
    path = fetch("ne_110m_land_prj", download=True)
    assert path == empty_places[1] / REGISTRY["ne_110m_land_prj"].path
    assert fetch("ne_110m_land_prj", verify=True) == path
