"""Affine coupling over a partition of mesh vertices, with a graph network (METHOD.md §4, variant).

Instead of vector halves, the real vertices are split into a passive set ``P`` and an active set
``A``. A Chebyshev graph network (Defferrard et al. 2016, ``torch_geometric.nn.ChebConv``) over the
mesh edges reads, at every vertex, the passive values (active ones zeroed), a passive indicator and
the condition features (e.g. ``y`` and the observed mask), and returns a log-scale and shift that
are applied on the active vertices only:

    x_A = z_A · exp(s_A) + t_A,   x_P = z_P,   (ŝ, t) = GNN([z ⊙ 1_P, 1_P, c]),
    s = bound · tanh(ŝ / bound),   log|det ∂x/∂z| = Σ_A s.

The convolutions are ``ChebConv`` modules (their weights, initialisation and Laplacian scaling
``L̂ = 2 L_sym / λ_max − I``); the Chebyshev recursion ``T_k = 2 L̂ T_{k−1} − T_{k−2}`` is run with
one sparse matrix product per hop over the whole batch, with ``L̂`` computed once. Measured on
84 vertices, batch 32, 64 features: 12 ms per convolution (forward + backward) against 47 ms for
``ChebConv.forward``, which rebuilds the normalised Laplacian and gathers/scatters per edge and
batch item on every call.

A :class:`ConditionalMeshFlow` step is ActNorm, a coupling on ``A_k``, a coupling on ``P_k``; the
partition changes from step to step (seeded random halves, or parities of breadth-first-search
depth from a random root so that most neighbours of an active vertex are passive).
"""

from __future__ import annotations

from collections import deque

import torch
from torch_geometric.nn import ChebConv

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.realnvp import ConditionalFlow

__all__ = ["MeshAffineCoupling", "ConditionalMeshFlow", "vertex_partition"]


