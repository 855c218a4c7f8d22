"""Hook implementations: the only place attribx and this backend meet."""
from __future__ import annotations

import os
import zipfile

from attribx import hookimpl
from attribx.errors import ModelLoadError

from .engine import TensorFlowEngine     # imports tensorflow only when the engine is built


def is_keras_model(model) -> bool:
    """True for Keras 3 layers and models, checked by class path so that keras is not imported for others."""
    return any(c.__module__.startswith(("keras.", "tf_keras.")) and c.__name__ in ("Layer", "Model")
               for c in type(model).__mro__)


@hookimpl
def attribx_engines():
    return [TensorFlowEngine]


@hookimpl
def attribx_kernels(engine):
    if engine != "tensorflow":
        return None
    from .kernels import KERNELS       # imports tensorflow: only once the engine is used
    from .kernels_transformer import KERNELS as TRANSFORMER_KERNELS
    from .kernels_vision import KERNELS as VISION_KERNELS
    return {**KERNELS, **TRANSFORMER_KERNELS, **VISION_KERNELS}


@hookimpl
def attribx_translate(model, input_shape, converters):
    if not is_keras_model(model):
        return None
    from .translate import translate_keras   # imports keras: only once a Keras model is translated
    return translate_keras(model, input_shape, converters)


@hookimpl
def attribx_model_types():
    return {"keras.Model": "Keras 3 models, Sequential or functional (nested ones too), and single layers"}


@hookimpl
def attribx_load_model(path):
    if not str(path).endswith((".keras", ".h5")):
        return None
    path = str(path)
    if path.endswith(".keras"):
        size = os.path.getsize(path) if os.path.isfile(path) else None
        if size == 0:
            raise ModelLoadError(f"{path}: the file is empty, not a Keras model (a .keras file is a zip archive)")
        if size is not None and not zipfile.is_zipfile(path):
            raise ModelLoadError(f"{path}: not a Keras model file: no zip archive (a .keras file is one), the file "
                                 f"is damaged or truncated")
    import keras
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:   # noqa: BLE001 - Keras raises ValueError/TypeError/zip errors alike
        msg = " ".join(str(err).split())
        if "Lambda" in msg and "safe_mode" in msg:
            raise ModelLoadError(
                f"{path}: the model holds a Keras Lambda layer (a Python function stored in the file), which Keras "
                f"loads only with safe_mode=False, that is by running code from the file; attribx has no "
                f"translation for Lambda layers either: rebuild the model with built-in layers or a custom layer "
                f"(docs/keras.md)") from None
        if isinstance(err, (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError)):
            raise ModelLoadError(f"{path}: cannot read the Keras model file ({type(err).__name__}: "
                                 f"{msg[:200]}); the file is damaged or not a Keras model") from None
        raise


@hookimpl
def attribx_model_formats():
    return {".keras": "Keras 3 model file (keras.saving)", ".h5": "legacy Keras HDF5 model file"}
