"""Where an explanation's time goes: seconds per op (or op family) in the forward pass and in the rules of the
relevance pass, with the rules' time split into kernel forwards (z with modified weights), kernel VJPs
(transposed ops) and the rest (elementwise work in the rule). Shared by tf_speed and zoo_speed.

One instrumented run; the engine must run synchronously (eager TF and torch on the CPU do; on a GPU the
times land on whichever op waits for the device).
"""
from __future__ import annotations

import collections
import time

#: op families for the profile tables (ops not named here are their own family)
FAMILIES = {
    "conv": "conv", "conv_transpose": "conv", "linear": "linear",
    "max_pool": "pools", "avg_pool": "pools", "global_avg_pool": "pools",
    "add": "adds", "batch_norm": "norms", "layer_norm": "norms", "rms_norm": "norms",
    "softmax": "attention", "matmul": "attention",
    "relu": "activations", "leaky_relu": "activations", "clip": "activations", "silu": "activations",
    "gelu": "activations", "sigmoid": "activations", "tanh": "activations", "elu": "activations",
    "hardswish": "activations", "hardsigmoid": "activations",
    "mul": "mul", "concat": "shape", "reshape": "shape", "flatten": "shape", "transpose": "shape",
    "slice": "shape", "pad": "shape", "identity": "shape",
}


def family(op):
    base, _, kind = op.partition(" ")
    return FAMILIES.get(base, base) + (f" {kind}" if kind else "")


def op_key(node):
    """The node's op; grouped convs (depthwise, ResNeXt, RegNet) apart from dense ones."""
    if node.op in ("conv", "conv_transpose") and int(node.attrs.get("groups", 1)) > 1:
        return f"{node.op} (grouped)"
    return node.op


class _TimedRule:
    """Wraps a rule to add its wall time to ``totals[op]``."""

    def __init__(self, rule, op, totals):
        self.rule, self.op, self.totals = rule, op, totals
        self.name = getattr(rule, "name", "?")

    def __call__(self, ctx, relevance):
        t0 = time.perf_counter()
        out = self.rule(ctx, relevance)
        self.totals[self.op] += time.perf_counter() - t0
        return out

    def carry(self, ctx, s, r, want):
        t0 = time.perf_counter()
        out = self.rule.carry(ctx, s, r, want)
        self.totals[self.op] += time.perf_counter() - t0
        return out

    def __getattr__(self, key):
        return getattr(self.rule, key)


class Profile:
    """Seconds per op: ``forward`` (the forward pass), ``rules`` (each rule in all), and within the rules
    ``rule_forward`` (kernel forwards) and ``rule_vjp`` (kernel VJPs); ``total`` is the whole call."""

    def __init__(self):
        self.total = 0.0
        self.forward, self.rules = collections.Counter(), collections.Counter()
        self.rule_forward, self.rule_vjp = collections.Counter(), collections.Counter()

    def by_family(self):
        """The same counters summed per op family (:data:`FAMILIES`)."""
        out = Profile()
        out.total = self.total
        for name in ("forward", "rules", "rule_forward", "rule_vjp"):
            for op, t in getattr(self, name).items():
                getattr(out, name)[family(op)] += t
        return out


def profile(graph, engine, run, by_family=False) -> Profile:
    """Time one call of ``run`` (an explanation of ``graph`` on ``engine``), per op."""
    from attribx import methods
    prof = Profile()
    orig_propagate, orig_forward, orig_vjp = methods.propagate, engine.forward, engine.vjp
    state = {"backward": False}

    def forward(node, inputs, params=None):
        t0 = time.perf_counter()
        y = orig_forward(node, inputs, params)
        (prof.rule_forward if state["backward"] else prof.forward)[op_key(node)] += time.perf_counter() - t0
        return y

    def vjp(node, inputs, grad, params=None, output=None):
        t0 = time.perf_counter()
        g = orig_vjp(node, inputs, grad, params, output)
        prof.rule_vjp[op_key(node)] += time.perf_counter() - t0
        return g

    def propagate(g, eng, x, rules, *args, **kwargs):
        timed = {name: _TimedRule(rule, op_key(g[name]), prof.rules) for name, rule in rules.items()}
        orig_init = args[0]   # the forward pass runs first inside propagate; the rules only after it

        def init(scores):
            state["backward"] = True
            return orig_init(scores)
        return orig_propagate(g, eng, x, timed, init, *args[1:], **kwargs)

    methods.propagate, engine.forward, engine.vjp = propagate, forward, vjp
    try:
        t0 = time.perf_counter()
        run()
        prof.total = time.perf_counter() - t0
    finally:
        methods.propagate = orig_propagate
        del engine.forward, engine.vjp
    return prof.by_family() if by_family else prof


