"""Train a Gaussian-residual diffusion prior on a task's training split (resumable).

    MANIFOLD_APS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/train_prior_residual.py \\
        --task bunny_mnist --base vertex_mlp --base-config '{"width": 64, "depth": 3}' --steps 3000 --lr 1e-3 \\
        --checkpoint checkpoints/bunny_guided_vertex_mlp.pt

Rerunning the same command resumes from ``--checkpoint`` (a ``train_prior`` training checkpoint,
which :func:`~manifold_aps.diffusion.load_prior` also reads); the final EMA prior is written to
``<checkpoint stem>_prior.pt``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from manifold_aps.diffusion.training import gaussian_residual_prior
from manifold_aps.diffusion.saving import load_prior, save_prior
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
    parser.add_argument("--checkpoint", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[2])
    if args.checkpoint.exists():
        prior = load_prior(args.checkpoint).train()  # the stored Gaussian, weights restored again by train_prior
        print(f"resuming from {args.checkpoint}", flush=True)
    else:
        start = time.perf_counter()
        prior = gaussian_residual_prior(task.train, layout, base=args.base, rank=args.rank, mesh=task.mesh,
                                        guide=not args.unguided, components=args.components, **args.base_config)
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


if __name__ == "__main__":
    main()
