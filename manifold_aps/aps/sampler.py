"""The amortized posterior sampler: the APS objective, one-call posterior sampling, and its file
format (flow, prior record, operator, normaliser, Gaussian base, report).

Units. The flow, the prior and the operator work on normalised signals (σ_y is in those units).
With a :class:`~manifold_aps.signals.MinMaxNormalizer` (the sampler's own, or else its prior's),
:meth:`~manifold_aps.aps.AmortizedPosteriorSampler.sample` and :meth:`~manifold_aps.aps.AmortizedPosteriorSampler.posterior` take
and return *physical* values: a DataArray's ``units`` attribute is checked against the
normaliser's (kelvin ↔ °C converted exactly, anything else refused), values far outside the
training range warn, and the answer comes back in the caller's units, coordinates and attributes.
Without a normaliser the values are used as given.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from pathlib import Path

import torch

from manifold_aps.aps.forward_kl import log_density
from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.data.gaussian_mixture import GaussianMixtureField
from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.saving import prior_from_record, prior_record
from manifold_aps.flows import ConditionalFlow, ConditionalMeshFlow, ConditionalRealNVP, VertexwiseMonotone
from manifold_aps.gaussian_posterior import GaussianRoot, LowRankGaussian
from manifold_aps.mixture_base import MixtureRoot, mixture_posterior_root
from manifold_aps.model_error import add_model_error, estimate_model_error
from manifold_aps.operators import (BlindVertexMask, Measurement, RandomVertexMask, check_noise_std,
                                    operator_from_config)
from manifold_aps.signals import (MinMaxNormalizer, VertexLayout, convert_units, latlon_dims,
                                  warn_outside_training_range)
from manifold_aps.trainer import resolve_device

__all__ = ["AmortizedPosteriorSampler", "condition_channels", "marginal_feature_channels", "observed_from_y"]


def condition_channels(layout: VertexLayout, blind: bool, gaussian_base: bool, mask_from_y: bool = True) -> int:
    """Channels of the flow's condition per vertex: ``y`` (``C``), the observed mask (1; a blind
    sampler reads it off ``y``, or, with ``mask_from_y=False`` as in files written before it did,
    goes without), and the Gaussian base's mean and scale (``2 C``) when there is a base."""
    mask = 0 if blind and not mask_from_y else 1
    return layout.num_channels + mask + (2 * layout.num_channels if gaussian_base else 0)


def marginal_feature_channels(layout: VertexLayout, blind: bool, mask_from_y: bool = True) -> int:
    """Per-vertex features of a :class:`~manifold_aps.flows.VertexwiseMonotone` after the base: the
    condition with a base, then the base's marginal std, the prior's mean and std (``3 C``)."""
    return condition_channels(layout, blind, True, mask_from_y) + 3 * layout.num_channels


def observed_from_y(y: torch.Tensor, num_vertices: int) -> torch.Tensor:
    """The observed mask ``(B, V_pad)`` that ``y`` ``(B, V_pad, C)`` itself reveals: a real vertex is
    observed iff some channel of ``y`` is non-zero there.

    Exact with probability 1 for the masking operators: hidden entries of ``y`` are exactly 0 and
    visible ones carry continuous noise (``y = m ⊙ (x + σ_y n)``, σ_y > 0)."""
    observed = (y != 0).any(dim=-1)
    observed[:, num_vertices:] = False
    return observed


