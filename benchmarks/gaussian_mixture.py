"""Gaussian-mixture benchmark: APS, DPS and optimal interpolation against an exact non-Gaussian posterior.

The signal is a mixture of three Matérn fields on the mesh
(:func:`manifold_aps.data.gaussian_mixture.matern_mixture`, weights 1/3 each, ν 1.5, 128
Laplace-Beltrami modes, nugget 5 % of each variance):

| component | mean | length scale / bbox diagonal | std |
| --- | --- | --- | --- |
| 1 | 0.4 | 0.5 | 0.15 |
| 2 | 0.6 | 0.5 | 0.15 |
| 3 | 0.5 | 0.1 | 0.08 |

Components 1 and 2 differ only in mean level, so after masking (60 % of the vertices hidden,
σ_y 0.05) a measurement often leaves the two in doubt — on the sphere about half the measurements
have no posterior weight above 0.9 — while component 3 (rough and weak) is always recognised.
When 1 and 2 stay in doubt, their posteriors nearly coincide on the hidden vertices (the observed
40 % pin the level): the posterior over the weights is mixed, the posterior over the field is not
bimodal (docs/method.md, "Gaussian-mixture fields").

The diffusion prior is not trained: it is the mixture's EXACT noise predictor
(:meth:`~manifold_aps.data.gaussian_mixture.GaussianMixtureField.exact_prior`), shared by APS and
DPS, so every gap to the ``exact`` row is the sampler's own error.

Meshes (``--mesh``): ``sphere4`` the 4° lat-lon sphere (4140 vertices); ``bunny`` the Stanford
bunny (data mirror, ``MANIFOLD_APS_DATA``) without its two vertices that belong to no face (1887
vertices): :class:`~manifold_aps.data.GaussianRandomField` gives those two one shared value with
std ≈ 3 at these length scales (20× the others), which would swamp every PSNR.

Fields are drawn one at a time with fixed seeds (train 0, validation 1, test 2, prior draws 3, base
fields 4): ``--train-fields`` (256 smoke / 1000 cpu) for APS and the OI fit, 64 validation fields for
OI's rank, and ``--n-measurements`` (4 / 16) test fields, each measured once (seed ``--seed``). With
``--base-fields N`` the classical fits — OI and APS's Gaussian or mixture base — use ``N`` fields of
their own instead of the training fields (the flow still trains on measurements of those): how much
of a gap is the base's estimation error.

Rows (``benchmarks/results/gaussian_mixture_<mesh>_<scale>.{json,md}``, schema of
:mod:`manifold_aps.benchmark`):

- ``exact``: the exact posterior (its mean; 128 draws of the full mixture posterior);
- ``oi``: optimal interpolation, the exact posterior under ONE PPCA Gaussian fitted to the training
  fields (rank chosen on the validation fields) — what a classical user would do; 128 correlated
  draws (:meth:`~manifold_aps.gaussian_posterior.LowRankGaussian.posterior_root`);
- ``aps_gauss_base`` / ``aps_plain``: :func:`manifold_aps.fit` against the exact prior with and
  without its Gaussian (PPCA posterior) base, RealNVP flow, the ``--scale`` preset with
  ``--iterations`` / ``--batch-size`` / ``--flow-depth`` / ``--hidden`` (and, after the base,
  ``--marginal-components``' per-entry map), ``--elbo-min-time``, ``--num-times`` and
  ``--cooldown-iterations``; mean of 128 draws;
- ``aps_forward_kl``: as ``aps_gauss_base`` plus the forward-KL term
  (:mod:`manifold_aps.aps.forward_kl`, weight ``--forward-kl-weight``) on ``--forward-kl-draws``
  exact draws of the mixture (seed 3): what the flow reaches with a mass-covering signal;
- ``aps_mixture_base`` / ``aps_mixture_base_forward_kl``: as ``aps_gauss_base`` / ``aps_forward_kl``
  with a mixture base (``fit``'s ``base_components``): a mixture of ``--base-components`` PPCA
  Gaussians of rank ``--base-rank`` fitted by EM to the training fields, whose exact posterior the
  flow maps (:mod:`manifold_aps.mixture_base`); ``mixture_base`` is that fitted mixture's exact
  posterior alone (APS's start);
- ``dps``: :func:`manifold_aps.zero_shot.sample_dps` with the exact prior, ``--diffusion-samples``
  (32) draws of ``--diffusion-steps`` (50 / 1000) steps.

Columns: ``psnr`` and ``psnr_hidden`` of the mean (data range 1), ``mse``, ``coverage_90`` and
``crps`` on the hidden vertices (:func:`manifold_aps.benchmark.score`), and against the exact
posterior: ``std_ratio`` (median over hidden vertices of the draws' std / the exact std) and
``weight_error`` (mean over measurements and components of ``|f_k − r_k|``, with ``r_k`` the exact
posterior weights and ``f_k`` the average over the draws of ``p(k | x)``, the components'
likelihoods normalised: for exact draws ``E f_k = r_k``); ``weight_error_mixed`` is the same mean
over the measurements whose largest ``r_k`` is below 0.9; ``reverse_kl``, for the rows whose
density is exact (APS, ``mixture_base``), is ``KL(q ‖ p(· | y))`` in nats per measurement, from
64 fresh draws each (:func:`reverse_kl`): what APS's objective estimates, up to a constant. These
are in a second table of the markdown file; the JSON also holds every method's
``component_fractions`` ``f`` per measurement. ``--prior-term exact`` trains the APS rows with the
mixture's exact log-density in place of the diffusion ELBO (an ablation that isolates the ELBO).

APS samplers are not saved: an APS file stores its prior, and only trained networks and single
Gaussians can be stored.

    python benchmarks/gaussian_mixture.py --mesh sphere4 --scale smoke --threads 1
    MANIFOLD_APS_DATA=../shared/data python benchmarks/gaussian_mixture.py --mesh bunny --scale smoke --threads 1
    python benchmarks/gaussian_mixture.py --mesh sphere4 --scale cpu --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import manifold_aps as aps
from manifold_aps.zero_shot import sample_dps
from manifold_aps.benchmark import environment, score, write_results
from manifold_aps.data.gaussian_mixture import GaussianMixtureField, matern_mixture
from manifold_aps.gaussian_posterior import optimal_interpolation
from manifold_aps.aps.forward_kl import log_density
from manifold_aps.methods import Estimate, aps_method, diffusion_method, mixture_method
from manifold_aps.mixture_base import mixture_posterior_root

from base_calibration import ExactLogDensity

HIDDEN_FRACTION, NOISE_STD = 0.6, 0.05
MIXTURE = dict(means=(0.4, 0.6, 0.5), length_fractions=(0.5, 0.5, 0.1), stds=(0.15, 0.15, 0.08), smoothness=1.5,
               num_modes=128, nugget=0.05)
SCALES = {"smoke": dict(train_fields=256, n_measurements=4, iterations=100, batch_size=32, diffusion_steps=50),
          "cpu": dict(train_fields=1000, n_measurements=16, iterations=400, batch_size=32, diffusion_steps=1000)}
VALIDATION_FIELDS = 64
DATA_SEEDS = {"train": 0, "validation": 1, "test": 2, "prior_draws": 3, "base": 4}
DRAWS = 128
KL_DRAWS = 64  # draws per measurement of the reverse-KL estimate
MIXED = 0.9  # a measurement whose largest exact posterior weight is below this leaves the component in doubt


def faced_bunny() -> aps.Mesh:
    """The Stanford bunny without the vertices that belong to no face."""
    mesh = aps.bunny()
    used = torch.zeros(mesh.num_vertices, dtype=torch.bool)
    used[mesh.faces.flatten()] = True
    index = torch.cumsum(used, 0) - 1
    return aps.Mesh(mesh.vertices[used], index[mesh.faces], name="bunny_faced")


MESHES = {"sphere4": lambda: aps.latlon_sphere(4.0), "bunny": faced_bunny}


def draw(mixture: GaussianMixtureField, count: int, seed: int) -> torch.Tensor:
    """``(count, V, 1)`` float32 fields, one draw at a time: the first n do not depend on ``count``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([mixture.sample(1, generator) for _ in range(count)]).float()[..., None]


