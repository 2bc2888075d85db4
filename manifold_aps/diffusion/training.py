"""Denoising score matching for the diffusion prior (docs/method.md, "The prior: a diffusion model over
vertex vectors"), on top of :mod:`manifold_aps.trainer`.

    L(θ) = E_{x_0, t ~ U[ε, 1], e ~ N(0, I)} ‖ε_θ(α_t x_0 + σ_t e, t) − e‖² / d

on padded batches whose padding entries are zero (the networks predict those exactly, see
:mod:`manifold_aps.diffusion.networks`). Uniform ``t`` weights every noise level equally as in
DDPM; the likelihood-weighted (importance-sampled) objective is the ELBO of :mod:`.elbo`.

Presets (:func:`prior_training_config`) come from the one scale table, :mod:`manifold_aps.scales`.
:func:`gaussian_residual_prior` builds a Gaussian-residual prior around the PPCA Gaussian of the
training signals; :func:`train_default_prior` is the prior :func:`~manifold_aps.aps.fit` trains when none is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from manifold_aps.diffusion.networks import build_network
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.residual import GaussianResidualNetwork
from manifold_aps.diffusion.saving import describe_prior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.scales import PAPER_PRIOR_ITERATIONS, preset
from manifold_aps.gaussian_posterior import fit_ppca
from manifold_aps.mixture_of_ppca import fit_mixture_of_ppca
from manifold_aps.signals import VertexLayout
from manifold_aps.trainer import TrainingConfig, TrainingResult, train

__all__ = ["denoising_score_matching_loss", "prior_training_config", "train_prior", "train_default_prior",
           "gaussian_residual_prior", "preset_residual_prior"]


def prior_training_config(scale: str = "cpu", task: str = "bunny", **overrides) -> TrainingConfig:
    """The ``scale`` preset of :mod:`manifold_aps.scales` as a
    :class:`~manifold_aps.trainer.TrainingConfig`, with ``overrides`` applied.

    ``task`` (``"bunny"`` or ``"era5"``) only changes the ``paper`` iteration budget.
    """
    fields = preset(scale, "prior_training")
    if "steps" in overrides:
        warnings.warn("prior_training_config(steps=...) is now called iterations=...", DeprecationWarning, stacklevel=2)
        overrides["iterations"] = overrides.pop("steps")
    if task not in PAPER_PRIOR_ITERATIONS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(PAPER_PRIOR_ITERATIONS)}")
    if scale == "paper":
        fields["iterations"] = PAPER_PRIOR_ITERATIONS[task]
    return TrainingConfig(**{**fields, **overrides})


def denoising_score_matching_loss(noise_predictor: Callable, x0: torch.Tensor,
                                  generator: torch.Generator | None = None, sde: VPSDE | None = None,
                                  time_power: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``‖ε_θ(x_t, t) − e‖² / d``, ``t = ε + (1 − ε) u^p``, ``u ~ U[0, 1]``
    (a scalar). ``p = time_power`` = 1 is DDPM's uniform ``t``; ``p > 1`` spends more of the
    training on small ``t`` (density ∝ ``(t − ε)^{1/p − 1}``), where a Gaussian-residual prior has
    the most to learn.

    The signature (with the defaults) is the trainer's ``loss_fn(model, batch, generator)``.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be a batch of vectors (B, d), got {tuple(x0.shape)}")
    sde = sde or VPSDE()
    batch = x0.shape[0]
    uniform = torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype)
    times = sde.eps + (1.0 - sde.eps) * (uniform if time_power == 1.0 else uniform**time_power)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    residual = noise_predictor(sde.perturb(x0, times, noise), times) - noise
    return residual.pow(2).mean()


def train_prior(prior: DiffusionPrior, data: torch.Tensor, config: TrainingConfig, checkpoint_path=None,
                resume: bool = True, use_ema: bool = True, callback: Callable | None = None,
                time_power: float = 1.0, time_limit_s: float | None = None) -> TrainingResult:
    """Fit ``prior.network`` to ``data`` by denoising score matching; returns the trainer's result.

    Arguments:
        data: padded training signals ``(N, V_pad, C)`` or flattened ``(N, d)``, zero on padding
            (normalise them first, e.g. to [0, 1]).
        use_ema: leave the EMA weights in ``prior`` at the end (what sampling and APS should use).
        time_power: ``p`` of :func:`denoising_score_matching_loss`'s time draw (1: uniform).
        time_limit_s: wall-clock budget of this call (:func:`~manifold_aps.trainer.train`); the
            result's ``step`` says how far it got.

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
        return denoising_score_matching_loss(model, batch, generator, sde, time_power)

    result = train(prior, loss_fn, data, config, checkpoint_path=checkpoint_path, resume=resume,
                   metadata={"prior": describe_prior(prior)} | ({} if time_power == 1.0 else {"time_power": time_power}), callback=callback,
                   time_limit_s=time_limit_s)
    if use_ema:
        result.ema.copy_to(prior)
    return result


