"""Zero-shot posterior samplers (DPS, MCG, MMPS, ΠGDM, DiffPIR) against the exact posterior of a
Gaussian random field.

The prior's noise network is the exact ``ε*`` of the field (:class:`GaussianNoisePredictor`),
embedded in the padded layout with zero mean and variance on the padding vertices, so the exact
posterior is known in closed form. The mesh is the 48-vertex HEALPix sphere (padded to 64):
unlike a lat-lon grid it has no pole rows of coincident vertices, whose nearly independent values
would dominate every error. Only MMPS is exact (its estimate of ``E[x_0 | x_t, y]``, checked to
1e-8); for the others the bounds measure "much closer than the prior", not exactness.
"""

import pytest
import torch

import manifold_aps as aps
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion import DiffusionPrior, GaussianNoisePredictor
from manifold_aps.diffusion.sampling import sample_ancestral, time_grid
from manifold_aps.operators import Measurement
from manifold_aps.zero_shot import sample_diffpir, sample_dps, sample_mcg, sample_mmps, sample_pigdm

NOISE_STD = 0.05
NUM_MEASUREMENTS, SAMPLES_PER_MEASUREMENT, DIFFUSION_STEPS = 4, 32, 200
# sampler, knobs, NFE per step, bound on (posterior-mean error / prior-mean error); measured with
# these settings: DPS 0.18, MCG 0.40, MMPS 0.16, ΠGDM 0.31, DiffPIR 0.43 (worst of 4 measurements);
# a sampler that ignores the measurement scores ≈ 1
METHODS = {
    "dps": (sample_dps, dict(step_size=0.5), 1, 0.4),
    "mcg": (sample_mcg, dict(step_size=0.5), 1, 0.5),
    "mmps": (sample_mmps, dict(cg_steps=3), 4, 0.3),
    "pigdm": (sample_pigdm, dict(prior_variance=0.1), 1, 0.45),
    "diffpir": (sample_diffpir, dict(regularization=0.1), 1, 0.6),
}
BAD_KNOBS = {"dps": ("step_size", [0.0, -1.0, float("nan")]), "mcg": ("step_size", [0.0, -1.0, float("nan")]),
             "mmps": ("cg_steps", [0, -1, 1.5]), "pigdm": ("prior_variance", [0.0, -1.0, float("inf")]),
             "diffpir": ("regularization", [0.0, -1.0, float("nan")])}


@pytest.fixture(scope="module")
def problem():
    mesh = aps.healpix_sphere(2)
    field = GaussianRandomField(mesh, length_scale=0.5, num_modes=30)
    layout = aps.VertexLayout(mesh.num_vertices)
    real = mesh.num_vertices
    covariance = torch.zeros(layout.dim, layout.dim, dtype=torch.float64)
    covariance[:real, :real] = field.covariance()
    mean = torch.zeros(layout.dim, dtype=torch.float64)
    mean[:real] = field.mean
    prior = DiffusionPrior(GaussianNoisePredictor(mean, covariance), layout)
    operator = aps.RandomVertexMask(real, layout.padded_vertices, hidden_fraction=0.5, noise_std=NOISE_STD)
    generator = torch.Generator().manual_seed(0)
    truth = layout.pad(field.sample(NUM_MEASUREMENTS, generator)[..., None].float())
    measurement = operator(truth, generator=generator)
    posterior = field.posterior(measurement.y[:, :real, 0], measurement.observed[:, :real], NOISE_STD)
    return field, prior, operator, measurement, posterior


def _hidden_rmse(estimate, problem):
    """RMSE ``(M,)`` to the exact posterior mean over each measurement's hidden vertices."""
    field, _, _, measurement, posterior = problem
    real = field.num_vertices
    hidden = ~measurement.observed[:, :real]
    squared = (estimate[:, :real].double() - posterior.mean) ** 2 * hidden
    return (squared.sum(dim=1) / hidden.sum(dim=1)).sqrt()


def _repeated(measurement, copies):
    """Each measurement repeated ``copies`` times, measurement-major: ``(M · copies, ...)``."""
    return measurement[torch.arange(len(measurement)).repeat_interleave(copies)]


@pytest.fixture(scope="module")
def samples(problem):
    """``{method: (M, n, d)}`` posterior samples for all measurements in one batch."""
    _, prior, operator, measurement, _ = problem
    batch = _repeated(measurement, SAMPLES_PER_MEASUREMENT)
    results = {}
    for name, (sampler, knobs, nfe_per_step, _) in METHODS.items():
        result = sampler(prior, batch, operator, diffusion_steps=DIFFUSION_STEPS,
                         generator=torch.Generator().manual_seed(1), **knobs)
        assert result.nfe == nfe_per_step * DIFFUSION_STEPS
        results[name] = result.sample.reshape(NUM_MEASUREMENTS, SAMPLES_PER_MEASUREMENT, -1)
    return results


