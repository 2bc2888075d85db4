"""Train a Gaussian-residual diffusion prior on a task's training split (resumable).

    MANIFOLD_APS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/train_prior_residual.py \\
        --task bunny_mnist --base vertex_mlp --base-config '{"width": 64, "depth": 3}' --steps 3000 --lr 1e-3 \\
        --checkpoint checkpoints/bunny_guided_vertex_mlp.pt

Rerunning the same command resumes from ``--checkpoint`` (a ``train_prior`` training checkpoint,
which :func:`~manifold_aps.diffusion.load_prior` also reads); the final EMA prior is written to
``<checkpoint stem>_prior.pt``.

``--init PRIOR --min-time 1e-5 --time-power 3`` fine-tunes a saved prior down to a smaller lowest
time ε (the prior's ``sde.eps``, which is also the default lower limit of its ELBO and so of the
APS prior term; see docs/method.md): the weights start from ``PRIOR``, the time draw
``t = ε + (1 − ε) u^p`` then covers ``[ε, 1]``, with ``P(t < τ) ≈ τ^{1/p}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from manifold_aps.diffusion.training import gaussian_residual_prior
from manifold_aps.diffusion.saving import describe_prior, load_prior, prior_from_description, save_prior
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.diffusion.training import prior_training_config, train_prior
from manifold_aps.signals import VertexLayout
from manifold_aps.tasks import load_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bunny_mnist")
    parser.add_argument("--base", default="mlp")
    parser.add_argument("--base-config", default="{}", type=json.loads)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--components", type=int, default=1, help="> 1: a mixture of PPCA Gaussians")
    parser.add_argument("--steps", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-power", type=float, default=1.0,
                        help="t = eps + (1 - eps) u^p: p > 1 trains more on small t (default 1: uniform)")
    parser.add_argument("--unguided", action="store_true",
                        help="the correction reads x_t only, not the Gaussian's denoised estimate")
    parser.add_argument("--min-time", type=float, default=None,
                        help="the smallest time trained on, the prior's sde.eps (default: VPSDE's 1e-3, or --init's)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from the weights of this saved prior (its Gaussian too) instead of a new fit")
    parser.add_argument("--checkpoint", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[2])
    if args.checkpoint.exists():
        prior = load_prior(args.checkpoint).train()  # the stored Gaussian, weights restored again by train_prior
        print(f"resuming from {args.checkpoint}", flush=True)
    elif args.init is not None:
        prior = with_min_time(load_prior(args.init), args.min_time).train()
        print(f"starting from {args.init}; lowest time {prior.sde.eps:g}", flush=True)
    else:
        start = time.perf_counter()
        prior = gaussian_residual_prior(task.train, layout, base=args.base, rank=args.rank, mesh=task.mesh,
                                        guide=not args.unguided, components=args.components,
                                        sde=VPSDE() if args.min_time is None else VPSDE(eps=args.min_time),
                                        **args.base_config)
        print(f"PPCA rank {args.rank} fitted in {time.perf_counter() - start:.0f} s; "
              f"network config {prior.network.config}", flush=True)
    config = prior_training_config("cpu", task.paper_task, iterations=args.steps, batch_size=args.batch,
                                   learning_rate=args.lr, ema_decay=args.ema, checkpoint_every=args.checkpoint_every,
                                   progress=False)

    def report(step, loss, model):
        if step % 100 == 0:
            print(f"step {step} loss {float(loss):.5f} {time.strftime('%H:%M:%S')}", flush=True)

    train_prior(prior, layout.pad(task.train), config, checkpoint_path=args.checkpoint, callback=report,
                time_power=args.time_power)
    final = args.checkpoint.with_name(args.checkpoint.stem + "_prior.pt")
    save_prior(final, prior.eval(), task.normalizer)
    print(f"wrote {final}", flush=True)


def with_min_time(prior, min_time: float | None):
    """``prior`` with its weights, rebuilt on a VPSDE whose lowest time ``eps`` is ``min_time``."""
    if min_time is None:
        return prior
    description = describe_prior(prior)
    description["sde"]["eps"] = min_time
    state = prior.state_dict()
    rebuilt = prior_from_description(description, state)
    rebuilt.load_state_dict(state)
    return rebuilt


if __name__ == "__main__":
    main()
