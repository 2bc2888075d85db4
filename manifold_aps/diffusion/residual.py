"""Gaussian-residual noise networks: a learned correction on top of the exact PPCA-Gaussian prior.

For data fitted by a Gaussian ``N(μ, Σ)`` (PPCA of the training signals, low rank plus nugget) the
exact noise prediction ``ε_G(x_t, t)`` is known in closed form
(:class:`~manifold_aps.diffusion.gaussian.GaussianNoisePredictor`). The network only learns what
the data have beyond the Gaussian, as a denoised-signal correction in EDM's preconditioning
(Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"):

    x̂_0(x_t, t) = x̂_0^G(x_t, t) + c_out(t) F_θ(c_in(t) (x_t − α_t μ), t),

    c_in = 1 / √(α_t² s² + σ_t²),   c_out = (σ_t/α_t) · s α_t c_in,

with ``s`` the correction scale (EDM's σ_data). Since ``ε = (x_t − α_t x̂_0) / σ_t``,

    ε_θ(x_t, t) = ε_G(x_t, t) − g(t) F_θ(·),   g(t) = s α_t / √(α_t² s² + σ_t²) ∈ (0, 1].

``g → 1`` at small ``t`` (the correction acts on ε at full strength where the data's shape
matters) and ``g ≈ s α_t / σ_t → 0`` at large ``t``, where an error in ε is multiplied by
``σ_t / α_t`` in the Tweedie estimate ``x̂_0 = (x_t − σ_t ε) / α_t``: there ``F_θ`` moves ``x̂_0``
by at most ``≈ s F_θ``, so an imperfect correction cannot swamp the Gaussian's (already nearly
optimal) estimate. The default ``s = 1`` gives ``g = α_t`` and ``c_out = σ_t`` (``c_in = 1``):
``x̂_0 = x̂_0^G + σ_t F_θ``. A smaller ``s`` protects large ``t`` more but also weakens the
plain ε loss on ``F_θ`` (weight ``g²``) at the middle noise levels where the Gaussian is beaten:
with ``s = 0.1`` (the Bunny-MNIST data's std) a width-1024 MLP had not moved the denoising error
by 0.1 % after 2000 steps. ``F_θ`` is any network of
:func:`~manifold_aps.diffusion.networks.build_network` whose output starts at zero, so at
initialisation ``ε_θ = ε_G`` exactly.

**Guided correction** (``guide=True``, the default for new priors): ``F_θ`` also reads the
Gaussian's own denoised estimate and the mean, per vertex, as ``2C`` extra channels:

    F_θ([(x_t − α_t μ) / √(α_t² s_d² + σ_t²),  (x̂_0^G(x_t, t) − μ) / s_d,  μ / s_d], t)   (3C channels in, first C out),

``s_d`` the data's RMS standard deviation (from the Gaussian). Without the estimate, a correction
that beats the Gaussian must first rebuild the Gaussian's linear estimate from ``x_t`` before it
can bend it; without the mean, a per-vertex correction cannot tell 0.3 from 0.3 + μ_v. With both,
even a per-vertex network (``vertex_mlp``) learns the data's nonlinearity (MNIST strokes are 0
or 1, not 0.3) in hundreds of steps (``tests/test_prior_residual.py``; measurements on the tasks
in docs/performance.md, "Diffusion prior: beating the exact Gaussian").

The Gaussian lives in the network's buffers (mean, directions, variances), with shapes fixed by
the stored config (``rank``), so :func:`~manifold_aps.diffusion.saving.save_prior` /
:func:`~manifold_aps.diffusion.saving.load_prior` round-trip the whole prior unchanged.
"""

from __future__ import annotations

import torch

from manifold_aps.diffusion.gaussian import GaussianNoisePredictor, MixtureNoisePredictor, exact_gaussian_prior
from manifold_aps.diffusion.noise_network import NoiseNetwork
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import VertexLayout

