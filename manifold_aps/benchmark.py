"""Run every method on the same measurements and write results files (JSON + markdown).

Methods (rows): ``aps_n1`` (one APS sample), ``aps_n128`` (mean of 128), ``dps`` and ``mcg``
(mean of a few diffusion posterior samples, 1000 NFE each by default), ``harmonic`` (cotan
harmonic interpolation), ``oi`` (optimal interpolation: exact posterior under a PPCA Gaussian
fitted to training signals, rank chosen on validation) and, where the prior is Gaussian,
``exact``. Metrics are on the real vertices: ``psnr`` (data range 1), ``psnr_hidden`` (hidden
vertices only), ``mse``, ``ssim`` (lat-lon grids), and for samplers ``coverage_90`` (central 90 %
intervals, hidden vertices) and ``crps`` (hidden vertices); plus ``seconds_per_measurement``,
``nfe`` and ``n_measurements``. Timings are wall-clock on the machine recorded in the file.
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from manifold_aps.baselines import harmonic_interpolation, sample_dps, sample_mcg
from manifold_aps.gaussian_posterior import optimal_interpolation
from manifold_aps.metrics import crps, interval_coverage, mse, psnr, ssim
from manifold_aps.operators import Measurement, RandomVertexMask

__all__ = ["measure", "score", "run_methods", "fit_oi", "blind_sweep", "environment", "write_results"]


def measure(signals: torch.Tensor, layout, hidden_fraction: float, noise_std: float, seed: int) -> Measurement:
    """Fixed-seed measurements of unpadded signals ``(N, V, C)``."""
    operator = RandomVertexMask(layout.num_vertices, layout.padded_vertices, hidden_fraction, noise_std)
    return operator(layout.pad(signals), generator=torch.Generator().manual_seed(seed))


def score(estimate: torch.Tensor, truth: torch.Tensor, hidden: torch.Tensor, grid_shape=None, samples=None) -> dict:
    """Per-method metrics, averaged over measurements. Tensors are unpadded ``(N, V, C)``;
    ``hidden`` ``(N, V)``; ``samples`` ``(S, N, V, C)``."""
    region_all = torch.ones_like(hidden)
    row = {
        "psnr": float(psnr(estimate, truth, region_all[..., None].expand_as(truth), vertex_axes=2).mean()),
        "psnr_hidden": float(psnr(estimate, truth, hidden[..., None].expand_as(truth), vertex_axes=2).mean()),
        "mse": float(mse(estimate, truth, vertex_axes=2).mean()),
    }
    if grid_shape is not None and truth.shape[-1] == 1:
        row["ssim"] = float(ssim(estimate[..., 0].reshape(-1, *grid_shape), truth[..., 0].reshape(-1, *grid_shape)).mean())
    if samples is not None and samples.shape[0] > 1:
        region = hidden[..., None].expand_as(truth)
        row["coverage_90"] = float(interval_coverage(samples, truth, 0.9, region=region, vertex_axes=2).mean())
        row["crps"] = float(crps(samples, truth, region=region, vertex_axes=2).mean())
    return row


def run_methods(layout, mesh, truth, measurement, noise_std: float, prior=None, aps_model=None, train_signals=None,
                validation=None, methods=("aps", "dps", "mcg", "harmonic", "oi"), diffusion_samples: int = 4,
                diffusion_steps: int = 1000, step_size: float = 1.0, grid_shape=None, exact=None,
                seed: int = 0, log=print, oi=None) -> list[dict]:
    """Score ``methods`` on one set of measurements of the unpadded ``truth`` ``(N, V, C)``.

    ``validation`` = ``(signals, Measurement)`` chooses the OI rank (or pass ``oi``, the result of
    :func:`fit_oi`, to reuse one fit); ``exact`` = a
    :class:`~manifold_aps.gaussian_posterior.LowRankGaussian` adds the ``exact`` row.
    """
    count, V, C = truth.shape
    y = layout.unpad(measurement.y)
    observed = measurement.observed[:, :V]
    hidden = ~observed
    operator = RandomVertexMask(V, layout.padded_vertices, 0.0, noise_std)  # carries σ_y for DPS/MCG
    rows = []

    def add(name, estimate, seconds, nfe, samples=None):
        row = dict(method=name, **score(estimate, truth, hidden, grid_shape, samples),
                   seconds_per_measurement=seconds / count, nfe=nfe, n_measurements=count)
        rows.append(row)
        log(f"{name:>9}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "method"))

    generator = torch.Generator().manual_seed(seed)
    if "aps" in methods and aps_model is not None:
        started = time.perf_counter()
        one = layout.unpad(aps_model.sample_measurement(measurement, 1, generator)[0])
        add("aps_n1", one, time.perf_counter() - started, 1)
        started = time.perf_counter()
        draws = aps_model.sample_measurement(measurement, 128, generator)[..., :V, :].cpu()
        add("aps_n128", draws.mean(dim=0), time.perf_counter() - started, 1, draws)
    for name, sampler in (("dps", sample_dps), ("mcg", sample_mcg)):
        if name not in methods or prior is None:
            continue
        repeated = Measurement(measurement.y.repeat(diffusion_samples, 1, 1), measurement.observed.repeat(diffusion_samples, 1))
        started = time.perf_counter()
        result = sampler(prior, repeated, operator, num_steps=diffusion_steps, step_size=step_size, generator=generator)
        seconds = time.perf_counter() - started
        draws = layout.unpad(result.sample).reshape(diffusion_samples, count, V, C)
        add(name, draws.mean(dim=0), seconds, result.nfe, draws)
    if "harmonic" in methods:
        started = time.perf_counter()
        filled = harmonic_interpolation(mesh, y, observed)
        add("harmonic", torch.as_tensor(filled, dtype=torch.float32), time.perf_counter() - started, 0)
    if "oi" in methods and (oi is not None or (train_signals is not None and validation is not None)):
        gaussian, ranks, fit_seconds = oi or fit_oi(layout, train_signals, validation, noise_std)
        started = time.perf_counter()
        posterior = gaussian.posterior(y.reshape(count, -1), observed.repeat_interleave(C, dim=1), operator.noise_std)
        mean = posterior.mean.reshape(count, V, C).float()
        draws = (posterior.mean + posterior.std * torch.randn(128, *posterior.mean.shape, generator=generator,
                                                              dtype=torch.float64)).reshape(128, count, V, C).float()
        add("oi", mean, time.perf_counter() - started, 0, draws)
        rows[-1].update(rank=gaussian.rank, rank_scores=ranks, fit_seconds=fit_seconds)
    if exact is not None:
        started = time.perf_counter()
        posterior = exact.posterior(y.reshape(count, -1), observed.repeat_interleave(C, dim=1), operator.noise_std)
        draws = (posterior.mean + posterior.std * torch.randn(128, *posterior.mean.shape, generator=generator,
                                                              dtype=torch.float64)).reshape(128, count, V, C).float()
        add("exact", posterior.mean.reshape(count, V, C).float(), time.perf_counter() - started, 0, draws)
    return rows


def fit_oi(layout, train_signals, validation, noise_std: float):
    """Optimal interpolation fitted to ``train_signals`` ``(N, V, C)``, rank chosen on ``validation``
    = ``(signals, Measurement)``: ``(LowRankGaussian, {rank: score}, fit seconds)``."""
    val_signals, val_measurement = validation
    V, C = layout.num_vertices, layout.num_channels
    started = time.perf_counter()
    gaussian, ranks = optimal_interpolation(train_signals.reshape(len(train_signals), -1),
                                            (layout.unpad(val_measurement.y).reshape(len(val_signals), -1),
                                             val_measurement.observed[:, :V].repeat_interleave(C, dim=1)),
                                            val_signals.reshape(len(val_signals), -1), noise_std)
    return gaussian, ranks, time.perf_counter() - started


def blind_sweep(layout, mesh, truth, blind_model, known_model, noise_std: float, train_signals, validation,
                rates=(0.3, 0.4, 0.5, 0.6), seed: int = 0, grid_shape=None, log=print, oi=None) -> list[dict]:
    """Blind imputation at several hidden rates (paper Fig. 7): the blind sampler sees ``y`` only;
    known-operator APS and optimal interpolation are given the mask. Rows carry ``hidden_fraction``."""
    rows = []
    oi = oi or fit_oi(layout, train_signals, validation, noise_std)
    for index, rate in enumerate(rates):
        log(f"--- blind sweep: {100 * rate:.0f}% hidden")
        measurement = measure(truth, layout, rate, noise_std, seed + 100 + index)
        for prefix, model, methods in (("aps_blind", blind_model, ("aps",)), ("aps", known_model, ("aps", "oi"))):
            for row in run_methods(layout, mesh, truth, measurement, noise_std, aps_model=model, train_signals=train_signals,
                                   validation=validation, methods=methods, grid_shape=grid_shape, seed=seed, log=log,
                                   oi=oi):
                row["method"] = row["method"].replace("aps", prefix, 1)
                rows.append(dict(row, hidden_fraction=rate))
    return rows


def environment(device: str = "cpu") -> dict:
    """Machine, device, threads, date and commit for a results file."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    return dict(machine=f"{platform.node()} {platform.machine()} ({torch.get_num_threads()} threads, "
                        f"{platform.processor() or 'cpu'})",
                device=device, threads=torch.get_num_threads(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), commit=commit)


