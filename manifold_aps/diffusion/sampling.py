"""Samplers of the diffusion prior: plain functions with one signature (k-diffusion style).

    sampler(prior, x_T, times, generator=None, callback=None, progress=False) -> SampleResult(sample, nfe)

``prior`` needs ``.sde`` (a :class:`~manifold_aps.diffusion.sde.VPSDE`), ``.score(x, t)`` and
``prior(x, t) = ε_θ(x, t)``; ``x_T`` ``(B, d)`` is drawn from ``N(0, I)``. The time grid
``1 = t_0 > … > t_N = ε`` is built outside and passed in (:func:`time_grid`); where a count is
more convenient, ``diffusion_steps=N`` builds the uniform grid. ``callback`` gets
``{"step", "t", "x", "denoised"}`` after every step, ``denoised`` being the Tweedie estimate
``x̂_0 = (x_t − σ_t ε_θ) / α_t``; ``progress=True`` shows a tqdm bar; ``nfe`` counts network
evaluations. The returned sample is ``x_ε`` (the last step adds no noise).

- :func:`sample_euler_maruyama`: reverse SDE ``dx = [f − g² s_θ] dt + g dw̄``.
- :func:`sample_ancestral`: DDPM ancestral steps, ``x_s ~ q(x_s | x_t, x_0 = x̂_0)``
  (:func:`ancestral_step`, shared with the posterior samplers of :mod:`manifold_aps.zero_shot`).
- :func:`sample_ode`: probability-flow ODE ``dx/dt = −½ β(t) (x + s_θ)``, Heun (2 NFE per step).
- :func:`sample_ode_adaptive`: the same ODE with scipy's adaptive RK45 (Dormand–Prince).

Example:
    >>> import torch
    >>> from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor
    >>> from manifold_aps.signals import VertexLayout
    >>> prior = DiffusionPrior(GaussianNoisePredictor(torch.zeros(4), torch.eye(4)), VertexLayout(4, multiple=1))
    >>> x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    >>> sample, nfe = sample_ancestral(prior, x_T, time_grid(50, prior.sde.eps))
    >>> sample.shape, nfe
    (torch.Size([3, 4]), 50)
"""

from __future__ import annotations

import numbers
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

__all__ = ["SampleResult", "time_grid", "resolve_time_grid", "denoise", "ancestral_step", "probability_flow",
           "sample_euler_maruyama", "sample_ancestral", "sample_ode", "sample_ode_adaptive"]


class SampleResult(NamedTuple):
    sample: torch.Tensor
    nfe: int


def time_grid(diffusion_steps: int, t_min: float = 1e-3, t_max: float = 1.0, device=None,
              dtype=torch.float64) -> torch.Tensor:
    """``diffusion_steps + 1`` uniformly spaced times ``t_i = t_max − i (t_max − t_min) / N``.

    ``t_min`` should be the prior's ``sde.eps`` (1e-3 for the default VPSDE).
    """
    if isinstance(diffusion_steps, bool) or not isinstance(diffusion_steps, numbers.Integral) or diffusion_steps < 1:
        raise ValueError(f"diffusion_steps must be an integer ≥ 1, got {diffusion_steps!r}")
    if not 0 < t_min < t_max <= 1:
        raise ValueError(f"need 0 < t_min < t_max ≤ 1, got t_min={t_min}, t_max={t_max}")
    return torch.linspace(t_max, t_min, int(diffusion_steps) + 1, device=device, dtype=dtype)


