import json

import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import fit
from manifold_aps.benchmark import (blind_sweep, environment, fit_gmm, fit_oi, run_methods, standard_methods, tune,
                                    write_results)
from manifold_aps.data.gaussian_fields import GaussianRandomField
from manifold_aps.diffusion import exact_gaussian_prior
from manifold_aps.methods import Estimate

MESH = aps.healpix_sphere(2)
FIELD = GaussianRandomField(MESH, length_scale=0.5, variance=0.01, mean=0.5, num_modes=24, nugget=0.05)
LAYOUT = aps.VertexLayout(MESH.num_vertices)
OPERATOR = aps.RandomVertexMask(LAYOUT.num_vertices, LAYOUT.padded_vertices, 0.5, 0.05)
PRIOR = exact_gaussian_prior(FIELD, LAYOUT)


@pytest.fixture(scope="module")
def setting():
    generator = torch.Generator().manual_seed(0)
    train, validation, test = (FIELD.sample(n, generator).float()[..., None] for n in (64, 16, 6))
    model = fit(MESH, train[..., 0], mask_rate=0.5, noise_std=0.05, prior=PRIOR, scale="smoke", iterations=30,
                progress=False)
    oi = fit_oi(LAYOUT, train, validation, OPERATOR, seed=2)
    gmm = fit_gmm(LAYOUT, train, validation, OPERATOR, seed=2, components=(1, 2), ranks=(8,), log=lambda line: None)
    tuning = {"dps": dict(knob="step_size", value=0.5, sweep=[{"step_size": 0.5, "psnr": 20.0, "seconds": 1.0}])}
    methods = standard_methods(("aps", "dps", "mcg", "mmps", "pigdm", "diffpir", "harmonic", "oi", "gmm"), LAYOUT,
                               MESH, PRIOR, model, oi, FIELD, diffusion_samples=2, diffusion_steps=20, tuning=tuning,
                               gmm=gmm)
    return train, test, model, oi, methods


NAMES = ["dps", "mcg", "mmps", "pigdm", "diffpir", "oi", "gmm", "harmonic", "aps_base", "aps_n1", "aps_n128", "exact"]


@pytest.mark.parametrize("name", NAMES)
def test_every_method_answers_the_same_call(setting, name):
    """Every method is ``method(measurement, operator, generator) -> Estimate`` on unpadded vertices."""
    _, test, _, _, methods = setting
    measurement = OPERATOR(LAYOUT.pad(test), generator=torch.Generator().manual_seed(1))
    estimate = methods[name](measurement, OPERATOR, torch.Generator().manual_seed(0))
    assert estimate.mean.shape == test.shape and torch.isfinite(estimate.mean).all()
    if estimate.samples is not None:
        assert estimate.samples.shape[1:] == test.shape
    observed = measurement.observed[:, : LAYOUT.num_vertices]
    # every method honours the observed values up to the noise level
    assert (estimate.mean[observed] - test[observed]).abs().mean() < 0.1


def test_every_method_is_scored_on_the_same_measurements(setting, tmp_path):
    _, test, _, _, methods = setting
    measurement = OPERATOR(LAYOUT.pad(test), generator=torch.Generator().manual_seed(1))
    rows = run_methods(methods, test, measurement, OPERATOR, log=lambda line: None)
    by_method = {row["method"]: row for row in rows}
    assert [row["method"] for row in rows] == NAMES
    assert by_method["dps"]["nfe"] == 20 and by_method["mmps"]["nfe"] == 20 * 4 and by_method["aps_n128"]["nfe"] == 1
    # the tuned knob reaches the sampler and the row; untuned samplers keep their defaults
    assert by_method["dps"]["step_size"] == 0.5 and by_method["dps"]["tuned"] == 0.5
    assert "tuned" not in by_method["mcg"] and by_method["gmm"]["tuned"]["rank"] == 8
    for name in ("aps_n128", "oi", "gmm", "exact"):
        assert 0.0 <= by_method[name]["coverage_90"] <= 1.0 and by_method[name]["crps"] > 0
    # two DPS draws per measurement are too few for calibration scores: the cells stay empty
    assert "coverage_90" not in by_method["dps"] and "crps" not in by_method["dps"]
    assert all(row["n_measurements"] == 6 for row in rows)
    # the exact posterior mean is the best estimate there is: it beats harmonic interpolation and the prior
    assert by_method["exact"]["mse"] < by_method["harmonic"]["mse"]
    assert abs(by_method["exact"]["coverage_90"] - 0.9) < 0.1
    results = dict(task="toy", scale="smoke", data="GRF", **environment(), train_seconds=1.0, command="pytest",
                   sections={"test": rows}, rows=rows)
    json_path, md_path = write_results(results, tmp_path / "toy_smoke")
    assert json.loads(json_path.read_text())["rows"][0]["method"] == "dps"
    markdown = md_path.read_text()
    assert "| exact |" in markdown and "- dps: step_size 0.5, psnr 20" in markdown
    dotted = write_results(results, tmp_path / "toy_w0.1")  # a dot in the name is not a suffix
    assert [path.name for path in dotted] == ["toy_w0.1.json", "toy_w0.1.md"]


