"""Model error on real ERA5: does the shipped sphere sampler's interval cover the truth, with and without it?

    MANIFOLD_APS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/model_error.py

The shipped ``era5_proxy_guided`` sampler (trained on a climate-model proxy) on the 24 real ERA5
fields, 60 % of the vertices hidden, in kelvin through the user API (``sampler.sample``). Two
kinds of measurement: with the task's noise (σ_y = 0.05 of the normalised range, ≈ 5.9 K) and
noise-free. Each is sampled without model error, with it, and (noise-free) with the true noise
given as ``measurement_noise_std = 0``. Scores: coverage of the central 90 % interval of
``--samples`` draws on hidden vertices, RMSE of the mean on hidden and on all vertices (K), and
the mean estimated ``δ`` (K). Writes ``benchmarks/results/model_error_era5.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from manifold_aps import pretrained
from manifold_aps.benchmark import environment
from manifold_aps.data import load_era5_sample

RESULTS = Path(__file__).resolve().parent / "results"


def score(sampler, observed, truth, hidden, samples: int, seed: int, **options) -> dict:
    draws = sampler.sample(observed, n=samples, generator=torch.Generator().manual_seed(seed), **options).values
    low, high = np.quantile(draws, [0.05, 0.95], axis=0)
    error = draws.mean(axis=0) - truth
    noise = options.get("measurement_noise_std")
    with_error = options.get("model_error", sampler.model_error)
    delta = float(sampler.model_error_std(observed, measurement_noise_std=noise).mean()) if with_error else 0.0
    return dict(coverage_90_hidden=float(((truth >= low) & (truth <= high))[hidden].mean()),
                rmse_hidden_K=float(np.sqrt((error**2)[hidden].mean())), rmse_K=float(np.sqrt((error**2).mean())),
                model_error_std_K=delta)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = pretrained.load_sampler("era5_proxy_guided")
    fields = load_era5_sample()
    truth = fields.values
    rng = np.random.default_rng(args.seed)
    hidden = rng.random(truth.shape) < 0.6
    sigma = float(sampler.normalizer.denormalize_std(torch.tensor(sampler.noise_std)))
    noisy = (fields + sigma * rng.standard_normal(truth.shape)).where(~hidden)
    clean = fields.where(~hidden)
    rows = {
        "task noise (σ_y ≈ %.1f K), without model error" % sigma: (noisy, dict(model_error=False)),
        "task noise, with model error": (noisy, dict(model_error=True)),
        "noise-free, without model error": (clean, dict(model_error=False)),
        "noise-free, with model error (σ_y assumed)": (clean, dict(model_error=True)),
        "noise-free, with model error, measurement_noise_std=0": (clean, dict(model_error=True, measurement_noise_std=0.0)),
    }
    scores = {label: score(sampler, observed, truth, hidden, args.samples, args.seed, **options)
              for label, (observed, options) in rows.items()}
    words = sys.argv if argv is None else ["benchmarks/model_error.py", *argv]
    results = dict(command="python " + " ".join(shlex.quote(word) for word in words), fields=len(fields),
                   hidden_fraction=0.6, samples=args.samples, noise_std_K=sigma, scores=scores, **environment())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model_error_era5.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Model error on real ERA5 (shipped `era5_proxy_guided` sampler)", "",
             f"- data: the {len(fields)} real ERA5 2 m temperature fields of the data mirror, 60 % of the vertices hidden",
             f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}", "",
             "| measurement, sampling | 90 % coverage (hidden) | RMSE hidden (K) | RMSE all (K) | mean δ (K) |",
             "|---|---|---|---|---|"]
    lines += [f"| {label} | {row['coverage_90_hidden']:.3f} | {row['rmse_hidden_K']:.2f} | {row['rmse_K']:.2f} | "
              f"{row['model_error_std_K']:.2f} |" for label, row in scores.items()]
    (RESULTS / "model_error_era5.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
