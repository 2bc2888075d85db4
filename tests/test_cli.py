import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from manifold_aps.checkpoint import CheckpointError
from manifold_aps.cli import main


def test_every_command_has_help(capsys):
    for command in ("train-prior", "fit", "sample", "evaluate", "render", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: manifold-aps {command}" in capsys.readouterr().out


def test_console_script_runs_and_reports_user_errors_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "manifold_aps.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train-prior" in result.stdout
    result = subprocess.run([sys.executable, "-m", "manifold_aps.cli", "sample", "--model", str(tmp_path / "none.pt"),
                             "--input", str(tmp_path / "none.npy"), "--output", str(tmp_path / "out.npz")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("manifold-aps: error:") and "Traceback" not in result.stderr


def test_train_prior_smoke_writes_a_loadable_prior(mirror, tmp_path, capsys):
    from manifold_aps.diffusion import load_prior

    config = tmp_path / "options.json"
    config.write_text(json.dumps({"iterations": 3, "network_config": {"width": 32, "depth": 1}}))
    output = tmp_path / "prior.pt"
    assert main(["train-prior", "--task", "era5_proxy", "--scale", "smoke", "--limit", "8", "--output", str(output),
                 "--config", str(config), "--iterations", "4"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["iterations"] == 4  # the command line wins over the config file
    prior = load_prior(output)
    assert prior.layout.num_vertices == 4140 and prior.normalizer.minimum == pytest.approx(202.66)


def test_bad_config_key_is_named(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(SystemExit):
        main(["train-prior", "--task", "era5_proxy", "--output", str(tmp_path / "p.pt"), "--config", str(config)])


def test_fit_then_sample_on_user_files(tmp_path, capsys):

    import manifold_aps as aps
    from manifold_aps.data.gaussian_fields import GaussianRandomField

    mesh = aps.healpix_sphere(2)
    lines = [f"v {x} {y} {z}" for x, y, z in mesh.vertices.tolist()] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces.tolist()]
    (tmp_path / "mesh.obj").write_text("\n".join(lines) + "\n")
    field = GaussianRandomField(mesh, length_scale=0.5, variance=0.01, mean=0.5, num_modes=20, nugget=0.05)
    signals = field.sample(40).numpy()
    np.savez(tmp_path / "signals.npz", signals=signals)
    assert main(["fit", "--mesh", str(tmp_path / "mesh.obj"), "--signals", str(tmp_path / "signals.npz"),
                 "--scale", "smoke", "--iterations", "5", "--mask-rate", "0.5", "--marginal-components", "2",
                 "--num-times", "2", "--forward-kl-weight", "0.5", "--forward-kl-draws", "8", "--forward-kl-steps", "3",
                 "--forward-kl-noise", "0.01", "--condition-features", "6", "--output", str(tmp_path / "aps.pt")]) == 0
    fitted = aps.AmortizedPosteriorSampler.load(tmp_path / "aps.pt")
    assert fitted.marginal.config["components"] == 2 and fitted.num_times == 2
    assert fitted.flow.config["condition_features"] == 6
    draws = torch.load(tmp_path / "aps.checkpoints" / "prior_draws.pt", weights_only=True)
    assert draws["draws"].shape[0] == 8 and draws["made_by"]["steps"] == 3
    observed = signals[:3].copy()
    observed[:, ::2] = np.nan
    np.save(tmp_path / "observed.npy", observed)
    assert main(["sample", "--model", str(tmp_path / "aps.pt"), "--input", str(tmp_path / "observed.npy"), "--n", "16",
                 "--keep", "4", "--output", str(tmp_path / "posterior.npz")]) == 0
    with np.load(tmp_path / "posterior.npz") as result:
        assert result["mean"].shape == (3, 48) and result["samples"].shape == (4, 3, 48)
        assert (result["std"] > 0).all()
    capsys.readouterr()
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        main(["sample", "--model", str(tmp_path / "aps.pt"), "--input", str(tmp_path / "missing.npz"), "--output", "x.npz"])

    # the same --output with other signals: the old run's checkpoints are refused, never reused
    np.savez(tmp_path / "other.npz", signals=field.sample(40).numpy())
    refit = ["fit", "--mesh", str(tmp_path / "mesh.obj"), "--signals", str(tmp_path / "other.npz"), "--scale", "smoke",
             "--iterations", "5", "--mask-rate", "0.5", "--output", str(tmp_path / "aps.pt")]
    before = (tmp_path / "aps.pt").read_bytes()
    with pytest.raises(CheckpointError, match="belongs to another run.*training data"):
        main(refit)
    assert (tmp_path / "aps.pt").read_bytes() == before  # the saved model is untouched
    assert main(refit + ["--fresh"]) == 0  # asked for, a fresh run overwrites the checkpoints


@pytest.mark.parametrize("argv, message", [
    (["fit", "--mesh", "m.ply", "--output", "x.pt"], "fit needs --task, or both --mesh and --signals"),
    (["fit", "--mesh", "m.ply", "--signals", "s.npy", "--output", "x.pt", "--base-limit", "100"],
     "--base-limit caps a --task's training signals"),
    (["fit", "--task", "era5_proxy", "--output", "x.pt", "--base-limit", "0"], "--base-limit: expected a positive"),
    (["fit", "--task", "era5_proxy", "--output", "x.pt", "--threads", "-1"], "--threads: expected a positive integer"),
    (["fit", "--task", "era5_proxy", "--output", "x.pt", "--device", "nonsense"], "'nonsense' is not a device"),
])
def test_bad_command_lines_exit_2_with_one_line_naming_the_option(argv, message):
    result = subprocess.run([sys.executable, "-m", "manifold_aps.cli", *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_config_file_values_are_checked_against_the_option(tmp_path):
    config = tmp_path / "options.json"
    config.write_text(json.dumps({"n_steps": "many"}))
    result = subprocess.run([sys.executable, "-m", "manifold_aps.cli", "fit", "--task", "era5_proxy", "--output", "x.pt",
                             "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "option 'n_steps' in config file" in result.stderr and "'many'" in result.stderr


def test_sample_writes_cf_netcdf_in_the_callers_units_and_grid(tmp_path, capsys):
    import xarray as xr

    import manifold_aps as aps

    mesh = aps.latlon_sphere(30.0)
    grid = aps.signals.latlon_grid(mesh)
    field = aps.data.GaussianRandomField(mesh, length_scale=1.0, num_modes=20, nugget=0.05, mean=0.5, variance=0.02)
    kelvin = 250.0 + 40.0 * field.sample(24, torch.Generator().manual_seed(0)).float()
    signals = aps.signals.vertices_to_grid(kelvin, grid.latitude, grid.longitude).assign_attrs(units="K")
    model = aps.fit(mesh, signals, noise_std=0.05, scale="smoke", progress=False, iterations=3)
    model.save(tmp_path / "aps.pt")
    observed = signals[:2].where(np.random.default_rng(0).random(signals[:2].shape) > 0.5)
    observed = observed.assign_attrs(long_name="2 m temperature").sortby("latitude")  # south → north
    observed.to_dataset(name="t2m").to_netcdf(tmp_path / "observed.nc")
    assert main(["sample", "--model", str(tmp_path / "aps.pt"), "--input", str(tmp_path / "observed.nc"), "--n", "40",
                 "--keep", "3", "--quantiles", "0.1,0.9", "--output", str(tmp_path / "posterior.nc")]) == 0
    result = xr.open_dataset(tmp_path / "posterior.nc")
    assert result.attrs["Conventions"] == "CF-1.8" and "aps.pt" in result.attrs["history"]
    assert result["mean"].attrs["units"] == "K" and "2 m temperature" in result["mean"].attrs["long_name"]
    assert result["quantiles"].sizes["quantile"] == 2 and result["samples"].sizes["draw"] == 3
    np.testing.assert_array_equal(result["latitude"].values, observed["latitude"].values)  # the caller's order
    assert 200 < float(result["mean"].min()) and float(result["mean"].max()) < 340
    assert "model_error_std" not in result and "model error" not in result.attrs["history"]
    assert main(["sample", "--model", str(tmp_path / "aps.pt"), "--input", str(tmp_path / "observed.nc"), "--n", "40",
                 "--model-error", "--measurement-noise-std", "0.5", "--output", str(tmp_path / "widened.nc")]) == 0
    widened = xr.open_dataset(tmp_path / "widened.nc")
    assert widened["model_error_std"].dims == observed.dims[:1] and widened["model_error_std"].attrs["units"] == "K"
    assert (widened["model_error_std"] >= 0).all() and "widened by model error" in widened.attrs["history"]
    np.testing.assert_allclose(widened["model_error_std"].values,
                               model.model_error_std(observed, measurement_noise_std=0.5).values, rtol=1e-5)
