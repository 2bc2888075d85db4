"""Every posterior method behind one call: ``method(measurement, operator, generator) -> Estimate``.

deepinv's contract (``solver(y, physics)``): the operator holds the measurement facts (σ_y, the
mask rule) and each method — APS, the zero-shot diffusion samplers (DPS, MCG, ...), optimal
interpolation (or any exact Gaussian posterior), the exact posterior under a Gaussian mixture (a
fitted mixture of PPCA) and harmonic interpolation — is built once with
what it needs (a trained model, a prior, a fitted Gaussian, a mesh) and then called the same way.
Benchmarks and tests loop over a ``{name: method}`` dict.

Example:
    >>> methods = {"aps_n128": aps_method(model, samples=128), "oi": gaussian_method(oi, layout)}  # doctest: +SKIP
    >>> estimate = methods["oi"](measurement, operator, torch.Generator().manual_seed(0))       # doctest: +SKIP
    >>> estimate.mean.shape                                                                  # doctest: +SKIP
    torch.Size([32, 4140, 1])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from manifold_aps.baselines import harmonic_interpolation
from manifold_aps.gaussian_posterior import GaussianPosterior
from manifold_aps.model_error import estimate_model_error, with_model_error
from manifold_aps.operators import Measurement, RandomVertexMask

__all__ = ["Estimate", "PosteriorMethod", "aps_method", "diffusion_method", "gaussian_method", "mixture_method",
           "harmonic_method"]


@dataclass
class Estimate:
    """A method's answer on ``N`` measurements, unpadded: the point estimate ``mean`` ``(N, V, C)``,
    posterior ``samples`` ``(S, N, V, C)`` (None for a point method), network evaluations per
    sample (``nfe``) and method-specific facts (``info``, e.g. a chosen rank)."""

    mean: torch.Tensor
    samples: torch.Tensor | None
    nfe: int
    info: dict = field(default_factory=dict)


class PosteriorMethod(Protocol):
    def __call__(self, measurement: Measurement, operator: RandomVertexMask,
                 generator: torch.Generator | None = None) -> Estimate: ...


def aps_method(model, samples: int = 128, model_error: bool = False) -> PosteriorMethod:
    """An :class:`~manifold_aps.AmortizedPosteriorSampler`: the mean of ``samples`` draws (one flow
    call); the operator is the model's own (a blind model ignores the measurement's mask).
    ``model_error``: the draws widened by each measurement's estimated model error
    (:meth:`~manifold_aps.aps.AmortizedPosteriorSampler.sample_with_model_error`; ``info`` has the
    mean ``model_error_std``)."""

    def method(measurement, operator, generator=None):
        V = model.layout.num_vertices
        if not model_error:
            draws = model.sample_measurement(measurement, samples, generator)[..., :V, :].cpu()
            return Estimate(draws.mean(dim=0), draws if samples > 1 else None, 1)
        draws, variance = model.sample_with_model_error(measurement, samples, generator)
        draws = draws[..., :V, :]
        return Estimate(draws.mean(dim=0), draws if samples > 1 else None, 1,
                        dict(model_error_std=float(variance.sqrt().mean())))

    return method


def diffusion_method(sampler: Callable, prior, samples: int = 4, diffusion_steps: int = 1000, info: dict | None = None,
                     **knobs) -> PosteriorMethod:
    """A zero-shot diffusion posterior sampler of :mod:`manifold_aps.zero_shot` (DPS, MCG, MMPS, ...)
    with its ``knobs`` (e.g. ``step_size``): ``samples`` independent draws per measurement; the
    estimate's ``info`` holds the knobs and ``info``."""

    def method(measurement, operator, generator=None):
        layout = prior.layout
        count = len(measurement)
        repeated = Measurement(measurement.y.repeat(samples, 1, 1), measurement.observed.repeat(samples, 1))
        result = sampler(prior, repeated, operator, diffusion_steps=diffusion_steps, generator=generator, **knobs)
        draws = layout.unpad(result.sample).reshape(samples, count, layout.num_vertices, layout.num_channels)
        return Estimate(draws.mean(dim=0), draws, result.nfe, dict(knobs, **(info or {})))

    return method


def gaussian_method(gaussian, layout, samples: int = 128, info: dict | None = None,
                    model_error: bool = False) -> PosteriorMethod:
    """The exact posterior under a :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` prior
    (optimal interpolation when the Gaussian was fitted to training signals): its mean, and
    ``samples`` draws from its per-entry marginals. ``model_error``: under the prior with each
    measurement's estimated model error added to its nugget (:mod:`manifold_aps.model_error`;
    ``info`` has the mean ``model_error_std``)."""

    def method(measurement, operator, generator=None):
        count, V, C = len(measurement), layout.num_vertices, layout.num_channels
        y, observed = measurement.to("cpu").real_entries(V)
        extra = dict(info or {})
        if model_error:
            variance = estimate_model_error(gaussian, y, observed, operator.noise_std)
            parts = [with_model_error(gaussian, float(v)).posterior(y[i:i + 1], observed[i:i + 1], operator.noise_std)
                     for i, v in enumerate(variance)]
            posterior = GaussianPosterior(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))
            extra["model_error_std"] = float(variance.sqrt().mean())
        else:
            posterior = gaussian.posterior(y, observed, operator.noise_std)
        noise = torch.randn(samples, *posterior.mean.shape, generator=generator, dtype=torch.float64)
        draws = (posterior.mean + posterior.std * noise).reshape(samples, count, V, C).float()
        return Estimate(posterior.mean.reshape(count, V, C).float(), draws, 0, extra)

    return method


def mixture_method(field, layout, samples: int = 128, info: dict | None = None) -> PosteriorMethod:
    """The exact posterior under a :class:`~manifold_aps.data.gaussian_mixture.GaussianMixtureField`
    prior (e.g. :func:`~manifold_aps.mixture_of_ppca.fit_mixture_of_ppca`'s):

        p(x | y) = Σ_k r_k(y) N(x; m_k, C_k)

    its mean ``Σ_k r_k m_k``, and ``samples`` correlated draws (a component ``k ~ r(y)``, then its
    Gaussian posterior)."""

    def method(measurement, operator, generator=None):
        count, V, C = len(measurement), layout.num_vertices, layout.num_channels
        posterior = field.posterior(*measurement.to("cpu").real_entries(V), operator.noise_std)
        draws = posterior.sample(samples, generator).reshape(samples, count, V, C).float()
        return Estimate(posterior.mean.reshape(count, V, C).float(), draws, 0, dict(info or {}))

    return method


def harmonic_method(mesh, layout) -> PosteriorMethod:
    """Cotan-harmonic interpolation of the observed vertices (a point estimate)."""

    def method(measurement, operator, generator=None):
        V = layout.num_vertices
        filled = harmonic_interpolation(mesh, layout.unpad(measurement.y), measurement.observed[:, :V])
        return Estimate(torch.as_tensor(filled, dtype=torch.float32), None, 0)

    return method
