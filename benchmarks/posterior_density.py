"""Held-out log-likelihood of posterior samplers: ``−log q(x | y)`` per entry of test signals under
each sampler's exact density — a proper score of the whole joint posterior, not only of its mean
and marginals (docs/benchmarks.md, "APS with the forward-KL term").

Every test signal ``x`` is measured once (the task's operator, seed ``--seed``); rows:

- each ``--sampler NAME=PATH`` (an APS file): :func:`manifold_aps.aps.forward_kl.log_density`;
- ``NAME base``: the same sampler's base alone (its flow and map at the identity: the posterior of
  its rank-r PPCA, or of its mixture of PPCA for a mixture base);
- ``optimal interpolation``: the exact Gaussian posterior of a PPCA fitted to the training split,
  its rank chosen on 64 validation measurements (as in the task benchmarks).

Lower is better; values are nats per entry (``V · C``), averaged (and the median) over signals.
For the APS samplers also ``−log q`` of one of their own draws per measurement (an estimate of
the posterior's entropy per entry, to set against the test signals'); for every row the PSNR of
its posterior mean (APS: of N = 128 draws) on all and on hidden entries, and its squared error per
entry split by where the truth is exactly 0 (a point mass such as MNIST's background) or not and
by observed or hidden — the means compared on many more signals than the task benchmarks score.

    python benchmarks/posterior_density.py --task bunny_mnist --measurements 256 --threads 1 \\
        --sampler reverse_kl=DIR/bunny_mnist_aps_cpu.pt --sampler forward_kl=DIR2/bunny_mnist_aps_cpu.pt \\
        --output benchmarks/results/posterior_density_bunny_mnist
"""

from __future__ import annotations

import argparse
import math

import torch

from manifold_aps.aps import AmortizedPosteriorSampler
from manifold_aps.aps.forward_kl import log_density
from manifold_aps.benchmark import environment, save_results
from manifold_aps.gaussian_posterior import GaussianRoot, optimal_interpolation
from manifold_aps.metrics import psnr
from manifold_aps.mixture_base import MixtureRoot
from manifold_aps.tasks import load_task


def base_log_density(root: GaussianRoot | MixtureRoot, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | y)`` ``(B,)`` of a base posterior at ``x`` ``(B, D)``: ``log N(x; mean, Σ)`` of a
    :class:`GaussianRoot`, the mixture's exact density of a :class:`MixtureRoot`."""
    if isinstance(root, MixtureRoot):
        return root.log_prob(x.to(root.mean.dtype))
    u, log_det = root.inverse(x)
    return -0.5 * (u**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi) + log_det


def summary(name: str, log_q: torch.Tensor, entries: int) -> dict:
    per_entry = -log_q.double() / entries
    return dict(method=name, nll_per_entry=float(per_entry.mean()), nll_per_entry_median=float(per_entry.median()),
                n_measurements=len(per_entry))


def own_draws_and_mean(model, measurement, entries: int, seed: int) -> tuple[float, torch.Tensor]:
    """``−log q`` per entry of one own draw per measurement (averaged), and the N = 128 posterior
    mean ``(B, V_pad, C)``."""
    generator = torch.Generator().manual_seed(seed)
    own, means = [], []
    for start in range(0, len(measurement), 64):
        part = measurement[start:start + 64]
        z = torch.randn(len(part), model.flow.dim, generator=generator)
        _, log_det = model.generate(part, z, generator=generator)
        own.append(-0.5 * (z**2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi) - log_det)
        means.append(model.sample_measurement(part, 128, generator).mean(0))
    return float((-torch.cat(own).double() / entries).mean()), torch.cat(means)


