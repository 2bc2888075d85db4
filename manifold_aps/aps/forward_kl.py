"""A mass-covering term for APS: the forward KL against the prior's own joint of signals and
measurements, on signals drawn from the diffusion prior (no clean data enters).

The APS objective is a reverse KL, ``E_y KL(q(x | y) ‖ p(x | y))``, estimated through the ELBO:
mode-seeking, and its gradient is as noisy as the ELBO. The forward KL over the prior's joint,

    E_{x ~ p, y ~ p(y | x)} [−log q(x | y)] = E_y KL(p(x | y) ‖ q(x | y)) + const,

is mass-covering, needs no ELBO, and its unbiased estimate needs only draws ``x ~ p`` (here DDPM
ancestral sampling of the prior, once, into a bank) measured afresh at every step by the
sampler's own operator (optionally fitted to dequantised draws ``x + σ_d ε``, :func:`dequantise`).
``log q`` is the flow's exact density: the per-entry map is inverted by
bisection and differentiated implicitly (one Newton step with gradients at the root:
``∂x̃/∂θ = −(∂g/∂θ) / g'(x̃)``), the Gaussian base in closed form
(:meth:`~manifold_aps.gaussian_posterior.GaussianRoot.inverse`), the coupling flow by its inverse,
a mixture base by its exact density (:meth:`~manifold_aps.mixture_base.MixtureRoot.log_prob`).
"""

from __future__ import annotations

import itertools

import torch

from manifold_aps.diffusion.prior import DiffusionPrior
from manifold_aps.diffusion.sampling import sample_ancestral, time_grid
from manifold_aps.gaussian_posterior import GaussianRoot
from manifold_aps.mixture_base import MixtureRoot
from manifold_aps.operators import Measurement

__all__ = ["draw_prior_signals", "dequantise", "marginal_inverse", "log_density"]


@torch.no_grad()
def draw_prior_signals(prior: DiffusionPrior, count: int, diffusion_steps: int = 100, seed: int = 0,
                       batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """``count`` signals ``(count, V_pad, C)`` drawn from ``prior`` by DDPM ancestral sampling on
    ``diffusion_steps`` uniform times (padding exactly zero)."""
    if count < 1 or diffusion_steps < 1:
        raise ValueError(f"count and diffusion_steps must be ≥ 1, got {count} and {diffusion_steps}")
    generator = torch.Generator().manual_seed(seed)
    device = next(itertools.chain(prior.parameters(), prior.buffers())).device
    times = time_grid(diffusion_steps, prior.sde.eps)
    draws = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        x_T = torch.randn(size, prior.dim, generator=generator).to(device)
        draws.append(sample_ancestral(prior, x_T, times=times, generator=generator).sample.cpu())
        if progress:
            print(f"prior draws: {start + size}/{count}", flush=True)
    layout = prior.layout
    return layout.pad(layout.unpad(layout.unflatten(torch.cat(draws))))


def dequantise(x: torch.Tensor, noise_std: float, layout, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + σ_d ε``, ``ε ~ N(0, I)`` on the real entries of padded signals ``x`` ``(B, V_pad, C)``
    (padding stays exactly zero). With ``y`` measured from ``x``, ``E[x + σ_d ε | y] = E[x | y]``:
    a density fitted to these keeps the posterior mean, while a point mass in the draws (MNIST's
    background at 0) becomes a Gaussian of std ``σ_d`` whose log-density is bounded."""
    if noise_std == 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise_std * noise * layout.vertex_mask().to(x.device, x.dtype)[:, None]


def marginal_inverse(marginal, x: torch.Tensor, features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                     iterations: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of a :class:`~manifold_aps.flows.VertexwiseMonotone` ``g`` at ``x`` ``(B, V, C)``:
    ``(x̃, log|det ∂x̃/∂x|)`` with ``g(x̃) = x``. The root is bracketed by
    ``|g(x̃) − m − d − a (x̃ − m)| ≤ Σ b_k``, found by bisection without gradients, then one Newton
    step with gradients gives ``x̃`` its implicit derivative in the map's parameters."""
    p = marginal.parameters_at(features, mean, scale)
    with torch.no_grad():
        fixed = {key: value.detach() for key, value in p.items()}
        total = fixed["b"].sum(-1)
        low = mean + (x - mean - fixed["d"] - total) / fixed["a"]
        high = mean + (x - mean - fixed["d"] + total) / fixed["a"]
        for _ in range(iterations):
            middle = 0.5 * (low + high)
            above = marginal.evaluate(middle, mean, fixed, slope=False)[0] > x
            high, low = torch.where(above, middle, high), torch.where(above, low, middle)
        root = 0.5 * (low + high)
    value, slope = marginal.evaluate(root, mean, p)
    root = root - (value - x) / slope  # = root in value; carries −(∂g/∂θ) / g' as its gradient
    _, slope = marginal.evaluate(root, mean, p)
    return root, -torch.log(slope).flatten(-2).sum(-1)


def log_density(model, measurement: Measurement, x: torch.Tensor,
                root: GaussianRoot | MixtureRoot | None = None) -> torch.Tensor:
    """``log q(x | y)`` ``(B,)`` of an :class:`~manifold_aps.aps.AmortizedPosteriorSampler` at padded
    signals ``x`` ``(B, V_pad, C)``: the inverse of :meth:`~manifold_aps.aps.AmortizedPosteriorSampler.generate`."""
    V, C = model.layout.num_vertices, model.layout.num_channels
    if model.base is not None and root is None:
        root = model.base_root(measurement)
    condition = model.condition(measurement, root)
    values = model.layout.unpad(x).reshape(len(x), V * C)
    log_det = torch.zeros(len(x), device=x.device, dtype=x.dtype)
    if root is not None and model.marginal is not None:
        features, mean, std = model.marginal_inputs(condition, root)
        values, step = marginal_inverse(model.marginal, values.reshape(-1, V, C), features, mean, std)
        values, log_det = values.reshape(len(x), V * C), log_det + step
    if isinstance(root, MixtureRoot):  # x = g(m̄ + s̄ F((b − m̄)/s̄)), b from the mixture posterior
        values, step = model.flow.inverse(root.standardise(values), condition)
        return root.log_prob(root.unstandardise(values)) + step + log_det
    if root is not None:
        values, step = root.inverse(values)
        log_det = log_det + step
    return model.flow.log_prob(values, condition) + log_det
