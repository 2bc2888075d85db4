"""The ``manifold-aps`` command line.

    manifold-aps train-prior --task bunny_mnist --scale cpu --output prior.pt
    manifold-aps fit --task era5_proxy --prior prior.pt --scale cpu --output aps.pt
    manifold-aps sample --model aps.pt --input observed.nc --output posterior.nc
    manifold-aps evaluate --model aps.pt --task era5_proxy
    manifold-aps render --model aps.pt --task era5_proxy --output figure.png
    manifold-aps bench era5 --scale cpu
    manifold-aps demo

Every command takes ``--config FILE`` (JSON or TOML) whose keys are the command's long options
(``iterations``, ``network`` …); flags given on the command line win. One vocabulary throughout:
``--iterations`` counts optimiser steps, ``--flow-depth`` coupling steps of the flow,
``--diffusion-steps`` reverse-diffusion steps, ``--mask-rate`` is the hidden fraction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zipfile
from pathlib import Path

__all__ = ["main", "run"]


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
    """Fill options from ``--config`` unless they were given on the command line; each value is
    checked with the option's own type (a clear error naming the option otherwise)."""
    if not getattr(args, "config", None):
        return args
    command = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    actions = {option.lstrip("-").replace("-", "_"): action for action in command.choices[args.command]._actions
               for option in action.option_strings if option.startswith("--")}
    given = {actions[name].dest for name in (arg.split("=")[0].lstrip("-").replace("-", "_")
                                              for arg in argv if arg.startswith("--")) if name in actions}
    for key, value in _load_config(args.config).items():
        action = actions.get(key.replace("-", "_"))
        if action is None or action.dest in ("help", "config"):
            parser.error(f"unknown option {key!r} in config file {args.config}")
        if action.dest in given:
            continue
        if action.type is not None and value is not None:
            try:
                if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                    raise TypeError(f"expected a {getattr(action.type, '__name__', 'value')}")
                if action.type is int and isinstance(value, float):
                    raise TypeError("expected an integer")
                value = action.type(value)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
                parser.error(f"option {key!r} in config file {args.config}: {value!r} is invalid ({error})")
        if action.choices is not None and value not in action.choices:
            parser.error(f"option {key!r} in config file {args.config}: {value!r} is not one of {list(action.choices)}")
        setattr(args, action.dest, value)
    return args


def _levels(text) -> tuple[float, ...]:
    """An argparse type: comma-separated probabilities in (0, 1) (``--quantiles``)."""
    try:
        levels = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(0 < level < 1 for level in levels):
        raise argparse.ArgumentTypeError(f"quantile levels must lie in (0, 1), got {text!r}")
    return levels


def positive_int(text) -> int:
    """An argparse type: an integer ≥ 1 (``--threads``, ``--base-limit``)."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1 or (isinstance(text, float) and text != value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express: a usable ``--device``; ``fit``'s source of signals."""
    device = getattr(args, "device", None)
    if device not in (None, "auto"):
        import torch

        try:
            if torch.device(device).type == "cuda" and not torch.cuda.is_available():
                parser.error(f"--device {device!r}: CUDA is not available on this machine (use cpu or auto)")
        except RuntimeError:
            parser.error(f"--device {device!r} is not a device (use auto, cpu, cuda or cuda:N)")
    if args.command == "fit" and not args.task and not (args.mesh and args.signals):
        parser.error("fit needs --task, or both --mesh and --signals")
    if args.command == "fit" and args.base_limit is not None and not args.task:
        parser.error("--base-limit caps a --task's training signals; with --signals the base is fitted on those")