@pytest.mark.parametrize("method", METHODS)
def test_posterior_mean_is_much_closer_to_exact_than_prior_and_unconditional(problem, samples, method):
    field, prior, _, _, _ = problem
    estimate = _hidden_rmse(samples[method].mean(dim=1), problem)
    prior_mean = _hidden_rmse(field.mean.expand(NUM_MEASUREMENTS, -1), problem)
    start = torch.randn(NUM_MEASUREMENTS * SAMPLES_PER_MEASUREMENT, prior.dim,
                        generator=torch.Generator().manual_seed(2))
    unconditional = sample_ancestral(prior, start, diffusion_steps=DIFFUSION_STEPS,
                                     generator=torch.Generator().manual_seed(3)).sample
    unconditional = unconditional.reshape(NUM_MEASUREMENTS, SAMPLES_PER_MEASUREMENT, -1)
    unconditional_mean = _hidden_rmse(unconditional.mean(dim=1), problem)
    bound = METHODS[method][3]
    assert (estimate < bound * prior_mean).all(), (estimate, prior_mean)
    assert (estimate < bound * unconditional_mean).all(), (estimate, unconditional_mean)


@pytest.mark.parametrize("method", METHODS)
def test_samples_spread_like_the_exact_posterior_on_hidden_vertices(problem, samples, method):
    field, _, _, measurement, posterior = problem
    real = field.num_vertices
    hidden = ~measurement.observed[:, :real]
    spread = (samples[method][..., :real].double().std(dim=1) * hidden).sum(1) / (posterior.std * hidden).sum(1)
    assert ((spread > 0.6) & (spread < 1.5)).all(), spread


def test_mmps_estimate_is_the_exact_gaussian_posterior_mean_given_x_t(problem):
    """With enough CG steps, MMPS's ``E[x_0 | x_t, y]`` is exact for a Gaussian prior: compare it
    at every step with Gaussian conditioning of ``x_0`` on ``(x_t = α_t x_0 + σ_t e, y = A x_0 + σ_y n)``.
    CG is exact after as many steps as observed entries in exact arithmetic; in floating point,
    with the ill-conditioned early steps, it takes more (measured: 24 steps 5e-4, 48 steps 1e-11)."""
    field, prior, operator, measurement, _ = problem
    measurement = Measurement(measurement.y.double(), measurement.observed)
    sde, layout, real = prior.sde, prior.layout, field.num_vertices
    mean, covariance = prior.network.mean, torch.zeros(layout.dim, layout.dim, dtype=torch.float64)
    covariance[:real, :real] = field.covariance()
    observed_count = int(measurement.observed.sum(dim=1).max())
    steps = []
    sample_mmps(prior, measurement, operator, time_grid(10, sde.eps), cg_steps=2 * observed_count,
                generator=torch.Generator().manual_seed(4), callback=steps.append)
    worst = 0.0
    for before, after in zip(steps, steps[1:]):  # after["denoised"] is computed from before["x"]
        t = torch.tensor(after["t"], dtype=torch.float64)
        alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
        for row in range(len(measurement)):
            observed = measurement.observed[row]
            selection = torch.eye(layout.dim, dtype=torch.float64)[observed]
            design = torch.cat([alpha * torch.eye(layout.dim, dtype=torch.float64), selection])
            noise = torch.cat([torch.full((layout.dim,), sigma**2, dtype=torch.float64),
                               torch.full((int(observed.sum()),), NOISE_STD**2, dtype=torch.float64)])
            data = torch.cat([before["x"][row], measurement.y[row, observed, 0]])
            gain = covariance @ design.T @ torch.linalg.inv(design @ covariance @ design.T + torch.diag(noise))
            exact = mean + gain @ (data - design @ mean)
            worst = max(worst, float((after["denoised"][row, :real] - exact[:real]).abs().max()))
    assert worst < 1e-8, worst


def test_mcg_observed_entries_match_the_measurement(problem, samples):
    field, _, _, measurement, _ = problem
    real = field.num_vertices
    observed = measurement.observed[:, None, :real].expand(-1, SAMPLES_PER_MEASUREMENT, -1)
    deviation = samples["mcg"][..., :real] - measurement.y[:, None, :real, 0]
    assert deviation[observed].abs().max() < NOISE_STD


