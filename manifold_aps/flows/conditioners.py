"""Conditioner networks of :class:`~manifold_aps.flows.coupling.AffineCoupling`:
``conditioner(z_P, c) → (ŝ, t)``, a raw log-scale and a shift for each active coordinate.

- :class:`MLPConditioner` reads the passive half of a vector and the flat condition
  (RealNVP, docs/method.md, "The sampler").
- :class:`GraphConditioner` reads the passive vertices of a mesh signal and per-vertex condition
  features through Chebyshev graph convolutions (docs/method.md, "The sampler", the mesh-convolution variant).

Both zero-initialise their output layer, so a fresh coupling is the identity.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from manifold_aps.flows.chebyshev import ChebyshevConv, scaled_laplacian

__all__ = ["mlp", "MLPConditioner", "GraphConditioner"]


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


class MLPConditioner(torch.nn.Module):
    """``(ŝ, t) = MLP([z_P, c])``, plus, with aligned condition features, a per-coordinate skip
    ``t += Σ_j w_j ⊙ f_j[A]``.

    Aligned condition features. When the condition carries ``k`` features per coordinate (for APS:
    the measurement ``y`` and the observed mask at the same vertex), the skip (``w`` zero-initialised)
    makes copying ``y`` into the output one learned weight per coordinate instead of a near-identity
    map of rank ``|A|`` that a narrow network cannot represent: without it, a RealNVP with 512 hidden
    units did not even reproduce the observed entries (RMSE equal to the signal's std on a
    1152-vertex torus).

    Shared condition features. With ``encoded_features = m > 0`` the condition arrives as
    ``[e, c]``, ``e`` ``(B, m)`` from the flow's
    :class:`~manifold_aps.flows.encoders.VectorConditionEncoder`: the network reads ``[z_P, e]``
    (``(|P| + m) h`` first-layer weights instead of ``(|P| + cond_dim) h``) and the skip still reads
    the raw ``c``.

    Projected condition. When the flow sets ``projection_at = j`` (a RealNVP without an encoder
    does), the condition arrives prepared: the columns hold every coupling's share of it, this one's,
    ``W_c c`` and the skip's shift (:meth:`condition_projection`), from column ``j`` on: the network
    computes ``W_P z_P + W_c c + b`` and adds the shift without re-reading ``c``; a flow prepares
    them once per condition and repeats them for every draw.

    Arguments:
        passive_size, active_size: ``|P|`` and ``|A|``.
        cond_dim: raw condition length (0 for an unconditional coupling).
        hidden: width of the network; layers: its hidden layers.
        aligned_features: ``k > 0`` when the condition is ``k`` features per coordinate of the
            signal (``(B, d · k)``, coordinate-major).
        active_coordinates: ``(|A|,)`` the signal coordinate of each active entry (the entries may
            have been permuted); needed with ``aligned_features``.
        encoded_features: ``m``, the length of the shared features ``e`` (0: no encoder; the
            network reads ``c`` itself).

    Example:
        >>> conditioner = MLPConditioner(3, 3, cond_dim=2, hidden=8)
        >>> [part.shape for part in conditioner(torch.randn(4, 3), torch.randn(4, 2))]
        [torch.Size([4, 3]), torch.Size([4, 3])]
    """

    def __init__(self, passive_size: int, active_size: int, cond_dim: int = 0, hidden: int = 256, layers: int = 2,
                 aligned_features: int = 0, active_coordinates: torch.Tensor | None = None, encoded_features: int = 0):
        super().__init__()
        self.net = mlp(passive_size + (encoded_features or cond_dim), 2 * active_size, hidden, layers)
        self.aligned_features, self.encoded_features = aligned_features, encoded_features
        self.passive_size = passive_size
        self.projection_at: int | None = None
        self.skip = None
        if aligned_features:
            if active_coordinates is None or active_coordinates.shape != (active_size,):
                raise ValueError(f"aligned features need the ({active_size},) active_coordinates")
            self.skip = torch.nn.Parameter(torch.zeros(active_size, aligned_features))
            self.register_buffer("active_coordinates", active_coordinates.clone())

    def forward(self, passive: torch.Tensor, condition: torch.Tensor | None = None):
        """``z_P`` ``(B, |P|)`` and ``c`` ``(B, cond_dim)`` (``[e, c]``, ``(B, m + cond_dim)``, with
        shared features; when projected, the prepared condition holding :meth:`condition_projection`
        at ``projection_at``) →
        ``(ŝ, t)``, each ``(B, |A|)``."""
        if self.projection_at is not None:
            first = self.net[0]
            at, width = self.projection_at, first.out_features
            output = self.net[1:](torch.nn.functional.linear(passive, first.weight[:, : self.passive_size],
                                                             first.bias) + condition[:, at: at + width])
            raw_scale, shift = output.chunk(2, dim=1)
            if self.skip is not None:
                shift = shift + condition[:, at + width: at + width + self.skip.shape[0]]
            return raw_scale, shift
        read, raw = condition, condition
        if self.encoded_features:
            read, raw = condition[:, : self.encoded_features], condition[:, self.encoded_features:]
        features = passive if read is None else torch.cat([passive, read], dim=1)
        raw_scale, shift = self.net(features).chunk(2, dim=1)
        if self.skip is not None:
            shift = shift + self.skip_shift(raw)
        return raw_scale, shift

    def skip_shift(self, condition: torch.Tensor) -> torch.Tensor:
        """``Σ_j w_j ⊙ f_j[A]`` ``(B, |A|)``: the aligned skip's shift from the raw condition."""
        aligned = condition.reshape(condition.shape[0], -1, self.aligned_features)
        return (aligned.index_select(1, self.active_coordinates) * self.skip).sum(dim=-1)

    @property
    def projection_width(self) -> int:
        """Columns of :meth:`condition_projection`: the first layer's width, plus ``|A|`` with a skip."""
        return self.net[0].out_features + (0 if self.skip is None else self.skip.shape[0])

    def condition_projection(self, condition: torch.Tensor) -> torch.Tensor:
        """``[W_c c, skip]`` ``(B, projection_width)``: the raw condition's share of the first layer
        (no bias), followed by the skip's shift (:meth:`skip_shift`) when there is a skip."""
        projected = torch.nn.functional.linear(condition, self.net[0].weight[:, self.passive_size:])
        if self.skip is None:
            return projected
        return torch.cat([projected, self.skip_shift(condition)], dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # package 0.1.0 stored ``active_coordinates`` on every coupling; only those with a skip use it
        if self.skip is None:
            state_dict.pop(prefix + "active_coordinates", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class GraphConditioner(torch.nn.Module):
    """``(ŝ, t) = head(GNN([z ⊙ 1_P, 1_P, c]))`` on the active vertices, with a Chebyshev GNN
    (:class:`~manifold_aps.flows.chebyshev.ChebyshevConv`, SiLU after each) over the mesh edges.

    At every vertex the network reads the passive values (zero on active vertices), a passive
    indicator and the condition features (e.g. ``y`` and the observed mask).

    Arguments:
        edge_index: ``(2, E)`` mesh edges over the ``num_vertices`` real vertices.
        num_vertices, channels: the signal is ``(B, V · C)`` (vertex-major).
        cond_channels: condition features per vertex (the condition is ``(B, V, cond_channels)``).
        active: ``(V,)`` bool, the vertices the coupling updates (its mask is
            ``active.repeat_interleave(channels)``).
        hidden, layers, order: width, number and Chebyshev order ``K`` of the graph convolutions.
        recompute: keep only the inputs for the backward pass and recompute the network's
            activations there (``torch.utils.checkpoint``): training memory of ``B · V · hidden``
            per convolution and Chebyshev term traded for one more forward pass.

    Example:
        >>> from manifold_aps import latlon_sphere
        >>> mesh = latlon_sphere(30.0)
        >>> active = torch.arange(mesh.num_vertices) % 2 == 1
        >>> conditioner = GraphConditioner(mesh.edge_index, mesh.num_vertices, 1, 2, active, hidden=8)
        >>> raw_scale, shift = conditioner(torch.randn(3, 42), torch.randn(3, mesh.num_vertices, 2))
        >>> raw_scale.shape
        torch.Size([3, 42])
    """

    def __init__(self, edge_index: torch.Tensor, num_vertices: int, channels: int, cond_channels: int,
                 active: torch.Tensor, hidden: int = 64, layers: int = 3, order: int = 3, recompute: bool = False):
        super().__init__()
        if active.shape != (num_vertices,) or active.dtype != torch.bool:
            raise ValueError(f"active must be a bool mask of shape ({num_vertices},)")
        self.num_vertices, self.channels, self.recompute = num_vertices, channels, recompute
        self.register_buffer("edge_index", edge_index.clone())
        self.register_buffer("active", active.clone())
        widths = [channels + 1 + cond_channels] + [hidden] * layers
        self.convs = torch.nn.ModuleList(ChebyshevConv(a, b, order) for a, b in zip(widths[:-1], widths[1:]))
        laplacian_index, laplacian_weight = scaled_laplacian(edge_index, num_vertices)
        self.register_buffer("laplacian_index", laplacian_index, persistent=False)
        self.register_buffer("laplacian_weight", laplacian_weight, persistent=False)
        self.head = torch.nn.Linear(widths[-1], 2 * channels)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, passive: torch.Tensor, condition: torch.Tensor):
        """``z_P`` ``(B, |P| · C)`` and ``c`` ``(B, V, cond_channels)`` → ``(ŝ, t)``, each ``(B, |A| · C)``.

        The features travel vertex-major, ``(V, B, F)``, so that every hop is one sparse product
        without a copy and the backward pass keeps one tensor per Chebyshev term."""
        if self.recompute and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._evaluate, passive, condition, use_reentrant=False)
        return self._evaluate(passive, condition)

    def _evaluate(self, passive: torch.Tensor, condition: torch.Tensor):
        batch = passive.shape[0]
        values = passive.new_zeros(self.num_vertices, batch, self.channels)
        values[~self.active] = passive.reshape(batch, -1, self.channels).transpose(0, 1)
        is_passive = (~self.active).to(passive.dtype)[:, None, None].expand(-1, batch, 1)
        features = torch.cat([values, is_passive, condition.transpose(0, 1)], dim=-1)
        laplacian = torch.sparse_coo_tensor(self.laplacian_index, self.laplacian_weight.to(features.dtype),
                                            (self.num_vertices, self.num_vertices), check_invariants=False)
        for conv in self.convs:
            features = torch.nn.functional.silu(conv(features, laplacian, vertex_major=True))
        raw_scale, shift = self.head(features[self.active]).transpose(0, 1).chunk(2, dim=-1)
        return raw_scale.reshape(batch, -1), shift.reshape(batch, -1)
