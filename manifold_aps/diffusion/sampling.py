"""Samplers of the diffusion prior: plain functions with one signature (k-diffusion style).

    sampler(prior, x_T, num_steps, generator=None, callback=None) -> SampleResult(sample, nfe)

``prior`` needs ``.sde`` (a :class:`~manifold_aps.diffusion.sde.VPSDE`), ``.score(x, t)`` and
``prior(x, t) = ε_θ(x, t)``; ``x_T`` ``(B, d)`` is drawn from ``N(0, I)``; times run on a uniform
grid ``1 = t_0 > … > t_N = ε``; ``callback`` gets ``{"step", "t", "x", "denoised"}`` after every
step, ``denoised`` being the Tweedie estimate ``x̂_0 = (x_t − σ_t ε_θ) / α_t``; ``nfe`` counts
network evaluations. The returned sample is ``x_ε`` (the last step adds no noise).

- :func:`sample_euler_maruyama`: reverse SDE ``dx = [f − g² s_θ] dt + g dw̄``.
- :func:`sample_ancestral`: DDPM ancestral steps, ``x_s ~ q(x_s | x_t, x_0 = x̂_0)``.
- :func:`sample_ode`: probability-flow ODE ``dx/dt = −½ β(t) (x + s_θ)``, Heun (2 NFE per step).
- :func:`sample_ode_adaptive`: the same ODE with scipy's adaptive RK45 (Dormand–Prince).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

__all__ = ["SampleResult", "time_grid", "probability_flow", "sample_euler_maruyama", "sample_ancestral", "sample_ode",
           "sample_ode_adaptive"]


class SampleResult(NamedTuple):
    sample: torch.Tensor
    nfe: int


def time_grid(sde, num_steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``num_steps + 1`` times from 1 down to ``sde.eps``, uniformly spaced."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
    return torch.linspace(1.0, sde.eps, int(num_steps) + 1, device=device, dtype=dtype)


def _check_start(prior, x_T: torch.Tensor):
    dim = getattr(prior, "dim", None)
    if x_T.dim() != 2 or (dim is not None and x_T.shape[1] != dim):
        raise ValueError(f"x_T must be (B, {dim if dim is not None else 'd'}), got {tuple(x_T.shape)}")


def _noise_and_denoised(prior, x: torch.Tensor, t: float):
    """``(t_batch, ε_θ, x̂_0)`` at a scalar time ``t``."""
    times = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    noise = prior(x, times)
    sde = prior.sde
    denoised = (x - sde.sigma(times)[:, None] * noise) / sde.alpha(times)[:, None]
    return times, noise, denoised


@torch.no_grad()
def sample_euler_maruyama(prior, x_T: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
                          callback: Callable | None = None) -> SampleResult:
    """Euler–Maruyama on the reverse SDE, step ``h = t − s``:
    ``x_s = x_t + [½ β x_t + β s_θ(x_t, t)] h + √(β h) z``."""
    _check_start(prior, x_T)
    sde, x = prior.sde, x_T
    grid = time_grid(sde, num_steps, x.device, torch.float64)
    for i in range(len(grid) - 1):
        t, h = float(grid[i]), float(grid[i] - grid[i + 1])
        times, noise, denoised = _noise_and_denoised(prior, x, t)
        beta = float(sde.beta(grid[i]))
        score = -noise / sde.sigma(times)[:, None]
        x = x + (0.5 * beta * x + beta * score) * h
        if i < len(grid) - 2:
            x = x + (beta * h) ** 0.5 * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "denoised": denoised})
    return SampleResult(x, len(grid) - 1)


@torch.no_grad()
def sample_ancestral(prior, x_T: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
                     callback: Callable | None = None) -> SampleResult:
    """DDPM ancestral sampling between grid times ``t > s``: with ``α_{t|s} = α_t/α_s``,
    ``σ²_{t|s} = σ_t² − α²_{t|s} σ_s²``,

        x_s = (α_{t|s} σ_s² x_t + α_s σ²_{t|s} x̂_0) / σ_t² + (σ_{t|s} σ_s / σ_t) z.
    """
    _check_start(prior, x_T)
    sde, x = prior.sde, x_T
    grid = time_grid(sde, num_steps, x.device, torch.float64)
    for i in range(len(grid) - 1):
        t, s = grid[i], grid[i + 1]
        _, _, denoised = _noise_and_denoised(prior, x, float(t))
        alpha_t, alpha_s = float(sde.alpha(t)), float(sde.alpha(s))
        sigma2_t, sigma2_s = float(sde.sigma(t)) ** 2, float(sde.sigma(s)) ** 2
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = sigma2_t - alpha_ts**2 * sigma2_s
        x = (alpha_ts * sigma2_s * x + alpha_s * sigma2_ts * denoised) / sigma2_t
        if i < len(grid) - 2:
            scale = (sigma2_ts * sigma2_s / sigma2_t) ** 0.5
            x = x + scale * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback({"step": i, "t": float(t), "x": x, "denoised": denoised})
    return SampleResult(x, len(grid) - 1)


def probability_flow(prior, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """``dx/dt = f − ½ g² s_θ = −½ β(t) (x + s_θ(x, t))``."""
    return -0.5 * prior.sde.beta(times)[:, None] * (x + prior.score(x, times))


@torch.no_grad()
def sample_ode(prior, x_T: torch.Tensor, num_steps: int, generator: torch.Generator | None = None,
               callback: Callable | None = None) -> SampleResult:
    """Heun's method on the probability-flow ODE (deterministic; ``generator`` is unused)."""
    _check_start(prior, x_T)
    x = x_T
    grid = time_grid(prior.sde, num_steps, x.device, x.dtype)
    for i in range(len(grid) - 1):
        t, s = grid[i].expand(x.shape[0]), grid[i + 1].expand(x.shape[0])
        dt = grid[i + 1] - grid[i]
        slope = probability_flow(prior, x, t)
        predicted = x + dt * slope
        x = x + 0.5 * dt * (slope + probability_flow(prior, predicted, s))
        if callback is not None:
            callback({"step": i, "t": float(grid[i]), "x": x, "denoised": None})
    return SampleResult(x, 2 * (len(grid) - 1))


@torch.no_grad()
def sample_ode_adaptive(prior, x_T: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                        callback: Callable | None = None) -> SampleResult:
    """The probability-flow ODE from 1 to ε with ``scipy.integrate.solve_ivp`` (RK45, adaptive).

    ``callback`` is called after every evaluation with ``{"step", "t", "x", "denoised": None}``.
    """
    from scipy.integrate import solve_ivp

    _check_start(prior, x_T)
    shape, dtype, device = x_T.shape, x_T.dtype, x_T.device
    evaluations = 0

    def rhs(t, state):
        nonlocal evaluations
        x = torch.as_tensor(state, dtype=dtype, device=device).reshape(shape)
        slope = probability_flow(prior, x, torch.full((shape[0],), t, dtype=dtype, device=device))
        evaluations += 1
        if callback is not None:
            callback({"step": evaluations, "t": float(t), "x": x, "denoised": None})
        return slope.reshape(-1).double().cpu().numpy()

    solution = solve_ivp(rhs, (1.0, prior.sde.eps), x_T.reshape(-1).double().cpu().numpy(), method="RK45",
                         rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {solution.message}")
    sample = torch.as_tensor(np.ascontiguousarray(solution.y[:, -1]), dtype=dtype, device=device).reshape(shape)
    return SampleResult(sample, evaluations)
