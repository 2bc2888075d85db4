"""Cost of one posterior sample on this CPU: APS (N = 128 batched, N = 1) against DPS and MMPS with
1000 diffusion steps, all with the same shipped Bunny-MNIST prior
(``manifold_aps.pretrained.load_sampler(--sampler)`` and its ``.prior``: ``bunny_mnist``, the
``mlp`` prior, or ``bunny_mnist_guided``, the guided prior with its per-entry-map sampler; or an APS
file saved with its prior, ``manifold-aps fit --output FILE``), one thread.

Per test measurement (one at a time, batch 1): APS ``sample_measurement(m, N)`` end to end, the
base's per-measurement solve (``base_root``: the every-direction solve of a Gaussian base, or
each component's of a mixture base) on its own (and, for a Gaussian base, the general solve, which
``LowRankGaussian.posterior_root`` uses with one direction fewer), and the flow's share (the rest).
DPS and MMPS: the first ``--timed-steps`` steps of the 1000-step grid are timed and the cost
extrapolated linearly to the full grid (every step does the same work); with ``--full`` one full
1000-step run per method is timed as well. Medians over the measurements.

    python benchmarks/sample_speed.py --measurements 8 --timed-steps 50 --full
    python benchmarks/sample_speed.py --sampler bunny_mnist_guided --output benchmarks/results/sample_speed_guided
    python benchmarks/sample_speed.py --sampler checkpoints/mixbase8/bunny_mnist_aps_cpu.pt --output ...

Writes benchmarks/results/sample_speed.{json,md}; docs/performance.md ("Cost per posterior
sample") quotes a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from manifold_aps import pretrained
from manifold_aps.aps import AmortizedPosteriorSampler
from manifold_aps.benchmark import base_description, environment, median_seconds, save_results
from manifold_aps.data.bunny_mnist import load_bunny_mnist
from manifold_aps.diffusion.sampling import time_grid
from manifold_aps.operators import RandomVertexMask
from manifold_aps.zero_shot import sample_dps, sample_mmps

DIFFUSION_STEPS = 1000
SAMPLERS = {"dps": sample_dps, "mmps": sample_mmps}  # default knobs (DPS step size 1, MMPS 3 CG steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measurements", type=int, default=8, help="test measurements (timed one at a time)")
    parser.add_argument("--timed-steps", type=int, default=50, help="diffusion steps timed per measurement")
    parser.add_argument("--full", action="store_true", help="also time one full 1000-step DPS and MMPS run")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each APS timing (median)")
    parser.add_argument("--sampler", default="bunny_mnist",
                        help="the shipped Bunny-MNIST sampler to time with its prior (bunny_mnist, bunny_mnist_guided), "
                             "or a .pt APS file saved with its prior")
    parser.add_argument("--output", default="benchmarks/results/sample_speed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    shipped = Path(args.sampler).suffix != ".pt"
    model = pretrained.load_sampler(args.sampler) if shipped else AmortizedPosteriorSampler.load(args.sampler)
    prior, layout = model.prior, model.layout
    digits, _ = load_bunny_mnist("test")
    truth = layout.pad(digits[: args.measurements].float())
    # the task's operator (hidden fraction 0.3, σ_y 0.1); the shipped file predates stored hidden fractions
    operator = RandomVertexMask(layout.num_vertices, layout.padded_vertices, 0.3, model.noise_std)
    measurements = operator(truth, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)

    rows = {name: [] for name in ("aps_n128", "aps_n1", "base_root", "base_root_library", "dps_step", "mmps_step")}
    with torch.no_grad():
        model.sample_measurement(measurements[:1], 128, generator)  # warm-up
    for i in range(len(measurements)):
        m = measurements[i:i + 1]
        with torch.no_grad():
            rows["aps_n128"].append(median_seconds(lambda: model.sample_measurement(m, 128, generator), args.repeats))
            rows["aps_n1"].append(median_seconds(lambda: model.sample_measurement(m, 1, generator), args.repeats))
            rows["base_root"].append(median_seconds(lambda: model.base_root(m), args.repeats))
            if not model.mixture_base:
                y, observed = m.real_entries(layout.num_vertices)  # one direction fewer: the general solve
                rows["base_root_library"].append(median_seconds(
                    lambda: model.base.posterior_root(y, observed, model.noise_std, model.base_rank - 1), args.repeats))
        grid = time_grid(DIFFUSION_STEPS, prior.sde.eps)[: args.timed_steps + 1]
        for name, sampler in SAMPLERS.items():
            rows[f"{name}_step"].append(median_seconds(lambda: sampler(prior, m, operator, times=grid, generator=generator))
                                        / args.timed_steps)
        print(i, {name: f"{values[-1]:.4g}" for name, values in rows.items() if values}, flush=True)
    with torch.no_grad():
        batched_base = median_seconds(lambda: model.base_root(measurements), args.repeats) / len(measurements)
    median = {name: statistics.median(values) for name, values in rows.items() if values}
    full = {}
    if args.full:
        for name, sampler in SAMPLERS.items():
            full[name] = median_seconds(lambda: sampler(prior, measurements[:1], operator, diffusion_steps=DIFFUSION_STEPS,
                                                 generator=generator))
            print(f"full {name}: {full[name]:.3g} s", flush=True)

    per_sample = {  # seconds per posterior sample
        "aps_n128": median["aps_n128"] / 128, "aps_n1": median["aps_n1"],
        "dps": full.get("dps", median["dps_step"] * DIFFUSION_STEPS),
        "mmps": full.get("mmps", median["mmps_step"] * DIFFUSION_STEPS),
    }
    results = dict(
        command="python " + " ".join(sys.argv), **environment(), model=f"{args.sampler} ({'shipped' if shipped else 'file'})",
        flow=model.flow.config, base=base_description(model), measurements=len(measurements),
        diffusion_steps=DIFFUSION_STEPS, timed_steps=args.timed_steps,
        extrapolated=not args.full,
        seconds_per_measurement={"aps_n128": median["aps_n128"], "aps_n1": median["aps_n1"],
                                 "base_root": median["base_root"], "base_root_batched": batched_base,
                                 "base_root_library": median.get("base_root_library"),
                                 "aps_n128_flow": median["aps_n128"] - median["base_root"],
                                 "aps_n1_flow": median["aps_n1"] - median["base_root"]},
        seconds_per_step={"dps": median["dps_step"], "mmps": median["mmps_step"]},
        seconds_full_run=full, seconds_per_sample=per_sample,
        ratio_per_sample={f"{slow}/{fast}": per_sample[slow] / per_sample[fast]
                          for slow in ("dps", "mmps") for fast in ("aps_n128", "aps_n1")},
        raw=rows,
    )
    save_results(args.output, results, markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    per_sample, per_measurement = results["seconds_per_sample"], results["seconds_per_measurement"]
    how = ("extrapolated linearly from the first {timed_steps} steps of the 1000-step grid".format(**results)
           if results["extrapolated"] else "one full 1000-step run")
    lines = [f"# Cost per posterior sample (Bunny-MNIST, {results['model']}: its prior and APS)", "",
             f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}",
             f"- APS flow {results['flow']}, {results['base']}; medians over "
             f"{results['measurements']} test measurements, one at a time", f"- DPS / MMPS: {how}", "",
             "| method | seconds per measurement | seconds per posterior sample |", "|---|---|---|",
             f"| APS, N = 128 in one call | {per_measurement['aps_n128']:.4g} | {per_sample['aps_n128']:.3g} |",
             f"| APS, N = 1 | {per_measurement['aps_n1']:.4g} | {per_sample['aps_n1']:.3g} |",
             f"| DPS, 1000 steps | | {per_sample['dps']:.4g} |",
             f"| MMPS, 1000 steps (3 CG steps) | | {per_sample['mmps']:.4g} |", "",
             f"The base's solve (`base_root`): {per_measurement['base_root']:.3g} s per measurement alone, "
             f"{per_measurement['base_root_batched']:.3g} s per measurement in a batch of {results['measurements']}"
             + ("" if per_measurement["base_root_library"] is None else
                f" (the general solve, `LowRankGaussian.posterior_root` with one direction fewer: "
                f"{per_measurement['base_root_library']:.3g} s)") + "; "
             f"the flow's share: {per_measurement['aps_n128_flow']:.3g} s (N = 128), "
             f"{per_measurement['aps_n1_flow']:.3g} s (N = 1).", "",
             "| ratio per posterior sample | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4g} |" for name, value in results["ratio_per_sample"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