def _set_threads(threads):
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def cmd_train_prior(args) -> int:
    import time

    from manifold_aps.diffusion import DiffusionPrior, build_network, prior_training_config, save_prior, train_prior
    from manifold_aps.diffusion.training import preset_residual_prior
    from manifold_aps.signals import VertexLayout
    from manifold_aps.tasks import load_task

    _set_threads(args.threads)
    task = load_task(args.task, limit=args.limit)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[-1])
    network_config = json.loads(args.network_config) if isinstance(args.network_config, str) else dict(args.network_config or {})
    if args.network == "gaussian_residual":  # the scale's preset, with the given options on top
        prior = preset_residual_prior(task.train, layout, task.mesh, args.scale, **network_config)
    else:
        prior = DiffusionPrior(build_network(args.network, layout, mesh=task.mesh, **network_config), layout)
    overrides = {key: value for key, value in (("iterations", args.iterations), ("batch_size", args.batch_size),
                                               ("learning_rate", args.learning_rate),
                                               ("cooldown_iterations", args.cooldown_iterations)) if value is not None}
    config = prior_training_config(args.scale, task.paper_task, device=args.device, seed=args.seed, **overrides)
    output = Path(args.output)
    started = time.perf_counter()
    train_prior(prior, layout.pad(task.train), config, checkpoint_path=output.with_suffix(".training.pt"))
    save_prior(output, prior, task.normalizer)
    print(json.dumps({"task": args.task, "data": task.data_label, "network": args.network,
                      "network_config": prior.network.config, "iterations": config.iterations, "output": str(output),
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


def _read_signals(path):
    """A user's signals file: NetCDF (first data variable, or ``--variable``) or .npy / .npz (key ``signals``)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"signals file not found: {path}")
    if path.suffix in (".nc", ".nc4", ".netcdf"):
        import xarray as xr

        try:
            dataset = xr.open_dataset(path)
        except (ValueError, OSError) as error:
            raise ValueError(f"could not read {path} as NetCDF: {error}") from None
        name = next(iter(dataset.data_vars), None)
        if name is None:
            raise ValueError(f"{path} holds no data variable")
        return dataset[name].load()
    if path.suffix in (".npy", ".npz"):
        try:  # np.load says "pickled data" for any bytes that are not .npy/.npz; say what is wrong
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False)
            with np.load(path, allow_pickle=False) as archive:
                keys = archive.files
                signals = archive["signals"] if "signals" in keys else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"could not read {path} as a numeric {path.suffix} array (not a numpy file, "
                             f"damaged, or holding Python objects): {error}") from None
        if signals is None:
            raise ValueError(f"{path} has no 'signals' array (keys: {', '.join(keys)})")
        return signals
    raise ValueError(f"unsupported signals file {path.name}: use .nc, .npy or .npz")


def _write_posterior(path, samples, quantiles, keep: int, model_path, model_error_std=None):
    """Posterior summaries of ``samples`` ``(n, ...)``: CF-style NetCDF for lat-lon DataArrays
    (mean, std, quantiles and ``keep`` draws, with units, long names and a history naming the
    model file), ``.npz`` (``mean``, ``std``, ``quantiles``, ``samples``) for everything else;
    with draws widened by model error, its ``model_error_std`` per measurement too."""
    import datetime

    import numpy as np
    import xarray as xr

    from manifold_aps.version import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not isinstance(samples, xr.DataArray):
        draws = np.asarray(samples)
        extra = {} if model_error_std is None else {"model_error_std": np.asarray(model_error_std)}
        np.savez_compressed(path, mean=draws.mean(axis=0), std=draws.std(axis=0, ddof=1),
                            quantiles=np.quantile(draws, quantiles, axis=0), quantile_levels=np.asarray(quantiles),
                            samples=draws[:keep], **extra)
        return path
    name = samples.name or "signal"
    units = {"units": samples.attrs["units"]} if "units" in samples.attrs else {}
    described = samples.attrs.get("long_name", name)
    dataset = xr.Dataset({
        "mean": samples.mean("draw").assign_attrs(long_name=f"posterior mean of {described}", **units),
        "std": samples.std("draw", ddof=1).assign_attrs(long_name=f"posterior standard deviation of {described}",
                                                         **units),
        "quantiles": samples.quantile(list(quantiles), dim="draw").assign_attrs(
            long_name=f"posterior quantiles of {described}", **units),
        "samples": samples.isel(draw=slice(0, keep)).assign_attrs(long_name=f"posterior draws of {described}",
                                                                   **units),
    })
    if model_error_std is not None:
        dataset["model_error_std"] = model_error_std
    dataset["quantile"].attrs["long_name"] = "quantile level"
    dataset["draw"].attrs["long_name"] = "posterior draw index"
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    dataset.attrs = {"Conventions": "CF-1.8", "title": f"APS posterior of {described}",
                     "source": f"manifold_aps {__version__}, model {Path(model_path).resolve()}",
                     "history": f"{stamp}: manifold-aps sample --model {model_path} ({samples.sizes['draw']} draws"
                                + (", widened by model error)" if model_error_std is not None else ")")}
    dataset.to_netcdf(path)
    return path


def cmd_fit(args) -> int:
    from manifold_aps.aps import fit
    from manifold_aps.diffusion import load_prior
    from manifold_aps.mesh import load_mesh
    from manifold_aps.tasks import load_task

    _set_threads(args.threads)
    base_signals = None
    if args.task:  # loaded once, with enough training signals for the flow (--limit) and the base (--base-limit)
        both = args.base_limit is not None and args.limit is not None
        task = load_task(args.task, limit=max(args.limit, args.base_limit) if both else args.limit)
        mesh, signals, test = task.mesh, task.train[:args.limit], task.test[:args.limit][:16]
        mask_rate, noise_std = task.operator.hidden_fraction, task.operator.noise_std
        if args.base_limit is not None:
            base_signals = task.train[:args.base_limit]
    else:
        mesh, signals, test = load_mesh(args.mesh), _read_signals(args.signals), None
        mask_rate, noise_std = args.mask_rate, args.noise_std
    prior = load_prior(args.prior) if args.prior else None
    prior_draws = _read_signals(args.prior_draws) if args.prior_draws else None
    overrides = {key: value for key, value in (("iterations", args.iterations),
                                               ("cooldown_iterations", args.cooldown_iterations),
                                               ("flow_depth", args.flow_depth),
                                               ("hidden", args.hidden), ("num_times", args.num_times),
                                               ("condition_features", args.condition_features),
                                               ("marginal_components", args.marginal_components),
                                               ("forward_kl_weight", args.forward_kl_weight),
                                               ("forward_kl_draws", args.forward_kl_draws),
                                               ("forward_kl_steps", args.forward_kl_steps),
                                               ("forward_kl_noise", args.forward_kl_noise),
                                               ("elbo_min_time", args.elbo_min_time)) if value is not None}
    started = time.perf_counter()
    model = fit(mesh, signals, mask_rate=mask_rate, noise_std=noise_std, prior=prior, flow=args.flow, scale=args.scale,
                device=args.device, blind=args.blind, test_signals=test, seed=args.seed,
                gaussian_base=not args.no_gaussian_base, base_rank=args.base_rank, base_components=args.base_components,
                checkpoint_dir=Path(args.output).with_suffix(".checkpoints"), resume=not args.fresh,
                prior_draws=prior_draws, base_signals=base_signals, **overrides)
    model.report["train_seconds"] = time.perf_counter() - started  # APS only (with the base), or prior + APS
    model.save(args.output)
    print(json.dumps({"output": args.output, "report": model.report}, default=str))
    return 0


def cmd_sample(args) -> int:
    import torch

    from manifold_aps.aps import AmortizedPosteriorSampler

    _set_threads(args.threads)
    model = AmortizedPosteriorSampler.load(args.model)
    observed = _read_signals(args.input)
    with_error = model.model_error if args.model_error is None else args.model_error
    noise = args.measurement_noise_std
    samples = model.sample(observed, n=args.n, generator=torch.Generator().manual_seed(args.seed),
                           model_error=with_error, measurement_noise_std=noise)
    error_std = model.model_error_std(observed, measurement_noise_std=noise) if with_error else None
    path = _write_posterior(args.output, samples, args.quantiles, args.keep, args.model, error_std)
    print(json.dumps({"output": str(path), "samples": args.n, "kept": min(args.keep, args.n)}))
    return 0


def cmd_evaluate(args) -> int:
    from manifold_aps.aps import AmortizedPosteriorSampler
    import torch

    from manifold_aps.benchmark import run_methods, standard_methods
    from manifold_aps.tasks import load_task

    _set_threads(args.threads)
    model = AmortizedPosteriorSampler.load(args.model)
    task = load_task(args.task)
    truth = task.test[: args.n_measurements]
    measurement = task.operator(model.layout.pad(truth), generator=torch.Generator().manual_seed(args.seed))
    grid = (46, 90) if task.mesh.latitude is not None else None
    methods = standard_methods(("aps", "harmonic"), model.layout, task.mesh, aps_model=model)
    rows = run_methods(methods, truth, measurement, task.operator, grid, args.seed, log=lambda line: None)
    print(json.dumps({"task": task.name, "data": task.data_label, "rows": rows}, indent=2))
    return 0


def cmd_render(args) -> int:
    import torch

    from manifold_aps.aps import AmortizedPosteriorSampler
    from manifold_aps.render import plot_latlon_fields, render_posterior
    from manifold_aps.tasks import load_task

    model = AmortizedPosteriorSampler.load(args.model)
    task = load_task(args.task)
    truth = task.test[: args.count]
    layout = model.layout
    measurement = task.operator(layout.pad(truth), generator=torch.Generator().manual_seed(args.seed))
    draws = model.sample_measurement(measurement, 128, torch.Generator().manual_seed(args.seed))[..., : layout.num_vertices, :]
    observed = measurement.observed[:, : layout.num_vertices]
    y = layout.unpad(measurement.y)
    if task.mesh.latitude is not None:
        fields = {"truth": truth[0], "measurement": y[0], "APS sample": draws[0, 0], "posterior mean": draws.mean(0)[0],
                  "posterior std": draws.std(0)[0]}
        import numpy as np

        path = plot_latlon_fields(fields, np.linspace(90, -90, 46), np.arange(90) * 4.0, args.output,
                                  hidden=~observed[0].numpy(), columns=5)
    else:
        path = render_posterior(task.mesh, args.output, truth=truth, measurement=y, observed=observed, samples=draws,
                                mean=draws.mean(0), std=draws.std(0))
    print(json.dumps({"output": str(path)}))
    return 0


def cmd_bench(args) -> int:
    from manifold_aps.benchmark import run_benchmark
    from manifold_aps.tasks import load_task

    task = load_task("bunny_mnist" if args.benchmark == "bunny_mnist" else "era5_proxy")
    run_benchmark(task, args, ["manifold-aps", "bench", *sys.argv[2:]],
                  grid_shape=(46, 90) if task.mesh.latitude is not None else None)
    return 0


def cmd_demo(args) -> int:
    from manifold_aps.demo import main as demo_main

    demo_main(["--output", args.output, "--iterations", str(args.iterations)])
    return 0


COOLDOWN_HELP = ("the last C iterations decay the learning rate linearly to 1/C of it (default 0: none); an "
                 "interrupted or finished run resumes with a cool-down added while its steps done keep their rates")


def build_parser() -> argparse.ArgumentParser:
    from manifold_aps.scales import SCALES
    from manifold_aps.tasks import TASKS

    parser = argparse.ArgumentParser(prog="manifold-aps", description="Amortized posterior sampling on meshes.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train-prior", help="train a diffusion prior on a task's training signals",
                                description="Train a diffusion prior by denoising score matching; resumable.")
    train.add_argument("--task", choices=TASKS, required=True)
    train.add_argument("--scale", choices=SCALES, default="cpu")
    train.add_argument("--network", choices=("gaussian_residual", "mlp", "spectral", "unet1d", "vertex_mlp",
                                             "diffusion_net"), default="gaussian_residual",
                       help="gaussian_residual (default): a guided correction around the PPCA Gaussian of the "
                            "training signals, configured by the scale's preset (the scale's training preset is "
                            "set for it; a plain mlp wants ~20000 --iterations at --learning-rate 2e-4)")
    train.add_argument("--network-config", default="{}",
                       help='JSON of network options, e.g. \'{"width": 1024}\'; for gaussian_residual also "base", '
                            '"rank", "components" (a mixture of PPCA), "guide"')
    train.add_argument("--iterations", "--steps", dest="iterations", type=int,
                       help="optimiser steps (default: the scale's preset; --steps is the old name)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--cooldown-iterations", type=int, help=COOLDOWN_HELP)
    train.add_argument("--limit", type=int, help="use at most this many signals per split")
    train.add_argument("--output", required=True, help="prior file to write (a .training.pt checkpoint sits beside it)")
    train.add_argument("--device", default="auto")
    train.add_argument("--threads", type=positive_int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--config", help="JSON or TOML file of options")
    train.set_defaults(handler=cmd_train_prior)

    fitting = commands.add_parser("fit", help="train an amortized posterior sampler (and a prior if none is given)",
                                  description="Train APS on measurements of a task's or your own signals.")
    source = fitting.add_argument_group("signals: a task, or a mesh file and a signals file")
    source.add_argument("--task", choices=TASKS)
    source.add_argument("--mesh", help="PLY / OBJ / OFF mesh file")
    source.add_argument("--signals", help=".nc / .npy / .npz (key 'signals'), (N, V) or (N, V, C); NaN = missing")
    fitting.add_argument("--mask-rate", type=float, default=0.6,
                         help="hidden fraction: share of vertices hidden per measurement (with --signals)")
    fitting.add_argument("--noise-std", type=float, default=0.05, help="measurement noise σ_y (with --signals)")
    fitting.add_argument("--prior", help="a prior file from train-prior (default: train one)")
    fitting.add_argument("--flow", choices=("realnvp", "mesh"), default="realnvp")
    fitting.add_argument("--scale", choices=SCALES, default="cpu")
    fitting.add_argument("--iterations", type=int, help="optimiser steps (default: the scale's preset)")
    fitting.add_argument("--cooldown-iterations", type=int, help=COOLDOWN_HELP)
    fitting.add_argument("--blind", action="store_true", help="unknown mask: train with rates in 30-60 %%")
    fitting.add_argument("--flow-depth", "--n-steps", dest="flow_depth", type=int, default=None,
                         help="coupling steps of the flow (default: the scale's preset; --n-steps is the old name)")
    fitting.add_argument("--hidden", type=int, default=None, help="flow coupling width (default: the scale's preset)")
    fitting.add_argument("--num-times", type=int, default=None, help="ELBO draws per flow sample (default: the preset)")
    fitting.add_argument("--elbo-min-time", type=float, default=None,
                         help="lower limit ε of the ELBO's time integral (default: the prior's, 1e-3); the prior term "
                         "is the prior smoothed by N(0, σ_ε²), σ_ε ≈ 0.0105 at 1e-3 and 0.001 at 1e-5")
    fitting.add_argument("--condition-features", type=int, default=None,
                         help="m > 0: a shared encoder reads the condition once into m features for every "
                         "coupling (cheaper wide flows; default 0)")
    fitting.add_argument("--marginal-components", type=int, default=None,
                         help="K > 0: a per-entry monotone map with K tanh terms after the Gaussian base (default 0)")
    fitting.add_argument("--forward-kl-weight", type=float, default=None,
                         help="λ > 0: add λ·(−log q(x|y)) on signals drawn from the prior (mass-covering; default 0)")
    fitting.add_argument("--forward-kl-draws", type=int, default=None,
                         help="prior draws for --forward-kl-weight (default 4096; drawn once, kept beside --output)")
    fitting.add_argument("--prior-draws", help="signals file (as --signals) of draws from the prior for "
                         "--forward-kl-weight, made elsewhere (default: drawn from the prior here)")
    fitting.add_argument("--forward-kl-steps", type=int, default=None,
                         help="ancestral-sampling steps of each prior draw for --forward-kl-weight (default 100)")
    fitting.add_argument("--forward-kl-noise", type=float, default=None,
                         help="σ > 0: fit --forward-kl-weight's density to the draws plus N(0, σ²) noise "
                         "(dequantised; normalised units like the noise std; default 0)")
    fitting.add_argument("--base-rank", type=int, default=64,
                         help="largest rank of the Gaussian (optimal-interpolation) base of the flow")
    fitting.add_argument("--base-components", type=positive_int, default=1,
                         help="K ≥ 2: the base is a mixture of K PPCA Gaussians (rank ≤ --base-rank, chosen on a "
                         "held-out tenth) whose exact posterior the flow maps; no model error (default 1: one Gaussian)")
    fitting.add_argument("--base-limit", type=positive_int,
                         help="fit the Gaussian base on at most this many of the --task's training signals (default: "
                         "those the flow trains on, see --limit); the base's memory is per flow-training signal only")
    fitting.add_argument("--no-gaussian-base", action="store_true", help="train the flow from z alone (as the paper)")
    fitting.add_argument("--fresh", action="store_true",
                         help="start afresh, overwriting the checkpoints beside --output (by default an interrupted run "
                              "resumes, and a run with other data or settings is refused)")
    fitting.add_argument("--limit", type=int)
    fitting.add_argument("--output", required=True)
    fitting.add_argument("--device", default="auto")
    fitting.add_argument("--threads", type=positive_int)
    fitting.add_argument("--seed", type=int, default=0)
    fitting.add_argument("--config")
    fitting.set_defaults(handler=cmd_fit)

    sampling = commands.add_parser("sample", help="posterior samples, mean and std for measured signals",
                                   description="Sample the posterior of signals with NaN at unobserved vertices.")
    sampling.add_argument("--model", required=True)
    sampling.add_argument("--input", required=True, help=".nc / .npy / .npz with NaN at hidden vertices")
    sampling.add_argument("--output", required=True, help=".nc for lat-lon grids, else .npz")
    sampling.add_argument("--n", type=int, default=128, help="posterior samples per measurement")
    sampling.add_argument("--keep", type=int, default=8, help="samples written to the output")
    sampling.add_argument("--quantiles", type=_levels, default=(0.05, 0.5, 0.95),
                          help="comma-separated quantile levels written to the output (default 0.05,0.5,0.95)")
    sampling.add_argument("--model-error", action=argparse.BooleanOptionalAction, default=None,
                          help="widen the draws by the white variance each map says the prior misses (data from "
                               "another source than the training signals); default: the model's own setting")
    sampling.add_argument("--measurement-noise-std", type=float, default=None,
                          help="with model error: the std of the input's noise in its units, when it is not the "
                               "noise the model was trained for (cleaner data would hide the model error)")
    sampling.add_argument("--seed", type=int, default=0)
    sampling.add_argument("--threads", type=positive_int)
    sampling.add_argument("--config")
    sampling.set_defaults(handler=cmd_sample)

    evaluate = commands.add_parser("evaluate", help="score a model on a task's test measurements",
                                   description="PSNR, SSIM, coverage and CRPS of APS and harmonic interpolation.")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--task", choices=TASKS, required=True)
    evaluate.add_argument("--n-measurements", type=int, default=16)
    evaluate.add_argument("--threads", type=positive_int)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--config")
    evaluate.set_defaults(handler=cmd_evaluate)

    render = commands.add_parser("render", help="PNG of truth, measurement, samples, mean and std",
                                 description="Render posteriors of a task's test measurements.")
    render.add_argument("--model", required=True)
    render.add_argument("--task", choices=TASKS, required=True)
    render.add_argument("--output", required=True)
    render.add_argument("--count", type=int, default=2, help="measurements (rows) on a mesh figure")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--config")
    render.set_defaults(handler=cmd_render)

    from manifold_aps.benchmark import add_arguments

    bench = commands.add_parser("bench", help="run a benchmark and write benchmarks/results",
                                description="Every method on the same measurements; JSON + markdown results.")
    bench.add_argument("benchmark", choices=("era5", "bunny_mnist"))
    add_arguments(bench)
    bench.add_argument("--config")
    bench.set_defaults(handler=cmd_bench)

    demo = commands.add_parser("demo", help="the offline demo (no data needed)", description="APS vs exact posteriors.")
    demo.add_argument("--output", default="demo_output")
    demo.add_argument("--iterations", type=int, default=350)
    demo.add_argument("--config")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args = _apply_config(parser, args, argv)
    _check_arguments(parser, args)
    return args.handler(args)


def run() -> int:
    """Console entry point: like :func:`main`, but a user's mistake (bad file, bad value) is one
    line on stderr and exit status 2 instead of a traceback."""
    from manifold_aps.checkpoint import CheckpointError

    try:
        return main()
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as error:
        print(f"manifold-aps: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
