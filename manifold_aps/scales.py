"""The scale presets — ``smoke``, ``cpu``, ``paper`` — of every stage, in one table.

``smoke``: seconds on a CPU, for the tests. ``cpu``: minutes to hours on a laptop-class CPU.
``paper``: the paper's budgets (docs/method.md, "Training budgets"), meant for a GPU.

Each scale holds, per stage:

- ``prior_network``: the prior that :func:`~manifold_aps.aps.fit` trains when none is given, a
  guided Gaussian-residual prior (:func:`~manifold_aps.diffusion.gaussian_residual_prior`): the
  correction network ``base``, the PPCA ``rank`` (capped below the number of training signals)
  and the correction's own keyword arguments (``cpu``: ``vertex_mlp`` width 32, depth 2, as
  good as width 64, depth 3 after 250 steps on Bunny-MNIST and ~3× cheaper);
- ``prior_training``: :class:`~manifold_aps.trainer.TrainingConfig` fields for denoising score
  matching, set for that default prior (``cpu``: 3000 steps at lr 1e-3, minutes; a plain ``mlp``
  wants ~20 000 steps at 2e-4, pass them explicitly; ``paper``: 500k iterations for the bunny, 360k for ERA5 — :data:`~manifold_aps.scales.PAPER_PRIOR_ITERATIONS`;
  warm-up 5000, clipping 1 and EMA 0.9999 are the score_sde defaults the paper inherits);
- ``aps``: :class:`~manifold_aps.aps.APSConfig` fields (``paper``: K = 24 coupling steps, batch
  64, lr 1e-5, 315k iterations as for ERA5 — use ``iterations=1_500_000`` for Bunny-MNIST);
- ``benchmark``: test measurements; steps and draws per test measurement of every zero-shot
  sampler (≥ 32 draws for coverage/CRPS); validation measurements and draws for tuning their
  knobs; the mixture-of-PPCA grid and training-signal cap; the training-split cap and the
  shortened training budgets of the benchmark scripts (None: the stage's own preset). ``cpu``:
  both tasks' scripts fit in about an hour on one thread.
"""

from __future__ import annotations

__all__ = ["SCALES", "PRESETS", "PAPER_PRIOR_ITERATIONS", "preset"]

#: the scale names, smallest first
SCALES = ("smoke", "cpu", "paper")

#: scale → stage → preset fields (see the module docstring)
PRESETS = {
    "smoke": dict(
        prior_network=dict(base="vertex_mlp", rank=32, width=32, depth=2),
        prior_training=dict(iterations=20, batch_size=16, learning_rate=1e-3, ema_decay=0.9, checkpoint_every=10),
        aps=dict(iterations=400, batch_size=32, learning_rate=2e-3, warmup_iterations=20, ema_decay=0.9,
                 checkpoint_every=200, flow_depth=3, hidden=64),
        benchmark=dict(n_measurements=4, diffusion_steps=20, diffusion_samples=32, tune_measurements=2, tune_samples=2,
                       gmm_components=(2,), gmm_ranks=(8,), gmm_train=256, limit=256, prior_iterations=200,
                       aps_iterations=100),
    ),
    "cpu": dict(
        prior_network=dict(base="vertex_mlp", rank=256, width=32, depth=2),
        prior_training=dict(iterations=3000, batch_size=64, learning_rate=1e-3, warmup_iterations=100, ema_decay=0.999,
                            checkpoint_every=500),
        aps=dict(iterations=4000, batch_size=64, learning_rate=5e-4, warmup_iterations=100, ema_decay=0.99,
                 checkpoint_every=500, flow_depth=8, hidden=256),
        benchmark=dict(n_measurements=16, diffusion_steps=200, diffusion_samples=32, tune_measurements=6, tune_samples=2,
                       gmm_components=(2, 4, 8), gmm_ranks=(16, 32, 64), gmm_train=4000, limit=None,
                       prior_iterations=None, aps_iterations=None),
    ),
    "paper": dict(
        prior_network=dict(base="vertex_mlp", rank=256, width=128, depth=4),
        prior_training=dict(iterations=500_000, batch_size=64, learning_rate=2e-4, warmup_iterations=5000, ema_decay=0.9999,
                            checkpoint_every=5000),
        aps=dict(iterations=315_000, batch_size=64, learning_rate=1e-5, warmup_iterations=0, ema_decay=0.999,
                 checkpoint_every=5000, flow_depth=24, hidden=256),
        benchmark=dict(n_measurements=128, diffusion_steps=1000, diffusion_samples=32, tune_measurements=16,
                       tune_samples=4, gmm_components=(2, 4, 8), gmm_ranks=(16, 32, 64), gmm_train=None, limit=None,
                       prior_iterations=None, aps_iterations=None),
    ),
}

#: the paper's prior training budget (iterations) per task, used by the ``paper`` scale
PAPER_PRIOR_ITERATIONS = {"bunny": 500_000, "era5": 360_000}


def preset(scale: str, stage: str) -> dict:
    """A copy of the ``stage`` preset of ``scale`` (a clear error for an unknown scale)."""
    if scale not in PRESETS:
        raise ValueError(f"unknown scale {scale!r}; choose one of {list(SCALES)}")
    return dict(PRESETS[scale][stage])
