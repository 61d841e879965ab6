"""Sphinx configuration for backdoorlearn's documentation."""

import os
import sys
import time

sys.path.insert(0, os.path.abspath("../src"))
os.environ.setdefault("MPLBACKEND", "Agg")

import backdoorlearn  # noqa: E402

project = "backdoorlearn"
author = "backdoorlearn developers"
copyright = f"{time.strftime('%Y')}, {author}"
release = backdoorlearn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

autosummary_generate = True
autodoc_default_options = {}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "auto_examples/*.ipynb", "auto_examples/*.py", "sg_execution_times.rst"]
default_role = "obj"

html_theme = "pydata_sphinx_theme"
html_title = "backdoorlearn"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}

# No network at build time: intersphinx inventories are optional.
intersphinx_mapping = {}

sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "show_memory": False,
    "matplotlib_animations": False,
    "reference_url": {"backdoorlearn": None},
    "doc_module": ("backdoorlearn",),
    "backreferences_dir": "api/generated/backreferences",
}


def _skip_metadata_routing(app, what, name, obj, skip, options):
    # scikit-learn generates set_*_request methods on every estimator; they
    # are routing plumbing, not part of backdoorlearn's API.
    if name == "get_metadata_routing" or (name.startswith("set_") and name.endswith("_request")):
        return True
    return skip


def _generate_cli_outputs(app):
    # The user guide's command outputs and report figures come from running the commands
    # (docs/generate_cli_outputs.py), never from retyped text.
    # BACKDOORLEARN_DOCS_REUSE_OUTPUTS=1 keeps the files of an earlier run (quick rebuilds of the text).
    sys.path.insert(0, os.path.dirname(__file__))
    from generate_cli_outputs import OUT, generate

    if os.environ.get("BACKDOORLEARN_DOCS_REUSE_OUTPUTS") == "1" and (OUT / "names.json").exists():
        return
    generate()


def setup(app):
    app.connect("autodoc-skip-member", _skip_metadata_routing)
    app.connect("builder-inited", _generate_cli_outputs)
