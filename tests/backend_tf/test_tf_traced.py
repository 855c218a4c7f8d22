"""The TF engine's traced pass (:mod:`attribx_tf.traced`): the whole relevance pass as one cached
``tf.function``. It gives the eager engine's numbers (the same rules, the same kernels; γ's and αβ's choice
of form through ``tf.cond``) and the numpy engine's up to rounding, traces once per graph, method and input
signature (never again for new values, targets or engines), and runs eagerly where it cannot trace, counted
by reason."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("attribx_tf")

import attribx  # noqa: E402
from attribx.errors import InputError  # noqa: E402
from attribx_tf import traced  # noqa: E402
from attribx_tf.engine import TensorFlowEngine  # noqa: E402

from engine_cases import GRAPHS, close, method_params  # noqa: E402

BOX = {"low": -3.0, "high": 3.0}


def compiled():
    return attribx.get_engine(TensorFlowEngine(trace_after=0))


def eager():
    return attribx.get_engine(TensorFlowEngine(compile_pass=False))


def keras_cnn():
    """Conv + batch norm + ReLU, a depthwise conv (ReLU6), a pointwise conv on its signed output, a residual
    add, pooling and a dense head: the layer kinds of MobileNet/ResNet, small."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((10, 10, 3))
    h = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inp)))
    d = keras.layers.ReLU(6.0)(keras.layers.DepthwiseConv2D(3, padding="same")(h))
    p = keras.layers.Conv2D(8, 1)(keras.layers.Conv2D(8, 1)(d))      # the second one reads a signed input
    s = keras.layers.ReLU()(keras.layers.Add()([h, p]))
    s = keras.layers.MaxPooling2D(2)(s)
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(s))
    model = keras.Model(inp, out)
    bn = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(size=8) * 0.1, rng.normal(size=8) * 0.1,
                    rng.uniform(0.5, 1.5, 8)])
    return model


def images(n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 10, 10, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    model = keras_cnn()
    return model, attribx.translate(model)


def _traces(graph):
    return traced.TRACES[graph.fingerprint()]


@pytest.mark.parametrize("method,params", [
    ("lrp.epsilon", {}), ("lrp.zero", {}), ("lrp.epsilon_plus_flat", {}), ("lrp.epsilon_gamma_box", BOX),
    ("lrp.epsilon_alpha2_beta1", {}), ("lrp.gamma", {}), ("gradient", {}),
])
def test_keras_cnn_traced_equals_eager_and_numpy(cnn, method, params):
    """On a small Keras CNN (float32, channel-first convs): the traced pass equals the eager engine (float32
    rounding) and the numpy engine; the user's model keeps its weights."""
    model, graph = cnn
    weights = [w.copy() for w in model.get_weights()]
    x = images()
    traced.clear()            # traced afresh, whatever ran before
    before = _traces(graph)
    ours = attribx.explain(graph, x, method, engine=compiled(), **params).values
    assert _traces(graph) == before + 1, "the pass was not traced (or traced twice)"
    ref_eager = attribx.explain(graph, x, method, engine=eager(), **params).values
    ref_numpy = attribx.explain(graph, x.astype(np.float64), method, engine="numpy", **params).values
    close(ours, ref_eager, 1e-5, f"{method}: traced against eager")
    close(ours, ref_numpy, 2e-4, f"{method}: traced against numpy (float64)")
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_gradient_equals_tensorflows_own(cnn):
    """The traced gradient method equals TensorFlow's GradientTape gradient of the target logit."""
    model, graph = cnn
    x = tf.constant(images(seed=5))
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x, training=False)[:, 2])
    want = tape.gradient(score, x).numpy()
    got = attribx.explain(graph, x.numpy(), "gradient", target=2, engine=compiled()).values
    close(got, want, 1e-5, "gradient against GradientTape")


@pytest.mark.parametrize("name,methods", [
    ("cnn", ["lrp.epsilon_gamma_box", "lrp.alpha_beta"]),
    ("zoo", ["lrp.gamma", "lrp.epsilon_plus_flat"]),
    ("attention", ["lrp.attn", "lrp.cp"]),
    ("attention_gated", ["lrp.attn"]),
])
def test_engine_case_graphs_traced_equal_eager(name, methods):
    """Hand-built graphs (float64: the channel-last conv path; attention with softmax, layer norm and gated
    products): traced equals eager, and the numpy engine."""
    graph, x = GRAPHS[name]()
    for method in methods:
        params = method_params(method)
        traced.clear()
        before = _traces(graph)
        ours = attribx.explain(graph, x, method, engine=compiled(), **params).values
        assert _traces(graph) == before + 1, f"{name} {method}: not traced"
        close(ours, attribx.explain(graph, x, method, engine=eager(), **params).values, 1e-9, f"{name} {method}")
        close(ours, attribx.explain(graph, x, method, engine="numpy", **params).values, 1e-7,
              f"{name} {method} against numpy")


