"""The intermediate graph (IR): inputs, nodes in topological order, outputs; framework-neutral.

Every node has one output value, named like the node, so a node name addresses both the layer and
its activation (``features.3``). Parameters are plain numpy arrays. The graph records the layout of
its inputs as dimension names (``("sample", "height", "width", "channel")`` for a Keras image model),
which is how relevance comes back labeled in the layout the user fed in.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .digests import digest
from .errors import GraphError, ModelLoadError
from .ops import BUILTIN_OP_TABLE, OpDef
from .safe_writes import temp_file_beside, write_target

#: Letters of a layout string and the dimension names they stand for.
LAYOUT_LETTERS = {
    "N": "sample", "C": "channel", "H": "height", "W": "width", "D": "depth",
    "L": "length", "T": "token", "F": "feature", "E": "embedding",
}
DEFAULT_LAYOUTS = {2: "NF", 3: "NCL", 4: "NCHW", 5: "NCDHW"}

GRAPH_FORMAT = "attribx-graph"
GRAPH_FORMAT_VERSION = 1


def layout_dims(layout: str | Sequence[str] | None, ndim: int) -> tuple[str, ...]:
    """Dimension names for a layout string (``"NHWC"``) or explicit names; the first is the sample axis."""
    if layout is None:
        layout = DEFAULT_LAYOUTS.get(ndim, "N" + "".join("F" for _ in range(ndim - 1)))
    if isinstance(layout, str):
        try:
            dims = [LAYOUT_LETTERS[c] for c in layout.upper()]
        except KeyError as err:
            raise GraphError(f"layout {layout!r}: unknown letter {err.args[0]!r}; "
                             f"known: {', '.join(f'{k}={v}' for k, v in LAYOUT_LETTERS.items())}") from None
    else:
        dims = list(layout)
    if len(dims) != ndim:
        raise GraphError(f"layout {layout!r} has {len(dims)} axes, the input has {ndim}")
    if dims[0] != "sample":
        raise GraphError(f"layout {layout!r} must start with the sample axis ('N' or 'sample')")
    # repeated names (e.g. two feature axes) get numbered so xarray dims stay unique
    seen: dict[str, int] = {}
    out = []
    for d in dims:
        seen[d] = seen.get(d, 0) + 1
        out.append(d if dims.count(d) == 1 else f"{d}_{seen[d] - 1}")
    return tuple(out)


@dataclass(frozen=True)
class Value:
    """A graph input: name, shape with ``None`` for the batch size, dtype, dimension names."""

    name: str
    shape: tuple
    dtype: str = "float32"
    dims: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.dims:
            object.__setattr__(self, "dims", layout_dims(None, len(self.shape)))


#: Byte alignment of every buffer numpy allocates itself (malloc's on 64-bit platforms).
ALIGNMENT = 16


def aligned_array(a: Any) -> np.ndarray:
    """``a`` itself when its buffer is aligned as numpy's own allocations are, else a copy that is: a view
    into a pickle-5 message frame (dask, multiprocessing) can start at any byte, and numpy then takes
    other kernels on it that round differently (1 ulp), so a worker would not reproduce the single process
    bit for bit."""
    a = np.asarray(a)
    if a.size and (not a.flags.aligned or a.ctypes.data % ALIGNMENT):
        return np.array(a, copy=True, order="K")
    return a


@dataclass
class Node:
    """One op application. ``inputs`` name graph inputs or earlier nodes; ``shape`` is filled by validation."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    shape: tuple | None = None
    source: str = ""

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        self.params = {k: np.asarray(v) for k, v in self.params.items() if v is not None}

    def __setstate__(self, state):
        """Unpickled parameters land aligned (:func:`aligned_array`), wherever the graph was sent."""
        state = dict(state)
        state["params"] = {k: aligned_array(v) for k, v in state.get("params", {}).items()}
        state["attrs"] = {k: aligned_array(v) if isinstance(v, np.ndarray) else v
                          for k, v in state.get("attrs", {}).items()}
        self.__dict__.update(state)

    @property
    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def replace(self, **changes) -> "Node":
        return replace(self, **changes)


