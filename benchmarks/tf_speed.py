"""Speed of attribx's TensorFlow engine against a TensorFlow gradient pass, over keras.applications.

Each model is built with random weights (``weights=None``, seeded), translated once, and every method is
timed in the same process as the baseline: one ``tf.GradientTape`` gradient of the target logits with
respect to the input, compiled once with ``tf.function`` (the fastest way TensorFlow offers; the eager pass,
with Keras's per-layer Python overhead, is slower and listed with ``--eager-baseline``). Both sides end with
their result as a numpy array. Times are medians of ``--repeat`` rounds after a warm-up (``torch_speed.py``'s
conventions), each method interleaved with the baseline round by round (and with ``--other``'s engine, e.g.
an earlier commit's), so that drifting load on a shared machine hits both sides of a ratio alike: the ratios
are what counts. The engine runs each pass as one traced ``tf.function`` (traced on the first call, whose time
is listed as "tracing call"; by default an engine traces a pass on its second call); ``--eager-engine`` also times it node by node (``compile_pass=False``) in the same
rounds. ``--profile`` adds, per method, the time spent per op family (graph op) in the forward pass
and in the rules of the relevance pass (one extra, instrumented run, node by node); ``--kernels`` the time per
TF kernel type inside the traced pass and inside the baseline, from TensorFlow's profiler (what the traced
graph runs: layout transposes, XLA-fused elementwise kernels, convs).

    python benchmarks/tf_speed.py --models MobileNetV2 EfficientNetB0 ResNet50 Xception DenseNet121
    python benchmarks/tf_speed.py --quick --profile --models MobileNetV2
    TF_NUM_INTEROP_THREADS=1 python benchmarks/tf_speed.py --kernels --models ResNet50 --methods lrp.epsilon
    git archive <commit> plugins/attribx-tf/src | tar -x -C /tmp/old
    python benchmarks/tf_speed.py --other /tmp/old/plugins/attribx-tf/src
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _profile import format_profile, profile, tf_kernel_profile, tf_kernel_table  # noqa: E402  shared with zoo_speed
from _timing import time_interleaved, time_it  # noqa: E402  shared with torch_speed / zoo_speed
from torch_speed import OURS  # noqa: E402  the same composites and parameters as the torch benchmark

MODELS = ["MobileNetV2", "EfficientNetB0", "ResNet50", "Xception", "DenseNet121"]
GRADIENT_METHODS = ["gradient", "gradient_x_input"]


def build(model_name, size):
    """A keras.applications model with random weights (seeded) for ``size``×``size`` RGB inputs."""
    import keras
    keras.utils.set_random_seed(0)
    return getattr(keras.applications, model_name)(weights=None, input_shape=(size, size, 3), classes=1000)


def gradient_runner(model, x, target, compiled=True):
    """TensorFlow's own gradient pass, compiled by ``tf.function`` (the baseline every ratio divides by)
    or eager (``compiled=False``: Keras's per-layer Python overhead included, for reference)."""
    import tensorflow as tf
    idx = tf.stack([tf.range(len(target)), tf.constant(target, tf.int32)], axis=1)

    def grad(xi):
        with tf.GradientTape() as tape:
            tape.watch(xi)
            out = model(xi, training=False)
            score = tf.reduce_sum(tf.gather_nd(out, idx))
        return tape.gradient(score, xi)
    if compiled:
        grad = tf.function(grad, input_signature=[tf.TensorSpec(x.shape, x.dtype)])

    def run():
        return grad(x).numpy()
    return run


def attribx_runner(graph, engine, x, target, method):
    import attribx

    def run():
        return attribx.explain(graph, x, method, target=target, engine=engine, **OURS.get(method, {})).values
    return run


def engine_from(src_dir):
    """The TensorFlow engine of another attribx_tf source tree (e.g. an earlier commit's, unpacked with
    ``git archive <commit> plugins/attribx-tf/src | tar -x -C DIR``), imported as ``attribx_tf_other`` with
    its own kernels, to time before and after side by side in one process."""
    import importlib
    import importlib.util
    pkg = os.path.join(src_dir, "attribx_tf")
    spec = importlib.util.spec_from_file_location("attribx_tf_other", os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules["attribx_tf_other"] = module
    spec.loader.exec_module(module)
    engine = importlib.import_module("attribx_tf_other.engine").TensorFlowEngine()
    engine._kernels = dict(importlib.import_module("attribx_tf_other.kernels").KERNELS)
    return engine


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--size", type=int, default=None, help="input height and width (default 224; 96 with --quick)")
    p.add_argument("--quick", action="store_true", help="small inputs (96×96), 2 repeats")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=None, help="timed runs per method after a warm-up (default 3)")
    p.add_argument("--methods", nargs="+", default=list(OURS) + GRADIENT_METHODS)
    p.add_argument("--eager-baseline", action="store_true", help="also time the eager GradientTape pass")
    p.add_argument("--profile", action="store_true", help="time per op family (forward and rules), per method")
    p.add_argument("--kernels", action="store_true",
                   help="time per TF kernel type in the traced pass and the baseline (TensorFlow's profiler)")
    p.add_argument("--other", default=None, metavar="SRC",
                   help="also time the engine of another attribx_tf source tree (a folder holding attribx_tf/)")
    p.add_argument("--eager-engine", action="store_true",
                   help="also time the engine node by node (TensorFlowEngine(compile_pass=False)) in the same rounds")
    p.add_argument("--note", default="", help="a note for the table's heading (e.g. the machine's load)")
    p.add_argument("--out", default=None, help="append a Markdown table to this file")
    args = p.parse_args(argv)
    size = args.size or (96 if args.quick else 224)
    repeat = args.repeat or (2 if args.quick else 3)

    import tensorflow as tf

    import attribx
    rng = np.random.default_rng(0)
    rows, profiles = [], []
    other = engine_from(args.other) if args.other else None
    for model_name in args.models:
        model = build(model_name, size)
        x_np = rng.standard_normal((args.batch, size, size, 3)).astype(np.float32)
        x = tf.constant(x_np)
        target = np.arange(args.batch) % 1000
        base = gradient_runner(model, x, target)
        base_t = time_it(base, repeat)
        rows.append((model_name, "TF gradient (GradientTape in tf.function)", base_t, 1.0, None, None, None))
        print(rows[-1], flush=True)
        if args.kernels:
            profiles.append(tf_kernel_table(f"{model_name}, TF gradient", tf_kernel_profile(base)))
            print(profiles[-1], flush=True)
        if args.eager_baseline:
            t_base, t = time_interleaved([base, gradient_runner(model, x, target, compiled=False)], repeat)
            rows.append((model_name, "TF gradient (GradientTape, eager)", t, t / t_base, None, None, None))
            print(rows[-1], flush=True)
        graph = attribx.translate(model)
        engine = attribx.get_engine("tensorflow")
        engine.trace_after = 0            # traced on the first call (by default the second), timed as "tracing call"
        eager = attribx.get_engine(type(engine)(compile_pass=False)) if args.eager_engine else None
        for method in args.methods:
            runs = [base, attribx_runner(graph, engine, x, target, method)]
            extra = [e for e in (eager, other) if e is not None]
            runs += [attribx_runner(graph, e, x, target, method) for e in extra]
            try:
                t0 = time.perf_counter()
                runs[1]()                 # traces the pass
                first = time.perf_counter() - t0
                times = time_interleaved(runs, repeat)
            except Exception as err:   # a method that cannot run this model is reported, not fatal
                print(f"{method} {model_name}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            t_base, t = times[:2]
            ratios = {e: tt / t_base for e, tt in zip(extra, times[2:])}
            rows.append((model_name, method, t, t / t_base, first, ratios.get(eager), ratios.get(other)))
            print(rows[-1], flush=True)
            if args.profile:
                profiles.append(format_profile(f"{model_name} {method}", profile(graph, engine, runs[1])))
                print(profiles[-1], flush=True)
            if args.kernels:
                profiles.append(tf_kernel_table(f"{model_name} {method}", tf_kernel_profile(runs[1])))
                print(profiles[-1], flush=True)
        del model, graph, engine
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    note = f"; {args.note}" if args.note else ""
    table = [f"\n### {time.strftime('%Y-%m-%d %H:%M')}: {machine}, CPU, batch {args.batch}, {size}×{size}, "
             f"TensorFlow {tf.__version__}, median of {repeat} after a warm-up{note}\n",
             "| model | method | median time (s) | × TF gradient | tracing call (s) |"
             + (" × TF gradient, eager engine |" if args.eager_engine else "") + (" × TF gradient, --other |" if other else ""),
             "|---|---|---|---|---|" + ("---|" if args.eager_engine else "") + ("---|" if other else "")]

    def cell(v, fmt="{:.2f}"):
        return " |" if v is None else " " + fmt.format(v) + " |"
    for model_name, method, t, r, first, r_eager, before in rows:
        table.append(f"| {model_name} | {method} | {t:.3f} | {r:.2f} |" + cell(first, "{:.1f}")
                     + (cell(r_eager) if args.eager_engine else "") + (cell(before) if other else ""))
    text = "\n".join(table)
    print(text)
    if profiles:
        print("\nprofiles:\n" + "\n\n".join(profiles))
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
