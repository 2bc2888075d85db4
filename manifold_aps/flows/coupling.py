"""Conditional affine coupling on vector halves (Dinh et al. 2017, RealNVP; Sun & Bouman 2021, DPI).

The vector is split ``x = [x_a, x_b]`` (first ``⌊d/2⌋`` coordinates, then the rest, or the
reverse with ``update="first"``). A network reads ``[x_a, c]`` (``c``: the condition) and returns a
log-scale and a shift for the other half:

    x_b = z_b · exp(s) + t,   s = bound · tanh(ŝ / bound),   (ŝ, t) = net([z_a, c]),
    log|det ∂x/∂z| = Σ s.

The bounded log-scale keeps a step's volume change in ``[−bound, bound]`` per coordinate; the last
layer starts at zero, so a fresh coupling is the identity.

Aligned condition features. When the condition carries ``k`` features per coordinate (for APS:
the measurement ``y`` and the observed mask at the same vertex), the shift gets a per-coordinate
linear skip ``t += Σ_j w_j ⊙ f_j[active]`` (``w`` zero-initialised). Copying ``y`` into the output
is then one learned weight per coordinate instead of a near-identity map of rank ``d/2`` that a
narrow network cannot represent: without it, a RealNVP with 512 hidden units did not even
reproduce the observed entries (RMSE equal to the signal's std on a 1152-vertex torus).
"""

from __future__ import annotations

import torch

__all__ = ["AffineCoupling", "mlp"]


def mlp(in_features: int, out_features: int, hidden: int, layers: int) -> torch.nn.Sequential:
    """``layers`` hidden ``Linear + SiLU`` blocks and a zero-initialised output layer."""
    blocks, width = [], in_features
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, hidden), torch.nn.SiLU()]
        width = hidden
    last = torch.nn.Linear(width, out_features)
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return torch.nn.Sequential(*blocks, last)


class AffineCoupling(torch.nn.Module):
    """Arguments:
        dim: vector length ``d`` (≥ 2).
        cond_dim: condition length (0 for an unconditional coupling).
        update: ``"second"`` transforms the second half given the first, ``"first"`` the reverse.
        hidden: width of the coupling network; layers: its hidden layers.
        scale_bound: bound on ``|s|`` per coordinate.

    Example:
        >>> coupling = AffineCoupling(6, cond_dim=2)
        >>> z, c = torch.randn(4, 6), torch.randn(4, 2)
        >>> x, log_det = coupling(z, c)
        >>> bool(torch.equal(x, z)), log_det.tolist()  # identity at initialisation
        (True, [0.0, 0.0, 0.0, 0.0])
    """

    def __init__(self, dim: int, cond_dim: int = 0, update: str = "second", hidden: int = 256, layers: int = 2,
                 scale_bound: float = 2.0, aligned_features: int = 0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"a coupling needs dim ≥ 2, got {dim}")
        if update not in ("first", "second"):
            raise ValueError(f"update must be 'first' or 'second', got {update!r}")
        half = dim // 2
        self.passive = slice(0, half) if update == "second" else slice(half, dim)
        self.active = slice(half, dim) if update == "second" else slice(0, half)
        passive_size = half if update == "second" else dim - half
        self.active_size = dim - passive_size
        self.scale_bound = float(scale_bound)
        self.net = mlp(passive_size + cond_dim, 2 * self.active_size, hidden, layers)
        self.skip = torch.nn.Parameter(torch.zeros(self.active_size, aligned_features)) if aligned_features else None
        # which original coordinate each active entry is (the owning flow sets it after permutations)
        self.register_buffer("active_coordinates", torch.arange(dim)[self.active].clone())

    def _scale_shift(self, passive: torch.Tensor, condition: torch.Tensor | None, aligned: torch.Tensor | None):
        features = passive if condition is None else torch.cat([passive, condition], dim=1)
        raw_scale, shift = self.net(features).chunk(2, dim=1)
        if self.skip is not None:
            if aligned is None:
                raise ValueError("this coupling needs the aligned condition features (B, d, k)")
            shift = shift + (aligned[:, self.active_coordinates] * self.skip).sum(dim=-1)
        return self.scale_bound * torch.tanh(raw_scale / self.scale_bound), shift

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None, aligned: torch.Tensor | None = None):
        """``z → x``; returns ``(x, log|det ∂x/∂z|)``. ``aligned``: ``(B, d, k)`` in the original order."""
        log_scale, shift = self._scale_shift(z[:, self.passive], condition, aligned)
        x = z.clone()
        x[:, self.active] = z[:, self.active] * log_scale.exp() + shift
        return x, log_scale.sum(dim=1)

    def inverse(self, x: torch.Tensor, condition: torch.Tensor | None = None, aligned: torch.Tensor | None = None):
        """``x → z``; returns ``(z, log|det ∂z/∂x|)``."""
        log_scale, shift = self._scale_shift(x[:, self.passive], condition, aligned)
        z = x.clone()
        z[:, self.active] = (x[:, self.active] - shift) * torch.exp(-log_scale)
        return z, -log_scale.sum(dim=1)
