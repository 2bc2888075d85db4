"""Shared fixtures: the data mirror and small meshes."""

import os
from pathlib import Path

import pytest
import torch

# The suite's tensors are small: one thread avoids synchronisation costs (large on a shared machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The local data mirror (``$MANIFOLD_APS_DATA``); tests that need real data skip without it."""
    value = os.environ.get("MANIFOLD_APS_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("MANIFOLD_APS_DATA is not set to the data mirror (CI points it at ../shared/data)")
    return Path(value)


@pytest.fixture(scope="session")
def bunny_path(mirror) -> Path:
    return mirror / "bunny" / "bun_zipper_res3.ply"