def test_traced_once_across_calls_inputs_targets_and_engines(cnn):
    """Calls with new inputs of the same shape, new targets and a new engine each (``engine="tensorflow"``)
    reuse the trace; each call's numbers are its own (the eager engine's). A new batch size traces once more,
    and going back to the first shape does not."""
    _, graph = cnn
    traced.clear()
    start = _traces(graph)
    for seed, target in [(1, "predicted"), (2, 3), (3, [0, 4, 1])]:
        x = images(seed=seed)
        got = attribx.explain(graph, x, "lrp.epsilon_gamma_box", target=target, engine="tensorflow", **BOX)
        want = attribx.explain(graph, x, "lrp.epsilon_gamma_box", target=target, engine=eager(), **BOX)
        close(got.values, want.values, 1e-5, f"seed {seed}")
        assert np.array_equal(got.coords["target"].values, want.coords["target"].values)
    assert _traces(graph) == start + 1
    for _ in range(2):       # traced on its second call
        attribx.explain(graph, images(n=2), "lrp.epsilon_gamma_box", engine="tensorflow", **BOX)
    attribx.explain(graph, images(seed=4), "lrp.epsilon_gamma_box", engine="tensorflow", **BOX)
    assert _traces(graph) == start + 2


def test_new_parameter_values_trace_again(cnn):
    """The trace is keyed on the graph's content: parameters changed in place give a new trace and the new
    numbers, never the old graph's."""
    _, graph = cnn
    graph = attribx.Graph(graph.inputs, [n.replace(params={k: v.copy() for k, v in n.params.items()})
                                         for n in graph.nodes], graph.outputs, graph.meta, validate=False,
                          ops=graph.ops)
    x = images(seed=6)
    first = attribx.explain(graph, x, "lrp.epsilon", target=1, engine=compiled()).values
    dense = next(n for n in reversed(graph.nodes) if n.op == "linear")
    dense.params["weight"] *= -2.0
    again = attribx.explain(graph, x, "lrp.epsilon", target=1, engine=compiled()).values
    want = attribx.explain(graph, x, "lrp.epsilon", target=1, engine=eager()).values
    close(again, want, 1e-5, "after the change")
    assert not np.allclose(first, again)


def test_layers_are_traced_and_conservation_falls_back(cnn):
    """``layers=`` (kept relevances) is traced; ``conservation=True`` (per-node sums on the host) runs eagerly,
    counted in FALLBACKS, with the same numbers."""
    _, graph = cnn
    x = images(seed=7)
    layer = next(n.name for n in graph.nodes if n.op == "conv")
    fallbacks = traced.FALLBACKS["conservation"]
    got = attribx.explain(graph, x, "lrp.epsilon_plus_flat", layers=[layer], engine=compiled())
    want = attribx.explain(graph, x, "lrp.epsilon_plus_flat", layers=[layer], engine=eager())
    close(got[layer].values, want[layer].values, 1e-5, "kept layer")
    assert traced.FALLBACKS["conservation"] == fallbacks
    cons = attribx.explain(graph, x, "lrp.epsilon_plus_flat", conservation=True, engine=compiled())
    assert traced.FALLBACKS["conservation"] == fallbacks + 1
    close(cons["relevance"].values, want["relevance"].values, 1e-5, "conservation=True")


def test_several_inputs_fall_back():
    """A model with two inputs runs eagerly (counted), with TensorFlow's own gradients."""
    image, extra = keras.Input((4, 4, 2)), keras.Input((3,))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(3, 3, activation="relu")(image))
    model = keras.Model([image, extra], keras.layers.Dense(2)(keras.layers.Concatenate()([h, extra])))
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 4, 4, 2)).astype("float32"), rng.normal(size=(2, 3)).astype("float32")
    before = traced.FALLBACKS["several inputs"]
    got = attribx.explain(model, (x1, x2), "gradient", target=1, engine=compiled())
    assert traced.FALLBACKS["several inputs"] > before
    t1, t2 = tf.constant(x1), tf.constant(x2)
    with tf.GradientTape() as tape:
        tape.watch([t1, t2])
        score = tf.reduce_sum(model([t1, t2], training=False)[:, 1])
    want = tape.gradient(score, [t1, t2])
    close(got[0].values, want[0].numpy(), 1e-5, "image")
    close(got[1].values, want[1].numpy(), 1e-5, "extra")


