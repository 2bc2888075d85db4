"""Forward operators ``y = A(x) + n`` on padded vertex batches.

The reference operator hides a random subset of the real vertices and adds Gaussian noise on the
visible ones:

    y = m ⊙ (x + n),   n ~ N(0, σ_y² I),   m ∈ {0, 1}^{V_pad}  (1 = observed)

Exactly ``round(hidden_fraction · V)`` real vertices are hidden in every sample; padding vertices
are always hidden. Following deepinv, the operator is the single holder of the measurement facts
(σ_y, the mask rule, the likelihood): clean signals are measured as ``measurement = op(x)`` (the
one way to measure; NaN in ``x`` marks values that are never observed), every posterior method is
called as ``method(measurement, op)``, and a sampler is saved with its operator
(:meth:`RandomVertexMask.to_config`, :func:`operator_from_config`). The :class:`Measurement`
carries ``y`` and the observed mask; :meth:`Measurement.from_nan` reads a user's array with NaN at
unobserved entries.

Example:
    >>> import torch
    >>> from manifold_aps.operators import RandomVertexMask
    >>> op = RandomVertexMask(num_vertices=10, padded_vertices=16, hidden_fraction=0.3, noise_std=0.1)
    >>> m = op(torch.zeros(4, 16, 1), generator=torch.Generator().manual_seed(0))
    >>> m.observed[:, :10].sum(dim=1).tolist()
    [7, 7, 7, 7]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = ["Measurement", "RandomVertexMask", "BlindVertexMask", "operator_from_config", "gaussian_log_likelihood",
           "check_noise_std", "check_hidden_fraction"]


@dataclass
class Measurement:
    """``y`` ``(B, V_pad, C)`` (zero where hidden) and ``observed`` ``(B, V_pad)`` bool."""

    y: torch.Tensor
    observed: torch.Tensor

    def to(self, device) -> "Measurement":
        return Measurement(self.y.to(device), self.observed.to(device))

    def __getitem__(self, index) -> "Measurement":
        return Measurement(self.y[index], self.observed[index])

    def __len__(self) -> int:
        return self.y.shape[0]

    @classmethod
    def from_nan(cls, batch: torch.Tensor, vertex_mask: torch.Tensor) -> "Measurement":
        """A user's padded batch ``(B, V_pad, C)`` with NaN at hidden entries → ``Measurement``.

        A vertex counts as observed when it is real and none of its channels is NaN. A signal
        with no observed vertex is rejected.
        """
        observed = ~torch.isnan(batch).any(dim=-1) & vertex_mask.to(batch.device)[None, :]
        empty = ~observed.any(dim=1)
        if empty.any():
            raise ValueError(f"signal(s) {empty.nonzero().flatten().tolist()[:10]} have no observed vertex (all NaN)")
        if torch.isinf(batch).any():
            raise ValueError("signals contain ±inf; use NaN to mark unobserved vertices")
        y = torch.where(observed[..., None], torch.nan_to_num(batch, nan=0.0), torch.zeros_like(batch))
        return cls(y, observed)

    def real_entries(self, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, observed)`` over the ``V · C`` real entries, both ``(B, V · C)`` (vertex-major, as
        :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` expects them)."""
        channels = self.y.shape[-1]
        y = self.y[:, :num_vertices].reshape(len(self), num_vertices * channels)
        return y, self.observed[:, :num_vertices].repeat_interleave(channels, dim=1)


