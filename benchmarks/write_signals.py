"""Write a slice of a task's split to a ``.npy`` file ``(count, V, C)``, for the CLI's ``--signals``
or ``--prior-draws``; e.g. the Bunny-MNIST training digits that a ``--limit 6000`` fit never sees,
as exact draws of the data distribution in the forward-KL ablation (docs/benchmarks.md):

    python benchmarks/write_signals.py --task bunny_mnist --split train --start 6000 --count 2048 \\
        --output checkpoints/bunny_train_6000_8048.npy
"""

from __future__ import annotations

import argparse

import numpy as np

from manifold_aps.tasks import TASKS, load_task


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--split", choices=("train", "validation", "test"), default="train")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    signals = getattr(load_task(args.task), args.split)[args.start:args.start + args.count]
    if len(signals) < args.count:
        parser.error(f"the {args.split} split holds {len(signals) + args.start} signals, fewer than "
                     f"--start + --count = {args.start + args.count}")
    np.save(args.output, signals.numpy())
    print(f"wrote {args.output}: {tuple(signals.shape)}")


if __name__ == "__main__":
    main()