def exact_method(mixture: GaussianMixtureField, layout: aps.VertexLayout):
    """The exact posterior: its mean and ``DRAWS`` draws of the full mixture posterior."""

    def method(measurement, operator, generator=None):
        count, V = len(measurement), layout.num_vertices
        posterior = mixture.posterior(*measurement.real_entries(V), operator.noise_std)
        draws = posterior.sample(DRAWS, generator).reshape(DRAWS, count, V, 1).float()
        return Estimate(posterior.mean.reshape(count, V, 1).float(), draws, 0)

    return method


def oi_method(gaussian, layout: aps.VertexLayout, info: dict):
    """Optimal interpolation with ``DRAWS`` correlated draws of its Gaussian posterior."""

    def method(measurement, operator, generator=None):
        count, V = len(measurement), layout.num_vertices
        y, observed = measurement.real_entries(V)
        root = gaussian.posterior_root(y, observed, operator.noise_std, gaussian.rank)
        white = torch.randn(DRAWS, *root.mean.shape, generator=generator, dtype=torch.float64)
        draws = root.transform(white).reshape(DRAWS, count, V, 1).float()
        return Estimate(root.mean.reshape(count, V, 1).float(), draws, 0, info)

    return method


def reverse_kl(sampler, measurement, mixture: GaussianMixtureField, layout, generator: torch.Generator,
               draws: int = KL_DRAWS) -> float:
    """``KL(q ‖ p(· | y)) = E_q[log q(x | y) − log p(x | y)]`` in nats, averaged over the
    measurements, from ``draws`` draws of ``q`` each: ``sampler`` an APS model (its exact density,
    :func:`~manifold_aps.aps.forward_kl.log_density`) or a fitted mixture (its exact posterior)."""
    y, observed = measurement.real_entries(layout.num_vertices)
    if isinstance(sampler, GaussianMixtureField):
        root = mixture_posterior_root(sampler, y, observed, NOISE_STD)
        x = root.draw(torch.randn(draws, *y.shape, generator=generator, dtype=torch.float64), generator)
        log_q = root.log_prob(x)
    else:
        with torch.no_grad():
            padded = sampler.sample_measurement(measurement, draws, generator)
            log_q = torch.stack([log_density(sampler, measurement, sample) for sample in padded]).double()
        x = padded[..., : layout.num_vertices, 0].double()
    log_p = mixture_posterior_root(mixture, y, observed, NOISE_STD).log_prob(x)
    return float((log_q - log_p).mean())


