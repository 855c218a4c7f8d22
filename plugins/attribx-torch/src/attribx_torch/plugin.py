"""Hook implementations: the only place attribx and this backend meet."""
from __future__ import annotations

from attribx import hookimpl


def _is_torch_module(model) -> bool:
    """True for nn.Module instances, checked by class path so that torch is not imported for others."""
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


@hookimpl
def attribx_engines():
    from .engine import TorchEngine
    return [TorchEngine]


@hookimpl
def attribx_kernels(engine):
    if engine != "torch":
        return None
    from .kernels import KERNELS
    return dict(KERNELS)


@hookimpl
def attribx_model_types():
    return {"torch.nn.Module": "traced by torch.fx with one example input, shaped like the data or input_shape="}


@hookimpl
def attribx_translate(model, input_shape):
    if not _is_torch_module(model):
        return None
    from .translate import translate_module
    return translate_module(model, input_shape)
