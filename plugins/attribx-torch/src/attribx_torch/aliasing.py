"""Aliasing of torch.fx values, for in-place ops (issue 17 point 1).

The attribx graph has no aliasing: the translator maps every fx value to the graph node made when the value
was created. An in-place op changes a tensor's storage, and with it every other tensor sharing that storage
(the tensor itself, its views, its base, views of its base). A value that shares the storage, was created
before the in-place op and is read after it would see the change in torch but not in the graph: such models
are refused with one line naming the in-place op, its node, the earlier alias and the node reading it.

Aliasing is taken from two sources, and a value aliases another when either says so:

- the ops: results of view-producing (or possibly view-producing) ops alias their first argument, and the
  result of an in-place op aliases the tensor it modifies;
- the recorded forward pass: values whose storages are the same (covers ops missing from the list).
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

#: tensor methods and functions (by name) whose result is, or may be, a view of their first argument
VIEW_OPS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "narrow", "select", "transpose",
    "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "T", "mT", "H", "mH", "adjoint", "expand",
    "expand_as", "squeeze", "unsqueeze", "split", "split_with_sizes", "tensor_split", "hsplit", "vsplit",
    "dsplit", "chunk", "unbind", "detach", "detach_", "contiguous", "as_strided", "diagonal", "real", "imag",
    "view_as_real", "view_as_complex", "unfold", "alias", "data", "getitem", "to", "type", "type_as",
    "float", "double", "half", "bfloat16", "cpu", "cuda", "clone_if_needed", "align_to", "refine_names",
    "rename", "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_to", "ravel", "dropout", "alpha_dropout",
    "feature_alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "identity", "requires_grad_",
})
#: modules that return their input (or a view of it) in eval mode
VIEW_MODULES = frozenset({"Identity", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                          "AlphaDropout", "FeatureAlphaDropout"})
#: reading these does not read a tensor's values
METADATA_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset",
                              "is_contiguous", "element_size", "get_device"})
METADATA_ATTRS = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"})


def op_name(n: fx.Node, root) -> str:
    if n.op == "call_method":
        return str(n.target)
    if n.op == "call_module":
        return type(root.get_submodule(n.target)).__name__
    if n.op == "call_function":
        if n.target is getattr:
            return str(n.args[1]) if len(n.args) > 1 else "getattr"
        if n.target is operator.getitem:
            return "getitem"
        return getattr(n.target, "__name__", str(n.target))
    return n.op


def reads_values(u: fx.Node) -> bool:
    """Whether node ``u`` reads the values of its tensor arguments (not only their shape or dtype)."""
    if u.op == "call_method" and u.target in METADATA_METHODS:
        return False
    if u.op == "call_function" and u.target is getattr and len(u.args) > 1 and u.args[1] in METADATA_ATTRS:
        return False
    return True


class Aliases:
    """Alias classes of the fx values of one traced graph (union-find over nodes)."""

    def __init__(self, nodes, root, env: dict, inplace):
        self.parent: dict[fx.Node, fx.Node] = {}
        self.nodes = list(nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        by_storage: dict[int, fx.Node] = {}
        for n in nodes:
            self.parent.setdefault(n, n)
            if n.op in ("call_method", "call_function", "call_module") and n.args \
                    and isinstance(n.args[0], fx.Node):
                name = op_name(n, root)
                if (name in VIEW_OPS or (n.op == "call_module" and name in VIEW_MODULES)
                        or (n.op == "call_function" and n.target is getattr and reads_values(n))
                        or inplace(n)):
                    self.union(n, n.args[0])
            for t in _tensors(env.get(n)):
                try:
                    key = t.untyped_storage().data_ptr()
                    empty = t.untyped_storage().nbytes() == 0
                except Exception:       # noqa: BLE001 - fake or sparse tensors: the op list decides
                    continue
                if empty:
                    continue
                if key in by_storage:
                    self.union(n, by_storage[key])
                else:
                    by_storage[key] = n

    def find(self, n):
        p = self.parent.setdefault(n, n)
        while p is not self.parent[p]:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        return p

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra is not rb:
            self.parent[ra] = rb

    def stale_read(self, n: fx.Node):
        """For an in-place op ``n`` (modifying ``n.args[0]``): the first (earlier alias, later reader) pair, a
        value sharing the modified storage made before ``n`` and read after it, or None."""
        here = self.order[n]
        root = self.find(n.args[0])
        for m in self.nodes[:here]:
            if self.find(m) is not root:
                continue
            for u in sorted(m.users, key=self.order.get):
                if self.order[u] > here and reads_values(u):
                    return m, u
        return None


def _tensors(v):
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for x in v:
            yield from _tensors(x)
