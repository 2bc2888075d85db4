"""Denoising score matching for the diffusion prior (METHOD.md §2), on top of :mod:`manifold_aps.trainer`.

    L(θ) = E_{x_0, t ~ U[ε, 1], e ~ N(0, I)} ‖ε_θ(α_t x_0 + σ_t e, t) − e‖² / d

on padded batches whose padding entries are zero (the networks predict those exactly, see
:mod:`manifold_aps.diffusion.networks`). Uniform ``t`` weights every noise level equally as in
DDPM; the likelihood-weighted (importance-sampled) objective is the ELBO of :mod:`.elbo`.

Presets (:func:`prior_training_config`): ``smoke`` (seconds, for tests), ``cpu`` (hours on a
laptop-class CPU), ``paper`` (METHOD.md §6: 500k iterations for the bunny, 360k for ERA5, batch 64,
lr 2e-4; warm-up 5000, clipping 1 and EMA 0.9999 are the score_sde defaults the paper inherits).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.saving import describe_prior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.trainer import TrainingConfig, TrainingResult, train

__all__ = ["denoising_score_matching_loss", "PRIOR_PRESETS", "prior_training_config", "train_prior"]

PRIOR_PRESETS = {
    "smoke": TrainingConfig(steps=20, batch_size=16, learning_rate=1e-3, ema_decay=0.9, checkpoint_every=10),
    "cpu": TrainingConfig(steps=20_000, batch_size=64, learning_rate=2e-4, warmup_steps=500, ema_decay=0.999,
                          checkpoint_every=500),
    "paper": TrainingConfig(steps=500_000, batch_size=64, learning_rate=2e-4, warmup_steps=5000, ema_decay=0.9999,
                            checkpoint_every=5000),
}
_PAPER_STEPS = {"bunny": 500_000, "era5": 360_000}


def prior_training_config(preset: str = "cpu", task: str = "bunny", **overrides) -> TrainingConfig:
    """A :class:`~manifold_aps.trainer.TrainingConfig` preset, with ``overrides`` applied.

    ``task`` (``"bunny"`` or ``"era5"``) only changes the ``paper`` step budget.
    """
    if preset not in PRIOR_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRIOR_PRESETS)}")
    if task not in _PAPER_STEPS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(_PAPER_STEPS)}")
    config = PRIOR_PRESETS[preset]
    if preset == "paper":
        config = dataclasses.replace(config, steps=_PAPER_STEPS[task])
    return dataclasses.replace(config, **overrides)


def denoising_score_matching_loss(noise_predictor: Callable, x0: torch.Tensor,
                                  generator: torch.Generator | None = None, sde: VPSDE | None = None) -> torch.Tensor:
    """Mean over the batch of ``‖ε_θ(x_t, t) − e‖² / d``, ``t ~ U[ε, 1]`` (a scalar).

    The signature is the trainer's ``loss_fn(model, batch, generator)``.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be a batch of vectors (B, d), got {tuple(x0.shape)}")
    sde = sde or VPSDE()
    batch = x0.shape[0]
    times = sde.eps + (1.0 - sde.eps) * torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    residual = noise_predictor(sde.perturb(x0, times, noise), times) - noise
    return residual.pow(2).mean()


def train_prior(prior: DiffusionPrior, data: torch.Tensor, config: TrainingConfig, checkpoint_path=None,
                resume: bool = True, use_ema: bool = True, callback: Callable | None = None) -> TrainingResult:
    """Fit ``prior.network`` to ``data`` by denoising score matching; returns the trainer's result.

    Arguments:
        data: padded training signals ``(N, V_pad, C)`` or flattened ``(N, d)``, zero on padding
            (normalise them first, e.g. to [0, 1]).
        use_ema: leave the EMA weights in ``prior`` at the end (what sampling and APS should use).

    Checkpoints store the prior's description, so :func:`~manifold_aps.diffusion.saving.load_prior`
    can rebuild the prior from a training checkpoint too.
    """
    layout = prior.layout
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a tensor, got {type(data).__name__}")
    if data.dim() == 3 and data.shape[1:] == (layout.padded_vertices, layout.num_channels):
        data = layout.flatten(data)
    if data.dim() != 2 or data.shape[1] != layout.dim:
        raise ValueError(f"data must be (N, {layout.padded_vertices}, {layout.num_channels}) or (N, {layout.dim}), "
                         f"got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise ValueError("training data contain NaN or inf")
    padding = ~prior.network.real_entries.cpu() if hasattr(prior.network, "real_entries") else None
    if padding is not None and bool(data[:, padding.to(data.device)].any()):
        raise ValueError("training data are non-zero on padding vertices; build batches with VertexLayout.pad")
    if getattr(prior.network, "sde", prior.sde) != prior.sde:
        raise ValueError(f"the network's SDE {prior.network.sde} differs from the prior's {prior.sde}; "
                         f"pass the same sde to build_network and DiffusionPrior")
    data = data.float()
    sde = prior.sde

    def loss_fn(model, batch, generator):
        return denoising_score_matching_loss(model, batch, generator, sde)

    result = train(prior, loss_fn, data, config, checkpoint_path=checkpoint_path, resume=resume,
                   metadata={"prior": describe_prior(prior)}, callback=callback)
    if use_ema:
        result.ema.copy_to(prior)
    return result