def format_profile(label, prof: Profile, top=8):
    fwd, rules = sum(prof.forward.values()), sum(prof.rules.values())
    lines = [f"  {label}: {prof.total:.3f} s in all; forward {fwd:.3f} s, rules {rules:.3f} s "
             f"(kernel forwards {sum(prof.rule_forward.values()):.3f}, VJPs {sum(prof.rule_vjp.values()):.3f}, "
             f"other {rules - sum(prof.rule_forward.values()) - sum(prof.rule_vjp.values()):.3f}), "
             f"outside both {prof.total - fwd - rules:.3f}"]
    for kind, counter in (("rules", prof.rules), ("forward", prof.forward)):
        parts = [f"{op} {t:.3f}" for op, t in counter.most_common(top)]
        lines.append(f"    {kind}: " + ", ".join(parts))
    return "\n".join(lines)


def profile_table(prof: Profile) -> list[str]:
    """A Markdown table: per op family, forward-pass seconds, rule seconds and their split."""
    fams = sorted(set(prof.forward) | set(prof.rules), key=lambda f: -(prof.forward[f] + prof.rules[f]))
    rows = ["| op family | forward pass (s) | rules (s) | in rules: kernel forwards | kernel VJPs | other |",
            "|---|---|---|---|---|---|"]
    for f in fams:
        other = prof.rules[f] - prof.rule_forward[f] - prof.rule_vjp[f]
        rows.append(f"| {f} | {prof.forward[f]:.3f} | {prof.rules[f]:.3f} | {prof.rule_forward[f]:.3f} | "
                    f"{prof.rule_vjp[f]:.3f} | {other:.3f} |")
    fwd, rules = sum(prof.forward.values()), sum(prof.rules.values())
    rows.append(f"| all ({prof.total:.3f} s; {prof.total - fwd - rules:.3f} outside both) | {fwd:.3f} | "
                f"{rules:.3f} | {sum(prof.rule_forward.values()):.3f} | {sum(prof.rule_vjp.values()):.3f} | "
                f"{rules - sum(prof.rule_forward.values()) - sum(prof.rule_vjp.values()):.3f} |")
    return rows


# -- TensorFlow's own profiler: time per TF kernel inside a traced function -------------------------------------
#: events that enclose others (the function, the executor's process) or belong to an XLA launch's inner steps
_ENCLOSING = {"Process", "Run", "ExecuteAsyncOnStream", "Execute", "Done"}


def tf_kernel_profile(run, calls: int = 2, logdir: str | None = None):
    """Milliseconds per call and launches per call of each TF kernel type while ``run`` runs ``calls`` times,
    from TensorFlow's profiler (the traced pass is one graph: only the profiler sees inside it). XLA-fused
    elementwise kernels are listed as "XLA fused (launch)". Best with one inter-op thread, so that the
    kernels' times add up to the call's."""
    import glob
    import shutil
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    logdir = logdir or tempfile.mkdtemp(prefix="attribx-tfprof-")
    try:
        tf.profiler.experimental.start(logdir)
        for _ in range(calls):
            run()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    ms, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            end = -1                                   # kernels inside a kept one (XLA's own) are its time
            for ev in sorted(line.events, key=lambda e: e.offset_ps):
                kernel = names.get(ev.metadata_id, "?").split(":")[-1].strip()
                if kernel in _ENCLOSING or ev.offset_ps < end:
                    continue
                end = ev.offset_ps + ev.duration_ps
                kernel = "XLA fused (launch)" if kernel == "Start" else kernel.replace("_MklNative", "").replace("_Mkl", "")
                ms[kernel] += ev.duration_ps / 1e9 / calls
                count[kernel] += 1
    return [(k, t, count[k] // calls) for k, t in ms.most_common()]


def tf_kernel_table(label, rows, top: int = 12):
    total = sum(t for _, t, _ in rows)
    lines = [f"{label}: {total:.1f} ms in TF kernels per call", "", "| TF kernel | ms per call | share | launches |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {t:.1f} | {t / total:.0%} | {n} |" for k, t, n in rows[:top] if total]
    return "\n".join(lines)
