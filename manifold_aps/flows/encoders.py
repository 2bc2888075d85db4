"""Condition encoders: features of the condition computed once per flow call (once per measurement
when sampling) and read by every coupling, so that depth and width are not paid ``V``-fold.

Without an encoder each RealNVP coupling's first layer reads the whole flat condition
``c ∈ R^{k·V}`` (``k`` features per vertex, e.g. ``y``, the observed mask, the Gaussian base's mean
and scale): ``2 K (d/2 + k V) h`` weights for ``K`` steps of width ``h``. With an encoder the
condition is read once,

    e = E(c),   coupling j reads [z_P, e]   (``(d/2 + m) h`` weights each, ``k V m`` once),

and a mesh flow's couplings read per-vertex features ``[c_v, e_v]`` from a graph encoder run once
instead of each coupling filtering the raw condition again.

- :class:`VectorConditionEncoder`: an MLP ``R^{cond_dim} → R^m`` (RealNVP).
- :class:`MeshConditionEncoder`: Chebyshev graph convolutions ``(V, k) → (V, k + f)`` that keep
  the raw features and append ``f`` learned ones (mesh flow).

The encoders are ordinary feature extractors (default initialisation): a fresh flow is still the
identity because every coupling's output layer starts at zero.
"""

from __future__ import annotations

import torch

from manifold_aps.flows.chebyshev import ChebyshevConv, scaled_laplacian

__all__ = ["VectorConditionEncoder", "MeshConditionEncoder"]


class VectorConditionEncoder(torch.nn.Module):
    """``e = SiLU(W_L … SiLU(W_1 c))``: ``layers`` linear maps of width ``features``.

    Arguments:
        cond_dim: length of the flat condition ``c``.
        features: ``m``, the length of ``e``.
        layers: linear maps (≥ 1).

    Example:
        >>> VectorConditionEncoder(40, 8)(torch.randn(3, 40)).shape
        torch.Size([3, 8])
    """

    def __init__(self, cond_dim: int, features: int, layers: int = 2):
        super().__init__()
        if cond_dim < 1 or features < 1 or layers < 1:
            raise ValueError(f"need cond_dim, features and layers ≥ 1, got {cond_dim}, {features}, {layers}")
        blocks, width = [], cond_dim
        for _ in range(layers):
            blocks += [torch.nn.Linear(width, features), torch.nn.SiLU()]
            width = features
        self.net = torch.nn.Sequential(*blocks)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``(B, cond_dim)`` → ``(B, features)``."""
        return self.net(condition)


class MeshConditionEncoder(torch.nn.Module):
    """``[c, h_L]`` with ``h_0 = c``, ``h_l = SiLU(ChebConv_l(h_{l−1}))`` of width ``features``
    (:class:`~manifold_aps.flows.chebyshev.ChebyshevConv` over the mesh, Laplacian built once).

    Arguments:
        edge_index: ``(2, E)`` mesh edges over ``num_vertices`` vertices.
        cond_channels: ``k``, condition features per vertex.
        features: ``f``, learned features appended per vertex.
        layers, order: number and Chebyshev order of the convolutions.

    Shapes:
        ``(B, V, k)`` → ``(B, V, k + f)``. Cost ``O(B (E f + V K f²))`` per layer: linear in the edges.

    Example:
        >>> from manifold_aps import latlon_sphere
        >>> mesh = latlon_sphere(30.0)
        >>> encoder = MeshConditionEncoder(mesh.edge_index, mesh.num_vertices, 2, 8)
        >>> encoder(torch.randn(3, mesh.num_vertices, 2)).shape
        torch.Size([3, 84, 10])
    """

    def __init__(self, edge_index: torch.Tensor, num_vertices: int, cond_channels: int, features: int,
                 layers: int = 2, order: int = 3):
        super().__init__()
        if cond_channels < 1 or features < 1 or layers < 1:
            raise ValueError(f"need cond_channels, features and layers ≥ 1, got {cond_channels}, {features}, "
                             f"{layers}")
        self.num_vertices = num_vertices
        widths = [cond_channels] + [features] * layers
        self.convs = torch.nn.ModuleList(ChebyshevConv(a, b, order) for a, b in zip(widths[:-1], widths[1:]))
        laplacian_index, laplacian_weight = scaled_laplacian(edge_index, num_vertices)
        self.register_buffer("laplacian_index", laplacian_index, persistent=False)
        self.register_buffer("laplacian_weight", laplacian_weight, persistent=False)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """``(B, V, k)`` → ``(B, V, k + f)``."""
        laplacian = torch.sparse_coo_tensor(self.laplacian_index, self.laplacian_weight.to(condition.dtype),
                                            (self.num_vertices, self.num_vertices), check_invariants=False)
        features = condition.transpose(0, 1)  # vertex-major between convolutions (see GraphConditioner)
        for conv in self.convs:
            features = torch.nn.functional.silu(conv(features, laplacian, vertex_major=True))
        return torch.cat([condition, features.transpose(0, 1)], dim=-1)
