"""Evaluators: measure how good relevance is (pixel flipping, region perturbation, ...).

Every evaluator is called the same way, ``attribx.evaluate(name, model, inputs, relevance, **params)``,
and returns an ``xarray.Dataset`` with provenance attrs that :func:`attribx.save` writes to HDF5.
The shared machinery is in :mod:`attribx.evaluators.base`; ``docs/evaluators.md`` describes each one.
"""
from __future__ import annotations

from .perturbation import pixel_flipping, region_perturbation
from .plots import plot_accuracy, plot_curves, plot_result
from .word_deletion import word_deletion

#: The evaluators attribx registers through the ``attribx_evaluators`` hook (see :mod:`attribx.builtin`).
BUILTIN_EVALUATORS = {
    "pixel_flipping": pixel_flipping,
    "region_perturbation": region_perturbation,
}

__all__ = ["BUILTIN_EVALUATORS", "pixel_flipping", "region_perturbation", "plot_curves", "plot_result",
           "word_deletion", "plot_accuracy"]
