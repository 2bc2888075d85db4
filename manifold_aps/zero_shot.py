"""Zero-shot posterior samplers: the diffusion prior guided by the measurement while it samples.

The measurement is ``y = A x_0 + n``, ``n ~ N(0, σ_y² I)``, with ``A`` the observed-entry mask of
the vertex-masking operator (``σ_y = operator.noise_std``). Every method runs the DDPM ancestral
sampler of :mod:`manifold_aps.diffusion.sampling` on a time grid ``1 = t_0 > … > t_N = ε``
(one shared :func:`~manifold_aps.diffusion.sampling.ancestral_step`); they differ only in how
``y`` enters the step ``t → s``. With the Tweedie estimate ``x̂_0 = (x_t − σ_t ε_θ(x_t, t)) / α_t``,
its Jacobian ``J = ∂x̂_0 / ∂x_t`` and the residual ``r = y − A x̂_0``::

    DPS      x_s = ancestral(x_t, x̂_0) − ζ ∇_{x_t} ‖r‖                       1 NFE per step
    MCG      DPS, then the observed entries ← α_s y + the missing noise        1
    MMPS     x_s = ancestral(x_t, x̂_0 + γ_t Jᵀ Aᵀ v),
             (σ_y² I + γ_t A J Aᵀ) v = r by cg_steps conjugate-gradient steps  1 + cg_steps
    ΠGDM     x_s = ancestral(x_t, x̂_0 + γ_t Jᵀ Aᵀ r / (r_t² + σ_y²))           1
    DiffPIR  x_s = ancestral(x_t, x̂_0 + Aᵀ r ρ_t / (ρ_t + λ σ_y²))             1 (no backward pass)

with ``γ_t = σ_t² / α_t`` and ``ρ_t = σ_t² / α_t²``. MMPS, ΠGDM and DiffPIR feed the ancestral
step an estimate of ``E[x_0 | x_t, y]``: by Tweedie's formula applied to ``p(x_t | y)``,
``E[x_0 | x_t, y] = x̂_0 + γ_t ∇_{x_t} log p(y | x_t)``, and with ``p(x_0 | x_t) ≈ N(x̂_0, Σ_t)``,
``∇_{x_t} log p(y | x_t) ≈ Jᵀ Aᵀ (σ_y² I + A Σ_t Aᵀ)⁻¹ r``. MMPS uses the Tweedie covariance
``Σ_t = γ_t J`` (exact for a Gaussian prior, so MMPS with converged CG gives the exact
``E[x_0 | x_t, y]`` there); ΠGDM the isotropic ``Σ_t = r_t² I``; DiffPIR replaces the whole
correction by a proximal step on ``x̂_0`` alone. NFE counts a forward pass with its first
backward pass as one evaluation, as is conventional for DPS, plus one per extra backward pass.

Why not azula: the maintained ``azula`` library (probabilists/azula 0.11, ``azula.guidance``)
implements DPS, MMPS, ΠGDM and DiffPIR, and the updates above follow its ``dps.py``, ``mmps.py``,
``pgdm.py`` and ``diffpir.py`` (checked once with azula 0.11.1 wrapping the exact Gaussian prior:
the MMPS and DiffPIR estimates agree with its ``MMPSDenoiser`` (CG) and ``DiffPIRDenoiser`` to
1e-11). It is not a dependency because (1) it draws all noise with ``torch.randn_like`` from the
global RNG, so the samplers could not honour ``generator`` (same generator, same samples,
whatever else ran before); (2) its samplers are classes that build their own time grid and carry
their own DDPM step, while this package passes the grid in and shares one ancestral step; (3) it
requires ``torchvision`` and ``gdown`` at install, and ``torchvision`` pins a torch release,
against this package's pinned local torch build; (4) its ΠGDM is the noise-free variant (``A⁺``
guidance with no ``σ_y`` and no ``r_t²``), while the masks here carry noise.

Every sampler has the signature of :func:`sample_dps`::

    sampler(prior, measurement, operator, times=None, <knobs>, generator=None, callback=None,
            progress=False, *, diffusion_steps=None) -> SampleResult(sample, nfe)
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch
from tqdm import tqdm

from manifold_aps.diffusion.sampling import SampleResult, ancestral_step, denoise, resolve_time_grid

__all__ = ["sample_dps", "sample_mcg", "sample_mmps", "sample_pigdm", "sample_diffpir"]

DEFAULT_DIFFUSION_STEPS = 1000  # the paper's DPS/MCG baselines


class _Observation(NamedTuple):
    """A measurement in the prior's flat layout: ``y`` ``(B, d)``, ``observed`` bool ``(B, d)``
    (observed real entries), ``noise_std`` σ_y."""

    y: torch.Tensor
    observed: torch.Tensor
    noise_std: float

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``Aᵀ (y − A x)``: ``y − x`` on the observed entries, 0 elsewhere."""
        return torch.where(self.observed, self.y - x, torch.zeros_like(x))


