"""A generic, resumable training loop: AdamW, LR warm-up, gradient clipping, EMA, checkpoints, DDP.

The loop knows nothing about diffusion or flows. A task supplies

- ``model``: an ``nn.Module``;
- ``loss_fn(model, batch, generator) -> scalar tensor``: all randomness inside the loss (noise,
  times, latent draws) must come from ``generator`` — that is what makes runs reproducible,
  resumable and different on each data-parallel rank;
- ``data``: either a tensor whose first axis indexes examples (each step draws ``batch_size`` rows
  with replacement), or a callable ``data(batch_size, generator) -> batch``.

Per step ``k`` a data generator (the only RNG state carried from step to step, stored in the
checkpoint) draws the batch indices and a step seed; the loss generator is re-seeded from
``(step seed, rank)``. Hence training ``N`` iterations straight and ``N/2`` + resume ``N/2`` give the
same weights, and under ``torchrun`` the ranks see disjoint slices of one global batch with
independent noise while gradients are averaged by :class:`~torch.nn.parallel.DistributedDataParallel`
(backend gloo on CPU, nccl on CUDA).

Every checkpoint carries the run's fingerprint (:func:`run_fingerprint`: hashes of the training
data tensor and of the caller's ``metadata``) beside its config. Resuming from a checkpoint of
another run — other data, other config, other metadata — stops with a :class:`~manifold_aps.checkpoint.CheckpointError`
that names the checkpoint and what differs, so two runs are never mixed; ``resume=False`` starts
afresh and overwrites that checkpoint instead.

The learning rate of step ``k`` (from 0) is ``lr · min(1, (k + 1) / W) · min(1, (N − k) / C)``: a linear
warm-up over ``W = warmup_iterations`` steps, constant, then a linear cool-down to ``lr / C`` over the
last ``C = cooldown_iterations`` of the ``N = iterations`` steps (the warmup-stable-decay schedule;
``C = 0``: none). The EMA is
``θ̄ ← d_k θ̄ + (1 − d_k) θ`` after step ``k``, ``d_k = min(decay, (1 + k)/(10 + k))``. A non-finite loss or gradient norm stops
training with :class:`FloatingPointError`, leaving the last checkpoint (always a good state) as is.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> data = torch.randn(64, 3)
    >>> def loss_fn(model, batch, generator):
    ...     return ((model(batch[:, :2]).squeeze(1) - batch[:, 2]) ** 2).mean()
    >>> result = train(model, loss_fn, data, TrainingConfig(iterations=5, batch_size=8, progress=False))
    >>> result.step
    5
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["TrainingConfig", "ExponentialMovingAverage", "TrainingResult", "resolve_device", "run_fingerprint", "train"]

# Fields that may change between a run and its resumption without changing the trajectory.
_RESUMABLE_CHANGES = ("checkpoint_every", "progress", "device")
# Fields that may change when the learning rates of the steps already done stay the same.
_SCHEDULE_FIELDS = ("iterations", "cooldown_iterations")
# Config fields under their names before the vocabulary was unified (read from older checkpoints).
_OLD_FIELD_NAMES = {"steps": "iterations", "warmup_steps": "warmup_iterations"}


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings (task presets live with the task, e.g. ``prior_training_config``).

    Args:
        iterations: total optimiser steps.
        batch_size: global batch (split evenly over data-parallel ranks).
        learning_rate: AdamW peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        warmup_iterations: linear LR warm-up length in iterations (0: none).
        cooldown_iterations: the last ``C`` iterations decay the LR linearly to ``lr / C`` (0: none);
            a run resumes with a new ``iterations`` or ``cooldown_iterations`` as long as the steps
            it has done keep their learning rates (e.g. a constant-LR run continued with a cool-down).
        grad_clip: max global gradient norm (None: no clipping).
        ema_decay: EMA decay per step (0: EMA equals the weights).
        checkpoint_every: iterations between checkpoints (the last step is always saved).
        seed: seeds the data generator (and thus everything).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        progress: show a tqdm bar with the loss (rank 0 only).
    """

    iterations: int
    batch_size: int = 64
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_iterations: int = 0
    cooldown_iterations: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        if (self.iterations < 0 or self.batch_size < 1 or self.checkpoint_every < 1 or self.warmup_iterations < 0
                or self.cooldown_iterations < 0):
            raise ValueError(f"need iterations ≥ 0, batch_size ≥ 1, checkpoint_every ≥ 1, warmup_iterations ≥ 0, "
                             f"cooldown_iterations ≥ 0: {self}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if not (0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step ``step`` (from 0): warm-up, constant, cool-down (module docstring)."""
        rate = self.learning_rate
        if self.warmup_iterations:
            rate *= min(1.0, (step + 1) / self.warmup_iterations)
        if self.cooldown_iterations:
            rate *= min(1.0, (self.iterations - step) / self.cooldown_iterations)
        return rate


class ExponentialMovingAverage:
    """Shadow copies of a model's floating-point parameters, ``θ̄ ← d_k θ̄ + (1 − d_k) θ`` after
    step ``k`` (counted from 1), with the warm-up ``d_k = min(d, (1 + k) / (10 + k))``.

    Without the warm-up the average keeps a weight ``d^k`` on the *initial* weights (0.37 after
    ``k = 1/(1 − d)`` steps), and a network whose weights are averaged with its initialisation is
    not the average of the two networks: a Gaussian-residual prior 1000 steps into training
    denoised far better than the Gaussian with its raw weights and worse with the plain EMA.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.is_floating_point()}

    def decay_at(self, step: int) -> float:
        """``d_k`` for the update after step ``k``."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int):
        weight = 1.0 - self.decay_at(step)
        for name, parameter in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(parameter.detach(), weight)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module):
        """Load the averaged weights into ``model`` (buffers are left as they are)."""
        model.load_state_dict(self.shadow, strict=False)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict):
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model's parameters: {sorted(missing)[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)


