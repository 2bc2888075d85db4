"""Base classes of the conditional flows: one invertible layer, and a flow that chains layers.

Every layer has the same call, in the sampling direction ``z → x`` and back,

    layer(z, c) → (x, log|det ∂x/∂z|),      layer.inverse(x, c) → (z, log|det ∂z/∂x|),

with log-determinants per sample ``(B,)``; layers that ignore the condition ``c`` accept it all the
same. A flow ``G = f_L ∘ … ∘ f_1`` sums its layers' log-determinants and has the density

    log q(x | c) = log N(z; 0, I) + log|det ∂z/∂x|,      z = G⁻¹(x, c).
"""

from __future__ import annotations

import abc
import warnings

import torch

__all__ = ["FlowLayer", "ConditionalFlow"]


class FlowLayer(torch.nn.Module, abc.ABC):
    """An invertible map ``x = f(z; c)`` of vectors ``(B, d)`` with a tractable log-determinant."""

    @abc.abstractmethod
    def forward(self, z: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``z → x``; returns ``(x, log|det ∂x/∂z|)``."""

    @abc.abstractmethod
    def inverse(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x → z``; returns ``(z, log|det ∂z/∂x|)``."""


class ConditionalFlow(torch.nn.Module):
    """A chain of :class:`FlowLayer` ``layers`` with ``forward``/``inverse``, ``sample`` and ``log_prob``.

    Subclasses fill ``self.layers``, set ``self.dim`` and ``self.config`` (the keyword arguments that
    rebuild them) and may override :meth:`prepare_condition`, which checks the condition and puts it
    in the form the layers read (e.g. runs a shared condition encoder). :meth:`sample` prepares each
    condition once and repeats the prepared form for its ``n`` draws.
    """

    dim: int
    config: dict
    layers: torch.nn.ModuleList

    def prepare_condition(self, condition: torch.Tensor) -> torch.Tensor:
        """The condition as the layers read it (here: unchanged)."""
        return condition

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``(B, d)`` → ``(x, log|det ∂x/∂z|)`` with ``x`` ``(B, d)`` and the log-det ``(B,)``."""
        self._check(z, condition)
        return self._forward_prepared(z, self.prepare_condition(condition))

    def _forward_prepared(self, z: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for layer in self.layers:
            z, step = layer(z, condition)
            log_det = log_det + step
        return z, log_det

    def inverse(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, d)`` → ``(z, log|det ∂z/∂x|)``."""
        self._check(x, condition)
        condition = self.prepare_condition(condition)
        log_det = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for layer in reversed(self.layers):
            x, step = layer.inverse(x, condition)
            log_det = log_det + step
        return x, log_det

    def log_prob(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``log q(x | c) = log N(z; 0, I) + log|det ∂z/∂x|``."""
        z, log_det = self.inverse(x, condition)
        return -0.5 * (z**2).sum(dim=1) - 0.5 * self.dim * torch.log(torch.tensor(2 * torch.pi)) + log_det

    def sample(self, condition: torch.Tensor, n: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws for each of the ``B`` conditions, ``(n, B, d)``, in one network evaluation."""
        if n < 1:
            raise ValueError(f"n must be ≥ 1, got {n}")
        z = torch.randn(n, condition.shape[0], self.dim, generator=generator, device=condition.device,
                        dtype=condition.dtype)
        return self.push(z, condition)

    def push(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """``x = G(z, c)`` for ``n`` inputs per condition, ``z`` ``(n, B, d)`` → ``(n, B, d)``, each
        condition prepared once and repeated for its ``n`` inputs."""
        n, batch = z.shape[:2]
        prepared = self.prepare_condition(condition)  # once per condition, not once per draw
        repeated = prepared.repeat(n, *([1] * (prepared.dim() - 1)))
        return self._forward_prepared(z.reshape(n * batch, self.dim), repeated)[0].reshape(n, batch, self.dim)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, condition: torch.Tensor):
        """Data-dependent ActNorm initialisation: pass example outputs ``x`` through ``x → z``."""
        training = self.training
        self.train()
        self.inverse(x, condition)
        self.train(training)

    @staticmethod
    def _depth(depth: int, n_steps: int | None) -> int:
        """``depth``, or the deprecated ``n_steps`` (its name up to package 0.1.0, kept in stored configs)."""
        if n_steps is None:
            return depth
        warnings.warn("n_steps is deprecated: the number of coupling steps is now called depth",
                      DeprecationWarning, stacklevel=3)
        return n_steps

    def _check(self, values: torch.Tensor, condition: torch.Tensor):
        if values.dim() != 2 or values.shape[1] != self.dim:
            raise ValueError(f"expected a batch of vectors (B, {self.dim}), got {tuple(values.shape)}")
        if condition.shape[0] != values.shape[0]:
            raise ValueError(f"condition batch {condition.shape[0]} does not match the batch of {values.shape[0]} vectors")
