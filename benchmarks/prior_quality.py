"""Does a diffusion prior beat the exact PPCA Gaussian? Denoising MSE, ELBO and samples on held-out data.

    MANIFOLD_APS_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/prior_quality.py --task bunny_mnist \\
        --prior shipped=pretrained --prior residual=checkpoints/bunny_residual_mlp.pt

For each prior and the exact Gaussian prior (PPCA of rank ``--rank`` fitted on the training
split, :func:`~manifold_aps.diffusion.exact_gaussian_prior`), on ``--count`` test signals and the
same noise draws ``x_t = α_t x_0 + σ_t e``:

- the MSE over the real entries of the Tweedie estimate ``x̂_0 = (x_t − σ_t ε̂(x_t, t)) / α_t``
  at each ``t``, and its ratio to the Gaussian's (< 1: the prior denoises better);
- the negative ELBO per real entry (nats, :func:`~manifold_aps.diffusion.elbo_bound`, importance
  sampled over ``t``) beside the Gaussian's exact negative log-likelihood;
- prior samples (ancestral, ``--sample-steps`` steps) rendered beside real test signals.

Writes ``benchmarks/results/prior_quality_<task>.{json,md}``, ``…_ratio.png`` and ``…_samples.png``.
A ``--prior`` is ``label=path`` with ``path`` a prior file, a ``train_prior`` checkpoint,
``pretrained`` (the shipped prior of the task) or ``pretrained:<name>`` (a shipped prior by name).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from manifold_aps import pretrained
from manifold_aps.benchmark import environment
from manifold_aps.diffusion import elbo_bound, exact_gaussian_prior, load_prior, sample_ancestral
from manifold_aps.gaussian_posterior import fit_ppca
from manifold_aps.mixture_of_ppca import fit_mixture_of_ppca
from manifold_aps.signals import VertexLayout
from manifold_aps.tasks import load_task

TIMES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7)
RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def denoising_mse(prior, x0: torch.Tensor, times, seed: int, batch: int = 128) -> list[float]:
    """Per ``t``: mean over signals and real entries of ``(x̂_0 − x_0)²``; noise drawn from ``seed``."""
    real = prior.layout.vertex_mask()[:, None].expand(-1, prior.layout.num_channels).reshape(-1)
    errors = []
    for index, t in enumerate(times):
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + index))
        total = 0.0
        for start in range(0, x0.shape[0], batch):
            clean, e = x0[start:start + batch], noise[start:start + batch]
            time_ = torch.full((clean.shape[0],), float(t))
            alpha, sigma = prior.sde.alpha(time_)[:, None], prior.sde.sigma(time_)[:, None]
            x_t = alpha * clean + sigma * e
            estimate = (x_t - sigma * prior(x_t, time_)) / alpha
            total += float(((estimate - clean)[:, real] ** 2).sum())
        errors.append(total / (x0.shape[0] * int(real.sum())))
    return errors


@torch.no_grad()
def negative_elbo_per_entry(prior, x0: torch.Tensor, num_times: int, seed: int, batch: int = 64) -> float:
    """``−E[ELBO] / (V·C)`` in nats (padding removed)."""
    generator = torch.Generator().manual_seed(seed)
    bounds = [elbo_bound(prior, x0[i:i + batch], num_times=num_times, generator=generator)
              for i in range(0, x0.shape[0], batch)]
    return -float(torch.cat(bounds).mean()) / (prior.layout.num_vertices * prior.layout.num_channels)


def load_named_prior(path: str, task_name: str):
    """``pretrained`` (the task's shipped prior), ``pretrained:<name>`` (a shipped prior by name) or a file."""
    if path == "pretrained" or path.startswith("pretrained:"):
        return pretrained.load_prior(path.partition(":")[2] or task_name)
    return load_prior(path)


def plot_ratios(times, rows: dict, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, ratios in rows.items():
        axis.plot(times, ratios, marker="o", label=label)
    axis.axhline(1.0, color="black", lw=1, ls="--", label="exact PPCA Gaussian")
    axis.set_xscale("log")
    axis.set_xlabel("diffusion time t")
    axis.set_ylabel("x̂₀ MSE / Gaussian's x̂₀ MSE")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def render_rows(task, rows: dict, path: Path) -> Path:
    """One row of panels per entry of ``rows`` (label → ``(n, V)`` channel-0 values)."""
    values = {label: np.asarray(signals, dtype=np.float64) for label, signals in rows.items()}
    value_range = (min(float(v.min()) for v in values.values()), max(float(v.max()) for v in values.values()))
    if task.mesh.latitude is not None:
        from manifold_aps.render import plot_latlon_fields

        latitude, longitude = np.unique(task.mesh.latitude.numpy())[::-1], np.unique(task.mesh.longitude.numpy())
        fields = {f"{label} {i + 1}": v for label, signals in values.items() for i, v in enumerate(signals)}
        return plot_latlon_fields(fields, latitude, longitude, path, value_range=value_range,
                                  columns=len(next(iter(values.values()))))
    from manifold_aps.render import render_signals

    panels = [[(f"{label} {i + 1}", v, None, "value") for i, v in enumerate(signals)]
              for label, signals in values.items()]
    return render_signals(task.mesh, panels, path, value_range=value_range)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bunny_mnist")
    parser.add_argument("--prior", action="append", default=None, help="label=path (repeatable); default shipped")
    parser.add_argument("--rank", type=int, default=256, help="PPCA rank of the reference Gaussian")
    parser.add_argument("--mixture", action="append", default=[], metavar="K:RANK",
                        help="also score the exact prior of a mixture of K PPCA Gaussians of rank RANK fitted on the "
                             "training split (repeatable)")
    parser.add_argument("--mixture-train", type=int, default=8000, help="training signals for the mixtures")
    parser.add_argument("--count", type=int, default=256, help="test signals")
    parser.add_argument("--times", type=lambda text: [float(t) for t in text.split(",")], default=list(TIMES),
                        help="comma-separated diffusion times of the denoising table (default %(default)s)")
    parser.add_argument("--elbo-times", type=int, default=8, help="Monte-Carlo times per signal for the ELBO")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="stem (default results/prior_quality_<task>)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    named = dict(spec.split("=", 1) for spec in (args.prior or ["shipped=pretrained"]))
    stem = args.output or RESULTS / f"prior_quality_{args.task}"
    stem.parent.mkdir(parents=True, exist_ok=True)

    task = load_task(args.task)
    layout = VertexLayout(task.mesh.num_vertices, task.train.shape[2])
    test = layout.flatten(layout.pad(task.test[:args.count]))
    gaussian = fit_ppca(task.train.reshape(task.train.shape[0], -1), args.rank)
    priors = {f"exact Gaussian (PPCA rank {args.rank})": exact_gaussian_prior(gaussian, layout)}
    exact_nll = {}  # label -> exact −log p per entry on the test rows
    test_rows = task.test[:args.count].reshape(test.shape[0], -1)
    for spec in args.mixture:
        components, rank = (int(part) for part in spec.split(":"))
        field = fit_mixture_of_ppca(task.train[:args.mixture_train].reshape(-1, test_rows.shape[1]), components, rank)
        label = f"exact mixture of PPCA (K={components}, rank {rank})"
        priors[label], exact_nll[label] = field.exact_prior(layout), -float(field.log_prob(test_rows).mean()) / field.dim
        named[label] = "exact"
    priors.update({label: load_named_prior(path, args.task).eval() for label, path in named.items()
                   if path != "exact"})

    words = sys.argv if argv is None else ["benchmarks/prior_quality.py", *argv]
    results = dict(task=args.task, data=task.data_label, count=test.shape[0], times=args.times,
                   command="python " + " ".join(shlex.quote(word) for word in words),
                   priors={label: named.get(label, "exact") for label in priors}, **environment())
    results["gaussian_nll_per_entry"] = -float(gaussian.log_prob(test_rows).mean()) / gaussian.dim
    exact_nll[next(iter(priors))] = results["gaussian_nll_per_entry"]
    results["exact_nll_per_entry"] = exact_nll
    mse, elbo, seconds = {}, {}, {}
    for label, prior in priors.items():
        start = time.perf_counter()
        mse[label] = denoising_mse(prior, test, args.times, args.seed)
        elbo[label] = negative_elbo_per_entry(prior, test, args.elbo_times, args.seed)
        seconds[label] = time.perf_counter() - start
        print(f"{label}: mse {['%.3g' % m for m in mse[label]]} -ELBO/entry {elbo[label]:.4f} "
              f"({seconds[label]:.0f} s)", flush=True)
    reference = next(iter(priors))
    ratios = {label: [m / g for m, g in zip(mse[label], mse[reference])] for label in priors if label != reference}
    results.update(mse=mse, mse_ratio=ratios, negative_elbo_per_entry=elbo, seconds=seconds)

    generator = torch.Generator().manual_seed(args.seed)
    sample_rows = {"test": layout.unpad(layout.unflatten(test[:args.samples]))[..., 0]}
    gaussian_draws = gaussian.sample(args.samples, generator).reshape(args.samples, -1, layout.num_channels)
    sample_rows["Gaussian"] = gaussian_draws[..., 0]
    for label, prior in list(priors.items())[1:]:
        with torch.no_grad():
            x_T = torch.randn(args.samples, layout.dim, generator=generator)
            drawn = sample_ancestral(prior, x_T, generator=generator, diffusion_steps=args.sample_steps).sample
        sample_rows[label] = layout.unpad(layout.unflatten(drawn))[..., 0]
    figures = dict(ratio=plot_ratios(args.times, ratios, Path(f"{stem}_ratio.png"), f"{args.task}: denoising MSE ratio").name,
                   samples=render_rows(task, sample_rows, Path(f"{stem}_samples.png")).name)  # beside the results file
    results["figures"] = figures

    Path(f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Prior quality: {args.task}", "", f"- data: {task.data_label}; {test.shape[0]} test signals",
             f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}", "",
             "## x̂₀ MSE / exact-Gaussian x̂₀ MSE (same noise draws)", "",
             "| prior | " + " | ".join(f"t={t:g}" for t in args.times) + " |", "|---" * (len(args.times) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(f"{r:.3f}" for r in row) + " |" for label, row in ratios.items()]
    lines += ["", "Gaussian x̂₀ MSE: " + ", ".join(f"{m:.3g}" for m in mse[reference]), "",
              "## Negative log-likelihood per real entry (nats)", "",
              "The bound's time integral starts at each prior's lowest time ε; a smaller ε bounds the "
              "likelihood of a less smoothed prior, so −ELBOs compare only at equal ε.", "",
              "| prior | ε | −ELBO | exact −log p |", "|---|---|---|---|"]
    lines += [f"| {label} | {prior.sde.eps:g} | {elbo[label]:.4f} | "
              + (f"{exact_nll[label]:.4f}" if label in exact_nll else "") + " |" for label, prior in priors.items()]
    lines += ["", f"![ratio]({Path(figures['ratio']).name}) ![samples]({Path(figures['samples']).name})", ""]
    Path(f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
