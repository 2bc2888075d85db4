"""The APS training configuration: optimisation (an embedded
:class:`~manifold_aps.trainer.TrainingConfig`) and flow shape, with the scale presets of
:mod:`manifold_aps.scales`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

from manifold_aps.scales import preset
from manifold_aps.trainer import TrainingConfig

__all__ = ["APSConfig"]

_TRAINING_NAMES = ("iterations", "batch_size", "learning_rate", "weight_decay", "warmup_iterations",
                   "cooldown_iterations", "grad_clip", "ema_decay", "checkpoint_every", "seed")
_OLD_NAMES = {"n_steps": "flow_depth", "lr": "learning_rate", "warmup": "warmup_iterations",
              "warmup_steps": "warmup_iterations"}


@dataclass(frozen=True)
class APSConfig:
    """How APS is trained: the optimisation (an embedded
    :class:`~manifold_aps.trainer.TrainingConfig`) and the flow's shape.

    Build it with :meth:`preset` (the ``aps`` stage of :mod:`manifold_aps.scales`), whose overrides
    are flat names: ``iterations`` (optimiser steps), ``batch_size``, ``learning_rate``,
    ``warmup_iterations``, ``cooldown_iterations``, ``grad_clip``, ``ema_decay``, ``checkpoint_every``,
    ``seed``, ``weight_decay`` for the optimisation; ``flow_depth`` (coupling steps), ``hidden``,
    ``layers``, ``scale_bound``, ``num_times`` for the flow and the objective;
    ``condition_features``: ``m > 0`` reads the condition once through a shared encoder to ``m``
    features that every coupling reads (:mod:`~manifold_aps.flows.encoders`; 0: each coupling
    reads the whole condition);
    ``marginal_components``: ``K > 0`` adds a :class:`~manifold_aps.flows.VertexwiseMonotone` with
    ``K`` tanh terms after the Gaussian base (0: none); ``forward_kl_weight``: ``λ_fwd > 0`` adds
    ``λ_fwd · (−log q(x | y))`` on ``forward_kl_draws`` signals drawn from the prior by
    ``forward_kl_steps``-step ancestral sampling, measured afresh each step
    (:mod:`~manifold_aps.aps.forward_kl`; 0: the APS objective alone); ``forward_kl_noise``:
    ``σ_d > 0`` fits that density to the dequantised draws ``x + σ_d ε`` (model units, like
    ``noise_std``), the measurements still of ``x``; ``elbo_min_time``: the lower limit ``ε`` of the
    ELBO's time integral (None: the prior's ``sde.eps``), which smooths the prior term by
    ``N(0, σ_ε²/α_ε²)`` (:meth:`~manifold_aps.diffusion.DiffusionPrior.elbo`).
    """

    training: TrainingConfig
    flow_depth: int = 8
    hidden: int = 256
    layers: int = 2
    scale_bound: float = 2.0
    num_times: int = 1  # Monte-Carlo (t, e) draws of the ELBO per flow sample
    condition_features: int = 0
    marginal_components: int = 0
    forward_kl_weight: float = 0.0
    forward_kl_draws: int = 4096
    forward_kl_steps: int = 100
    forward_kl_noise: float = 0.0
    elbo_min_time: float | None = None

    @classmethod
    def preset(cls, name: str, **overrides) -> "APSConfig":
        """The ``name`` scale (``smoke``, ``cpu``, ``paper``) with ``overrides`` applied."""
        values = preset(name, "aps")
        for old, new in _OLD_NAMES.items():
            if old in overrides:
                warnings.warn(f"APSConfig field {old!r} is now called {new!r}", DeprecationWarning, stacklevel=2)
                overrides[new] = overrides.pop(old)
        own = {f.name for f in fields(cls)} - {"training"}
        unknown = set(overrides) - own - set(_TRAINING_NAMES)
        if unknown:
            raise TypeError(f"unknown APSConfig fields {sorted(unknown)}")
        values.update(overrides)
        training = {"grad_clip": 10.0, **{k: v for k, v in values.items() if k in _TRAINING_NAMES}}
        training = TrainingConfig(**training)
        return cls(training, **{k: v for k, v in values.items() if k in own})

    def __post_init__(self):
        if self.flow_depth < 1 or self.num_times < 1 or self.training.iterations < 1:
            raise ValueError(f"iterations, flow_depth and num_times must be ≥ 1, got {self}")
        if self.condition_features < 0:
            raise ValueError(f"condition_features must be ≥ 0, got {self.condition_features}")
        if self.marginal_components < 0:
            raise ValueError(f"marginal_components must be ≥ 0, got {self.marginal_components}")
        if not (math.isfinite(self.forward_kl_weight) and self.forward_kl_weight >= 0):
            raise ValueError(f"forward_kl_weight must be a number ≥ 0, got {self.forward_kl_weight}")
        if not (math.isfinite(self.forward_kl_noise) and self.forward_kl_noise >= 0):
            raise ValueError(f"forward_kl_noise (the dequantisation std) must be a number ≥ 0, got "
                             f"{self.forward_kl_noise}")
        if self.elbo_min_time is not None and not 0 < self.elbo_min_time < 1:
            raise ValueError(f"elbo_min_time (the ELBO's lower time limit) must be in (0, 1), got {self.elbo_min_time}")
        if self.forward_kl_draws < 1 or self.forward_kl_steps < 1:
            raise ValueError(f"forward_kl_draws and forward_kl_steps must be ≥ 1, got {self.forward_kl_draws} "
                             f"and {self.forward_kl_steps}")
        if not (math.isfinite(self.scale_bound) and self.scale_bound > 0):
            raise ValueError(f"scale_bound (the bound on each coupling's log-scale) must be a positive number, "
                             f"got {self.scale_bound}")

    @property
    def iterations(self) -> int:
        return self.training.iterations

    def to_dict(self) -> dict:
        """Flat plain values (the names :meth:`preset` takes), for checkpoint metadata."""
        flat = {name: getattr(self.training, name) for name in _TRAINING_NAMES}
        return {**flat, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "training"}}

    def flow_shape(self) -> dict:
        """Keyword arguments of :func:`~manifold_aps.flows.build_flow` for this configuration (the
        encoder's only when there is one, so runs from before it existed still resume)."""
        shape = dict(depth=self.flow_depth, hidden=self.hidden, layers=self.layers, scale_bound=self.scale_bound,
                     seed=self.training.seed)
        return shape | ({"condition_features": self.condition_features} if self.condition_features else {})
