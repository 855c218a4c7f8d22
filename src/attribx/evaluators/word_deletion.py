"""Word deletion: does deleting the words the relevance calls important change the classifier's decision?

Arras et al., "Explaining predictions of non-linear classifiers in NLP" (2016) and "Explaining recurrent
neural network predictions in sentiment analysis" (2017), seed 002 ("pixel flipping = word deleting"):
words are deleted one at a time, cumulatively, in the order their relevance gives, and the accuracy of
the classifier is recorded after every deletion.

* ``mode="correct"`` (default): the sentences the model classifies correctly (accuracy 1 before any
  deletion); words are deleted most relevant first (``order="morf"``), so a good explanation makes the
  accuracy fall fast.
* ``mode="misclassified"``: the sentences it gets wrong (accuracy 0); words are deleted least relevant
  first (``order="lerf"``): with relevance for the *true* class, the least relevant words are the
  evidence against it, and a good explanation makes the accuracy rise fast.
* ``mode="all"``: every sentence, most relevant first.

A word's relevance is its token's score: relevance with dims ``(sample, token)`` is used as it is, any
other axis (the embedding axis of relevance on embedded inputs) is summed, as Arras et al. do. Padding
is never deleted. A seeded random order (``repeats`` runs, averaged) is the baseline.

What "deleting" means (``replacement``):

* ``"zero"`` (default, Arras et al.): the word's embedding vector becomes the zero vector. For models
  that take embedded vectors (N, T, E) the vector is set to 0. For models that take token ids, the
  graph is copied with one extra, all-zero row appended to every embedding table that reads the ids,
  and a deleted word gets that row's id: the model sees exactly a zero vector at that position,
  whatever its vocabulary (no reserved id needed, the padding id is not reused) and on any engine.
  Other readers of the ids (a padding mask ``ids != pad``) see a word, which is what a deleted word
  still is: a position in the sentence.
* an int token id (token-id models): the word is replaced by that token (e.g. ``<unk>``); replacing
  it by the padding id changes what a model that masks padding sees, so that is the user's call.
* a vector of the embedding size (embedded models): the word's vector is replaced by it (e.g. the
  embedding of ``<unk>``).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from .base import (ModelRunner, Progress, check_params, choice, host_array, positive_int, read_relevance,
                   result_attrs, seed_of)

MODES = ("correct", "misclassified", "all")
ORDERS = ("morf", "lerf", "random")
DEFAULT_ORDER = {"correct": "morf", "misclassified": "lerf", "all": "morf"}
DEFAULT_MAX_STEPS = 20
NAME = "word_deletion"

DEFAULTS = {
    "mode": "correct",
    "order": None,               # "morf" (correct, all) / "lerf" (misclassified)
    "steps": None,               # min(20, the most words of an evaluated sentence)
    "replacement": "zero",       # "zero", a token id (id inputs) or a vector (embedded inputs)
    "labels": None,              # the true classes; default: the relevance's label coord
    "pad_id": None,              # id inputs: the padding id (default: the relevance's padding coord)
    "padding": None,             # a boolean (N, T) mask of padding (default: the relevance's padding coord)
    "random_baseline": None,     # a random order's accuracy too (default: unless order="random")
    "repeats": 1,                # random-order runs averaged
    "seed": 0,
    "output": "logit",           # the quantity of the per-step `score` variable
    "engine": None,
    "batch_size": 256,
    "progress_bar": None,
    "variable": None,            # which variable of a Dataset of relevance
}


# --------------------------------------------------------------------------------------------------
# inputs, labels, padding, relevance
# --------------------------------------------------------------------------------------------------

def _inputs(inputs: Any, takes_ids: bool) -> np.ndarray:
    x = host_array(inputs, f"evaluator {NAME!r} (token ids or embedded vectors)")
    if x.dtype.kind not in "fiub" or x.ndim < 2:
        raise InputError(f"evaluator {NAME!r}: inputs must be a numeric array (sample, token, ...), got dtype "
                         f"{x.dtype}, shape {x.shape}")
    if takes_ids:
        if x.dtype.kind == "f" and not (np.isfinite(x).all() and np.all(x == np.round(x))):
            raise InputError(f"evaluator {NAME!r}: the model takes token ids, the inputs hold non-integer values")
        return x.astype(np.int64)
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(f"evaluator {NAME!r}: inputs contain NaN or infinite values")
    return x


def _labels(labels: Any, rel: xr.DataArray, n: int) -> tuple[np.ndarray, str]:
    source = "labels"
    if labels is None:
        if "label" in rel.coords and rel.coords["label"].dims == ("sample",):
            labels, source = rel.coords["label"].values, "relevance label coord"
        else:
            raise InputError(f"evaluator {NAME!r} needs the true classes: pass labels= (one int per sample), or "
                             f"explain with labels= so the relevance carries a 'label' coord")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise InputError(f"evaluator {NAME!r}: labels must be one int class per sample ({n}), got dtype {y.dtype}, "
                         f"shape {y.shape}")
    return y.astype(np.int64), source


def _padding(p: dict, rel: xr.DataArray, x: np.ndarray, tok_axis: int, takes_ids: bool) -> tuple[np.ndarray, str]:
    """(N, T) True at padding: from padding=, pad_id=, the relevance's padding coord, or none."""
    n, t = x.shape[0], x.shape[tok_axis]
    if p["padding"] is not None and p["pad_id"] is not None:
        raise InputError(f"evaluator {NAME!r}: give either pad_id or padding, not both")
    if p["padding"] is not None:
        mask = np.asarray(p["padding"])
        if mask.dtype != bool or mask.shape != (n, t):
            raise InputError(f"evaluator {NAME!r}: padding must be a boolean (N, T) = {(n, t)} mask, got dtype "
                             f"{mask.dtype}, shape {mask.shape}")
        return mask, "padding"
    if p["pad_id"] is not None:
        pad = p["pad_id"]
        if not takes_ids:
            raise InputError(f"evaluator {NAME!r}: pad_id marks padding in token-id inputs; this model takes "
                             f"vectors: pass padding= (a boolean (N, T) mask)")
        if isinstance(pad, (bool, np.bool_)) or not isinstance(pad, (int, np.integer)):
            raise InputError(f"evaluator {NAME!r}: pad_id must be an int token id, got {pad!r}")
        return np.moveaxis(x, tok_axis, 1) == pad, f"pad_id={int(pad)}"
    if "padding" in rel.coords and rel.coords["padding"].dims == ("sample", "token"):
        mask = np.asarray(rel.coords["padding"].values).astype(bool)
        if mask.shape != (n, t):
            raise InputError(f"evaluator {NAME!r}: the relevance's padding coord has shape {mask.shape}, the inputs "
                             f"have (N, T) = {(n, t)}")
        return mask, "relevance padding coord"
    return np.zeros((n, t), bool), "none"


