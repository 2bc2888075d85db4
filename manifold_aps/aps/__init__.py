"""Amortized posterior sampling (APS): distil a diffusion prior into a conditional flow.

See docs/method.md, "The sampler: a conditional flow trained without clean data" and "Our
addition: a Gaussian posterior base". A conditional flow ``x = G_φ(z, c(y))``, ``z ~ N(0, I)``,
is trained on measurements only — never on clean
signals — by minimising, per measurement, the amortized KL of the paper (Eq. 11):

    L(φ) = E_{y,z} [ λ_fid ‖m ⊙ (y − G(z, y))‖² / (2 σ_y²) − λ_prior b'(G(z, y)) − λ_logdet log|det ∂G/∂z| ]

with ``m`` the observed mask, the data term the operator's misfit
(:meth:`~manifold_aps.operators.RandomVertexMask.misfit`), ``b'`` the frozen diffusion prior's
ELBO (:meth:`manifold_aps.diffusion.DiffusionPrior.elbo`) and all weights 1 by default. The
condition ``c`` is ``y`` and the observed mask at every vertex; a blind sampler is given ``y``
alone and reads the mask off it (hidden entries of ``y`` are exactly 0). The sampler holds its
operator and is saved with it.

Padding. The flow runs over the real entries only (``d_real = V · C``) and its output is placed in
the padded vector with exact zeros on the padding vertices, so the log-determinant is that of the
map actually sampled and the ELBO sees padding that is exactly zero, as in the prior's data.

Gaussian posterior base. By default the flow is composed with the exact posterior of a Gaussian
prior fitted to the training signals (optimal interpolation,
:func:`~manifold_aps.gaussian_posterior.fit_gaussian_base`):

    x = μ(y) + s(y) ⊙ (u + E(y) E(y)ᵀ u),   u = F_φ(z, [c, μ(y), s(y)]),
    log|det ∂x/∂z| = Σ log s(y) + log det(I + E(y)ᵀ E(y)) + log|det ∂F_φ/∂z|

with ``μ`` the posterior mean and ``s, E`` a square root of the posterior covariance that keeps
its ``base_rank`` leading directions and every marginal variance exactly (in blind mode given
the mask read off ``y``). ``F_φ`` starts as the identity, so training starts from the
optimal-interpolation posterior, correlations included. With ``marginal_components = K`` a
per-entry monotone map (:class:`~manifold_aps.flows.VertexwiseMonotone`, one small MLP shared by
all vertices) follows the base, ``x = g(μ(y) + s(y) ⊙ (u + E Eᵀ u))``, to reshape its Gaussian
marginals; ``log|det|`` gains ``Σ log g'``.

Forward-KL term. With ``forward_kl_weight = λ > 0`` the loss gains ``λ · (−log q(x | y))`` on
signals ``x`` drawn from the prior itself and measured afresh at every step
(:mod:`~manifold_aps.aps.forward_kl`): a mass-covering companion to the mode-seeking reverse KL
that still needs no clean data.

Modules: :mod:`~manifold_aps.aps.config` (:class:`APSConfig`), :mod:`~manifold_aps.aps.sampler`
(:class:`AmortizedPosteriorSampler`: objective, sampling, persistence),
:mod:`~manifold_aps.aps.forward_kl` (prior draws and ``log q``),
:mod:`~manifold_aps.aps.training` (:func:`train_aps`) and :mod:`~manifold_aps.aps.fitting`
(:func:`fit`).
"""

from manifold_aps.aps.config import APSConfig
from manifold_aps.aps.fitting import fit
from manifold_aps.aps.sampler import AmortizedPosteriorSampler, condition_channels, marginal_feature_channels
from manifold_aps.aps.training import train_aps

__all__ = ["APSConfig", "AmortizedPosteriorSampler", "condition_channels", "marginal_feature_channels", "train_aps", "fit"]
