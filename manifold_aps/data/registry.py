"""Where external data files come from: names, upstream URLs, hashes, local mirror, cache.

Lookup order for a registered file ``name`` with relative path ``entry.path``:

1. ``$MANIFOLD_APS_DATA/<entry.path>`` — a local mirror laid out like the project's shared data
   folder (``bunny/``, ``mnist/``, ``era5/``, ``gcm_t2m/``, ``natural_earth/``). CI points it at
   ``../shared/data``.
2. ``$MANIFOLD_APS_CACHE/<entry.path>`` (default ``~/.cache/manifold_aps``) — earlier downloads.
3. A download from ``entry.url`` into the cache with a sha256 check (``pooch``), only when
   ``download=True`` and the entry has a URL.

A file found nowhere raises :class:`DataNotFoundError` naming the file, every place looked and
how to get it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataFile", "REGISTRY", "DataNotFoundError", "fetch", "mirror_root", "cache_root", "register"]

MIRROR_ENV = "MANIFOLD_APS_DATA"
CACHE_ENV = "MANIFOLD_APS_CACHE"


@dataclass(frozen=True)
class DataFile:
    """One external file: its path inside a mirror, where it comes from, and its hash.

    ``archive_member`` names the file inside ``url`` when the upstream is an archive
    (e.g. the Stanford bunny tarball).
    """

    name: str
    path: str
    url: str | None
    sha256: str | None
    description: str
    archive_member: str | None = None


class DataNotFoundError(FileNotFoundError):
    """A registered data file is in neither the mirror nor the cache and was not downloaded."""


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


def mirror_root() -> Path | None:
    """The local mirror folder named by ``$MANIFOLD_APS_DATA``, or ``None`` when unset."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    """Download cache: ``$MANIFOLD_APS_CACHE`` or ``~/.cache/manifold_aps``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "manifold_aps"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, download: bool = False, verify: bool = False) -> Path:
    """Local path of registered file ``name``: mirror, then cache, then (opt-in) download.

    Arguments:
        name: a key of :data:`REGISTRY`.
        download: allow fetching from the upstream URL into the cache (needs network).
        verify: check the sha256 of a mirror/cache hit too (downloads are always checked).
    """
    if name not in REGISTRY:
        raise KeyError(f"unknown data file {name!r}; registered: {', '.join(sorted(REGISTRY))}")
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
                raise ValueError(f"{candidate} does not match the registered sha256 of {name!r}: corrupted or different file")
            return candidate
    if download and entry.url:
        return _download(entry)
    how = (
        f"set ${MIRROR_ENV} to a folder holding '{entry.path}'"
        + (f", or call fetch({name!r}, download=True) to download it from {entry.url}" if entry.url else "")
    )
    raise DataNotFoundError(f"data file {name!r} ({entry.description}) not found; looked in: {'; '.join(looked)}. To get it: {how}.")


def _download(entry: DataFile) -> Path:
    """Download ``entry`` into the cache with pooch, checking the sha256 of the final file."""
    import pooch

    target = cache_root() / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.archive_member is None:
        fetched = pooch.retrieve(entry.url, known_hash=f"sha256:{entry.sha256}" if entry.sha256 else None,
                                 fname=target.name, path=target.parent)
        return Path(fetched)
    members = pooch.retrieve(entry.url, known_hash=None, path=cache_root() / "archives",
                             processor=pooch.Untar(members=[entry.archive_member]))
    member = Path(members[0]) if isinstance(members, list) else Path(members)
    if entry.sha256 and sha256_of(member) != entry.sha256:
        raise ValueError(f"downloaded {entry.archive_member} from {entry.url} does not match its registered sha256")
    os.replace(member, target)
    return target
