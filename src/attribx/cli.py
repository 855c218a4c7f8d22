"""The ``attribx`` command line; it mirrors the Python API.

Errors attribx raises on purpose (bad method, parameter, shape, NaN, file) print one line on stderr
and exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from functools import partial
from typing import Sequence

import numpy as np

from .api import evaluate, explain, translate
from .arguments import parse_params, parse_target
from .benchmark import main as benchmark
from .demo import run_demo
from .distributed import explain_dataset_distributed
from .errors import AttribxError, AttribxWarning, InputError
from .evaluators.plots import plot_result
from .evaluators.spray import export_virelay, plot_spray, spray
from .input_files import read_inputs, require_batch_axis
from .plugins import registry
from .render import check_cmap, render
from .safe_writes import check_writable, writer_lock
from .storage import open_relevance, sample_count, save
from .streaming import explain_dataset
from .version import __version__

def existing_samples(path: str) -> int:
    """How many samples an existing relevance file holds (0 if there is none), so appended ids continue."""
    return sample_count(path)


def cmd_plugins(args) -> int:
    print(registry().report(ops=args.ops))
    return 0


def cmd_inspect(args) -> int:
    graph = translate(args.model, passes=not args.no_passes)
    print(graph.summary())
    return 0


def _streaming(args) -> bool:
    """Stream (batch by batch into the file, resumable) with --resume/--stream, or for inputs that are not
    a .npy/.npz file (a directory of images, file.h5:dataset, a .zarr array)."""
    inp = args.inputs
    return bool(args.resume or args.stream or getattr(args, "scheduler", None)
                or not (os.path.isfile(inp) and inp.endswith((".npy", ".npz"))))


def check_npy_samples(path: str) -> None:
    """Refuse, from its header alone, a .npy file with no batch axis or no samples (nothing to stream)."""
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err) or "object" in str(err):
            raise InputError(f"{path}: holds Python objects (dtype object), which attribx does not load; save a "
                             f"numeric array") from None
        return      # streaming says what it cannot read
    except OSError:
        return
    if x.ndim == 0:
        require_batch_axis(path, np.asarray(x))
    if x.shape[0] == 0:
        raise InputError(f"{path}: input has no samples (shape {x.shape})")


def cmd_explain_streaming(args) -> int:
    run = explain_dataset
    if getattr(args, "scheduler", None):       # batches on a dask cluster, the same resumable file
        run = partial(explain_dataset_distributed, scheduler=args.scheduler)
    if args.append:
        raise InputError("--append and streaming (--stream/--resume) do not mix: a streamed file is continued "
                         "with --resume")
    if args.inputs.endswith(".npz"):
        raise InputError(f"{args.inputs}: streaming reads .npy, file.h5:dataset, .zarr or a directory of images, "
                         "not .npz (which cannot be read in parts); save the array with np.save")
    for flag, value in (("--key", args.key), ("--labels-key", args.labels_key)):
        if value is not None:
            raise InputError(f"{flag} {value!r}: streaming reads one array (.npy, file.h5:dataset, .zarr or a "
                             f"directory of images), which has no named arrays; leave {flag} out")
    if os.path.isfile(args.inputs) and args.inputs.endswith(".npy"):
        check_npy_samples(args.inputs)
    r = run(args.model, args.inputs, args.output, args.method, parse_target(args.target),
            output=args.output_node, engine=args.engine, layers=args.layers, batch_size=args.batch_size or 256,
            resume=args.resume, progress_bar=None,
            attrs={"inputs_file": os.path.abspath(args.inputs)}, **parse_params(args.param))
    done = f" (resumed at sample {r['resumed_at']})" if r["resumed_at"] else ""
    print(f"wrote relevance of {r['samples']} samples ({args.method}) to {args.output}{done}")
    return 0


def check_outputs(*paths) -> None:
    """Refuse now, before any computation, output paths that could not be written."""
    for path in paths:
        if path is not None:
            check_writable(path)


def cmd_explain(args) -> int:
    check_outputs(args.output)
    if _streaming(args):
        return cmd_explain_streaming(args)
    x, labels = read_inputs(args.inputs, args.key, args.labels_key)
    # --append: one run at a time from counting the file's samples to the save (ids must not collide)
    with writer_lock(args.output) if args.append else contextlib.nullcontext():
        first = existing_samples(args.output) if args.append else 0
        rel = explain(args.model, x, args.method, parse_target(args.target), output=args.output_node,
                      engine=args.engine, layers=args.layers, batch_size=args.batch_size, labels=labels,
                      sample=np.arange(first, first + len(x)), progress_bar=None, **parse_params(args.param))
        rel.attrs["inputs_file"] = os.path.abspath(args.inputs)
        save(rel, args.output, mode="a" if args.append else "w")
    print(f"wrote relevance of {rel.sizes['sample']} samples ({args.method}) to {args.output}")
    return 0


def cmd_render(args) -> int:
    check_outputs(args.output)
    if args.cmap is not None:
        check_cmap(args.cmap)
    variable = args.variable[0] if args.variable and len(args.variable) == 1 else args.variable
    with open_relevance(args.relevance) as rel:
        kind = render(rel, args.output, samples=args.samples, variable=variable, inputs=args.inputs,
                      overlay=args.overlay, cmap=args.cmap, norm=args.norm, scale=args.scale, rows=args.rows,
                      channel=args.channel, reduce=args.reduce, class_names=args.class_names, size=args.size,
                      dpi=args.dpi)
    print(f"wrote {kind} heatmaps to {args.output}")
    return 0


def cmd_evaluate(args) -> int:
    check_outputs(args.output, args.plot)
    params = parse_params(args.param)
    for key, value in (("engine", args.engine), ("batch_size", args.batch_size), ("variable", args.variable)):
        if value is not None:
            params.setdefault(key, value)
    x = read_inputs(args.inputs, args.key)[0] if args.inputs else None
    if args.relevance is not None and not os.path.exists(args.relevance):
        raise InputError(f"{args.relevance}: no such file")
    result = evaluate(args.name, args.model, x, args.relevance, **params)
    if args.inputs:
        result.attrs["inputs_file"] = os.path.abspath(args.inputs)
    save(result, args.output)
    summary = ", ".join(f"{k} {result.attrs[k]:.4g}" for k in ("aopc", "aopc_random", "aopc_relative")
                        if isinstance(result.attrs.get(k), float))
    print(f"wrote {args.name} of {result.sizes.get('sample', 0)} samples to {args.output}"
          + (f" ({summary})" if summary else ""))
    if args.plot:
        plot_result(result).savefig(args.plot, dpi=110)
        print(f"wrote the plot to {args.plot}")
    return 0


def cmd_spray(args) -> int:
    check_outputs(args.output, args.plot)
    if not os.path.exists(args.relevance):
        raise InputError(f"{args.relevance}: no such file")
    params = parse_params(args.param)
    if args.variable is not None:
        params.setdefault("variable", args.variable)
    result = spray(relevance=args.relevance, **params)
    save(result, args.output)
    print(f"wrote SpRAy of {result.sizes['sample']} heatmaps to {args.output} (eigengap suggests "
          f"{result.attrs['n_clusters']} clusters; {result.attrs['n_clusters_used']} found)")
    if args.plot:
        plot_spray(result).savefig(args.plot, dpi=110)
        print(f"wrote the plot to {args.plot}")
    if args.virelay:
        x = read_inputs(args.inputs, args.key)[0] if args.inputs else None
        project = export_virelay(result, args.relevance, args.virelay, inputs=x, variable=params.get("variable"))
        print(f"wrote a ViRelAy project to {project}")
    return 0


def cmd_benchmark(args) -> int:
    benchmark(args.out, methods=args.methods, models=args.models, evaluators=args.evaluators, n=args.samples,
              engine=args.engine, batch_size=args.batch_size, seed=args.seed, inputs=args.inputs, repeats=args.repeats)
    return 0


def cmd_demo(args) -> int:
    run_demo(args.out, backend=args.backend, n_images=args.images,
             progress_bar=False if args.no_progress else None)
    return 0


def _installed() -> dict[str, str]:
    """The names --help lists, from the installed plugins: methods, engines, evaluators, model file formats."""
    reg = registry()
    names = {kind: ", ".join(sorted(getattr(reg, kind))) or "none" for kind in ("methods", "engines", "evaluators")}
    names["formats"] = ", ".join(reg.formats) or "none"
    return names


TARGET_HELP = ("the class explained: a class index (e.g. 3), 'predicted' (default: each sample's predicted class), "
               "or a .npy file of one class index per sample")


def build_parser() -> argparse.ArgumentParser:
    installed = _installed()
    engine_help = (f"engine that runs the graph (default: the model's framework's, else numpy); installed: "
                   f"{installed['engines']}")
    model_help = f"model file, of a format an installed plugin reads: {installed['formats']}"
    p = argparse.ArgumentParser(prog="attribx", description="Explain neural-network predictions (LRP and relatives).")
    p.add_argument("--version", action="version", version=f"attribx {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("plugins", help="list plugins, where they come from and what they add")
    sp.add_argument("--ops", action="store_true", help="also describe every op of the graph's op set")
    sp.set_defaults(func=cmd_plugins)

    sp = sub.add_parser("inspect", help="print a model's graph summary")
    sp.add_argument("model", help=model_help)
    sp.add_argument("--no-passes", action="store_true", help="show the graph before canonicalisation")
    sp.set_defaults(func=cmd_inspect)

    sp = sub.add_parser("explain", help="explain a model's predictions and save labeled relevance (HDF5)")
    sp.add_argument("model", help=model_help)
    sp.add_argument("inputs", help=".npy or .npz file of inputs (batch axis first); streaming also takes "
                                   "file.h5:dataset, a .zarr array or a directory of images")
    sp.add_argument("--method", "-m", default="lrp.epsilon",
                    help=f"method (default: lrp.epsilon; its parameters with -p): {installed['methods']}")
    sp.add_argument("--target", "-t", default="predicted", help=TARGET_HELP)
    sp.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                    help="method parameter, e.g. -p epsilon=0.25 (repeatable; values parsed as JSON)")
    sp.add_argument("--engine", default=None, help=engine_help)
    sp.add_argument("--layers", nargs="*", default=None, help="also return relevance at these nodes")
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--output-node", default=None, metavar="NAME",
                    help="the node whose values are explained (a model with several outputs needs it)")
    sp.add_argument("--key", default=None, help="array name in an .npz input file")
    sp.add_argument("--labels-key", default=None, help="array of labels in the .npz file")
    sp.add_argument("--append", action="store_true", help="append samples to an existing file")
    sp.add_argument("--stream", action="store_true",
                    help="explain batch by batch into the file (inputs larger than memory; docs/streaming.md); "
                         "implied for a directory of images, file.h5:dataset or .zarr inputs")
    sp.add_argument("--resume", action="store_true",
                    help="streaming: continue the file an interrupted run left (same model, method, params, "
                         "inputs); without it the file is replaced")
    sp.add_argument("--scheduler", default=None, metavar="ADDRESS|N",
                    help="compute the batches on a dask.distributed cluster: a scheduler address (tcp://host:8786) "
                         "or N for a local cluster of N worker processes; streams into the file (needs "
                         "attribx[distributed])")
    sp.add_argument("-o", "--output", required=True, help="output .h5 file")
    sp.set_defaults(func=cmd_explain)

    sp = sub.add_parser("render", help="draw heatmaps from a relevance file: image grids (PNG), or text heatmaps "
                                       "(HTML or PNG) for relevance with a token axis")
    sp.add_argument("relevance", help="relevance file (.h5): dims (sample, [channel,] height, width) or (sample, token)")
    sp.add_argument("-o", "--output", required=True, help="output .png file (images), or .html or .png (text)")
    sp.add_argument("--samples", nargs="+", type=int, default=None,
                    help="sample ids to draw (default: all sentences; the first 16 images)")
    sp.add_argument("--variable", nargs="+", default=None,
                    help="the variable(s) to draw from a file holding several (default: every image variable)")
    sp.add_argument("--inputs", default=None, help="images: .npy/.npz of the explained inputs, drawn beside the "
                                                   "heatmaps (default: the inputs stored with the relevance)")
    sp.add_argument("--overlay", action="store_true", help="images: draw each heatmap over its input")
    sp.add_argument("--cmap", default=None, help="images: colour map, 'bwr' (default), 'coldnhot' or any matplotlib "
                                                 "name; centred at zero")
    sp.add_argument("--norm", choices=("symmetric", "global", "none"), default=None,
                    help="symmetric: each heatmap by its own max |R| (default); global: one scale over all drawn "
                         "samples (per method); none: --scale (default 1) at full colour")
    sp.add_argument("--rows", choices=("methods", "samples"), default=None,
                    help="images: one row per method (default) or per sample")
    sp.add_argument("--channel", nargs="+", default=None,
                    help="images: the dims reduced to one value per pixel (default: channel)")
    sp.add_argument("--reduce", choices=("sum", "mean", "abs", "norm"), default=None,
                    help="images: how channels are reduced (default: sum)")
    sp.add_argument("--scale", type=float, default=None,
                    help="|relevance| at full colour, for all heatmaps (means --norm none)")
    sp.add_argument("--class-names", nargs="+", default=None, help="names of the classes 0, 1, ... for captions")
    sp.add_argument("--size", type=int, default=None, metavar="PX",
                    help="images: each heatmap PX pixels wide (default: the input's resolution, small inputs "
                         "enlarged by a whole factor to at least 150 pixels)")
    sp.add_argument("--dpi", type=float, default=None,
                    help="PNG dots per inch (default 100): for image grids, the size of the text beside the "
                         "heatmaps (their pixels are --size)")
    sp.set_defaults(func=cmd_render)

    sp = sub.add_parser("evaluate", help="evaluate relevance (pixel_flipping, region_perturbation, ...) and save "
                                         "the result (HDF5)")
    sp.add_argument("name", help=f"evaluator: {installed['evaluators']}")
    sp.add_argument("--model", default=None, help=model_help)
    sp.add_argument("--inputs", default=None, help=".npy or .npz file of the explained inputs (batch axis first)")
    sp.add_argument("--relevance", default=None, help="relevance file (.h5) written by 'attribx explain'")
    sp.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                    help="evaluator parameter, e.g. -p order=lerf (repeatable; values parsed as JSON)")
    sp.add_argument("--variable", default=None, help="the relevance variable of a file holding several")
    sp.add_argument("--engine", default=None, help=engine_help)
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--key", default=None, help="array name in an .npz input file")
    sp.add_argument("-o", "--output", required=True, help="output .h5 file")
    sp.add_argument("--plot", default=None, help="also draw the result (e.g. curves.png)")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("spray", help="spectral relevance analysis (SpRAy) of a relevance file: eigenvalues, "
                                      "clusters, prototypes (HDF5)")
    sp.add_argument("relevance", help="relevance file (.h5) written by 'attribx explain' (read lazily)")
    sp.add_argument("-o", "--output", required=True, help="output .h5 file")
    sp.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                    help="SpRAy parameter, e.g. -p n_clusters=4 -p eigensolver=corelay (repeatable; values as JSON)")
    sp.add_argument("--variable", default=None, help="the relevance variable of a file holding several")
    sp.add_argument("--plot", default=None, help="also draw the spectrum and the clusters (e.g. spray.png)")
    sp.add_argument("--virelay", default=None, metavar="DIR", help="also write a ViRelAy project into DIR")
    sp.add_argument("--inputs", default=None, help=".npy/.npz of the explained inputs, for the ViRelAy data set")
    sp.add_argument("--key", default=None, help="array name in an .npz input file")
    sp.set_defaults(func=cmd_spray)

    sp = sub.add_parser("benchmark", help="compare methods across models by pixel flipping, word deletion, runtime, "
                                          "memory and conservation (default: Samek et al. 2017 on the digits CNN)")
    sp.add_argument("--methods", "-m", nargs="+", default=None, metavar="METHOD",
                    help="methods, 'name' or 'name:key=value,...', and 'random' (default: LRP composites, "
                         "sensitivity, deconvnet, random)")
    sp.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                    help="digits-cnn, digits-mlp, sentiment-lstm, 'pkg.module:function', or model.onnx@inputs.npz "
                         "(default: digits-cnn with torch, else digits-mlp)")
    sp.add_argument("--evaluators", nargs="+", default=None,
                    help="any of pixel_flipping word_deletion runtime memory conservation (default: all)")
    sp.add_argument("--samples", "-n", type=int, default=128, help="samples per model (default 128)")
    sp.add_argument("--inputs", default=None, help=".npz/.npy inputs for model files given without @inputs")
    sp.add_argument("--engine", default=None, help=engine_help)
    sp.add_argument("--batch-size", type=int, default=None)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--repeats", type=int, default=5,
                    help="timed explain calls per cell; the runtime reported is their median (default 5)")
    sp.add_argument("--out", default="attribx-benchmark", help="output folder (benchmark.h5/.md/.html/.png)")
    sp.set_defaults(func=cmd_benchmark)

    sp = sub.add_parser("demo", help="train small models (digits CNN, sentiment LSTM), explain and evaluate them, "
                                     "write report.html")
    sp.add_argument("--out", default="attribx-demo", help="output folder")
    sp.add_argument("--backend", default="auto", choices=["auto", "torch", "numpy"],
                    help="torch: digits CNN and sentiment BiLSTM; numpy: a scikit-learn MLP on the numpy engine, "
                         "no text part; auto (default): torch when installed")
    sp.add_argument("--images", type=int, default=200, help="test digits to explain and evaluate (default 200)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.set_defaults(func=cmd_demo)
    return p


def _one_line_warnings():
    """attribx's own warnings (ConservationWarning, ModelModeWarning) as one line on stderr, as errors are."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, AttribxWarning):
            print(f"attribx: warning: {message}", file=sys.stderr if file is None else file)
            return
        shown(message, category, filename, lineno, file, line)
    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _one_line_warnings()
    try:
        return args.func(args)
    except AttribxError as err:
        print(f"attribx: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attribx: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
