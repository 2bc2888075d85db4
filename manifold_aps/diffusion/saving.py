"""Save and load a :class:`~manifold_aps.diffusion.prior.DiffusionPrior` (network, layout, SDE).

A prior file (kind ``"diffusion_prior"``, see :mod:`manifold_aps.checkpoint`) stores the network's
name and config, the vertex layout, the SDE constants, the weights and optional normalisation
constants; loading rebuilds the network with :func:`~manifold_aps.diffusion.networks.build_network`.
A training checkpoint written by :func:`~manifold_aps.diffusion.training.train_prior` loads too
(its EMA weights).
"""

from __future__ import annotations

import dataclasses

from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.diffusion.networks import NETWORKS, build_network
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import MinMaxNormalizer, VertexLayout

__all__ = ["describe_prior", "prior_from_description", "save_prior", "load_prior"]


def describe_prior(prior: DiffusionPrior) -> dict:
    """Plain-value description that :func:`prior_from_description` turns back into a prior."""
    network = prior.network
    if getattr(network, "name", None) not in NETWORKS:
        raise TypeError(f"only networks built by build_network can be saved, got {type(network).__name__}")
    return {"network": network.name, "network_config": dict(network.config),
            "layout": dataclasses.asdict(prior.layout), "sde": dataclasses.asdict(prior.sde)}


def prior_from_description(description: dict) -> DiffusionPrior:
    """A freshly initialised prior with the architecture of ``description``."""
    try:
        layout = VertexLayout(**description["layout"])
        sde = VPSDE(**description["sde"])
        network = build_network(description["network"], layout, sde=sde, **description["network_config"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"prior description is incomplete or invalid: {error}") from None
    return DiffusionPrior(network, layout, sde)


def save_prior(path, prior: DiffusionPrior, normalizer: MinMaxNormalizer | None = None):
    """Write ``prior`` (and the data normalisation, if any) to ``path`` atomically."""
    return save_checkpoint(path, {
        "prior": describe_prior(prior),
        "state": {k: v.detach().cpu() for k, v in prior.state_dict().items()},
        "normalizer": normalizer.state_dict() if normalizer is not None else None,
    }, kind="diffusion_prior")


def load_prior(path, map_location="cpu") -> DiffusionPrior:
    """Rebuild a prior saved by :func:`save_prior` (or a ``train_prior`` training checkpoint).

    The result is in eval mode; ``prior.normalizer`` is the stored
    :class:`~manifold_aps.signals.MinMaxNormalizer` or None.
    """
    record = load_checkpoint(path, map_location=map_location)
    try:
        if record["kind"] == "diffusion_prior":
            prior = prior_from_description(record["prior"])
            prior.load_state_dict(record["state"])
            normalizer = record.get("normalizer")
        elif record["kind"] == "training" and "prior" in record.get("metadata", {}):
            prior = prior_from_description(record["metadata"]["prior"])
            prior.load_state_dict(record["model"])
            prior.load_state_dict(record["ema"], strict=False)
            normalizer = None
        else:
            raise CheckpointError(f"{path} holds a {record['kind']!r} checkpoint without a diffusion prior")
        prior.normalizer = MinMaxNormalizer(**normalizer) if normalizer else None
    except (KeyError, TypeError, RuntimeError) as error:  # header fine, body missing parts or mismatched shapes
        raise CheckpointError(f"{path} is an incomplete or inconsistent prior file "
                              f"({type(error).__name__}: {str(error)[:300]})") from None
    return prior.to(map_location).eval()
