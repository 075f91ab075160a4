"""Sphinx configuration of the seglosses documentation.

Build (from the repository root; one command, warnings are errors)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

Doctests::

    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest

Formulas are rendered by MathJax 3 served from the site itself (the ``sphinx-mathjax-offline``
package ships it), so the built pages need no network access.
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # the working tree's package, installed or not

import seglosses  # noqa: E402

# -- Project ---------------------------------------------------------------------------------------------
project = "seglosses"
author = "the seglosses authors"
copyright = "the seglosses authors"
release = seglosses.__version__
version = release

# -- General ---------------------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # sets mathjax_path to a local copy of MathJax 3 and copies it into _static
    "myst_parser",  # RELIABILITY.md is included as it is
    "matplotlib.sphinxext.plot_directive",  # the family page's curves, drawn from the library at build time
    "sphinx_gallery.gen_gallery",  # the examples gallery: examples/*.py run at build time
]
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
nitpicky = False  # the docstrings name torch types and private modules that have no page of their own
default_role = "code"  # `x` in the pages is inline code, as in the Markdown files

# -- autodoc / autosummary / napoleon --------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # nn.Module's own docstrings are not seglosses' reference
add_module_names = False
python_use_unqualified_type_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- doctest ---------------------------------------------------------------------------------------------
doctest_global_setup = """
import torch
import seglosses
torch.manual_seed(0)
"""
doctest_test_doctest_blocks = ""  # only the explicit doctest / testcode blocks run

# -- HTML ------------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"seglosses {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"**": []}  # a small site: the navbar, the breadcrumbs and the page TOC are enough

# -- sphinx-gallery (the examples) ----------------------------------------------------------------------
# examples/plot_*.py run when the site is built (at builder-inited); each becomes a page of
# docs/auto_examples/ with its output and figures. Both generated paths are in .gitignore.
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),  # the scripts, one page each
    "gallery_dirs": "auto_examples",  # generated under docs/ (ignored by git)
    "filename_pattern": r"/plot_",  # run every example (all are named plot_*.py)
    "within_subsection_order": "FileNameSortKey",  # plot_1_..., plot_2_..., in that order
    "abort_on_example_error": True,  # a failing example fails the build
    "download_all_examples": False,  # one zip of every script: not needed, each page has its own links
    "binder": {},
    "jupyterlite": {},
    "capture_repr": (),  # only what the scripts print is shown, as when they run on their own
    "remove_config_comments": True,  # e.g. "# sphinx_gallery_thumbnail_number = 2"
    "show_memory": False,
    "min_reported_time": 0,
}

# -- MyST (RELIABILITY.md) --------------------------------------------------------------------------------
myst_heading_anchors = 3


def _qualified_entries(text):
    """(line index, module.name) of every entry of an autosummary table in ``text``."""
    entries, module, in_table = [], None, False
    for i, line in enumerate(text.splitlines()):
        stripped = line.strip()
        current = re.match(r"\.\. currentmodule:: ([\w.]+)$", stripped)
        if current:
            module = current.group(1)
        if stripped.startswith(".. "):
            in_table = stripped.startswith(".. autosummary::")
        elif in_table and line.startswith("   ") and re.fullmatch(r"~?[A-Za-z_][\w.]*", stripped):
            entries.append((i, f"{module}.{stripped.lstrip('~')}"))
    return entries


# -- Checks ----------------------------------------------------------------------------------------------
def _check_api_reference(app):
    """Warn (an error under -W) for every public name that api.rst does not list."""
    from sphinx.util import logging

    import seglosses.functional
    import seglosses.metrics

    listed = {name for _, name in _qualified_entries((HERE / "api.rst").read_text(encoding="utf-8"))}
    expected = {f"seglosses.functional.{n}" for n in seglosses.functional.__all__}
    expected |= {f"seglosses.metrics.{n}" for n in seglosses.metrics.__all__}
    expected |= {f"seglosses.{n}" for n in seglosses.__all__ if n not in seglosses.functional.__all__}
    logger = logging.getLogger(__name__)
    for name in sorted(expected - listed):
        logger.warning("public name %s is missing from docs/api.rst", name)
    for name in sorted(listed - expected):
        logger.warning("docs/api.rst lists %s, which is not a public name", name)


def _gallery_threads(app):
    """Run the gallery's examples with one torch thread (restored by :func:`_restore_threads` once they
    have run). Their models are tiny, and torch's threads that wait for each other slow down badly when
    the build shares the CPU with other work: on a busy 2-core machine the five examples took 17 s with
    one thread and 146 s with two."""
    import torch

    _saved_threads.append(torch.get_num_threads())
    torch.set_num_threads(1)


def _restore_threads(app):
    import torch

    torch.set_num_threads(_saved_threads.pop())


_saved_threads = []


def setup(app):
    app.connect("builder-inited", _check_api_reference)
    # sphinx-gallery runs the examples in a builder-inited listener of the default priority (500)
    app.connect("builder-inited", _gallery_threads, priority=400)
    app.connect("builder-inited", _restore_threads, priority=600)