def _word_scores(rel: xr.DataArray, model_dims: tuple, tok_axis: int, n: int, t: int) -> np.ndarray:
    """One relevance score per token, (N, T): the token axis kept, every other axis but sample summed."""
    tok = "token" if "token" in rel.dims else model_dims[tok_axis]
    if tok not in rel.dims:
        raise InputError(f"evaluator {NAME!r}: the relevance has dims {rel.dims} and no token axis "
                         f"({tok!r}); it needs one score per token (sample, token[, ...])")
    rest = [d for d in rel.dims if d not in ("sample", tok)]
    scores = np.asarray(rel.sum(rest).transpose("sample", tok).values, dtype=np.float64) if rest \
        else np.asarray(rel.transpose("sample", tok).values, dtype=np.float64)
    if scores.shape != (n, t):
        raise InputError(f"evaluator {NAME!r}: relevance of {scores.shape[0]} samples × {scores.shape[1]} tokens "
                         f"does not match inputs of (N, T) = {(n, t)}")
    return scores


# --------------------------------------------------------------------------------------------------
# deletion
# --------------------------------------------------------------------------------------------------

def _zero_row_graph(graph):
    """(a copy of ``graph`` whose embedding tables reading the ids end in one all-zero row, that row's id)."""
    name = graph.input.name
    lookups = [n for n in graph.nodes if n.op == "embedding" and n.inputs and n.inputs[0] == name]
    if not lookups:
        raise InputError(f"evaluator {NAME!r}: replacement='zero' on token ids needs an embedding lookup of the "
                         f"input (none reads {name!r}); pass replacement=<token id>, or evaluate the model from its "
                         f"embedding output on with embedded inputs")
    vocab = max(int(n.params["weight"].shape[0]) for n in lookups)
    nodes = []
    for node in graph.nodes:
        if node in lookups:
            w = node.params["weight"]
            w = np.concatenate([w, np.zeros((vocab + 1 - w.shape[0],) + w.shape[1:], w.dtype)])
            node = node.replace(params={**node.params, "weight": w})
        nodes.append(node)
    return graph.with_nodes(nodes), vocab