def vertex_partition(edge_index: torch.Tensor, num_vertices: int, kind: str = "random", seed: int = 0) -> torch.Tensor:
    """A ``(V,)`` bool mask, True on the active vertices.

    ``"random"``: a seeded uniformly random half. ``"parity"``: odd breadth-first-search depth from a
    seeded random root (unreached vertices get random sides).
    """
    generator = torch.Generator().manual_seed(seed)
    if kind == "random":
        active = torch.zeros(num_vertices, dtype=torch.bool)
        active[torch.randperm(num_vertices, generator=generator)[: num_vertices // 2]] = True
        return active
    if kind != "parity":
        raise ValueError(f"partition must be 'random' or 'parity', got {kind!r}")
    neighbours = [[] for _ in range(num_vertices)]
    for source, target in edge_index.t().tolist():
        neighbours[source].append(target)
    depth = torch.full((num_vertices,), -1, dtype=torch.long)
    root = int(torch.randint(num_vertices, (1,), generator=generator))
    depth[root], queue = 0, deque([root])
    while queue:
        vertex = queue.popleft()
        for other in neighbours[vertex]:
            if depth[other] < 0:
                depth[other] = depth[vertex] + 1
                queue.append(other)
    unreached = depth < 0
    depth[unreached] = torch.randint(2, (int(unreached.sum()),), generator=generator)
    return depth % 2 == 1


class MeshAffineCoupling(torch.nn.Module):
    """Arguments:
        edge_index: ``(2, E)`` mesh edges over the ``num_vertices`` real vertices.
        num_vertices, channels: the vector is ``(B, V · C)`` (vertex-major).
        cond_channels: condition features per vertex (the condition is ``(B, V, cond_channels)``).
        active: ``(V,)`` bool, the vertices this coupling updates.
        hidden, layers, order: width, number and Chebyshev order ``K`` of the graph convolutions.
        scale_bound: bound on ``|s|``.

    Example:
        >>> from manifold_aps import latlon_sphere
        >>> mesh = latlon_sphere(30.0)
        >>> active = vertex_partition(mesh.edge_index, mesh.num_vertices)
        >>> coupling = MeshAffineCoupling(mesh.edge_index, mesh.num_vertices, 1, 2, active, hidden=8)
        >>> x, log_det = coupling(torch.randn(3, mesh.num_vertices), torch.randn(3, mesh.num_vertices, 2))
        >>> log_det.tolist()
        [0.0, 0.0, 0.0]
    """

    def __init__(self, edge_index: torch.Tensor, num_vertices: int, channels: int, cond_channels: int,
                 active: torch.Tensor, hidden: int = 64, layers: int = 3, order: int = 3, scale_bound: float = 2.0):
        super().__init__()
        if active.shape != (num_vertices,) or active.dtype != torch.bool:
            raise ValueError(f"active must be a bool mask of shape ({num_vertices},)")
        self.num_vertices, self.channels = num_vertices, channels
        self.scale_bound = float(scale_bound)
        self.register_buffer("edge_index", edge_index.clone())
        self.register_buffer("active", active.clone())
        widths = [channels + 1 + cond_channels] + [hidden] * layers
        self.convs = torch.nn.ModuleList(ChebConv(a, b, K=order) for a, b in zip(widths[:-1], widths[1:]))
        scaled_index, scaled_weight = self.convs[0].__norm__(edge_index, num_vertices, None, "sym", dtype=torch.float32)
        self.register_buffer("scaled_index", scaled_index.flip(0), persistent=False)  # row = target vertex
        self.register_buffer("scaled_weight", scaled_weight, persistent=False)
        self.head = torch.nn.Linear(widths[-1], 2 * channels)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def _scale_shift(self, values: torch.Tensor, condition: torch.Tensor):
        passive = (~self.active).to(values.dtype)[None, :, None]
        features = torch.cat([values * passive, passive.expand(values.shape[0], -1, 1), condition], dim=-1)
        laplacian = torch.sparse_coo_tensor(self.scaled_index, self.scaled_weight.to(features.dtype),
                                            (self.num_vertices, self.num_vertices), check_invariants=False)
        for conv in self.convs:
            features = torch.nn.functional.silu(self._chebyshev(conv, laplacian, features))
        raw_scale, shift = self.head(features).chunk(2, dim=-1)
        active = 1.0 - passive
        return active * self.scale_bound * torch.tanh(raw_scale / self.scale_bound), active * shift

    @staticmethod
    def _chebyshev(conv: ChebConv, laplacian: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``Σ_k Θ_k T_k(L̂) h + b`` for ``h`` ``(B, V, F)`` (what ``conv(h, edge_index)`` computes)."""
        batch, vertices, width = features.shape

        def hop(values):  # L̂ applied to every batch item at once
            stacked = values.transpose(0, 1).reshape(vertices, batch * width)
            return torch.sparse.mm(laplacian, stacked).reshape(vertices, batch, width).transpose(0, 1)

        previous, current = features, hop(features)
        out = conv.lins[0](previous) + conv.lins[1](current)
        for lin in conv.lins[2:]:
            previous, current = current, 2.0 * hop(current) - previous
            out = out + lin(current)
        return out + conv.bias

    def forward(self, z: torch.Tensor, condition: torch.Tensor):
        """``z`` ``(B, V·C)`` → ``(x, log|det ∂x/∂z|)``."""
        values = z.reshape(z.shape[0], self.num_vertices, self.channels)
        log_scale, shift = self._scale_shift(values, condition)
        x = values * log_scale.exp() + shift
        return x.reshape(z.shape), log_scale.flatten(1).sum(dim=1)

    def inverse(self, x: torch.Tensor, condition: torch.Tensor):
        """``x`` ``(B, V·C)`` → ``(z, log|det ∂z/∂x|)`` (the network reads the unchanged passive values)."""
        values = x.reshape(x.shape[0], self.num_vertices, self.channels)
        log_scale, shift = self._scale_shift(values, condition)
        z = (values - shift) * torch.exp(-log_scale)
        return z.reshape(x.shape), -log_scale.flatten(1).sum(dim=1)


class ConditionalMeshFlow(ConditionalFlow):
    """Conditional flow of mesh couplings; vectors are ``(B, V · C)``, conditions ``(B, V, cond_channels)``.

    Arguments:
        edge_index: ``(2, E)`` edges of the mesh (real vertices only).
        num_vertices, channels, cond_channels: see :class:`MeshAffineCoupling`.
        n_steps: flow steps (each: ActNorm, coupling on ``A_k``, coupling on the complement).
        hidden, layers, order, scale_bound: coupling networks.
        partition: ``"random"`` or ``"parity"`` (see :func:`vertex_partition`), seeded by ``seed + k``.

    Example:
        >>> from manifold_aps import latlon_sphere
        >>> mesh = latlon_sphere(30.0)
        >>> flow = ConditionalMeshFlow(mesh.edge_index, mesh.num_vertices, n_steps=2, hidden=8)
        >>> flow.sample(torch.randn(3, mesh.num_vertices, 2), n=5).shape
        torch.Size([5, 3, 84])
    """

    def __init__(self, edge_index: torch.Tensor, num_vertices: int, channels: int = 1, cond_channels: int = 2,
                 n_steps: int = 8, hidden: int = 64, layers: int = 3, order: int = 3, scale_bound: float = 2.0,
                 partition: str = "random", seed: int = 0):
        super().__init__()
        edge_index = torch.as_tensor(edge_index, dtype=torch.long).cpu()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and int(edge_index.max()) >= num_vertices:
            raise ValueError(f"edge_index refers to vertex {int(edge_index.max())} but there are {num_vertices} vertices")
        if num_vertices < 2 or n_steps < 1:
            raise ValueError(f"need ≥ 2 vertices and ≥ 1 step, got {num_vertices}, {n_steps}")
        self.config = dict(num_vertices=num_vertices, channels=channels, cond_channels=cond_channels, n_steps=n_steps,
                           hidden=hidden, layers=layers, order=order, scale_bound=scale_bound, partition=partition,
                           seed=seed)
        self.num_vertices, self.channels, self.cond_channels = num_vertices, channels, cond_channels
        self.dim = num_vertices * channels
        steps = []
        for k in range(n_steps):
            active = vertex_partition(edge_index, num_vertices, partition, seed + k)
            for part in (active, ~active):
                steps.append(MeshAffineCoupling(edge_index, num_vertices, channels, cond_channels, part, hidden, layers,
                                                order, scale_bound))
            steps.insert(len(steps) - 2, ActNorm(self.dim))
        self.layers = torch.nn.ModuleList(steps)

    def prepare_condition(self, condition: torch.Tensor) -> torch.Tensor:
        if condition.dim() != 3 or condition.shape[1:] != (self.num_vertices, self.cond_channels):
            raise ValueError(f"condition must be (B, {self.num_vertices}, {self.cond_channels}), got {tuple(condition.shape)}")
        return condition
