"""Mesh-native noise network: DiffusionNet blocks (learned heat diffusion + spatial gradients + per-vertex MLPs).

Sharp, Attaiki, Crane, Ovsjanikov 2022, "DiffusionNet: Discretization agnostic learning on
surfaces" (https://arxiv.org/abs/2012.00888). Every vertex carries a feature vector ``h_v``
``(width,)``; a block mixes it with its surroundings in three dense steps:

- heat diffusion with a learned time ``τ_c ≥ 0`` per feature channel, in the truncated
  eigenbasis ``L φ_k = λ_k M φ_k`` (``Φᵀ M Φ = I``): ``h ← Φ diag(e^{−λ τ_c}) Φᵀ M h``;
- spatial-gradient features: ``∇h_c`` at each vertex in a local tangent frame (a 2-vector, from
  the gradients of the eigenvectors, so also a dense matmul), combined rotation-invariantly as
  ``tanh(Re(conj(∇h) · A ∇h))`` with a learned complex ``A``;
- a per-vertex MLP on ``[h, diffused h, gradient features]`` with FiLM time conditioning, added
  residually.

Hand-written rather than taken from torch_geometric: the operators are ``(V, k)`` dense matrices
precomputed once (scipy ``eigsh`` + a least-squares gradient on each vertex's 1-ring), so a block is
a handful of batched matmuls — what a CPU does fastest — and the network is local (it learns
stroke-scale structure without seeing the vector in file order).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from manifold_aps.diffusion.noise_network import NoiseNetwork, SinusoidalTimeEmbedding
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.signals import VertexLayout

__all__ = ["eigenbasis_gradients", "DiffusionNetBlock", "DiffusionNet"]


def eigenbasis_gradients(vertices: np.ndarray, edge_index: np.ndarray, eigenvectors: np.ndarray) -> np.ndarray:
    """Tangent-plane gradients ``(V, 2, k)`` of the columns of ``eigenvectors`` ``(V, k)``.

    At vertex ``i`` the normal is the least-variance direction of its 1-ring offsets; the frame is
    the first neighbour's projected offset and its cross product with the normal. The gradient is
    the least-squares fit ``g = argmin Σ_j (⟨g, d_ij⟩ − (φ_j − φ_i))²`` over neighbours ``j``, with
    ``d_ij`` the offset in that frame.
    """
    num_vertices = vertices.shape[0]
    neighbours = [[] for _ in range(num_vertices)]
    for source, target in edge_index.T:
        if source != target:
            neighbours[source].append(target)
    gradients = np.zeros((num_vertices, 2, eigenvectors.shape[1]))
    for i, ring in enumerate(neighbours):
        if len(set(ring)) < 2:  # isolated or dangling vertex: gradient left at zero
            continue
        ring = np.unique(ring)
        offsets = vertices[ring] - vertices[i]
        normal = np.linalg.svd(offsets - offsets.mean(0), full_matrices=False)[2][-1] if len(ring) > 2 else \
            np.cross(offsets[0], offsets[1])
        first = offsets[0] - offsets[0] @ normal * normal / (normal @ normal)
        first /= np.linalg.norm(first)
        second = np.cross(normal / np.linalg.norm(normal), first)
        planar = np.stack([offsets @ first, offsets @ second], axis=1)  # (n, 2)
        solve = np.linalg.lstsq(planar, eigenvectors[ring] - eigenvectors[i], rcond=None)[0]  # (2, k)
        gradients[i] = solve
    return gradients


class DiffusionNetBlock(nn.Module):
    """``h + MLP([h, diffuse(h), tanh(Re(conj(∇h) · A ∇h))])`` with FiLM time conditioning.

    Args:
        width: feature channels per vertex.
        time_dim: size of the time features.
    """

    zero_initialised_layer = "outer"

    def __init__(self, width: int, time_dim: int):
        super().__init__()
        self.log_diffusion_time = nn.Parameter(torch.zeros(width))  # set by DiffusionNet from the spectrum
        self.gradient_real = nn.Linear(width, width, bias=False)
        self.gradient_imaginary = nn.Linear(width, width, bias=False)
        self.inner = nn.Linear(3 * width, width)
        self.time = nn.Linear(time_dim, 2 * width)
        self.outer = nn.Linear(width, width)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, h: torch.Tensor, time_features: torch.Tensor, analysis: torch.Tensor, synthesis: torch.Tensor,
                eigenvalues: torch.Tensor) -> torch.Tensor:
        """``h`` ``(V, B, W)`` (vertex-major, so the spectral steps are plain matrix products);
        ``analysis`` ``MΦ`` ``(V, k)``; ``synthesis`` ``[Φ; ∂₁Φ; ∂₂Φ]`` ``(3V, k)``."""
        vertices, batch, width = h.shape
        coefficients = (analysis.T @ h.reshape(vertices, -1)).reshape(-1, batch, width)
        decay = torch.exp(-eigenvalues[:, None] * self.log_diffusion_time.exp()[None, :])  # (k, W)
        synthesised = (synthesis @ (coefficients * decay[:, None, :]).reshape(coefficients.shape[0], -1))
        diffused, gx, gy = synthesised.reshape(3, vertices, batch, width).unbind(0)
        ax = self.gradient_real(gx) - self.gradient_imaginary(gy)
        ay = self.gradient_real(gy) + self.gradient_imaginary(gx)
        gradient_features = torch.tanh(gx * ax + gy * ay)
        scale, shift = self.time(time_features)[None].chunk(2, dim=2)
        hidden = self.inner(torch.cat([h, diffused, gradient_features], dim=2))
        hidden = nn.functional.silu(hidden * (1 + scale) + shift)
        return h + self.outer(hidden)


class DiffusionNet(NoiseNetwork):
    """``ε_θ(x_t, t)``: per-vertex lift ``C → width``, ``depth`` :class:`~manifold_aps.diffusion.mesh_networks.DiffusionNetBlock` s, a
    zero-initialised per-vertex projection back to ``C``.

    Args:
        layout: signal layout.
        mesh: the mesh (needed to build; a prior loaded from a file restores the operators from its
            buffers, so ``mesh=None`` is allowed there).
        num_modes: eigenbasis size ``k`` (64).
        width: per-vertex feature channels (32).
        depth: number of blocks (4).
        time_dim: time-embedding size (64).

    Shapes: ``(B, V_pad · C) → (B, V_pad · C)``; cost ``O(depth · V · width · (k + width))`` per sample.
    """

    name = "diffusion_net"
    uses_mesh = True
    output_starts_at_zero = True

    def __init__(self, layout: VertexLayout, sde: VPSDE | None = None, mesh=None, num_modes: int = 64,
                 width: int = 32, depth: int = 4, time_dim: int = 64):
        super().__init__(layout, sde)
        vertices = layout.num_vertices
        if not 1 <= num_modes < vertices:
            raise ValueError(f"num_modes must be in [1, {vertices - 1}], got {num_modes}")
        if width < 1 or depth < 1:
            raise ValueError(f"need width ≥ 1 and depth ≥ 1, got {width}, {depth}")
        self.config = dict(num_modes=num_modes, width=width, depth=depth, time_dim=time_dim)
        self.register_buffer("analysis", torch.zeros(vertices, num_modes))  # MΦ
        self.register_buffer("synthesis", torch.zeros(3 * vertices, num_modes))  # [Φ; ∂₁Φ; ∂₂Φ]
        self.register_buffer("eigenvalues", torch.zeros(num_modes))
        channels = layout.num_channels
        self.time_embedding = nn.Sequential(SinusoidalTimeEmbedding(time_dim), nn.Linear(time_dim, time_dim), nn.SiLU())
        self.lift = nn.Linear(channels, width)
        self.blocks = nn.ModuleList(DiffusionNetBlock(width, time_dim) for _ in range(depth))
        self.project = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, channels))
        nn.init.zeros_(self.project[-1].weight)
        nn.init.zeros_(self.project[-1].bias)
        if mesh is not None:
            self._set_operators(mesh)

    def _set_operators(self, mesh):
        from manifold_aps.data.gaussian_fields import laplacian_eigenpairs

        eigenvalues, eigenvectors = laplacian_eigenpairs(mesh, self.config["num_modes"])
        mass = mesh.mass.detach().cpu().numpy().astype(np.float64)
        vertices, edges = mesh.vertices.cpu().numpy(), mesh.edge_index.cpu().numpy()
        # in units of the mean edge length, so gradient features are O(1) changes per edge on any mesh
        edge_length = np.linalg.norm(vertices[edges[0]] - vertices[edges[1]], axis=1).mean()
        gradients = edge_length * eigenbasis_gradients(vertices, edges, eigenvectors)
        self.analysis.copy_(torch.as_tensor(mass[:, None] * eigenvectors))
        self.synthesis.copy_(torch.as_tensor(np.concatenate([eigenvectors, gradients[:, 0], gradients[:, 1]])))
        self.eigenvalues.copy_(torch.as_tensor(eigenvalues))
        # Diffusion times spread log-uniformly from the finest to the coarsest resolved scale.
        positive = eigenvalues[eigenvalues > 0]
        low, high = np.log(1.0 / positive.max()), np.log(1.0 / positive.min())
        with torch.no_grad():
            for block in self.blocks:
                block.log_diffusion_time.copy_(torch.linspace(low, high, self.config["width"]))

    def predict(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not bool(self.analysis.any()):
            raise RuntimeError("DiffusionNet was built without a mesh: pass mesh= or load its weights")
        batch, vertices = x.shape[0], self.layout.num_vertices
        h = self.lift(self.layout.unflatten(x)[:, :vertices].transpose(0, 1))  # (V, B, W)
        time_features = self.time_embedding(t)
        for block in self.blocks:
            h = block(h, time_features, self.analysis, self.synthesis, self.eigenvalues)
        prediction = self.project(h).transpose(0, 1)  # (B, V, C)
        padded = nn.functional.pad(prediction, (0, 0, 0, self.layout.padded_vertices - vertices))
        return padded.reshape(batch, -1)
