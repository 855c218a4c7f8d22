"""The public functions: load, translate, forward, explain, evaluate.

This is the top floor: it reads the plugin registry and hands what it holds (op tables, engines with their
kernels, passes, evaluators) down to the modules below, which never look it up themselves.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from . import batching
from .engines.base import Engine
from .errors import InputError, InputShapeError, MethodError, ModelLoadError, UnsupportedError
from .graph import Graph
from .inputs import (as_input, as_tensor_input, assign_inputs, is_torch_tensor, sample_shapes, shape_error,
                     split_inputs, takes_indices, to_numpy)
from .methods import as_method
from .positions import at_position, needs_position
from .plugins import manager, registry
from .progress import progress
from .propagation import run_forward
from .relevance import concat_batches, labeled, provenance, sample_coords
from .targets import INITS, resolve_targets, target_kind
from .tokens import token_view


def load_model(model: Any) -> Any:
    """A model from a path (each backend plugin reads its formats; attribx graphs are ``.npz``), or
    the object itself when it already is a model."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    path = os.fspath(model)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    loaded = manager().hook.attribx_load_model(path=path)
    if loaded is None:
        formats = registry().formats
        known = "; ".join(f"{k} ({v})" for k, v in formats.items()) or "none"
        raise ModelLoadError(f"{path}: not a model file attribx can read; formats of the installed plugins: "
                             f"{known}")
    if isinstance(loaded, Graph):      # checked against every plugin's ops (the loader leaves it unchecked)
        loaded.validate(registry().ops)
    return loaded


def translate(model: Any, passes: bool | Sequence[str] = True, input_shape: Any = None) -> Graph:
    """The intermediate graph of a model (a native model, a path, or a Graph), after the graph passes.

    ``passes=True`` runs every default pass, a list names the passes to run, ``False`` none.
    ``input_shape`` (one sample's shape, no batch axis) lets backends that trace with example data
    (PyTorch) translate; :func:`explain` and :func:`forward` pass the data's shape. Without it a torch
    model translates only when its first layer fixes the whole sample shape (``nn.Linear``). A model with
    several inputs takes a tuple of shapes (one per input, in the model's order) or a dict by input name.
    """
    model = load_model(model)
    if isinstance(model, Graph):
        graph = model
    else:
        shape = _shapes(input_shape)
        converters = list(registry().converters.values())
        graph = manager().hook.attribx_translate(model=model, input_shape=shape, converters=converters)
        if graph is None:
            known = ", ".join(registry().translators) or "none"
            raise UnsupportedError(
                f"no installed backend translates a {type(model).__module__}.{type(model).__name__} (the installed "
                f"ones translate: {known}); backends register through the 'attribx_translate' hook (install "
                f"attribx's torch, tensorflow or onnx plugin)")
    table = registry().passes
    if passes is True:
        chosen = [p for p in table.values() if p.default]
    elif passes is False or passes is None:
        chosen = []
    else:
        missing = [p for p in passes if p not in table]
        if missing:
            raise MethodError(f"unknown graph pass(es) {missing}; known: {', '.join(table)}")
        chosen = [table[p] for p in passes]
    for p in chosen:
        graph = p(graph)
    return graph


def _shapes(input_shape: Any):
    """``input_shape`` as ints: one shape, a tuple of shapes, or shapes by input name."""
    if input_shape is None:
        return None
    if isinstance(input_shape, dict):
        return {str(k): _shapes(v) for k, v in input_shape.items()}
    if any(isinstance(d, (tuple, list)) or d is None for d in input_shape):
        return tuple(_shapes(d) for d in input_shape)
    return tuple(int(d) for d in input_shape)