class _Deleter:
    """Applies a deletion mask (N, T) to the inputs in the model's layout."""

    def __init__(self, p: dict, runner: ModelRunner, x: np.ndarray, tok_axis: int, takes_ids: bool):
        self.x, self.tok_axis, self.takes_ids = x, tok_axis, takes_ids
        r = p["replacement"]
        if takes_ids:
            vocab = [int(n.params["weight"].shape[0]) for n in runner.graph.nodes
                     if n.op == "embedding" and n.inputs and n.inputs[0] == runner.graph.input.name]
            if isinstance(r, str) and r == "zero":
                self.graph, self.value = _zero_row_graph(runner.graph)
                self.describe = "zero"
            elif isinstance(r, (int, np.integer)) and not isinstance(r, (bool, np.bool_)):
                if r < 0 or (vocab and r >= min(vocab)):
                    raise MethodError(f"evaluator {NAME!r}: replacement token id {r} is outside the vocabulary "
                                      f"[0, {min(vocab) if vocab else '?'})")
                self.graph, self.value, self.describe = None, int(r), int(r)
            else:
                raise MethodError(f"evaluator {NAME!r}: with token-id inputs replacement is 'zero' or a token id "
                                  f"(int), got {r!r}")
        else:
            self.graph = None
            if isinstance(r, str) and r == "zero":
                self.value, self.describe = x.dtype.type(0), "zero"
            elif isinstance(r, (str, bool, int, float, np.integer, np.floating)) or r is None:
                raise MethodError(f"evaluator {NAME!r}: this model takes embedded vectors, so replacement is 'zero' "
                                  f"or a vector of the embedding size (e.g. the <unk> token's embedding), got {r!r}")
            else:
                v = np.asarray(r, dtype=x.dtype)
                want = tuple(s for i, s in enumerate(x.shape) if i not in (0, tok_axis))
                if v.shape != want or not np.isfinite(v).all():
                    raise MethodError(f"evaluator {NAME!r}: the replacement vector must be finite with shape {want} "
                                      f"(one token's), got shape {v.shape}")
                self.value, self.describe = np.expand_dims(v, (0, tok_axis)), "vector"   # over sample and token

    def __call__(self, rows: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The inputs of ``rows`` with the words under ``mask`` (len(rows), T) deleted."""
        x = self.x[rows]
        shape = [1] * x.ndim
        shape[0], shape[self.tok_axis] = mask.shape
        return np.where(mask.reshape(shape), self.value, x).astype(x.dtype, copy=False)


def _ranks(scores: np.ndarray, padding: np.ndarray, order: str, rng: np.random.Generator | None):
    """(deletion order (N, T): positions, words first; rank (N, T): when each position goes; padding last)."""
    if order == "random":
        keys = rng.random(scores.shape)
        keys[padding] = np.inf
        ordr = np.argsort(keys, axis=1, kind="stable")
    elif order == "morf":
        ordr = np.argsort(np.where(padding, np.inf, -scores), axis=1, kind="stable")
    else:
        ordr = np.argsort(np.where(padding, np.inf, scores), axis=1, kind="stable")
    rank = np.empty_like(ordr)
    np.put_along_axis(rank, ordr, np.broadcast_to(np.arange(ordr.shape[1]), ordr.shape), axis=1)
    return ordr, rank


def _run(runner, delete, rows, labels, scores, padding, words, order, n_steps, rng, bar):
    """Predictions and true-class scores (n, n_steps + 1), and the position deleted at each step (or -1)."""
    n = len(rows)
    ordr, rank = _ranks(scores, padding, order, rng)
    pred = np.zeros((n, n_steps + 1), np.int64)
    score = np.zeros((n, n_steps + 1), np.float64)
    for k in range(n_steps + 1):
        mask = (rank < k) & ~padding
        z = runner.scores(delete(rows, mask))
        if z.ndim != 2:
            raise InputError(f"evaluator {NAME!r}: the model's output has shape {z.shape}; it needs (N, classes)")
        pred[:, k] = z.argmax(axis=1)
        score[:, k] = z[np.arange(n), labels]
        bar.update()
    step = np.arange(1, n_steps + 1)
    deleted = np.full((n, n_steps + 1), -1, np.int64)
    deleted[:, 1:] = np.where(step[None, :] <= words[:, None], ordr[:, :n_steps], -1)
    return pred, score, deleted


# --------------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------------

def _resolve(params: dict) -> dict:
    p = check_params(NAME, params, DEFAULTS)
    choice(NAME, "mode", p["mode"], MODES)
    if p["order"] is None:
        p["order"] = DEFAULT_ORDER[p["mode"]]
    choice(NAME, "order", p["order"], ORDERS)
    p["steps"] = positive_int(NAME, "steps", p["steps"], allow_none=True)
    p["repeats"] = positive_int(NAME, "repeats", p["repeats"])
    p["batch_size"] = positive_int(NAME, "batch_size", p["batch_size"], allow_none=True)
    p["seed"] = seed_of(NAME, p["seed"])
    rb = p["random_baseline"]
    if rb is None:
        p["random_baseline"] = p["order"] != "random"
    elif not isinstance(rb, (bool, np.bool_)):
        raise MethodError(f"evaluator {NAME!r}: random_baseline must be true or false, got {rb!r}")
    return p


def word_deletion(model: Any = None, inputs: Any = None, relevance: Any = None, **params: Any) -> xr.Dataset:
    """Word deletion (Arras et al. 2016, 2017): delete words one at a time in the order of their relevance
    and record the classifier's accuracy after each deletion. See the module docstring and
    ``docs/evaluators.md`` ("Word deletion") for the parameters and results."""
    p = _resolve(params)
    if model is None:
        raise InputError(f"evaluator {NAME!r} needs a model")
    if inputs is None:
        raise InputError(f"evaluator {NAME!r} needs inputs (token ids or embedded vectors)")
    shape = np.shape(inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs)
    if len(shape) < 2:
        raise InputError(f"evaluator {NAME!r}: inputs must be (sample, token, ...), got shape {shape}")
    runner = ModelRunner(model, shape[1:], engine=p["engine"], output=p["output"], batch_size=p["batch_size"],
                         progress_bar=False, evaluator=NAME)
    graph = runner.graph
    takes_ids = np.dtype(graph.input.dtype).kind in "iu"
    x = _inputs(inputs, takes_ids)
    dims = tuple(graph.input.dims)
    if x.ndim != len(dims):
        raise InputError(f"evaluator {NAME!r}: inputs have shape {x.shape}, the model expects dims {dims}")
    tok_axis = dims.index("token") if "token" in dims else 1
    n, t = x.shape[0], x.shape[tok_axis]
    rel_dims = None
    if relevance is not None and not isinstance(relevance, (xr.DataArray, xr.Dataset, str)) \
            and not hasattr(relevance, "__fspath__"):
        nd = np.ndim(relevance)
        rel_dims = ("sample", "token") if nd == 2 else dims if nd == len(dims) else None
        if rel_dims is None:
            raise InputError(f"evaluator {NAME!r}: relevance has {nd} axes; give (sample, token) or the inputs' "
                             f"{len(dims)} axes {dims}")
    rel, path = read_relevance(relevance, p["variable"], rel_dims)
    scores = _word_scores(rel, dims, tok_axis, n, t)
    labels, label_source = _labels(p["labels"], rel, n)
    padding, padding_source = _padding(p, rel, x, tok_axis, takes_ids)
    words = (~padding).sum(axis=1)
    delete = _Deleter(p, runner, x, tok_axis, takes_ids)

    # the evaluated sentences
    z0 = runner.scores(x, "predict")
    if z0.ndim != 2:
        raise InputError(f"evaluator {NAME!r}: the model's output has shape {z0.shape}; it needs (N, classes)")
    if labels.min() < 0 or labels.max() >= z0.shape[1]:
        raise InputError(f"evaluator {NAME!r}: labels range from {labels.min()} to {labels.max()}, the model has "
                         f"{z0.shape[1]} classes")
    pred0 = z0.argmax(axis=1)
    right = pred0 == labels
    chosen = {"correct": right, "misclassified": ~right, "all": np.ones(n, bool)}[p["mode"]]
    rows = np.flatnonzero(chosen)
    if len(rows) == 0:
        raise InputError(f"evaluator {NAME!r}: no {p['mode']} sentences among the {n} inputs (accuracy "
                         f"{right.mean():.3f}); choose another mode")
    if "target" in rel.coords and rel.coords["target"].dims == ("sample",):
        tgt = np.asarray(rel.coords["target"].values)
        if tgt.dtype.kind in "iu" and tgt.shape == (n,):
            other = int((tgt[rows] != labels[rows]).sum())
            if other:
                warnings.warn(f"word deletion orders the words by their relevance for the true class (Arras et al.); "
                              f"the relevance explains another class for {other} of the {len(rows)} evaluated "
                              f"sentences: explain with target=labels", stacklevel=2)
    most = int(words[rows].max())
    if most == 0:
        raise InputError(f"evaluator {NAME!r}: the evaluated sentences are all padding; there is nothing to delete")
    if p["steps"] is None:
        n_steps = min(DEFAULT_MAX_STEPS, most)
    else:
        n_steps = p["steps"]
        if n_steps > most:
            raise MethodError(f"evaluator {NAME!r}: steps={n_steps}, but the longest evaluated sentence has {most} "
                              f"words")

    sc, pad, w, y = scores[rows], padding[rows], words[rows], labels[rows]
    main_rng, random_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(2))
    main_runs = p["repeats"] if p["order"] == "random" else 1
    random_runs = p["repeats"] if p["random_baseline"] else 0
    if delete.graph is not None:
        runner.graph = delete.graph           # the copy with a zero row; the provenance names the original
    try:
        with Progress((main_runs + random_runs) * (n_steps + 1), f"{NAME} ({p['mode']}, {p['order']})",
                      p["progress_bar"]) as bar:
            runs = [_run(runner, delete, rows, y, sc, pad, w, p["order"], n_steps, main_rng, bar)
                    for _ in range(main_runs)]
            rand = [_run(runner, delete, rows, y, sc, pad, w, "random", n_steps, random_rng, bar)
                    for _ in range(random_runs)]
    finally:
        runner.graph = graph
    pred, score, deleted = runs[0]
    acc_runs = np.stack([(r[0] == y[:, None]).mean(axis=0) for r in runs])
    data = {"accuracy": (("step",), acc_runs.mean(axis=0)),
            "prediction": (("sample", "step"), pred),
            "score": (("sample", "step"), score),
            "deleted": (("sample", "step"), deleted),
            "words": (("sample",), w)}
    if main_runs > 1:
        data["accuracy_runs"] = (("repeat", "step"), acc_runs)
    if rand:
        rr = np.stack([(r[0] == y[:, None]).mean(axis=0) for r in rand])
        data["accuracy_random"] = (("step",), rr.mean(axis=0))
        data["accuracy_random_runs"] = (("repeat", "step"), rr)
        data["score_random"] = (("sample", "step"), np.mean([r[1] for r in rand], axis=0))
    sample_ids = rel.coords["sample"].values if "sample" in rel.coords else np.arange(n)
    coords = {"sample": np.asarray(sample_ids)[rows], "label": ("sample", y), "step": np.arange(n_steps + 1),
              "initial_prediction": ("sample", pred0[rows]), "input_index": ("sample", rows)}
    if "target" in rel.coords and rel.coords["target"].dims == ("sample",):
        coords["target"] = ("sample", np.asarray(rel.coords["target"].values)[rows])
    stored = {k: v for k, v in p.items() if k not in ("progress_bar", "labels", "padding")}
    stored["replacement"] = delete.describe if delete.describe != "vector" else p["replacement"]
    attrs = result_attrs(NAME, stored, relevance=rel, relevance_file=path, runner=runner, seed=p["seed"],
                         mode=p["mode"], order=p["order"], replacement=str(delete.describe), steps_run=n_steps,
                         runs=main_runs, random_runs=random_runs, inputs=int(n), evaluated=int(len(rows)),
                         initial_accuracy=float(right.mean()), labels_from=label_source, padding_from=padding_source,
                         input_kind="token ids" if takes_ids else "embedded vectors")
    if takes_ids and delete.describe == "zero":
        attrs["zero_id"] = int(delete.value)
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["accuracy"].attrs["description"] = "share of the evaluated sentences classified as their label after k deletions"
    ds["score"].attrs["quantity"] = f"{p['output']} of the true class"
    ds["deleted"].attrs["description"] = "token position deleted at step k (-1: none)"
    ds.attrs["accuracy_final"] = float(ds["accuracy"].values[-1])
    if rand:
        ds.attrs["accuracy_random_final"] = float(ds["accuracy_random"].values[-1])
    ds.attrs["method"] = rel.attrs.get("method") or ds.attrs.get("relevance_method")
    return ds
