"""Reliability at the public API: bad input gets a named error, missing values stay missing,
checkpoints survive a killed process, seeds reproduce, and numerical failure stops cleanly.

Checkpoint round trip, refusal of pickled code, truncated/empty/foreign files and the newer-format
check are in ``test_checkpoint.py``; in-process resume and the NaN-loss stop of the generic loop
are in ``test_trainer.py``. This file adds the cases those do not cover.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import manifold_aps as aps
from manifold_aps.aps import APSConfig, AmortizedPosteriorSampler, condition_channels, fit, train_aps
from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.cli import main as cli_main
from manifold_aps.data import era5
from manifold_aps.data.registry import fetch
from manifold_aps.flows import build_flow

REPOSITORY = Path(__file__).resolve().parents[1]
MESH = aps.healpix_sphere(1)  # 12 vertices, 20 faces: every fit here takes well under a second
V = MESH.num_vertices
TINY = dict(scale="smoke", iterations=3, progress=False, device="cpu")


def signals(count=8, seed=0):
    return np.random.default_rng(seed).random((count, V)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return fit(MESH, signals(), **TINY)


def observed():
    values = signals(1)[0]
    values[::2] = np.nan
    return values


def with_values(index, value, base=None):
    array = signals() if base is None else base.copy()
    array[index] = value
    return array


# -- meshes -------------------------------------------------------------------------------------
TRIANGLE = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


@pytest.mark.parametrize("vertices, faces, error, message", [
    ([[0, 0, 0], [1, 0, np.nan], [0, 1, 0]], [[0, 1, 2]], ValueError, "non-finite coordinates"),
    ([[0, 0, 0], [1, 0, np.inf], [0, 1, 0]], [[0, 1, 2]], ValueError, "non-finite coordinates"),
    (TRIANGLE, [[0, 1, 3]], ValueError, "face index out of range.*3 vertices"),
    (TRIANGLE, [[0, -1, 2]], ValueError, "face index out of range"),
    (TRIANGLE, np.zeros((0, 3)), ValueError, "no faces"),
    (np.zeros((0, 3)), np.zeros((0, 3)), ValueError, "no vertices"),
    ([[0, 0], [1, 0], [0, 1]], [[0, 1, 2]], ValueError, r"shape \(V, 3\)"),
    (TRIANGLE, [[0, 1]], ValueError, r"shape \(F, 3\)"),
    (TRIANGLE, [[0, 1, 2.5]], ValueError, "integer vertex indices"),
    (TRIANGLE, [[0, 1, np.nan]], ValueError, "integer vertex indices"),
    ([["a", "b", "c"]] * 3, [[0, 1, 2]], TypeError, "real numbers"),
    (np.zeros((3, 3), dtype=complex), [[0, 1, 2]], TypeError, "real numbers"),
])
def test_bad_mesh_geometry_is_named(vertices, faces, error, message):
    with pytest.raises(error, match=message):
        aps.Mesh(vertices, faces)


@pytest.mark.parametrize("name, content, error, message", [
    ("missing.ply", None, FileNotFoundError, "mesh file not found"),
    ("text.ply", b"hello, I am not a mesh\n", ValueError, "could not read .* as a triangle mesh"),
    ("noise.ply", bytes(range(256)) * 4, ValueError, "could not read .* as a triangle mesh"),
    ("text.obj", b"hello, I am not a mesh\n", ValueError, "no vertices: not a triangle mesh"),
    ("empty.obj", b"", ValueError, "no vertices"),
    ("points.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\n", ValueError, "point cloud without faces"),
    ("range.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", ValueError, "out of (bounds|range)"),
    ("nan.obj", b"v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n", ValueError, "non-finite coordinates"),
    ("notes.txt", b"v 0 0 0\n", ValueError, "not supported"),
])
def test_bad_mesh_files_are_named(tmp_path, name, content, error, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=message):
        aps.load_mesh(tmp_path / name)


# -- fit ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, kwargs, error, message", [
    (signals()[:, :-1], {}, ValueError, "do not fit this mesh.*V=12"),
    (np.random.rand(8, V + 1), {}, ValueError, "do not fit this mesh"),
    (signals()[0], {}, ValueError, r"\(N, V\) or \(N, V, C\)"),
    (signals()[None, ..., None], {}, ValueError, r"\(N, V\) or \(N, V, C\)"),
    (np.zeros((0, V)), {}, ValueError, "empty"),
    (signals(1), {}, ValueError, "at least 2 signals"),
    (np.full((8, V), "a"), {}, TypeError, "real numbers"),
    (np.empty((8, V), dtype=object), {}, TypeError, "real numbers"),
    (signals().astype(complex), {}, TypeError, "real numbers"),
    (torch.zeros(8, V, dtype=torch.complex64), {}, TypeError, "real numbers"),
    ("signals.npy", {}, TypeError, "got str"),
    (None, {}, TypeError, "got NoneType"),
    (with_values((0, 3), np.inf), {}, ValueError, "±inf"),
    (with_values((2, 5), -np.inf), {}, ValueError, "±inf"),
    (with_values(1, np.nan), {}, ValueError, r"signal\(s\) \[1\] are all NaN"),
    (np.full((8, V), np.nan), {}, ValueError, "all NaN"),
    (np.full((8, V), 0.5), {}, ValueError, r"the signals are constant \(every value is 0\.5\)"),
    (signals(), dict(mask_rate=1.0), ValueError, r"mask_rate \(the hidden fraction\) must be in \[0, 1\)"),
    (signals(), dict(mask_rate=-0.1), ValueError, r"mask_rate \(the hidden fraction\) must be in \[0, 1\)"),
    (signals(), dict(mask_rate=float("nan")), ValueError, r"mask_rate \(the hidden fraction\) must be in \[0, 1\)"),
    (signals(), dict(mask_rate="0.5"), TypeError, r"mask_rate \(the hidden fraction\) must be a real number"),
    (signals(), dict(blind=True, hidden_range=(0.2, 1.2)), ValueError, r"hidden_range bounds must be in \[0, 1\)"),
    (signals(), dict(blind=True, hidden_range=(0.6, 0.2)), ValueError, "low ≤ high"),
    (signals(), dict(noise_std=-0.1), ValueError, "noise_std must be a positive number"),
    (signals(), dict(noise_std=0.0), ValueError, "noise_std must be a positive number"),
    (signals(), dict(noise_std=float("inf")), ValueError, "noise_std must be a positive number"),
    (signals(), dict(noise_std="0.1"), TypeError, "noise_std must be a real number"),
    (signals(), dict(seed="0"), TypeError, "seed must be an integer"),
    (signals(), dict(flow="glow"), ValueError, "flow must be one of"),
    (signals(), dict(test_signals=np.random.rand(2, V + 1)), ValueError, "do not fit this mesh"),
    (signals(), dict(test_signals=with_values((0, 0), np.nan, signals(2))), ValueError, "test_signals must be complete"),
    (signals(), dict(test_signals=with_values((0, 0), np.inf, signals(2))), ValueError, "test_signals must be complete"),
])
def test_fit_names_bad_input(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        fit(MESH, data, **{**TINY, **kwargs})


def test_fit_names_a_mesh_that_is_not_a_mesh_and_bad_settings():
    with pytest.raises(TypeError, match="mesh must be a manifold_aps.Mesh"):
        fit("bunny.ply", signals(), **TINY)
    with pytest.raises(ValueError, match="unknown scale"):
        fit(MESH, signals(), scale="huge", progress=False)
    with pytest.raises(TypeError, match="unknown APSConfig fields"):
        fit(MESH, signals(), iteration=3, scale="smoke", progress=False)
    with pytest.raises(ValueError, match="scale_bound"):
        APSConfig.preset("smoke", scale_bound=0.0)
    with pytest.raises(ValueError, match="condition_features"):
        APSConfig.preset("smoke", condition_features=-1)


def test_fit_accepts_numpy_scalars_lists_and_latlon_grids():
    """Numbers and arrays in their other ordinary forms are not mistakes."""
    model = fit(MESH, signals().tolist(), noise_std=np.float32(0.05), mask_rate=np.float64(0.5), **TINY)
    assert model.layout.num_vertices == V
    import xarray as xr

    sphere = aps.latlon_sphere(30.0)  # 7 × 12 grid
    grid = xr.DataArray(np.random.default_rng(0).random((4, 7, 12)), dims=("sample", "latitude", "longitude"),
                        coords={"latitude": np.linspace(90, -90, 7), "longitude": np.arange(12) * 30.0})
    model = fit(sphere, grid, **TINY)
    assert (model.layout.num_vertices, model.layout.num_channels) == (84, 1)
    mean, _ = model.posterior(grid.isel(sample=0).where(grid.latitude > 0), n=4)
    assert mean.dims == ("latitude", "longitude") and np.isfinite(mean.values).all()


# -- sample / posterior -------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sample", "posterior"])
@pytest.mark.parametrize("data, kwargs, error, message", [
    (np.zeros(V + 1), {}, ValueError, "do not fit this mesh.*V=12"),
    (torch.zeros(V - 1), {}, ValueError, "do not fit this mesh"),
    (np.zeros((1, 1, V, 1)), {}, ValueError, "do not fit this mesh"),
    (np.zeros((0, V)), {}, ValueError, "empty"),
    (np.full(V, np.nan), {}, ValueError, "no observed vertex"),
    (with_values(1, np.inf, observed()), {}, ValueError, "±inf"),
    (with_values(1, -np.inf, observed()), {}, ValueError, "±inf"),
    ("observed.npy", {}, TypeError, "got str"),
    (None, {}, TypeError, "got NoneType"),
    (np.full(V, "a"), {}, TypeError, "real numbers"),
    (np.empty(V, dtype=object), {}, TypeError, "real numbers"),
    (np.zeros(V, dtype=complex), {}, TypeError, "real numbers"),
    ([[1.0, 2.0], [3.0]], {}, TypeError, "could not convert"),
    (observed(), dict(n=0), ValueError, "n must be ≥ 1"),
    (observed(), dict(n="4"), TypeError, "n .* must be an integer"),
    (observed(), dict(n=2.5), TypeError, "n .* must be an integer"),
    (observed(), dict(generator=0), TypeError, "generator must be a torch.Generator"),
])
def test_sampling_names_bad_input(model, method, data, kwargs, error, message):
    with pytest.raises(error, match=message):
        getattr(model, method)(data, **kwargs)


def test_posterior_needs_two_samples(model):
    with pytest.raises(ValueError, match="n ≥ 2"):
        model.posterior(observed(), n=1)


# -- missing values -------------------------------------------------------------------------------
def test_nan_is_never_observed_and_never_training_data(monkeypatch):
    data = signals(8)
    data[2, 3] = np.nan
    data[5, :4] = np.nan
    layout = aps.VertexLayout(V)
    batch, _ = layout.to_batch(data)
    operator = aps.RandomVertexMask(V, layout.padded_vertices, hidden_fraction=0.25, noise_std=0.05)
    measurement = operator(batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(measurement.y).all()
    assert not measurement.observed[2, 3] and not measurement.observed[5, :4].any()
    assert (measurement.y[~measurement.observed] == 0).all()

    import manifold_aps.diffusion.training as training

    seen = {}
    original = training.train_prior

    def spy(prior, prior_data, *args, **kwargs):
        seen["data"] = prior_data.clone()
        return original(prior, prior_data, *args, **kwargs)

    monkeypatch.setattr(training, "train_prior", spy)
    with pytest.warns(UserWarning, match="6 complete signals only: 2 of 8 signals contain NaN"):
        fit(MESH, data, **TINY)
    assert seen["data"].shape[0] == 6 and torch.isfinite(seen["data"]).all()
    kept = layout.unpad(seen["data"])[..., 0].numpy()
    np.testing.assert_array_equal(kept, np.delete(data, [2, 5], axis=0))  # complete signals, unchanged


def test_posterior_with_nan_input_is_finite_and_in_the_users_form(model):
    values = observed()
    mean, std = model.posterior(values, n=8, generator=torch.Generator().manual_seed(0))
    assert mean.shape == std.shape == (V,) and np.isfinite(mean).all() and np.isfinite(std).all()
    draws = model.sample(torch.as_tensor(np.stack([values, values])), n=3)
    assert isinstance(draws, torch.Tensor) and draws.shape == (3, 2, V) and torch.isfinite(draws).all()


# -- checkpoints ------------------------------------------------------------------------------------
def test_every_torch_load_is_weights_only():
    calls = []
    for path in sorted((REPOSITORY / "manifold_aps").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                calls.append((path.name, number, line))
    assert calls, "expected checkpoint.py to call torch.load"
    assert all("weights_only=True" in line for _, _, line in calls), calls


def test_damaged_model_and_prior_files_are_named(model, tmp_path):
    path = model.save(tmp_path / "aps.pt")
    data = path.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        AmortizedPosteriorSampler.load(tmp_path / "truncated.pt")
    (tmp_path / "zeros.pt").write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match="corrupted or truncated"):  # damaged bytes are not "code"
        AmortizedPosteriorSampler.load(tmp_path / "zeros.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        AmortizedPosteriorSampler.load(tmp_path / "absent.pt")
    save_checkpoint(tmp_path / "partial.pt", {"flow_kind": "realnvp"}, kind="aps_model")
    with pytest.raises(CheckpointError, match="incomplete or inconsistent APS model"):
        AmortizedPosteriorSampler.load(tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="without a diffusion prior"):
        aps.load_prior(path)
    save_checkpoint(tmp_path / "prior.pt", {"prior": {"network": "mlp"}, "state": {}}, kind="diffusion_prior")
    with pytest.raises(CheckpointError, match="incomplete or invalid"):
        aps.load_prior(tmp_path / "prior.pt")


def test_resume_from_a_checkpoint_of_another_model_is_named(tmp_path):
    from manifold_aps.trainer import TrainingConfig, train

    config = TrainingConfig(iterations=2, batch_size=4, checkpoint_every=1, progress=False, device="cpu")
    data = torch.randn(16, 3)

    def loss_fn(module, batch, generator):
        return module(batch).pow(2).mean()

    train(torch.nn.Linear(3, 2), loss_fn, data, config, checkpoint_path=tmp_path / "run.pt")
    with pytest.raises(CheckpointError, match="cannot resume .* does not match this model"):
        train(torch.nn.Linear(3, 5), loss_fn, data, config, checkpoint_path=tmp_path / "run.pt")


KILLED_FIT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    import manifold_aps as aps
    from manifold_aps.aps import AmortizedPosteriorSampler

    forward = AmortizedPosteriorSampler.forward
    def slow_forward(self, *args, **kwargs):  # slow APS steps, so the kill lands mid-training
        time.sleep(0.05)
        return forward(self, *args, **kwargs)
    AmortizedPosteriorSampler.forward = slow_forward

    options = json.loads(sys.argv[2])
    signals = np.random.default_rng(options.pop("data_seed")).random((16, 12)).astype(np.float32)
    aps.fit(aps.healpix_sphere(1), signals, checkpoint_dir=sys.argv[1], **options)
    print("finished", flush=True)
""")
RESUMABLE = dict(scale="smoke", iterations=40, checkpoint_every=4, progress=False, device="cpu", seed=3)


