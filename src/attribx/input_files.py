"""Arrays from .npy and .npz files (inputs, labels, targets), read without pickle.

The command line and the renderer read user files through these, so a file that needs pickle (it could
run code) or holds no batch axis gets the same clear refusal everywhere.
"""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError

INPUT_KEYS = ("x", "inputs", "input", "images", "data")
LABEL_KEYS = ("labels", "label", "y")


def _array(path: str, data, key: str, what: str = "array") -> np.ndarray:
    """``data[key]`` of an open .npz file; an object array (which needs pickle, never loaded) is refused."""
    try:
        return data[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(f"{path}: {what} {key!r} holds Python objects (dtype object), which attribx does not "
                             f"load (it would run pickled code); save a numeric array") from None
        raise InputError(f"{path}: {what} {key!r} cannot be read ({err})") from None


def load_array(path: str):
    """np.load without pickle; an object .npy (which needs pickle) and a file that is no array are refused."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise InputError(f"{path}: holds Python objects (dtype object), which attribx does not load (it would "
                             f"run pickled code); save a numeric array") from None
        raise InputError(f"{path}: not a .npy/.npz array file ({err})") from None
    except Exception as err:
        raise InputError(f"{path}: not a .npy/.npz array file ({err})") from None


def read_target(path: str) -> np.ndarray:
    """One class index per sample from a .npy file (or an .npz file holding one array)."""
    data = load_array(path)
    if isinstance(data, np.ndarray):
        return data
    with data:
        if len(data.files) != 1:
            raise InputError(f"--target {path}: holds {list(data.files)}; give a .npy file (or an .npz with one "
                             f"array) of one class index per sample")
        return _array(path, data, data.files[0])


def require_batch_axis(path: str, x: np.ndarray) -> np.ndarray:
    """``x``, refused when it is a single number (inputs need a batch axis first)."""
    if x.ndim == 0:
        raise InputError(f"{path}: holds a single number (a 0-d array); inputs need a batch axis first, "
                         f"e.g. shape (N, features)")
    return x


def read_inputs(path: str, key: str | None = None, labels_key: str | None = None):
    """Inputs (and labels, when the file has them) from a .npy or .npz file."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file")
    data = load_array(path)
    if isinstance(data, np.ndarray):
        for flag, value in (("--key", key), ("--labels-key", labels_key)):
            if value is not None:
                raise InputError(f"{flag} {value!r}: {path} is a .npy file, which holds one array (no names); "
                                 f"{flag} picks an array of an .npz file: leave it out")
        return require_batch_axis(path, data), None
    with data:
        keys = list(data.files)
        if key is None:
            key = next((k for k in INPUT_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise InputError(f"{path}: holds {keys}; choose the inputs with --key")
        if key not in keys:
            raise InputError(f"{path}: no array {key!r}; it holds {keys}")
        lk = labels_key or next((k for k in LABEL_KEYS if k in keys), None)
        if labels_key is not None and labels_key not in keys:
            raise InputError(f"{path}: no array {labels_key!r} (--labels-key); it holds {keys}")
        labels = _array(path, data, lk, "labels") if lk in keys else None
        return require_batch_axis(path, _array(path, data, key)), labels
