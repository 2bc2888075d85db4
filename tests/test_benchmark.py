import json

import torch

import manifold_aps as aps
from manifold_aps.aps import fit
from manifold_aps.benchmark import environment, measure, run_methods, write_results
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion import exact_gaussian_prior


def test_every_method_is_scored_on_the_same_measurements(tmp_path):
    mesh = aps.healpix_sphere(2)
    field = GaussianRandomField(mesh, length_scale=0.5, variance=0.01, mean=0.5, num_modes=24, nugget=0.05)
    layout = aps.VertexLayout(mesh.num_vertices)
    generator = torch.Generator().manual_seed(0)
    train, validation, test = (field.sample(n, generator).float()[..., None] for n in (64, 16, 6))
    prior = exact_gaussian_prior(field, layout)
    model = fit(mesh, train[..., 0], mask_rate=0.5, noise_std=0.05, prior=prior, scale="smoke", iterations=30,
                progress=False)
    measurement = measure(test, layout, 0.5, 0.05, seed=1)
    rows = run_methods(layout, mesh, test, measurement, 0.05, prior=prior, aps_model=model, train_signals=train,
                       validation=(validation, measure(validation, layout, 0.5, 0.05, seed=2)), diffusion_steps=20,
                       diffusion_samples=2, exact=field, log=lambda line: None)
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == {"aps_n1", "aps_n128", "dps", "mcg", "harmonic", "oi", "exact"}
    assert by_method["dps"]["nfe"] == 20 and by_method["aps_n128"]["nfe"] == 1
    for name in ("aps_n128", "dps", "oi", "exact"):
        assert 0.0 <= by_method[name]["coverage_90"] <= 1.0 and by_method[name]["crps"] > 0
    assert all(row["n_measurements"] == 6 for row in rows)
    # the exact posterior mean is the best estimate there is: it beats harmonic interpolation and the prior
    assert by_method["exact"]["mse"] < by_method["harmonic"]["mse"]
    assert abs(by_method["exact"]["coverage_90"] - 0.9) < 0.1
    results = dict(task="toy", scale="smoke", data="GRF", **environment(), train_seconds=1.0, command="pytest",
                   sections={"test": rows}, rows=rows)
    json_path, md_path = write_results(results, tmp_path / "toy_smoke")
    assert json.loads(json_path.read_text())["rows"][0]["method"] == "aps_n1"
    assert "| exact |" in md_path.read_text()


def test_blind_sweep_scores_blind_and_known_samplers_at_each_rate():
    from manifold_aps.benchmark import blind_sweep

    mesh = aps.healpix_sphere(2)
    field = GaussianRandomField(mesh, length_scale=0.5, variance=0.01, mean=0.5, num_modes=24, nugget=0.05)
    layout = aps.VertexLayout(mesh.num_vertices)
    generator = torch.Generator().manual_seed(0)
    train, validation, test = (field.sample(n, generator).float()[..., None] for n in (64, 16, 4))
    prior = exact_gaussian_prior(field, layout)
    known = fit(mesh, train[..., 0], mask_rate=0.5, noise_std=0.05, prior=prior, scale="smoke", iterations=2, progress=False)
    blind = fit(mesh, train[..., 0], noise_std=0.05, prior=prior, scale="smoke", iterations=2, progress=False, blind=True)
    rows = blind_sweep(layout, mesh, test, blind, known, 0.05, train,
                       (validation, measure(validation, layout, 0.5, 0.05, seed=2)), rates=(0.3, 0.6), log=lambda line: None)
    methods = {(row["method"], row["hidden_fraction"]) for row in rows}
    assert methods == {(m, r) for m in ("aps_blind_n1", "aps_blind_n128", "aps_n1", "aps_n128", "oi") for r in (0.3, 0.6)}
    # the blind rows are scored on measurements that hide the stated fraction
    assert all(0 < row["psnr"] < 80 for row in rows)
