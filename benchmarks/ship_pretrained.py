"""Write trained cpu-scale models into the package (``manifold_aps/pretrained/``) with a model card.

Takes a prior file (``manifold-aps train-prior``) and APS files trained against it
(``manifold-aps fit --prior ...``), stores them compactly (:func:`manifold_aps.pretrained.export`),
reloads the stored copies and scores them on fixed-seed measurements of the task's test split, so
the card's metrics are those of the weights users get.

    python benchmarks/ship_pretrained.py --task bunny_mnist --prior ckpt/bunny_mnist_prior_cpu.pt \
        --aps ckpt/bunny_mnist_aps_cpu.pt --prior-seconds 1400 --prior-command "manifold-aps train-prior ..." \
        --aps-command "manifold-aps fit ..."

Without ``--aps``/``--blind`` only the prior is shipped, under ``--name`` (which must then differ
from the task's, whose shipped samplers were trained against the task's own prior), e.g.
``--name bunny_mnist_guided``; its card points to ``--quality``, the prior-quality results file.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import torch

from manifold_aps import pretrained
from manifold_aps.aps import AmortizedPosteriorSampler
from manifold_aps.benchmark import base_description, environment
from manifold_aps.metrics import evaluate_sampler
from manifold_aps.diffusion import load_prior
from manifold_aps.operators import BlindVertexMask
from manifold_aps.tasks import load_task


def card(task, prior, samplers: dict, scores: dict, args) -> str:
    network = prior.network
    size = sum(p.numel() for p in network.parameters())
    lines = [f"# {args.name} — cpu-scale prior" + (" and APS sampler" if samplers else ""), "",
             f"- data: {task.data_label}; {len(task.train)} training signals, {task.mesh.num_vertices} vertices, "
             f"hidden fraction {task.operator.hidden_fraction}, σ_y {task.operator.noise_std}",
             f"- prior: `{network.name}` {json.dumps(network.config)} ({size / 1e6:.2f} M parameters), "
             f"{args.prior_steps} steps, {args.prior_seconds:.0f} s wall on a shared 2-core CPU "
             f"(1 thread); command: `{args.prior_command}`"]
    for key, model in samplers.items():
        report = model.report
        lines.append(f"- {'blind ' if model.blind else ''}APS: `{model.flow_kind}` flow {json.dumps(model.flow.config)}, "
                     f"{base_description(model)}, "
                     + (f"per-entry map with K = {model.marginal.config['components']} terms, "
                        if model.marginal is not None else "") +
                     f"{getattr(args, key + '_seconds') or report.get('train_seconds', float('nan')):.0f} s wall; "
                     f"command: `{getattr(args, key + '_command')}`")
    if not samplers:
        env = environment()
        return "\n".join(lines + [
            "", f"No APS sampler is shipped with this prior. Denoising quality against the exact Gaussian: "
            f"`{args.quality}`.", "", f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} on "
            f"{env['machine']} (commit {env['commit']}). Load with `manifold_aps.pretrained.load_prior({args.name!r})`.", ""])
    if args.quality:
        lines.append(f"- the prior's denoising quality against the exact Gaussian: `{args.quality}`")
    lines += ["", f"Scores of the stored (float16-rounded) weights on {args.n_measurements} fixed-seed measurements "
              "of the test split (seed 1; 128 samples each; coverage of the 90 % interval on hidden vertices; the blind "
              "sampler's measurements hide a rate drawn per measurement in 30–60 %, the others the task's rate"
              + ("; rows with a second name score that test set instead, e.g. the real ERA5 fields beside the proxy"
                 if task.extra_test else "") + "):", "",
              "| sampler | PSNR of the mean | PSNR of one sample | 90 % coverage | seconds / measurement |", "|---|---|---|---|---|"]
    for key, score in scores.items():
        lines.append(f"| {key} | {score['psnr_mean']:.2f} | {score['psnr_single']:.2f} | {score['coverage_90_hidden']:.3f} | "
                     f"{score['seconds_per_measurement']:.3g} |")
    if any(model.model_error for model in samplers.values()):
        lines += ["", "Shipped with `model_error` on: draws are widened by the white variance each measurement says the "
                  "prior misses (`manifold_aps.model_error`), as these scores are; pass `model_error=False` to "
                  "`sample`/`posterior` for the prior's own posterior."]
    env = environment()
    lines += ["", f"Written {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {env['machine']} "
              f"(commit {env['commit']}). Load with `manifold_aps.pretrained.load_sampler({args.name!r}"
              f"{', blind=True' if 'blind' in samplers and 'aps' not in samplers else ''})`; "
              "benchmark tables: docs/benchmarks.md.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=("bunny_mnist", "era5_proxy"))
    parser.add_argument("--prior", required=True)
    parser.add_argument("--aps", help="known-operator APS file")
    parser.add_argument("--blind", help="blind APS file")
    parser.add_argument("--prior-seconds", type=float, required=True, help="wall time of the prior's training")
    parser.add_argument("--prior-steps", type=int, required=True)
    parser.add_argument("--prior-command", required=True)
    parser.add_argument("--aps-command", default="")
    parser.add_argument("--blind-command", default="")
    for key in ("aps", "blind"):
        parser.add_argument(f"--{key}-seconds", type=float, help=f"the {key} run's total training wall time when it "
                            "was resumed (default: the file's train_seconds, which counts its last call only)")
    parser.add_argument("--n-measurements", type=int, default=64)
    parser.add_argument("--name", help="shipped name (default: the task's)")
    parser.add_argument("--quality", default="", help="prior-quality results file named in a prior-only card")
    parser.add_argument("--model-error", action="store_true",
                        help="ship the samplers with model_error on: their draws are widened by the model error each "
                             "measurement reveals (for samplers trained on a proxy of the data they serve)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    prior = load_prior(args.prior)
    samplers = {key: AmortizedPosteriorSampler.load(path) for key, path in (("aps", args.aps), ("blind", args.blind)) if path}
    for sampler in samplers.values():
        sampler.model_error = args.model_error
    args.name = args.name or args.task
    if not samplers and args.name == args.task:
        parser.error("give --aps and/or --blind, or ship the prior alone under another --name")
    V = task.mesh.num_vertices
    test = task.test[: args.n_measurements]
    pretrained.export(args.name, prior, samplers, "# pending\n")
    scores = {}
    for key in samplers:
        stored = pretrained.load_sampler(args.name, blind=key == "blind")
        operator = (BlindVertexMask(V, stored.layout.padded_vertices, (0.3, 0.6), task.operator.noise_std) if key == "blind"
                    else task.operator)
        scores[key] = evaluate_sampler(stored, operator, test, seed=1)
        print(key, scores[key])
        for name, signals in task.extra_test.items():  # e.g. the 24 real ERA5 fields beside a proxy's test split
            scores[f"{key}, {name}"] = evaluate_sampler(stored, operator, signals[: args.n_measurements], seed=1)
            print(key, name, scores[f"{key}, {name}"])
    text = card(task, prior, samplers, scores, args)
    (pretrained.FOLDER / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
