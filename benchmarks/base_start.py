"""How far training moves APS from its start: the shipped sampler's Gaussian base alone (the flow at
the identity, i.e. optimal interpolation with the base's PPCA of rank ≤ 64) against the trained
sampler, on the same fixed-seed test measurements as the task's benchmark (seed 0).

    MANIFOLD_APS_DATA=../shared/data python benchmarks/base_start.py --task bunny_mnist
"""

import argparse

import torch

from manifold_aps import pretrained
from manifold_aps.benchmark import score
from manifold_aps.tasks import load_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("bunny_mnist", "era5_proxy"))
    parser.add_argument("--n-measurements", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    model = pretrained.load_sampler(args.task)
    layout, V = model.layout, task.mesh.num_vertices
    sets = {"test": task.test[: args.n_measurements],
            **{name: signals[: args.n_measurements] for name, signals in task.extra_test.items()}}
    grid = (46, 90) if args.task.startswith("era5") else None
    for name, truth in sets.items():
        measurement = task.operator(layout.pad(truth), generator=torch.Generator().manual_seed(0))
        hidden = ~measurement.observed[:, :V]
        root = model.base_root(measurement)
        generator = torch.Generator().manual_seed(0)
        base_draws = root.transform(torch.randn(128, len(truth), model.flow.dim, generator=generator))
        base_draws = base_draws.reshape(128, len(truth), V, -1)
        trained = model.sample_measurement(measurement, 128, generator)[:, :, :V]
        for label, draws in (("base only (flow at identity)", base_draws), ("trained APS", trained)):
            row = score(draws.mean(0), truth, hidden, grid, draws)
            print(f"{name:>13} {label:>29}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