def test_a_bad_target_raises_the_callers_error(cnn):
    """An error of the start relevance (run through py_function) reaches the caller as itself, not as TF's
    wrapper, and the trace stays usable."""
    _, graph = cnn
    with pytest.raises(InputError, match="out of range"):
        attribx.explain(graph, images(), "lrp.epsilon", target=7, engine=compiled())
    close(attribx.explain(graph, images(), "lrp.epsilon", target=1, engine=compiled()).values,
          attribx.explain(graph, images(), "lrp.epsilon", target=1, engine=eager()).values, 1e-5, "after the error")


def test_a_pass_is_traced_on_its_second_call():
    """By default a pass runs eagerly once (a one-off explanation pays no trace) and is traced on its second
    call with that signature; both give the eager numbers."""
    graph, x = GRAPHS["cnn"]()
    traced.clear()
    start = _traces(graph)
    first = attribx.explain(graph, x, "lrp.epsilon", engine="tensorflow").values
    assert _traces(graph) == start
    second = attribx.explain(graph, x, "lrp.epsilon", engine="tensorflow").values
    assert _traces(graph) == start + 1
    close(second, first, 1e-12, "traced against the first, eager call")


def test_compile_pass_false_runs_node_by_node(cnn):
    _, graph = cnn
    before = traced.FALLBACKS["compile_pass=False"]
    attribx.explain(graph, images(), "lrp.epsilon", engine=eager())
    assert traced.FALLBACKS["compile_pass=False"] == before + 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zoo", "attention"])
def test_every_method_traces_with_the_eager_numbers(name):
    """Every registered method on a graph of many ops traces (no pass falls back as untraceable) and gives
    the eager engine's numbers."""
    graph, x = GRAPHS[name]()
    for method in attribx.plugins.registry().methods:
        if method == "attention_rollout" or method.startswith("example."):
            continue
        params = method_params(method)
        before = traced.FALLBACKS["untraceable"]
        try:
            want = attribx.explain(graph, x, method, engine=eager(), **params).values
        except attribx.AttribxError:
            continue        # a method this graph does not take
        got = attribx.explain(graph, x, method, engine=compiled(), **params).values
        assert traced.FALLBACKS["untraceable"] == before, f"{name} {method}: not traceable"
        close(got, want, 1e-9, f"{name} {method}")


def _deep_cnn():
    keras.utils.set_random_seed(5)
    layers = [keras.Input((24, 24, 3))]
    for _ in range(6):
        layers.append(keras.layers.Conv2D(16, 3, padding="same", activation="relu"))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)]
    return keras.Sequential(layers)


def test_ordered_steps_hold_less_than_a_pass_tf_may_run_in_any_order(monkeypatch):
    """Each node's step waits for the relevance that reached the node ``LOOKAHEAD`` steps back
    (``Engine.ordered_after``); without that, TF's executor runs every step that needs only forward values (αβ's
    positive and negative parts of each layer) as soon as the forward pass made them, and holds all of them.
    Peaks from TF's allocator (``Engine.allocated_peak``, what ``attribx benchmark`` reports as
    ``peak_allocated``); measured: 12 (strict order), 16 (2 steps ahead) and 24 layer outputs (any order)."""
    from attribx import propagation
    from attribx.benchmark import measure_memory
    graph = attribx.translate(_deep_cnn())
    x = np.random.default_rng(0).normal(size=(8, 24, 24, 3)).astype(np.float32)
    eng = compiled()

    def peak():
        traced.clear()
        run = lambda: attribx.explain(graph, x, "lrp.epsilon_alpha2_beta1", target=0, engine=eng)   # noqa: E731
        run()
        return measure_memory(eng, run)["peak_allocated"]
    ahead = peak()
    monkeypatch.setattr(propagation, "LOOKAHEAD", 0)
    strict = peak()
    monkeypatch.setattr(TensorFlowEngine, "ordered_after", lambda self, value: contextlib.nullcontext())
    unordered = peak()
    activation = x.size / 3 * 16 * 4                  # one layer's output, bytes
    assert np.isfinite(strict) and strict > activation
    assert strict < ahead - activation and ahead < unordered - 2 * activation, \
        (strict / activation, ahead / activation, unordered / activation)


@pytest.mark.parametrize("threads, ahead", [(1, 0), (4, 2), (0, None)])
def test_steps_run_ahead_only_where_another_thread_can_run_them(monkeypatch, threads, ahead):
    """With one inter-op thread TF runs one op at a time: a step run early is only held longer."""
    import os
    monkeypatch.setattr(tf.config.threading, "get_inter_op_parallelism_threads", lambda: threads)
    if ahead is None:                                       # TF's default (0): one per core
        ahead = 2 if (os.cpu_count() or 1) > 1 else 0
    assert compiled().steps_ahead(2) == ahead
