"""APS against the exact posterior of Gaussian random fields (exact-score prior: only the flow errs).

    MANIFOLD_APS_DATA=../shared/data python benchmarks/gaussian_fields_aps.py --mesh sphere4 \
        --flow realnvp --iterations 3000 --threads 1

A Matérn-type field (:class:`manifold_aps.data.gaussian_fields.GaussianRandomField`, mean 0.5,
std 0.15, length scale 0.2 × the mesh's bounding-box diagonal, min(128, V/2) modes, nugget 5 % of the
variance) is the prior. Its noise predictor is exact
(:func:`manifold_aps.diffusion.gaussian.exact_gaussian_prior`, low-rank + nugget form), so any gap
to the exact posterior is the flow's. APS is trained on measurements only
(``--train`` fields, a new random mask each); on ``--test`` held-out fields we report, over the
real vertices, PSNR of the 128-sample APS mean and of the exact posterior mean against the truth,
the median per-vertex ratio std_APS / std_exact on hidden vertices, and the coverage of the 90 %
central interval of the APS samples on hidden vertices (the exact posterior's own coverage is
reported alongside). Writes ``benchmarks/results/gaussian_fields_aps_<mesh>_<flow>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, build_flow, measure_signals, train_aps
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion.gaussian import exact_gaussian_prior
from manifold_aps.metrics import interval_coverage, psnr

MESHES = {"sphere30": lambda: aps.latlon_sphere(30.0), "sphere4": lambda: aps.latlon_sphere(4.0), "bunny": aps.bunny}
TASKS = {"sphere30": (0.6, 0.05), "sphere4": (0.6, 0.05), "bunny": (0.3, 0.1)}  # (hidden fraction, σ_y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", choices=sorted(MESHES), default="sphere4")
    parser.add_argument("--flow", choices=["realnvp", "mesh"], default="realnvp")
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--n-steps", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--nugget", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    mesh = MESHES[args.mesh]()
    hidden_fraction, noise_std = TASKS[args.mesh]
    extent = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).norm())
    modes = min(128, mesh.num_vertices // 2)
    field = GaussianRandomField(mesh, length_scale=0.2 * extent, variance=0.15**2, mean=0.5, num_modes=modes,
                                nugget=args.nugget)
    layout = aps.VertexLayout(mesh.num_vertices)
    prior = exact_gaussian_prior(field, layout)
    generator = torch.Generator().manual_seed(0)
    operator = aps.RandomVertexMask(layout.num_vertices, layout.padded_vertices, hidden_fraction, noise_std)
    train = measure_signals(operator, layout.pad(field.sample(args.train, generator).float()[..., None]), generator)
    truth = field.sample(args.test, generator).float()
    test = measure_signals(operator, layout.pad(truth[..., None]), generator)

    config = APSConfig.preset("cpu", iterations=args.iterations, n_steps=args.n_steps, hidden=args.hidden, lr=args.lr,
                              batch_size=args.batch, checkpoint_every=250)
    flow = build_flow(args.flow, layout, False, config, mesh.edge_index)
    model = AmortizedPosteriorSampler(flow, prior, noise_std)
    started = time.perf_counter()
    result = train_aps(model, train, config, args.checkpoint, progress=True)
    train_seconds = time.perf_counter() - started

    V = layout.num_vertices
    exact = field.posterior(test.y[:, :V, 0].double(), test.observed[:, :V], noise_std)
    started = time.perf_counter()
    draws = model.sample_measurement(test, args.samples, torch.Generator().manual_seed(1))[..., :V, 0].double()
    sample_seconds = (time.perf_counter() - started) / args.test
    mean, std = draws.mean(0), draws.std(0)
    truth = truth.double()
    hidden = ~test.observed[:, :V]
    exact_draws = exact.mean + exact.std * torch.randn((args.samples, *exact.mean.shape), dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(2))
    report = dict(
        mesh=args.mesh, vertices=V, flow=args.flow, hidden_fraction=hidden_fraction, noise_std=noise_std,
        field=dict(length_scale=field.length_scale, smoothness=field.smoothness, std=0.15, mean=0.5, modes=modes,
                   nugget=args.nugget),
        config=dict(iterations=args.iterations, n_steps=args.n_steps, hidden=args.hidden, lr=args.lr,
                    batch=args.batch, train_measurements=args.train, test_measurements=args.test,
                    samples=args.samples, threads=args.threads),
        psnr_aps_mean=float(psnr(mean, truth).mean()), psnr_exact_mean=float(psnr(exact.mean, truth).mean()),
        psnr_aps_single=float(psnr(draws[0], truth).mean()),
        std_ratio_hidden_median=float((std / exact.std)[hidden].median()),
        std_ratio_observed_median=float((std / exact.std)[~hidden].median()),
        mean_error_over_exact_std_rms_hidden=float(((mean - exact.mean) / exact.std)[hidden].pow(2).mean().sqrt()),
        coverage90_aps_hidden=float(interval_coverage(draws, truth, 0.9, hidden).mean()),
        coverage90_exact_marginals_hidden=float(interval_coverage(exact_draws, truth, 0.9, hidden).mean()),
        final_loss_per_entry=sum(result.losses[-100:]) / len(result.losses[-100:]),
        train_seconds=train_seconds, sample_seconds_per_measurement=sample_seconds,
        machine=f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    print(json.dumps(report, indent=2))
    output = args.output or Path(__file__).parent / "results" / f"gaussian_fields_aps_{args.mesh}_{args.flow}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