def sample_dps(prior, measurement, operator, times=None, step_size: float = 1.0,
               generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = False,
               *, diffusion_steps: int | None = None, num_steps: int | None = None) -> SampleResult:
    """Diffusion posterior sampling (DPS; Chung et al. 2023, "Diffusion Posterior Sampling for
    General Noisy Inverse Problems", Algorithm 1).

    Each step from ``t`` to ``s < t`` is a DDPM ancestral step driven by the Tweedie estimate,
    followed by a gradient step on the measurement residual taken through the noise network:

        x̂_0 = (x_t − σ_t ε_θ(x_t, t)) / α_t,
        x'_s = (α_{t|s} σ_s² x_t + α_s σ²_{t|s} x̂_0) / σ_t² + (σ_{t|s} σ_s / σ_t) z,
        x_s  = x'_s − ζ ∇_{x_t} ‖y − A(x̂_0)‖,

    with ``α_{t|s} = α_t / α_s``, ``σ²_{t|s} = σ_t² − α²_{t|s} σ_s²``, ``z ~ N(0, I)`` (none on
    the last step) and ``ζ = step_size``. Step-size normalisation: the paper writes the update as
    ``ζ_t ∇‖y − A(x̂_0)‖²`` with ``ζ_t = ζ' / ‖y − A(x̂_0)‖``; since ``∇‖r‖² = 2‖r‖ ∇‖r‖`` that is
    ``2ζ' ∇‖r‖``, and the authors' released code applies it as ``scale · ∇‖r‖``. ``step_size`` is
    that ``scale`` (``ζ' = step_size / 2``), so step sizes tuned for the reference code carry
    over. The residual norm is taken per sample, so the samples of a batch do not interact, and
    the update needs no ``σ_y``. Because the residual is normalised, every step moves ``x`` by
    about ``step_size`` in Euclidean norm however well it already fits ``y``: the right value
    grows with the number of observed entries and shrinks as the number of steps grows, so tune
    it per task (the tests use 0.5 with 200 steps on 24 observed vertices).

    ``A`` is the noise-free forward map of the vertex-masking operator: the observed mask of
    ``measurement`` applied to the ``(B, V_pad, C)`` view of ``x̂_0``.

    Arguments:
        prior: a :class:`~manifold_aps.diffusion.DiffusionPrior` (``prior(x, t) = ε_θ``, ``.sde``,
            ``.layout``).
        measurement: ``y`` ``(B, V_pad, C)`` and ``observed`` ``(B, V_pad)``; one sample is drawn
            per row, so for ``n`` samples of one measurement repeat it
            (``measurement[torch.zeros(n, dtype=torch.long)]``).
        operator: the operator that produced ``measurement`` (e.g.
            :class:`~manifold_aps.operators.RandomVertexMask`); it gives ``σ_y`` and is checked
            against the layout.
        times: the decreasing time grid (:func:`~manifold_aps.diffusion.sampling.time_grid`);
            default ``time_grid(diffusion_steps, prior.sde.eps)``.
        step_size: ``ζ > 0`` (see above).
        generator: draws ``x_T ~ N(0, I)`` and all later noise; same seed, same samples.
        callback: called after every step with ``{"step", "t", "x", "denoised"}``.
        progress: show a tqdm progress bar.
        diffusion_steps: steps ``N ≥ 1`` of the uniform grid when ``times`` is not given
            (default 1000, as in the paper's baselines); ``num_steps`` is its deprecated alias.

    Returns:
        ``SampleResult(sample, nfe)``: ``sample`` ``(B, V_pad · C)`` in the padded flat layout,
        zero on padding; ``nfe = N``: one network evaluation per step, its backward pass for the
        gradient counted with it, as is conventional for DPS.

    Example:
        >>> import torch, manifold_aps as aps
        >>> from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor
        >>> layout = aps.VertexLayout(10, multiple=16)
        >>> prior = DiffusionPrior(GaussianNoisePredictor(torch.zeros(16), torch.eye(16)), layout)
        >>> op = aps.RandomVertexMask(10, 16, hidden_fraction=0.5, noise_std=0.1)
        >>> measurement = op(torch.ones(2, 16, 1), generator=torch.Generator().manual_seed(0))
        >>> result = sample_dps(prior, measurement, op, diffusion_steps=20, step_size=0.5,
        ...                     generator=torch.Generator().manual_seed(1))
        >>> result.sample.shape, result.nfe
        (torch.Size([2, 16]), 20)
    """
    return _guided_sampling(prior, measurement, operator, times, diffusion_steps, num_steps, generator, callback,
                            progress, _dps_guide(prior, step_size), "DPS")


