"""The torch engine: runs any attribx graph with torch's kernels, on the CPU or a GPU.

This module does not import torch at import time: attribx imports engine classes to build its
registry, and ``import attribx`` (or explaining on the numpy engine) must not pull in torch. torch is
imported the first time the engine touches an array.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import numpy as np

from attribx.engines import Engine
from attribx.errors import MethodError

_TORCH: Any = None


def _torch():
    """torch, imported on first use."""
    global _TORCH
    if _TORCH is None:
        import torch
        _TORCH = torch
    return _TORCH


@functools.lru_cache(maxsize=None)
def torch_dtype(dtype):
    """A torch dtype from a torch dtype, a numpy dtype (or type), or a name ("float32", "bfloat16")."""
    torch = _torch()
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if isinstance(named, torch.dtype):
            return named
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


def available_device(device):
    """``device`` as a ``torch.device`` that exists here, so that a missing GPU is one clear error up front
    rather than torch's at the first array."""
    torch = _torch()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MethodError(f"device {device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MethodError(f"device '{dev}': torch {torch.__version__} finds no CUDA GPU here "
                              f"(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MethodError(f"device '{dev}': torch finds {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MethodError(f"device '{dev}' is not available to torch here: {first}") from None
    return dev


def _has_zero(t) -> bool:
    """Whether a tensor holds a 0 (or -0.0): counting non-zeros reads it once, without the boolean tensor
    that ``(t == 0).any()`` writes first (about half the time on the CPU)."""
    return int(_torch().count_nonzero(t)) != t.numel()


class TorchEngine(Engine):
    """Runs graphs with torch, in the input's dtype, on ``device``.

    ``device=None`` follows the data: tensors handed to :meth:`asarray` stay where they are, and arrays
    converted afterwards go to the device of the last tensor seen (the CPU before any). A device given
    (``"cuda"``, ``"cuda:1"``, ``"cpu"``) moves everything there; it may also be set after construction
    (``engine.device = "cuda"``). ``dtype`` (torch or numpy dtype, or its name) casts converted arrays.
    """

    name = "torch"
    framework = "torch"

    def __init__(self, dtype: Any = None, device: Any = None):
        if device is not None:
            available_device(device)
        super().__init__(dtype=dtype, device=device)
        self._seen_device = None
        self._scalars: dict[tuple, Any] = {}

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} device={str(self.target_device())!r}>"

    # -- devices and parameters -------------------------------------------------------------------
    def target_device(self, like=None):
        """Where new arrays go: the device asked for, else ``like``'s, else the data's (CPU at first)."""
        torch = _torch()
        if self.device is not None:
            return torch.device(self.device)
        if isinstance(like, torch.Tensor):
            return like.device
        return self._seen_device if self._seen_device is not None else torch.device("cpu")

    def node_params(self, node, inputs: Sequence[Any] = ()) -> dict:
        """The node's parameters as tensors of the computation's dtype on its device (cached per both)."""
        torch = _torch()
        like = inputs[0] if inputs else None
        if isinstance(like, torch.Tensor):
            dtype = like.dtype if like.is_floating_point() else torch_dtype(self.dtype)
            device = like.device
        else:
            dtype = torch_dtype(self.dtype if like is None else self.dtype_of(like))
            device = self.target_device()
        return self._cached_params(node, (id(node), node.name, dtype, device),
                                   lambda: {k: self._convert(v, dtype, device, shared=True)
                                            for k, v in node.params.items()})

    # -- arrays -------------------------------------------------------------------------------------
    def _convert(self, x, dtype, device, shared=False):
        """numpy array (or scalar, or tensor) -> tensor of ``dtype`` (None: keep) on ``device``.

        ``shared``: the array is a parameter, which kernels only read, so a read-only one (a view of a torch
        model's weights, :meth:`attribx_torch.walker.Walker.param`) is used in place rather than copied."""
        torch = _torch()
        if isinstance(x, torch.Tensor):
            t = x.detach()
        else:
            a = np.asarray(x)
            if a.dtype == object:
                raise TypeError(f"cannot convert an array of python objects to a tensor: {a!r}")
            if not a.dtype.isnative:
                a = a.astype(a.dtype.newbyteorder("="))
            if any(s < 0 for s in a.strides) or not (a.flags.writeable or shared):
                a = a.copy()   # torch.from_numpy needs positive strides (and, for inputs, writable memory)
            if a.flags.writeable:
                t = torch.from_numpy(a)
            else:
                with warnings.catch_warnings():     # torch warns that it could write: parameters are only read
                    warnings.simplefilter("ignore", UserWarning)
                    t = torch.from_numpy(a)
        if dtype is not None and t.dtype != dtype:
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    def asarray(self, x, dtype=None):
        torch = _torch()
        dtype = torch_dtype(self.dtype if dtype is None else dtype)
        if isinstance(x, torch.Tensor) and self.device is None:
            self._seen_device = x.device    # follow the data
        return self._convert(x, dtype, self.target_device(x))

    def to_numpy(self, x) -> np.ndarray:
        torch = _torch()
        if not isinstance(x, torch.Tensor):
            return np.asarray(x)
        x = x.detach()
        if x.dtype in (torch.bfloat16,) or (x.dtype.is_floating_point and x.dtype.itemsize == 1):
            x = x.float()   # numpy has no bfloat16 / float8
        return x.cpu().contiguous().numpy()

    def dtype_of(self, x):
        torch = _torch()
        if isinstance(x, torch.Tensor):
            return x.dtype
        return torch_dtype(np.asarray(x).dtype)

    def _tensor(self, x, like=None):
        torch = _torch()
        if isinstance(x, torch.Tensor):
            return x
        return self._convert(x, None, self.target_device(like))

    def where(self, cond, a, b):
        torch = _torch()
        cond = self._tensor(cond, a if isinstance(a, torch.Tensor) else b)
        return torch.where(cond, a, b)

    def sign(self, x):
        """Sign with sign(0) = +1 (and -1 for NaN, as the numpy engine)."""
        torch = _torch()
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    def abs(self, x):
        return self._tensor(x).abs()

    def signum(self, x):
        return _torch().sign(self._tensor(x))

    def clip(self, x, low=None, high=None):
        torch = _torch()
        if low is None and high is None:
            return x
        return torch.clamp(self._tensor(x), low, high)

    def zeros_like(self, x):
        return _torch().zeros_like(self._tensor(x))

    def ones_like(self, x):
        return _torch().ones_like(self._tensor(x))

    def sum(self, x, axis=None, keepdims=False):
        x = self._tensor(x)
        if axis is None:
            s = x.sum()
            return s.reshape((1,) * x.dim()) if keepdims else s
        return x.sum(dim=axis, keepdim=keepdims)

    def argmax(self, x, axis=-1):
        return _torch().argmax(self._tensor(x), dim=axis)

    def one_hot(self, index, like):
        torch = _torch()
        index = torch.as_tensor(np.asarray(index) if not isinstance(index, torch.Tensor) else index,
                                dtype=torch.long, device=like.device)
        return torch.zeros_like(like).scatter_(1, index.reshape(-1, 1), 1)

    def isfinite_all(self, x) -> bool:
        return bool(_torch().isfinite(self._tensor(x)).all())

    def any_nonzero(self, x) -> bool:
        """Floating tensors: min and max in one vectorised pass (``any`` on floats is several times slower); a NaN
        counts as non-zero, as in ``any``."""
        x = self._tensor(x)
        if x.is_floating_point() and x.numel():
            lo, hi = _torch().aminmax(x)
            return not (bool(lo == 0) and bool(hi == 0))
        return bool(x.any())

    # -- rule helpers, fused ---------------------------------------------------------------------------
    def _scalar(self, value: float, like):
        """A 0-d tensor of ``like``'s dtype and device holding ``value`` (cached)."""
        key = (value, like.dtype, like.device)
        t = self._scalars.get(key)
        if t is None:
            t = self._scalars[key] = _torch().full((), value, dtype=like.dtype, device=like.device)
        return t

    def stabilize(self, z, epsilon: float):
        """z + epsilon * sign(z) with sign(0) = +1: the base class's numbers in three light passes.

        ``z + 0`` turns -0.0 into +0.0 (IEEE), so copysign gives +epsilon at both zeros (torch.where,
        avoided here, is about twenty times slower than a multiplication on the CPU)."""
        torch = _torch()
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            return super().stabilize(z, epsilon)
        return self._add_signed_epsilon(z + 0.0, epsilon)

    def _add_signed_epsilon(self, t, epsilon: float):
        """t + epsilon * sign(t), in ``t``, for a ``t`` without -0.0 (``z + 0`` made it), so that copysign gives
        +epsilon at zero."""
        return t.add_(_torch().copysign(self._scalar(float(epsilon), t), t))

    def divide_stabilized_into(self, num, den, epsilon: float):
        """num / (den + epsilon * sign den) computed in ``den`` (a temporary): ``den + 0`` in place, then one
        array for the signed epsilon, where :meth:`stabilize` needs two (large arrays cost an allocation each)."""
        torch = _torch()
        if not (self._reusable(den, num) and den.is_floating_point()):
            return self.divide_stabilized(num, den, epsilon)
        return torch.div(num, self._add_signed_epsilon(den.add_(0.0), epsilon), out=den)

    def where_positive(self, ref, x):
        """x where ref > 0, else 0, with ReLU's backward kernel: one pass, no boolean mask (torch.where on
        the CPU is about twenty times slower than a multiplication)."""
        if self._same_float(x, ref):
            return _torch().ops.aten.threshold_backward(x, ref, 0)
        return super().where_positive(ref, x)

    def where_negative(self, ref, x):
        """x where ref < 0, else 0, with hardtanh's backward kernel (x where −∞ < ref < 0): one pass."""
        torch = _torch()
        if self._same_float(x, ref):
            return torch.ops.aten.hardtanh_backward(x, ref, float("-inf"), 0.0)
        return super().where_negative(ref, x)

    def stack_by_sign(self, ref, x, axis: int):
        """Both halves written straight into the stacked array by the two masks' kernels (no copy)."""
        torch = _torch()
        if not self._same_float(x, ref):
            return None
        shape = list(x.shape)
        n = shape[axis]
        shape[axis] = 2 * n
        out = x.new_empty(shape)
        torch.ops.aten.threshold_backward.grad_input(x, ref, 0, grad_input=out.narrow(axis, 0, n))
        torch.ops.aten.hardtanh_backward.grad_input(x, ref, float("-inf"), 0.0, grad_input=out.narrow(axis, n, n))
        return out

    def any_where_nonpositive(self, ref, x) -> bool:
        """x − (x where ref > 0), written into the masked copy, then :meth:`any_nonzero`: two light passes."""
        torch = _torch()
        if self._same_float(x, ref):
            t = torch.ops.aten.threshold_backward(x, ref, 0)
            return self.any_nonzero(torch.sub(x, t, out=t))
        return super().any_where_nonpositive(ref, x)

    def scale_negative(self, x, factor: float):
        torch = _torch()
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return torch.nn.functional.leaky_relu(x, float(factor))
        return super().scale_negative(x, factor)

    def copysign_into(self, a, ref):
        if self._reusable(a, ref) and a.is_floating_point():
            return _torch().copysign(a, ref, out=a)
        return super().copysign_into(a, ref)

    def positive_plus_into(self, x, epsilon: float):
        torch = _torch()
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad:
            return x.clamp_min_(0).add_(float(epsilon))
        return super().positive_plus_into(x, epsilon)

    @staticmethod
    def _same_float(x, ref) -> bool:
        torch = _torch()
        return (isinstance(x, torch.Tensor) and isinstance(ref, torch.Tensor) and x.shape == ref.shape
                and x.dtype == ref.dtype and x.is_floating_point())

    @staticmethod
    def _reusable(temp, other) -> bool:
        """Whether a result of ``temp`` and ``other`` may be written into ``temp`` (a temporary): ``other`` of
        temp's dtype and shape, or broadcast to it (a bias)."""
        torch = _torch()
        if not (isinstance(temp, torch.Tensor) and isinstance(other, torch.Tensor)
                and temp.dtype == other.dtype and not temp.requires_grad):
            return False
        if temp.shape == other.shape:
            return True
        try:
            return torch.broadcast_shapes(temp.shape, other.shape) == temp.shape
        except RuntimeError:
            return False

    def divide_into(self, num, den):
        """num / den written into ``den`` (a temporary): large activations cost an allocation each."""
        if self._reusable(den, num):
            return _torch().div(num, den, out=den)
        return num / den

    def multiply_into(self, a, b):
        """a * b written into ``a`` (a temporary)."""
        if self._reusable(a, b):
            return a.mul_(b)
        return a * b

    def add_scaled_into(self, a, b, alpha: float):
        """a + alpha * b written into ``b`` (a temporary), in one pass (``a`` a tensor of b's shape or a number)."""
        torch = _torch()
        if isinstance(a, (int, float)) and isinstance(b, torch.Tensor) and b.is_floating_point() \
                and not b.requires_grad:
            return torch.add(self._scalar(float(a), b), b, alpha=alpha, out=b)
        if self._reusable(b, a):
            return torch.add(a, b, alpha=alpha, out=b)
        return a + alpha * b

    def vacate(self, x):
        """The tensor itself with its storage dropped (``set_()``: an empty tensor), for a tensor that owns its
        whole storage (else None). :meth:`recompute` points it at the new values: the max pool's indices, kept
        by the identity of its input (``kernels._MAX_INDICES``), are then found again."""
        torch = _torch()
        if not isinstance(x, torch.Tensor) or x.requires_grad or x._base is not None or x.is_meta \
                or x.untyped_storage().nbytes() != x.numel() * x.element_size():
            return None
        return x.set_()

    def recompute(self, node, inputs: Sequence[Any], params: dict, shell=None):
        """The forward kernel's value, in ``shell`` where given (the same tensor object, holding new storage)."""
        value = self.forward(node, inputs, params)
        if shell is None or not isinstance(value, _torch().Tensor) or value.dtype != shell.dtype \
                or value.device != shell.device:
            return value
        return shell.set_(value)

    releases_values = True

    def shape_stub(self, x):
        """A tensor on torch's "meta" device: shape and dtype, no memory; any kernel reading it with real tensors
        raises."""
        torch = _torch()
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.is_meta:
            return torch.empty(x.shape, dtype=x.dtype, device="meta")
        return None

    def has_zero(self, x) -> bool:
        torch = _torch()
        return _has_zero(x) if isinstance(x, torch.Tensor) else super().has_zero(x)

    def where_nonzero(self, ref, x):
        """``x`` where ``ref`` is not 0, else 0; on the CPU the ``where`` runs only when some ref is 0 (as
        :meth:`safe_divide`). A shape stub (:meth:`shape_stub`) stands for a value tested free of zeros."""
        torch = _torch()
        if not isinstance(ref, torch.Tensor) or not isinstance(x, torch.Tensor):
            return super().where_nonzero(ref, x)
        if ref.is_meta:
            return x
        if ref.device.type == "cpu" and not _has_zero(ref):
            return x
        return torch.where(ref == 0, 0.0, x)

    def safe_divide(self, num, den):
        """num / den, and 0 where den is 0. On the CPU the division runs alone and ``where`` only when some den
        is 0 (rare outside masks; ``where`` costs several divisions); on a GPU always ``where`` (no sync)."""
        torch = _torch()
        if not isinstance(den, torch.Tensor) or not isinstance(num, torch.Tensor):
            return super().safe_divide(num, den)
        if den.device.type == "cpu" and not _has_zero(den):
            return num / den
        return torch.where(den == 0, 0.0, num / den)
