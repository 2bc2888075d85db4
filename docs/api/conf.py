"""Sphinx configuration for the manifold_aps API reference.

Build with ``python -m sphinx -b html docs/api docs/_build/api`` (the test suite builds it with
``-W --keep-going -n`` in ``tests/test_docs.py``, so a broken reference fails the tests).
"""

import importlib
import inspect
import os
import sys

# The package is importable from the repository root even without an editable install.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import manifold_aps  # noqa: E402

project = "manifold_aps"
author = "manifold_aps contributors"
copyright = "manifold_aps contributors"
release = version = manifold_aps.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
html_static_path = []
html_theme = "alabaster"

# Offline build: no intersphinx, so references to other libraries cannot resolve (see below).
nitpicky = True

autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
autoclass_content = "class"

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False

python_use_unqualified_type_names = True

# External libraries only: without intersphinx their types have no target in this build.
# References to manifold_aps names are never ignored -- a broken internal reference fails.
_EXTERNAL = r"(torch|np|numpy|scipy|sp|xarray|xr|pyvista|pv|matplotlib|plt|pathlib|os|io|json|argparse|typing|collections|dataclasses|datetime|enum|abc|zipfile|tqdm|trimesh|healpy|cartopy|potpourri3d|robust_laplacian|h5py|pooch)"
nitpick_ignore_regex = [
    ("py:.*", _EXTERNAL + r"(\..*)?"),
]


# Docstrings may name an object by the public path it is re-exported under (``manifold_aps.Mesh``,
# ``manifold_aps.diffusion.DiffusionPrior.elbo``); the reference documents it where it is defined
# (``manifold_aps.mesh.Mesh``). Such a reference is resolved to that definition -- only when the
# path really imports to a manifold_aps class or function that this reference documents, so a
# wrong name still fails the nitpicky build.
def _canonical_name(target):
    parts = target.split(".")
    if parts[0] != "manifold_aps":
        return None
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        break
    else:
        return None
    for index in range(split, len(parts)):
        try:
            obj = getattr(obj, parts[index])
        except AttributeError:
            return None
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if (isinstance(obj, type) or inspect.isfunction(obj)) and module and qualname:
            if not module.startswith("manifold_aps"):
                return None
            return ".".join([module, qualname, *parts[index + 1:]])
    return None


def _resolve_reexported(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    canonical = _canonical_name(target)
    if canonical is None or canonical == target:
        return None
    return env.domains["py"].resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical,
                                          node, contnode)


def setup(app):
    app.connect("missing-reference", _resolve_reexported)