def sample_mcg(prior, measurement, operator, times=None, step_size: float = 1.0,
               generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = False,
               *, diffusion_steps: int | None = None, num_steps: int | None = None) -> SampleResult:
    """Manifold constrained gradient (MCG; Chung et al. 2022, "Improving Diffusion Models for
    Inverse Problems using Manifold Constraints", Algorithm 1): the DPS step of
    :func:`sample_dps` followed by projecting the observed entries onto the noised measurement,

        x_s[obs] ← α_s y[obs] + √max(σ_s² − α_s² σ_y², 0) n,   n ~ N(0, I).

    Noisy-measurement variant: the paper's projection ``α_s y + σ_s n`` assumes a noise-free
    ``y``. Here ``y = x_0 + σ_y n_y`` already carries noise of variance ``σ_y²``
    (``σ_y = operator.noise_std``), so only the missing variance is added: the projected entries
    then have the forward marginal ``N(α_s x_0, σ_s² I)`` exactly, as long as ``σ_s ≥ α_s σ_y``.
    In the last steps, where the measurement is noisier than ``x_s`` should be, they are
    ``α_s y`` (the least noise the measurement allows); the last step adds no noise, so observed
    entries of the returned sample are ``α_ε y`` (``α_ε ≈ 1``). With ``σ_y = 0`` this is the
    paper's projection.

    Arguments, returns and NFE (one network evaluation with its backward pass per step) are those
    of :func:`sample_dps`.
    """
    return _guided_sampling(prior, measurement, operator, times, diffusion_steps, num_steps, generator, callback,
                            progress, _dps_guide(prior, step_size), "MCG", project_observed=True)


