"""benchmarks/gaussian_fields.py end to end: a smoke run on the torus (no data files) into a tmp dir."""

import importlib.util
import json
import math
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gaussian_fields.py"
METHODS = {"aps_base", "aps_n1", "aps_n128", "dps", "mcg", "mmps", "pigdm", "diffpir", "harmonic", "oi", "gmm", "exact"}
TOP_LEVEL = {"task", "scale", "data", "machine", "device", "threads", "date", "commit", "train_seconds", "rows"}


def _load_script():
    spec = importlib.util.spec_from_file_location("gaussian_fields_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torus_smoke_run_writes_every_row(tmp_path):
    benchmark = _load_script()
    threads = torch.get_num_threads()
    try:
        benchmark.main(["--mesh", "torus", "--scale", "smoke", "--threads", "1", "--checkpoint-dir",
                        str(tmp_path / "checkpoints"), "--results-dir", str(tmp_path / "results")], log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    results = json.loads((tmp_path / "results" / "gaussian_fields_torus_smoke.json").read_text())
    assert TOP_LEVEL <= set(results)
    assert results["task"] == "gaussian_fields_torus" and results["scale"] == "smoke" and results["threads"] == 1
    rows = {row["method"]: row for row in results["rows"]}
    assert set(rows) == METHODS
    assert all(math.isfinite(row["psnr"]) for row in rows.values())
    assert 0.8 <= rows["exact"]["coverage_90"] <= 0.97
    assert (tmp_path / "results" / "gaussian_fields_torus_smoke.md").exists()
    assert (tmp_path / "checkpoints" / "gaussian_fields_torus_aps_smoke.pt").exists()