def get_engine(engine: Any = None, graph: Graph | None = None, device: Any = None):
    """An engine instance from a name, an instance, or the graph's default.

    The default: the first installed engine of ``graph.meta["engines"]`` (a backend's preference list:
    ONNX graphs ask for torch, then numpy), else the engine of the graph's framework, else numpy.
    ``device`` (``"cuda"``, ``"cpu"``, a ``torch.device``) asks for the torch engine on that device.
    """
    if device is not None:
        return _with_kernels(_engine_on(engine, device))
    if isinstance(engine, Engine):
        return _with_kernels(engine)
    engines = registry().engines
    if engine is None:
        for name in (graph.meta.get("engines") or ()) if graph is not None else ():
            if name in engines:
                return _with_kernels(engines[name]())
        framework = (graph.meta.get("framework") if graph is not None else None) or "numpy"
        for cls in engines.values():
            if cls.framework == framework:
                return _with_kernels(cls())
        return _with_kernels(registry().engine("numpy")())
    if not isinstance(engine, str):
        raise MethodError(f"engine must be a name ({', '.join(engines)}) or an Engine, got {type(engine).__name__}")
    return _with_kernels(registry().engine(engine)())


def _with_kernels(engine: Engine) -> Engine:
    """``engine`` with the kernels every plugin registers for it, unless it was given its own."""
    if not engine.has_kernels:
        engine.use_kernels(registry().kernels(engine.name))
    return engine


def _engine_on(engine: Any, device: Any):
    """A torch engine (``engine`` names one, or the torch engine) on ``device``, which the engine checks exists:
    devices are torch's, so an engine of another framework is an error rather than a silent CPU run."""
    if isinstance(engine, Engine):
        raise MethodError(f"device={device!r} and an engine object: give the device to one of them "
                          f"({type(engine).__name__}(device=...) or engine='torch')")
    if engine is not None and not isinstance(engine, str):
        raise MethodError(f"engine must be a name or an Engine, got {type(engine).__name__}")
    engines = registry().engines
    if engine is None and "torch" not in engines:
        raise MethodError(f"device={device!r} runs the torch engine, which is not installed (install attribx's "
                          f"torch plugin: pip install -e plugins/attribx-torch); installed engines: "
                          f"{', '.join(sorted(engines))}")
    cls = registry().engine(engine or "torch")
    if cls.framework != "torch":
        raise MethodError(f"device={device!r} selects a torch device, but the {cls.name} engine does not run on "
                          f"torch; use engine='torch' (or leave engine out) with device=")
    return cls(device=device)


def _graph_and_input(model: Any, x: Any, passes=True) -> tuple[Graph, Any, dict, list | None]:
    """Translate (with the data's shapes, for tracing backends) and check the inputs against the graph:
    (graph, the signal input or a tuple with one per signal input, the mask inputs by name, the dict's keys).

    A torch tensor stays a tensor on its device (a GPU batch is not copied to the host to be checked);
    anything else becomes a numpy array.
    """
    arrays, names = split_inputs(x)
    arrays = [a if is_torch_tensor(a) else to_numpy(a) for a in arrays]
    try:
        graph = translate(model, passes, input_shape=sample_shapes(arrays, names))
    except InputShapeError as err:     # a tracing backend could not run the model on data of this shape
        if err.expected is None or len(arrays) > 1:
            raise
        raise shape_error(tuple(int(d) for d in arrays[0].shape), err.expected, is_torch_tensor(arrays[0])) from None
    signals, masks = assign_inputs(graph, arrays, names)
    if len(signals) == 1:
        x = signals[0]
        return graph, (as_tensor_input(graph, x) if is_torch_tensor(x) else as_input(graph, x)), masks, None
    checked, bad = [], []
    for v, a in zip(graph.signal_inputs, signals):      # every bad input named, one line each
        try:
            checked.append(as_tensor_input(graph, a, v) if is_torch_tensor(a) else as_input(graph, a, v))
        except InputError as err:
            bad.append(f"input {v.name!r}: {err}")
    if bad:
        raise InputError("\n".join(bad))
    if len({len(a) for a in checked}) > 1:
        raise InputError("the inputs have different numbers of samples: " + ", ".join(
            f"{v.name!r} {len(a)}" for v, a in zip(graph.signal_inputs, checked)))
    return graph, tuple(checked), masks, names


