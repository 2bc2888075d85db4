"""Mesh benchmark: MNIST digits on the Stanford bunny, 30 % hidden, σ_y 0.1 (paper Table 2, Bunny-MNIST).

    python benchmarks/bunny_mnist.py --scale smoke
    python benchmarks/bunny_mnist.py --scale cpu --from-checkpoint checkpoints
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
