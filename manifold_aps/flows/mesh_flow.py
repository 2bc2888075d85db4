"""Conditional flow of affine couplings over partitions of mesh vertices (docs/method.md, "The
sampler: a conditional flow trained without clean data", the mesh-convolution variant).

Instead of vector halves, the real vertices are split into an active set ``A`` and a passive set
``P``; a coupling updates the values on ``A`` with a log-scale and shift that a Chebyshev graph
network (:class:`~manifold_aps.flows.conditioners.GraphConditioner`) computes from the values on
``P`` and the condition features at every vertex:

    x_A = z_A · exp(s_A) + t_A,   x_P = z_P,   (ŝ, t) = GNN([z ⊙ 1_P, 1_P, c]),   s = bound · tanh(ŝ / bound).

A step is ActNorm, a coupling on ``A_k``, a coupling on ``P_k``; the partition changes from step to
step (seeded random halves, or parities of breadth-first-search depth from a random root so that
most neighbours of an active vertex are passive).

Cost. Every operation is per vertex or per edge (a Chebyshev hop is one sparse product with the
Laplacian built once), so a step costs ``O(B (E h + V K h²))`` per convolution: linear in the mesh
size, but with a large constant at a wide ``h``: profiled on the 1152-vertex torus (depth 8,
``h = 256``, 2 convolutions, ``K = 3``, batch 8, one thread) 78 % of a training step was the dense
per-vertex ``h × h`` products and 6 % the sparse hops; memory is the ``B · V · h`` activations each
convolution keeps for the backward pass (docs/performance.md, "Flow cost against mesh size").
With ``condition_features = f`` a :class:`~manifold_aps.flows.encoders.MeshConditionEncoder` runs
once per flow call (once per measurement when sampling) and the couplings read its per-vertex
features ``[c, e]``, so they can stay narrow (``h`` ≈ 32–64).
"""

from __future__ import annotations

from collections import deque

import torch

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.base import ConditionalFlow
from manifold_aps.flows.conditioners import GraphConditioner
from manifold_aps.flows.coupling import AffineCoupling
from manifold_aps.flows.encoders import MeshConditionEncoder

__all__ = ["ConditionalMeshFlow", "vertex_partition"]


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


class ConditionalMeshFlow(ConditionalFlow):
    """Conditional flow of mesh couplings; vectors are ``(B, V · C)``, conditions ``(B, V, cond_channels)``.

    Arguments:
        edge_index: ``(2, E)`` edges of the mesh (real vertices only).
        num_vertices, channels, cond_channels: see :class:`~manifold_aps.flows.conditioners.GraphConditioner`.
        depth: flow steps (each: ActNorm, coupling on ``A_k``, coupling on the complement).
        hidden, layers, order: the graph networks' width, convolutions and Chebyshev order.
        scale_bound: bound on each coupling's per-coordinate log-scale.
        partition: ``"random"`` or ``"parity"`` (see :func:`vertex_partition`), seeded by ``seed + k``.
        condition_features: ``f > 0``: a shared graph encoder (two convolutions of width ``f``)
            appends ``f`` features per vertex to the condition once, and the couplings read
            ``[c, e]``; 0 (default): each coupling reads the raw condition.
        recompute: recompute the couplings' activations in the backward pass instead of keeping
            them (see :class:`~manifold_aps.flows.conditioners.GraphConditioner`): training
            memory of about one coupling instead of all of them, for about one more forward pass.
        n_steps: deprecated name of ``depth``.

    Example:
        >>> from manifold_aps import latlon_sphere
        >>> mesh = latlon_sphere(30.0)
        >>> flow = ConditionalMeshFlow(mesh.edge_index, mesh.num_vertices, depth=2, hidden=8)
        >>> flow.sample(torch.randn(3, mesh.num_vertices, 2), n=5).shape
        torch.Size([5, 3, 84])
    """

    def __init__(self, edge_index: torch.Tensor, num_vertices: int, channels: int = 1, cond_channels: int = 2,
                 depth: int = 8, hidden: int = 64, layers: int = 3, order: int = 3, scale_bound: float = 2.0,
                 partition: str = "random", seed: int = 0, condition_features: int = 0,
                 recompute: bool = False, n_steps: int | None = None):
        super().__init__()
        depth = self._depth(depth, n_steps)
        edge_index = torch.as_tensor(edge_index, dtype=torch.long).cpu()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be (2, E), got {tuple(edge_index.shape)}")
        if edge_index.numel() and int(edge_index.max()) >= num_vertices:
            raise ValueError(f"edge_index refers to vertex {int(edge_index.max())} but there are {num_vertices} vertices")
        if num_vertices < 2 or depth < 1:
            raise ValueError(f"need ≥ 2 vertices and depth ≥ 1, got {num_vertices}, {depth}")
        if condition_features < 0:
            raise ValueError(f"condition_features must be ≥ 0, got {condition_features}")
        self.config = dict(num_vertices=num_vertices, channels=channels, cond_channels=cond_channels, depth=depth,
                           hidden=hidden, layers=layers, order=order, scale_bound=scale_bound, partition=partition,
                           seed=seed, condition_features=condition_features, recompute=recompute)
        self.num_vertices, self.channels, self.cond_channels = num_vertices, channels, cond_channels
        self.dim = num_vertices * channels
        self.encoder = (MeshConditionEncoder(edge_index, num_vertices, cond_channels, condition_features, order=order)
                        if condition_features else None)
        steps = []
        for k in range(depth):
            active = vertex_partition(edge_index, num_vertices, partition, seed + k)
            steps.append(ActNorm(self.dim))
            for part in (active, ~active):
                conditioner = GraphConditioner(edge_index, num_vertices, channels, cond_channels + condition_features,
                                               part, hidden, layers, order, recompute)
                steps.append(AffineCoupling(part.repeat_interleave(channels), conditioner, scale_bound))
        self.layers = torch.nn.ModuleList(steps)

    def prepare_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """The condition, checked to be ``(B, V, cond_channels)``; with a shared encoder ``[c, E(c)]``."""
        if condition.dim() != 3 or condition.shape[1:] != (self.num_vertices, self.cond_channels):
            raise ValueError(f"condition must be (B, {self.num_vertices}, {self.cond_channels}), got {tuple(condition.shape)}")
        return condition if self.encoder is None else self.encoder(condition)
