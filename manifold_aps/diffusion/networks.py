"""Noise networks ``ε_θ(x_t, t)`` over flattened padded vertex vectors ``(B, d)``, ``d = V_pad · C``.

The families, built by name with :func:`build_network`:

- ``"unet1d"`` — :class:`UNet1D`, the paper's "1D formulation of DDPM": the vector is read as
  ``(B, C, V_pad)`` (vertices in file order along a 1D axis, channels as 1D channels) and passed
  through a residual U-Net that halves the vertex axis ``levels − 1`` times.
- ``"mlp"`` — :class:`ResidualMLP`, a residual MLP with FiLM time conditioning and a time-gated
  identity skip: much cheaper per sample on a CPU (see docs/performance.md for the measurement).
- ``"spectral"`` — :class:`SpectralMLP`, the same MLP acting on the coefficients of the signal in
  the mesh's lowest Laplacian eigenvectors (geometry-aware, ``O(V k)`` per sample), with a learned
  time-dependent gain on the orthogonal complement.
- ``"vertex_mlp"`` — :class:`VertexMLP`, one MLP applied at every vertex to that vertex's channels
  (no mixing between vertices, ``O(V · width²)`` per sample): the correction of a guided
  Gaussian-residual network, whose Gaussian estimate carries the spatial information.
- ``"diffusion_net"`` — :class:`~manifold_aps.diffusion.mesh_networks.DiffusionNet`, per-vertex
  features mixed by learned heat diffusion in a truncated Laplacian eigenbasis and by spatial
  gradients (mesh-native, local).
- ``"sum"`` — :class:`SumNetwork`, the sum of two or more of these (e.g. a ``vertex_mlp`` and an
  ``mlp`` as one correction).
- ``"gaussian_residual"`` — :class:`~manifold_aps.diffusion.residual.GaussianResidualNetwork`,
  the exact noise prediction of a PPCA Gaussian plus a preconditioned correction by any of the
  networks above.

All share the time embedding and the padding rule of :mod:`manifold_aps.diffusion.noise_network`.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_aps.diffusion.mesh_networks import DiffusionNet
from manifold_aps.diffusion.noise_network import FiLMBlock, NoiseNetwork, SinusoidalTimeEmbedding
from manifold_aps.diffusion.residual import GaussianResidualNetwork
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import VertexLayout

__all__ = ["UNet1D", "FiLMMLPNetwork", "ResidualMLP", "SpectralMLP", "VertexMLP", "SumNetwork", "NETWORKS",
           "build_network"]


class _ResidualBlock1D(nn.Module):
    """GroupNorm → SiLU → conv, time FiLM (scale, shift), GroupNorm → SiLU → conv, plus a skip."""

    zero_initialised_layer = "conv2"

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        # Zero-initialised last conv: every block starts as its skip path (stable deep U-Nets).
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, h: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        out = self.conv1(nn.functional.silu(self.norm1(h)))
        scale, shift = self.time(time_features)[:, :, None].chunk(2, dim=1)
        out = self.norm2(out) * (1 + scale) + shift
        out = self.conv2(nn.functional.silu(out))
        return out + self.skip(h)


class UNet1D(NoiseNetwork):
    """The paper's 1D-DDPM noise network over ``(B, C, V_pad)``.

    ``levels`` resolutions with channel widths ``channels · channel_multipliers[i]``; at each level
    ``blocks_per_level`` residual blocks (time FiLM), a stride-2 convolution down, and on the way up
    nearest upsampling + convolution with the skip features concatenated (Ho et al. 2020, 1D).

    Args:
        layout: signal layout; ``V_pad`` must be divisible by ``2^(levels−1)``.
        channels: base width (32).
        channel_multipliers: per-level width factors, length ``levels`` ((1, 2, 2, 4)).
        blocks_per_level: residual blocks per level on the way down (1; up uses one more).
        time_dim: time-embedding size (128).
        groups: GroupNorm groups (8).
    """

    name = "unet1d"
    output_starts_at_zero = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, channels: int = 32,
                 channel_multipliers=(1, 2, 2, 4), blocks_per_level: int = 1, time_dim: int = 128, groups: int = 8):
        super().__init__(layout, sde)
        multipliers = tuple(int(m) for m in channel_multipliers)
        levels = len(multipliers)
        if levels < 1 or channels < 1 or blocks_per_level < 1 or min(multipliers) < 1:
            raise ValueError(f"need channels, blocks_per_level and multipliers ≥ 1, got {channels}, "
                             f"{blocks_per_level}, {multipliers}")
        if layout.padded_vertices % 2 ** (levels - 1):
            raise ValueError(f"V_pad = {layout.padded_vertices} is not divisible by 2^(levels-1) = "
                             f"{2 ** (levels - 1)} for {levels} levels; pad to a larger multiple")
        self.config = dict(channels=channels, channel_multipliers=list(multipliers),
                           blocks_per_level=blocks_per_level, time_dim=time_dim, groups=groups)
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, 4 * time_dim), nn.SiLU(),
            nn.Linear(4 * time_dim, 4 * time_dim),
        )
        time_features = 4 * time_dim
        widths = [channels * m for m in multipliers]
        self.stem = nn.Conv1d(layout.num_channels, channels, 3, padding=1)

        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        skip_widths, width = [channels], channels
        for level, level_width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(_ResidualBlock1D(width, level_width, time_features, groups))
                width = level_width
                skip_widths.append(width)
            self.down_blocks.append(blocks)
            if level < levels - 1:
                self.downsamplers.append(nn.Conv1d(width, width, 3, stride=2, padding=1))
                skip_widths.append(width)

        self.middle = nn.ModuleList([_ResidualBlock1D(width, width, time_features, groups),
                                     _ResidualBlock1D(width, width, time_features, groups)])

        self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level + 1):
                blocks.append(_ResidualBlock1D(width + skip_widths.pop(), widths[level], time_features, groups))
                width = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamplers.append(nn.Conv1d(width, width, 3, padding=1))

        self.head = nn.Sequential(nn.GroupNorm(min(groups, width), width), nn.SiLU(),
                                  nn.Conv1d(width, layout.num_channels, 3, padding=1))
        # The network starts by predicting zero noise: the loss starts at E‖e‖² = 1 per entry.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = self.layout.unflatten(x).transpose(1, 2)  # (B, C, V_pad)
        time_features = self.time_embedding(t)
        h = self.stem(h)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, time_features)
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)
        for block in self.middle:
            h = block(h, time_features)
        for level, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), time_features)
            if level < len(self.upsamplers):
                h = self.upsamplers[level](nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h).transpose(1, 2).reshape(batch, -1)


class FiLMMLPNetwork(NoiseNetwork):
    """The FiLM residual MLP shared by :class:`ResidualMLP`, :class:`SpectralMLP` and
    :class:`VertexMLP`: ``W_out LN(h_K)``, ``h_0 = W_in u``, ``h_k = FiLMBlock(h_{k-1}, τ(t))``,
    with a zero-initialised ``W_out``."""

    def _build_trunk(self, in_features: int, out_features: int, width: int, depth: int, time_dim: int):
        if width < 1 or depth < 0:
            raise ValueError(f"need width ≥ 1 and depth ≥ 0, got {width}, {depth}")
        self.time_embedding = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, time_dim),
                                            nn.SiLU())
        self.input = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(FiLMBlock(width, time_dim) for _ in range(depth))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_features))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def _trunk(self, inputs: torch.Tensor, time_features: torch.Tensor) -> torch.Tensor:
        h = self.input(inputs)
        for block in self.blocks:
            h = block(h, time_features)
        return self.output(h)


class ResidualMLP(FiLMMLPNetwork):
    """``ε_θ(x, t) = W_out h_K + c(t) x`` with ``h_0 = W_in x`` and FiLM residual blocks.

    The time-gated identity skip ``c(t) x`` carries the part of the noise that is a multiple of
    ``x_t`` (all of it as ``α_t → 0``), so the hidden layers only learn the data-dependent
    correction. Cost per sample is ``O(d · width)``, independent of the mesh.

    Args:
        layout: signal layout.
        width: hidden width (512).
        depth: number of residual blocks (4).
        time_dim: time-embedding size (128).
    """

    name = "mlp"
    output_starts_at_zero = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, width: int = 512, depth: int = 4,
                 time_dim: int = 128):
        super().__init__(layout, sde)
        self.config = dict(width=width, depth=depth, time_dim=time_dim)
        self._build_trunk(layout.dim, layout.dim, width, depth, time_dim)
        self.skip_gain = nn.Linear(time_dim, 1)
        nn.init.zeros_(self.skip_gain.weight)
        nn.init.zeros_(self.skip_gain.bias)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time_features = self.time_embedding(t)
        return self._trunk(x, time_features) + self.skip_gain(time_features) * x


class SpectralMLP(FiLMMLPNetwork):
    """``ε_θ(x, t) = U f_θ(Uᵀ x, t) + c(t) (x − U Uᵀ x)`` per channel on the real vertices,
    ``c(t) = sigmoid(g_θ(t)) / σ_t``.

    ``U`` ``(V, k)`` is a Euclidean-orthonormal basis of the span of the ``k`` lowest eigenvectors
    of the mesh Laplacian (``L φ = λ M φ``, from
    :func:`manifold_aps.data.gaussian_fields.laplacian_eigenpairs`); Euclidean rather than
    ``M``-orthonormal because the diffusion noise is white in vertex space, so ``U Uᵀ`` splits it
    into independent parts. ``f_θ`` is a FiLM residual MLP on the ``k · C`` coefficients. For
    data smooth on the mesh the complement holds almost only noise, whose ideal prediction is
    ``(x − U Uᵀ x) / σ_t``-like: for complement variance ``τ²`` it is ``σ_t / (α_t² τ² + σ_t²)``,
    which lies in ``[0, 1/σ_t]``, hence the bounded parametrisation of ``c(t)`` (one per channel).

    Args:
        layout: signal layout.
        mesh: the mesh (needed to build; a prior loaded from a file restores ``U`` from its
            weights, so ``mesh=None`` is allowed there).
        num_modes: ``k`` (64), fewer than the mesh's vertices.
        width, depth, time_dim: of the coefficient MLP (256, 3, 128).
    """

    name = "spectral"
    uses_mesh = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, mesh=None, num_modes: int = 64,
                 width: int = 256, depth: int = 3, time_dim: int = 128):
        super().__init__(layout, sde)
        if not 1 <= num_modes < layout.num_vertices:
            raise ValueError(f"num_modes must be in [1, {layout.num_vertices - 1}], got {num_modes}")
        self.config = dict(num_modes=num_modes, width=width, depth=depth, time_dim=time_dim)
        basis = torch.zeros(layout.num_vertices, num_modes)
        if mesh is not None:
            from manifold_aps.data.gaussian_fields import laplacian_eigenpairs

            _, eigenvectors = laplacian_eigenpairs(mesh, num_modes)
            basis = torch.linalg.qr(torch.as_tensor(eigenvectors, dtype=torch.float64))[0].float()
        self.register_buffer("basis", basis)
        channels = layout.num_channels
        self._build_trunk(num_modes * channels, num_modes * channels, width, depth, time_dim)
        self.complement_gain = nn.Linear(time_dim, channels)
        nn.init.zeros_(self.complement_gain.weight)
        nn.init.zeros_(self.complement_gain.bias)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not bool(self.basis.any()):
            raise RuntimeError("SpectralMLP was built without a mesh: pass mesh= or load its weights")
        batch, vertices = x.shape[0], self.layout.num_vertices
        real = self.layout.unflatten(x)[:, :vertices]  # (B, V, C)
        coefficients = torch.einsum("vk,bvc->bkc", self.basis, real)
        time_features = self.time_embedding(t)
        corrected = self._trunk(coefficients.reshape(batch, -1), time_features).reshape(coefficients.shape)
        smooth = torch.einsum("vk,bkc->bvc", self.basis, corrected)
        complement = real - torch.einsum("vk,bkc->bvc", self.basis, coefficients)
        gain = torch.sigmoid(self.complement_gain(time_features)) / self.sde.sigma(t)[:, None]
        prediction = smooth + gain[:, None, :] * complement
        padded = nn.functional.pad(prediction, (0, 0, 0, self.layout.padded_vertices - vertices))
        return padded.reshape(batch, -1)


class VertexMLP(FiLMMLPNetwork):
    """``ε_θ(x, t)_v = W_out h_K(x_v, t)``: the same FiLM residual MLP at every vertex ``v``, on the
    vertex's ``C`` channels only, with a zero-initialised output layer.

    It sees no neighbours, so on its own it can only learn a per-vertex nonlinearity; as the
    correction of a guided :class:`~manifold_aps.diffusion.residual.GaussianResidualNetwork` it reads
    ``x_t`` and the Gaussian's denoised estimate at the vertex (which already pools the whole
    signal) and learns, e.g., that MNIST strokes are 0 or 1 where the Gaussian says 0.3. Every vertex
    is a training example, so it learns in hundreds of steps.

    Args:
        layout: signal layout.
        width: hidden width per vertex (64).
        depth: number of residual blocks (3).
        time_dim: time-embedding size (64).
    """

    name = "vertex_mlp"
    output_starts_at_zero = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, width: int = 64, depth: int = 3,
                 time_dim: int = 64):
        super().__init__(layout, sde)
        self.config = dict(width=width, depth=depth, time_dim=time_dim)
        self._build_trunk(layout.num_channels, layout.num_channels, width, depth, time_dim)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        time_features = self.time_embedding(t)  # (B, T), broadcast over the vertex-major (V_pad, B, W)
        return self._trunk(self.layout.unflatten(x).transpose(0, 1), time_features).transpose(0, 1).reshape(x.shape[0], -1)


class SumNetwork(NoiseNetwork):
    """``Σ_i f_i(x_t, t)``: the sum of networks built by :func:`build_network` on the same layout,
    e.g. a per-vertex ``vertex_mlp`` (fast, local nonlinearity) plus a whole-vector ``mlp``
    (global shape) as the correction of a guided Gaussian residual.

    Args:
        layout: signal layout.
        parts: ``[{"name": ..., "config": {...}}, ...]``, at least two.
        mesh: passed to the parts that use one.
    """

    name = "sum"
    uses_mesh = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, parts: list | None = None, mesh=None):
        super().__init__(layout, sde)
        if not parts or len(parts) < 2 or any(set(part) != {"name", "config"} for part in parts):
            raise ValueError(f"parts must be at least two {{'name': ..., 'config': {{...}}}} dicts, got {parts!r}")
        self.config = dict(parts=[dict(name=part["name"], config=dict(part["config"])) for part in parts])
        self.parts = nn.ModuleList(build_network(part["name"], layout, mesh=mesh, sde=self.sde, **part["config"])
                                   for part in parts)
        self.output_starts_at_zero = all(part.output_starts_at_zero for part in self.parts)

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return sum(part.predict(x, t) for part in self.parts)


#: the networks :func:`build_network` knows, by name
NETWORKS = {network.name: network for network in (UNet1D, ResidualMLP, SpectralMLP, VertexMLP, DiffusionNet,
                                                   SumNetwork, GaussianResidualNetwork)}


def build_network(name: str, layout: VertexLayout, mesh=None, sde: VPSDE | None = None, **config) -> NoiseNetwork:
    """A noise network by name (a key of :data:`~manifold_aps.diffusion.networks.NETWORKS`) with its keyword ``config``.

    ``mesh`` is used by the mesh-aware networks (``uses_mesh``: Laplacian eigenvectors, gradients)
    and ignored by those that read the vector in file order; its vertex count must match the layout.

    Example:
        >>> from manifold_aps import VertexLayout
        >>> net = build_network("mlp", VertexLayout(84), width=64, depth=2)
        >>> net(torch.zeros(3, 96), torch.full((3,), 0.5)).shape
        torch.Size([3, 96])
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    if mesh is not None and mesh.num_vertices != layout.num_vertices:
        raise ValueError(f"mesh has {mesh.num_vertices} vertices but the layout has {layout.num_vertices}")
    if name == GaussianResidualNetwork.name:  # a combinator: its correction is built from the registry first
        config = dict(config)
        correction_layout = layout
        if config.get("guide", False):  # F_θ reads [x_t, Gaussian estimate, mean] at every vertex
            channels = GaussianResidualNetwork.correction_channels(layout.num_channels, True)
            correction_layout = VertexLayout(layout.num_vertices, channels, layout.multiple)
        correction = build_network(config.pop("base", "mlp"), correction_layout, mesh=mesh, sde=sde,
                                   **(config.pop("base_config", None) or {}))
        return GaussianResidualNetwork(layout, correction, sde=sde, **config)
    if getattr(NETWORKS[name], "uses_mesh", False):
        config = dict(config, mesh=mesh)
    return NETWORKS[name](layout, sde=sde, **config)