def forward(model: Any, x: Any, engine: Any = None, output: str | None = None,
            passes: bool | Sequence[str] = True, device: Any = None) -> np.ndarray:
    """The graph's own forward pass on any engine, as numpy (the value of ``output``, default the output).

    ``passes`` as in :func:`translate` (``False`` runs the graph exactly as given); ``device`` as in
    :func:`explain`; ``x`` in any form :func:`explain` takes (several inputs as a tuple or a dict).
    """
    graph, x, masks, _ = _graph_and_input(model, x, passes)
    graph = _select_output(graph, output)
    eng = get_engine(engine, graph, device)
    name = graph.output
    acts = run_forward(graph, eng, batching.each(x, eng.asarray), upto=name,
                       masks={k: eng.asarray(v) for k, v in masks.items()})
    return eng.to_numpy(acts[name])


def _follow_aliases(graph: Graph, name: str) -> str:
    """``name``, or the node a graph pass folded or dropped it into (``graph.meta["aliases"]``, followed to
    the end); unchanged when nothing is recorded for it."""
    aliases = graph.meta.get("aliases", {})
    inputs = {v.name for v in graph.inputs}
    seen = set()
    while name not in graph and name not in inputs and name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name]
    return name


def _resolve_alias(graph: Graph, name: str) -> str:
    """The node whose output is ``name``'s: itself, or where a graph pass folded or dropped it
    (``graph.meta["aliases"]``: batch norms folded into convs, dropout and identities removed)."""
    inputs = {v.name for v in graph.inputs}
    name = _follow_aliases(graph, name)
    if name in graph.meta.get("folded_pads", ()):
        raise MethodError(f"layers: {name!r} was a zero padding that the graph pass 'fold_pad_into_conv' "
                          f"folded into the conv after it, so its output no longer exists; ask for the layer "
                          f"before it")
    if name not in graph and name not in inputs:
        raise MethodError(f"layers: no node named {name!r}; see attribx.translate(model).summary()")
    shape = graph.shape_of(name)
    if not shape or shape[0] is not None:
        raise MethodError(f"layers: {name!r} is a {graph[name].op} without a sample axis (shape {tuple(shape)}): "
                          f"it is the same for every sample and holds no relevance per sample; ask for a node "
                          f"that reads it")
    return name


def _select_output(graph: Graph, output: str | None) -> Graph:
    """The graph with ``output`` (a node name, or a name a graph pass folded away) as its only output;
    the graph itself when ``output`` is None."""
    if output is None:
        return graph
    if not isinstance(output, str):
        raise InputError(f"output must be a node name (str), got {type(output).__name__}")
    name = _follow_aliases(graph, output)
    if name not in graph:
        raise InputError(f"output: no node named {output!r}; the graph's outputs are "
                         f"{', '.join(map(repr, graph.outputs))} (every node: attribx.translate(model).summary())")
    if graph.outputs == [name]:
        return graph
    return Graph(graph.inputs, graph.nodes, [name], graph.meta, validate=False, ops=graph.ops)


