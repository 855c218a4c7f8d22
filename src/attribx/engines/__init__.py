"""Engines run a graph on one array library; see :mod:`attribx.engines.base` for the interface."""
from .base import Engine, Kernel

__all__ = ["Engine", "Kernel"]
