"""A sphinx-gallery image scraper for matplotlib figures that pyplot does not manage.

attribx's plots (``plot_curves``, ``plot_accuracy``, ...) draw on a ``matplotlib.figure.Figure`` with the
Agg canvas and never touch pyplot, so the standard matplotlib scraper (which asks pyplot for its figures)
does not see them. This one saves every such figure that an example's globals hold, once, then lets the
standard scraper do pyplot's figures.
"""
from __future__ import annotations

_SAVED: list = []          # the figures already saved (kept, so their ids are never reused)


def figures(block, block_vars, gallery_conf):
    from matplotlib.figure import Figure
    from sphinx_gallery.scrapers import figure_rst, matplotlib_scraper

    paths = []
    for value in list(block_vars["example_globals"].values()):
        if not isinstance(value, Figure) or any(value is f for f in _SAVED):
            continue
        _SAVED.append(value)
        if value.canvas.manager is None:        # pyplot's own are saved (and closed) by matplotlib_scraper
            path = next(block_vars["image_path_iterator"])
            value.savefig(path, dpi=100, bbox_inches="tight")
            paths.append(path)
    rst = figure_rst(paths, gallery_conf["src_dir"]) if paths else ""
    return rst + matplotlib_scraper(block, block_vars, gallery_conf)