def test_fit_killed_mid_training_resumes_to_the_uninterrupted_weights(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    script = tmp_path / "worker.py"
    script.write_text(KILLED_FIT)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(checkpoints), json.dumps({**RESUMABLE, "data_seed": 0})],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while not (checkpoints / "aps.pt").exists():
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no APS checkpoint within 60 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(checkpoints / "aps.pt", kind="training")["step"]
    assert 0 < killed_at < RESUMABLE["iterations"]  # the process really died mid-training

    data = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    resumed = fit(MESH, data, checkpoint_dir=checkpoints, **RESUMABLE)
    assert load_checkpoint(checkpoints / "aps.pt", kind="training")["step"] == RESUMABLE["iterations"]
    straight = fit(MESH, data, **RESUMABLE)
    resumed_state, straight_state = resumed.state_dict(), straight.state_dict()
    assert resumed_state.keys() == straight_state.keys()
    for name, value in straight_state.items():
        assert torch.equal(value, resumed_state[name]), name


# -- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_measurements_and_samples():
    layout = aps.VertexLayout(V)
    batch, _ = layout.to_batch(signals())
    operator = aps.RandomVertexMask(V, layout.padded_vertices, 0.5, 0.05)
    first, again, other = (operator(batch, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1))
    assert torch.equal(first.y, again.y) and torch.equal(first.observed, again.observed)
    assert not torch.equal(first.observed, other.observed)

    values = observed()
    draws = [fit(MESH, signals(), **{**TINY, "seed": seed}).sample(values, n=4, generator=torch.Generator().manual_seed(0))
             for seed in (0, 0, 1)]
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_fit_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(MESH, signals(), **TINY)
    assert torch.equal(torch.rand(3), expected)


