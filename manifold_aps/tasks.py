"""The reference tasks by name: mesh, normalised signal splits and measurement settings.

Benchmarks, the CLI and the notebooks all start from :func:`load_task`, so a task means the same
data, split and operator everywhere.

| name | mesh | signals | hidden | σ_y |
| --- | --- | --- | --- | --- |
| ``bunny_mnist`` | Stanford bunny, 1889 vertices | MNIST digits painted on the flank, [0, 1] | 30 % | 0.1 |
| ``era5_proxy`` | 4° lat-lon sphere, 4140 vertices | GCM 2 m temperature **proxy** (not ERA5), GASP-normalised | 60 % | 0.05 |
| ``era5_gasp`` | 4° lat-lon sphere | the GASP ERA5 archive (``root`` folder needed) | 60 % | 0.05 |

For the sphere tasks ``extra_test`` holds the 24 genuine ERA5 fields of the data mirror, to
measure how a model trained on the proxy transfers to real ERA5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from manifold_aps.mesh import Mesh, latlon_sphere
from manifold_aps.operators import RandomVertexMask
from manifold_aps.signals import MinMaxNormalizer, VertexLayout

__all__ = ["Task", "TASKS", "load_task"]

TASKS = ("bunny_mnist", "era5_proxy", "era5_gasp")


@dataclass
class Task:
    """Everything a benchmark needs about one task. Signals are ``(N, V, C)`` float32, normalised;
    ``operator`` measures them (padded to the default :class:`~manifold_aps.signals.VertexLayout`)."""

    name: str
    mesh: Mesh
    train: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    operator: RandomVertexMask
    normalizer: MinMaxNormalizer
    data_label: str
    paper_task: str  # "bunny" or "era5": selects the paper's training budgets
    extra_test: dict = field(default_factory=dict)  # name -> (N, V, C) signals measured separately


def _operator(mesh: Mesh, hidden_fraction: float, noise_std: float) -> RandomVertexMask:
    layout = VertexLayout(mesh.num_vertices, 1)
    return RandomVertexMask(layout.num_vertices, layout.padded_vertices, hidden_fraction, noise_std)


def _limit(signals: torch.Tensor, limit: int | None) -> torch.Tensor:
    return signals if limit is None else signals[:limit]


def load_task(name: str, limit: int | None = None, gasp_root=None) -> Task:
    """Load task ``name`` (see the module table). ``limit`` caps every split (for quick runs)."""
    if name == "bunny_mnist":
        from manifold_aps.data.bunny_mnist import bunny, load_bunny_mnist

        digits, _ = load_bunny_mnist("train")
        test, _ = load_bunny_mnist("test")
        mesh = bunny()
        # the last 5000 training digits are held out for validation (model selection, OI rank)
        return Task(name, mesh, _limit(digits[:-5000], limit), _limit(digits[-5000:], limit), _limit(test, limit),
                    operator=_operator(mesh, 0.3, 0.1), normalizer=MinMaxNormalizer(0.0, 1.0),
                    data_label="MNIST digits painted on the Stanford bunny (bun_zipper_res3, 1889 vertices)",
                    paper_task="bunny")
    if name in ("era5_proxy", "era5_gasp"):
        from manifold_aps.data.era5 import GASP_NORMALIZER, load_era5_sample, load_gasp, load_gcm_proxy, to_vertices

        if name == "era5_gasp":
            if gasp_root is None:
                raise ValueError("the era5_gasp task needs gasp_root: the folder holding era5_temp2m_16x_{train,val,test}")
            splits = [load_gasp(gasp_root, split) for split in ("train", "val", "test")]
            label = f"GASP ERA5 archive at {gasp_root}"
        else:
            splits = [load_gcm_proxy(split) for split in ("train", "val", "test")]
            label = "PROXY: SPEEDY-type GCM (jcm) 2 m temperature on the GASP grid — not ERA5"
        train, validation, test = (GASP_NORMALIZER.normalize(to_vertices(s)).float() for s in splits)
        real = GASP_NORMALIZER.normalize(to_vertices(load_era5_sample())).float()
        mesh = latlon_sphere(4.0)
        return Task(name, mesh, _limit(train, limit), _limit(validation, limit), _limit(test, limit),
                    operator=_operator(mesh, 0.6, 0.05), normalizer=GASP_NORMALIZER, data_label=label,
                    paper_task="era5", extra_test={"era5_real_24": real})
    raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