def resolve_time_grid(times, diffusion_steps, num_steps, sde, device, dtype=torch.float64,
                      default_steps: int | None = None, stacklevel: int = 4) -> torch.Tensor:
    """The grid a sampler runs on: ``times`` as given, else ``time_grid(diffusion_steps, sde.eps)``.

    ``num_steps`` (keyword) and an integer passed as ``times`` (the old positional count) are
    deprecated spellings of ``diffusion_steps``, accepted for one release. ``dtype`` and ``device``
    apply to a grid built here; a given grid keeps its dtype. ``stacklevel`` points the
    deprecation warning at the user's call (the samplers' ``torch.no_grad`` wrapper is one frame).
    """
    if num_steps is not None:
        warnings.warn("num_steps is deprecated, use diffusion_steps", DeprecationWarning, stacklevel=stacklevel)
        if diffusion_steps is not None:
            raise TypeError("pass diffusion_steps or its deprecated alias num_steps, not both")
        diffusion_steps = num_steps
    if isinstance(times, numbers.Integral) and not isinstance(times, bool):
        warnings.warn("passing the step count as `times` is deprecated: pass a grid (time_grid) or "
                      "diffusion_steps=", DeprecationWarning, stacklevel=stacklevel)
        if diffusion_steps is not None:
            raise TypeError("pass the step count once, as diffusion_steps")
        times, diffusion_steps = None, times
    if times is None:
        steps = default_steps if diffusion_steps is None else diffusion_steps
        if steps is None:
            raise TypeError("pass a time grid (times=time_grid(...)) or diffusion_steps")
        return time_grid(steps, sde.eps, device=device, dtype=dtype)
    if diffusion_steps is not None:
        raise TypeError("pass a time grid or diffusion_steps, not both")
    times = torch.as_tensor(times, device=device)
    if times.dim() != 1 or len(times) < 2 or not times.is_floating_point():
        raise ValueError(f"times must be a 1-D float grid of at least 2 times, got {tuple(times.shape)} {times.dtype}")
    if not ((times[1:] < times[:-1]).all() and times[-1] > 0 and times[0] <= 1):
        raise ValueError("times must decrease strictly within (0, 1]")
    return times


def _check_start(prior, x_T: torch.Tensor):
    dim = getattr(prior, "dim", None)
    if x_T.dim() != 2 or (dim is not None and x_T.shape[1] != dim):
        raise ValueError(f"x_T must be (B, {dim if dim is not None else 'd'}), got {tuple(x_T.shape)}")


def denoise(prior, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ε_θ, x̂_0)`` at a scalar time ``t``: ``x̂_0 = (x − σ_t ε_θ(x, t)) / α_t`` (Tweedie)."""
    times = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    noise = prior(x, times)
    sde = prior.sde
    return noise, (x - sde.sigma(times)[:, None] * noise) / sde.alpha(times)[:, None]


def ancestral_step(sde, x: torch.Tensor, denoised: torch.Tensor, t, s,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDPM step from ``t`` to ``s < t``: a draw of ``q(x_s | x_t, x_0 = x̂_0)``,

        x_s = (α_{t|s} σ_s² x_t + α_s σ²_{t|s} x̂_0) / σ_t² + (σ_{t|s} σ_s / σ_t) z,

    with ``α_{t|s} = α_t / α_s``, ``σ²_{t|s} = σ_t² − α²_{t|s} σ_s²`` and ``z = noise`` (the mean
    alone when ``noise`` is None, as on the last step).
    """
    alpha_t, alpha_s = float(sde.alpha(t)), float(sde.alpha(s))
    sigma2_t, sigma2_s = float(sde.sigma(t)) ** 2, float(sde.sigma(s)) ** 2
    alpha_ts = alpha_t / alpha_s
    sigma2_ts = sigma2_t - alpha_ts**2 * sigma2_s
    x = (alpha_ts * sigma2_s * x + alpha_s * sigma2_ts * denoised) / sigma2_t
    if noise is not None:
        x = x + (sigma2_ts * sigma2_s / sigma2_t) ** 0.5 * noise
    return x


def _gaussian_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _steps(grid: torch.Tensor, progress: bool, description: str):
    return tqdm(range(len(grid) - 1), desc=description, disable=not progress, leave=False)