def sample_mmps(prior, measurement, operator, times=None, cg_steps: int = 3,
                generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = False,
                *, diffusion_steps: int | None = None) -> SampleResult:
    """Moment-matching posterior sampling (MMPS; Rozet et al. 2024, "Learning Diffusion Priors
    from Observations by Expectation Maximization"): ancestral steps on the estimate

        E[x_0 | x_t, y] ≈ x̂_0 + γ_t Jᵀ Aᵀ v,   (σ_y² I + γ_t A J Aᵀ) v = y − A x̂_0,

    where ``γ_t J = (σ_t² / α_t) ∂x̂_0/∂x_t`` is Tweedie's covariance ``Cov[x_0 | x_t]``. ``J v``
    is never formed as a matrix: each product is one vector-Jacobian product through the network
    (``Jᵀ v``; ``J`` is symmetric for an exact score), and ``v`` is ``cg_steps`` conjugate-gradient
    iterations from 0. For a Gaussian prior ``p(x_0 | x_t)`` is exactly ``N(x̂_0, γ_t J)``, so with
    enough iterations the estimate is the exact ``E[x_0 | x_t, y]``.

    The other arguments are those of :func:`sample_dps`.

    Arguments:
        cg_steps: conjugate-gradient iterations per step (≥ 1; each costs one backward pass).

    Returns:
        ``SampleResult(sample, nfe)`` with ``nfe = N (1 + cg_steps)``: per step one forward pass,
        ``cg_steps`` products with ``J`` and one for the final ``Jᵀ Aᵀ v``.
    """
    _check_count(cg_steps, "cg_steps")

    def guide(observation, x, t):
        gamma = float(prior.sde.sigma(t)) ** 2 / float(prior.sde.alpha(t))
        mask = observation.observed.to(x.dtype)
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            _, denoised = denoise(prior, x_t, float(t))

            def jacobian_transpose(v):
                return torch.autograd.grad(denoised, x_t, v, retain_graph=True)[0]

            def system(v):  # (σ_y² I + A Σ_t Aᵀ) v, kept on the observed entries
                return observation.noise_std**2 * v + mask * (gamma * jacobian_transpose(mask * v))

            solution = _conjugate_gradient(system, observation.residual(denoised.detach()), cg_steps)
            correction = gamma * jacobian_transpose(solution)
        return (denoised + correction).detach(), None

    return _guided_sampling(prior, measurement, operator, times, diffusion_steps, None, generator, callback,
                            progress, guide, "MMPS", nfe_per_step=1 + int(cg_steps))


def sample_pigdm(prior, measurement, operator, times=None, prior_variance: float = 1.0,
                 generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = False,
                 *, diffusion_steps: int | None = None) -> SampleResult:
    """Pseudoinverse-guided diffusion (ΠGDM; Song et al. 2023, "Pseudoinverse-Guided Diffusion
    Models for Inverse Problems", noisy measurements): ancestral steps on the estimate

        E[x_0 | x_t, y] ≈ x̂_0 + γ_t Jᵀ Aᵀ (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x̂_0),
        r_t² = v σ_t² / (α_t² v + σ_t²),

    i.e. MMPS with ``Cov[x_0 | x_t]`` replaced by ``r_t² I``, the posterior variance of ``x_0``
    under an isotropic prior ``N(·, v I)``. For a vertex mask ``A Aᵀ = I``, so the inverse is the
    scalar ``1 / (r_t² + σ_y²)`` and one vector-Jacobian product per step suffices.

    The other arguments are those of :func:`sample_dps`.

    Arguments:
        prior_variance: ``v > 0``; the paper's 1 (unit-variance data) gives ``r_t² = σ_t²`` on
            the VPSDE. Signals scaled to [0, 1] have a smaller per-entry variance; tune it.

    Returns:
        ``SampleResult(sample, nfe)`` with ``nfe = N`` (one forward and one backward pass per step).
    """
    _check_positive(prior_variance, "prior_variance")

    def guide(observation, x, t):
        alpha, sigma2 = float(prior.sde.alpha(t)), float(prior.sde.sigma(t)) ** 2
        isotropic_variance = prior_variance * sigma2 / (alpha**2 * prior_variance + sigma2)  # r_t²
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            _, denoised = denoise(prior, x_t, float(t))
            weighted = observation.residual(denoised.detach()) / (isotropic_variance + observation.noise_std**2)
            gradient, = torch.autograd.grad(denoised, x_t, weighted)
        return denoised.detach() + sigma2 / alpha * gradient, None

    return _guided_sampling(prior, measurement, operator, times, diffusion_steps, None, generator, callback,
                            progress, guide, "PiGDM")


