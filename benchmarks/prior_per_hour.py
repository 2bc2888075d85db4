"""Quality per hour of CPU training: each noise-network design trained for the same wall-clock
budget on a task's training split, scored by its denoising MSE against the exact Gaussian's.

    MANIFOLD_APS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/prior_per_hour.py \\
        --task bunny_mnist --design guided_vertex_mlp --evaluate-at 300 900
    python benchmarks/prior_per_hour.py --report      # all rows → results/prior_per_hour.{md,json}

One run trains one design (``--design``, see :data:`DESIGNS`; each at the learning rate it is
used with) and pauses at each of ``--evaluate-at`` cumulative training seconds to score its EMA
weights as ``benchmarks/prior_quality.py`` does: the MSE of the Tweedie estimate
``x̂₀ = (x_t − σ_t ε̂)/α_t`` on ``--count`` test signals, divided by that of the exact rank-256 PPCA
Gaussian on the same noise draws, at t ∈ {0.02, …, 0.7} (< 1: better than the Gaussian).
Evaluation time is not training time. Each run writes
``results/prior_per_hour/<task>_<design>.json`` with the command, machine, load, date and commit;
``--report`` gathers them into one table; the trained prior is kept as
``<checkpoint-dir>/<task>_<design>_prior.pt``. Run two at a time on two cores (one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from manifold_aps.benchmark import environment
from manifold_aps.diffusion import DiffusionPrior, exact_gaussian_prior, save_prior
from manifold_aps.diffusion.networks import build_network
from manifold_aps.diffusion.training import gaussian_residual_prior, prior_training_config, train_prior
from manifold_aps.gaussian_posterior import fit_ppca
from manifold_aps.signals import VertexLayout
from manifold_aps.tasks import load_task
from prior_quality import TIMES, denoising_mse

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = RESULTS / "prior_per_hour"

#: design → (how it is built, network config, learning rate). ``plain``: ε_θ is the network;
#: ``guided``: the guided Gaussian-residual prior around the rank-256 PPCA Gaussian with the
#: network as its correction (the default of ``fit``: ``vertex_mlp`` width 32, depth 2).
DESIGNS = {
    "unet1d": ("plain", "unet1d", dict(channels=32, channel_multipliers=(1, 2, 2, 4)), 2e-4),
    "mlp": ("plain", "mlp", dict(width=512, depth=3), 2e-4),
    "guided_mlp": ("guided", "mlp", dict(width=512, depth=3), 2e-4),
    "guided_vertex_mlp": ("guided", "vertex_mlp", dict(width=32, depth=2), 1e-3),
    "guided_vertex_mlp_plus_mlp": ("guided", "sum", dict(parts=[dict(name="vertex_mlp", config=dict(width=32, depth=2)),
                                                                dict(name="mlp", config=dict(width=512, depth=3))]),
                                   5e-4),
    "guided_diffusion_net_k32_w16": ("guided", "diffusion_net", dict(num_modes=32, width=16, depth=2), 1e-3),
    "guided_diffusion_net_k64_w32": ("guided", "diffusion_net", dict(num_modes=64, width=32, depth=2), 1e-3),
}
GAUSSIAN_RANK = 256


def build_prior(design: str, task, layout: VertexLayout) -> DiffusionPrior:
    kind, network, config, _ = DESIGNS[design]
    if kind == "plain":
        return DiffusionPrior(build_network(network, layout, mesh=task.mesh, **config), layout)
    return gaussian_residual_prior(task.train, layout, base=network, rank=GAUSSIAN_RANK, mesh=task.mesh, guide=True,
                                   **config)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[2])
    test = layout.flatten(layout.pad(task.test[:args.count]))
    gaussian = fit_ppca(task.train.reshape(task.train.shape[0], -1), GAUSSIAN_RANK)
    reference = denoising_mse(exact_gaussian_prior(gaussian, layout).eval(), test, TIMES, args.seed)
    torch.manual_seed(args.seed)
    prior = build_prior(args.design, task, layout)
    kind, network, config, learning_rate = DESIGNS[args.design]
    training = prior_training_config("cpu", task.paper_task, iterations=10**8, learning_rate=learning_rate,
                                     checkpoint_every=10**8, progress=False, seed=args.seed)
    checkpoint = args.checkpoint_dir / f"{args.task}_{args.design}.pt"
    checkpoint.unlink(missing_ok=True)  # a fresh run: the budget counts from zero
    words = ["benchmarks/prior_per_hour.py", *sys.argv[1:]]
    result = dict(task=args.task, design=args.design, kind=kind, network=network, config=config,
                  learning_rate=learning_rate, batch_size=training.batch_size, count=test.shape[0], times=list(TIMES),
                  gaussian_rank=GAUSSIAN_RANK, gaussian_mse=reference,
                  parameters=sum(p.numel() for p in prior.parameters() if p.requires_grad),
                  command="python " + " ".join(shlex.quote(word) for word in words), **environment(),
                  load_average_before=os.getloadavg()[0], evaluations=[])
    trained_seconds, step = 0.0, 0
    for budget in args.evaluate_at:
        start = time.perf_counter()
        step = train_prior(prior.train(), layout.pad(task.train), training, checkpoint_path=checkpoint,
                           time_limit_s=budget - trained_seconds).step
        trained_seconds += time.perf_counter() - start
        mse = denoising_mse(prior.eval(), test, TIMES, args.seed)
        ratios = [m / g for m, g in zip(mse, reference)]
        result["evaluations"].append(dict(seconds=trained_seconds, steps=step, mse=mse, ratio=ratios,
                                          samples_per_second=step * training.batch_size / trained_seconds,
                                          load_average=os.getloadavg()[0]))
        print(f"{args.design} {trained_seconds:.0f} s, {step} steps: ratios " + " ".join(f"{r:.3f}" for r in ratios),
              flush=True)
    ROWS.mkdir(parents=True, exist_ok=True)
    (ROWS / f"{args.task}_{args.design}.json").write_text(json.dumps(result, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)
    save_prior(args.checkpoint_dir / f"{args.task}_{args.design}_prior.pt", prior.eval(), task.normalizer)
    return result


def report() -> Path:
    rows = [json.loads(path.read_text()) for path in sorted(ROWS.glob("*.json"))]
    if not rows:
        raise SystemExit(f"no rows in {ROWS}; run a --design first")
    order = list(DESIGNS)
    rows.sort(key=lambda row: (row["task"], order.index(row["design"]) if row["design"] in order else len(order)))
    lines = ["# Prior quality per hour of CPU training", "",
             "Each design trained for a wall-clock budget (one thread, two runs sharing two cores), its EMA weights "
             "scored by x̂₀-MSE / exact-Gaussian x̂₀-MSE on held-out test signals, same noise draws "
             "(< 1: better than the rank-256 PPCA Gaussian). Per-run command, machine, date, commit and load "
             "average: `prior_per_hour/<task>_<design>.json`.", ""]
    for task in dict.fromkeys(row["task"] for row in rows):
        lines += [f"## {task}", "", "| design | parameters | lr | train s | steps | samples/s | "
                  + " | ".join(f"t={t}" for t in rows[0]["times"]) + " | commit |",
                  "|---" * (7 + len(rows[0]["times"])) + "|"]
        for row in (row for row in rows if row["task"] == task):
            for evaluation in row["evaluations"]:
                lines.append(f"| {row['design']} | {row['parameters'] / 1e3:.0f} k | {row['learning_rate']:g} | "
                             f"{evaluation['seconds']:.0f} | {evaluation['steps']} | "
                             f"{evaluation['samples_per_second']:.0f} | "
                             + " | ".join(f"{r:.3f}" for r in evaluation["ratio"]) + f" | {row['commit']} |")
        lines.append("")
    (RESULTS / "prior_per_hour.json").write_text(json.dumps(rows, indent=2) + "\n")
    path = RESULTS / "prior_per_hour.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bunny_mnist")
    parser.add_argument("--design", choices=sorted(DESIGNS))
    parser.add_argument("--evaluate-at", type=float, nargs="+", default=[300.0, 900.0],
                        help="cumulative training seconds at which to score the prior (increasing)")
    parser.add_argument("--count", type=int, default=256, help="test signals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints/prior_per_hour"))
    parser.add_argument("--report", action="store_true", help="gather the rows written so far into one table")
    args = parser.parse_args(argv)
    if args.report:
        return report()
    if args.design is None:
        parser.error("--design is required (or --report)")
    if any(b <= a for a, b in zip(args.evaluate_at, args.evaluate_at[1:])) or args.evaluate_at[0] <= 0:
        parser.error(f"--evaluate-at must be positive and increasing, got {args.evaluate_at}")
    args.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return run(args)


if __name__ == "__main__":
    main()