def test_a_methods_row_does_not_depend_on_which_other_methods_ran(setting):
    _, test, _, _, methods = setting
    measurement = OPERATOR(LAYOUT.pad(test), generator=torch.Generator().manual_seed(1))
    subset = {name: methods[name] for name in ("dps", "aps_n128")}
    alone = run_methods({"aps_n128": methods["aps_n128"]}, test, measurement, OPERATOR, log=lambda line: None)[0]
    after_dps = run_methods(subset, test, measurement, OPERATOR, log=lambda line: None)[1]
    assert after_dps["method"] == alone["method"] == "aps_n128"
    for key in ("psnr", "mse", "coverage_90", "crps"):
        assert after_dps[key] == alone[key]
    other_seed = run_methods({"aps_n128": methods["aps_n128"]}, test, measurement, OPERATOR, seed=1,
                             log=lambda line: None)[0]
    assert other_seed["mse"] != alone["mse"]  # the seed still reaches the draws


def test_blind_sweep_scores_blind_and_known_samplers_at_each_rate(setting):
    train, test, known, oi, _ = setting
    blind = fit(MESH, train[..., 0], noise_std=0.05, prior=PRIOR, scale="smoke", iterations=2, progress=False, blind=True)
    rows = blind_sweep(LAYOUT, test[:4], blind, known, OPERATOR, oi, rates=(0.3, 0.6), log=lambda line: None)
    methods = {(row["method"], row["hidden_fraction"]) for row in rows}
    assert methods == {(m, r) for m in ("aps_blind_n1", "aps_blind_n128", "aps_base", "aps_n1", "aps_n128", "oi")
                       for r in (0.3, 0.6)}
    # the blind rows are scored on measurements that hide the stated fraction
    assert all(0 < row["psnr"] < 80 for row in rows)


def test_tune_picks_the_knob_with_the_best_validation_psnr_and_keeps_the_sweep():
    truth = FIELD.sample(4, torch.Generator().manual_seed(5)).float()[..., None]
    measurement = OPERATOR(LAYOUT.pad(truth), generator=torch.Generator().manual_seed(6))
    built = []

    def build(offset):
        """A method whose mean is the truth shifted by ``offset`` (NaN: a diverged sampler)."""
        built.append(offset)
        return lambda measurement, operator, generator: Estimate(truth + offset, None, 1)

    chosen = tune({"toy": ("offset", (0.3, 0.01, float("nan"), -0.1), build)}, truth, measurement, OPERATOR,
                  log=lambda line: None)
    assert built == [0.3, 0.01, pytest.approx(float("nan"), nan_ok=True), -0.1]
    assert chosen["toy"]["knob"] == "offset" and chosen["toy"]["value"] == 0.01
    psnrs = [row["psnr"] for row in chosen["toy"]["sweep"]]
    assert psnrs[1] > psnrs[3] > psnrs[0]


