"""The built docs (tox -e core builds them first): every gallery example drew its pictures, the CLI and API pages exist.

Runs after ``sphinx-build`` in the tox ``docs`` environment, which points ``ATTRIBX_DOCS_HTML`` at the
output; elsewhere it is skipped (building the site takes a minute).
"""
from __future__ import annotations

import os
import pathlib

import pytest

HTML = os.environ.get("ATTRIBX_DOCS_HTML")
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
pytestmark = pytest.mark.skipif(not HTML, reason="set ATTRIBX_DOCS_HTML to a built site (tox -e core)")

EXAMPLES = sorted(p.stem for p in (DOCS / "gallery").glob("plot_*.py"))


def test_there_are_gallery_examples():
    assert {"plot_digits_heatmaps", "plot_pixel_flipping", "plot_spray", "plot_text_heatmap"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_example_drew_a_picture_that_its_page_shows(example):
    plt = pytest.importorskip("matplotlib.pyplot")
    html = pathlib.Path(HTML)
    images = sorted((html / "_images").glob(f"sphx_glr_{example}_[0-9]*.png"))
    assert images, f"{example}: no image in {html / '_images'}"
    page = (html / "auto_examples" / f"{example}.html").read_text(encoding="utf-8")
    for image in images:
        assert image.name in page
        pixels = plt.imread(image)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels[..., :3].std() > 0.05, f"{image.name} is blank"     # not one flat colour


def test_the_markdown_pages_are_part_of_the_site():
    html = pathlib.Path(HTML)
    index = (html / "index.html").read_text(encoding="utf-8")
    for md in DOCS.glob("*.md"):
        if md.stem != "index":
            assert (html / f"{md.stem}.html").is_file(), md.name
            assert f'href="{md.stem}.html"' in index, f"{md.name} is not in the index's toctree"


def test_cli_page_shows_every_subcommand_and_api_pages_exist():
    import argparse

    from attribx.cli import build_parser

    page = (pathlib.Path(HTML) / "guide" / "cli.html").read_text(encoding="utf-8")
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in subs.choices:
        assert f"attribx {name}" in page
    assert "--output" in page
    generated = pathlib.Path(HTML) / "reference" / "generated"
    for module in ("attribx.graph", "attribx.composite", "attribx.evaluators.spray", "attribx.textviz"):
        assert (generated / f"{module}.html").is_file(), module