__all__ = ["GaussianResidualNetwork"]


class GaussianResidualNetwork(NoiseNetwork):
    """``ε_θ(x_t, t) = ε_G(x_t, t) − g(t) F_θ(c_in(t)(x_t − α_t μ), t)`` (see the module docstring).

    Build it by name, ``build_network("gaussian_residual", layout, base="mlp", base_config={...},
    rank=..., gaussian=...)``, which builds the correction ``F_θ`` first, or use
    :func:`~manifold_aps.diffusion.training.gaussian_residual_prior`.

    Args:
        layout: signal layout.
        correction: ``F_θ``, a network of :func:`~manifold_aps.diffusion.networks.build_network`
            whose output starts at zero (its ``name`` and ``config`` are stored as ``base`` and
            ``base_config``).
        rank: number of Gaussian directions ``k`` (256); fixes the buffer shapes.
        correction_scale: ``s`` (1.0, for data normalised to an O(1) range).
        guide: give ``F_θ`` the Gaussian's denoised estimate and mean (then ``F_θ`` is built for
            ``3C`` channels, :meth:`correction_channels`; :func:`~manifold_aps.diffusion.networks.build_network`
            does that).
        data_scale: ``s_d`` of the guided inputs; None takes the Gaussian's RMS std.
        gaussian: the :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` over the ``V · C``
            real entries (vertex-major), e.g. ``fit_ppca(train, rank)``; None builds an empty
            shell whose buffers :func:`~manifold_aps.diffusion.saving.load_prior` fills.
    """

    name = "gaussian_residual"

    def __init__(self, layout: VertexLayout, correction: NoiseNetwork, sde: VPSDE | None = None, rank: int = 256,
                 correction_scale: float = 1.0, gaussian=None, guide: bool = False, data_scale: float | None = None,
                 components: int | None = None):
        super().__init__(layout, sde)
        if correction.name == self.name:
            raise ValueError("the correction network cannot itself be a gaussian_residual network")
        parts = getattr(gaussian, "components", None)  # a GaussianMixtureField's LowRankGaussians
        if parts is not None:
            if components is not None and components != len(parts):
                raise ValueError(f"components={components} but the mixture has {len(parts)}")
            components = len(parts)
        for part in parts or ([] if gaussian is None else [gaussian]):
            if part.rank != rank:
                raise ValueError(f"rank={rank} but the Gaussian has {part.rank} directions")
        if gaussian is None:
            self.gaussian = _empty_gaussian(layout.dim, rank, self.sde, components)
        elif parts is not None:
            self.gaussian = gaussian.exact_prior(layout, self.sde).network
        else:
            self.gaussian = exact_gaussian_prior(gaussian, layout, self.sde).network
        if not correction_scale > 0:
            raise ValueError(f"correction_scale must be positive, got {correction_scale}")
        if not getattr(correction, "output_starts_at_zero", False):
            raise ValueError(f"the {correction.name!r} network does not start at zero output; choose one that does")
        channels = self.correction_channels(layout.num_channels, guide)
        if (correction.layout.num_vertices, correction.layout.num_channels) != (layout.num_vertices, channels):
            raise ValueError(f"the correction must be built for {layout.num_vertices} vertices × {channels} channels "
                             f"(guide={guide}), got {correction.layout.num_vertices} × {correction.layout.num_channels}")
        self.correction = correction
        _open_residual_blocks(self.correction)
        self.config = dict(base=correction.name, base_config=dict(correction.config), rank=rank,
                           correction_scale=float(correction_scale))
        if components is not None:
            self.config["components"] = int(components)
        if guide:
            if data_scale is None:
                if gaussian is None:
                    raise ValueError("guide=True needs data_scale or the gaussian to take it from")
                data_scale = _rms_std(self.gaussian, layout)
            if not data_scale > 0:
                raise ValueError(f"data_scale must be positive, got {data_scale}")
            self.config.update(guide=True, data_scale=float(data_scale))

    @staticmethod
    def correction_channels(channels: int, guide: bool) -> int:
        """Channels per vertex that ``F_θ`` reads: ``3C`` guided (``x_t``, the Gaussian's estimate,
        the mean), else ``C``."""
        return 3 * channels if guide else channels

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        scale = self.config["correction_scale"]
        input_scale = torch.rsqrt(alpha**2 * scale**2 + sigma**2)
        gain = scale * alpha * input_scale
        mean = self.gaussian.mean.to(x.dtype)  # a mixture's is computed from its components: once per call
        centered = x - alpha * mean
        gaussian_noise = self.gaussian(x, t)
        if not self.config.get("guide", False):
            return gaussian_noise - gain * self.correction(centered * input_scale, t)
        data_scale = self.config["data_scale"]
        noisy = centered * torch.rsqrt(alpha**2 * data_scale**2 + sigma**2)
        denoised = (centered - sigma * gaussian_noise) / (alpha * data_scale)  # (x̂_0^G − μ) / s_d
        layout = self.layout
        scaled_mean = (mean / data_scale).expand_as(x)
        inputs = torch.stack([layout.unflatten(noisy), layout.unflatten(denoised), layout.unflatten(scaled_mean)], dim=3)
        inputs = inputs.transpose(2, 3).reshape(x.shape[0], -1)  # per vertex: [x_t (C), estimate (C), mean (C)]
        correction = self.correction.layout.unflatten(self.correction(inputs, t))[..., :layout.num_channels]
        return gaussian_noise - gain * correction.reshape(x.shape[0], -1)


