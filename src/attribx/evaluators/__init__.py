"""Evaluators: measure how good relevance is (pixel flipping, region perturbation, ...).

Every evaluator is called the same way, ``attribx.evaluate(name, model, inputs, relevance, **params)``,
and returns an ``xarray.Dataset`` with provenance attrs that :func:`attribx.save` writes to HDF5.
The shared machinery is in :mod:`attribx.evaluators.base`.
"""
from __future__ import annotations
