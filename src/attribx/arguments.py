"""Values written as text (command-line options, benchmark specs): parameters as JSON, explain targets."""
from __future__ import annotations

import json
import os
from typing import Sequence

from .errors import InputError
from .input_files import read_target


def parse_value(text: str, name: str = ""):
    """Parameter values as JSON (numbers, lists, true/false/null), else as plain strings; a value that
    starts as a JSON list or object but is not one is refused (it was not meant as a string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        if text.startswith(("[", "{")):
            raise InputError(f"--param {name}={text}: not a valid JSON list or object ({err.msg}); write e.g. "
                             f"{name}=[0.1, 0.2]") from None
        return text


def parse_params(items: Sequence[str]) -> dict:
    params = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--param {item!r}: write name=value, e.g. --param epsilon=0.25")
        params[name.strip()] = parse_value(value.strip(), name.strip())
    return params


def parse_target(text: str):
    if text == "predicted":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    if os.path.exists(text):
        return read_target(text)
    raise InputError(f"--target {text!r}: give a class index, 'predicted', or a .npy file of indices")
