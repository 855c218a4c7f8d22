"""Progress bars for long loops (explain batches, evaluator forward passes, text rendering, training).

tqdm is optional: without it, or off a terminal, the loop runs silently.
"""
from __future__ import annotations

import sys
from typing import Iterable


def progress(iterable: Iterable, total: int, desc: str, enabled: bool | None = None):
    """A tqdm bar when tqdm is installed and stderr is a terminal (or ``enabled`` says so)."""
    if enabled is None:
        enabled = total > 1 and sys.stderr.isatty()
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm     # optional dependency: imported only when a bar is shown
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc)