def train_default_prior(layout, mesh, signals: torch.Tensor, scale: str, device="auto", checkpoint_path=None,
                        seed: int = 0, progress: bool = True, resume: bool = True) -> DiffusionPrior:
    """The prior :func:`~manifold_aps.aps.fit` trains when none is given: a guided Gaussian-residual
    prior (the ``scale`` preset ``prior_network`` of :mod:`manifold_aps.scales`) around the PPCA
    Gaussian of the complete rows of the padded ``signals`` ``(N, V_pad, C)``, trained on them.

    It starts as that Gaussian, so even a short training never leaves it far worse; the rank is
    capped at ``N − 1``.

    A signal with a missing value (NaN) is left out with a warning, never filled in.
    """
    incomplete = torch.isnan(signals).flatten(1).any(dim=1)
    complete = signals[~incomplete]
    if complete.shape[0] < 2:
        raise ValueError(f"training a prior needs at least 2 signals without NaN, got {complete.shape[0]} of "
                         f"{signals.shape[0]}; pass a trained prior instead")
    if incomplete.any():
        warnings.warn(f"the diffusion prior is trained on the {complete.shape[0]} complete signals only: "
                      f"{int(incomplete.sum())} of {signals.shape[0]} signals contain NaN (missing values) and are "
                      f"left out of prior training (APS training still uses their observed vertices)", stacklevel=3)
    prior = preset_residual_prior(complete, layout, mesh, scale)
    config = prior_training_config(scale, seed=seed, device=str(device), progress=progress)
    train_prior(prior, complete, config, None if checkpoint_path is None else Path(checkpoint_path), resume=resume)
    return prior.freeze()


def preset_residual_prior(train_signals: torch.Tensor, layout: VertexLayout, mesh, scale: str, **overrides):
    """The untrained guided Gaussian-residual prior of the ``scale`` preset ``prior_network``
    (:mod:`manifold_aps.scales`) with ``overrides``, around the PPCA Gaussian of ``train_signals``;
    the rank is capped at ``N − 1``."""
    options = {**preset(scale, "prior_network"), **overrides}
    options["rank"] = min(options["rank"], train_signals.shape[0] - 1, layout.num_vertices * layout.num_channels - 1)
    return gaussian_residual_prior(train_signals, layout, mesh=mesh, **options)


def gaussian_residual_prior(train_signals: torch.Tensor, layout: VertexLayout, base: str = "mlp", rank: int = 256,
                            mesh=None, sde: VPSDE | None = None, correction_scale: float = 1.0, guide: bool = True,
                            components: int = 1, **base_config):
    """A :class:`~manifold_aps.diffusion.prior.DiffusionPrior` whose network is a Gaussian-residual
    network around the PPCA Gaussian (``rank`` modes) of ``train_signals`` ``(N, V, C)`` (or
    padded, ``(N, V_pad, C)``); ``base_config`` configures the correction network ``base``, which
    reads the Gaussian's denoised estimate too unless ``guide=False`` (see
    :class:`~manifold_aps.diffusion.residual.GaussianResidualNetwork`). ``components > 1`` puts a
    mixture of that many PPCA Gaussians (:func:`~manifold_aps.mixture_of_ppca.fit_mixture_of_ppca`)
    in place of the single Gaussian.

    Example:
        >>> from manifold_aps.tasks import load_task                        # doctest: +SKIP
        >>> task = load_task("bunny_mnist")                                  # doctest: +SKIP
        >>> prior = gaussian_residual_prior(task.train, VertexLayout(task.mesh.num_vertices),
        ...                                 base="mlp", width=1024, depth=4)  # doctest: +SKIP
    """
    if train_signals.dim() == 3 and train_signals.shape[1:] == (layout.padded_vertices, layout.num_channels):
        train_signals = layout.unpad(train_signals)
    if train_signals.dim() != 3 or train_signals.shape[1:] != (layout.num_vertices, layout.num_channels):
        raise ValueError(f"train_signals must be (N, {layout.num_vertices}, {layout.num_channels}) or padded "
                         f"(N, {layout.padded_vertices}, {layout.num_channels}), got {tuple(train_signals.shape)}")
    sde = sde or VPSDE()
    rows = train_signals.reshape(train_signals.shape[0], -1)
    gaussian = fit_ppca(rows, rank) if components == 1 else fit_mixture_of_ppca(rows, components, rank)
    network = build_network(GaussianResidualNetwork.name, layout, mesh=mesh, sde=sde, base=base, base_config=base_config,
                            rank=rank, correction_scale=correction_scale, gaussian=gaussian, guide=guide)
    return DiffusionPrior(network, layout, sde)
