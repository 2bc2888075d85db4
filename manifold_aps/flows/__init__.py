"""Conditional normalizing flows ``x = G(z, c)``: ActNorm, affine couplings on vector halves or on
mesh vertex partitions, and the two flows APS uses (:class:`~manifold_aps.flows.realnvp.ConditionalRealNVP`,
:class:`~manifold_aps.flows.mesh_coupling.ConditionalMeshFlow`).

All flows share one API: ``flow(z, c) → (x, log|det ∂x/∂z|)``, ``flow.inverse(x, c) → (z,
log|det ∂z/∂x|)``, ``flow.sample(c, n) → (n, B, d)``, ``flow.log_prob(x, c)``, and a ``config``
dict that rebuilds the flow (with ``edge_index`` for the mesh flow).
"""

from manifold_aps.flows.actnorm import ActNorm
from manifold_aps.flows.coupling import AffineCoupling
from manifold_aps.flows.mesh_coupling import ConditionalMeshFlow, MeshAffineCoupling, vertex_partition
from manifold_aps.flows.realnvp import ConditionalFlow, ConditionalRealNVP

__all__ = ["ActNorm", "AffineCoupling", "MeshAffineCoupling", "ConditionalFlow", "ConditionalRealNVP",
           "ConditionalMeshFlow", "vertex_partition"]
