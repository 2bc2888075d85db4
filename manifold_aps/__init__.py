"""manifold_aps: amortized posterior sampling of signals on meshes and on the sphere.

The data path — mesh → signal → operator → prior → flow → sampler → metrics — is the module
layout; this namespace re-exports what users call.
"""

from manifold_aps.version import __version__

from manifold_aps.aps import AmortizedPosteriorSampler, APSConfig, fit
from manifold_aps.diffusion import DiffusionPrior, build_network, load_prior, save_prior, train_prior
from manifold_aps.data.bunny_mnist import bunny
from manifold_aps.mesh import Mesh, healpix_sphere, latlon_sphere, load_mesh, torus
from manifold_aps.operators import BlindVertexMask, Measurement, RandomVertexMask
from manifold_aps.signals import MinMaxNormalizer, VertexLayout, padded_size

__all__ = [
    "__version__",
    "fit",
    "AmortizedPosteriorSampler",
    "APSConfig",
    "DiffusionPrior",
    "build_network",
    "train_prior",
    "save_prior",
    "load_prior",
    "Mesh",
    "load_mesh",
    "latlon_sphere",
    "healpix_sphere",
    "torus",
    "bunny",
    "VertexLayout",
    "MinMaxNormalizer",
    "padded_size",
    "Measurement",
    "RandomVertexMask",
    "BlindVertexMask",
]
