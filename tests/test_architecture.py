"""The package's imports follow the data path (docs: ../shared/docs/DESIGN.md, README "Layout"):
mesh → signal → operator → prior → flow → sampler → metrics. No module imports itself back through
a cycle (lazy imports inside functions included), and the early stations never reach forward."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "manifold_aps"

# lower = earlier on the data path; shared utilities sit at 0
STATIONS = {
    "version": 0, "scales": 0, "checkpoint": 0, "trainer": 1, "data.registry": 1, "zero_shot": 8,
    "mesh": 2, "signals": 3, "operators": 4, "gaussian_posterior": 5, "data": 5,
    "diffusion": 6, "flows": 7, "aps": 8, "baselines": 8, "methods": 9, "metrics": 9,
    "mixture_of_ppca": 5, "model_error": 5, "mixture_base": 5, "benchmark": 10, "render": 10, "tasks": 10, "pretrained": 10, "cli": 11, "demo": 11,
    "": 12,  # the package namespace re-exports the public API
}
EARLY = ("mesh", "signals", "operators", "checkpoint", "flows")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def station(module: str) -> int:
    if module in STATIONS:
        return STATIONS[module]
    for length in range(module.count(".") + 1, 0, -1):
        prefix = ".".join(module.split(".")[:length])
        if prefix in STATIONS:
            return STATIONS[prefix]
    raise KeyError(f"module {module!r} has no station in tests/test_architecture.py: add it")


def imports_of(path: Path) -> set[str]:
    """Every manifold_aps module imported anywhere in ``path`` (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("manifold_aps"):
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name if (PACKAGE / (name[len('manifold_aps.'):].replace('.', '/') + '.py')).exists()
                      or (PACKAGE / name[len('manifold_aps.'):].replace('.', '/')).is_dir() else node.module
                      for name in names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("manifold_aps.")}
    return {name[len("manifold_aps."):] for name in found if name != "manifold_aps"}


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_station():
    for module in GRAPH:
        station(module)


@pytest.mark.parametrize("early", EARLY)
def test_early_stations_do_not_import_later_ones(early):
    for module, imported in GRAPH.items():
        if module.split(".")[0] != early:
            continue
        later = {name for name in imported if station(name) > station(module) and name.split(".")[0] != early}
        assert not later, f"{module} imports later stations {sorted(later)}"


def test_no_import_cycle():
    def visit(module, trail):
        if module in trail:
            cycle = trail[trail.index(module):] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        for name in sorted(GRAPH.get(module, ())):
            if name in GRAPH and name != module and not module.startswith(name + "."):  # a package's own parts
                visit(name, trail + [module])

    for module in GRAPH:
        visit(module, [])

