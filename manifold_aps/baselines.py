"""Baselines to compare posterior samplers against: harmonic interpolation, DPS and MCG.

Harmonic interpolation fills the hidden vertices with the discrete harmonic extension of the
observed values: with the cotan stiffness ``L = mesh.laplacian`` split into hidden (h) and
observed (o) blocks,

    L_hh x_h = −L_ho y_o.

The cotan Laplacian (not the combinatorial graph Laplacian) is used because it has linear
precision: on a flat mesh a linear function is reproduced exactly at every interior vertex, for
any triangulation. ``mesh.laplacian`` is the intrinsic-Delaunay cotan Laplacian, whose weights are
non-negative, so the extension obeys the maximum principle (no overshoot beyond the observed
range). Hidden vertices in a connected component with no observed vertex (e.g. the bunny's
isolated vertices) have no harmonic extension; they get the mean of all observed values.

:func:`sample_dps` (Chung et al. 2023) and :func:`sample_mcg` (Chung et al. 2022) sample the
posterior under a diffusion prior by guiding its reverse diffusion with the measurement, one
network evaluation and one backward pass per step. They share the prior samplers' signature
(:mod:`manifold_aps.diffusion.sampling`) plus the measurement and operator:

    sampler(prior, measurement, operator, num_steps, step_size, generator=None, callback=None)
        -> SampleResult(sample, nfe)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

from manifold_aps.diffusion.sampling import SampleResult, time_grid

__all__ = ["harmonic_interpolation", "sample_dps", "sample_mcg"]


def harmonic_interpolation(mesh, y, observed):
    """Harmonic extension of observed vertex values to the hidden vertices.

    Arguments:
        mesh: a :class:`manifold_aps.Mesh` with ``V`` vertices.
        y: ``(V,)``, ``(B, V)`` or ``(B, V, C)`` values; entries at hidden vertices are ignored.
        observed: bool ``(V,)`` (shared) or ``(B, V)``, True where ``y`` is known.

    Returns:
        Same shape and kind (numpy or torch) as ``y``: ``y`` on observed vertices, the harmonic
        extension on hidden ones.

    Example:
        >>> import numpy as np, manifold_aps as aps
        >>> sphere = aps.latlon_sphere(30.0)
        >>> z = sphere.vertices[:, 2].numpy()
        >>> observed = np.arange(sphere.num_vertices) % 2 == 0
        >>> filled = harmonic_interpolation(sphere, z, observed)
        >>> bool(np.abs(filled - z).max() < 0.3)
        True
    """
    is_torch = isinstance(y, torch.Tensor)
    values = y.detach().cpu().numpy() if is_torch else np.asarray(y)
    known = observed.detach().cpu().numpy() if isinstance(observed, torch.Tensor) else np.asarray(observed)
    num_vertices = mesh.num_vertices
    shape = values.shape
    if values.ndim == 1:
        batch = values.reshape(1, -1, 1)
    elif values.ndim == 2:
        batch = values[..., None]
    elif values.ndim == 3:
        batch = values
    else:
        raise ValueError(f"y must be (V,), (B, V) or (B, V, C), got shape {shape}")
    if batch.shape[1] != num_vertices:
        raise ValueError(f"y has {batch.shape[1]} vertices but the mesh has {num_vertices}")
    known = np.broadcast_to(np.atleast_2d(known).astype(bool), batch.shape[:2]) if known.ndim <= 2 else None
    if known is None or known.shape[1] != num_vertices:
        raise ValueError(f"observed must be (V,) or (B, V) with V={num_vertices}, got {np.shape(observed)}")
    stiffness = sp.csr_matrix(mesh.laplacian, dtype=np.float64)
    _, component = csgraph.connected_components(stiffness, directed=False)
    result = np.array(batch, dtype=np.float64)
    for index in range(batch.shape[0]):
        result[index] = _fill_one(stiffness, component, batch[index].astype(np.float64), known[index])
    result = result.reshape(shape).astype(values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64)
    return torch.as_tensor(result, device=y.device) if is_torch else result


def _fill_one(stiffness: sp.csr_matrix, component: np.ndarray, values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """One measurement ``(V, C)``: solve ``L_hh x_h = −L_ho y_o`` where the system is determined."""
    if not known.any():
        raise ValueError("a measurement has no observed vertex: nothing to interpolate from")
    filled = np.where(known[:, None], values, values[known].mean(axis=0))
    # hidden vertices whose component has an observed vertex get the harmonic extension
    anchored = np.isin(component, np.unique(component[known]))
    hidden = np.flatnonzero(~known & anchored)
    if hidden.size:
        observed_index = np.flatnonzero(known)
        right_side = -(stiffness[hidden][:, observed_index] @ values[observed_index])
        filled[hidden] = spla.splu(stiffness[hidden][:, hidden].tocsc()).solve(np.asarray(right_side))
    return filled


def sample_dps(prior, measurement, operator, num_steps: int = 1000, step_size: float = 1.0,
               generator: torch.Generator | None = None, callback: Callable | None = None) -> SampleResult:
    """Diffusion posterior sampling (DPS; Chung et al. 2023, "Diffusion Posterior Sampling for
    General Noisy Inverse Problems", Algorithm 1), on the VPSDE time grid of
    :func:`~manifold_aps.diffusion.sampling.time_grid`.

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
    grows with the number of observed entries and shrinks as ``num_steps`` grows, so tune it per
    task (the tests use 0.5 with 200 steps on 24 observed vertices).

    ``A`` is the noise-free forward map of the vertex-masking operator: the observed mask of
    ``measurement`` applied to the ``(B, V_pad, C)`` view of ``x̂_0``.

    Arguments:
        prior: a :class:`~manifold_aps.diffusion.DiffusionPrior` (``prior(x, t) = ε_θ``, ``.sde``,
            ``.layout``).
        measurement: ``y`` ``(B, V_pad, C)`` and ``observed`` ``(B, V_pad)``; one sample is drawn
            per row, so for ``n`` samples of one measurement repeat it
            (``measurement[torch.zeros(n, dtype=torch.long)]``).
        operator: the operator that produced ``measurement`` (e.g.
            :class:`~manifold_aps.operators.RandomVertexMask`); checked against the layout.
        num_steps: reverse steps ``N ≥ 1`` (1000 in the paper's baselines).
        step_size: ``ζ > 0`` (see above).
        generator: draws ``x_T ~ N(0, I)`` and all later noise; same seed, same samples.
        callback: called after every step with ``{"step", "t", "x", "denoised"}``.

    Returns:
        ``SampleResult(sample, nfe)``: ``sample`` ``(B, V_pad · C)`` in the padded flat layout,
        zero on padding; ``nfe = num_steps``: one network evaluation per step, its backward pass
        for the gradient counted with it, as is conventional for DPS.

    Example:
        >>> import torch, manifold_aps as aps
        >>> from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor
        >>> layout = aps.VertexLayout(10, multiple=16)
        >>> prior = DiffusionPrior(GaussianNoisePredictor(torch.zeros(16), torch.eye(16)), layout)
        >>> op = aps.RandomVertexMask(10, 16, hidden_fraction=0.5, noise_std=0.1)
        >>> measurement = op(torch.ones(2, 16, 1), generator=torch.Generator().manual_seed(0))
        >>> result = sample_dps(prior, measurement, op, num_steps=20, step_size=0.5,
        ...                     generator=torch.Generator().manual_seed(1))
        >>> result.sample.shape, result.nfe
        (torch.Size([2, 16]), 20)
    """
    return _guided_ancestral(prior, measurement, operator, num_steps, step_size, generator, callback,
                             project_observed=False)


def sample_mcg(prior, measurement, operator, num_steps: int = 1000, step_size: float = 1.0,
               generator: torch.Generator | None = None, callback: Callable | None = None) -> SampleResult:
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

    Arguments, returns and NFE (``num_steps``, one network evaluation with its backward pass per
    step) are those of :func:`sample_dps`.
    """
    return _guided_ancestral(prior, measurement, operator, num_steps, step_size, generator, callback,
                             project_observed=True)


@torch.no_grad()
def _guided_ancestral(prior, measurement, operator, num_steps, step_size, generator, callback,
                      project_observed: bool) -> SampleResult:
    """The DPS loop of :func:`sample_dps`, with MCG's projection when ``project_observed``."""
    layout = prior.layout
    _check_posterior_inputs(layout, measurement, operator, num_steps, step_size)
    y = measurement.y
    batch, device, dtype = y.shape[0], y.device, y.dtype
    observed = measurement.observed & layout.vertex_mask(device)  # padding is never observed
    observed_entries = observed[..., None].expand_as(y)
    sde = prior.sde
    noise_std = float(getattr(operator, "noise_std", 0.0))
    x = torch.randn(batch, layout.dim, generator=generator, device=device, dtype=dtype)
    grid = time_grid(sde, num_steps, device, torch.float64)
    for i in range(len(grid) - 1):
        t, s = grid[i], grid[i + 1]
        last = i == len(grid) - 2
        alpha_t, alpha_s = float(sde.alpha(t)), float(sde.alpha(s))
        sigma2_t, sigma2_s = float(sde.sigma(t)) ** 2, float(sde.sigma(s)) ** 2
        with torch.enable_grad():
            x_t = x.detach().requires_grad_(True)
            times = torch.full((batch,), float(t), device=device, dtype=dtype)
            denoised = (x_t - sigma2_t**0.5 * prior(x_t, times)) / alpha_t
            residual = torch.where(observed_entries, y - layout.unflatten(denoised), torch.zeros_like(y))
            residual_norm = torch.linalg.vector_norm(residual.flatten(1), dim=1).sum()
            gradient, = torch.autograd.grad(residual_norm, x_t)
        denoised = denoised.detach()
        alpha_ts = alpha_t / alpha_s
        sigma2_ts = sigma2_t - alpha_ts**2 * sigma2_s
        x = (alpha_ts * sigma2_s * x + alpha_s * sigma2_ts * denoised) / sigma2_t
        if not last:
            scale = (sigma2_ts * sigma2_s / sigma2_t) ** 0.5
            x = x + scale * torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
        x = x - step_size * gradient
        if project_observed:
            projected = alpha_s * y
            if not last:
                missing_std = max(sigma2_s - alpha_s**2 * noise_std**2, 0.0) ** 0.5
                projected = projected + missing_std * torch.randn(y.shape, generator=generator, device=device,
                                                                  dtype=dtype)
            x = layout.flatten(torch.where(observed_entries, projected, layout.unflatten(x)))
        if callback is not None:
            callback({"step": i, "t": float(t), "x": x, "denoised": denoised})
    real_entries = layout.flatten(layout.vertex_mask(device)[None, :, None].expand(1, -1, layout.num_channels))
    return SampleResult(x * real_entries.to(dtype), len(grid) - 1)


def _check_posterior_inputs(layout, measurement, operator, num_steps, step_size):
    """Clear errors for shapes that do not fit the prior's layout and for bad step settings."""
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
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer ≥ 1, got {num_steps}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite number > 0, got {step_size}")
