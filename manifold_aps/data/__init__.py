"""External and generated data: the file registry, Bunny-MNIST, ERA5 (and its GCM proxy),
Gaussian random fields with exact posteriors."""

from manifold_aps.data.registry import REGISTRY, DataFile, DataNotFoundError, fetch

__all__ = ["REGISTRY", "DataFile", "DataNotFoundError", "fetch"]