@dataclass
class TrainingResult:
    """``step`` reached, the per-step ``losses`` (mean over ranks, whole history across resumes),
    and the ``ema`` (call ``result.ema.copy_to(model)`` to use the averaged weights)."""

    step: int
    losses: list
    ema: ExponentialMovingAverage


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → this rank's CUDA device when available, else CPU."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _distributed_context(device: torch.device) -> tuple[int, int]:
    """``(rank, world_size)``; joins the process group that ``torchrun`` describes in the environment."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl binds each rank to its own GPU
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _draw_batch(data, generator: torch.Generator, global_batch: int, rank: int, world: int,
                loss_generator: torch.Generator, device: torch.device):
    local = global_batch // world
    if isinstance(data, torch.Tensor):
        indices = torch.randint(data.shape[0], (global_batch,), generator=generator)
        return data[indices[rank * local:(rank + 1) * local]].to(device, non_blocking=True)
    return data(local, loss_generator)


def train(model: torch.nn.Module, loss_fn: Callable, data, config: TrainingConfig, checkpoint_path=None,
          resume: bool = True, metadata: dict | None = None,
          callback: Callable | None = None, time_limit_s: float | None = None) -> TrainingResult:
    """Optimise ``model`` in place for ``config.iterations`` steps (see the module docstring).

    Arguments:
        checkpoint_path: where to keep the training state (None: no checkpoints).
        resume: True: continue from an existing checkpoint at ``checkpoint_path`` if it belongs to
            this run (same data, config and metadata; else :class:`~manifold_aps.checkpoint.CheckpointError`). False: start
            afresh, ignoring (and then overwriting) any checkpoint there.
        metadata: plain values stored in every checkpoint and part of the run's fingerprint: what
            defines the run besides the data and config (e.g. how to rebuild the model). Leave out
            what may change on resumption (such as the number of iterations).
        callback: ``callback(step, loss, model)`` after each step, ``step`` counted from 1.
        time_limit_s: stop after the first step that ends this many seconds (wall clock) after the
            call began, with a checkpoint there; the result's ``step`` says how far it got, and
            calling again with the same arguments continues. Not part of the run's fingerprint.

    Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel and
    rank 0 writes the checkpoints.

    Raises:
        CheckpointError: the checkpoint at ``checkpoint_path`` is of another run or another model.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(data, torch.Tensor) or callable(data)):
        raise TypeError(f"data must be a tensor of examples or a callable (batch_size, generator) -> batch, "
                        f"got {type(data).__name__}")
    if isinstance(data, torch.Tensor) and data.shape[0] == 0:
        raise ValueError("data holds no examples")
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be positive or None, got {time_limit_s}")
    began = time.perf_counter()
    device = resolve_device(config.device)
    rank, world = _distributed_context(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world} data-parallel ranks")
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = ExponentialMovingAverage(model, config.ema_decay)
    data_generator = torch.Generator().manual_seed(config.seed)
    loss_generator = torch.Generator(device=device)
    losses: list[float] = []
    start = 0

    path = Path(checkpoint_path) if checkpoint_path is not None else None
    fingerprint = run_fingerprint(data, metadata) if path is not None else None
    if path is not None and resume and path.exists():
        state = load_checkpoint(path, kind="training", map_location=device)
        _check_same_run(state, config, fingerprint, path)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            ema.load_state_dict(state["ema"])
            data_generator.set_state(state["rng"]["data"].cpu())
            torch.set_rng_state(state["rng"]["torch"].cpu())
            losses = state["losses"].tolist()
            start = int(state["step"])
        except (KeyError, RuntimeError, AttributeError, TypeError) as error:
            raise CheckpointError(f"cannot resume from {path}: the training checkpoint is incomplete or does not "
                                  f"match this model ({type(error).__name__}: {str(error)[:300]}); use a new "
                                  f"checkpoint path or resume=False") from None
        if start > config.iterations:
            raise ValueError(f"{path} is at step {start}, beyond config.iterations = {config.iterations}")

    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    done = start
    parameters = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations, disable=not config.progress or rank != 0,
               desc="train", dynamic_ncols=True)
    for step in bar:
        batch = _draw_batch(data, data_generator, config.batch_size, rank, world, loss_generator, device)
        step_seed = int(torch.randint(2**62, (1,), generator=data_generator))
        loss_generator.manual_seed(step_seed + rank)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate_at(step)

        loss = loss_fn(trained, batch, loss_generator)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gradient_norm = torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip or math.inf)
        mean_loss = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= world
        if not (torch.isfinite(mean_loss) and torch.isfinite(gradient_norm)):
            kept = f"the last good checkpoint {path} is kept" if path is not None and path.exists() else \
                "no checkpoint was written"
            raise FloatingPointError(f"training stopped at step {step + 1}: loss {float(mean_loss)}, gradient norm "
                                     f"{float(gradient_norm)} (non-finite); {kept}. Lower the learning rate or check the data.")
        optimizer.step()
        ema.update(model, step + 1)
        losses.append(float(mean_loss))
        bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
        done = step + 1
        if callback is not None:
            callback(done, losses[-1], model)
        out_of_time = _out_of_time(began, time_limit_s, device, world)
        if path is not None and rank == 0 and (done % config.checkpoint_every == 0 or done == config.iterations
                                               or out_of_time):
            save_checkpoint(path, {
                "config": dataclasses.asdict(config), "metadata": metadata or {}, "fingerprint": fingerprint, "step": done,
                "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": {"data": data_generator.get_state(), "torch": torch.get_rng_state()},
                "losses": torch.tensor(losses, dtype=torch.float64),
            }, kind="training")
        if out_of_time:
            break
    bar.close()
    return TrainingResult(step=done, losses=losses, ema=ema)