def sample_diffpir(prior, measurement, operator, times=None, regularization: float = 1.0,
                   generator: torch.Generator | None = None, callback: Callable | None = None, progress: bool = False,
                   *, diffusion_steps: int | None = None) -> SampleResult:
    """Plug-and-play diffusion restoration (DiffPIR; Zhu et al. 2023, "Denoising Diffusion Models
    for Plug-and-Play Image Restoration", data step in closed form): ancestral steps on the
    proximal point

        x̂_0' = argmin_x ‖y − A x‖² / (2σ_y²) + λ ‖x − x̂_0‖² / (2ρ_t),   ρ_t = σ_t² / α_t²,
             = x̂_0 + Aᵀ (y − A x̂_0) ρ_t / (ρ_t + λ σ_y²)        (A a mask, so AᵀA is diagonal).

    Observed entries are pulled to ``y`` (fully early on, hardly at all as ``t → ε`` when
    ``σ_y > 0``); hidden entries follow through the network at the next step. No backward pass.
    The ancestral step takes the place of DiffPIR's noise mixing (its ``ζ`` is then
    ``1 − α²_{t|s} σ_s² / σ_t²`` per step), as in azula's ``DiffPIRDenoiser``.

    The other arguments are those of :func:`sample_dps`.

    Arguments:
        regularization: ``λ > 0``, the weight of the prior's denoised estimate (1 in the
            authors' inpainting script).

    Returns:
        ``SampleResult(sample, nfe)`` with ``nfe = N`` (one forward pass per step).
    """
    _check_positive(regularization, "regularization")

    def guide(observation, x, t):
        ratio = float(prior.sde.sigma(t)) ** 2 / float(prior.sde.alpha(t)) ** 2  # ρ_t
        _, denoised = denoise(prior, x, float(t))
        weight = ratio / (ratio + regularization * observation.noise_std**2)
        return denoised + weight * observation.residual(denoised), None

    return _guided_sampling(prior, measurement, operator, times, diffusion_steps, None, generator, callback,
                            progress, guide, "DiffPIR")


def _dps_guide(prior, step_size: float):
    """DPS's step: the plain ``x̂_0`` and the correction ``−ζ ∇_{x_t} ‖y − A x̂_0‖``."""
    _check_positive(step_size, "step_size")

    def guide(observation, x, t):
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            _, denoised = denoise(prior, x_t, float(t))
            residual_norm = torch.linalg.vector_norm(observation.residual(denoised), dim=1).sum()
            gradient, = torch.autograd.grad(residual_norm, x_t)
        return denoised.detach(), -step_size * gradient

    return guide