def write_results(results: dict, stem) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and a markdown table ``<stem>.md``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    columns = ["method", "hidden_fraction", "psnr", "psnr_hidden", "mse", "ssim", "coverage_90", "crps", "seconds_per_measurement", "nfe",
               "n_measurements"]
    lines = [f"# {results['task']} ({results['scale']} scale)", "",
             f"- data: {results['data']}", f"- command: `{results.get('command', '')}`",
             f"- machine: {results['machine']}; device {results['device']}; threads {results['threads']}",
             f"- date: {results['date']}; commit {results['commit']}; training seconds {results.get('train_seconds')}", ""]
    for section, rows in results["sections"].items():
        present = [c for c in columns if any(c in row for row in rows)]
        lines += [f"## {section}", "", "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
        for row in rows:
            cells = [f"{row[c]:.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in present]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def add_arguments(parser) -> None:
    """Options shared by the benchmark scripts."""
    parser.add_argument("--scale", choices=("smoke", "cpu", "paper"), default="smoke")
    parser.add_argument("--from-checkpoint", metavar="DIR",
                        help="load <task>_prior_<scale>.pt and <task>_aps_<scale>.pt from DIR instead of training; "
                             "'pretrained' loads the models shipped in manifold_aps.pretrained")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="where trained models are written")
    parser.add_argument("--n-measurements", type=int, default=None, help="test measurements (default by scale)")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="DPS/MCG steps (default 1000; smoke 50)")
    parser.add_argument("--diffusion-samples", type=int, default=4)
    parser.add_argument("--step-size", type=float, default=1.0, help="DPS/MCG guidance scale")
    parser.add_argument("--methods", default="aps,dps,mcg,harmonic,oi,blind",
                        help="comma-separated; 'blind' runs the blind sweep when --from-checkpoint DIR holds "
                             "<task>_blind_aps_<scale>.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))


SCALE_DEFAULTS = {"smoke": dict(n_measurements=4, diffusion_steps=50, limit=256, prior_steps=200, aps_iterations=100),
                  "cpu": dict(n_measurements=32, diffusion_steps=1000, limit=None, prior_steps=None, aps_iterations=None),
                  "paper": dict(n_measurements=128, diffusion_steps=1000, limit=None, prior_steps=None, aps_iterations=None)}


def train_or_load(task, args, network: str = "mlp", network_config: dict | None = None, log=print):
    """The task's prior and APS model: loaded with ``--from-checkpoint``, else trained (and saved)."""
    from manifold_aps.aps import AmortizedPosteriorSampler, fit
    from manifold_aps.diffusion import DiffusionPrior, build_network, load_prior, prior_training_config, save_prior, train_prior
    from manifold_aps.signals import VertexLayout

    defaults = SCALE_DEFAULTS[args.scale]
    if args.from_checkpoint == "pretrained":
        from manifold_aps import pretrained

        model = pretrained.load_sampler(task.name)
        return model.prior, model, model.report.get("train_seconds")
    if args.from_checkpoint:
        folder = Path(args.from_checkpoint)
        prior = load_prior(folder / f"{task.name}_prior_{args.scale}.pt")
        model = AmortizedPosteriorSampler.load(folder / f"{task.name}_aps_{args.scale}.pt")
        return prior, model, model.report.get("train_seconds")
    folder = Path(args.checkpoint_dir)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[-1])
    train = task.train if defaults["limit"] is None else task.train[: defaults["limit"]]
    started = time.perf_counter()
    prior = DiffusionPrior(build_network(network, layout, mesh=task.mesh, **(network_config or {})), layout)
    overrides = {} if defaults["prior_steps"] is None else {"steps": defaults["prior_steps"]}
    config = prior_training_config(args.scale, task.paper_task, seed=args.seed, **overrides)
    train_prior(prior, layout.pad(train), config, checkpoint_path=folder / f"{task.name}_prior_{args.scale}.training.pt")
    save_prior(folder / f"{task.name}_prior_{args.scale}.pt", prior, task.normalizer)
    aps_overrides = {} if defaults["aps_iterations"] is None else {"iterations": defaults["aps_iterations"]}
    model = fit(task.mesh, train, mask_rate=task.hidden_fraction, noise_std=task.noise_std, prior=prior,
                scale=args.scale, seed=args.seed, checkpoint_dir=folder / f"{task.name}_{args.scale}", **aps_overrides)
    seconds = time.perf_counter() - started
    model.report["train_seconds"] = seconds
    model.save(folder / f"{task.name}_aps_{args.scale}.pt")
    log(f"trained prior and APS in {seconds:.0f} s")
    return prior, model, seconds