def explain(model: Any, x: Any, method: Any = "lrp.epsilon", target: Any = "predicted", *,
            output: str | None = None, engine: Any = None, device: Any = None, output_init: Any = None,
            layers: Sequence[str] | None = None, conservation: bool = False, batch_size: int | None = None,
            sample: Any = None, labels: Any = None, progress_bar: bool | None = None, tokens: Any = None,
            pad_id: int | None = None, padding: Any = None, per_token: bool = False, position: int | None = None,
            **params: Any):
    """Explain ``model``'s prediction for inputs ``x`` with a method (a name, a Method or a Composite).

    Returns an ``xarray.DataArray`` named ``relevance`` in the input's layout, with coords ``sample``,
    ``target`` and ``prediction`` (and ``label`` when ``labels`` are given); with ``layers`` (node names)
    or ``conservation=True`` an ``xarray.Dataset`` holding also the relevance at those nodes and the
    per-node relevance sums. ``target``: an int, ints per sample, ``"predicted"`` or
    ``("contrast", c, c2)``. ``output`` names the node whose values are explained (a model with several
    outputs needs it; default the graph's only output). ``output_init`` overrides the method's
    initialisation (``"score"``, ``"onehot"``, ``"softmax"``, ``"log_odds"``, ``"contrast"`` or an array of
    the output's shape). ``batch_size`` splits the samples into batches; without it, inputs whose pass would
    not fit in memory (a quarter of the free memory, at most 4 GiB, estimated from the graph's activations)
    are batched automatically. Method parameters (``epsilon=...``) are keyword arguments. ``device``
    (``"cuda"``, ``"cuda:1"``, ``"cpu"`` or a ``torch.device``) runs the torch engine there, as
    ``engine=TorchEngine(device=...)`` does.

    Text (see ``docs/text.md``): ``tokens`` (the (N, T) token strings) become the coord ``token_text``
    on dims ``("sample", "token")``; ``pad_id`` (token-id inputs) or ``padding`` (a boolean (N, T) mask)
    sets the relevance of padding to exactly 0 and adds the boolean coord ``padding``;
    ``per_token=True`` sums the relevance over every axis but sample and token, so embedded inputs
    (N, T, E) get one score per token as token-id inputs do. The token axis is the input's ``token``
    dim, else its second axis.

    Language models (see ``docs/transformers.md``): ``position`` (an int, -1 the last) explains the output at
    that token position of a (sample, token, vocabulary) output, ``target`` then being a token id. ``x`` may be
    ``(input_ids, attention_mask)`` (or a dict by those names) where the graph has a mask input: the mask
    decides and takes no relevance; the relevance is the first input's.

    Several inputs (see ``docs/guide/concepts.md``, "Several inputs"): a model with several signal inputs
    (``forward(self, image, extra)``, a Keras model with two ``Input`` layers) takes them as a tuple in the
    model's order (Captum's convention) or a dict by input name, mask inputs mixed in; it returns a tuple (for
    a dict: a dict) with one relevance per signal input, each in its input's layout with the usual coords.
    Integrated gradients take one baseline per input (``baseline=(b1, b2)``) or one for all.
    """
    graph, x, masks, names = _graph_and_input(model, x)
    several = isinstance(x, tuple)
    if several and (tokens is not None or pad_id is not None or padding is not None or per_token):
        raise InputError("tokens=, pad_id=, padding= and per_token= read one token input; this model has several "
                         "signal inputs")
    graph = _select_output(graph, output)
    if position is not None:
        graph = at_position(graph, position, keep={_follow_aliases(graph, n) for n in (layers or ())})
    else:
        needs_position(graph, takes_indices(graph), output_init)
    reg = registry()
    m = as_method(method, reg.methods)
    resolved = m.resolve(params)
    if m.needs_real_input and takes_indices(graph):
        raise MethodError(f"method {m.name!r} perturbs the input or multiplies by it, but this model's input "
                          f"holds integer indices (an embedding lookup); use a gradient or LRP method")
    view = None if several else token_view(tuple(x.shape), graph.input.dims, takes_indices(graph), tokens, pad_id,
                                           padding, per_token, ids=to_numpy(x) if pad_id is not None else None)
    eng = get_engine(engine, graph, device)
    n = len(x[0] if several else x)
    inputs = [v.name for v in graph.signal_inputs]
    layers = list(layers or [])
    where = {name: _resolve_alias(graph, name) for name in layers}   # requested name -> node holding it
    init_array = None
    if output_init is not None and not isinstance(output_init, str):
        init_array = np.asarray(output_init)
        if len(init_array) != n:
            raise InputError(f"output_init has {len(init_array)} rows for {n} samples")
    elif output_init is not None and output_init not in INITS:
        raise InputError(f"unknown output_init {output_init!r}; use one of {', '.join(INITS)} or an array")
    pieces = []
    if batch_size is None:
        batch_size = batching.auto_batch_size(graph, x)
    chunks = batching.batches(n, batch_size)
    for sl in progress(chunks, len(chunks), f"explain {m.name}", progress_bar):
        xb = batching.each(x, lambda a: eng.asarray(a[sl]))
        tb = batching.batch_target(target, sl, n)
        init = init_array[sl] if init_array is not None else output_init
        result = m.run(graph, eng, xb, lambda s, tb=tb: resolve_targets(tb, s), resolved, init,
                       keep=list(where.values()), conservation=conservation, ops=reg.ops, rules=reg.rules,
                       masks={k: eng.asarray(v[sl]) for k, v in masks.items()})
        scores = eng.to_numpy(result.output)
        piece = {**{f"input:{k}": eng.to_numpy(result.relevance[k]) for k in inputs},
                 "targets": np.asarray(result.targets),
                 "prediction": np.argmax(scores, axis=1) if scores.ndim == 2 else np.zeros(len(scores), np.int64)}
        for name, node in where.items():
            r = result.relevance.get(node)
            piece[f"layer:{name}"] = (eng.to_numpy(r) if r is not None else np.zeros(
                (len(scores),) + graph.shape_of(node)[1:], piece[f"input:{inputs[0]}"].dtype))
        if conservation:
            for k, v in result.conservation.items():
                piece[f"sum:{k}"] = v
        pieces.append(piece)
    joined = concat_batches(pieces)
    coords = sample_coords(n, sample, joined["targets"], joined["prediction"], labels)
    extra = {"explained_output": result.start,
             "output_init": m.output_init if output_init is None else
             (output_init if isinstance(output_init, str) else "array"),
             "target_kind": target_kind(target)}
    if isinstance(target, tuple):
        extra["contrast"] = True
    if position is not None:
        extra["position"] = graph.meta["position"]
    attrs = provenance(graph, m, resolved, eng, **extra)
    lay = {k.split(":", 1)[1]: v for k, v in joined.items() if k.startswith("layer:")}
    cons = None
    if conservation:
        order = inputs + [nd.name for nd in graph.nodes]
        cons = {k: joined[f"sum:{k}"] for k in order if f"sum:{k}" in joined}
    score = cons.get(result.start) if cons else None
    if several:     # one relevance per signal input, each in its own layout
        out = [labeled(joined[f"input:{v.name}"], result.input_dims.get(v.name) or v.dims, dict(coords),
                       {**attrs, "input": v.name}, lay, cons, score) for v in graph.signal_inputs]
        return tuple(out) if names is None else dict(zip(inputs, out))
    values, dims = joined[f"input:{inputs[0]}"], result.dims or graph.input.dims
    if view is not None:
        values, dims, token_coords = view.apply(values, dims)
        coords.update(token_coords)
        attrs.update(view.attrs)
    return labeled(values, dims, coords, attrs, lay, cons, score)


