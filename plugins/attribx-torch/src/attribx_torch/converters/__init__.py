"""The torch backend's converters, one module per family, all registered in one table (:data:`TABLE`).

A function converter is called as ``convert(ctx, **arguments)`` with the torch call's arguments by name
(:mod:`attribx_torch.signatures`); a module converter as ``convert(ctx, module, *args, **kwargs)``; a tensor
method is the target ``"method:<name>"``. Arguments computed from the model input arrive as the values of
:mod:`attribx_torch.values`, everything else as torch traced it. Options on a registration:
``time_major="elementwise"`` (run on the batch-first values of time-major views) or ``"aware"`` (handles
them itself), ``batch_args_ok`` (arguments may depend on the batch size), ``multiple`` (an aten op returning
a tuple whose first item the graph holds).
"""
from . import transformer, swin  # noqa: F401  (issue 19's families; they register)
from .base import TABLE
from . import layers, elementwise, reductions, shape, pooling, recurrent, aten, aten_transformer  # noqa: F401  (they register)
from . import masks  # noqa: F401  (masks from mask inputs; registers)

__all__ = ["TABLE"]
