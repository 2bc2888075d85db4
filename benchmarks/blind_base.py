"""Blind imputation on the ERA5-proxy task at hidden fractions 0.3–0.6: what the Gaussian base
alone gives when the blind sampler reads the mask off ``y`` (the exact posterior given that mask)
instead of using the fitted prior, against the known-mask base, optimal interpolation and the
shipped (trained) known-mask and blind samplers.

"Base only" models are samplers with a fresh flow (the identity), so their draws are the base's:

- ``blind_base_mask_from_y``: blind operator, ``mask_from_y=True`` (the new default);
- ``blind_base_prior``: blind operator, ``mask_from_y=False`` (the base of the shipped blind file);
- ``known_base``: the operator's mask given.

    python benchmarks/blind_base.py --measurements 32

Writes benchmarks/results/blind_base.{json,md} (one row per method and hidden fraction).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from manifold_aps import pretrained
from manifold_aps.aps import AmortizedPosteriorSampler, condition_channels
from manifold_aps.benchmark import blind_sweep, environment, fit_oi, write_results
from manifold_aps.flows import build_flow
from manifold_aps.operators import BlindVertexMask
from manifold_aps.tasks import load_task


def base_only(model: AmortizedPosteriorSampler, operator, mask_from_y: bool) -> AmortizedPosteriorSampler:
    """``model``'s prior and Gaussian base behind a fresh (identity) flow, for ``operator``."""
    layout = model.layout
    channels = condition_channels(layout, operator.blind, True, mask_from_y)
    flow = build_flow("realnvp", layout, channels, depth=1, hidden=8)
    return AmortizedPosteriorSampler(flow, model.prior, operator, base=model.base, base_rank=model.base_rank,
                                     mask_from_y=mask_from_y).eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measurements", type=int, default=32)
    parser.add_argument("--rates", default="0.3,0.4,0.5,0.6")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/results/blind_base")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = load_task("era5_proxy")
    layout, operator = pretrained.load_sampler("era5_proxy").layout, task.operator
    known, blind = pretrained.load_sampler("era5_proxy"), pretrained.load_sampler("era5_proxy", blind=True)
    blind_operator = BlindVertexMask(layout.num_vertices, layout.padded_vertices, (0.3, 0.6), operator.noise_std)
    oi = fit_oi(layout, task.train, task.validation[:64], operator, args.seed + 1)  # (gaussian, scores, seconds)
    truth, rates = task.test[: args.measurements], tuple(float(rate) for rate in args.rates.split(","))
    pairs = {  # label: (blind model, known model) as blind_sweep takes them
        "base only": (base_only(blind, blind_operator, True), base_only(known, operator, False)),
        "base only, prior as blind base": (base_only(blind, blind_operator, False), None),
        "shipped (trained)": (blind, known),
    }
    rows = []
    for label, (blind_model, known_model) in pairs.items():
        for row in blind_sweep(layout, truth, blind_model, known_model or blind_model, operator, oi, rates, args.seed,
                               grid_shape=(46, 90)):
            if (known_model is None and not row["method"].startswith("aps_blind")) or (
                    row["method"] == "oi" and label != "base only"):
                continue  # rows already there
            rows.append(dict(row, method=f"{row['method']} ({label})"))
    results = dict(task=task.name, scale="shipped models", data=task.data_label, **environment(), train_seconds=None,
                   command="python " + " ".join(sys.argv), sections={"blind_sweep": rows},
                   notes=["aps_blind (base only) reads the mask off y: its rows equal aps (base only), the "
                          "known-mask base, up to the flow's float32 rounding",
                          "aps_blind (base only, prior as blind base): the fitted prior's mean and spread, "
                          "what the shipped blind model's flow starts from"])
    write_results(results, Path(args.output))


if __name__ == "__main__":
    main()
