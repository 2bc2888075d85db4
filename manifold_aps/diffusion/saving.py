"""Save and load a :class:`~manifold_aps.diffusion.prior.DiffusionPrior` — the one place a prior is
turned into plain values and back.

A *prior record* is ``{"prior": description, "state": weights, "normalizer": constants or None}``:
the description names the network (a :func:`~manifold_aps.diffusion.networks.build_network` name
with its config, or ``"gaussian"`` for the exact Gaussian predictor, rebuilt from its buffers), the
vertex layout and the SDE constants. A prior file (kind ``"diffusion_prior"``, see
:mod:`manifold_aps.checkpoint`) holds one record; an APS model file embeds one; the shipped models
store theirs with large tensors in float16 (``compact``). A training checkpoint written by
:func:`~manifold_aps.diffusion.training.train_prior` loads too (its EMA weights), and so do the
prior payloads of APS files written before records existed.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.diffusion.gaussian import GaussianNoisePredictor
from manifold_aps.diffusion.networks import NETWORKS, build_network
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import MinMaxNormalizer, VertexLayout

__all__ = ["describe_prior", "prior_from_description", "prior_record", "prior_from_record", "save_prior", "load_prior"]

GAUSSIAN = "gaussian"


def describe_prior(prior: DiffusionPrior) -> dict:
    """Plain-value description that :func:`prior_from_description` turns back into a prior."""
    network = prior.network
    description = {"layout": dataclasses.asdict(prior.layout), "sde": dataclasses.asdict(prior.sde)}
    if isinstance(network, GaussianNoisePredictor):
        return {"network": GAUSSIAN, **description}
    if getattr(network, "name", None) not in NETWORKS:
        raise TypeError(f"only networks built by build_network (or the exact Gaussian predictor) can be saved, "
                        f"got {type(network).__name__}")
    return {"network": network.name, "network_config": dict(network.config), **description}


def prior_from_description(description: dict, state: dict | None = None) -> DiffusionPrior:
    """A prior with the architecture of ``description``: freshly initialised, or the exact Gaussian
    predictor rebuilt from its buffers in ``state`` (a prior's ``state_dict``)."""
    try:
        layout = VertexLayout(**description["layout"])
        sde = VPSDE(**description["sde"])
        if description["network"] == GAUSSIAN:
            buffers = {key.removeprefix("network."): value for key, value in state.items() if key.startswith("network.")}
            network = GaussianNoisePredictor.from_state(buffers, sde)
        else:
            network = build_network(description["network"], layout, sde=sde, **description["network_config"])
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"prior description is incomplete or invalid: {error}") from None
    return DiffusionPrior(network, layout, sde)


def prior_record(prior: DiffusionPrior, normalizer: MinMaxNormalizer | None = None,
                 compact: Callable[[dict], dict] | None = None) -> dict:
    """The record of ``prior`` (weights on the CPU; ``compact`` may shrink them, e.g. to float16)."""
    state = {key: value.detach().cpu() for key, value in prior.state_dict().items()}
    return {"prior": describe_prior(prior), "state": compact(state) if compact else state,
            "normalizer": normalizer.state_dict() if normalizer is not None else None}


def prior_from_record(record: dict, layout: VertexLayout | None = None) -> DiffusionPrior:
    """The prior of a :func:`prior_record` (``.normalizer`` set, eval mode).

    ``layout`` is needed only for the prior payloads of old APS files, which did not store it.
    """
    if "prior" not in record:  # an APS file from before prior records: {"network": ..., "state": network weights}
        state = {f"network.{key}": value for key, value in record["state"].items()}
        if record["network"] == GAUSSIAN:
            description = {"network": GAUSSIAN, "layout": dataclasses.asdict(layout), "sde": record["sde"]}
        else:
            description = record["description"]
        record = {"prior": description, "state": state, "normalizer": None}
    prior = prior_from_description(record["prior"], record["state"])
    prior.load_state_dict(record["state"])  # float16-stored weights are cast back to the parameters' float32
    normalizer = record.get("normalizer")
    prior.normalizer = MinMaxNormalizer(**normalizer) if normalizer else None
    return prior.eval()


def save_prior(path, prior: DiffusionPrior, normalizer: MinMaxNormalizer | None = None):
    """Write ``prior`` (and the data normalisation, if any) to ``path`` atomically."""
    return save_checkpoint(path, prior_record(prior, normalizer), kind="diffusion_prior")


def load_prior(path, map_location="cpu") -> DiffusionPrior:
    """Rebuild a prior saved by :func:`save_prior` (or a ``train_prior`` training checkpoint).

    The result is in eval mode; ``prior.normalizer`` is the stored
    :class:`~manifold_aps.signals.MinMaxNormalizer` or None.
    """
    record = load_checkpoint(path, map_location=map_location)
    try:
        if record["kind"] == "diffusion_prior":
            prior = prior_from_record(record)
        elif record["kind"] == "training" and "prior" in record.get("metadata", {}):
            prior = prior_from_description(record["metadata"]["prior"], record["model"])
            prior.load_state_dict(record["model"])
            prior.load_state_dict(record["ema"], strict=False)
            prior.normalizer = None
        else:
            raise CheckpointError(f"{path} holds a {record['kind']!r} checkpoint without a diffusion prior")
    except (KeyError, TypeError, RuntimeError) as error:  # header fine, body missing parts or mismatched shapes
        raise CheckpointError(f"{path} is an incomplete or inconsistent prior file "
                              f"({type(error).__name__}: {str(error)[:300]})") from None
    return prior.to(map_location).eval()
