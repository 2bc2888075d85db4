"""Safe checkpoint files: round trip, atomic writes, and refusal of unsafe or damaged files."""

import os
import pickle
import stat
import subprocess
import sys

import pytest
import torch

from manifold_aps import __version__
from manifold_aps.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint


def test_round_trip_keeps_tensors_values_and_header(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "state.pt", {"weights": torch.arange(4.0), "config": {"lr": 1e-3,
                                                            "layers": [1, 2]}, "normalizer": None}, kind="test")
    record = load_checkpoint(path, kind="test")
    assert torch.equal(record["weights"], torch.arange(4.0))
    assert record["config"] == {"lr": 1e-3, "layers": [1, 2]}
    assert record["package_version"] == __version__ and record["format_version"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["state.pt"]  # no temporary file left behind


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "manifold_aps", "format_version": 1, "kind": "test", "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(path)
    with pytest.raises(TypeError, match="weights-only"):
        save_checkpoint(tmp_path / "bad.pt", {"x": _Payload()}, kind="test")
    assert not (tmp_path / "bad.pt").exists()


def test_missing_truncated_corrupted_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    good = save_checkpoint(tmp_path / "good.pt", {"x": torch.randn(1000)}, kind="test")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(tmp_path / "truncated.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    (tmp_path / "noise.pt").write_bytes(pickle.dumps([1, 2, 3])[:-1] + b"garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "noise.pt")
    torch.save({"x": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a manifold_aps checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="expected 'training'"):
        load_checkpoint(good, kind="training")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", {"kind": 1}, kind="test")


def test_newer_format_is_refused(tmp_path):
    torch.save({"format": "manifold_aps", "format_version": 99, "package_version": "9", "kind": "test"},
               tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")


def test_a_read_only_checkpoint_is_kept_not_replaced(tmp_path):
    path = save_checkpoint(tmp_path / "state.pt", {"x": torch.zeros(3)}, kind="test")
    path.chmod(0o444)  # tests run as root, who could write anyway: the owner write bit is what counts
    with pytest.raises(PermissionError, match=r"refusing to replace .*state\.pt.*read-only"):
        save_checkpoint(path, {"x": torch.ones(3)}, kind="test")
    assert torch.equal(load_checkpoint(path)["x"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "state.pt", {"x": torch.zeros(3)}, kind="test")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        path.chmod(0o640)
        save_checkpoint(path, {"x": torch.ones(3)}, kind="test")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(previous)


def test_a_failed_write_leaves_nothing_and_leftovers_of_a_killed_save_are_removed(tmp_path):
    path = save_checkpoint(tmp_path / "state.pt", {"x": torch.zeros(3)}, kind="test")

    def crash(file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)  # a process that has ended, like a killed training run
    leftover = tmp_path / f".state.pt.saving-{dead_pid}-k3j_x9.tmp"
    running = tmp_path / f".state.pt.saving-{os.getppid()}-a8b2c1.tmp"  # a save still going on elsewhere
    foreign = tmp_path / ".state.pt.notes.tmp"  # not ours
    for file in (leftover, running, foreign):
        file.write_bytes(b"partial")
    save_checkpoint(path, {"x": torch.ones(3)}, kind="test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, foreign.name, "state.pt"])
