"""Sphere benchmark: 2 m temperature on the 4° grid, 60 % hidden, σ_y 0.05 (paper Table 2, ERA5).

Trains (or loads with --from-checkpoint) the prior and APS, fits optimal interpolation and a
mixture of PPCA, tunes the zero-shot samplers (DPS, MCG, MMPS, ΠGDM, DiffPIR; same prior as APS)
on validation measurements, then scores every method on the same fixed-seed measurements of the
test split and of the 24 genuine ERA5 fields, and runs the blind sweep when a blind sampler is
there. Without the GASP archive (--gasp-root) the training data is the labelled GCM proxy; the
results file says which.

    python benchmarks/era5.py --scale smoke --from-checkpoint pretrained --threads 1
    python benchmarks/era5.py --scale cpu --from-checkpoint pretrained --threads 1
"""

import argparse
import sys

from manifold_aps.benchmark import add_arguments, run_benchmark
from manifold_aps.tasks import load_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--gasp-root", help="folder with era5_temp2m_16x_{train,val,test} (the GASP archive)")
    args = parser.parse_args()
    task = load_task("era5_gasp" if args.gasp_root else "era5_proxy", gasp_root=args.gasp_root)
    run_benchmark(task, args, sys.argv, grid_shape=(46, 90))