@pytest.mark.parametrize("method", ["dps", "mmps"])
def test_observed_entries_fit_the_measurement_to_the_noise_level(problem, samples, method):
    field, _, _, measurement, _ = problem
    real = field.num_vertices
    observed = measurement.observed[:, None, :real].expand(-1, SAMPLES_PER_MEASUREMENT, -1)
    deviation = samples[method][..., :real] - measurement.y[:, None, :real, 0]
    assert deviation[observed].pow(2).mean().sqrt() < 2 * NOISE_STD


@pytest.mark.parametrize("method", METHODS)
def test_padding_is_zero_and_layout_is_flat(problem, samples, method):
    field, prior, _, _, _ = problem
    assert samples[method].shape[-1] == prior.dim
    assert (samples[method][..., field.num_vertices:] == 0).all()


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_samples_and_callback_every_step(problem, method):
    _, prior, operator, measurement, _ = problem
    sampler, knobs, nfe_per_step, _ = METHODS[method]
    steps = []

    def record(info):
        assert set(info) == {"step", "t", "x", "denoised"}
        assert info["x"].shape == info["denoised"].shape == (len(measurement), prior.dim)
        steps.append(info["step"])

    grid = time_grid(10, prior.sde.eps)
    first = sampler(prior, measurement, operator, grid, generator=torch.Generator().manual_seed(5), callback=record,
                    **knobs)
    second = sampler(prior, measurement, operator, diffusion_steps=10, generator=torch.Generator().manual_seed(5),
                     **knobs)
    other = sampler(prior, measurement, operator, grid, generator=torch.Generator().manual_seed(6), **knobs)
    assert torch.equal(first.sample, second.sample)
    assert not torch.allclose(first.sample, other.sample)
    assert steps == list(range(10)) and first.nfe == 10 * nfe_per_step


@pytest.mark.parametrize("sampler", [sample_dps, sample_mcg], ids=lambda f: f.__name__)
def test_old_step_count_spellings_still_work(problem, sampler):
    _, prior, operator, measurement, _ = problem
    new = sampler(prior, measurement, operator, diffusion_steps=5, step_size=0.5,
                  generator=torch.Generator().manual_seed(7))
    with pytest.warns(DeprecationWarning, match="num_steps"):
        keyword = sampler(prior, measurement, operator, num_steps=5, step_size=0.5,
                          generator=torch.Generator().manual_seed(7))
    with pytest.warns(DeprecationWarning, match="step count"):
        positional = sampler(prior, measurement, operator, 5, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(new.sample, keyword.sample) and torch.equal(new.sample, positional.sample)


@pytest.mark.parametrize("method", METHODS)
def test_rejects_mismatched_shapes_and_bad_settings(problem, method):
    _, prior, operator, measurement, _ = problem
    sampler = METHODS[method][0]
    with pytest.raises(ValueError, match="measurement.y"):
        sampler(prior, Measurement(measurement.y[:, :-1], measurement.observed[:, :-1]), operator, diffusion_steps=2)
    with pytest.raises(ValueError, match="measurement.observed"):
        sampler(prior, Measurement(measurement.y, measurement.observed.float()), operator, diffusion_steps=2)
    wrong_operator = aps.RandomVertexMask(48, 96, noise_std=NOISE_STD)
    with pytest.raises(ValueError, match="padded vertices"):
        sampler(prior, measurement, wrong_operator, diffusion_steps=2)
    with pytest.raises(ValueError, match="diffusion_steps"):
        sampler(prior, measurement, operator, diffusion_steps=0)
    with pytest.raises(ValueError, match="decrease"):
        sampler(prior, measurement, operator, torch.tensor([0.5, 1.0], dtype=torch.float64))
    knob, bad_values = BAD_KNOBS[method]
    for value in bad_values:
        with pytest.raises(ValueError, match=knob):
            sampler(prior, measurement, operator, diffusion_steps=2, **{knob: value})


def test_conjugate_gradient_stops_at_non_positive_curvature():
    """A trained network's Jacobian need not be positive definite: CG must not take the unbounded
    step a direction with ``dᵀ A d ≈ 0`` asks for (MMPS diverged on the shipped priors without this)."""
    from manifold_aps.zero_shot import _conjugate_gradient

    spd = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    rhs = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(_conjugate_gradient(lambda v: v @ spd, rhs, 2), torch.linalg.solve(spd, rhs[0])[None])
    indefinite = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    rhs = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # dᵀ A d = 0 on the first direction
    solution = _conjugate_gradient(lambda v: v @ indefinite, rhs, 3)
    assert torch.isfinite(solution).all() and solution.abs().max() <= 1.0