def against_exact(samples: torch.Tensor, exact, mixture: GaussianMixtureField, hidden: torch.Tensor) -> dict:
    """``std_ratio``, ``weight_error`` (all measurements and the mixed ones) and the component
    fractions ``f`` of ``samples`` ``(S, N, V, 1)`` (module docstring)."""
    ratio = samples.double().std(dim=0)[..., 0] / exact.std
    fractions = torch.stack([mixture.responsibilities(draws.flatten(1).double()).mean(0)
                             for draws in samples.unbind(1)])
    errors = (fractions - exact.weights).abs().mean(dim=1)
    mixed = exact.weights.max(dim=1).values < MIXED
    return dict(std_ratio=float(ratio[hidden].median()), weight_error=float(errors.mean()),
                weight_error_mixed=float(errors[mixed].mean()) if mixed.any() else None,
                component_fractions=fractions.tolist())


def train_aps(mesh, train, prior, args, gaussian_base: bool, log=print, prior_draws=None, base_components: int = 1,
              base_fields=None):
    """APS against the exact prior with ``fit`` (not saved: see the module docstring); with
    ``prior_draws`` (exact draws of the mixture) plus the forward-KL term on them; with
    ``base_components`` > 1 on a mixture-of-PPCA base; the base fitted on ``base_fields`` (default
    ``train``)."""
    started = time.perf_counter()
    forward = {} if prior_draws is None else dict(forward_kl_weight=args.forward_kl_weight, prior_draws=prior_draws)
    overrides = aps_overrides(args)
    if not gaussian_base:  # the per-entry map follows the base
        overrides.pop("marginal_components", None)
    model = aps.fit(mesh, train, mask_rate=HIDDEN_FRACTION, noise_std=NOISE_STD, prior=prior, scale=args.scale,
                    gaussian_base=gaussian_base, base_rank=args.base_rank, seed=args.seed, device="cpu", progress=False,
                    iterations=args.iterations, batch_size=args.batch_size, base_components=base_components,
                    base_signals=base_fields, **overrides, **forward)
    seconds = time.perf_counter() - started
    base = f"{base_components}-component mixture base" if base_components > 1 else "Gaussian base"
    log(f"trained APS ({base if gaussian_base else 'plain'}, {args.iterations} iterations"
        f"{'' if prior_draws is None else ', forward-KL term'}) in {seconds:.0f} s")
    return model, seconds