class AmortizedPosteriorSampler(torch.nn.Module):
    """A conditional flow ``G(z, c(y))`` trained against a frozen diffusion prior.

    Arguments:
        flow: a :class:`~manifold_aps.flows.ConditionalFlow` over the ``V · C`` real entries whose
            condition has :func:`condition_channels` per vertex (:meth:`condition`).
        prior: the :class:`~manifold_aps.diffusion.DiffusionPrior` (frozen here).
        operator: the measurement operator (σ_y > 0, the mask rule, the likelihood); a
            :class:`~manifold_aps.operators.BlindVertexMask` makes the sampler blind (it reads
            ``y`` alone; the operator's mask is still used in the training loss).
        fidelity_weight, prior_weight, logdet_weight: ``λ_fid, λ_prior, λ_logdet`` (default 1).
        num_times: Monte-Carlo draws of the ELBO per flow sample.
        elbo_min_time: the lower limit ε of the ELBO's time integral (default: the prior's
            ``sde.eps``); the prior term is that of the prior smoothed by ``N(0, σ_ε²/α_ε²)``
            (:meth:`~manifold_aps.diffusion.DiffusionPrior.elbo`), so ε sets the finest scale APS
            resolves. Files that do not store it load with the default.
        base: the fitted Gaussian prior (over the ``V · C`` real entries) whose posterior is the
            flow's affine base (module docstring), or None for a flow on ``z`` alone; or a fitted
            :class:`~manifold_aps.data.GaussianMixtureField` (a mixture of PPCA), whose exact
            posterior is drawn from and the flow then maps the standardised draws
            (:mod:`manifold_aps.mixture_base`).
        base_rank: posterior directions a Gaussian base keeps exactly (default: the base's rank, i.e.
            all; a mixture base keeps every direction).
        normalizer: maps the user's physical values to the model's (default: the prior's
            ``normalizer``, if any; module docstring).
        mask_from_y: for a blind operator: read the observed mask off ``y``
            (``observed_from_y``): the Gaussian base is then the exact posterior given that
            mask, as for a known operator, and the flow's condition has the known-operator layout
            (``y``, mask, base mean, scale). False: the layout of blind files written before
            (base = the fitted prior, condition without the mask); files that do not store the
            flag load with False.
        marginal: a :class:`~manifold_aps.flows.VertexwiseMonotone` applied entry by entry after
            the base (needs a base; its features: :meth:`marginal_inputs`), or None.

    Example:
        >>> model = fit(mesh, signals, scale="smoke")             # doctest: +SKIP
        >>> mean, std = model.posterior(observed_with_nan, n=128)  # doctest: +SKIP
    """

    def __init__(self, flow: ConditionalFlow, prior: DiffusionPrior, operator: RandomVertexMask,
                 fidelity_weight: float = 1.0, prior_weight: float = 1.0, logdet_weight: float = 1.0,
                 num_times: int = 1, base: LowRankGaussian | None = None, base_rank: int | None = None,
                 normalizer: MinMaxNormalizer | None = None, mask_from_y: bool = True,
                 marginal: VertexwiseMonotone | None = None, elbo_min_time: float | None = None,
                 model_error: bool = False):
        super().__init__()
        if not isinstance(operator, RandomVertexMask):
            raise TypeError(f"operator must be a RandomVertexMask or BlindVertexMask, got {type(operator).__name__}")
        check_noise_std(operator.noise_std, positive=True)
        layout = prior.layout
        if (operator.num_vertices, operator.padded_vertices) != (layout.num_vertices, layout.padded_vertices):
            raise ValueError(f"the operator is for {operator.num_vertices} vertices padded to {operator.padded_vertices}, "
                             f"the prior for {layout.num_vertices} padded to {layout.padded_vertices}")
        if flow.dim != layout.num_vertices * layout.num_channels:
            raise ValueError(f"flow dimension {flow.dim} differs from the V·C = "
                             f"{layout.num_vertices * layout.num_channels} real entries of the prior's layout")
        if base is not None and not isinstance(base, (LowRankGaussian, GaussianMixtureField)):
            raise TypeError(f"base must be a LowRankGaussian, a GaussianMixtureField or None, got {type(base).__name__}")
        if base is not None and base.dim != flow.dim:
            raise ValueError(f"the Gaussian base has dimension {base.dim}, the flow {flow.dim}")
        if isinstance(base, GaussianMixtureField) and (base_rank is not None or (operator.blind and not mask_from_y)):
            raise ValueError("a mixture base keeps every posterior direction (no base_rank) and needs the observed "
                             "mask (for a blind sampler: mask_from_y=True)")
        if marginal is not None:
            expected = marginal_feature_channels(layout, operator.blind, mask_from_y)
            if base is None or (operator.blind and not mask_from_y):
                raise ValueError("a vertexwise marginal map reads the Gaussian base's posterior: it needs a base "
                                 "(and, for a blind sampler, the mask read off y)")
            if (marginal.config["channels"], marginal.config["features"]) != (layout.num_channels, expected):
                raise ValueError(f"the marginal map is for {marginal.config['channels']} channels and "
                                 f"{marginal.config['features']} features, this sampler needs "
                                 f"{layout.num_channels} and {expected}")
        self.marginal = marginal
        self.flow, self.prior, self.layout, self.operator = flow, prior.freeze(), layout, operator
        self.num_times = int(num_times)
        if elbo_min_time is not None and not 0 < elbo_min_time < 1:
            raise ValueError(f"elbo_min_time must be in (0, 1), got {elbo_min_time}")
        self.elbo_min_time = None if elbo_min_time is None else float(elbo_min_time)
        self.weights = dict(fidelity=float(fidelity_weight), prior=float(prior_weight), logdet=float(logdet_weight))
        self.flow_kind = "mesh" if isinstance(flow, ConditionalMeshFlow) else "realnvp"
        self.base = base
        self.base_rank = (int(base_rank) if base_rank is not None else
                          base.rank if isinstance(base, LowRankGaussian) else 0)
        self.normalizer = normalizer if normalizer is not None else getattr(prior, "normalizer", None)
        self.mask_from_y = bool(mask_from_y)
        if model_error and not isinstance(base, LowRankGaussian):
            raise ValueError("model_error=True needs a Gaussian base to estimate the model error under")
        self.model_error = bool(model_error)  # the default of sample() and posterior() (saved)
        self.report: dict = {}

    @property
    def blind(self) -> bool:
        return self.operator.blind

    @property
    def noise_std(self) -> float:
        return self.operator.noise_std

    @property
    def mixture_base(self) -> bool:
        """Whether the base is a Gaussian mixture's posterior (:mod:`manifold_aps.mixture_base`)."""
        return isinstance(self.base, GaussianMixtureField)

    # -- the objective --------------------------------------------------------------------------
    def seen(self, measurement: Measurement) -> Measurement:
        """The measurement as the sampler reads it: a blind sampler's observed mask is the one ``y``
        reveals (``observed_from_y``), never the operator's."""
        if not self.blind:
            return measurement
        return Measurement(measurement.y, observed_from_y(measurement.y, self.layout.num_vertices))

    def base_root(self, measurement: Measurement) -> GaussianRoot | MixtureRoot | None:
        """The Gaussian base of each measurement (None without a base), float32 over the ``V · C``
        real entries: the exact posterior given ``y`` on the observed entries (for a blind sampler
        those that ``y`` reveals), or the fitted prior for a blind sampler without ``mask_from_y``;
        with a mixture base, the mixture's exact posterior (a :class:`~manifold_aps.mixture_base.MixtureRoot`)."""
        if self.base is None:
            return None
        device = measurement.y.device
        if self.mixture_base:
            y, observed = self.seen(measurement).to("cpu").real_entries(self.layout.num_vertices)
            return mixture_posterior_root(self.base, y, observed, self.noise_std).to(device, torch.float32)
        if self.blind and not self.mask_from_y:
            root = self.base.root(self.base_rank)
            root = GaussianRoot(*(value.expand(len(measurement), *value.shape[1:]) for value in
                                  (root.mean, root.scale, root.directions)))
        else:
            y, observed = self.seen(measurement).to("cpu").real_entries(self.layout.num_vertices)
            root = self.base.posterior_root(y, observed, self.noise_std, self.base_rank)
        return GaussianRoot(*(value.float().to(device) for value in (root.mean, root.scale, root.directions)))

    def condition(self, measurement: Measurement, root: GaussianRoot | None = None) -> torch.Tensor:
        """``(B, V, C + 1)``: ``y`` and the observed mask on the real vertices (for a blind sampler
        the mask ``y`` reveals; ``(B, V, C)``, ``y`` alone, without ``mask_from_y``), followed by the
        base's mean and scale (``2 C`` more channels) when its ``root`` is given."""
        V, C = self.layout.num_vertices, self.layout.num_channels
        measurement = self.seen(measurement)
        y = measurement.y[:, :V]
        parts = [y] if self.blind and not self.mask_from_y else [y, measurement.observed[:, :V, None].to(y.dtype)]
        if root is not None:
            parts += [root.mean.reshape(-1, V, C), root.scale.reshape(-1, V, C)]
        return torch.cat(parts, dim=-1)

    def prior_marginals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The base prior's mean and marginal std over the ``V · C`` real entries (float32, cached)."""
        if getattr(self, "_prior_marginals", None) is None:
            self._prior_marginals = (self.base.mean.float(), self.base.pointwise_variance().sqrt().float())
        return self._prior_marginals

    def marginal_inputs(self, condition: torch.Tensor, root: GaussianRoot) -> tuple[torch.Tensor, ...]:
        """What the marginal map reads, given the flow's ``condition`` (:meth:`condition`): features
        ``(B, V, F)`` (the condition, the base's marginal std, the prior's mean and std), and the
        base's mean and marginal std ``(B, V, C)``."""
        V, C = self.layout.num_vertices, self.layout.num_channels
        mean, std = root.mean.reshape(-1, V, C), root.marginal_std().reshape(-1, V, C)
        prior_mean, prior_std = (value.to(mean.device).reshape(1, V, C).expand_as(mean) for value in self.prior_marginals())
        return torch.cat([condition, std, prior_mean, prior_std], dim=-1), mean, std

    def _apply_marginal(self, values: torch.Tensor, condition: torch.Tensor, root: GaussianRoot, log_det: bool = True):
        """``values`` ``(..., B, V·C)`` after the base → ``(g(values), log|det|)`` (zero without a
        map; None with ``log_det=False``)."""
        if self.marginal is None:
            return values, (torch.zeros(values.shape[:-1], device=values.device, dtype=values.dtype) if log_det else None)
        shape = values.shape
        mapped, step = self.marginal(values.reshape(*shape[:-1], self.layout.num_vertices, self.layout.num_channels),
                                     *self.marginal_inputs(condition, root), log_det=log_det)
        return mapped.reshape(shape), step

    def generate(self, measurement: Measurement, z: torch.Tensor, root: GaussianRoot | MixtureRoot | None = None,
                 generator: torch.Generator | None = None):
        """``x = G(z, c(y))`` as a padded batch ``(B, V_pad, C)`` (zero padding) and
        ``log N(z; 0, I) − log q(x | y)`` (``= log|det ∂G/∂z|`` for a Gaussian base or none).

        With a base, its ``root`` (from :meth:`base_root`) may be passed precomputed; a mixture
        base draws each sample's component from ``generator``."""
        if self.base is not None and root is None:
            root = self.base_root(measurement)
        condition = self.condition(measurement, root)
        if isinstance(root, MixtureRoot):
            b = root.draw(z, generator)
            values, log_det = self.flow(root.standardise(b), condition)
            values, marginal_log_det = self._apply_marginal(root.unstandardise(values), condition, root)
            white = -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)
            log_det = white - root.log_prob(b) + log_det + marginal_log_det
        else:
            values, log_det = self.flow(z, condition)
        if isinstance(root, GaussianRoot):
            values, log_det = root.transform(values), log_det + root.log_det()
            values, marginal_log_det = self._apply_marginal(values, condition, root)
            log_det = log_det + marginal_log_det
        x = self.layout.pad(values.reshape(-1, self.layout.num_vertices, self.layout.num_channels))
        return x, log_det

    def forward(self, measurement: Measurement, generator: torch.Generator | None = None,
                root: GaussianRoot | None = None, simulated: tuple[Measurement, torch.Tensor] | None = None) -> dict:
        """Per-measurement terms ``(B,)`` of L: ``loss``, ``fidelity``, ``prior`` (= b'), ``logdet``;
        with ``simulated`` = (measurements, the padded signals they measure), also ``forward_kl``:
        ``−log q(x | y)`` of each pair (:mod:`manifold_aps.aps.forward_kl`), not added to ``loss``."""
        z = torch.randn(len(measurement), self.flow.dim, generator=generator, device=measurement.y.device)
        x, log_det = self.generate(measurement, z, root, generator)
        fidelity = self.operator.misfit(measurement, x)
        elbo = self.prior.elbo(self.layout.flatten(x), num_times=self.num_times, generator=generator,
                               min_time=self.elbo_min_time)
        total = self.weights["fidelity"] * fidelity - self.weights["prior"] * elbo - self.weights["logdet"] * log_det
        terms = dict(loss=total, fidelity=fidelity, prior=elbo, logdet=log_det)
        if simulated is not None:
            terms["forward_kl"] = -log_density(self, *simulated)
        return terms

    # -- sampling ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_measurement(self, measurement: Measurement, n: int = 1, generator: torch.Generator | None = None,
                           max_batch: int = 8192) -> torch.Tensor:
        """``(n, B, V_pad, C)`` posterior draws for a :class:`~manifold_aps.operators.Measurement`; one flow call per chunk."""
        _check_sampling(n, generator)
        self.eval()
        device = next(self.flow.parameters()).device
        measurement = measurement.to(device)
        chunk = max(1, max_batch // n)
        draws = []
        for start in range(0, len(measurement), chunk):
            part = measurement[start:start + chunk]
            root = self.base_root(part)
            condition = self.condition(part, root)
            if isinstance(root, MixtureRoot):
                u = torch.randn(n, len(part), self.flow.dim, generator=generator, device=device)
                values = root.unstandardise(self.flow.push(root.standardise(root.draw(u, generator)), condition))
            else:
                values = self.flow.sample(condition, n, generator=generator)
                values = values if root is None else root.transform(values)
            if root is not None:
                values = self._apply_marginal(values, condition, root, log_det=False)[0]
            draws.append(values.reshape(n, len(part), self.layout.num_vertices, self.layout.num_channels))
        return torch.nn.functional.pad(torch.cat(draws, dim=1), (0, 0, 0, self.layout.padded_vertices - self.layout.num_vertices))

    def estimate_model_error(self, measurement: Measurement, noise_std: float | None = None) -> torch.Tensor:
        """``(B,)`` the white variance ``δ²`` (model units) that each measurement says the Gaussian
        base's prior misses, by maximum marginal likelihood (:mod:`manifold_aps.model_error`); on the
        entries the sampler reads as observed (for a blind sampler, those ``y`` reveals), with
        measurement noise ``noise_std`` (model units; default: the operator's σ_y)."""
        if not isinstance(self.base, LowRankGaussian):
            raise ValueError("model error is estimated under the sampler's Gaussian base; this sampler has "
                             f"{'a mixture base' if self.mixture_base else 'none'} (fit it with gaussian_base=True "
                             "and one base component)")
        y, observed = self.seen(measurement).to("cpu").real_entries(self.layout.num_vertices)
        noise_std = self.noise_std if noise_std is None else noise_std
        return estimate_model_error(self.base, y, observed, noise_std).float()

    def sample_with_model_error(self, measurement: Measurement, n: int = 1, generator: torch.Generator | None = None,
                                noise_std: float | None = None):
        """:meth:`sample_measurement`'s draws (on the CPU) with model error ``δ ξ`` added on the real
        vertices (:func:`~manifold_aps.model_error.add_model_error`), and ``δ²`` ``(B,)`` from
        :meth:`estimate_model_error`; ``noise_std`` as there (the flow still conditions on σ_y)."""
        noise_std = self.noise_std if noise_std is None else noise_std
        draws = self.sample_measurement(measurement, n, generator).cpu()
        variance = self.estimate_model_error(measurement, noise_std)
        V = self.layout.num_vertices
        seen = self.seen(measurement).to("cpu")
        draws[..., :V, :] = add_model_error(draws[..., :V, :], seen.y[:, :V], seen.observed[:, :V], noise_std,
                                            variance, generator)
        return draws, variance

    def sample(self, observed, n: int = 1, generator: torch.Generator | None = None, model_error: bool | None = None,
               measurement_noise_std: float | None = None):
        """Posterior draws for the user's measurement(s) ``observed`` ((V,), (V, C) or (N, V, C), or a
        lat-lon DataArray; NaN = hidden), in physical units (module docstring): returns ``(n, ...)``
        in the same kind, layout and units (numpy / torch / xarray).

        ``model_error=True``: for data from another source than the training signals (e.g. a model
        trained on a climate model's fields, applied to reanalysis), widen the draws by the white
        variance each measurement says the prior misses (:meth:`model_error_std`). None: the
        sampler's own setting, ``self.model_error`` (saved with it; False unless set).

        ``measurement_noise_std``: the std of your measurement noise, in your units, when it is not
        the σ_y the sampler was trained for. Model error is only seen beyond the noise assumed, so
        measurements much cleaner than σ_y hide it; this tells the estimate (and the model error's
        conditional on observed entries) the real noise. The flow still conditions as trained."""
        measurement, form, units = self._measurement_from_user(observed)
        draws = self._draws(measurement, n, generator, model_error, measurement_noise_std)
        return self.layout.restore(self._to_user_units(draws, units), form)

    def _draws(self, measurement: Measurement, n: int, generator, model_error: bool | None,
               measurement_noise_std: float | None) -> torch.Tensor:
        """``(n, B, V_pad, C)`` draws on the CPU, with model error if ``model_error`` (None: ``self.model_error``)."""
        if self.model_error if model_error is None else model_error:
            return self.sample_with_model_error(measurement, n, generator, self._noise_in_model_units(measurement_noise_std))[0]
        if measurement_noise_std is not None:
            raise ValueError("measurement_noise_std is used by the model-error estimate only; pass model_error=True")
        return self.sample_measurement(measurement, n, generator).cpu()

    def _noise_in_model_units(self, noise_std) -> float | None:
        """The user's measurement noise std (their units) in model units; None stays None."""
        if noise_std is None:
            return None
        if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real) or not 0 <= noise_std < float("inf"):
            raise ValueError(f"measurement_noise_std must be a finite number ≥ 0, got {noise_std!r}")
        return float(noise_std) / (self.normalizer.scale if self.normalizer is not None else 1.0)

    def model_error_std(self, observed, measurement_noise_std: float | None = None):
        """The std ``δ`` of the white model error each of the user's measurements reveals, in
        physical units (0 where the prior explains the measurement; see ``model_error`` of
        :meth:`sample`): ``(N,)`` (numpy for numpy input, else torch), or for a lat-lon DataArray
        a DataArray over its dimensions other than latitude and longitude, with its ``units``;
        ``measurement_noise_std`` as in :meth:`sample`."""
        measurement, _, units = self._measurement_from_user(observed)
        std = self.estimate_model_error(measurement, self._noise_in_model_units(measurement_noise_std)).sqrt()
        std = self.normalizer.denormalize_std(std) if self.normalizer is not None else std
        grid = latlon_dims(observed) if hasattr(observed, "dims") else None
        if grid is None:
            return std if isinstance(observed, torch.Tensor) else std.numpy()
        import xarray as xr

        leading = [dim for dim in observed.dims if dim not in grid]
        return xr.DataArray(std.numpy().reshape([observed.sizes[dim] for dim in leading]), dims=leading,
                            coords={dim: observed[dim] for dim in leading if dim in observed.coords},
                            attrs={"long_name": "std of the white model error the measurement reveals",
                                   **({"units": units} if units else {})})

    def posterior(self, observed, n: int = 128, generator: torch.Generator | None = None,
                  model_error: bool | None = None, measurement_noise_std: float | None = None):
        """``(mean, std)`` of ``n`` posterior draws, each in the form and units of ``observed``
        (``model_error`` and ``measurement_noise_std``: as in :meth:`sample`)."""
        _check_sampling(n, generator)
        if n < 2:
            raise ValueError(f"a posterior std needs n ≥ 2 samples, got {n}")
        measurement, form, units = self._measurement_from_user(observed)
        draws = self._draws(measurement, n, generator, model_error, measurement_noise_std)
        std = draws.std(dim=0)
        if self.normalizer is not None:
            std = self.normalizer.denormalize_std(std)  # kelvin and °C share their scale: no conversion
        return self.layout.restore(self._to_user_units(draws.mean(dim=0), units), form), self.layout.restore(std, form)

    def _measurement_from_user(self, observed) -> tuple[Measurement, object, str | None]:
        """The measurement in model units, the input's form and its units (a DataArray's ``units``)."""
        batch, form = self.layout.to_batch(observed)
        units = getattr(observed, "attrs", {}).get("units")
        if self.normalizer is not None:
            batch = convert_units(batch, units, self.normalizer.units)
            warn_outside_training_range(self.layout.unpad(batch), self.normalizer,  # padding is not data
                                        noise_std=self.normalizer.denormalize_std(self.noise_std))
            batch = self.normalizer.normalize(batch)
        return Measurement.from_nan(batch, self.layout.vertex_mask()), form, units

    def _to_user_units(self, values: torch.Tensor, units: str | None) -> torch.Tensor:
        if self.normalizer is None:
            return values
        return convert_units(self.normalizer.denormalize(values), self.normalizer.units, units)

    def as_blind(self, hidden_range: tuple[float, float] = (0.3, 0.6)) -> "AmortizedPosteriorSampler":
        """This sampler for measurements whose mask is unknown: the same flow, base and weights (shared,
        not copied) with a :class:`~manifold_aps.operators.BlindVertexMask` at hidden rates
        ``hidden_range``, reading the mask off ``y`` (``observed_from_y``). For masks that zero the
        hidden entries while the visible ones carry noise, that mask is exact with probability 1, so
        its draws are those of this sampler given the true mask; it was trained at the rates this
        sampler was (``report["as_blind_of"]`` says so), and ``hidden_range`` is where training the
        result further (blind) would draw rates from."""
        if self.blind:
            raise ValueError("this sampler is blind already")
        operator = BlindVertexMask(self.layout.num_vertices, self.layout.padded_vertices, tuple(hidden_range),
                                   self.noise_std)
        blind = type(self)(self.flow, self.prior, operator, fidelity_weight=self.weights["fidelity"],
                           prior_weight=self.weights["prior"], logdet_weight=self.weights["logdet"],
                           num_times=self.num_times, base=self.base,
                           base_rank=self.base_rank if isinstance(self.base, LowRankGaussian) else None,
                           normalizer=self.normalizer, mask_from_y=True, marginal=self.marginal,
                           elbo_min_time=self.elbo_min_time, model_error=self.model_error)
        blind.report = dict(self.report, as_blind_of=self.operator.to_config())
        return blind

    # -- persistence -----------------------------------------------------------------------------
    def state_payload(self, include_prior: bool = True) -> dict:
        """Plain-value description of the model; without ``include_prior`` the prior is left out
        (it is then supplied to :meth:`from_payload`, as :mod:`manifold_aps.pretrained` does)."""
        return dict(
            flow_kind=self.flow_kind, flow_config=dict(self.flow.config), flow_state=self.flow.state_dict(),
            layout=dataclasses.asdict(self.layout), operator=self.operator.to_config(),
            normalizer=None if self.normalizer is None else self.normalizer.state_dict(), weights=dict(self.weights), num_times=self.num_times,
            prior=prior_record(self.prior) if include_prior else None, report=dict(self.report),
            mask_from_y=self.mask_from_y, elbo_min_time=self.elbo_min_time, model_error=self.model_error,
            marginal=None if self.marginal is None else dict(config=dict(self.marginal.config),
                                                             state=self.marginal.state_dict()),
            base=None if self.base is None else _base_record(self.base, self.base_rank),
        )

    def save(self, path) -> Path:
        """Write a versioned, weights-only checkpoint (flow, prior, operator, configuration, report)."""
        return save_checkpoint(path, self.state_payload(), kind="aps_model")

    @classmethod
    def from_payload(cls, payload: dict, prior: DiffusionPrior | None = None) -> "AmortizedPosteriorSampler":
        """Rebuild a model from :meth:`state_payload`; ``prior`` replaces (or supplies) the stored one.

        Files written before operators were stored (``noise_std`` and ``blind`` only) load with an
        operator that knows σ_y but not the hidden fraction.
        """
        layout = VertexLayout(**payload["layout"])
        if prior is None:
            if payload.get("prior") is None:
                raise ValueError("this APS file stores no prior (it was saved without one); pass the prior")
            prior = prior_from_record(payload["prior"], layout)
        state, config = payload["flow_state"], dict(payload["flow_config"])
        if "n_steps" in config:  # files written before the flow depth was called depth
            config["depth"] = config.pop("n_steps")
        if payload["flow_kind"] == "mesh":
            edge_index = next(value for key, value in state.items() if key.endswith("edge_index"))
            flow = ConditionalMeshFlow(edge_index, **config)
        else:
            flow = ConditionalRealNVP(**config)
        flow.load_state_dict(state)
        if "operator" in payload:
            operator = operator_from_config(payload["operator"])
        else:
            mask = BlindVertexMask if payload["blind"] else RandomVertexMask
            rate = dict(hidden_range=None) if payload["blind"] else dict(hidden_fraction=None)
            operator = mask(layout.num_vertices, layout.padded_vertices, noise_std=payload["noise_std"], **rate)
        weights = payload["weights"]
        stored = payload.get("base")
        base = None if stored is None else _base_from_record(stored)
        normalizer = payload.get("normalizer")
        marginal = None
        if payload.get("marginal") is not None:
            marginal = VertexwiseMonotone(**payload["marginal"]["config"])
            marginal.load_state_dict(payload["marginal"]["state"])
        model = cls(flow, prior, operator, weights["fidelity"], weights["prior"], weights["logdet"],
                    payload["num_times"], base, stored.get("rank") if stored else None,
                    MinMaxNormalizer(**normalizer) if normalizer else None, payload.get("mask_from_y", False), marginal,
                    payload.get("elbo_min_time"), payload.get("model_error", False))
        model.report = dict(payload.get("report", {}))
        return model

    @classmethod
    def load(cls, path, device="cpu") -> "AmortizedPosteriorSampler":
        """Read a model written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            CheckpointError: the file is damaged, not an APS model, or its parts do not fit together.
        """
        payload = load_checkpoint(path, kind="aps_model", map_location="cpu")
        try:
            model = cls.from_payload(payload)
        except (KeyError, TypeError, ValueError, RuntimeError, StopIteration) as error:
            raise CheckpointError(f"{path} is an incomplete or inconsistent APS model file "
                                  f"({type(error).__name__}: {error})") from None
        return model.to(resolve_device(device))