def _blind_model(task, args):
    """The blind sampler next to the loaded models (``--from-checkpoint``), or None."""
    from manifold_aps import pretrained
    from manifold_aps.aps import AmortizedPosteriorSampler

    if args.from_checkpoint == "pretrained":
        return pretrained.load_sampler(task.name, blind=True) if f"{task.name}_blind" in pretrained.available() else None
    path = Path(args.from_checkpoint or ".") / f"{task.name}_blind_aps_{args.scale}.pt"
    return AmortizedPosteriorSampler.load(path) if args.from_checkpoint and path.exists() else None


def run_benchmark(task, args, argv, grid_shape=None, exact=None, prior=None, model=None, train_seconds=None,
                  log=print, extra: dict | None = None) -> dict:
    """Measure the task's test split (and its extra test sets) and score every method; write results.

    A ``model`` passed in (with its ``prior`` and ``train_seconds``) is used as is instead of
    ``train_or_load``; ``extra`` holds further top-level entries for the results file (its
    ``notes`` list, if any, starts the file's notes).
    """
    torch.set_num_threads(args.threads)
    defaults = SCALE_DEFAULTS[args.scale]
    if model is None:
        prior, model, train_seconds = train_or_load(task, args, log=log)
    layout = model.layout
    count = args.n_measurements or defaults["n_measurements"]
    steps = args.diffusion_steps or defaults["diffusion_steps"]
    methods = tuple(args.methods.split(","))
    validation_signals = task.validation[:64]
    validation = (validation_signals, measure(validation_signals, layout, task.hidden_fraction, task.noise_std, args.seed + 1))
    train_for_oi = task.train if defaults["limit"] is None else task.train[: defaults["limit"]]
    sections = {}
    blind_model = _blind_model(task, args) if "blind" in methods else None
    oi = fit_oi(layout, train_for_oi, validation, task.noise_std) if "oi" in methods or blind_model is not None else None
    test_sets = {"test": task.test[:count], **{name: signals[:count] for name, signals in task.extra_test.items()}}
    for name, truth in test_sets.items():
        log(f"--- {name}: {len(truth)} measurements, {100 * task.hidden_fraction:.0f}% hidden, σ {task.noise_std}")
        measurement = measure(truth, layout, task.hidden_fraction, task.noise_std, args.seed)
        sections[name] = run_methods(layout, task.mesh, truth, measurement, task.noise_std, prior=prior, aps_model=model,
                                     train_signals=train_for_oi, validation=validation, methods=methods,
                                     diffusion_samples=args.diffusion_samples, diffusion_steps=steps,
                                     step_size=args.step_size, grid_shape=grid_shape, exact=exact, seed=args.seed, log=log,
                                     oi=oi)
    if blind_model is not None:
        sections["blind_sweep"] = blind_sweep(layout, task.mesh, task.test[:count], blind_model, model, task.noise_std,
                                              train_for_oi, validation, seed=args.seed, grid_shape=grid_shape, log=log,
                                              oi=oi)
    results = dict(task=task.name, scale=args.scale, data=task.data_label, **environment(),
                   train_seconds=train_seconds, command="python " + " ".join(argv),
                   hidden_fraction=task.hidden_fraction, noise_std=task.noise_std, sections=sections,
                   rows=sections["test"], notes=[])
    results.update(extra or {})
    rows = {row["method"]: row for row in sections["test"]}
    if train_seconds and "aps_n1" in rows and "dps" in rows:
        # per posterior sample: one APS draw vs one DPS draw (DPS ran diffusion_samples draws per measurement)
        aps_sample = rows["aps_n1"]["seconds_per_measurement"]
        dps_sample = rows["dps"]["seconds_per_measurement"] / args.diffusion_samples
        gain = dps_sample - aps_sample
        results["seconds_per_sample"] = {"aps": aps_sample, "dps": dps_sample}
        results["break_even_samples"] = train_seconds / gain if gain > 0 else None
        results["notes"].append(
            f"amortisation break-even: APS training {train_seconds:.0f} s ÷ (DPS {dps_sample:.3g} s − APS {aps_sample:.3g} s per "
            f"posterior sample) = {results['break_even_samples']:.0f} samples" if gain > 0 else
            f"no break-even: a DPS sample ({dps_sample:.3g} s) is not slower than an APS sample ({aps_sample:.3g} s) here")
    write_results(results, Path(args.results_dir) / f"{task.name}_{args.scale}")
    return results
