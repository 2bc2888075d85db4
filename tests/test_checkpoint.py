"""Safe checkpoint files: round trip, atomic writes, and refusal of unsafe or damaged files."""

import os
import pickle

import pytest
import torch

from manifold_aps import __version__
from manifold_aps.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
