"""Gaussian-random-field benchmark: every method against the exact posterior (exact-score prior).

The signal is a Matérn-type Gaussian random field on the mesh
(:class:`manifold_aps.data.gaussian_fields.GaussianRandomField`: smoothness ν 1.5, mean 0.5, std
0.15, length scale 0.2 × the mesh's bounding-box diagonal, min(128, V/2) Laplace-Beltrami modes,
white nugget 5 % of the variance), so values lie in about [0, 1] and the posterior under vertex
masking is known in closed form. The diffusion prior is not trained: it is the field's EXACT noise
predictor (:func:`manifold_aps.diffusion.gaussian.exact_gaussian_prior`), shared by APS, DPS and MCG,
so every gap to the ``exact`` row is the sampler's own error (the flow's for APS; guidance and
discretisation for DPS/MCG).

Meshes and measurements (``--mesh``):

| mesh | vertices | hidden | σ_y |
| --- | --- | --- | --- |
| ``sphere4`` | 4° lat-lon sphere, 4140 | 60 % | 0.05 |
| ``bunny`` | Stanford bunny (data mirror), 1889 | 30 % | 0.1 |
| ``torus`` | ``manifold_aps.torus()`` 48 × 24, 1152 (no data files) | 60 % | 0.05 |

Train, validation and test fields are drawn from the field with fixed seeds (0, 1, 2; one draw at a
time, so the first n fields do not depend on how many are drawn): 256 / 64 / n training /
validation / test fields at smoke scale, 2000 / 64 / n at cpu, 20000 / 64 / n at paper
(``--train-fields`` overrides); n = ``--n-measurements`` (4 / 32 / 128 by scale). Each test field
is measured once with a fixed-seed random mask (``--seed``); every method sees the same measurements.

Rows (``benchmarks/results/gaussian_fields_<mesh>_<scale>.{json,md}``, schema of
:mod:`manifold_aps.benchmark`): ``aps_n1`` one APS sample; ``aps_n128`` the mean of 128 APS
samples (coverage and CRPS from those samples); ``dps`` / ``mcg`` the mean of
``--diffusion-samples`` diffusion posterior samples with the exact prior (``--diffusion-steps``
NFE each); ``harmonic`` cotan harmonic interpolation of the observed values; ``oi`` optimal
interpolation (exact posterior under a PPCA Gaussian fitted to the training fields, rank chosen on
the validation fields); ``exact`` the exact posterior mean of the true field, with 128 draws from
its marginals for coverage and CRPS (its 90 % coverage should be about 0.9). Metrics are on the
real vertices: ``psnr`` (data range 1), ``psnr_hidden``, ``mse``, ``coverage_90`` and ``crps``
(hidden vertices), ``seconds_per_measurement``, ``nfe``.

APS: :func:`manifold_aps.aps.fit` trains the flow (``--flow``, default ``realnvp``; ``mesh`` is the
mesh-convolution flow) on one measurement of each training field, with the
:meth:`manifold_aps.aps.APSConfig.preset` of ``--scale``; the smoke scale caps it at 100 iterations
(as the other benchmarks do); ``--iterations`` and ``--batch-size`` override. ``fit``'s other
defaults apply; whether the flow is composed with ``fit``'s Gaussian base is recorded as
``aps_gaussian_base``. The cpu-preset mesh flow (hidden 256, 8 steps, batch 64) takes ~45 s per
step on the torus on one shared core (~6 s at ``--batch-size 16``), and the run's memory peaks at
8.5–10 GB; ``--sample-batch`` bounds the APS draws per flow call. The trained
sampler is saved as ``<checkpoint-dir>/gaussian_fields_<mesh>_aps_<scale>.pt`` (resumable training
state in ``<checkpoint-dir>/gaussian_fields_<mesh>_<scale>_<flow>/aps.pt``); ``--from-checkpoint DIR``
loads that file instead of training (it must have been trained on the same field).

    python benchmarks/gaussian_fields.py --mesh torus --scale smoke --threads 1
    python benchmarks/gaussian_fields.py --mesh torus --scale cpu --flow mesh --n-measurements 16 \\
        --diffusion-samples 2 --threads 1 --iterations 80 --batch-size 16 --sample-batch 512
    MANIFOLD_APS_DATA=../shared/data python benchmarks/gaussian_fields.py --mesh bunny --scale cpu --threads 1
    python benchmarks/gaussian_fields.py --mesh sphere4 --scale cpu --from-checkpoint checkpoints --threads 1
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import torch

from manifold_aps import bunny
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, fit
from manifold_aps.benchmark import add_arguments, run_benchmark
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion.gaussian import exact_gaussian_prior
from manifold_aps.flows import FLOWS
from manifold_aps.mesh import latlon_sphere, torus
from manifold_aps.operators import RandomVertexMask
from manifold_aps.scales import preset
from manifold_aps.signals import MinMaxNormalizer, VertexLayout
from manifold_aps.tasks import Task

# mesh name -> (constructor, hidden fraction, σ_y, paper task whose budgets it is closest to)
MESHES = {
    "sphere4": (lambda: latlon_sphere(4.0), 0.6, 0.05, "era5"),
    "bunny": (bunny, 0.3, 0.1, "bunny"),
    "torus": (torus, 0.6, 0.05, "era5"),
}
FIELD = dict(smoothness=1.5, std=0.15, mean=0.5, length_fraction=0.2, max_modes=128, nugget=0.05)
TRAIN_FIELDS = {"smoke": 256, "cpu": 2000, "paper": 20000}
VALIDATION_FIELDS = 64
DATA_SEEDS = {"train": 0, "validation": 1, "test": 2}


def build_field(mesh) -> tuple[GaussianRandomField, dict]:
    """The benchmark's Matérn field on ``mesh`` and a plain description of it."""
    extent = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).norm())
    modes = min(FIELD["max_modes"], mesh.num_vertices // 2)
    field = GaussianRandomField(mesh, length_scale=FIELD["length_fraction"] * extent, smoothness=FIELD["smoothness"],
                                variance=FIELD["std"] ** 2, mean=FIELD["mean"], num_modes=modes, nugget=FIELD["nugget"])
    description = dict(mesh=mesh.name, vertices=mesh.num_vertices, length_scale=field.length_scale,
                       smoothness=field.smoothness, std=FIELD["std"], mean=FIELD["mean"], modes=modes,
                       nugget=FIELD["nugget"])
    return field, description


def draw(field: GaussianRandomField, count: int, seed: int) -> torch.Tensor:
    """``(count, V, 1)`` float32 fields, one draw at a time: the first n do not depend on ``count``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([field.sample(1, generator) for _ in range(count)]).float()[..., None]


def build_task(mesh_name: str, scale: str, test_count: int, train_count: int | None = None):
    """The GRF :class:`~manifold_aps.tasks.Task` on ``mesh_name``, its field and the field's description."""
    make_mesh, hidden_fraction, noise_std, paper_task = MESHES[mesh_name]
    mesh = make_mesh()
    field, description = build_field(mesh)
    train_count = train_count or TRAIN_FIELDS[scale]
    label = (f"Matérn Gaussian random field on {mesh_name} ({mesh.num_vertices} vertices): mean {FIELD['mean']}, "
             f"std {FIELD['std']}, ν {FIELD['smoothness']}, length scale {field.length_scale:.4g}, "
             f"{description['modes']} modes, nugget {FIELD['nugget']:.0%} of the variance; "
             f"{train_count}/{VALIDATION_FIELDS}/{test_count} train/validation/test fields (seeds 0/1/2); "
             f"exact-score diffusion prior")
    task = Task(f"gaussian_fields_{mesh_name}", mesh, draw(field, train_count, DATA_SEEDS["train"]),
                draw(field, VALIDATION_FIELDS, DATA_SEEDS["validation"]), draw(field, test_count, DATA_SEEDS["test"]),
                operator=RandomVertexMask(mesh.num_vertices, VertexLayout(mesh.num_vertices, 1).padded_vertices,
                                          hidden_fraction, noise_std), normalizer=MinMaxNormalizer(0.0, 1.0),
                data_label=label, paper_task=paper_task)
    return task, field, description


def _same_field(saved: dict | None, description: dict) -> bool:
    if not isinstance(saved, dict) or set(saved) != set(description):
        return False
    return all(math.isclose(saved[k], v, rel_tol=1e-9) if isinstance(v, float) else saved[k] == v
               for k, v in description.items())


def train_or_load_aps(task, prior, description: dict, args, log=print):
    """The APS sampler: loaded with ``--from-checkpoint``, else trained with ``fit`` and saved."""
    name = f"{task.name}_aps_{args.scale}.pt"
    if args.from_checkpoint:
        path = Path(args.from_checkpoint) / name
        model = AmortizedPosteriorSampler.load(path)
        if not _same_field(model.report.get("gaussian_field"), description):
            raise SystemExit(f"{path} was not trained on this field: it records {model.report.get('gaussian_field')}, "
                             f"this run builds {description}")
        if args.flow is not None and args.flow != model.flow_kind:
            raise SystemExit(f"{path} holds a {model.flow_kind} flow, but --flow {args.flow} was asked for")
        if abs(model.noise_std - task.operator.noise_std) > 1e-12:
            raise SystemExit(f"{path} was trained for σ_y {model.noise_std}, this task has {task.operator.noise_std}")
        log(f"loaded {path} ({model.flow_kind} flow, {model.report.get('aps_config', {}).get('iterations')} iterations)")
        return model, model.report.get("train_seconds")
    flow = args.flow or "realnvp"
    overrides = {}
    if preset(args.scale, "benchmark")["aps_iterations"] is not None:
        overrides["iterations"] = preset(args.scale, "benchmark")["aps_iterations"]
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = APSConfig.preset(args.scale, seed=args.seed, **overrides)
    folder = Path(args.checkpoint_dir)
    log(f"training APS ({flow} flow, {config.iterations} iterations, batch {config.training.batch_size}, "
        f"flow depth {config.flow_depth}, hidden {config.hidden}) on {len(task.train)} measured fields")
    started = time.perf_counter()
    model = fit(task.mesh, task.train, mask_rate=task.operator.hidden_fraction, noise_std=task.operator.noise_std, prior=prior, flow=flow,
                scale=args.scale, seed=args.seed, checkpoint_dir=folder / f"{task.name}_{args.scale}_{flow}",
                device="cpu", base_rank=args.base_rank, **overrides)
    seconds = time.perf_counter() - started
    model.report.update(train_seconds=seconds, aps_config=config.to_dict(), flow=flow, task=task.name,
                        gaussian_field=description, train_fields=len(task.train))
    model.save(folder / name)
    log(f"trained APS in {seconds:.0f} s; saved {folder / name}")
    return model, seconds


def main(argv: list[str] | None = None, log=print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for the field, the rows and the commands.")
    add_arguments(parser)
    parser.add_argument("--mesh", choices=sorted(MESHES), default="sphere4")
    parser.add_argument("--flow", choices=FLOWS, default=None,
                        help="APS flow (default realnvp; a loaded model keeps its own)")
    parser.add_argument("--iterations", type=int, default=None, help="APS iterations (default: the scale's preset)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="APS batch size (default: the scale's preset; lower it to bound training memory)")
    parser.add_argument("--base-rank", type=int, default=128,
                        help="largest rank of APS's Gaussian base (fit's base_rank; the field has ≤ 128 modes)")
    parser.add_argument("--train-fields", type=int, default=None,
                        help="training fields (default 256 / 2000 / 20000 by scale)")
    parser.add_argument("--sample-batch", type=int, default=None,
                        help="most APS draws per flow call (default the sampler's 8192; lower it to bound memory, "
                             "e.g. 512 for the cpu-size mesh flow)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    test_count = args.n_measurements or preset(args.scale, "benchmark")["n_measurements"]
    task, field, description = build_task(args.mesh, args.scale, test_count, args.train_fields)
    layout = VertexLayout(task.mesh.num_vertices, 1)
    prior = exact_gaussian_prior(field, layout)
    model, train_seconds = train_or_load_aps(task, prior, description, args, log=log)
    if args.sample_batch is not None:  # run_methods calls model.sample_measurement with the default max_batch
        model.sample_measurement = functools.partial(model.sample_measurement, max_batch=args.sample_batch)
    report = model.report
    gaussian_base = getattr(model, "base", None) is not None  # fit's optional Gaussian (PPCA posterior) base
    extra = dict(field=description, flow=model.flow_kind, aps_config=report.get("aps_config"),
                 aps_gaussian_base=gaussian_base, train_fields=len(task.train), validation_fields=len(task.validation),
                 notes=[f"prior: the field's exact noise predictor, shared by APS, DPS and MCG; APS flow "
                        f"{model.flow_kind}, {report.get('aps_config', {}).get('iterations')} iterations"
                        + (f", composed with a Gaussian (PPCA posterior) base of rank {model.base_rank}" if gaussian_base else "")])
    return run_benchmark(task, args, ["benchmarks/gaussian_fields.py", *argv], exact=field, prior=prior, model=model,
                         train_seconds=train_seconds, log=log, extra=extra)


if __name__ == "__main__":
    main()
