"""Training-step time and peak memory of the conditional flows against the mesh size.

One training step of a flow alone: ``x, log_det = flow(z, c)`` with the APS condition layout (``y``,
observed mask, Gaussian base mean and scale: 4 features per vertex), the loss
``mean(½‖x‖² − log_det)``, backward, AdamW. The diffusion prior's ELBO, which APS adds, is left
out: it does not depend on the flow. Each (flow, mesh) runs in two subprocesses of its own: one
times ``--steps`` steps after a warm-up (median); the other takes one step with glibc's mmap
threshold fixed at 64 kB (``MALLOC_MMAP_THRESHOLD_``), so that every large tensor is returned to
the system when freed and the peak resident memory (``ru_maxrss``) follows the live tensors
instead of the allocator's high-water mark (that setting slows allocation, hence the separate
timing run). The memory of a step is that peak minus the resident memory after building the flow
and its inputs. A flow is skipped on a mesh when the memory its smaller meshes project linearly
(in the number of vertices) exceeds ``--max-gb``.

    python benchmarks/flow_scaling.py --batch 8 --steps 2

Writes benchmarks/results/flow_scaling.{json,md}; docs/performance.md ("Flow cost against mesh
size") quotes a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import manifold_aps as aps
from manifold_aps.benchmark import environment, save_results
from manifold_aps.flows import ConditionalMeshFlow, ConditionalRealNVP

MESHES = {  # name: builder (bunny needs $MANIFOLD_APS_DATA)
    "bunny": aps.bunny,
    "latlon4": lambda: aps.latlon_sphere(4.0),
    "healpix32": lambda: aps.healpix_sphere(32),
}
COND_CHANNELS = 4  # y, observed mask, base mean, base scale
FLOWS = {  # name: (kind, shape, what it is)
    "realnvp_shipped": ("realnvp", dict(depth=4, hidden=32), "RealNVP, shape of the shipped models"),
    "realnvp_cpu": ("realnvp", dict(depth=8, hidden=256), "RealNVP, cpu preset shape"),
    "realnvp_cpu_encoded": ("realnvp", dict(depth=8, hidden=256, condition_features=256),
                            "RealNVP, cpu preset shape, shared condition encoder (m = 256)"),
    "mesh_cpu": ("mesh", dict(depth=8, hidden=256, layers=2), "mesh flow, cpu preset shape (h = 256)"),
    "mesh_narrow": ("mesh", dict(depth=8, hidden=64, layers=2), "mesh flow, h = 64"),
    "mesh_encoded": ("mesh", dict(depth=8, hidden=64, layers=1, condition_features=32),
                     "mesh flow, h = 64, one convolution per coupling, shared graph encoder (f = 32)"),
    "mesh_encoded_recompute": ("mesh", dict(depth=8, hidden=64, layers=1, condition_features=32, recompute=True),
                               "as mesh_encoded, activations recomputed in the backward pass"),
}


def build(kind: str, shape: dict, mesh) -> torch.nn.Module:
    V = mesh.num_vertices
    if kind == "realnvp":
        return ConditionalRealNVP(V, COND_CHANNELS * V, permutation="random", aligned_features=COND_CHANNELS, **shape)
    return ConditionalMeshFlow(mesh.edge_index, V, 1, COND_CHANNELS, partition="parity", **shape)


def rss_gb() -> float:
    """Resident memory now (Linux ``/proc/self/statm``), GB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def worker(flow_name: str, mesh_name: str, batch: int, steps: int) -> dict:
    """One (flow, mesh): seconds of each of ``1 + steps`` training steps, and memory."""
    torch.manual_seed(0)
    mesh = MESHES[mesh_name]()
    kind, shape, _ = FLOWS[flow_name]
    flow = build(kind, shape, mesh)
    with torch.no_grad():  # away from the identity, so the step does the work of a trained flow
        for parameter in flow.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    optimizer = torch.optim.AdamW(flow.parameters(), lr=1e-4)
    V = mesh.num_vertices
    z, condition = torch.randn(batch, V), torch.randn(batch, V, COND_CHANNELS)
    before = rss_gb()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        x, log_det = flow(z, condition)
        loss = (0.5 * x.square().sum(dim=1) - log_det).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    return dict(flow=flow_name, mesh=mesh_name, vertices=V, edges=int(mesh.edge_index.shape[1]), batch=batch,
                parameters=sum(p.numel() for p in flow.parameters()), step_seconds_all=times, rss_before_gb=before,
                peak_rss_gb=peak, step_memory_gb=peak - before)