def _out_of_time(began: float, time_limit_s: float | None, device: torch.device, world: int) -> bool:
    """Whether ``time_limit_s`` has passed since ``began``; under ``torchrun`` rank 0's clock decides
    for all ranks, so they stop at the same step."""
    if time_limit_s is None:
        return False
    flag = torch.tensor([float(time.perf_counter() - began >= time_limit_s)], device=device)
    if world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def run_fingerprint(data, metadata: dict | None = None) -> dict:
    """``{"data": hex, "metadata": hex}``: sha256 of the training data tensor (dtype, shape and
    bytes; None for a callable data source, which cannot be hashed) and of ``metadata``'s repr."""
    data_hash = None
    if isinstance(data, torch.Tensor):
        values = data.detach().cpu().contiguous()
        digest = hashlib.sha256(f"{values.dtype} {tuple(values.shape)}".encode())
        digest.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
        data_hash = digest.hexdigest()
    return {"data": data_hash, "metadata": hashlib.sha256(repr(metadata or {}).encode()).hexdigest()}


def _check_same_run(state: dict, config: TrainingConfig, fingerprint: dict, path: Path):
    """Refuse to resume from the checkpoint of another run (see the module docstring)."""
    fresh = "use a new checkpoint path, or resume=False to start afresh (it overwrites this checkpoint)"
    stored = state.get("fingerprint")
    if not isinstance(stored, dict):
        raise CheckpointError(f"cannot resume from {path}: it was written without a run fingerprint (by an older "
                              f"manifold_aps), so it may belong to another run; {fresh}")
    current = dataclasses.asdict(config)
    stored_config = {_OLD_FIELD_NAMES.get(key, key): value for key, value in state.get("config", {}).items()}
    stored_config.setdefault("cooldown_iterations", 0)  # written before the cool-down existed
    changed = sorted(key for key in current if key not in _RESUMABLE_CHANGES + _SCHEDULE_FIELDS
                     and stored_config.get(key) != current[key])
    differences = [f"the training data (sha256 {str(stored.get('data'))[:12]}… there, {str(fingerprint['data'])[:12]}… now)"
                   ] if stored.get("data") != fingerprint["data"] else []
    if changed:
        differences.append("the config (" + ", ".join(f"{key}: {stored_config.get(key)!r} there, {current[key]!r} now"
                                                      for key in changed) + ")")
    else:
        done = int(state.get("step", 0))
        before = dataclasses.replace(config, **{key: stored_config[key] for key in _SCHEDULE_FIELDS})
        moved = next((step for step in range(done) if before.learning_rate_at(step) != config.learning_rate_at(step)),
                     None)
        if moved is not None:
            differences.append(f"the learning rate of step {moved} of the {done} done ({before.learning_rate_at(moved):.3g} "
                               f"there, {config.learning_rate_at(moved):.3g} now: iterations / cooldown_iterations "
                               f"{before.iterations} / {before.cooldown_iterations} there, {config.iterations} / "
                               f"{config.cooldown_iterations} now)")
    if stored.get("metadata") != fingerprint["metadata"]:
        differences.append(f"the run metadata ({state.get('metadata')!r:.300})")
    if differences:
        raise CheckpointError(f"cannot resume from {path}: it belongs to another run; these differ: "
                              f"{'; '.join(differences)}. To continue that run use its data and settings; otherwise {fresh}")