def evaluate(name: str, model: Any = None, inputs: Any = None, relevance: Any = None, **params: Any):
    """Run the evaluator registered as ``name`` and return its ``xarray.Dataset`` (save it with :func:`save`).

    ``model``: anything :func:`translate` takes (evaluators that need no model, like SpRAy, take None);
    ``inputs``: the explained inputs in the model's layout; ``relevance``: a DataArray or Dataset from
    :func:`explain`, an array, or the path of a relevance file (recorded in the result's attrs).
    Evaluators' parameters are keyword arguments; an unknown one is an error that lists the accepted.
    Built in: ``pixel_flipping`` and ``region_perturbation`` (``docs/evaluators.md``); plugins add more
    through the ``attribx_evaluators`` hook.
    """
    if not isinstance(name, str):
        raise MethodError(f"evaluator name must be a str, got {type(name).__name__}")
    fn = registry().evaluator(name)
    if any(isinstance(a, dict) or isinstance(a, tuple) and len(a) > 1 and all(hasattr(e, "shape") for e in a)
           for a in (inputs, relevance)):
        raise UnsupportedError(f"evaluator {name!r} takes one input and its relevance; several inputs (a tuple or "
                               f"a dict) are not supported by the evaluators yet")
    return fn(model=model, inputs=inputs, relevance=relevance, **params)