class Graph:
    """A validated graph. Construct it from inputs, nodes (topologically ordered) and output names.

    ``ops`` is the op table the nodes are checked against (name -> :class:`~attribx.ops.OpDef`); the graph
    keeps it (:attr:`ops`: rewrites and the relevance pass read op categories from it). Default: the
    built-in op set; a graph with ops of plugins takes the registry's table
    (``attribx.plugins.registry().ops``), as :func:`attribx.load_model` passes it. This module never reads
    the registry itself.
    """

    def __init__(self, inputs: Sequence[Value], nodes: Sequence[Node], outputs: Sequence[str],
                 meta: Mapping[str, Any] | None = None, validate: bool = True, ops: Mapping[str, OpDef] | None = None):
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.meta = dict(meta or {})
        self._by_name = {n.name: n for n in self.nodes}
        self._ops = ops
        if validate:
            self.validate()

    @property
    def ops(self) -> Mapping[str, OpDef]:
        """The op table this graph's nodes are defined by (the built-in op set unless another was given)."""
        return BUILTIN_OP_TABLE if self._ops is None else self._ops

    def __getstate__(self):
        """A graph sent to another process (dask, multiprocessing) carries its op table only when plugins
        added ops to it: the built-in definitions are found there by name."""
        state = dict(self.__dict__)
        ops = state.get("_ops")
        if ops is not None and all(BUILTIN_OP_TABLE.get(k) is v for k, v in ops.items()):
            state["_ops"] = None
        return state

    def __setstate__(self, state):
        state.setdefault("_ops", None)
        self.__dict__.update(state)

    # -- access -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Node:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no node named {name!r}; nodes: {', '.join(self._by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    @property
    def input(self) -> Value:
        """The explained input: the only one, or the one that is not a mask input (:attr:`mask_inputs`)."""
        main = self.signal_inputs
        if len(main) != 1:
            raise GraphError(f"graph has {len(main)} signal inputs ({', '.join(repr(v.name) for v in main)}); this "
                             f"needs exactly one (explain and forward take them all, as a tuple or a dict by name)")
        return main[0]

    @property
    def signal_inputs(self) -> list[Value]:
        """The inputs that take relevance: every input but the mask inputs, in the graph's order."""
        masks = set(self.meta.get("mask_inputs", ()))
        return [v for v in self.inputs if v.name not in masks]

    @property
    def mask_inputs(self) -> list[Value]:
        """Inputs that decide but take no relevance (a transformer's ``attention_mask``), named in
        ``meta["mask_inputs"]``; one not given runs as nothing masked: all ones (an attention_mask), or the
        value ``meta["mask_fill"]`` gives it by name (0 for a key_padding_mask, where True masks)."""
        masks = set(self.meta.get("mask_inputs", ()))
        return [v for v in self.inputs if v.name in masks]

    @property
    def output(self) -> str:
        if len(self.outputs) != 1:
            raise GraphError(f"graph has {len(self.outputs)} outputs ({', '.join(map(repr, self.outputs))}); name "
                             f"the one to use with output= (attribx explain --output-node NAME)")
        return self.outputs[0]

    def shape_of(self, name: str) -> tuple:
        for v in self.inputs:
            if v.name == name:
                return v.shape
        return self[name].shape

    def consumers(self) -> dict[str, list[str]]:
        """For every value, the nodes that read it (in execution order)."""
        out: dict[str, list[str]] = {v.name: [] for v in self.inputs}
        for n in self.nodes:
            out.setdefault(n.name, [])
            for i in n.inputs:
                out.setdefault(i, []).append(n.name)
        return out

    @property
    def n_params(self) -> int:
        return sum(n.n_params for n in self.nodes)

    # -- validation -----------------------------------------------------------------------------
    def validate(self, ops: Mapping[str, Any] | None = None) -> "Graph":
        """Check names, order, arity, attributes, parameters and shapes; fill each node's output shape.

        Errors name the node. ``ops`` (an op table) defaults to the graph's own (:attr:`ops`); one given
        here becomes the graph's.
        """
        if ops is None:
            ops = self.ops
        else:
            self._ops = ops
        if not self.inputs:
            raise GraphError("graph has no inputs")
        shapes: dict[str, tuple] = {}
        for v in self.inputs:
            if v.name in shapes:
                raise GraphError(f"input name {v.name!r} is used twice")
            if not v.shape or v.shape[0] is not None:
                raise GraphError(f"input {v.name!r}: shape must start with None (the batch size), got {v.shape}")
            if len(v.dims) != len(v.shape):
                raise GraphError(f"input {v.name!r}: dims {v.dims} do not match shape {v.shape}")
            shapes[v.name] = tuple(v.shape)
        for node in self.nodes:
            if not node.name or not isinstance(node.name, str):
                raise GraphError(f"node with op {node.op!r} has no name")
            if node.name in shapes:
                raise GraphError(f"node name {node.name!r} is used twice (names must be unique)")
            opdef = ops.get(node.op)
            if opdef is None:
                hint = ("; a graph with ops of plugins is checked against theirs: ops=attribx.plugins.registry().ops"
                        if ops is BUILTIN_OP_TABLE else "")
                raise GraphError(
                    f"node {node.name!r}: unknown op {node.op!r}; a plugin adds ops through the "
                    f"'attribx_ops' hook (known: {', '.join(sorted(ops))}){hint}"
                )
            for i in node.inputs:
                if i not in shapes:
                    where = "later in the graph (not topologically ordered)" if i in self._by_name else "nowhere"
                    raise GraphError(f"node {node.name!r}: input {i!r} is defined {where}")
            if opdef.n_inputs is None:
                if not node.inputs:
                    raise GraphError(f"node {node.name!r} ({node.op}) needs at least one input")
            elif len(node.inputs) != opdef.n_inputs:
                raise GraphError(f"node {node.name!r} ({node.op}) takes {opdef.n_inputs} input(s), "
                                 f"got {len(node.inputs)}")
            attrs = opdef.resolve_attrs(node.name, node.attrs)
            required = set(opdef.params) - set(opdef.optional_params)
            missing = required - set(node.params)
            if missing:
                raise GraphError(f"node {node.name!r} ({node.op}): missing parameter(s) {sorted(missing)}")
            extra = set(node.params) - set(opdef.params)
            if extra:
                raise GraphError(f"node {node.name!r} ({node.op}): unknown parameter(s) {sorted(extra)}")
            for k, p in node.params.items():
                if not np.issubdtype(p.dtype, np.number):
                    raise GraphError(f"node {node.name!r}: parameter {k!r} is not numeric ({p.dtype})")
            try:
                shape = tuple(opdef.infer(attrs, [shapes[i] for i in node.inputs], node.params, node.name))
            except GraphError:
                raise
            except Exception as err:  # a plugin's shape function failed: still name the node
                raise GraphError(f"node {node.name!r} ({node.op}): shape inference failed: {err}") from err
            if node.shape is not None and tuple(node.shape) != shape:
                raise GraphError(f"node {node.name!r} ({node.op}): recorded shape {tuple(node.shape)} "
                                 f"but inputs give {shape}")
            node.attrs = attrs
            node.shape = shape
            shapes[node.name] = shape
        if not self.outputs:
            raise GraphError("graph has no outputs")
        for o in self.outputs:
            if o not in shapes:
                raise GraphError(f"output {o!r} is not a node or input of the graph")
        return self

    # -- summary --------------------------------------------------------------------------------
    def summary(self) -> str:
        """A model summary: node, op, inputs, output shape, parameter count."""
        def fmt(shape):
            return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"

        rows = [("node", "op", "inputs", "output shape", "params")]
        for v in self.inputs:
            rows.append((v.name, "input", "", fmt(v.shape) + " " + ",".join(v.dims), ""))
        for n in self.nodes:
            rows.append((n.name, n.op, ", ".join(n.inputs), fmt(n.shape) if n.shape else "?",
                         f"{n.n_params:,}" if n.params else ""))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for k, r in enumerate(rows):
            lines.append("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if k == 0:
                lines.append("-" * len(lines[0]))
        head = f"Graph '{self.meta.get('name', 'model')}'"
        if self.meta.get("backend"):
            head += f" from {self.meta['backend']}"
        tail = (f"{len(self.nodes)} nodes, {self.n_params:,} parameters; "
                f"outputs: {', '.join(self.outputs)}; fingerprint {self.fingerprint()}")
        return "\n".join([head, *lines, "-" * len(lines[0]), tail])

    def __str__(self):
        return self.summary()

    def __repr__(self):
        return f"<Graph {self.meta.get('name', 'model')!r}: {len(self.nodes)} nodes, inputs {[v.name for v in self.inputs]}>"

    # -- identity and files ---------------------------------------------------------------------
    def _structure(self) -> dict:
        return {
            "format": GRAPH_FORMAT,
            "version": GRAPH_FORMAT_VERSION,
            "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype, "dims": list(v.dims)}
                       for v in self.inputs],
            "nodes": [{"name": n.name, "op": n.op, "inputs": list(n.inputs), "attrs": _jsonable(n.attrs),
                       "params": sorted(n.params), "source": n.source} for n in self.nodes],
            "outputs": list(self.outputs),
            "meta": _jsonable(self.meta),
        }

    def fingerprint(self) -> str:
        """A hash of structure and parameter values: the same model gives the same fingerprint.

        Computed on each call, since parameters may be views of a model's weights that change in place; each
        array's own hash is kept while its values stay the same (:mod:`attribx.digests`), so a call costs one
        cheap read of the weights.
        """
        return self._hash()

    def _hash(self) -> str:
        h = hashlib.sha256()
        struct = self._structure()
        struct.pop("meta")
        for n in struct["nodes"]:
            n.pop("source")
        h.update(json.dumps(struct, sort_keys=True).encode())
        for n in self.nodes:
            for k in sorted(n.params):
                p = np.asarray(n.params[k])
                h.update(f"{n.name}/{k}/{p.dtype.str}/{p.shape}".encode())
                h.update(digest(p))       # each array hashed once while it stays unchanged (attribx.digests)
        return h.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph to an ``.npz`` file that :func:`attribx.load_model` reads back."""
        # the structure first: a truncated file still shows that it was an attribx graph
        arrays = {"__attribx_graph__": np.array(json.dumps(self._structure()))}
        arrays.update({f"param/{n.name}/{k}": p for n in self.nodes for k, p in n.params.items()})
        target = write_target(path)   # a symbolic link: its target is replaced, the link stays; no FIFO/device
        tmp = temp_file_beside(target)
        try:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, ops: Mapping[str, OpDef] | None = None, validate: bool = True) -> "Graph":
        """The graph :meth:`save` wrote, checked against ``ops`` (as in :class:`Graph`; ``validate=False``
        leaves the check to the caller, who may know the plugins' op table)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if "__attribx_graph__" not in data.files:
                    raise ModelLoadError(f"{os.fspath(path)}: an .npz file, but not an attribx graph")
                struct = json.loads(str(data["__attribx_graph__"]))
                params = {k: data[k] for k in data.files if k.startswith("param/")}
        except ModelLoadError:
            raise
        except Exception as err:
            raise ModelLoadError(f"{os.fspath(path)}: a damaged attribx graph, cannot read it ({type(err).__name__}: "
                                 f"{' '.join(str(err).split())}); write it again with Graph.save") from None
        if struct.get("format") != GRAPH_FORMAT or struct.get("version", 0) > GRAPH_FORMAT_VERSION:
            raise ModelLoadError(f"{os.fspath(path)}: unsupported graph format {struct.get('format')} "
                                 f"version {struct.get('version')}")
        inputs = [Value(v["name"], tuple(v["shape"]), v["dtype"], tuple(v["dims"])) for v in struct["inputs"]]
        nodes = [Node(n["name"], n["op"], tuple(n["inputs"]), n["attrs"],
                      {k: params[f"param/{n['name']}/{k}"] for k in n["params"]}, source=n.get("source", ""))
                 for n in struct["nodes"]]
        return cls(inputs, nodes, struct["outputs"], struct.get("meta", {}), validate=validate, ops=ops)

    def with_nodes(self, nodes: Iterable[Node], outputs: Sequence[str] | None = None) -> "Graph":
        """A new graph with other nodes (graph passes use this); shapes are re-validated."""
        nodes = [n.replace(shape=None) for n in nodes]
        return Graph(self.inputs, nodes, outputs or self.outputs, copy.deepcopy(self.meta), ops=self._ops)


def _jsonable(obj):
    """Attributes as JSON (tuples become lists; numpy scalars become python numbers)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def per_sample_size(shape: Sequence[int | None]) -> int:
    return math.prod(d for d in shape[1:])
