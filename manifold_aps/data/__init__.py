"""External and generated data: the file registry, Bunny-MNIST, ERA5 (and its GCM proxy),
Gaussian random fields and Gaussian-mixture fields with exact posteriors."""

from manifold_aps.data.bunny_mnist import bunny_digit_chart, load_bunny_mnist, load_mnist
from manifold_aps.data.era5 import (
    GASP_NORMALIZER,
    from_vertices,
    load_era5_sample,
    load_gasp,
    load_gcm_proxy,
    load_t2m,
    to_vertices,
)
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.data.gaussian_mixture import GaussianMixtureField, GaussianMixturePosterior, matern_mixture
from manifold_aps.data.registry import REGISTRY, DataFile, DataNotFoundError, fetch, natural_earth_dir

__all__ = [
    "REGISTRY",
    "DataFile",
    "DataNotFoundError",
    "fetch",
    "natural_earth_dir",
    "load_mnist",
    "load_bunny_mnist",
    "bunny_digit_chart",
    "load_gasp",
    "load_t2m",
    "load_era5_sample",
    "load_gcm_proxy",
    "to_vertices",
    "from_vertices",
    "GASP_NORMALIZER",
    "GaussianRandomField",
    "GaussianMixtureField",
    "GaussianMixturePosterior",
    "matern_mixture",
]