def aps_overrides(args) -> dict:
    """The APS settings given on the command line (the rest: the ``--scale`` preset)."""
    return {name: getattr(args, name) for name in ("flow_depth", "hidden", "marginal_components", "elbo_min_time",
                                                   "num_times", "cooldown_iterations") if getattr(args, name) is not None}


def extra_table(rows: list[dict]) -> list[str]:
    """Markdown rows of the columns that only this benchmark has."""
    columns = ("std_ratio", "weight_error", "weight_error_mixed", "reverse_kl")
    lines = ["## test: against the exact posterior", "", "| method | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        cells = [f"{row[c]:.4g}" if isinstance(row[c], float) else "" for c in columns]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv: list[str] | None = None, log=print) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the module docstring for the mixture, the rows and the commands.")
    parser.add_argument("--mesh", choices=sorted(MESHES), default="sphere4")
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--methods", default="exact,oi,aps_gauss_base,aps_plain,dps",
                        help="comma-separated rows; also aps_forward_kl (APS with the Gaussian base and the "
                             "forward-KL term on exact mixture draws), aps_mixture_base and "
                             "aps_mixture_base_forward_kl (the same on a mixture-of-PPCA base; both add the "
                             "row mixture_base, that base alone)")
    parser.add_argument("--forward-kl-weight", type=float, default=1.0, help="λ of the aps_forward_kl row")
    parser.add_argument("--forward-kl-draws", type=int, default=4096, help="exact mixture draws of the aps_forward_kl row")
    parser.add_argument("--results-name", default=None,
                        help="results file stem (default gaussian_mixture_<mesh>_<scale>)")
    parser.add_argument("--n-measurements", type=int, default=None)
    parser.add_argument("--train-fields", type=int, default=None)
    parser.add_argument("--base-fields", type=int, default=None,
                        help="fit OI and APS's base on this many fields of their own (default: the training fields)")
    parser.add_argument("--iterations", type=int, default=None, help="APS iterations (default 100 / 400)")
    parser.add_argument("--batch-size", type=int, default=None, help="APS batch size (default 32)")
    parser.add_argument("--cooldown-iterations", type=int, default=None,
                        help="APS: the last C iterations decay the learning rate linearly (default: none)")
    parser.add_argument("--base-rank", type=int, default=128, help="largest rank of APS's Gaussian base (and the "
                        "rank of each component of its mixture base)")
    parser.add_argument("--base-components", type=int, default=3,
                        help="components of the mixture base of the aps_mixture_base rows")
    parser.add_argument("--flow-depth", type=int, default=None, help="APS RealNVP coupling steps (default: preset)")
    parser.add_argument("--hidden", type=int, default=None, help="APS coupling width (default: preset)")
    parser.add_argument("--marginal-components", type=int, default=None,
                        help="K > 0: APS rows with the Gaussian base get the per-entry monotone map (default: none)")
    parser.add_argument("--elbo-min-time", type=float, default=None,
                        help="lower time limit of APS's ELBO (default: the prior's, 1e-3; docs/method.md)")
    parser.add_argument("--prior-term", choices=("elbo", "exact"), default="elbo",
                        help="APS's prior term: the exact prior's diffusion ELBO (default) or, as an ablation, the "
                             "mixture's exact log-density")
    parser.add_argument("--num-times", type=int, default=None,
                        help="Monte-Carlo (t, e) draws of APS's ELBO per flow sample (default: preset, 1)")
    parser.add_argument("--diffusion-steps", type=int, default=None, help="DPS steps (default 50 / 1000)")
    parser.add_argument("--diffusion-samples", type=int, default=32, help="DPS draws per measurement (≥ 32)")
    parser.add_argument("--step-size", type=float, default=1.0, help="DPS guidance scale")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", default=str(Path(__file__).resolve().parent / "results"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    for name, value in SCALES[args.scale].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    names = args.methods.split(",")

    mesh = MESHES[args.mesh]()
    mixture = matern_mixture(mesh, **MIXTURE)
    layout = aps.VertexLayout(mesh.num_vertices, 1)
    prior = mixture.exact_prior(layout)
    # APS's prior term; --prior-term exact: the ablation with the mixture's exact log-density in place of the ELBO
    aps_prior = ExactLogDensity(prior, mixture) if args.prior_term == "exact" else prior
    train = draw(mixture, args.train_fields, DATA_SEEDS["train"])
    validation = draw(mixture, VALIDATION_FIELDS, DATA_SEEDS["validation"])
    truth = draw(mixture, args.n_measurements, DATA_SEEDS["test"])
    base_fields = train if args.base_fields is None else draw(mixture, args.base_fields, DATA_SEEDS["base"])
    operator = aps.RandomVertexMask(layout.num_vertices, layout.padded_vertices, HIDDEN_FRACTION, NOISE_STD)
    measurement = operator(layout.pad(truth), generator=torch.Generator().manual_seed(args.seed))
    hidden = ~measurement.observed[:, : layout.num_vertices]
    exact = mixture.posterior(*measurement.real_entries(layout.num_vertices), NOISE_STD)
    log(f"{args.mesh}: {mesh.num_vertices} vertices; exact posterior weights per measurement:\n{exact.weights.numpy().round(3)}")

    methods, train_seconds, densities = {}, {}, {}  # densities: the rows whose exact density q(x | y) is known
    if "exact" in names:
        methods["exact"] = exact_method(mixture, layout)
    if "oi" in names:
        started = time.perf_counter()
        val_measurement = operator(layout.pad(validation), generator=torch.Generator().manual_seed(args.seed + 1))
        gaussian, rank_scores = optimal_interpolation(base_fields.flatten(1), val_measurement.real_entries(layout.num_vertices),
                                                      validation.flatten(1), NOISE_STD)
        methods["oi"] = oi_method(gaussian, layout, dict(rank=gaussian.rank, rank_scores=rank_scores,
                                                         fit_seconds=time.perf_counter() - started))
    for name, base in (("aps_gauss_base", True), ("aps_plain", False)):
        if name in names:
            model, train_seconds[name] = train_aps(mesh, train, aps_prior, args, base, log, base_fields=base_fields)
            methods[name], densities[name] = aps_method(model, DRAWS), model
    exact_draws = None
    if "aps_forward_kl" in names or "aps_mixture_base_forward_kl" in names:
        exact_draws = draw(mixture, args.forward_kl_draws, DATA_SEEDS["prior_draws"])
    if "aps_forward_kl" in names:
        model, train_seconds["aps_forward_kl"] = train_aps(mesh, train, aps_prior, args, True, log, exact_draws,
                                                           base_fields=base_fields)
        methods["aps_forward_kl"], densities["aps_forward_kl"] = aps_method(model, DRAWS), model
    for name, draws in (("aps_mixture_base", None), ("aps_mixture_base_forward_kl", exact_draws)):
        if name in names:
            model, train_seconds[name] = train_aps(mesh, train, aps_prior, args, True, log, draws, args.base_components,
                                                   base_fields)
            if "mixture_base" not in methods:
                chosen = dict(components=model.base.num_components, rank=model.base.components[0].rank)
                methods["mixture_base"] = mixture_method(model.base, layout, DRAWS, info=chosen)
                densities["mixture_base"] = model.base
            methods[name], densities[name] = aps_method(model, DRAWS), model
    if "dps" in names:
        methods["dps"] = diffusion_method(sample_dps, prior, args.diffusion_samples, args.diffusion_steps,
                                          step_size=args.step_size)

    rows, generator = [], torch.Generator().manual_seed(args.seed)
    for name, method in methods.items():
        started = time.perf_counter()
        estimate = method(measurement, operator, generator)
        seconds = time.perf_counter() - started
        row = dict(method=name, **score(estimate.mean, truth, hidden, samples=estimate.samples),
                   **against_exact(estimate.samples, exact, mixture, hidden),
                   reverse_kl=(reverse_kl(densities[name], measurement, mixture, layout, generator)
                               if name in densities else None),
                   seconds_per_measurement=seconds / len(truth), nfe=estimate.nfe, n_measurements=len(truth),
                   **estimate.info)
        rows.append(row)
        log(f"{name:>15}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))

    weights = exact.weights
    description = dict(mesh=mesh.name, vertices=mesh.num_vertices, **MIXTURE, weights=mixture.weights.tolist())
    label = (f"mixture of {mixture.num_components} Matérn fields on {args.mesh} ({mesh.num_vertices} vertices): means "
             f"{MIXTURE['means']}, length scales {MIXTURE['length_fractions']} × bbox diagonal, stds {MIXTURE['stds']}, "
             f"ν {MIXTURE['smoothness']}, {MIXTURE['num_modes']} modes, nugget {MIXTURE['nugget']:.0%}; "
             f"{args.train_fields}/{VALIDATION_FIELDS}/{len(truth)} train/validation/test fields (seeds 0/1/2); "
             + ("" if args.base_fields is None else f"OI and APS's base fitted on {args.base_fields} other fields (seed 4); ")
             + "exact-score diffusion prior")
    mixed = int((weights.max(dim=1).values < MIXED).sum())
    results = dict(task=f"gaussian_mixture_{args.mesh}", scale=args.scale, data=label, **environment(),
                   train_seconds=train_seconds, command="python benchmarks/gaussian_mixture.py " + " ".join(argv),
                   hidden_fraction=HIDDEN_FRACTION, noise_std=NOISE_STD, mixture=description,
                   aps=dict(iterations=args.iterations, batch_size=args.batch_size, flow="realnvp",
                            base_rank=args.base_rank, base_components=args.base_components, **aps_overrides(args), forward_kl_weight=args.forward_kl_weight,
                            forward_kl_draws=args.forward_kl_draws),
                   exact_weights=weights.tolist(), sections={"test": rows}, rows=rows,
                   notes=[f"prior: the mixture's exact noise predictor, shared by APS and DPS; APS RealNVP at the "
                          f"{args.scale} preset{''.join(f', {k} {v}' for k, v in aps_overrides(args).items())}, "
                          f"{args.iterations} iterations, batch {args.batch_size}",
                          f"{mixed} of {len(truth)} measurements have no exact posterior weight above {MIXED} "
                          f"(weight_error_mixed averages over those)",
                          "std_ratio and weight_error: see the table below and the script's docstring; "
                          "component_fractions (per method, per measurement) are in the JSON"])
    stem = args.results_name or f"gaussian_mixture_{args.mesh}_{args.scale}"
    json_path, md_path = write_results(results, Path(args.results_dir) / stem)
    with open(md_path, "a") as handle:
        handle.write("\n" + "\n".join(extra_table(rows)))
    log(f"wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    main()
