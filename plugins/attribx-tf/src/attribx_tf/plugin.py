"""Hook implementations: the only place attribx and this backend meet."""
from __future__ import annotations

from attribx import hookimpl


def is_keras_model(model) -> bool:
    """True for Keras 3 layers and models, checked by class path so that keras is not imported for others."""
    return any(c.__module__.startswith(("keras.", "tf_keras.")) and c.__name__ in ("Layer", "Model")
               for c in type(model).__mro__)


@hookimpl
def attribx_engines():
    from .engine import TensorFlowEngine
    return [TensorFlowEngine]


@hookimpl
def attribx_kernels(engine):
    if engine != "tensorflow":
        return None
    from .kernels import KERNELS
    return dict(KERNELS)


@hookimpl
def attribx_translate(model, input_shape):
    if not is_keras_model(model):
        return None
    from .translate import translate_keras
    return translate_keras(model, input_shape)


@hookimpl
def attribx_model_types():
    return {"keras.Model": "Keras 3 models, Sequential or functional (nested ones too), and single layers"}


@hookimpl
def attribx_load_model(path):
    if not str(path).endswith((".keras", ".h5")):
        return None
    import keras
    return keras.saving.load_model(str(path), compile=False)


@hookimpl
def attribx_model_formats():
    return {".keras": "Keras 3 model file (keras.saving)", ".h5": "legacy Keras HDF5 model file"}