# -- numerical safety -------------------------------------------------------------------------------
def test_non_finite_aps_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    layout = aps.VertexLayout(V)
    prior = fit(MESH, signals(), **TINY).prior
    config = APSConfig.preset("smoke", iterations=12, checkpoint_every=3, batch_size=8)
    operator = aps.RandomVertexMask(V, layout.padded_vertices, 0.5, 0.05)
    flow = build_flow("realnvp", layout, condition_channels(layout, False, False), **config.flow_shape())
    model = AmortizedPosteriorSampler(flow, prior, operator)
    batch, _ = layout.to_batch(signals())
    measurements = operator(batch, torch.Generator().manual_seed(0))
    elbo, calls = prior.elbo, []

    def failing_elbo(*args, **kwargs):
        calls.append(1)
        value = elbo(*args, **kwargs)
        return value * float("nan") if len(calls) > 7 else value

    prior.elbo = failing_elbo
    with pytest.raises(FloatingPointError, match="step 8.*last good checkpoint"):
        train_aps(model, measurements, config, tmp_path / "aps.pt", progress=False, device="cpu")
    state = load_checkpoint(tmp_path / "aps.pt", kind="training")
    assert state["step"] == 6
    assert all(torch.isfinite(value).all() for value in state["model"].values())


@pytest.mark.parametrize("kind", ["realnvp", "mesh"])
def test_flow_log_scales_stay_bounded_for_extreme_weights(kind):
    """Every coupling's log-scale is ``bound · tanh(ŝ / bound)``: even absurd network outputs give a
    finite Jacobian with ``|log det| ≤ bound · (updated entries)``."""
    layout = aps.VertexLayout(V)
    config = APSConfig.preset("smoke", scale_bound=1.5)
    flow = build_flow(kind, layout, condition_channels(layout, False, False), MESH.edge_index, **config.flow_shape())
    condition = flow.prepare_condition(torch.randn(4, V, 2))
    couplings = [module for module in flow.modules() if hasattr(module, "scale_bound")]
    assert len(couplings) == 2 * config.flow_depth
    torch.manual_seed(0)
    for coupling in couplings:
        with torch.no_grad():
            for layer in coupling.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.normal_().mul_(1e4)  # raw log-scales of order 1e4 and beyond
        z = 10 * torch.randn(4, flow.dim)
        x, log_det = coupling(z, condition)  # every layer: (values, condition) -> (values, log_det)
        assert torch.isfinite(x).all() and torch.isfinite(log_det).all()
        assert log_det.abs().max() <= config.scale_bound * flow.dim
        assert log_det.abs().max() > 0.5 * config.scale_bound  # saturated, not switched off


