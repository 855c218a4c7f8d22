"""The zoo benchmark: every torchvision classifier and every keras.applications model that translates, each
LRP composite and the gradient methods as a ratio to the framework's own gradient pass, and peak memory.

Setting: random weights (``weights=None``, seeded), eval mode, a stated batch (default 4) and input size
(default 224×224), float32. One model per subprocess, so that peak memory is per model and a crash (or a
model out of memory) does not stop the run; a model that does not translate is listed with its one-line
error. Baselines: torch autograd of the target logits w.r.t. the input (torch); one ``tf.GradientTape``
gradient compiled by ``tf.function`` (Keras, :func:`tf_speed.gradient_runner`). Each method is timed
interleaved with the baseline round by round (:func:`_timing.time_interleaved`), median of ``--repeat`` rounds
after a warm-up, so the ratios hold on a loaded machine even where the absolute times do not.

Peak memory, torch on the CPU: the growth of the resident set during one call, after a warm-up call (Linux VmHWM
reset through /proc/self/clear_refs after ``malloc_trim``, :func:`_timing.peak_rss_growth`), for the gradient pass
and for each method; the ratio divides the two. Peaks are taken in a process of their own, started with glibc's
mmap threshold fixed (:data:`_timing.FIXED_MMAP`), so that the resident set follows what is allocated rather than
how the heap's freed gaps happened to be reused; ``--repeat 0`` measures memory only. What a first call allocates
and keeps (the engine's parameters, which share the graph's arrays on the CPU) is not in either; ``translate
MiB`` is the resident set that translation added (the graph's own parameter arrays: 0 when it shares the
model's). Keras: the peak of TensorFlow's own allocator above what it held before the call
(:func:`_timing.peak_tf_growth`; TF pools freed blocks, so its resident set hardly grows after a warm-up).
GPU (``--device cuda``): ``torch.cuda.max_memory_allocated`` above what was allocated before the call.

    python benchmarks/zoo_speed.py --framework torch --out benchmarks/RESULTS.md          # the whole zoo
    python benchmarks/zoo_speed.py --size 64 --models resnet18 mobilenet_v2 --repeat 1   # a quick look
    python benchmarks/zoo_speed.py --framework keras --limit 5
    python benchmarks/zoo_speed.py --json run.json --resume     # go on with a run that was stopped
    python benchmarks/zoo_speed.py --profile resnet50 --methods lrp.epsilon_gamma_box    # time per op family
    python benchmarks/zoo_speed.py --report benchmarks/zoo_torch_cpu_224.json --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing  # noqa: E402
from _profile import profile, profile_table  # noqa: E402
from torch_speed import OURS  # noqa: E402  the composites and their parameters, as in torch_speed / tf_speed

GRADIENTS = ["gradient", "gradient_x_input"]
#: issue 20's goals, × the framework's gradient pass
GOALS = {"lrp.epsilon": 1.3, "lrp.epsilon_plus_flat": 2.0, "lrp.epsilon_gamma_box": 2.0,
         "lrp.epsilon_alpha2_beta1": 3.0, "lrp.attn": 1.5}
#: torchvision's transformers: explained with lrp.attn
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def is_transformer(name):
    return name.startswith(TRANSFORMERS)


def methods_for(name, asked):
    """The methods for one model: the CNN composites, or lrp.attn for transformers; then the gradients."""
    if asked:
        return list(asked)
    return (["lrp.attn"] if is_transformer(name) else list(OURS)) + GRADIENTS


def model_names(framework):
    if framework == "torch":
        import torchvision
        return list(torchvision.models.list_models(module=torchvision.models))
    import keras
    return sorted(n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n)))


def one_line(err):
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:300]


# -- one model, in the child process ------------------------------------------------------------------------
def torch_setup(name, size, batch, device):
    """(baseline runner, explain(method) -> runner, sync, parameter count) of a torchvision model."""
    import torch
    import torchvision

    import attribx
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.arange(batch, device=device) % 1000
    rows = torch.arange(batch, device=device)

    def base():
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[rows, target].sum(), xi)
        return g
    graph = attribx.translate(model, input_shape=(3, size, size))
    engine = attribx.plugins.registry().engine("torch")(device=device)
    target_np = target.cpu().numpy()

    def explain(method):
        def run():
            return attribx.explain(graph, x, method, target=target_np, engine=engine, **OURS.get(method, {}))
        return run

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    n = sum(p.numel() for p in model.parameters())
    return base, explain, sync, n, graph, engine


def keras_setup(name, size, batch, device):
    import tensorflow as tf

    import attribx
    from tf_speed import attribx_runner, build, gradient_runner
    model = build(name, size)
    x = tf.constant(np.random.default_rng(0).standard_normal((batch, size, size, 3)).astype(np.float32))
    target = np.arange(batch) % 1000
    base = gradient_runner(model, x, target)
    graph = attribx.translate(model)
    engine = attribx.plugins.registry().engine("tensorflow")()

    def explain(method):
        """The runner, called once more than the timing's warm-up: the engine traces a pass on its second call
        (the tracing call costs several passes and is listed by ``tf_speed.py``), so every timed call is traced."""
        run = attribx_runner(graph, engine, x, target, method)
        run()
        return run
    return base, explain, lambda: None, int(model.count_params()), graph, engine


def measure(framework, name, size, batch, device, methods, repeat, memory=True):
    """Times and peak memory of every method on one model (a dict for the JSON)."""
    rec = {"model": name, "framework": framework, "size": size, "batch": batch, "device": device}
    setup = torch_setup if framework == "torch" else keras_setup
    import attribx  # noqa: F401  imports first: ``setup_mib`` is what the model and its translation add
    if framework == "torch":
        import torchvision  # noqa: F401
    else:
        import keras  # noqa: F401
    rss0 = _timing.rss_mib()
    t0 = time.perf_counter()
    try:
        base, explain, sync, n_params, graph, engine = setup(name, size, batch, device)
    except Exception as err:     # a model that does not build or translate: its one-line error
        rec["error"] = one_line(err)
        return rec
    rec.update(params=n_params, setup_s=time.perf_counter() - t0, setup_mib=_timing.rss_mib() - rss0,
               graph_nodes=len(graph.nodes))
    cuda = device.startswith("cuda")

    def peak(run):
        if framework == "keras":
            return _timing.peak_tf_growth(run, engine)
        return _timing.peak_cuda_growth(run, sync) if cuda else _timing.peak_rss_growth(run)
    base()
    rec["methods"], runs = {}, {}
    for method in methods:
        run = explain(method)
        try:
            if repeat:
                t_base, t = _timing.time_interleaved([base, run], repeat, sync)
            else:                           # --repeat 0: memory only, after one warm-up call
                run()
        except Exception as err:    # a method that cannot run this model: reported, not fatal
            rec["methods"][method] = {"error": one_line(err)}
            continue
        runs[method] = run
        rec["methods"][method] = {"time_s": t, "gradient_s": t_base, "ratio": t / t_base} if repeat else {}
    if memory:
        rec["mmap_threshold"] = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        rec["gradient_mib"] = peak(base)
        for method, run in runs.items():
            try:
                m = peak(run)
            except Exception as err:
                rec["methods"][method]["error"] = one_line(err)
                continue
            g = rec["gradient_mib"]
            rec["methods"][method].update(peak_mib=m, mem_ratio=m / g if m is not None and g else None)
    rec["rss_end_mib"] = _timing.rss_mib()
    return rec


# -- the parent: one subprocess per model ---------------------------------------------------------------------
def run_zoo(args, names, records=()):
    """Measure ``names`` after ``records`` (a resumed run's), saving after every model: per model one subprocess
    for the times and one for the peaks (started with glibc's mmap threshold fixed, :data:`_timing.FIXED_MMAP`)."""
    from tqdm import tqdm
    records = list(records)
    for name in (bar := tqdm(names, unit="model")):
        bar.set_postfix_str(name)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--framework", args.framework,
               "--models", name, "--size", str(args.size), "--batch", str(args.batch), "--device", args.device]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--methods", *args.methods] if args.methods else []
        rec = None
        if args.repeat:
            rec = child(args, name, cmd + ["--repeat", str(args.repeat), "--no-memory"])
        if not args.no_memory and (rec is None or "error" not in rec):
            mem = child(args, name, cmd + ["--repeat", "0"], env={**os.environ, **_timing.FIXED_MMAP})
            rec = merge_memory(rec, mem)
        rec["load"] = os.getloadavg()
        records.append(rec)
        bar.write(summary_line(rec))
        save_json(args, records)      # after every model: an interrupted run keeps what it measured
    return records


def child(args, name, cmd, env=None):
    """One model measured in a subprocess: its record, or one with the one-line reason it has none."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "framework": args.framework, "error": f"timed out after {args.timeout} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
    return {"model": name, "framework": args.framework, "error": f"crashed ({out.returncode}): {err[:300]}"}


def merge_memory(rec, mem):
    """The times' record with the memory child's peaks added (that child's record where there are no times); a
    memory child that failed leaves the times and says why under ``memory_error``."""
    if rec is None:
        return mem
    if "error" in mem:
        return {**rec, "memory_error": mem["error"]}
    rec = {**rec, **{k: mem[k] for k in ("gradient_mib", "mmap_threshold") if k in mem}}
    for method, v in mem.get("methods", {}).items():
        keep = {k: v[k] for k in ("peak_mib", "mem_ratio") if k in v}
        if "error" in v:
            keep["memory_error"] = v["error"]
        rec["methods"][method] = {**rec["methods"].get(method, {}), **keep}
    return rec


def resumed(args):
    """The records of the saved run that ``--resume`` continues; refused in one line when its setting differs
    (a table mixing sizes, batches or devices would compare unlike with unlike)."""
    path = json_path(args)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    meta = data["meta"]
    for key in ("framework", "device", "size", "batch", "repeat"):
        if meta.get(key) != getattr(args, key):
            sys.exit(f"--resume: {path} was run with {key}={meta.get(key)!r}, not {getattr(args, key)!r}")
    args.started, args.load_start = meta["started"], meta["load_start"]
    return data["records"]


def summary_line(rec):
    if "error" in rec:
        return f"{rec['model']}: {rec['error']}"
    parts = [f"{m} failed" if "error" in v else
             " ".join([f"{m}"] + [f"{v[k]:.2f}{unit}" for k, unit in (("ratio", ""), ("mem_ratio", " mem"))
                                  if v.get(k) is not None]) for m, v in rec["methods"].items()]
    return f"{rec['model']}: " + ", ".join(parts)


def json_path(args):
    return args.json or os.path.join(HERE, f"zoo_{args.framework}_{args.device.split(':')[0]}_{args.size}.json")


def save_json(args, records):
    meta = {"framework": args.framework, "device": args.device, "size": args.size, "batch": args.batch,
            "repeat": args.repeat, "machine": machine(args.device), "started": args.started,
            "load_start": args.load_start, "versions": versions(args.framework)}
    with open(json_path(args), "w") as f:
        json.dump({"meta": meta, "records": records}, f, indent=1)


def machine(device):
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def set_threads(framework, n):
    if framework != "keras":
        import torch
        torch.set_num_threads(n)
    else:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(n)


def versions(framework):
    if framework == "torch":
        import torch
        return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    import tensorflow as tf
    return f"TensorFlow {tf.__version__}"


# -- the report ------------------------------------------------------------------------------------------------
def report(data, plot_path=None):
    """Markdown: per model the time ratio of each method and the memory ratios; medians; failures."""
    meta, records = data["meta"], data["records"]
    ok = [r for r in records if "error" not in r]
    methods = []
    for r in ok:
        methods += [m for m in r["methods"] if m not in methods]
    loads = [r["load"][0] for r in records if r.get("load")]
    load = f"load average {min(loads):.1f}–{max(loads):.1f} (1 min) during the run" if loads else ""
    lines = [f"\n### {meta['started']}: zoo, {meta['framework']}, {meta['machine']}, device {meta['device']}, "
             f"batch {meta['batch']}, {meta['size']}×{meta['size']}, {meta['versions']}, median of "
             f"{meta['repeat']} rounds after a warm-up; {load}\n",
             f"{len(ok)} of {len(records)} models measured. Time: × the framework's gradient pass timed beside it. "
             f"Memory: {_memory_kind(meta, ok)}, × the gradient pass's; "
             "`grad MiB` is the gradient pass's, `translate MiB` what building and translating the model added.\n",
             "| model | params (M) | gradient (s) | " + " | ".join(f"{m} ×" for m in methods) +
             " | grad MiB | " + " | ".join(f"{m} mem ×" for m in methods) + " | translate MiB |",
             "|---|---|---|" + "---|" * (2 * len(methods) + 2)]
    for r in ok:
        cells = [r["model"], f"{r['params'] / 1e6:.1f}"]
        ts = [v["gradient_s"] for v in r["methods"].values() if "gradient_s" in v]
        cells.append(f"{statistics.median(ts):.3f}" if ts else "")
        cells += [_cell(r["methods"].get(m), "ratio") for m in methods]
        cells.append("" if r.get("gradient_mib") is None else f"{r['gradient_mib']:.0f}")
        cells += [_cell(r["methods"].get(m), "mem_ratio") for m in methods]
        cells.append(f"{r.get('setup_mib', 0):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | goal | models | median × | max × (model) | over the goal | median mem × "
                  "| max mem × |", "|---|---|---|---|---|---|---|---|"]
    for m in methods:
        vals = [(r["methods"][m]["ratio"], r["model"]) for r in ok if "ratio" in r["methods"].get(m, {})]
        mems = [r["methods"][m]["mem_ratio"] for r in ok if r["methods"].get(m, {}).get("mem_ratio") is not None]
        if not vals and not mems:
            continue
        goal = GOALS.get(m)
        times = " | | "                     # a memory-only run (--repeat 0)
        if vals:
            worst = max(vals)
            over = "" if goal is None else str(sum(v > goal for v, _ in vals))
            times = f"{statistics.median(v for v, _ in vals):.2f} | {worst[0]:.2f} ({worst[1]}) | {over}"
        mem = (f"{statistics.median(mems):.2f} | {max(mems):.2f}") if mems else " | "
        lines.append(f"| {m} | {'' if goal is None else f'≤ {goal}'} | {max(len(vals), len(mems))} | {times} | {mem} |")
    failed = [r for r in records if "error" in r]
    if failed:
        lines += ["", "Not measured (one-line error):", ""]
        lines += [f"- {r['model']}: {r['error']}" for r in failed]
    broken = [(r["model"], m, v["error"]) for r in ok for m, v in r["methods"].items() if "error" in v]
    lines += [f"- {model} {m}: {e}" for model, m, e in broken]
    if plot_path:
        lines += ["", f"Plot: `{os.path.relpath(plot_path, HERE)}` (ratio per model per method, log scale; "
                      "dashed: goals)."]
    return "\n".join(lines)


def _memory_kind(meta, records) -> str:
    """What the memory columns measured (older runs: the resident set with glibc's default threshold)."""
    if meta["device"].startswith("cuda"):
        return "peak allocated during one call (torch.cuda.max_memory_allocated)"
    if not any("mmap_threshold" in r for r in records):
        return "peak growth of the resident set during one call, glibc's default mmap threshold"
    if meta["framework"] == "keras":
        return "peak of TensorFlow's allocator during one call (tf.config.experimental.get_memory_info)"
    return "peak growth of the resident set during one call, in a process with glibc's mmap threshold fixed"


def _cell(v, key):
    if v is None:
        return ""
    if "error" in v:
        return "fails"
    return "" if v.get(key) is None else f"{v[key]:.2f}"


def plot(data, path):
    """Time ratio per model (x) per method (marker), log scale, goals as dashed lines."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in data["records"] if "error" not in r]
    if not ok:
        return None
    methods = []
    for r in ok:
        methods += [m for m in r["methods"] if m not in methods]
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(ok) + 2), 5))
    xs = np.arange(len(ok))
    for k, m in enumerate(methods):
        ys = [r["methods"].get(m, {}).get("ratio", np.nan) for r in ok]
        shift = (k - (len(methods) - 1) / 2) * 0.08     # methods side by side at each model
        line = ax.plot(xs + shift, ys, "o" if m in GOALS else "x", ms=4, ls="none", label=m)[0]
        if m in GOALS:
            ax.axhline(GOALS[m], color=line.get_color(), ls="--", lw=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    ax.set_xticks(xs, [r["model"] for r in ok], rotation=90, fontsize=7)
    ax.set_ylabel("× gradient pass")
    meta = data["meta"]
    ax.set_title(f"attribx zoo ({meta['framework']}, {meta['device']}, batch {meta['batch']}, "
                 f"{meta['size']}×{meta['size']}): time ÷ the framework's gradient pass", fontsize=9)
    ax.grid(True, which="both", axis="y", lw=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(data, out, plot_to=None):
    meta = data["meta"]
    png = plot_to or os.path.join(os.path.dirname(os.path.abspath(out)) if out else HERE,
                                  f"zoo_{meta['framework']}_{meta['device'].split(':')[0]}_{meta['size']}.png")
    png = plot(data, png)
    text = report(data, png)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


# -- profile mode -----------------------------------------------------------------------------------------------
def run_profile(args):
    """Per op family, where one explanation's time goes on the torch engine (one instrumented run per method)."""
    setup = torch_setup if args.framework == "torch" else keras_setup
    base, explain, sync, _, graph, engine = setup(args.profile, args.size, args.batch, args.device)
    t_base = _timing.time_it(base, args.repeat, sync)
    text = [f"\n#### profile: {args.profile} ({args.framework}, {args.device}, batch {args.batch}, "
            f"{args.size}×{args.size}); gradient pass {t_base:.3f} s\n"]
    for method in args.methods or list(OURS):
        run = explain(method)
        run()
        prof = profile(graph, engine, run, by_family=True)
        text += [f"{method}: {prof.total:.3f} s ({prof.total / t_base:.2f}× the gradient pass)", ""]
        text += profile_table(prof) + [""]
    print("\n".join(text))
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(text) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--framework", choices=["torch", "keras", "both"], default="torch")
    p.add_argument("--models", nargs="+", default=None, help="default: every model of the framework")
    p.add_argument("--skip", nargs="+", default=[], help="models left out")
    p.add_argument("--limit", type=int, default=None, help="only the first N models")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: the four LRP composites (lrp.attn for transformers) and the two gradient methods")
    p.add_argument("--threads", type=int, default=None, help="torch / TF intra-op threads (default: theirs)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    p.add_argument("--json", default=None,
                   help="raw numbers (default: benchmarks/zoo_<framework>_<device>_<size>.json)")
    p.add_argument("--out", default=None, help="append the Markdown table to this file (e.g. benchmarks/RESULTS.md)")
    p.add_argument("--plot", default=None, help="the plot's path (default: next to --out)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in the JSON: its models are kept, not measured again")
    p.add_argument("--report", default=None, metavar="JSON", help="only write the table and plot of a saved run")
    p.add_argument("--profile", default=None, metavar="MODEL", help="time per op family for one model")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            return write_report(json.load(f), args.out, args.plot)
    if args.threads:
        set_threads(args.framework, args.threads)
    if args.profile:
        return run_profile(args)
    if args.child:
        (name,) = args.models
        rec = measure(args.framework, name, args.size, args.batch, args.device, methods_for(name, args.methods),
                      args.repeat, not args.no_memory)
        print(json.dumps(rec), flush=True)
        return
    for framework in (["torch", "keras"] if args.framework == "both" else [args.framework]):
        args.framework = framework
        names = [n for n in (args.models or model_names(framework)) if n not in args.skip][:args.limit]
        args.started, args.load_start = time.strftime("%Y-%m-%d %H:%M"), os.getloadavg()
        done = resumed(args) if args.resume else []
        measured = {r["model"] for r in done}
        names = [n for n in names if n not in measured]
        records = run_zoo(args, names, done)
        with open(json_path(args)) as f:
            data = json.load(f)
        assert len(data["records"]) == len(records)
        write_report(data, args.out, args.plot)


if __name__ == "__main__":
    main()