def run_worker(flow_name: str, mesh_name: str, batch: int, steps: int) -> dict:
    """Time and memory of one (flow, mesh), each from its own subprocess (module docstring)."""
    def run(steps, env):
        command = [sys.executable, __file__, "--worker", flow_name, mesh_name, "--batch", str(batch),
                   "--steps", str(steps)]
        output = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **env}).stdout
        return json.loads(output.strip().splitlines()[-1])

    timed = run(steps, {})
    memory = run(0, {"MALLOC_MMAP_THRESHOLD_": "65536"})
    return dict(memory, step_seconds=statistics.median(timed["step_seconds_all"][1:]),
                step_seconds_all=timed["step_seconds_all"])


def projected_gb(rows: list[dict], vertices: int) -> float | None:
    """Peak memory at ``vertices`` from the rows of smaller meshes (linear in V), or None."""
    if not rows:
        return None
    if len(rows) == 1:
        return rows[0]["peak_rss_gb"] * vertices / rows[0]["vertices"]
    (v0, m0), (v1, m1) = [(row["vertices"], row["peak_rss_gb"]) for row in rows[-2:]]
    return m1 + (m1 - m0) / (v1 - v0) * (vertices - v1)


def markdown(results: dict) -> str:
    lines = ["# Flow cost against mesh size", "", f"- command: `{results['command']}`",
             f"- machine: {results['machine']}; date {results['date']}; commit {results['commit']}",
             f"- batch {results['batch']}, one thread; {results['steps']} timed steps after one warm-up (median); "
             "flow alone: forward, backward, AdamW; peak RSS of one step with glibc's mmap threshold fixed "
             "at 64 kB (step memory: minus the RSS after building the flow and its inputs)", "",
             "| flow | V | E | parameters | s / step | peak RSS GB | step memory GB | ms / step / 1k edges |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['flow']} | {row['vertices']} | {row['edges']} | | skipped: {row['skipped']} | | | |")
            continue
        lines.append(f"| {row['flow']} | {row['vertices']} | {row['edges']} | {row['parameters'] / 1e6:.2f} M | "
                     f"{row['step_seconds']:.3g} | {row['peak_rss_gb']:.2f} | {row['step_memory_gb']:.2f} | "
                     f"{1e6 * row['step_seconds'] / row['edges']:.3g} |")
    lines += ["", "Flows:", ""] + [f"- `{name}`: {FLOWS[name][2]}, {FLOWS[name][1]}" for name in results["flows"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument("--meshes", default=",".join(MESHES), help="smallest first (memory is projected from them)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="skip a run whose projected peak memory exceeds this")
    parser.add_argument("--output", default="benchmarks/results/flow_scaling")
    parser.add_argument("--worker", nargs=2, metavar=("FLOW", "MESH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.steps)))
        return
    edges = {name: int(MESHES[name]().edge_index.shape[1]) for name in args.meshes.split(",")}
    vertices = {name: MESHES[name]().num_vertices for name in edges}
    rows = []
    for flow_name in args.flows.split(","):
        done = []
        for mesh_name in edges:
            projected = projected_gb(done, vertices[mesh_name])
            if projected is not None and projected > args.max_gb:
                rows.append(dict(flow=flow_name, mesh=mesh_name, vertices=vertices[mesh_name], edges=edges[mesh_name],
                                 skipped=f"projected peak {projected:.0f} GB > {args.max_gb:g} GB"))
                print(rows[-1], flush=True)
                continue
            done.append(run_worker(flow_name, mesh_name, args.batch, args.steps))
            rows.append(done[-1])
            print(rows[-1], flush=True)
    results = dict(command="python " + " ".join(sys.argv), **environment(), batch=args.batch, steps=args.steps,
                   flows=args.flows.split(","), shapes={name: FLOWS[name][1] for name in args.flows.split(",")},
                   rows=rows)
    save_results(args.output, results, markdown(results))


if __name__ == "__main__":
    main()