def _conjugate_gradient(apply: Callable, rhs: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` conjugate-gradient steps on ``apply(v) = rhs`` per row, from ``v = 0``; sums
    in float64.

    Exact for a symmetric positive definite ``apply``. A trained network's Jacobian need not be
    either, so a row whose search direction meets non-positive curvature (``dᵀ A d ≤ 0``) stops
    there and keeps its iterate (truncated CG, as in Steihaug's method): without this a direction
    with ``dᵀ A d`` near 0 gives an unbounded step and the sampler diverges."""
    solution = torch.zeros_like(rhs, dtype=torch.float64)
    residual = rhs.double()
    direction = residual
    residual_square = (residual * residual).sum(dim=1, keepdim=True)
    active = residual_square > 0
    for _ in range(iterations):
        image = apply(direction.to(rhs.dtype)).double()
        curvature = (direction * image).sum(dim=1, keepdim=True)
        active = active & (curvature > 0)
        step = torch.where(active, residual_square / torch.where(active, curvature, torch.ones_like(curvature)),
                           torch.zeros_like(curvature))
        solution = solution + step * direction
        residual = residual - step * image
        new_square = (residual * residual).sum(dim=1, keepdim=True)
        active = active & (new_square > 0)
        ratio = torch.where(active, new_square / torch.where(active, residual_square, torch.ones_like(residual_square)),
                            torch.zeros_like(new_square))
        direction = residual + ratio * direction
        residual_square = new_square
    return solution.to(rhs.dtype)


@torch.no_grad()
def _guided_sampling(prior, measurement, operator, times, diffusion_steps, num_steps, generator, callback, progress,
                     guide: Callable, name: str, nfe_per_step: int = 1, project_observed: bool = False) -> SampleResult:
    """The shared loop: ``x_T ~ N(0, I)``, then per step ``(x̂, correction) = guide(observation, x_t, t)``,
    ``x_s = ancestral_step(x_t, x̂) + correction`` and, for MCG, the projection of the observed entries."""
    layout = prior.layout
    _check_posterior_inputs(layout, measurement, operator)
    y = measurement.y
    batch, device, dtype = y.shape[0], y.device, y.dtype
    observed = measurement.observed & layout.vertex_mask(device)  # padding is never observed
    observation = _Observation(layout.flatten(y), layout.flatten(observed[..., None].expand_as(y)),
                               float(operator.noise_std))
    sde = prior.sde
    x = torch.randn(batch, layout.dim, generator=generator, device=device, dtype=dtype)
    grid = resolve_time_grid(times, diffusion_steps, num_steps, sde, device, default_steps=DEFAULT_DIFFUSION_STEPS,
                             stacklevel=5)
    for i in tqdm(range(len(grid) - 1), desc=name, disable=not progress, leave=False):
        t, s = grid[i], grid[i + 1]
        last = i == len(grid) - 2
        denoised, correction = guide(observation, x, t)
        noise = None if last else torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        x = ancestral_step(sde, x, denoised, t, s, noise)
        if correction is not None:
            x = x + correction
        if project_observed:
            alpha_s, sigma2_s = float(sde.alpha(s)), float(sde.sigma(s)) ** 2
            projected = alpha_s * observation.y
            if not last:
                missing_std = max(sigma2_s - alpha_s**2 * observation.noise_std**2, 0.0) ** 0.5
                projected = projected + missing_std * torch.randn(x.shape, generator=generator, device=device,
                                                                  dtype=dtype)
            x = torch.where(observation.observed, projected, x)
        if callback is not None:
            callback({"step": i, "t": float(t), "x": x, "denoised": denoised})
    real_entries = layout.flatten(layout.vertex_mask(device)[None, :, None].expand(1, -1, layout.num_channels))
    return SampleResult(x * real_entries.to(dtype), (len(grid) - 1) * nfe_per_step)


def _check_posterior_inputs(layout, measurement, operator):
    """Clear errors for shapes that do not fit the prior's layout."""
    expected = (layout.padded_vertices, layout.num_channels)
    y, observed = measurement.y, measurement.observed
    if y.dim() != 3 or tuple(y.shape[1:]) != expected:
        raise ValueError(f"measurement.y must be (B, {expected[0]}, {expected[1]}) to match the prior's layout "
                         f"(V_pad={expected[0]}, C={expected[1]}), got {tuple(y.shape)}")
    if observed.dtype != torch.bool or tuple(observed.shape) != tuple(y.shape[:2]):
        raise ValueError(f"measurement.observed must be a bool tensor of shape {tuple(y.shape[:2])}, "
                         f"got {observed.dtype} {tuple(observed.shape)}")
    padded_vertices = getattr(operator, "padded_vertices", layout.padded_vertices)
    if padded_vertices != layout.padded_vertices:
        raise ValueError(f"the operator works on {padded_vertices} padded vertices, "
                         f"the prior on {layout.padded_vertices}")


def _check_positive(value, name: str):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_count(value, name: str):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