def _gaussian_record(gaussian: LowRankGaussian) -> dict:
    return dict(mean=gaussian.mean.clone(), modes=gaussian.modes.clone(), spectrum=gaussian.spectrum.clone(),  # no views
                nugget_variance=gaussian.nugget_variance)


def _base_record(base: LowRankGaussian | GaussianMixtureField, rank: int) -> dict:
    """The base as plain values: a Gaussian's parameters and kept rank, or a mixture's weights and components."""
    if isinstance(base, GaussianMixtureField):
        return dict(kind="mixture", weights=base.weights.clone(),
                    components=[_gaussian_record(component) for component in base.components])
    return dict(_gaussian_record(base), rank=rank)


def _base_from_record(stored: dict) -> LowRankGaussian | GaussianMixtureField:
    """Inverse of :func:`_base_record` (files without ``kind`` hold a Gaussian)."""
    def gaussian(record):
        return LowRankGaussian(record["mean"].double(), record["modes"].double(), record["spectrum"].double(),
                               record["nugget_variance"])

    if stored.get("kind", "gaussian") == "mixture":
        return GaussianMixtureField([gaussian(record) for record in stored["components"]], stored["weights"].double())
    return gaussian(stored)


def _check_sampling(n, generator):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n (the number of posterior samples) must be an integer, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


