"""APS training: the measurements (and their Gaussian bases) packed into one tensor, the flow's
data-dependent initialisation, and the loop (:func:`manifold_aps.trainer.train`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from manifold_aps.aps.config import APSConfig
from manifold_aps.aps.forward_kl import dequantise
from manifold_aps.aps.sampler import AmortizedPosteriorSampler
from manifold_aps.gaussian_posterior import GaussianRoot
from manifold_aps.mixture_base import MixtureRoot
from manifold_aps.operators import Measurement
from manifold_aps.trainer import resolve_device, run_fingerprint, train

__all__ = ["train_aps", "pack", "unpack", "initial_guess"]

MIXTURE_ROOTS_BYTES = 8 * 2**30  # a mixture base's posteriors are solved once for all measurements up to this size


def initial_guess(measurement: Measurement, generator: torch.Generator | None = None) -> torch.Tensor:
    """A rough signal from a measurement alone, for ActNorm's data-dependent initialisation:
    ``y`` where observed, per-sample mean ± std of the observed values elsewhere."""
    weights = measurement.observed[..., None].to(measurement.y.dtype)
    count = weights.sum(dim=1, keepdim=True).clamp_min(1)
    mean = (measurement.y * weights).sum(dim=1, keepdim=True) / count
    std = (((measurement.y - mean) ** 2 * weights).sum(dim=1, keepdim=True) / count).sqrt().clamp_min(1e-3)
    noise = torch.randn(measurement.y.shape, generator=generator, device=measurement.y.device)
    return torch.where(measurement.observed[..., None], measurement.y, mean + std * noise)


def pack(measurement: Measurement, root: GaussianRoot | None = None) -> torch.Tensor:
    """``(N, V_pad, C + 1)``: ``y`` and the observed mask in one tensor (what the trainer batches),
    then, with a Gaussian base ``root``, its mean, scale and directions (``(2 + r) C`` more
    channels, zero on padding)."""
    y = measurement.y
    parts = [y, measurement.observed[..., None].to(y.dtype)]
    if root is not None:
        count, padded, C = y.shape
        extra = torch.cat([root.mean[..., None], root.scale[..., None], root.directions], dim=-1)  # (N, V·C, 2 + r)
        extra = extra.reshape(count, -1, C * extra.shape[-1]).to(y.dtype)
        parts.append(torch.nn.functional.pad(extra, (0, 0, 0, padded - extra.shape[1])))
    return torch.cat(parts, dim=-1)


def unpack(batch: torch.Tensor, channels: int, num_vertices: int | None = None):
    """Inverse of :func:`pack`: ``(Measurement, GaussianRoot or None)``; ``num_vertices`` (the
    real vertices) is needed when the batch carries a base."""
    measurement = Measurement(batch[..., :channels], batch[..., channels] > 0.5)
    if batch.shape[-1] == channels + 1:
        return measurement, None
    extra = batch[:, :num_vertices, channels + 1:]
    extra = extra.reshape(len(batch), num_vertices * channels, -1)
    return measurement, GaussianRoot(extra[..., 0], extra[..., 1], extra[..., 2:])


def train_aps(model: AmortizedPosteriorSampler, measurements: Measurement, config: APSConfig,
              checkpoint=None, resume: bool = True, progress: bool = True, device="auto",
              prior_draws: torch.Tensor | None = None):
    """Train ``model.flow`` on ``measurements`` (no clean signal is involved) with the shared
    :func:`manifold_aps.trainer.train` loop (AdamW, warm-up, clipping, EMA, atomic checkpoints,
    resume, torchrun DDP). The EMA weights are left in the model. Returns the trainer's result;
    its ``losses`` are the loss per real entry.

    With ``config.forward_kl_weight`` > 0, ``prior_draws`` (padded signals drawn from the prior,
    :func:`~manifold_aps.aps.forward_kl.draw_prior_signals`) are measured afresh at every step and
    the loss gains ``λ_fwd · (−log q(x | y))`` per entry on as many of them as the batch holds
    (at ``x + σ_d ε`` with ``config.forward_kl_noise`` = ``σ_d`` > 0, :func:`~manifold_aps.aps.forward_kl.dequantise`).
    """
    forward_weight = config.forward_kl_weight
    if forward_weight > 0 and (prior_draws is None or prior_draws.shape[1:] != (model.layout.padded_vertices,
                                                                                 model.layout.num_channels)):
        raise ValueError(f"forward_kl_weight > 0 needs prior_draws (N, {model.layout.padded_vertices}, "
                         f"{model.layout.num_channels}), got "
                         f"{None if prior_draws is None else tuple(prior_draws.shape)}")
    device = resolve_device(device)
    model.to(device)
    channels, vertices = model.layout.num_channels, model.layout.num_vertices
    mixture_roots = None
    if model.base is None:
        data = pack(measurements).float()
    elif model.mixture_base:  # K roots per measurement: kept when they fit, with each row's index as a last channel
        data = pack(measurements).float()
        mixture_roots = _mixture_roots(model, measurements)
        if mixture_roots is not None:
            index = torch.arange(len(data), dtype=data.dtype)[:, None, None].expand(-1, data.shape[1], 1)
            data = torch.cat([data, index], dim=-1)
    else:  # the base of every measurement, once (O(D k²) each), written chunk by chunk into one tensor
        data = None
        for start in range(0, len(measurements), 256):
            part = measurements[start:start + 256].to("cpu")
            packed = pack(part, model.base_root(part)).float()
            if data is None:
                data = torch.empty(len(measurements), *packed.shape[1:])
            data[start:start + len(part)] = packed
    if not (checkpoint is not None and resume and Path(checkpoint).exists()):
        generator = torch.Generator(device=device).manual_seed(config.training.seed)
        head = data[: max(64, config.training.batch_size)].to(device)
        if model.mixture_base:
            first = unpack(head[..., :channels + 1], channels)[0]
            first_root = model.base_root(first)
        else:
            first, first_root = unpack(head, channels, vertices)
        if model.base is None:
            example = model.layout.unpad(initial_guess(first, generator)).flatten(1)
        else:  # with a base the flow's outputs are standardised: start it at the identity
            example = torch.randn(len(first), model.flow.dim, generator=generator, device=device)
        model.flow.initialize(example, model.condition(first, first_root))
    entries = model.flow.dim

    draws = prior_draws.to(device) if forward_weight > 0 else None

    def loss_fn(trained, batch, generator):
        if mixture_roots is None:
            measurement, batch_root = unpack(batch, channels, vertices)
        else:
            measurement, _ = unpack(batch[..., :-1], channels)
            batch_root = mixture_roots.rows(batch[:, 0, -1].long().cpu()).to(device)
        if draws is None:
            return trained(measurement, generator, batch_root)["loss"].mean() / entries
        x = draws[torch.randint(len(draws), (len(batch),), generator=generator, device=device)]
        simulated = (model.operator(x, generator), dequantise(x, config.forward_kl_noise, model.layout, generator))
        terms = trained(measurement, generator, batch_root, simulated=simulated)
        return (terms["loss"] + forward_weight * terms["forward_kl"]).mean() / entries

    model.flow.train()
    metadata = {"aps": _run_description(config)}
    if draws is not None:  # a run resumes only with the same draws
        metadata["prior_draws"] = run_fingerprint(prior_draws)["data"]
    result = train(model, loss_fn, data, replace(config.training, device=str(device), progress=progress),
                   checkpoint_path=checkpoint, resume=resume, metadata=metadata)
    result.ema.copy_to(model)
    model.eval()
    return result


def _mixture_roots(model: AmortizedPosteriorSampler, measurements: Measurement) -> MixtureRoot | None:
    """Every measurement's mixture-base posterior (float32, solved once), or None when they would
    take more than ``MIXTURE_ROOTS_BYTES`` (then each batch's are solved at each step)."""
    per_measurement = model.flow.dim * (2 + sum(2 + component.rank for component in model.base.components))
    if 4 * per_measurement * len(measurements) > MIXTURE_ROOTS_BYTES:
        return None
    return MixtureRoot.cat([model.base_root(measurements[start:start + 256].to("cpu"))
                            for start in range(0, len(measurements), 256)])


def _run_description(config: APSConfig) -> dict:
    """What defines an APS run besides the data and optimisation (the checkpoint's metadata); the
    marginal map, the forward-KL term and its dequantisation, the ELBO's lower time limit only when there are, so
    runs from before they existed still resume."""
    description = config.flow_shape() | {"num_times": config.num_times}
    if config.marginal_components:
        description["marginal_components"] = config.marginal_components
    if config.forward_kl_weight:
        description |= {name: getattr(config, name) for name in ("forward_kl_weight", "forward_kl_draws",
                                                                 "forward_kl_steps")}
        if config.forward_kl_noise:
            description["forward_kl_noise"] = config.forward_kl_noise
    if config.elbo_min_time is not None:
        description["elbo_min_time"] = config.elbo_min_time
    return description
