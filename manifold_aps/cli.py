"""The ``manifold-aps`` command line.

    manifold-aps train-prior --task bunny_mnist --scale cpu --output prior.pt
    manifold-aps fit --task era5_proxy --prior prior.pt --scale cpu --output aps.pt
    manifold-aps sample --model aps.pt --input observed.nc --output posterior.nc
    manifold-aps evaluate --model aps.pt --task era5_proxy
    manifold-aps render --model aps.pt --task era5_proxy --output figure.png
    manifold-aps bench era5 --scale cpu
    manifold-aps demo

Every command takes ``--config FILE`` (JSON or TOML) whose keys are the command's long options
(``steps``, ``network`` …); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _load_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is neither TOML (by suffix) nor valid JSON: {error}") from error


def _apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Fill options from ``--config`` unless they were given on the command line."""
    if not getattr(args, "config", None):
        return args
    given = {arg.split("=")[0].lstrip("-").replace("-", "_") for arg in argv if arg.startswith("--")}
    known = vars(args)
    for key, value in _load_config(args.config).items():
        name = key.replace("-", "_")
        if name not in known:
            parser.error(f"unknown option {key!r} in config file {args.config}")
        if name not in given:
            setattr(args, name, value)
    return args


def _set_threads(threads):
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def cmd_train_prior(args) -> int:
    import time

    from manifold_aps.diffusion import DiffusionPrior, build_network, prior_training_config, save_prior, train_prior
    from manifold_aps.signals import VertexLayout
    from manifold_aps.tasks import load_task

    _set_threads(args.threads)
    task = load_task(args.task, limit=args.limit)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[-1])
    network_config = json.loads(args.network_config) if isinstance(args.network_config, str) else dict(args.network_config or {})
    prior = DiffusionPrior(build_network(args.network, layout, mesh=task.mesh, **network_config), layout)
    overrides = {key: value for key, value in (("steps", args.steps), ("batch_size", args.batch_size),
                                               ("learning_rate", args.learning_rate)) if value is not None}
    config = prior_training_config(args.scale, task.paper_task, device=args.device, seed=args.seed, **overrides)
    output = Path(args.output)
    started = time.perf_counter()
    train_prior(prior, layout.pad(task.train), config, checkpoint_path=output.with_suffix(".training.pt"))
    save_prior(output, prior, task.normalizer)
    print(json.dumps({"task": args.task, "data": task.data_label, "network": args.network,
                      "network_config": network_config, "steps": config.steps, "output": str(output),
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from manifold_aps.tasks import TASKS

    parser = argparse.ArgumentParser(prog="manifold-aps", description="Amortized posterior sampling on meshes.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train-prior", help="train a diffusion prior on a task's training signals",
                                description="Train a diffusion prior by denoising score matching; resumable.")
    train.add_argument("--task", choices=TASKS, required=True)
    train.add_argument("--scale", choices=("smoke", "cpu", "paper"), default="cpu")
    train.add_argument("--network", choices=("mlp", "spectral", "unet1d"), default="mlp")
    train.add_argument("--network-config", default="{}", help='JSON of network options, e.g. \'{"width": 1024}\'')
    train.add_argument("--steps", type=int, help="override the preset's step count")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--limit", type=int, help="use at most this many signals per split")
    train.add_argument("--output", required=True, help="prior file to write (a .training.pt checkpoint sits beside it)")
    train.add_argument("--device", default="auto")
    train.add_argument("--threads", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", help="JSON or TOML file of options")
    train.set_defaults(handler=cmd_train_prior)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args = _apply_config(parser, args, argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