# -- data loaders and CLI -----------------------------------------------------------------------------
def test_data_loaders_name_bad_input(tmp_path):
    import xarray as xr

    with pytest.raises(ValueError, match="unknown data file 'bunny'"):
        fetch("bunny")
    with pytest.raises(KeyError):  # still a KeyError for callers written against the old behaviour
        fetch("bunny")
    with pytest.raises(FileNotFoundError, match="temperature file not found"):
        era5.load_t2m(tmp_path / "absent.nc")
    (tmp_path / "text.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="could not read .* as NetCDF"):
        era5.load_t2m(tmp_path / "text.nc")
    coords = {"latitude": era5.GASP_LATITUDES, "longitude": era5.GASP_LONGITUDES}
    dims = ("time", "latitude", "longitude")
    with pytest.raises(ValueError, match="no finite value"):
        era5.load_t2m(xr.DataArray(np.full((2, 46, 90), np.nan), dims=dims, coords=coords, attrs={"units": "K"}))
    with pytest.raises(ValueError, match="empty"):
        era5.load_t2m(xr.DataArray(np.zeros((0, 46, 90)), dims=dims, coords=coords, attrs={"units": "K"}))
    with pytest.raises(TypeError, match="real numbers"):
        era5.load_t2m(xr.DataArray(np.full((2, 46, 90), "a"), dims=dims, coords=coords))
    infinite = np.full((2, 46, 90), 280.0)
    infinite[0, 3, 3] = np.inf
    with pytest.raises(ValueError, match="not plausible"):
        era5.load_t2m(xr.DataArray(infinite, dims=dims, coords=coords, attrs={"units": "K"}))
    with pytest.raises(FileNotFoundError, match="GASP folder not found"):
        era5.load_gasp(tmp_path, "train")
    (tmp_path / "era5_temp2m_16x_val").mkdir()
    (tmp_path / "era5_temp2m_16x_val" / "000.npz").write_text("garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        era5.load_gasp(tmp_path, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        era5.load_gcm_proxy("validation")
    from manifold_aps.data.bunny_mnist import load_bunny_mnist

    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_bunny_mnist("val")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        load_bunny_mnist("test", limit=0)
    with pytest.raises(TypeError, match="limit must be an integer"):
        load_bunny_mnist("test", limit="5")


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("cli") / "aps.pt")


@pytest.mark.parametrize("name, content, error, message", [
    ("absent.npy", None, FileNotFoundError, "signals file not found"),
    ("text.npy", b"not numpy", ValueError, "could not read .* as a numeric .npy array"),
    ("text.npz", b"not numpy", ValueError, "could not read .* as a numeric .npz array"),
    ("text.nc", b"not netcdf", ValueError, "could not read .* as NetCDF"),
    ("signals.csv", b"1,2,3", ValueError, "unsupported signals file"),
])
def test_cli_names_bad_signal_files(model_file, tmp_path, name, content, error, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=message):
        cli_main(["sample", "--model", str(model_file), "--input", str(tmp_path / name), "--output",
                  str(tmp_path / "out.npz")])


def test_cli_names_bad_arrays_and_models(model_file, tmp_path):
    np.savez(tmp_path / "keys.npz", fields=np.zeros((2, V)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "wide.npy", np.zeros((2, V + 5)))
    cases = [(["sample", "--model", str(model_file), "--input", str(tmp_path / "keys.npz")], ValueError, "no 'signals' array"),
             (["sample", "--model", str(model_file), "--input", str(tmp_path / "objects.npy")], ValueError, "Python objects"),
             (["sample", "--model", str(model_file), "--input", str(tmp_path / "wide.npy")], ValueError, "do not fit this mesh"),
             (["sample", "--model", str(tmp_path / "absent.pt"), "--input", str(tmp_path / "wide.npy")],
              FileNotFoundError, "no checkpoint")]
    for argv, error, message in cases:
        with pytest.raises(error, match=message):
            cli_main([*argv, "--output", str(tmp_path / "out.npz")])
    mesh_file = tmp_path / "mesh.obj"
    mesh_file.write_text("v 0 0 0\n")
    np.save(tmp_path / "signals.npy", signals())
    with pytest.raises(ValueError, match="not a triangle mesh"):
        cli_main(["fit", "--mesh", str(mesh_file), "--signals", str(tmp_path / "signals.npy"), "--output",
                  str(tmp_path / "m.pt"), "--scale", "smoke"])
