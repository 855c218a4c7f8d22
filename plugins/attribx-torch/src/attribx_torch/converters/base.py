"""The one converter table of the torch backend, and what several converter families share."""
from __future__ import annotations

from attribx.translation import ConverterTable

from ..values import Swapped

#: every built-in torch converter, registered where it is written
TABLE = ConverterTable("torch")


def graph_value(ctx, x):
    """The batch-first graph value of x (of a time-major view: the value it views)."""
    return ctx.base(x) if isinstance(x, Swapped) else ctx.tensor(x)