def test_run_benchmark_scores_a_given_prior_file_without_training(tmp_path):
    import argparse

    from manifold_aps.benchmark import add_arguments, run_benchmark
    from manifold_aps.diffusion import save_prior
    from manifold_aps.signals import MinMaxNormalizer
    from manifold_aps.tasks import Task

    generator = torch.Generator().manual_seed(0)
    train, validation, test = (FIELD.sample(n, generator).float()[..., None] for n in (64, 8, 2))
    task = Task("field", MESH, train, validation, test, OPERATOR, MinMaxNormalizer(0.0, 1.0), "Gaussian field", "era5")
    save_prior(tmp_path / "prior.pt", PRIOR)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--scale", "smoke", "--prior", str(tmp_path / "prior.pt"), "--methods", "dps,oi",
                              "--results-dir", str(tmp_path), "--results-name", "given", "--n-measurements", "2",
                              "--diffusion-steps", "10", "--diffusion-samples", "2", "--tune-measurements", "1",
                              "--tune-samples", "1", "--threads", "1", "--checkpoint-dir", str(tmp_path / "unused")])
    results = run_benchmark(task, args, ["benchmark"], log=lambda line: None)
    assert {row["method"] for row in results["rows"]} == {"dps", "oi"}
    assert json.loads((tmp_path / "given.json").read_text())["rows"] == json.loads(json.dumps(results["rows"]))
    assert not (tmp_path / "unused").exists()  # nothing was trained


def test_the_classical_baselines_grids_come_from_the_command_line(tmp_path):
    import argparse

    from manifold_aps.benchmark import add_arguments, run_benchmark
    from manifold_aps.diffusion import save_prior
    from manifold_aps.signals import MinMaxNormalizer
    from manifold_aps.tasks import Task

    generator = torch.Generator().manual_seed(0)
    train, validation, test = (FIELD.sample(n, generator).float()[..., None] for n in (64, 8, 2))
    task = Task("field", MESH, train, validation, test, OPERATOR, MinMaxNormalizer(0.0, 1.0), "Gaussian field", "era5")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    save_prior(tmp_path / "prior.pt", PRIOR)  # given, so that nothing is trained
    args = parser.parse_args(["--scale", "smoke", "--prior", str(tmp_path / "prior.pt"), "--methods", "oi,gmm",
                              "--oi-ranks", "2,3", "--gmm-components", "2,3", "--gmm-ranks", "2", "--gmm-train", "40",
                              "--results-dir", str(tmp_path), "--n-measurements", "2", "--threads", "1"])
    results = run_benchmark(task, args, ["benchmark"], log=lambda line: None)
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows["oi"]["rank_scores"]) == {2, 3} and rows["oi"]["rank"] in (2, 3)
    assert [(row["components"], row["rank"]) for row in rows["gmm"]["sweep"]] == [(2, 2), (3, 2)]
    assert results["budget"] | {"oi_ranks": [2, 3], "gmm_components": [2, 3], "gmm_ranks": [2], "gmm_train": 40} \
        == results["budget"]
    assert "on ≤ 40 training signals, K ∈ [2, 3], rank ∈ [2]; optimal interpolation on every training signal, " \
           "rank ∈ [2, 3]" in " ".join(results["notes"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--gmm-ranks", "8,x"])


def test_a_saved_sampler_is_scored_beside_a_given_prior_without_a_prior_file_in_its_folder(setting, tmp_path):
    import argparse

    from manifold_aps.benchmark import add_arguments, train_or_load
    from manifold_aps.diffusion import save_prior
    from manifold_aps.signals import MinMaxNormalizer
    from manifold_aps.tasks import Task

    train, test, model, _, _ = setting
    task = Task("field", MESH, train, train[:8], test, OPERATOR, MinMaxNormalizer(0.0, 1.0), "Gaussian field", "era5")
    model.save(tmp_path / "field_aps_smoke.pt")  # the folder holds the sampler only
    save_prior(tmp_path / "given_prior.pt", PRIOR)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    folder = ["--scale", "smoke", "--from-checkpoint", str(tmp_path)]
    prior, loaded, _ = train_or_load(task, parser.parse_args(folder + ["--prior", str(tmp_path / "given_prior.pt")]))
    assert loaded.flow_kind == model.flow_kind
    for ours, theirs in zip(loaded.flow.state_dict().values(), model.flow.state_dict().values()):
        torch.testing.assert_close(ours, theirs)
    for ours, theirs in zip(prior.state_dict().values(), PRIOR.state_dict().values()):
        torch.testing.assert_close(ours, theirs)
    with pytest.raises(FileNotFoundError, match="field_prior_smoke.pt"):  # without --prior the folder's prior is read
        train_or_load(task, parser.parse_args(folder))
