"""The generic training loop: reproducibility, resume, failure handling and data parallelism."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from manifold_aps.trainer import TrainingConfig, resolve_device, run_fingerprint, train

REPOSITORY = Path(__file__).resolve().parents[1]


def _regression_problem():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 4, generator=generator)
    targets = inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(256, generator=generator)
    return torch.cat([inputs, targets[:, None]], dim=1)


def _noisy_loss(model, batch, generator):
    """Uses the generator, so resume must restore the random stream too."""
    jitter = 0.01 * torch.randn(batch.shape[0], 4, generator=generator)
    return ((model(batch[:, :4] + jitter).squeeze(1) - batch[:, 4]) ** 2).mean()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


CONFIG = TrainingConfig(iterations=12, batch_size=16, learning_rate=1e-2, warmup_iterations=4, ema_decay=0.9,
                        checkpoint_every=3, progress=False, device="cpu")


def test_training_reduces_the_loss_and_checkpoints(tmp_path):
    model = _model()
    result = train(model, _noisy_loss, _regression_problem(), dataclasses.replace(CONFIG, iterations=200, checkpoint_every=50),
                   checkpoint_path=tmp_path / "run.pt")
    assert result.step == 200 and len(result.losses) == 200
    assert sum(result.losses[-20:]) / 20 < 0.3 * sum(result.losses[:20]) / 20
    state = load_checkpoint(tmp_path / "run.pt", kind="training")
    assert state["step"] == 200 and state["config"]["learning_rate"] == 1e-2


def test_resume_continues_the_same_trajectory(tmp_path):
    data = _regression_problem()
    straight = _model()
    straight_result = train(straight, _noisy_loss, data, CONFIG)
    resumed = _model()
    train(resumed, _noisy_loss, data, dataclasses.replace(CONFIG, iterations=6), checkpoint_path=tmp_path / "run.pt")
    fresh = _model()  # a new process would start from scratch and read everything from the file
    resumed_result = train(fresh, _noisy_loss, data, CONFIG, checkpoint_path=tmp_path / "run.pt")
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for name in straight_result.ema.shadow:
        assert torch.equal(straight_result.ema.shadow[name], resumed_result.ema.shadow[name])
    assert resumed_result.losses == straight_result.losses
    with pytest.raises(ValueError, match="learning_rate"):
        train(_model(), _noisy_loss, data, dataclasses.replace(CONFIG, learning_rate=1.0),
              checkpoint_path=tmp_path / "run.pt")


def test_a_cooldown_decays_the_rate_and_a_run_resumes_with_one_added(tmp_path):
    cooled = dataclasses.replace(CONFIG, cooldown_iterations=4)
    rates = [cooled.learning_rate_at(step) for step in range(12)]
    assert rates == pytest.approx([0.25e-2, 0.5e-2, 0.75e-2] + [1e-2] * 6 + [0.75e-2, 0.5e-2, 0.25e-2])
    with pytest.raises(ValueError, match="cooldown_iterations ≥ 0"):
        TrainingConfig(iterations=1, cooldown_iterations=-1)

    data, path = _regression_problem(), tmp_path / "run.pt"
    straight, constant = _model(), _model()
    train(straight, _noisy_loss, data, cooled)
    train(constant, _noisy_loss, data, CONFIG)
    assert not torch.equal(straight[0].weight, constant[0].weight)
    train(_model(), _noisy_loss, data, dataclasses.replace(CONFIG, iterations=6), checkpoint_path=path)
    resumed = _model()  # 6 constant-rate steps, then a run of 12 whose cool-down starts at step 8
    train(resumed, _noisy_loss, data, cooled, checkpoint_path=path)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # step 9 of these 12 was done at 0.75 lr: a longer run would have done it at the full rate
    with pytest.raises(CheckpointError, match=r"learning rate of step 9 of the 12 done \(0.0075 there, 0.01 now"):
        train(_model(), _noisy_loss, data, dataclasses.replace(cooled, iterations=16), checkpoint_path=path)
    assert load_checkpoint(path, kind="training")["step"] == 12


def test_time_limit_stops_with_a_checkpoint_and_resuming_finishes_the_same_run(tmp_path):
    data = _regression_problem()
    straight = _model()
    train(straight, _noisy_loss, data, CONFIG)

    def slow_loss(model, batch, generator):
        time.sleep(0.05)
        return _noisy_loss(model, batch, generator)

    stopped = train(_model(), slow_loss, data, CONFIG, checkpoint_path=tmp_path / "run.pt", time_limit_s=0.12)
    assert 3 <= stopped.step < CONFIG.iterations and len(stopped.losses) == stopped.step
    assert load_checkpoint(tmp_path / "run.pt", kind="training")["step"] == stopped.step
    fresh = _model()
    assert train(fresh, _noisy_loss, data, CONFIG, checkpoint_path=tmp_path / "run.pt").step == CONFIG.iterations
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="time_limit_s"):
        train(_model(), _noisy_loss, data, CONFIG, time_limit_s=0)


def test_resuming_another_run_is_refused_and_resume_false_starts_afresh(tmp_path):
    data, other_data = _regression_problem(), _regression_problem().flip(0)
    path = tmp_path / "run.pt"
    train(_model(), _noisy_loss, data, dataclasses.replace(CONFIG, iterations=6), checkpoint_path=path,
          metadata={"width": 16})
    with pytest.raises(CheckpointError, match=r"cannot resume from .*run\.pt: .*differ: the training data"):
        train(_model(), _noisy_loss, other_data, CONFIG, checkpoint_path=path, metadata={"width": 16})
    with pytest.raises(CheckpointError, match=r"differ: the config \(seed: 0 there, 1 now\)"):
        train(_model(), _noisy_loss, data, dataclasses.replace(CONFIG, seed=1), checkpoint_path=path,
              metadata={"width": 16})
    with pytest.raises(CheckpointError, match=r"differ: the run metadata \(\{'width': 16\}\).*resume=False"):
        train(_model(), _noisy_loss, data, CONFIG, checkpoint_path=path, metadata={"width": 32})
    assert load_checkpoint(path, kind="training")["step"] == 6  # refusals leave the checkpoint alone

    afresh, straight = _model(), _model()
    train(afresh, _noisy_loss, other_data, CONFIG, checkpoint_path=path, resume=False, metadata={"width": 16})
    train(straight, _noisy_loss, other_data, CONFIG)
    for a, b in zip(straight.state_dict().values(), afresh.state_dict().values()):
        assert torch.equal(a, b)  # nothing of the first run leaked in
    state = load_checkpoint(path, kind="training")
    assert state["step"] == 12 and state["fingerprint"] == run_fingerprint(other_data, {"width": 16})

    del state["fingerprint"]  # a checkpoint from before fingerprints cannot prove it is this run
    save_checkpoint(path, {key: value for key, value in state.items() if key not in
                           ("format", "format_version", "package_version", "kind")}, kind="training")
    with pytest.raises(CheckpointError, match="without a run fingerprint"):
        train(_model(), _noisy_loss, other_data, dataclasses.replace(CONFIG, iterations=20), checkpoint_path=path,
              metadata={"width": 16})


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def exploding_loss(model, batch, generator):
        loss = _noisy_loss(model, batch, generator)
        return loss * float("nan") if calls.append(1) or len(calls) > 7 else loss

    calls = []
    with pytest.raises(FloatingPointError, match="step 8.*last good checkpoint"):
        train(_model(), exploding_loss, _regression_problem(), CONFIG, checkpoint_path=tmp_path / "run.pt")
    state = load_checkpoint(tmp_path / "run.pt", kind="training")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(iterations=1, ema_decay=1.0)
    with pytest.raises(TypeError, match="data must be"):
        train(_model(), _noisy_loss, [1, 2], CONFIG)
    with pytest.raises(ValueError, match="scalar"):
        train(_model(), lambda m, b, g: m(b[:, :4]), _regression_problem(), CONFIG)
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_callable_data_source():
    def draw(batch_size, generator):
        inputs = torch.randn(batch_size, 4, generator=generator)
        return torch.cat([inputs, (inputs.sum(1, keepdim=True))], dim=1)

    result = train(_model(), _noisy_loss, draw, dataclasses.replace(CONFIG, iterations=100))
    assert sum(result.losses[-10:]) < sum(result.losses[:10])


WORKER = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from manifold_aps.diffusion import DiffusionPrior
    from manifold_aps.diffusion.networks import build_network
    from manifold_aps.diffusion.training import prior_training_config, train_prior
    from manifold_aps.signals import VertexLayout
    layout = VertexLayout(28)
    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    prior = DiffusionPrior(build_network("mlp", layout, width=32, depth=2), layout)
    data = torch.nn.functional.pad(torch.randn(64, 28, generator=torch.Generator().manual_seed(1)), (0, 4))
    config = prior_training_config("smoke", iterations=8, batch_size=8, progress=False, device="cpu")
    result = train_prior(prior, data, config)
    torch.save({"state": prior.state_dict(), "losses": result.losses}, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
""")


def test_torchrun_two_cpu_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(script), str(tmp_path)],
        env=environment, capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["losses"] == rank1["losses"]  # the logged loss is the mean over ranks
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name
    assert any(value.abs().sum() > 0 for name, value in rank0["state"].items() if "output.1.weight" in name)


def test_ema_warms_up_so_the_initial_weights_fade_fast():
    from manifold_aps.trainer import ExponentialMovingAverage

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ExponentialMovingAverage(model, decay=0.999)
    expected = 0.0
    for step in range(1, 101):
        with torch.no_grad():
            model.weight.fill_(1.0)
        ema.update(model, step)
        decay = min(0.999, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay)
        assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert ema.decay_at(10_000) == 0.999
    assert ema.shadow["weight"].item() > 0.9  # a plain 0.999 EMA would be at 1 − 0.999¹⁰⁰ ≈ 0.10
