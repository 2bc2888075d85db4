"""A fixed permutation of the coordinates, ``x = z[:, order]`` (volume preserving: log-det 0)."""

from __future__ import annotations

import torch

from manifold_aps.flows.base import FlowLayer

__all__ = ["Permutation"]


class Permutation(FlowLayer):
    """Arguments:
        order: ``(d,)`` a permutation of ``0, …, d − 1``; coordinate ``i`` of ``x`` is ``z[:, order[i]]``.

    Example:
        >>> layer = Permutation(torch.tensor([2, 0, 1]))
        >>> layer(torch.tensor([[10.0, 11.0, 12.0]]))[0].tolist()
        [[12.0, 10.0, 11.0]]
    """

    def __init__(self, order: torch.Tensor):
        super().__init__()
        self.register_buffer("order", order.clone())
        self.register_buffer("inverse_order", torch.argsort(order))

    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``z → x``; returns ``(x, 0)``; ignores ``condition``."""
        return z.index_select(1, self.order), z.new_zeros(z.shape[0])

    def inverse(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x → z``; returns ``(z, 0)``."""
        return x.index_select(1, self.inverse_order), x.new_zeros(x.shape[0])
