"""Conditional normalizing flows ``x = G(z, c)``: the layers (ActNorm, permutations, one affine
coupling with an MLP or a graph conditioner, optional condition encoders shared by the couplings)
and the two flows APS uses (:class:`~manifold_aps.flows.realnvp.ConditionalRealNVP`,
:class:`~manifold_aps.flows.mesh_flow.ConditionalMeshFlow`), plus the per-entry monotone map APS may
apply after its Gaussian base (:class:`~manifold_aps.flows.vertexwise.VertexwiseMonotone`).

Every layer is called ``layer(z, c) → (x, log|det ∂x/∂z|)`` with ``layer.inverse(x, c) → (z,
log|det ∂z/∂x|)`` (:class:`~manifold_aps.flows.base.FlowLayer`). All flows share one API
(:class:`~manifold_aps.flows.base.ConditionalFlow`): ``flow(z, c) → (x, log|det ∂x/∂z|)``,
``flow.inverse(x, c) → (z, log|det ∂z/∂x|)``, ``flow.sample(c, n) → (n, B, d)``,
``flow.log_prob(x, c)``, and a ``config`` dict that rebuilds the flow (with ``edge_index`` for the
mesh flow).
"""

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.base import ConditionalFlow, FlowLayer
from manifold_aps.flows.chebyshev import ChebyshevConv, scaled_laplacian
from manifold_aps.flows.conditioners import GraphConditioner, MLPConditioner
from manifold_aps.flows.coupling import AffineCoupling
from manifold_aps.flows.encoders import MeshConditionEncoder, VectorConditionEncoder
from manifold_aps.flows.factory import FLOWS, build_flow
from manifold_aps.flows.mesh_flow import ConditionalMeshFlow, vertex_partition
from manifold_aps.flows.permutation import Permutation
from manifold_aps.flows.realnvp import ConditionalRealNVP
from manifold_aps.flows.vertexwise import VertexwiseMonotone

__all__ = ["FlowLayer", "ConditionalFlow", "ActNorm", "Permutation", "AffineCoupling", "MLPConditioner",
           "GraphConditioner", "VectorConditionEncoder", "MeshConditionEncoder", "ChebyshevConv", "scaled_laplacian",
           "ConditionalRealNVP", "ConditionalMeshFlow", "vertex_partition", "VertexwiseMonotone", "FLOWS", "build_flow"]
