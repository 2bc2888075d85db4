"""What a mixture base costs per measurement, against its number of components K and rank r.

APS on a mixture base (docs/method.md, "a mixture base") solves each component's exact posterior
for every measurement it sees: ``mixture_posterior_root`` costs about ``2 K D r²`` multiply-adds
per measurement (the observed Gram matrix ``M_o`` and the directions; float64). In training that
happens for the forward-KL term's freshly measured prior draws at every step, and for the training
measurements too once their kept roots, ``4 D (2 + Σ_k (2 + r))`` bytes each in float32, exceed
``MIXTURE_ROOTS_BYTES``; in sampling once per measurement. Drawing and the density of a draw
(``MixtureRoot.log_prob``, needed for every flow sample in training) cost ``O(K D r)``.

The timings use random orthonormal modes (the cost does not depend on the fitted values) on one
thread:

    python benchmarks/mixture_base_cost.py --dims 1889 --grid 8x64,16x64,16x128,32x128

Writes benchmarks/results/mixture_base_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from manifold_aps.aps.training import MIXTURE_ROOTS_BYTES
from manifold_aps.benchmark import environment, median_seconds, save_results
from manifold_aps.data import GaussianMixtureField
from manifold_aps.gaussian_posterior import LowRankGaussian
from manifold_aps.mixture_base import mixture_posterior_root


def random_mixture(dim: int, components: int, rank: int, generator: torch.Generator) -> GaussianMixtureField:
    """``components`` PPCA Gaussians of ``rank`` orthonormal modes, equal weights."""
    def component():
        modes = torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=torch.float64))[0]
        spectrum = torch.rand(rank, generator=generator, dtype=torch.float64) + 0.1
        return LowRankGaussian(torch.rand(dim, generator=generator, dtype=torch.float64), modes, spectrum, 1e-3)

    return GaussianMixtureField([component() for _ in range(components)], torch.full((components,), 1.0 / components))


def measure(dim: int, components: int, rank: int, batch: int, repeats: int, hidden: float) -> dict:
    generator = torch.Generator().manual_seed(0)
    field = random_mixture(dim, components, rank, generator)
    y = torch.rand(batch, dim, generator=generator, dtype=torch.float64)
    observed = torch.rand(batch, dim, generator=generator) >= hidden
    root = mixture_posterior_root(field, y, observed, 0.1).to(torch.float32)
    draws = root.draw(torch.randn(batch, dim, generator=generator), generator)
    solve = median_seconds(lambda: mixture_posterior_root(field, y, observed, 0.1), repeats)
    density = median_seconds(lambda: root.log_prob(draws), repeats)
    kept_bytes = 4 * dim * (2 + components * (2 + rank))
    return dict(dim=dim, components=components, rank=rank, batch=batch,
                solve_seconds_per_measurement=solve / batch, log_prob_seconds_per_draw=density / batch,
                kept_root_mb_per_measurement=kept_bytes / 2**20,
                measurements_kept_within_limit=MIXTURE_ROOTS_BYTES // kept_bytes)


def markdown(results: dict) -> str:
    lines = ["# Mixture-base cost per measurement", "", f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}",
             f"- {results['note']}",
             f"- one thread; batches of {results['batch']} measurements ({100 * results['hidden']:.0f} % hidden), "
             f"median of {results['repeats']}; kept roots in float32; the limit on kept roots "
             f"(`MIXTURE_ROOTS_BYTES`) is {MIXTURE_ROOTS_BYTES / 2**30:.0f} GiB", "",
             "| D | K | r | solve s / measurement | log_prob ms / draw | kept root MB / measurement | "
             "measurements kept within the limit | one training step's solves s (64 draws; 128 when unkept) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['dim']} | {row['components']} | {row['rank']} | {row['solve_seconds_per_measurement']:.3g} | "
                     f"{1e3 * row['log_prob_seconds_per_draw']:.3g} | {row['kept_root_mb_per_measurement']:.1f} | "
                     f"{row['measurements_kept_within_limit']} | {64 * row['solve_seconds_per_measurement']:.3g} "
                     f"({128 * row['solve_seconds_per_measurement']:.3g}) |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="1889", help="comma-separated V·C (1889: Bunny-MNIST; 4140: the 4° sphere)")
    parser.add_argument("--grid", default="8x64,16x64,16x128,32x128", help="comma-separated KxR")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=float, default=0.3, help="hidden fraction of each measurement")
    parser.add_argument("--note", default="machine not shared", help="what else ran on the machine")
    parser.add_argument("--output", default="benchmarks/results/mixture_base_cost")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for dim in (int(value) for value in args.dims.split(",")):
        for components, rank in (map(int, pair.split("x")) for pair in args.grid.split(",")):
            rows.append(measure(dim, components, rank, args.batch, args.repeats, args.hidden))
            print(rows[-1], flush=True)
    results = dict(command="python " + shlex.join(sys.argv), **environment(), note=args.note, batch=args.batch,
                   repeats=args.repeats, hidden=args.hidden, rows=rows)
    save_results(args.output, results, markdown(results))


if __name__ == "__main__":
    main()
