"""Run every method on the same measurements and write results files (JSON + markdown).

Methods (rows), in order: the zero-shot diffusion samplers ``dps``, ``mcg``, ``mmps``, ``pigdm``
and ``diffpir`` (:mod:`manifold_aps.zero_shot`; the same prior as APS, ``diffusion_samples`` draws
per measurement, each knob tuned on validation by :func:`tune`), ``oi`` (optimal interpolation:
exact posterior under a PPCA Gaussian fitted to training signals, rank chosen on validation),
``gmm`` (exact posterior under a mixture of PPCA, components and rank chosen on validation;
:mod:`manifold_aps.mixture_of_ppca`), ``harmonic`` (cotan harmonic interpolation), ``aps_base``
(APS's Gaussian base alone, i.e. the flow at the identity: the exact posterior of the PPCA prior
the flow is composed with), ``aps_n1`` (one APS sample), ``aps_n128`` (mean of 128) and, where the
prior is Gaussian, ``exact``. Metrics are on
the real vertices: ``psnr`` (data range 1), ``psnr_hidden`` (hidden vertices only), ``mse``,
``ssim`` (lat-lon grids), and for samplers with at least :data:`~manifold_aps.metrics.MIN_SAMPLES`
(32) draws per measurement ``coverage_90`` (central 90 % intervals, hidden vertices) and ``crps``
(hidden vertices; left empty with fewer draws); plus ``seconds_per_measurement``, ``nfe`` (network
evaluations per posterior sample) and ``n_measurements``. A tuned row also carries ``tuned`` (the
chosen knob value) and ``sweep`` (validation PSNR of every value). Timings are wall-clock on the
machine recorded in the file.

Every method is called the same way, ``method(measurement, operator, generator)``
(:mod:`manifold_aps.methods`); :func:`run_methods` loops over a ``{name: method}`` dict.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import time
import zlib
from pathlib import Path

import torch

from manifold_aps.gaussian_posterior import DEFAULT_RANKS, fit_optimal_interpolation
from manifold_aps.methods import aps_method, diffusion_method, gaussian_method, harmonic_method, mixture_method
from manifold_aps.metrics import MIN_SAMPLES, crps, interval_coverage, mse, psnr, ssim
from manifold_aps.mixture_of_ppca import select_mixture_of_ppca
from manifold_aps.operators import Measurement, RandomVertexMask
from manifold_aps.scales import SCALES, preset
from manifold_aps.signals import VertexLayout, latlon_grid
from manifold_aps.zero_shot import sample_diffpir, sample_dps, sample_mcg, sample_mmps, sample_pigdm

__all__ = ["score", "method_seed", "run_methods", "ZERO_SHOT", "knob_values", "tune", "standard_methods", "fit_oi",
           "fit_gmm", "blind_sweep", "environment", "write_results", "save_results", "median_seconds", "base_description"]

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
    if samples is not None and samples.shape[0] >= MIN_SAMPLES:  # calibration scores only from ≥ 32 draws
        region = hidden[..., None].expand_as(truth)
        row["coverage_90"] = float(interval_coverage(samples, truth, 0.9, region=region, vertex_axes=2).mean())
        row["crps"] = float(crps(samples, truth, region=region, vertex_axes=2).mean())
    return row


def method_seed(seed: int, name: str) -> int:
    """The seed of method ``name``'s draws in a run seeded by ``seed``: ``seed + crc32(name)``."""
    return seed + zlib.crc32(name.encode())


