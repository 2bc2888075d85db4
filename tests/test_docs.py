"""The API reference (docs/api) builds from the docstrings without a warning.

The build is nitpicky (``-n``) and turns warnings into errors (``-W``), so a docstring with broken
reST or a reference to a manifold_aps name that does not exist fails this test. Build it by hand
with ``python -m sphinx -b html docs/api docs/_build/api``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx", reason="sphinx builds the API reference (pinned in requirements.txt)")

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "docs" / "api"


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api_html")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-j", "1", "-b", "html",
               "-d", str(out / ".doctrees"), str(SOURCE), str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"sphinx-build failed ({result.returncode}):\n{result.stderr}\n{result.stdout}"
    return out


def test_builds_index_and_key_pages(html):
    index = (html / "index.html").read_text(encoding="utf-8")
    assert "manifold_aps" in index and 'href="aps.html"' in index and 'href="mesh.html"' in index
    pages = {
        "aps.html": ["manifold_aps.aps.fit", "manifold_aps.aps.AmortizedPosteriorSampler"],
        "mesh.html": ["manifold_aps.mesh.Mesh", "manifold_aps.mesh.load_mesh"],
        "diffusion.html": ["manifold_aps.diffusion.prior.DiffusionPrior"],
        "flows.html": ["manifold_aps.flows.realnvp.ConditionalRealNVP"],
        "data.html": ["manifold_aps.data.registry.fetch"],
    }
    for page, names in pages.items():
        text = (html / page).read_text(encoding="utf-8")
        for name in names:
            assert f'id="{name}"' in text, f"{name} is not documented in {page}"


def test_every_public_module_is_documented(html):
    modindex = (html / "py-modindex.html").read_text(encoding="utf-8")
    package = ROOT / "manifold_aps"
    modules = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(part.startswith("_") for part in parts):
            modules.append(".".join(parts))
    pages = "".join(page.read_text(encoding="utf-8") for page in html.glob("*.html"))
    missing = [name for name in modules if f'id="module-{name}"' not in pages]
    assert not missing, f"modules without an API page (add them to docs/api/*.rst): {missing}"
    assert "manifold_aps.aps" in modindex
