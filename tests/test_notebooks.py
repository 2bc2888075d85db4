"""The documentation notebooks (``docs/notebooks/``): stored without outputs, and executed at smoke scale.

Execution runs each notebook top to bottom with nbclient in a fresh kernel of *this* interpreter
(a kernelspec written to a temporary ``JUPYTER_PATH``, so a user-level or system ``python3``
kernel of another Python is never picked), in a temporary working directory, with
``MANIFOLD_APS_NOTEBOOK_SCALE=smoke`` (tiny models trained on the spot) and one thread.
"""

import json
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "docs" / "notebooks"
NOTEBOOKS = {
    # notebook -> figures it must write to MANIFOLD_APS_NOTEBOOK_OUTPUT
    "blind_imputation_sphere.ipynb": ("sphere_blind_lowest_rate.png", "sphere_blind_highest_rate.png",
                                      "sphere_methods_mean.png", "sphere_methods_std.png"),
    "bunny_mnist_inpainting.ipynb": ("bunny_posterior.png", "bunny_methods.png"),
}
KERNEL_NAME = "python3"
CELL_TIMEOUT = 300  # seconds per cell
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_documented_notebooks_are_there():
    present = {path.name for path in NOTEBOOK_DIR.glob("*.ipynb")}
    assert set(NOTEBOOKS) <= present, f"missing from {NOTEBOOK_DIR}: {sorted(set(NOTEBOOKS) - present)}"


@pytest.mark.parametrize("path", sorted(NOTEBOOK_DIR.glob("*.ipynb")), ids=lambda path: path.name)
def test_notebook_is_stored_without_outputs(path):
    notebook = _load(path)
    assert notebook.get("nbformat") == 4
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, f"{path.name} has no code cell"
    for index, cell in enumerate(notebook["cells"]):
        where = f"{path.name}, cell {index}"
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{where} has stored outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{where} has an execution count: clear it before committing"
        assert "execution" not in cell.get("metadata", {}), f"{where} keeps execution timing metadata"
    # the first code cell is the parameters cell that picks the scale from the environment
    first = "".join(code[0]["source"])
    assert 'SCALE = os.environ.get("MANIFOLD_APS_NOTEBOOK_SCALE", "cpu")' in first, path.name


@pytest.fixture
def notebook_kernel(tmp_path, monkeypatch, mirror):
    """A ``python3`` kernelspec for ``sys.executable`` with the smoke-scale environment."""
    jupyter = tmp_path / "jupyter"
    spec = jupyter / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    environment = {"MANIFOLD_APS_NOTEBOOK_SCALE": "smoke", "MANIFOLD_APS_DATA": str(mirror), **SINGLE_THREAD}
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (manifold_aps tests)", "language": "python", "env": environment,
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))  # searched before the user, venv and system folders
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile or startup scripts
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_at_smoke_scale(name, notebook_kernel, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    assert spec.argv[0] == sys.executable, f"the {KERNEL_NAME!r} kernel would run {spec.argv[0]}, not this interpreter"

    figures = notebook_kernel / "figures"
    monkeypatch.setenv("MANIFOLD_APS_NOTEBOOK_OUTPUT", str(figures))
    workdir = notebook_kernel / "cwd"
    workdir.mkdir()
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT, startup_timeout=120,
                                     resources={"metadata": {"path": str(workdir)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    print(f"{name}: {time.perf_counter() - started:.0f} s")

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    outputs = [output for cell in code for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "scale smoke" in text  # the parameters cell read MANIFOLD_APS_NOTEBOOK_SCALE
    shown = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(shown) >= len(NOTEBOOKS[name]), "every figure is shown inline"
    for figure in NOTEBOOKS[name]:
        assert (figures / figure).stat().st_size > 10_000, f"{figure} missing or empty"
    assert any("text/html" in output.get("data", {}) for output in outputs), "the score table is displayed"
