"""Leaving the user's model exactly as it was: its mode, attributes, tables and parameter values.

A translation runs the model (tracing, one example forward pass) as in eval mode without calling its own
``train()``/``eval()``, and restores everything afterwards, also when the translation fails
(:func:`untouched`). :func:`fingerprint` is what a cached translation depends on.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from attribx.errors import ModelModeWarning, UnsupportedError


def model_dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            if t.dtype in (torch.float32, torch.float64):
                return t.dtype
            raise UnsupportedError(
                f"{type(model).__name__} has {t.dtype} parameters; attribx graphs are float32 or float64 "
                f"(convert with model.float())")
    return torch.float32


def warn_if_training(model: nn.Module, stacklevel: int) -> None:
    """A warning that a model (or some of its modules) in training mode is explained as in eval mode."""
    modules = dict(model.named_modules())
    training = [name for name, m in modules.items() if m.training]
    if training:
        cls = type(model).__name__
        which = (f"{cls} is in training mode" if len(training) == len(modules) else
                 f"{cls} has modules in training mode ({_few([a or '(the model)' for a in training])})")
        warnings.warn(
            f"{which}; attribx explains it as in eval mode: dropout off, batch norm with its running statistics; "
            f"the model's own mode is left as it is (call model.eval() to silence this)", ModelModeWarning,
            stacklevel=stacklevel + 1)


def as_in_eval_mode(model: nn.Module) -> None:
    """Eval mode without calling the model's own train()/eval() (inside :func:`untouched`, which restores it)."""
    for m in model.modules():
        m.training = False


def _few(names, n: int = 3) -> str:
    shown = ", ".join(repr(a) for a in names[:n])
    return shown + (f" and {len(names) - n} more modules" if len(names) > n else "")


class CopyOnWrite(TorchDispatchMode):
    """Keeps a copy of every parameter or buffer of the model before an op first writes to it (a batch norm
    updating its statistics, ``self.count.add_(1)``, ``nn.Embedding(max_norm=...)`` renormalising rows), so that
    the writes can be undone. Only what is written is copied."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # nothing here is compiled: without this, torch wraps __torch_dispatch__ in torch._dynamo.disable, which
        # imports torch._dynamo (seconds, and it probes for onnx and other frameworks) at the first translation
        return False

    def __init__(self, tensors):
        super().__init__()
        self.owned: dict[int, list] = {}
        for t in tensors:
            key = _storage_key(t)
            if key is not None:
                group = self.owned.setdefault(key, [])
                if not any(t is u for u in group):
                    group.append(t)
        self.saved: dict[int, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        schema = getattr(func, "_schema", None)
        if schema is not None and self.owned:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is None or not a.alias_info.is_write:
                    continue
                v = args[i] if i < len(args) and not a.kwarg_only else kwargs.get(a.name)
                for t in (v if isinstance(v, (list, tuple)) else (v,)):
                    if isinstance(t, torch.Tensor):
                        self._save(t)
        return func(*args, **kwargs)

    def _save(self, t):
        key = _storage_key(t)
        if key is None or key in self.saved or key not in self.owned:
            return
        self.saved[key] = [(u, u.detach().clone()) for u in self.owned[key]]

    def restore(self):
        with torch.no_grad():
            for pairs in self.saved.values():
                for t, old in pairs:
                    if t.is_inference():
                        with torch.inference_mode():
                            t.copy_(old)
                    else:
                        t.detach().copy_(old)
        self.saved.clear()


def _storage_key(t) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:       # pragma: no cover - tensors without storage (sparse, meta)
        return None


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Runs the translation (tracing and the example forward pass) and then leaves the model as it was: every
    module's attributes (training flags and Python values a forward updates, e.g. ``self.calls += 1``), the
    contents of its parameter, buffer, submodule and hook tables, and the values of its parameters and buffers
    (written ones are copied first, see :class:`CopyOnWrite`), also when the translation raises."""
    modules = list(model.modules())
    attrs = [(m, dict(vars(m)), {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)})
             for m in modules]
    guard = CopyOnWrite([*model.parameters(), *model.buffers()])
    try:
        with guard:
            yield
    finally:
        guard.restore()
        for m, d, tables in attrs:
            now = vars(m)
            for k, table in tables.items():
                t = d[k]
                if t.keys() != table.keys() or any(t[a] is not table[a] for a in table):
                    t.clear()
                    t.update(table)
            if now.keys() != d.keys() or any(now[a] is not d[a] for a in d):
                now.clear()
                now.update(d)


def _simple(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_simple(a) for a in v)
    return isinstance(v, (int, float, str, bool, type(None), torch.dtype))


def fingerprint(model: nn.Module):
    """What a cached graph depends on: the modules, their settings, and every parameter and buffer.

    In-place updates under ``torch.no_grad()`` bump a tensor's version, replacing one changes its data
    pointer, and writes through ``.data`` (which bump nothing) change its checksum.
    """
    structure = []
    for name, m in model.named_modules(remove_duplicate=False):
        attrs = tuple(sorted((k, v) for k, v in vars(m).items()
                             if not k.startswith("_") and k != "training" and _simple(v)))
        structure.append((name, type(m), id(m), attrs))
    tensors = [t for _, t in model.named_parameters(remove_duplicate=False)] + \
              [t for _, t in model.named_buffers(remove_duplicate=False)]
    meta = tuple((t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device) for t in tensors)
    by_device: dict = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append(t.detach().sum().to(torch.float64))
    checksum = b"".join(torch.stack(v).cpu().numpy().tobytes() for v in by_device.values())
    return tuple(structure), meta, checksum


def same_fingerprint(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
