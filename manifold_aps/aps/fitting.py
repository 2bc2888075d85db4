"""``fit``: prior, measurements, Gaussian base and APS training in one call."""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
import torch

from manifold_aps.aps.config import APSConfig
from manifold_aps.aps.forward_kl import draw_prior_signals
from manifold_aps.aps.sampler import AmortizedPosteriorSampler, condition_channels, marginal_feature_channels
from manifold_aps.aps.training import train_aps
from manifold_aps.checkpoint import load_checkpoint, save_checkpoint
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.flows.factory import FLOWS, build_flow
from manifold_aps.flows.vertexwise import VertexwiseMonotone
from manifold_aps.gaussian_posterior import candidate_ranks, fit_gaussian_base
from manifold_aps.mesh import Mesh
from manifold_aps.mixture_of_ppca import fit_mixture_base
from manifold_aps.operators import BlindVertexMask, RandomVertexMask, check_hidden_fraction, check_noise_std
from manifold_aps.signals import MinMaxNormalizer, VertexLayout, latlon_dims, latlon_grid
from manifold_aps.trainer import run_fingerprint

__all__ = ["fit"]


def fit(mesh, signals, mask_rate: float = 0.6, noise_std: float = 0.05, prior: DiffusionPrior | None = None,
        flow: str = "realnvp", scale: str = "cpu", device="auto", blind: bool = False,
        hidden_range: tuple[float, float] = (0.3, 0.6), test_signals=None, checkpoint_dir=None, seed: int = 0,
        progress: bool = True, gaussian_base: bool = True, base_rank: int = 64, normalizer="auto",
        resume: bool = True, prior_draws=None, base_signals=None, base_components: int = 1, **overrides) -> AmortizedPosteriorSampler:
    """Fit an amortized posterior sampler for random vertex masking on ``mesh``.

    A short tutorial::

        import manifold_aps as aps
        mesh = aps.latlon_sphere(4.0)                       # or aps.bunny(), aps.load_mesh(path)
        model = aps.fit(mesh, train_fields, mask_rate=0.6, noise_std=0.05, scale="cpu",
                        test_signals=held_out_fields)      # (N, V) or (N, V, C), values ~[0, 1]
        print(model.report)                                 # PSNR / coverage on the held-out fields
        observed = field.copy(); observed[hidden] = np.nan  # NaN = not observed
        mean, std = model.posterior(observed, n=128)        # same form as `observed`
        draws = model.sample(observed, n=16)                # (16, V) here
        model.save("aps.pt"); model = aps.AmortizedPosteriorSampler.load("aps.pt")

    What happens: (1) without a ``prior``, a diffusion prior is trained on the complete signals
    (those without NaN) by denoising score matching — clean signals enter here, and in the
    Gaussian base's fit, only; (2) each signal is measured by the operator, ``y = m ⊙ (x + σ_y n)``
    with ``round(mask_rate · V)`` random vertices hidden (NaN entries are never observed) — from
    here on only measurements are used; (3) a conditional flow is trained by the APS objective
    (module docstring); (4) with ``test_signals``, held-out fields are measured the same way and
    ``model.report`` holds PSNR of the N = 128 mean and of one sample, 90 % interval coverage on
    the hidden vertices, and time per measurement.

    Arguments:
        mesh: a :class:`~manifold_aps.Mesh`; signals: ``(N, V)`` or ``(N, V, C)`` numpy / torch /
            xarray (normalise them to about [0, 1] first). NaN marks missing values.
        mask_rate: the hidden fraction (the operator's ``hidden_fraction``), in [0, 1).
        noise_std: ``σ_y > 0``.
        prior: a trained :class:`~manifold_aps.diffusion.DiffusionPrior` on this mesh's layout.
        flow: ``"realnvp"`` (vector halves) or ``"mesh"`` (graph couplings on vertex partitions).
        scale: ``"smoke"`` (seconds), ``"cpu"`` or ``"paper"`` presets (:mod:`manifold_aps.scales`).
        blind: train for unknown masks with hidden fractions drawn from ``hidden_range``; the
            sampler is then given ``y`` alone and reads the mask off it (hidden entries are 0).
        gaussian_base: compose the flow with the optimal-interpolation posterior of a Gaussian
            (probabilistic PCA) prior fitted to the complete signals, its rank chosen on a
            held-out tenth of them (module docstring); False trains the flow from ``z`` alone.
        base_rank: the largest rank of the fitted Gaussian; its posterior is then kept exactly
            (memory: ``(2 + rank) · V · C`` floats per training signal).
        base_components: ``K ≥ 2`` replaces the Gaussian base by a mixture of ``K`` PPCA Gaussians
            fitted by EM, their rank (≤ ``base_rank``) chosen as the Gaussian's is
            (:func:`~manifold_aps.mixture_of_ppca.fit_mixture_base`): the flow
            then maps draws of that mixture's exact posterior (:mod:`manifold_aps.mixture_base`;
            no model error, whose estimate needs one Gaussian).
        base_signals: signals ``(N_b, V)`` / ``(N_b, V, C)``, in the units of ``signals``, that the
            Gaussian base is fitted on in place of ``signals`` (only their complete ones count) —
            e.g. every training field, while the flow trains on fewer to bound the memory above.
        checkpoint_dir: where to keep resumable training checkpoints (``prior.pt``, ``aps.pt``); a
            run whose data or configuration differ from the checkpoints' refuses to resume
            (:class:`~manifold_aps.checkpoint.CheckpointError`) unless ``resume=False``.
        resume: continue from the checkpoints in ``checkpoint_dir`` (default), or start afresh and
            overwrite them.
        normalizer: how physical values map to the model's: ``"auto"`` learns a min-max
            :class:`~manifold_aps.signals.MinMaxNormalizer` when the signals carry units (a DataArray
            with a ``units`` attribute) and otherwise uses the values as given (normalise them to
            about [0, 1] first); ``"fit"`` always learns one; a ``MinMaxNormalizer`` is used as is;
            None uses the values as given. With a normaliser, ``noise_std`` is in normalised units,
            and the sampler takes and returns physical values (and checks units).
        overrides: :meth:`APSConfig.preset` fields (e.g. ``iterations=...``, ``flow_depth=...``,
            ``forward_kl_weight=1.0``: add the mass-covering term on signals drawn from the prior,
            kept in ``checkpoint_dir/prior_draws.pt``; ``forward_kl_noise=σ_d``: fit it to the
            dequantised draws ``x + σ_d ε``, in the units of ``noise_std``; ``elbo_min_time=ε``: the
            ELBO's lower time limit (default the prior's ``sde.eps``; lower it when the posterior
            std is near ``σ_ε`` ≈ 0.0105, e.g. smooth fields: docs/method.md).
        prior_draws: for ``forward_kl_weight`` > 0, signals ``(N, V)`` / ``(N, V, C)`` drawn from the
            prior by other means (e.g. exactly, for a prior known in closed form), in the units of
            ``signals``; default: ``forward_kl_draws`` ancestral draws of ``prior``.

    Reproducible: the same ``seed`` gives the same networks, measurements and trained weights on
    the same device (the global torch RNG is seeded inside and restored afterwards).

    Raises:
        TypeError: ``mesh`` is not a :class:`~manifold_aps.Mesh`; signals or numbers of the wrong type.
        ValueError: signals that do not fit the mesh, contain ±inf or an all-NaN signal, fewer than 2
            signals, constant signals; ``mask_rate`` outside [0, 1); ``noise_std`` ≤ 0.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a manifold_aps.Mesh (e.g. from load_mesh(path)), got {type(mesh).__name__}")
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    noise_std = check_noise_std(noise_std, positive=True)
    mask_rate = check_hidden_fraction(mask_rate, "mask_rate (the hidden fraction)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}")
    if isinstance(base_components, bool) or not isinstance(base_components, numbers.Integral) or base_components < 1:
        raise ValueError(f"base_components (the base's mixture components) must be an integer ≥ 1, got {base_components!r}")
    if base_components > 1 and not gaussian_base:
        raise ValueError("base_components > 1 is a mixture base: it needs gaussian_base=True")
    config = APSConfig.preset(scale, seed=seed, **overrides)
    layout = VertexLayout(mesh.num_vertices, _channels_of(signals), grid=latlon_grid(mesh))
    batch, _ = layout.to_batch(signals)
    _check_training_signals(layout, batch)
    normalizer = _normalizer_for(signals, layout.unpad(batch), normalizer)
    if normalizer is not None:
        batch = normalizer.normalize(batch) * layout.vertex_mask()[:, None]  # padding stays exactly zero
    base_batch = _base_batch(layout, batch, signals, base_signals, normalizer)
    operator = (BlindVertexMask(layout.num_vertices, layout.padded_vertices, hidden_range, noise_std) if blind
                else RandomVertexMask(layout.num_vertices, layout.padded_vertices, mask_rate, noise_std))
    checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
    with torch.random.fork_rng(devices=[]):  # network initialisation follows `seed`; the caller's RNG is untouched
        torch.manual_seed(seed)
        if prior is None:
            from manifold_aps.diffusion.training import train_default_prior

            prior = train_default_prior(layout, mesh, batch, scale, device,
                                        None if checkpoint_dir is None else checkpoint_dir / "prior.pt", seed, progress,
                                        resume)
        elif prior.layout.num_vertices != layout.num_vertices or prior.layout.num_channels != layout.num_channels:
            raise ValueError(f"the prior is for {prior.layout.num_vertices} vertices × {prior.layout.num_channels} "
                             f"channels, the signals have {layout.num_vertices} × {layout.num_channels}")
        layout = prior.layout
        measurements = operator(layout.pad(layout.unpad(batch)), torch.Generator().manual_seed(seed))
        if not gaussian_base:
            base = None
        elif base_components > 1:
            base = fit_mixture_base(layout.unpad(base_batch), operator, base_components, candidate_ranks(base_rank), seed)
        else:
            base = fit_gaussian_base(layout.unpad(base_batch), operator, seed, ranks=candidate_ranks(base_rank))
        flow_model = build_flow(flow, layout, condition_channels(layout, blind, base is not None), mesh.edge_index.cpu(),
                                **config.flow_shape())
        if config.marginal_components and base is None:
            raise ValueError("marginal_components > 0 (a vertexwise map after the Gaussian base) needs gaussian_base=True")
        marginal = (VertexwiseMonotone(layout.num_channels, marginal_feature_channels(layout, blind),
                                       config.marginal_components) if config.marginal_components else None)
        model = AmortizedPosteriorSampler(flow_model, prior.cpu(), operator, num_times=config.num_times, base=base,
                                          normalizer=normalizer, marginal=marginal, elbo_min_time=config.elbo_min_time)
        if prior_draws is not None:
            if not config.forward_kl_weight:
                raise ValueError("prior_draws are for the forward-KL term: give forward_kl_weight > 0 as well")
            draws = layout.to_batch(prior_draws)[0]
            if not torch.isfinite(draws).all():
                raise ValueError("prior_draws must be complete, finite signals (no NaN or ±inf)")
            draws = draws if normalizer is None else normalizer.normalize(draws) * layout.vertex_mask()[:, None]
        elif config.forward_kl_weight:
            draws = _prior_draws(prior, config, seed, checkpoint_dir, resume, progress)
        else:
            draws = None
        train_aps(model, measurements, config, None if checkpoint_dir is None else checkpoint_dir / "aps.pt",
                  resume=resume, progress=progress, device=device, prior_draws=draws)
    if test_signals is not None:
        from manifold_aps.metrics import evaluate_sampler

        test = layout.unpad(layout.to_batch(test_signals)[0])
        model.report = evaluate_sampler(model, operator, test if normalizer is None else normalizer.normalize(test),
                                        seed=seed + 1)
    return model


def _prior_draws(prior: DiffusionPrior, config: APSConfig, seed: int, checkpoint_dir: Path | None, resume: bool,
                 progress: bool) -> torch.Tensor:
    """The forward-KL term's signals drawn from ``prior``; kept in ``checkpoint_dir/prior_draws.pt``
    and reused (with ``resume``) when that file holds draws of the same prior, count, steps and seed."""
    wanted = dict(prior=run_fingerprint(torch.cat([value.detach().cpu().flatten().double() for value in
                                                   prior.state_dict().values() if value.is_floating_point()]))["data"],
                  count=config.forward_kl_draws, steps=config.forward_kl_steps, seed=seed)
    path = None if checkpoint_dir is None else checkpoint_dir / "prior_draws.pt"
    if path is not None and resume and path.exists():
        stored = load_checkpoint(path, kind="prior_draws")
        if stored["made_by"] == wanted:
            return stored["draws"]
    draws = draw_prior_signals(prior, config.forward_kl_draws, config.forward_kl_steps, seed, progress=progress)
    if path is not None:
        save_checkpoint(path, {"made_by": wanted, "draws": draws}, kind="prior_draws")
    return draws


def _base_batch(layout: VertexLayout, batch: torch.Tensor, signals, base_signals, normalizer) -> torch.Tensor:
    """The padded, normalised signals the Gaussian base is fitted on: ``base_signals`` or the training ``batch``."""
    if base_signals is None:
        return batch
    units, base_units = (getattr(values, "attrs", {}).get("units") for values in (signals, base_signals))
    if units is not None and base_units is not None and units != base_units:
        raise ValueError(f"base_signals are in {base_units!r}, the signals in {units!r}: convert them to one unit")
    try:
        base_batch = layout.to_batch(base_signals)[0]
    except ValueError as error:
        raise ValueError(f"base_signals: {error}") from error
    if torch.isinf(base_batch).any():
        raise ValueError("base_signals contain ±inf; use NaN to mark missing values")
    return base_batch if normalizer is None else normalizer.normalize(base_batch) * layout.vertex_mask()[:, None]


def _normalizer_for(signals, values: torch.Tensor, choice) -> MinMaxNormalizer | None:
    """The normaliser ``fit`` uses (see its ``normalizer`` argument), from the unpadded ``values``."""
    if isinstance(choice, MinMaxNormalizer) or choice is None:
        return choice
    if choice not in ("auto", "fit"):
        raise ValueError(f"normalizer must be 'auto', 'fit', None or a MinMaxNormalizer, got {choice!r}")
    units = getattr(signals, "attrs", {}).get("units")
    if choice == "auto" and units is None:
        return None
    return MinMaxNormalizer.fit(values, units=units)


def _channels_of(signals) -> int:
    """Channels ``C`` of ``(N, V)`` / ``(N, V, C)`` signals (1 for a lat-lon DataArray)."""
    if signals is None or isinstance(signals, (str, bytes)):
        raise TypeError(f"signals must be a numpy array, torch tensor or xarray.DataArray of numbers, "
                        f"got {type(signals).__name__}")
    if hasattr(signals, "dims") and latlon_dims(signals) is not None:  # (sample, lat, lon) grids: one channel
        return 1
    try:
        shape = tuple(signals.shape) if hasattr(signals, "shape") else np.shape(signals)
    except ValueError as error:  # a ragged nested list
        raise TypeError(f"signals must be a rectangular array of numbers: {error}") from None
    if len(shape) not in (2, 3):
        raise ValueError(f"signals must be (N, V) or (N, V, C), got shape {shape}")
    return 1 if len(shape) == 2 else int(shape[-1])


def _check_training_signals(layout: VertexLayout, batch: torch.Tensor) -> None:
    if batch.shape[0] < 2:
        raise ValueError(f"fit needs at least 2 signals, got {batch.shape[0]}")
    if torch.isinf(batch).any():
        raise ValueError("signals contain ±inf; use NaN to mark missing values")
    real = layout.unpad(batch)
    all_missing = torch.isnan(real).any(dim=-1).all(dim=1)
    if all_missing.any():
        raise ValueError(f"signal(s) {all_missing.nonzero().flatten().tolist()[:10]} are all NaN (no observed "
                         f"vertex); drop them")
    finite = real[torch.isfinite(real)]
    if float(finite.max() - finite.min()) == 0.0:
        raise ValueError(f"the signals are constant (every value is {float(finite[0]):.6g}): there is no variation "
                         f"for a prior to learn; check that the right variable was loaded")
