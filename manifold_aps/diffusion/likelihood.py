"""Likelihood of the diffusion prior: the full ELBO and the exact probability-flow log-density.

Full bound (Song et al. 2021, "Maximum likelihood training of score-based diffusion models",
Thm. 1 in denoising form). With ``∇·f = −½ β d`` and ``E‖∇log p(x_t | x_0)‖² = d / σ_t²``,

    log p(x_0) ≥ b'(x_0) + ½ ∫_ε^1 (g² d/σ_t² + 2 ∇·f) dt = b'(x_0) + (d/2) (Z − ∫_ε^1 β dt),

``Z = ∫_ε^1 β/σ_t² dt``. Both integrals are closed form: with ``B(t) = ∫_0^t β = −2 log α_t``,
``dB = β dt`` and ``σ² = 1 − e^{−B}``, so ``Z = log expm1 B(1) − log expm1 B(ε)`` and
``Z − ∫_ε^1 β = log σ_1² − log σ_ε²``.

Exact log-density through the probability-flow ODE ``dx/dt = F(x, t) = −½ β (x + s_θ)``
(instantaneous change of variables): starting from ``x(ε) = x_0``,

    log p(x_0) = log N(x(1); 0, I) + ∫_ε^1 ∇·F(x(t), t) dt,

with ``∇·F`` by Hutchinson's estimator ``vᵀ (∂F/∂x) v`` (Rademacher ``v``, fixed along the path;
unbiased) or exactly by autograd (``d`` backward passes; small ``d`` only). Integrated by scipy's
adaptive RK45.

Padding. Padded entries are exactly zero in the data, a degenerate direction whose density is
infinite; the networks predict their noise in closed form, so their contribution is a constant
(:func:`padding_log_likelihood`). With ``real_only=True`` (default) it is removed and the
results are log-densities of the ``V·C`` real entries.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from manifold_aps.diffusion.sampling import probability_flow
from manifold_aps.diffusion.sde import VPSDE

__all__ = ["elbo_constant", "elbo_bound", "padding_log_likelihood", "ODELikelihood", "ode_log_likelihood",
           "bits_per_dim"]


def _integrated_beta(sde: VPSDE, t: float) -> float:
    """``B(t) = ∫_0^t β``."""
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2


def elbo_constant(sde: VPSDE, dim: int) -> float:
    """The ``x_0``-independent part ``(d/2)(Z − ∫_ε^1 β dt) = (d/2) log(σ_1² / σ_ε²)``."""
    sigma2_1 = -math.expm1(-_integrated_beta(sde, 1.0))
    sigma2_eps = -math.expm1(-_integrated_beta(sde, sde.eps))
    return 0.5 * dim * (math.log(sigma2_1) - math.log(sigma2_eps))


def _num_padding(prior) -> int:
    layout = prior.layout
    return (layout.padded_vertices - layout.num_vertices) * layout.num_channels


def padding_log_likelihood(sde: VPSDE, num_padding: int, method: str) -> float:
    """Contribution of ``num_padding`` zero entries predicted exactly (``ε = x_t/σ_t``).

    ``"ode"``: the flow maps ``x_1 = 0`` to ``x_ε = 0`` with ``x_t ∝ σ_t``, giving
    ``−½ log 2π + ½ log(σ_1²/σ_ε²)`` per entry. ``"elbo"``: the integrand vanishes, leaving the
    reference term and the constant, ``−½ log 2π − ½ σ_1² + ½ log(σ_1²/σ_ε²)`` per entry.
    """
    log_ratio = elbo_constant(sde, 2)  # log(σ_1²/σ_ε²)
    sigma2_1 = -math.expm1(-_integrated_beta(sde, 1.0))
    per_entry = -0.5 * math.log(2 * math.pi) + 0.5 * log_ratio
    if method == "elbo":
        per_entry -= 0.5 * sigma2_1
    elif method != "ode":
        raise ValueError(f"method must be 'ode' or 'elbo', got {method!r}")
    return num_padding * per_entry


def elbo_bound(prior, x0: torch.Tensor, num_times: int = 1, generator: torch.Generator | None = None,
               real_only: bool = True) -> torch.Tensor:
    """The full lower bound on ``log p(x_0)`` in nats per sample ``(B,)`` (Monte-Carlo over t, e).

    ``b'`` comes from ``prior.elbo`` (importance-sampled over t); ``real_only`` removes the
    padding entries' constant contribution.
    """
    bound = prior.elbo(x0, num_times=num_times, generator=generator) + elbo_constant(prior.sde, x0.shape[1])
    if real_only:
        bound = bound - padding_log_likelihood(prior.sde, _num_padding(prior), "elbo")
    return bound


class ODELikelihood(NamedTuple):
    log_likelihood: torch.Tensor  # (B,) nats, float64
    nfe: int


def _divergence(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """``∇·F`` per sample: exact (probes None) or Hutchinson, averaged over the probes ``(K, B, d)``."""
    if probes is None:
        columns = [torch.autograd.grad(drift[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(x.shape[1])]
        return torch.stack(columns, dim=1).sum(dim=1)
    estimates = [(torch.autograd.grad(drift, x, probe, retain_graph=True)[0] * probe).sum(dim=1) for probe in probes]
    return torch.stack(estimates).mean(dim=0)


def ode_log_likelihood(prior, x0: torch.Tensor, divergence: str = "hutchinson", num_probes: int = 1,
                       rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                       real_only: bool = True) -> ODELikelihood:
    """``log p(x_0)`` per sample through the probability-flow ODE (see the module docstring).

    Arguments:
        divergence: ``"hutchinson"`` (``num_probes`` Rademacher probes) or ``"exact"``.
        rtol, atol: RK45 tolerances.
        real_only: remove the padding entries' constant contribution.
    """
    from scipy.integrate import solve_ivp

    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, d), got {tuple(x0.shape)}")
    if divergence not in ("hutchinson", "exact"):
        raise ValueError(f"divergence must be 'hutchinson' or 'exact', got {divergence!r}")
    batch, dim = x0.shape
    dtype, device = x0.dtype, x0.device
    probes = None
    if divergence == "hutchinson":
        if num_probes < 1:
            raise ValueError(f"num_probes must be ≥ 1, got {num_probes}")
        signs = torch.randint(0, 2, (num_probes, batch, dim), generator=generator, device=device)
        probes = (2 * signs - 1).to(dtype)
    evaluations = 0

    def rhs(t, state):
        nonlocal evaluations
        evaluations += 1
        with torch.enable_grad():
            x = torch.as_tensor(state[: batch * dim], dtype=dtype, device=device).reshape(batch, dim).requires_grad_()
            drift = probability_flow(prior, x, torch.full((batch,), t, dtype=dtype, device=device))
            div = _divergence(drift, x, probes)
        return np.concatenate([drift.detach().reshape(-1).double().cpu().numpy(), div.detach().double().cpu().numpy()])

    start = np.concatenate([x0.detach().reshape(-1).double().cpu().numpy(), np.zeros(batch)])
    solution = solve_ivp(rhs, (prior.sde.eps, 1.0), start, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {solution.message}")
    final = torch.as_tensor(solution.y[:, -1])
    x1, integrated_divergence = final[: batch * dim].reshape(batch, dim), final[batch * dim:]
    log_likelihood = prior.sde.prior_log_prob(x1) + integrated_divergence
    if real_only:
        log_likelihood = log_likelihood - padding_log_likelihood(prior.sde, _num_padding(prior), "ode")
    return ODELikelihood(log_likelihood, evaluations)


def bits_per_dim(log_likelihood: torch.Tensor, dim: int) -> torch.Tensor:
    """Negative log-likelihood in bits per dimension, ``−log p / (d ln 2)``."""
    return -log_likelihood / (dim * math.log(2.0))