def _real_number(value, what: str) -> float:
    """``value`` as a float; a TypeError for strings, None, bools and other non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_noise_std(noise_std, positive: bool = False) -> float:
    """The one rule for σ_y: a finite real number ≥ 0 — or > 0 with ``positive`` (what methods that
    divide by σ_y², such as APS and the Gaussian likelihood, need)."""
    noise_std = _real_number(noise_std, "noise_std")
    if positive and not (math.isfinite(noise_std) and noise_std > 0):
        raise ValueError(f"noise_std must be a positive number (APS divides by σ_y²), got {noise_std}")
    if not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number ≥ 0, got {noise_std}")
    return noise_std


def check_hidden_fraction(rate, what: str = "hidden_fraction") -> float:
    """The one rule for a hidden fraction (``fit``'s ``mask_rate``): a real number in [0, 1)."""
    rate = _real_number(rate, what)
    if not (0.0 <= rate < 1.0):
        raise ValueError(f"{what} must be in [0, 1) (the fraction of vertices hidden), got {rate}")
    return rate


class RandomVertexMask:
    """Hide a fixed fraction of the real vertices at random and add Gaussian noise.

    Arguments:
        num_vertices: real vertex count ``V``.
        padded_vertices: padded length ``V_pad`` (≥ V); defaults to ``V``.
        hidden_fraction: fraction of real vertices hidden per sample, in [0, 1); None for an
            operator read from a model file saved before operators were stored (it applies given
            masks and holds σ_y, but cannot draw masks).
        noise_std: σ_y ≥ 0 of the noise on observed entries.
    """

    blind = False

    def __init__(self, num_vertices: int, padded_vertices: int | None = None, hidden_fraction: float = 0.6,
                 noise_std: float = 0.05):
        padded_vertices = num_vertices if padded_vertices is None else padded_vertices
        if num_vertices < 1 or padded_vertices < num_vertices:
            raise ValueError(f"need 1 ≤ num_vertices ≤ padded_vertices, got {num_vertices}, {padded_vertices}")
        self.num_vertices = int(num_vertices)
        self.padded_vertices = int(padded_vertices)
        self.hidden_fraction = None if hidden_fraction is None else check_hidden_fraction(hidden_fraction)
        self.noise_std = check_noise_std(noise_std)

    def hidden_counts(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        """Number of hidden real vertices per sample, ``(B,)`` long."""
        if self.hidden_fraction is None:
            raise ValueError("this operator was read from an old model file that did not store its hidden fraction; "
                             "it cannot draw masks — build a RandomVertexMask with the hidden fraction to measure signals")
        count = round(self.hidden_fraction * self.num_vertices)
        return torch.full((batch_size,), count, dtype=torch.long, device=device)

    def sample_observed(self, batch_size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """``(B, V_pad)`` bool mask with exactly ``hidden_counts`` real vertices hidden per row."""
        device = device if device is not None else (generator.device if generator is not None else "cpu")
        scores = torch.rand(batch_size, self.num_vertices, generator=generator, device=device)
        ranks = scores.argsort(dim=1).argsort(dim=1)
        hidden = ranks < self.hidden_counts(batch_size, generator, device)[:, None]
        observed = torch.zeros(batch_size, self.padded_vertices, dtype=torch.bool, device=device)
        observed[:, : self.num_vertices] = ~hidden
        return observed

    def measure(self, x: torch.Tensor, observed: torch.Tensor, generator: torch.Generator | None = None) -> Measurement:
        """Apply a given mask: ``y = observed ⊙ (x + σ_y n)``."""
        self._check(x)
        if observed.shape != x.shape[:2]:
            raise ValueError(f"observed mask shape {tuple(observed.shape)} does not match signals {tuple(x.shape[:2])}")
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y = (x + self.noise_std * noise) * observed[..., None].to(x.dtype)
        return Measurement(y, observed)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Measurement:
        """Draw a mask and noise for the padded batch ``x`` ``(B, V_pad, C)``.

        NaN in ``x`` marks missing values: such vertices are never observed, whatever the drawn
        mask says; a signal left with no observed vertex is rejected.
        """
        self._check(x)
        missing = torch.isnan(x).any(dim=-1)
        observed = self.sample_observed(x.shape[0], generator, x.device)
        if missing.any():
            observed = observed & ~missing
            empty = ~observed.any(dim=1)
            if empty.any():
                raise ValueError(f"signal(s) {empty.nonzero().flatten().tolist()[:10]} have no observed vertex left")
            x = torch.nan_to_num(x, nan=0.0)
        return self.measure(x, observed, generator)

    def misfit(self, measurement: Measurement, x: torch.Tensor) -> torch.Tensor:
        """``‖m ⊙ (y − x)‖² / (2 σ_y²)`` per sample ``(B,)``: ``−log p(y | x)`` up to a constant in ``x``."""
        return -gaussian_log_likelihood(measurement.y, x, measurement.observed, self.noise_std, normalised=False)

    def log_likelihood(self, measurement: Measurement, x: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` per sample: Gaussian on the observed entries (see :func:`gaussian_log_likelihood`)."""
        return gaussian_log_likelihood(measurement.y, x, measurement.observed, self.noise_std)

    def to_config(self) -> dict:
        """Plain values that :func:`operator_from_config` turns back into this operator."""
        return dict(kind="random_vertex_mask", num_vertices=self.num_vertices, padded_vertices=self.padded_vertices,
                    hidden_fraction=self.hidden_fraction, noise_std=self.noise_std)

    def _check(self, x: torch.Tensor):
        if x.dim() != 3 or x.shape[1] != self.padded_vertices:
            raise ValueError(f"expected signals (B, {self.padded_vertices}, C), got {tuple(x.shape)}")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_vertices={self.num_vertices}, padded_vertices={self.padded_vertices}, "
                f"hidden_fraction={self.hidden_fraction}, noise_std={self.noise_std})")


class BlindVertexMask(RandomVertexMask):
    """Like :class:`RandomVertexMask`, but each sample's hidden fraction is drawn from
    ``U[low, high]``; a blind sampler later sees only ``y``.
    """

    blind = True

    def __init__(self, num_vertices: int, padded_vertices: int | None = None,
                 hidden_range: tuple[float, float] = (0.3, 0.6), noise_std: float = 0.05):
        if hidden_range is None:  # read from an old model file (see RandomVertexMask's hidden_fraction)
            super().__init__(num_vertices, padded_vertices, hidden_fraction=None, noise_std=noise_std)
            self.hidden_range = None
            return
        if not isinstance(hidden_range, (tuple, list)) or len(hidden_range) != 2:
            raise TypeError(f"hidden_range must be a (low, high) pair of rates, got {hidden_range!r}")
        low, high = (check_hidden_fraction(r, "hidden_range bounds") for r in hidden_range)
        if low > high:
            raise ValueError(f"hidden_range must be (low, high) with low ≤ high, got {hidden_range}")
        super().__init__(num_vertices, padded_vertices, hidden_fraction=(low + high) / 2, noise_std=noise_std)
        self.hidden_range = (low, high)

    def hidden_counts(self, batch_size: int, generator=None, device=None) -> torch.Tensor:
        if self.hidden_range is None:
            return super().hidden_counts(batch_size, generator, device)  # raises: no rates known
        low, high = self.hidden_range
        rates = low + (high - low) * torch.rand(batch_size, generator=generator, device=device)
        return torch.round(rates * self.num_vertices).long()

    def to_config(self) -> dict:
        return dict(kind="blind_vertex_mask", num_vertices=self.num_vertices, padded_vertices=self.padded_vertices,
                    hidden_range=None if self.hidden_range is None else list(self.hidden_range), noise_std=self.noise_std)

    def __repr__(self) -> str:
        return (f"BlindVertexMask(num_vertices={self.num_vertices}, padded_vertices={self.padded_vertices}, "
                f"hidden_range={self.hidden_range}, noise_std={self.noise_std})")


def operator_from_config(config: dict) -> RandomVertexMask:
    """The operator described by :meth:`RandomVertexMask.to_config` (or the blind one's)."""
    config = dict(config)
    kind = config.pop("kind")
    if kind == "random_vertex_mask":
        return RandomVertexMask(**config)
    if kind == "blind_vertex_mask":
        rates = config["hidden_range"]
        return BlindVertexMask(**{**config, "hidden_range": None if rates is None else tuple(rates)})
    raise ValueError(f"unknown operator kind {kind!r}")


def gaussian_log_likelihood(y: torch.Tensor, x: torch.Tensor, observed: torch.Tensor, noise_std: float,
                            normalised: bool = True) -> torch.Tensor:
    """``Σ_observed log N(y_i; x_i, σ²)`` per sample, ``(B,)``.

    ``= −‖m ⊙ (y − x)‖² / (2σ²) − (n_obs · C / 2) log(2π σ²)``; without ``normalised`` the constant
    second term is left out. Needs σ > 0.
    """
    if noise_std <= 0:
        raise ValueError("the Gaussian likelihood needs noise_std > 0")
    weights = observed[..., None].to(x.dtype)
    squared = ((y - x) ** 2 * weights).flatten(1).sum(dim=1)
    if not normalised:
        return -squared / (2 * noise_std**2)
    count = weights.flatten(1).sum(dim=1) * x.shape[-1]
    return -squared / (2 * noise_std**2) - 0.5 * count * math.log(2 * math.pi * noise_std**2)
