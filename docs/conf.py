"""Sphinx configuration for the attribx docs.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (tox: ``tox -e docs``).
The Markdown pages (docs/*.md) are read by myst-parser as they are; the gallery (docs/gallery/*.py)
runs at build time with sphinx-gallery on tiny numpy models, so no framework is needed.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))          # the checkout's attribx, installed or not
sys.path.insert(0, HERE)                                      # _ext.scrapers
os.environ.setdefault("MPLBACKEND", "Agg")

import attribx  # noqa: E402

project = "attribx"
author = "the attribx authors"
copyright = "the attribx authors"
release = attribx.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "gallery", "**.ipynb_checkpoints"]

# Markdown: $...$ maths, ::: fences, and headings as link targets (docs link "page.md#section")
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# The Markdown pages link to source files beside docs/ (../src/..., ../tests/...), which are not pages
# of the site; myst reports each as a missing cross-reference. They are fine on GitHub, so they stay.
# Type hints name classes by the short name that several modules re-export (rules.NodeContext is
# rules.base.NodeContext); Sphinx then finds "more than one target", which is the same class.
suppress_warnings = ["myst.xref_missing", "ref.python"]

# a package page documents what is defined in it; what it re-exports from its submodules (listed in its
# __all__) is documented once, on the submodule's page (attribx.evaluators.word_deletion is both a module
# and the function it exports, and would be described twice)
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False,
                           "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_mock_imports = ["torch", "tensorflow", "keras", "onnx", "onnxruntime"]
autosummary_generate = True
autosummary_imported_members = False
napoleon_google_docstring = True
napoleon_numpy_docstring = True

html_theme = "furo"
html_title = f"attribx {release}"
html_static_path: list[str] = ["_static"]

sphinx_gallery_conf = {
    "examples_dirs": "gallery",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("_ext.scrapers.figures",),   # pyplot's figures and attribx's own (Agg) ones
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "write_computation_times": False,
    "line_numbers": False,
    "reference_url": {"attribx": None},
}


# ---- the command line: every subcommand's --help, from the argparse parser itself -------------------

from docutils import nodes  # noqa: E402
from docutils.parsers.rst import Directive  # noqa: E402


class AttribxCli(Directive):
    """``.. attribx-cli::`` inserts ``attribx --help`` and each subcommand's help, as the parser prints them."""

    has_content = False

    def run(self):
        import argparse

        from attribx.cli import build_parser

        parser = build_parser()
        os.environ["COLUMNS"] = "86"                # fits the page's code width
        def block(text):
            node = nodes.literal_block(text=text)
            node["language"] = "text"
            return node

        out = [block(parser.format_help())]
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for action in subs:
            for name, sub in action.choices.items():
                out.append(nodes.rubric(text=f"attribx {name}", ids=[f"attribx-{name}"]))
                out.append(block(sub.format_help()))
        return out


# ---- docstrings are written as plain text: |x| is an absolute value, not a reST substitution ------------

import re  # noqa: E402

_LITERAL = re.compile(r"(``.+?``)")


def _escape_bars(app, what, name, obj, options, lines):
    """Escape ``|`` outside inline literals (and line-block markers), so ``|R|`` reads as written."""
    for i, line in enumerate(lines):
        if "|" not in line:
            continue
        body = line.lstrip()
        indent = line[: len(line) - len(body)]
        lead = ""
        if body.startswith("| ") or body == "|":                 # a reST line block: keep the marker
            lead, body = body[:1], body[1:]
        parts = _LITERAL.split(body)
        lines[i] = indent + lead + "".join(p if k % 2 else p.replace("|", "\\|") for k, p in enumerate(parts))


def setup(app):
    app.add_directive("attribx-cli", AttribxCli)
    app.connect("autodoc-process-docstring", _escape_bars)