def run_methods(methods: dict, truth: torch.Tensor, measurement: Measurement, operator, grid_shape=None,
                seed: int = 0, log=print) -> list[dict]:
    """Score every ``{name: method}`` (:mod:`manifold_aps.methods`) on one set of measurements of the
    unpadded ``truth`` ``(N, V, C)``, in order. Each method draws from its own generator, seeded by
    ``seed`` and its name (:func:`method_seed`), so its row does not depend on which others ran."""
    count, V, _ = truth.shape
    hidden = ~measurement.observed[:, :V]
    rows = []
    for name, method in methods.items():
        started = time.perf_counter()
        estimate = method(measurement, operator, torch.Generator().manual_seed(method_seed(seed, name)))
        seconds = time.perf_counter() - started
        row = dict(method=name, **score(estimate.mean, truth, hidden, grid_shape, estimate.samples),
                   seconds_per_measurement=seconds / count, nfe=estimate.nfe, n_measurements=count, **estimate.info)
        rows.append(row)
        log(f"{name:>9}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                                      if k != "method" and not isinstance(v, (dict, list))))
    return rows


#: the zero-shot samplers of the benchmark and the knob :func:`tune` sets: ``{name: (sampler, knob)}``
ZERO_SHOT = {"dps": (sample_dps, "step_size"), "mcg": (sample_mcg, "step_size"), "mmps": (sample_mmps, "cg_steps"),
             "pigdm": (sample_pigdm, "prior_variance"), "diffpir": (sample_diffpir, "regularization")}


def knob_values(train_signals: torch.Tensor) -> dict:
    """The values :func:`tune` tries per zero-shot sampler, ``{name: values}``: the usual grids with
    one more value above (a smoke run chose the top of each). ΠGDM's ``prior_variance`` is a multiple
    (0.03, 0.1, 0.3, 1, 3) of the per-entry variance of ``train_signals`` ``(N, V, C)``, or the
    paper's 1 (unit-variance data)."""
    variance = float(train_signals.double().var(dim=0).mean())
    return {"dps": (0.1, 0.25, 0.5, 1.0, 2.0, 5.0), "mcg": (0.1, 0.25, 0.5, 1.0, 2.0, 5.0), "mmps": (1, 2, 3, 5),
            "pigdm": tuple(f * variance for f in (0.03, 0.1, 0.3, 1.0, 3.0)) + (1.0,), "diffpir": (0.01, 0.1, 1.0, 10.0, 100.0)}


def tune(candidates: dict, truth: torch.Tensor, measurement: Measurement, operator, seed: int = 0,
         log=print) -> dict:
    """Pick each method's knob on validation: ``candidates`` ``{name: (knob, values, build)}`` with
    ``build(value) -> method``; every value's method is run on ``measurement`` of the unpadded
    validation ``truth`` ``(N, V, C)`` (one generator seeded by ``seed`` per run) and the value with
    the best PSNR of the mean wins (a diverged, NaN run never does). Returns ``{name: dict(knob, value, sweep)}``, ``sweep`` a row per
    value with ``psnr`` and ``seconds``."""
    hidden = ~measurement.observed[:, :truth.shape[1]]
    chosen = {}
    for name, (knob, values, build) in candidates.items():
        sweep = []
        for value in values:
            started = time.perf_counter()
            estimate = build(value)(measurement, operator, torch.Generator().manual_seed(seed))
            sweep.append({knob: value, "psnr": score(estimate.mean, truth, hidden)["psnr"],
                          "seconds": time.perf_counter() - started})
            log(f"tune {name}: {knob} {value:.4g} → validation PSNR {sweep[-1]['psnr']:.2f}")
        best = max(sweep, key=lambda row: row["psnr"] if row["psnr"] == row["psnr"] else -float("inf"))  # NaN loses
        chosen[name] = dict(knob=knob, value=best[knob], sweep=sweep)
    return chosen


def standard_methods(names, layout, mesh=None, prior=None, aps_model=None, oi=None, exact=None,
                     diffusion_samples: int = 32, diffusion_steps: int = 1000, tuning: dict | None = None,
                     gmm=None, model_error: bool = False) -> dict:
    """The benchmark's rows for the method ``names`` (``dps``, ``mcg``, ``mmps``, ``pigdm``,
    ``diffpir``, ``oi``, ``gmm``, ``harmonic``, ``aps``) that can be built from what is given, in
    that order: ``aps`` gives ``aps_base`` (a known-operator model with a Gaussian base), ``aps_n1``
    and ``aps_n128``; ``tuning`` is :func:`tune`'s result
    (a sampler not in it keeps its default knob);
    ``oi`` is :func:`fit_oi`'s result, ``gmm`` :func:`fit_gmm`'s; ``exact`` a Gaussian whose
    posterior is the truth (adds ``exact``). ``model_error`` adds ``oi_model_error`` and
    ``aps_n128_model_error``: the same with each measurement's estimated model error
    (:mod:`manifold_aps.model_error`)."""
    methods, tuning = {}, tuning or {}
    for name, (sampler, knob) in ZERO_SHOT.items():
        if name in names and prior is not None:
            knobs = {knob: tuning[name]["value"]} if name in tuning else {}
            info = dict(tuned=tuning[name]["value"], sweep=tuning[name]["sweep"]) if name in tuning else None
            methods[name] = diffusion_method(sampler, prior, diffusion_samples, diffusion_steps, info, **knobs)
    if "oi" in names and oi is not None:
        gaussian, scores, fit_seconds = oi
        methods["oi"] = gaussian_method(gaussian, layout, info=dict(tuned=dict(rank=gaussian.rank), rank=gaussian.rank,
                                                                     rank_scores=scores, fit_seconds=fit_seconds))
        if model_error:
            methods["oi_model_error"] = gaussian_method(gaussian, layout, info=dict(tuned=dict(rank=gaussian.rank)),
                                                        model_error=True)
    if "gmm" in names and gmm is not None:
        field, table, fit_seconds = gmm
        chosen = dict(components=field.num_components, rank=field.components[0].rank)
        methods["gmm"] = mixture_method(field, layout, info=dict(tuned=chosen, sweep=table, fit_seconds=fit_seconds))
    if "harmonic" in names and mesh is not None:
        methods["harmonic"] = harmonic_method(mesh, layout)
    if "aps" in names and aps_model is not None:
        if aps_model.mixture_base and not aps_model.blind:  # the flow at the identity: APS's start
            base = aps_model.base
            methods["aps_base"] = mixture_method(base, layout, info=dict(components=base.num_components,
                                                                        rank=base.components[0].rank))
        elif aps_model.base is not None and not aps_model.blind:
            methods["aps_base"] = gaussian_method(aps_model.base, layout, info=dict(rank=aps_model.base.rank))
        methods.update(aps_n1=aps_method(aps_model, 1), aps_n128=aps_method(aps_model, 128))
        if model_error and aps_model.base is not None:
            methods["aps_n128_model_error"] = aps_method(aps_model, 128, model_error=True)
    if exact is not None:
        methods["exact"] = gaussian_method(exact, layout)
    return methods


def fit_oi(layout, train_signals: torch.Tensor, validation_signals: torch.Tensor, operator, seed: int,
           ranks=DEFAULT_RANKS):
    """Optimal interpolation fitted to ``train_signals`` ``(N, V, C)``, its rank (one of ``ranks``)
    chosen on the ``validation_signals`` measured by ``operator`` (seed ``seed``): ``(LowRankGaussian,
    {rank: score}, fit seconds)``."""
    validation = operator(layout.pad(validation_signals), generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    gaussian, scores = fit_optimal_interpolation(train_signals, validation_signals, validation, operator.noise_std,
                                                 ranks)
    return gaussian, scores, time.perf_counter() - started


def fit_gmm(layout, train_signals: torch.Tensor, validation_signals: torch.Tensor, operator, seed: int,
            components=(2, 4, 8), ranks=(16, 32, 64), log=print):
    """A mixture of PPCA fitted to ``train_signals`` ``(N, V, C)``, components and rank chosen on the
    ``validation_signals`` measured by ``operator`` (seed ``seed``, the measurements :func:`fit_oi`
    uses): ``(GaussianMixtureField, sweep table, fit seconds)``."""
    validation = operator(layout.pad(validation_signals), generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    field, table = select_mixture_of_ppca(train_signals, validation_signals, validation, operator.noise_std,
                                          components, ranks, log=log, seed=seed)
    return field, table, time.perf_counter() - started


def blind_sweep(layout, truth, blind_model, known_model, operator, oi, rates=(0.3, 0.4, 0.5, 0.6), seed: int = 0,
                grid_shape=None, log=print) -> list[dict]:
    """Blind imputation at several hidden rates (paper Fig. 7): the blind sampler sees ``y`` only;
    known-operator APS and optimal interpolation (``oi``, from :func:`fit_oi`) are given the mask.
    Rows carry ``hidden_fraction``."""
    rows = []
    for index, rate in enumerate(rates):
        log(f"--- blind sweep: {100 * rate:.0f}% hidden")
        at_rate = RandomVertexMask(layout.num_vertices, layout.padded_vertices, rate, operator.noise_std)
        measurement = at_rate(layout.pad(truth), generator=torch.Generator().manual_seed(seed + 100 + index))
        for prefix, model, names in (("aps_blind", blind_model, ("aps",)), ("aps", known_model, ("aps", "oi"))):
            methods = standard_methods(names, layout, aps_model=model, oi=oi)
            for row in run_methods(methods, truth, measurement, at_rate, grid_shape=grid_shape, seed=seed, log=log):
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


def _cell(value) -> str:
    """A markdown table cell: 4 significant digits, ``k=v`` pairs for a dict."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_results(results: dict, stem) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and a markdown table ``<stem>.md`` (a dot in ``stem``, as in
    ``..._w0.1``, stays part of the name)."""
    columns = ["method", "hidden_fraction", "psnr", "psnr_hidden", "mse", "ssim", "coverage_90", "crps", "model_error_std",
               "seconds_per_measurement", "nfe", "n_measurements", "tuned"]
    lines = [f"# {results['task']} ({results['scale']} scale)", "",
             f"- data: {results['data']}", f"- command: `{results.get('command', '')}`",
             f"- machine: {results['machine']}; device {results['device']}; threads {results['threads']}",
             f"- date: {results['date']}; commit {results['commit']}; training seconds {results.get('train_seconds')}", ""]
    for section, rows in results["sections"].items():
        present = [c for c in columns if any(c in row for row in rows)]
        lines += [f"## {section}", "", "| " + " | ".join(present) + " |", "|" + "---|" * len(present)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in present) + " |")
        lines.append("")
    sweeps = [row for row in results["sections"].get("test", []) if isinstance(row.get("sweep"), list)]
    if sweeps:
        lines += ["## validation sweeps (the chosen value is in the `tuned` column)", ""]
        for row in sweeps:
            lines.append(f"- {row['method']}: " + "; ".join(
                ", ".join(f"{k} {_cell(v)}" for k, v in entry.items()) for entry in row["sweep"]))
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return save_results(stem, results, "\n".join(lines) + "\n")


def base_description(model) -> str:
    """An APS sampler's base in words: a mixture of PPCA, a Gaussian of some rank, or none."""
    if model.mixture_base:
        return (f"mixture base of {model.base.num_components} PPCA Gaussians of rank "
                f"{model.base.components[0].rank}")
    return f"Gaussian base of rank {model.base_rank if model.base is not None else 'none'}"


def save_results(stem, results: dict, markdown: str) -> tuple[Path, Path]:
    """Write ``results`` to ``<stem>.json`` and ``markdown`` to ``<stem>.md`` (a dot in ``stem``, as
    in ``..._w0.1``, stays part of the name)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.parent / f"{stem.name}.json", stem.parent / f"{stem.name}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def median_seconds(function, repeats: int = 1) -> float:
    """Median wall time of ``repeats`` calls of ``function()``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_arguments(parser) -> None:
    """Options shared by the benchmark scripts."""
    parser.add_argument("--scale", choices=SCALES, default="smoke")
    parser.add_argument("--from-checkpoint", metavar="DIR",
                        help="load <task>_prior_<scale>.pt and <task>_aps_<scale>.pt from DIR instead of training; "
                             "'pretrained' loads the models shipped in manifold_aps.pretrained")
    parser.add_argument("--checkpoint-dir", default="checkpoints", help="where trained models are written")
    parser.add_argument("--prior", metavar="FILE",
                        help="a prior file (save_prior) for the zero-shot samplers instead of the --from-checkpoint or "
                             "trained one; without --from-checkpoint nothing is trained and APS is not scored")
    parser.add_argument("--results-name", help="results file stem (default <task>_<scale>)")
    parser.add_argument("--n-measurements", type=int, default=None, help="test measurements (default: the scale preset)")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="zero-shot sampler steps (default: the scale preset)")
    parser.add_argument("--diffusion-samples", type=int, default=None,
                        help="zero-shot draws per test measurement (default: the scale preset; ≥ 32 for coverage/CRPS)")
    parser.add_argument("--tune-measurements", type=int, default=None,
                        help="validation measurements for tuning the zero-shot knobs (default: the scale preset)")
    parser.add_argument("--tune-samples", type=int, default=None,
                        help="zero-shot draws per validation measurement when tuning (default: the scale preset)")
    parser.add_argument("--methods", default="dps,mcg,mmps,pigdm,diffpir,oi,gmm,harmonic,aps,blind",
                        help="comma-separated; 'blind' runs the blind sweep when --from-checkpoint DIR holds "
                             "<task>_blind_aps_<scale>.pt")
    parser.add_argument("--model-error", action="store_true",
                        help="also score oi and APS with each measurement's estimated model error "
                             "(rows oi_model_error, aps_n128_model_error)")
    parser.add_argument("--oi-ranks", type=_integers, default=None,
                        help="optimal interpolation's rank grid, e.g. 64,128,256,512 (default: 4 … 256)")
    parser.add_argument("--gmm-components", type=_integers, default=None,
                        help="the mixture of PPCA's component grid, e.g. 8,16,32 (default: the scale preset)")
    parser.add_argument("--gmm-ranks", type=_integers, default=None,
                        help="the mixture of PPCA's rank grid, e.g. 64,128 (default: the scale preset)")
    parser.add_argument("--gmm-train", type=int, default=None,
                        help="training signals the mixture of PPCA is fitted on (default: the scale preset)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))


def train_or_load(task, args, log=print):
    """The task's prior and APS model: loaded with ``--from-checkpoint``, else trained (and saved).

    ``--prior FILE`` replaces the prior (the folder then needs no prior file); without
    ``--from-checkpoint`` nothing is then trained and the model is None (no APS rows).
    """
    from manifold_aps.diffusion import load_prior

    given = getattr(args, "prior", None)
    if not (given or args.from_checkpoint):
        return _train(task, args, log)
    model = _saved_sampler(task, args) if args.from_checkpoint else None
    if given:
        prior = load_prior(given)
    elif args.from_checkpoint == "pretrained":
        prior = model.prior
    else:
        prior = load_prior(Path(args.from_checkpoint) / f"{task.name}_prior_{args.scale}.pt")
    return prior, model, None if model is None else model.report.get("train_seconds")


def _saved_sampler(task, args):
    """The known-operator APS sampler of ``--from-checkpoint``: the shipped one or ``DIR/<task>_aps_<scale>.pt``."""
    from manifold_aps.aps import AmortizedPosteriorSampler

    if args.from_checkpoint == "pretrained":
        from manifold_aps import pretrained

        return pretrained.load_sampler(task.name)
    return AmortizedPosteriorSampler.load(Path(args.from_checkpoint) / f"{task.name}_aps_{args.scale}.pt")


def _train(task, args, log):
    """Train the task's prior and APS sampler at ``--scale`` and save them in ``--checkpoint-dir``."""
    from manifold_aps.aps import fit
    from manifold_aps.diffusion import prior_training_config, save_prior, train_prior
    from manifold_aps.diffusion.training import preset_residual_prior

    defaults = preset(args.scale, "benchmark")
    folder = Path(args.checkpoint_dir)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[-1], grid=latlon_grid(task.mesh))
    train = task.train if defaults["limit"] is None else task.train[: defaults["limit"]]
    started = time.perf_counter()
    prior = preset_residual_prior(train, layout, task.mesh, args.scale)  # the prior fit trains by default
    overrides = {} if defaults["prior_iterations"] is None else {"iterations": defaults["prior_iterations"]}
    config = prior_training_config(args.scale, task.paper_task, seed=args.seed, **overrides)
    train_prior(prior, layout.pad(train), config, checkpoint_path=folder / f"{task.name}_prior_{args.scale}.training.pt")
    save_prior(folder / f"{task.name}_prior_{args.scale}.pt", prior, task.normalizer)
    aps_overrides = {} if defaults["aps_iterations"] is None else {"iterations": defaults["aps_iterations"]}
    model = fit(task.mesh, train, mask_rate=task.operator.hidden_fraction, noise_std=task.operator.noise_std, prior=prior,
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


def _integers(text: str) -> tuple[int, ...]:
    """``"8,16,32"`` → ``(8, 16, 32)``: a grid of positive integers given on the command line."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 8,16,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _budget(args) -> dict:
    """The ``benchmark`` preset of ``args.scale`` (:mod:`manifold_aps.scales`), overridden by the
    command line."""
    budget = preset(args.scale, "benchmark")
    budget["oi_ranks"] = DEFAULT_RANKS
    for key in ("n_measurements", "diffusion_steps", "diffusion_samples", "tune_measurements", "tune_samples",
                "oi_ranks", "gmm_components", "gmm_ranks", "gmm_train"):
        if getattr(args, key, None) is not None:
            budget[key] = getattr(args, key)
    return budget


def _speed(rows: dict, train_seconds, samples: int) -> tuple[dict, dict, list[str]]:
    """Seconds per posterior sample (APS in batches of 128, each zero-shot sampler) and the
    amortisation break-even ``train_seconds / (baseline − APS)`` per sample, with notes."""
    per_sample = {"aps": rows["aps_n128"]["seconds_per_measurement"] / 128}
    per_sample.update({name: rows[name]["seconds_per_measurement"] / samples for name in ZERO_SHOT if name in rows})
    break_even, notes = {}, []
    for name, seconds in per_sample.items():
        if name == "aps" or not train_seconds:
            continue
        gain = seconds - per_sample["aps"]
        break_even[name] = train_seconds / gain if gain > 0 else None
        notes.append(f"amortisation vs {name} (tuned): APS training {train_seconds:.0f} s ÷ ({name} {seconds:.3g} s − "
                     f"APS {per_sample['aps']:.3g} s per posterior sample) = {break_even[name]:.0f} samples" if gain > 0
                     else f"no break-even vs {name}: its sample ({seconds:.3g} s) is not slower than APS's here")
    return per_sample, break_even, notes


def run_benchmark(task, args, argv, grid_shape=None, exact=None, prior=None, model=None, train_seconds=None,
                  log=print, extra: dict | None = None) -> dict:
    """Measure the task's test split (and its extra test sets) and score every method; write results.

    The zero-shot samplers' knobs are tuned on measurements of validation signals (:func:`tune`),
    never on test. A ``model`` passed in (with its ``prior`` and ``train_seconds``) is used as is
    instead of ``train_or_load``; ``extra`` holds further top-level entries for the results file (its
    ``notes`` list, if any, starts the file's notes).
    """
    torch.set_num_threads(args.threads)
    defaults = budget = _budget(args)
    if model is None:
        prior, model, train_seconds = train_or_load(task, args, log=log)
    layout, operator = (model or prior).layout, task.operator
    if operator.padded_vertices != layout.padded_vertices:
        raise ValueError(f"the model pads to {layout.padded_vertices} vertices, the task's operator to "
                         f"{operator.padded_vertices}")
    count, steps, samples = budget["n_measurements"], budget["diffusion_steps"], budget["diffusion_samples"]
    names = tuple(args.methods.split(","))
    train = task.train if defaults["limit"] is None else task.train[: defaults["limit"]]
    sections = {}
    blind_model = _blind_model(task, args) if "blind" in names else None
    oi = (fit_oi(layout, train, task.validation[:64], operator, args.seed + 1, budget["oi_ranks"])
          if "oi" in names or blind_model is not None else None)
    gmm = (fit_gmm(layout, train[: budget["gmm_train"]], task.validation[:64], operator, args.seed + 1,
                   budget["gmm_components"], budget["gmm_ranks"], log) if "gmm" in names else None)
    tuning = {}
    tunable = [name for name in ZERO_SHOT if name in names and prior is not None]
    if tunable:
        validation = task.validation[: budget["tune_measurements"]]
        log(f"--- tuning {', '.join(tunable)} on {len(validation)} validation measurements × "
            f"{budget['tune_samples']} draws, {steps} steps")
        measured = operator(layout.pad(validation), generator=torch.Generator().manual_seed(args.seed + 2))
        values = knob_values(train)

        def builder(sampler, knob):
            return lambda value: diffusion_method(sampler, prior, budget["tune_samples"], steps, **{knob: value})

        candidates = {name: (ZERO_SHOT[name][1], values[name], builder(*ZERO_SHOT[name])) for name in tunable}
        tuning = tune(candidates, validation, measured, operator, args.seed, log)
    methods = standard_methods(names, layout, task.mesh, prior, model, oi, exact, samples, steps, tuning, gmm,
                               model_error=getattr(args, "model_error", False))
    test_sets = {"test": task.test[:count], **{name: signals[:count] for name, signals in task.extra_test.items()}}
    for name, truth in test_sets.items():
        log(f"--- {name}: {len(truth)} measurements, {100 * operator.hidden_fraction:.0f}% hidden, "
            f"σ {operator.noise_std}")
        measurement = operator(layout.pad(truth), generator=torch.Generator().manual_seed(args.seed))
        sections[name] = run_methods(methods, truth, measurement, operator, grid_shape, args.seed, log)
    if blind_model is not None:
        sections["blind_sweep"] = blind_sweep(layout, task.test[:count], blind_model, model, operator, oi,
                                              seed=args.seed, grid_shape=grid_shape, log=log)
    results = dict(task=task.name, scale=args.scale, data=task.data_label, **environment(),
                   train_seconds=train_seconds, command="python " + " ".join(argv),
                   hidden_fraction=operator.hidden_fraction, noise_std=operator.noise_std,
                   budget={key: list(value) if isinstance(value, tuple) else value for key, value in budget.items()},
                   sections=sections, rows=sections["test"], notes=[])
    results.update(extra or {})
    results["notes"].append(
        f"budget: {count} test measurements per test set; every zero-shot sampler {steps} steps × {samples} draws per "
        f"measurement (≥ {MIN_SAMPLES} so that coverage/CRPS are scored), its knob tuned on {budget['tune_measurements']} "
        f"validation measurements × {budget['tune_samples']} draws; mixture of PPCA on ≤ {budget['gmm_train']} "
        f"training signals, K ∈ {list(budget['gmm_components'])}, rank ∈ {list(budget['gmm_ranks'])}; optimal "
        f"interpolation on every training signal, rank ∈ {list(budget['oi_ranks'])}")
    rows = {row["method"]: row for row in sections["test"]}
    if "aps_n128" in rows:
        per_sample, break_even, notes = _speed(rows, train_seconds, samples)
        results.update(seconds_per_sample=per_sample, break_even_samples=break_even)
        results["notes"] += notes
    write_results(results, Path(args.results_dir) / (getattr(args, "results_name", None) or f"{task.name}_{args.scale}"))
    return results