def mean_scores(mean: torch.Tensor, truth: torch.Tensor, observed: torch.Tensor, entries: int) -> dict:
    """Scores of a posterior mean ``(B, V, C)`` against ``truth``: PSNR (per signal, averaged; all
    entries and hidden ones, as in the task benchmarks) and the squared error summed over a region
    (the truth exactly 0 or not × observed or hidden) per entry of all signals."""
    error = (mean.double() - truth.double()) ** 2
    observed = observed[:, :, None].expand_as(error)
    zero = truth == 0
    scores = dict(psnr=float(psnr(mean, truth, vertex_axes=2).mean()),
                  psnr_hidden=float(psnr(mean, truth, ~observed, vertex_axes=2).mean()))
    for key, region in (("zero_observed", zero & observed), ("zero_hidden", zero & ~observed),
                        ("nonzero_observed", ~zero & observed), ("nonzero_hidden", ~zero & ~observed)):
        scores[f"squared_error_{key}"] = float((error * region).sum()) / (len(truth) * entries)
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("bunny_mnist", "era5_proxy"))
    parser.add_argument("--sampler", action="append", required=True, help="NAME=PATH of an APS file (repeatable)")
    parser.add_argument("--measurements", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="results stem (.json and .md are written)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    V = task.mesh.num_vertices
    samplers = {}
    for item in args.sampler:
        name, separator, path = item.partition("=")
        if not separator:
            parser.error(f"--sampler wants NAME=PATH, got {item!r}")
        samplers[name] = AmortizedPosteriorSampler.load(path).eval()
    layout = next(iter(samplers.values())).layout
    entries = V * layout.num_channels
    truth = layout.pad(task.test[: args.measurements])
    measurement = task.operator(truth, torch.Generator().manual_seed(args.seed))
    real = layout.unpad(truth)
    observed = measurement.observed[:, :V]
    rows = []
    with torch.no_grad():
        for name, model in samplers.items():
            chunks = [(measurement[i:i + 64], truth[i:i + 64]) for i in range(0, len(truth), 64)]
            own, mean = own_draws_and_mean(model, measurement, entries, args.seed + 2)
            rows.append(summary(name, torch.cat([log_density(model, m, x) for m, x in chunks]), entries)
                        | {"own_draw_nll_per_entry": own} | mean_scores(layout.unpad(mean), real, observed, entries))
            if model.base is not None:
                roots = [model.base_root(m) for m, _ in chunks]
                base_mean = torch.cat([root.mean for root in roots]).reshape(real.shape)
                rows.append(summary(f"{name} base", torch.cat([
                    base_log_density(root, layout.unpad(x).flatten(1)) for root, (_, x) in zip(roots, chunks)]),
                    entries) | mean_scores(base_mean, real, observed, entries))
        validation = task.validation[:64]
        gaussian, _ = optimal_interpolation(task.train.flatten(1), task.operator(
            layout.pad(validation), torch.Generator().manual_seed(args.seed + 1)).real_entries(V),
            validation.flatten(1), task.operator.noise_std)
        y, observed_entries = measurement.real_entries(V)
        root = gaussian.posterior_root(y, observed_entries, task.operator.noise_std, gaussian.rank)
        rows.append(summary(f"optimal interpolation (rank {gaussian.rank})",
                            base_log_density(root, real.flatten(1).double()), entries)
                    | mean_scores(root.mean.reshape(real.shape), real, observed, entries))
    env = environment()
    command = "python benchmarks/posterior_density.py " + " ".join(
        f"--task {args.task} --measurements {args.measurements} --seed {args.seed} --threads {args.threads}".split()
        + [f"--sampler {item}" for item in args.sampler] + [f"--output {args.output}"])
    results = dict(task=args.task, data=task.data_label, command=command, **env, rows=rows,
                   hidden_fraction=task.operator.hidden_fraction, noise_std=task.operator.noise_std)
    lines = [f"# {args.task}: held-out −log q(x | y) per entry", "", f"- data: {task.data_label}",
             f"- {args.measurements} test signals, each measured once ({task.operator.hidden_fraction:.0%} hidden, "
             f"σ_y {task.operator.noise_std}, seed {args.seed}); nats per entry ({entries} entries); lower is better",
             f"- command: `{command}`", f"- machine: {env['machine']}; date {env['date']}; commit {env['commit']}", "",
             "- own draw: −log q of one of the sampler's own draws per measurement; PSNR of the posterior mean "
             "(APS: of N = 128 draws; per signal, averaged) and its squared error summed over a region / all "
             "entries (truth exactly 0 or not, observed or hidden)", "",
             "| method | −log q per entry (mean) | median | own draw | PSNR | PSNR hidden | sq. error: 0, observed "
             "| 0, hidden | non-0, observed | non-0, hidden |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = ("own_draw_nll_per_entry", "psnr", "psnr_hidden", "squared_error_zero_observed", "squared_error_zero_hidden",
            "squared_error_nonzero_observed", "squared_error_nonzero_hidden")
    lines += [f"| {row['method']} | {row['nll_per_entry']:.3f} | {row['nll_per_entry_median']:.3f} | "
              + " | ".join(format(row[key], ".2f" if key.startswith("psnr") else ".3g") if key in row else ""
                         for key in keys) + " |" for row in rows]
    save_results(args.output, results, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
