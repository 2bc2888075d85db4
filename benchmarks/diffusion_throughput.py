"""Training throughput of the noise networks (samples/s of one DSM step: forward, backward, AdamW).

    python benchmarks/diffusion_throughput.py --threads 2 --batch 64 --steps 10

Prints one markdown row per (network config, layout) and, with ``--output STEM``, writes them with
the command, machine, date and commit to ``STEM.md`` and ``STEM.json``; docs/performance.md
quotes a run.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from manifold_aps.diffusion.networks import build_network
from manifold_aps.diffusion.sde import VPSDE
from manifold_aps.diffusion.training import denoising_score_matching_loss
from manifold_aps import bunny
from manifold_aps.benchmark import environment, save_results
from manifold_aps.mesh import latlon_sphere
from manifold_aps.signals import VertexLayout

MESHES = {"sphere 4° (d=4160)": lambda: latlon_sphere(4.0), "bunny (d=1920)": bunny}  # bunny: $MANIFOLD_APS_DATA
CONFIGS = {
    "unet1d ch32 ×(1,2,2,4)": ("unet1d", dict(channels=32, channel_multipliers=(1, 2, 2, 4))),
    "unet1d ch16 ×(1,2,4,8)": ("unet1d", dict(channels=16, channel_multipliers=(1, 2, 4, 8))),
    "mlp w512 d4": ("mlp", dict(width=512, depth=4)),
    "mlp w1024 d6": ("mlp", dict(width=1024, depth=6)),
    "spectral k64 w256 d3": ("spectral", dict(num_modes=64, width=256, depth=3)),
    "spectral k256 w512 d4": ("spectral", dict(num_modes=256, width=512, depth=4)),
    "diffusion_net k64 w32 d4": ("diffusion_net", dict(num_modes=64, width=32, depth=4)),
    "diffusion_net k32 w16 d3": ("diffusion_net", dict(num_modes=32, width=16, depth=3)),
    # the Gaussian-residual wrapper (rank-256 Gaussian, empty buffers: the cost is the same)
    "gaussian_residual mlp w1024 d4": ("gaussian_residual", dict(base="mlp", base_config=dict(width=1024, depth=4),
                                                                   rank=256)),
    "gaussian_residual diffusion_net k64 w32 d4": ("gaussian_residual", dict(
        base="diffusion_net", base_config=dict(num_modes=64, width=32, depth=4), rank=256)),
    "guided gaussian_residual vertex_mlp w64 d3": ("gaussian_residual", dict(
        base="vertex_mlp", base_config=dict(width=64, depth=3), rank=256, guide=True, data_scale=1.0)),
    "guided mixture (K=4) residual vertex_mlp w32 d2": ("gaussian_residual", dict(
        base="vertex_mlp", base_config=dict(width=32, depth=2), rank=256, guide=True, data_scale=1.0, components=4)),
}


def measure(name, config, mesh, batch, steps, warmup=2):
    generator = torch.Generator().manual_seed(0)
    layout = VertexLayout(mesh.num_vertices)
    network = build_network(name, layout, mesh=mesh, **config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-4)
    data = torch.randn(batch, layout.dim, generator=generator)
    sde = VPSDE()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = denoising_score_matching_loss(network, data, generator, sde)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    parameters = sum(p.numel() for p in network.parameters())
    return batch * steps / elapsed, parameters


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", nargs="*", help="network names or row labels to measure (default: all)")
    parser.add_argument("--output", type=Path, help="write STEM.md and STEM.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header = (f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
              f"batch {args.batch}, {args.steps} timed steps")
    lines = ["| network | layout | parameters | samples/s |", "|---|---|---|---|"]
    print(header, *lines, sep="\n")
    meshes = {label: build() for label, build in MESHES.items()}
    rows = []
    for label, (name, config) in CONFIGS.items():
        if args.only and name not in args.only and label not in args.only:
            continue
        for layout_label, mesh in meshes.items():
            load = os.getloadavg()[0]
            rate, parameters = measure(name, config, mesh, args.batch, args.steps)
            rows.append(dict(network=label, layout=layout_label, parameters=parameters, samples_per_second=rate,
                             load_average_before=load))
            lines.append(f"| {label} | {layout_label} | {parameters / 1e6:.2f} M | {rate:.0f} |")
            print(lines[-1], flush=True)
    if args.output:
        results = dict(command="python " + " ".join(shlex.quote(word) for word in sys.argv), **environment(),
                       setting=header, rows=rows)
        save_results(args.output, results, "\n".join([
            "# Training throughput of the noise networks", "", f"- command: `{results['command']}`",
            f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}",
            f"- {header}; load average before each row in the JSON", "", *lines, ""]))


if __name__ == "__main__":
    main()
