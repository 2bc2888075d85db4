"""Mesh benchmark: MNIST digits on the Stanford bunny, 30 % hidden, σ_y 0.1 (paper Table 2, Bunny-MNIST).

Trains (or loads with --from-checkpoint) the prior and APS, fits optimal interpolation and a
mixture of PPCA, tunes the zero-shot samplers (DPS, MCG, MMPS, ΠGDM, DiffPIR; same prior as APS)
on validation measurements, then scores every method on the same fixed-seed measurements of the
test split (:mod:`manifold_aps.benchmark`; budgets per scale in :mod:`manifold_aps.scales`).

    python benchmarks/bunny_mnist.py --scale smoke --from-checkpoint pretrained --threads 1
    python benchmarks/bunny_mnist.py --scale cpu --from-checkpoint pretrained --threads 1
"""

import argparse
import sys

from manifold_aps.benchmark import add_arguments, run_benchmark
from manifold_aps.tasks import load_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    run_benchmark(load_task("bunny_mnist"), args, sys.argv)
