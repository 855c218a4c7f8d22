"""Hook implementations: the only place attribx and this backend meet."""
from __future__ import annotations

from attribx import hookimpl
from attribx.inputs import first_shape

from .engine import TorchEngine     # imports torch only when the engine first touches an array


def _is_torch_module(model) -> bool:
    """True for nn.Module instances, checked by class path so that torch is not imported for others."""
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def _is_exported_program(model) -> bool:
    """True for torch.export's ExportedProgram, checked by class path as above."""
    return any(c.__module__.startswith("torch.export") and c.__name__ == "ExportedProgram"
               for c in type(model).__mro__)


@hookimpl
def attribx_engines():
    return [TorchEngine]


@hookimpl
def attribx_kernels(engine):
    if engine != "torch":
        return None
    from .kernels import KERNELS       # imports torch: only once the torch engine is used
    from .kernels_transformer import KERNELS as TRANSFORMER_KERNELS
    from .kernels_vision import KERNELS as VISION_KERNELS
    return {**KERNELS, **TRANSFORMER_KERNELS, **VISION_KERNELS}


@hookimpl
def attribx_model_types():
    return {"torch.nn.Module": "traced by torch.fx with one example input, shaped like the data or input_shape=",
            "torch.export.ExportedProgram": "a torch.export program (aten ops of CNNs and MLPs)"}


@hookimpl
def attribx_translate(model, input_shape, converters):
    # torch is imported only for torch models
    if _is_exported_program(model):
        from .export import translate_program
        return translate_program(model, first_shape(input_shape), converters)   # further inputs: masks
    if not _is_torch_module(model):
        return None
    from .translate import translate_module
    return translate_module(model, input_shape, converters)


@hookimpl
def attribx_model_formats():
    return {".pt2": "a torch.export program (torch.export.save)"}


@hookimpl
def attribx_load_model(path):
    if not str(path).endswith(".pt2"):
        return None
    from .export import load_program
    return load_program(path)