@torch.no_grad()
def sample_euler_maruyama(prior, x_T: torch.Tensor, times=None, generator: torch.Generator | None = None,
                          callback: Callable | None = None, progress: bool = False, *, diffusion_steps=None,
                          num_steps=None) -> SampleResult:
    """Euler–Maruyama on the reverse SDE, step ``h = t − s``:
    ``x_s = x_t + [½ β x_t + β s_θ(x_t, t)] h + √(β h) z``."""
    _check_start(prior, x_T)
    sde, x = prior.sde, x_T
    grid = resolve_time_grid(times, diffusion_steps, num_steps, sde, x.device)
    for i in _steps(grid, progress, "Euler-Maruyama"):
        t, h = float(grid[i]), float(grid[i] - grid[i + 1])
        noise, denoised = denoise(prior, x, t)
        beta = float(sde.beta(grid[i]))
        score = -noise / sde.sigma(torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))[:, None]
        x = x + (0.5 * beta * x + beta * score) * h
        if i < len(grid) - 2:
            x = x + (beta * h) ** 0.5 * _gaussian_like(x, generator)
        if callback is not None:
            callback({"step": i, "t": t, "x": x, "denoised": denoised})
    return SampleResult(x, len(grid) - 1)


@torch.no_grad()
def sample_ancestral(prior, x_T: torch.Tensor, times=None, generator: torch.Generator | None = None,
                     callback: Callable | None = None, progress: bool = False, *, diffusion_steps=None,
                     num_steps=None) -> SampleResult:
    """DDPM ancestral sampling: :func:`ancestral_step` with the network's ``x̂_0`` between grid times."""
    _check_start(prior, x_T)
    sde, x = prior.sde, x_T
    grid = resolve_time_grid(times, diffusion_steps, num_steps, sde, x.device)
    for i in _steps(grid, progress, "ancestral"):
        _, denoised = denoise(prior, x, float(grid[i]))
        noise = _gaussian_like(x, generator) if i < len(grid) - 2 else None
        x = ancestral_step(sde, x, denoised, grid[i], grid[i + 1], noise)
        if callback is not None:
            callback({"step": i, "t": float(grid[i]), "x": x, "denoised": denoised})
    return SampleResult(x, len(grid) - 1)


def probability_flow(prior, x: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """``dx/dt = f − ½ g² s_θ = −½ β(t) (x + s_θ(x, t))``."""
    return -0.5 * prior.sde.beta(times)[:, None] * (x + prior.score(x, times))


@torch.no_grad()
def sample_ode(prior, x_T: torch.Tensor, times=None, generator: torch.Generator | None = None,
               callback: Callable | None = None, progress: bool = False, *, diffusion_steps=None,
               num_steps=None) -> SampleResult:
    """Heun's method on the probability-flow ODE (deterministic; ``generator`` is unused).

    The integration runs in ``x_T``'s dtype; a grid built from ``diffusion_steps`` is made in it.
    """
    _check_start(prior, x_T)
    x = x_T
    grid = resolve_time_grid(times, diffusion_steps, num_steps, prior.sde, x.device, x.dtype).to(x.dtype)
    for i in _steps(grid, progress, "probability-flow ODE"):
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
                        callback: Callable | None = None, progress: bool = False) -> SampleResult:
    """The probability-flow ODE from 1 to ε with ``scipy.integrate.solve_ivp`` (RK45, adaptive).

    The solver picks its own times, so there is no grid. ``callback`` is called after every
    evaluation with ``{"step", "t", "x", "denoised": None}``; the progress bar counts evaluations.
    """
    from scipy.integrate import solve_ivp

    _check_start(prior, x_T)
    shape, dtype, device = x_T.shape, x_T.dtype, x_T.device
    evaluations = 0
    bar = tqdm(desc="adaptive ODE", unit="NFE", disable=not progress, leave=False)

    def rhs(t, state):
        nonlocal evaluations
        x = torch.as_tensor(state, dtype=dtype, device=device).reshape(shape)
        slope = probability_flow(prior, x, torch.full((shape[0],), t, dtype=dtype, device=device))
        evaluations += 1
        bar.update()
        if callback is not None:
            callback({"step": evaluations, "t": float(t), "x": x, "denoised": None})
        return slope.reshape(-1).double().cpu().numpy()

    with bar:
        solution = solve_ivp(rhs, (1.0, prior.sde.eps), x_T.reshape(-1).double().cpu().numpy(), method="RK45",
                             rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {solution.message}")
    sample = torch.as_tensor(np.ascontiguousarray(solution.y[:, -1]), dtype=dtype, device=device).reshape(shape)
    return SampleResult(sample, evaluations)