def _open_residual_blocks(network: torch.nn.Module):
    """Default (non-zero) initialisation for the zero-initialised last layers of ``network``'s
    residual blocks; its output layer stays zero, so ``F_θ = 0`` at the start still.

    With all of them zero the network starts as a linear map of its input, and around the
    Gaussian, whose noise prediction is already the best linear one, the gradients of every
    zero-initialised layer vanish together (a saddle): a probe's correction had barely moved
    after 3000 steps. Non-zero blocks feed nonlinear features to the output layer from step one.
    """
    for module in network.modules():
        layer = getattr(module, "zero_initialised_layer", None)
        if layer is not None:
            getattr(module, layer).reset_parameters()


def _rms_std(predictor, layout: VertexLayout) -> float:
    """``√(tr Cov / (V · C))`` over the real entries (padding has zero variance); for a mixture
    ``tr Cov = Σ_k w_k (tr Σ_k + ‖μ_k − μ‖²)``."""
    mixture = isinstance(predictor, MixtureNoisePredictor)
    parts = list(predictor.components) if mixture else [predictor]
    weights = predictor.log_weights.exp() if mixture else torch.ones(1, dtype=torch.float64)
    total = 0.0
    for weight, part in zip(weights, parts):
        in_span = (part.eigenvectors**2).sum(dim=1)
        trace = part.eigenvalues.sum() + (part.complement_variance * (1 - in_span).clamp_min(0)).sum()
        total = total + weight * (trace + ((part.mean - predictor.mean) ** 2).sum())
    return float(torch.sqrt(total / (layout.num_vertices * layout.num_channels)))


def _empty_gaussian(dim: int, rank: int, sde: VPSDE, components: int | None = None):
    """A predictor (a mixture of ``components`` when given) with buffers of the right shapes, filled
    by ``load_state_dict``."""
    if components is not None:
        return MixtureNoisePredictor([_empty_gaussian(dim, rank, sde) for _ in range(components)],
                                     torch.full((components,), 1.0 / components))
    predictor = GaussianNoisePredictor(torch.zeros(dim, dtype=torch.float64), None, sde)
    predictor.eigenvectors = torch.zeros(dim, rank, dtype=torch.float64)
    predictor.eigenvalues = torch.zeros(rank, dtype=torch.float64)
    return predictor
