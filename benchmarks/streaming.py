"""Streaming explain throughput (issue 10, point 3): one process against a dask LocalCluster of 2 workers.

For each model the inputs are written to a ``.npy`` file, then explained into one HDF5 file
batch by batch:

* one process: :func:`attribx.explain_dataset` (the library's own threads: torch's intra-op threads,
  the BLAS threads);
* dask: :func:`attribx.distributed.explain_dataset_distributed` on a ``LocalCluster`` of ``--workers``
  worker processes, one thread each (dask sets ``OMP_NUM_THREADS=1`` in workers); the cluster's start is
  timed separately, the model reaches every worker once.

Both files are compared sample by sample (the largest absolute difference is reported). Models: the
digits CNN (``attribx.datasets.digits``, torch) or, without torch, the numpy digits MLP
(``attribx.demo.digits_graph``); and VGG16 (torchvision, random weights) at ``--vgg-size`` (64×64 by
default). Samples per second are ``n / seconds`` of the whole call (reading, explaining, writing).

GPU part (only when ``torch.cuda.is_available()``; otherwise skipped, and the script says so): VGG16 at
224×224, ``lrp.epsilon_gamma_box`` on the torch engine on the GPU against a plain gradient pass of the
same torch module (``x.requires_grad``, backward of the explained logits), images per second, same run.

    python benchmarks/streaming.py --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def digits_model(n: int):
    try:
        import torch  # noqa: F401

        from attribx.datasets.digits import load_digits_images, train_digits_cnn
    except ImportError:
        from attribx.demo import digits_graph
        graph, x, _, _ = digits_graph()
        return "digits MLP (numpy engine)", graph, np.resize(x, (n,) + x.shape[1:]).astype(np.float32)
    x, y = load_digits_images("signed")
    model = train_digits_cnn(x[:1200], y[:1200], steps=80)
    return "digits CNN (torch)", model, np.resize(x, (n,) + x.shape[1:]).astype(np.float32)


def vgg_model(n: int, size: int):
    import torch
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)
    return f"VGG16 {size}×{size} (torch, random weights)", model, x


def _spread(times):
    return f"; {len(times)} runs, {min(times):.2f}–{max(times):.2f} s" if len(times) > 1 else ""


def _warm():
    import attribx.plugins
    attribx.plugins.registry()
    try:
        import attribx_torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        pass


def run_one(name, model, x, method, batch, workers, tmp, repeat=3):
    params = {"low": float(x.min()), "high": float(x.max())} if method.endswith("_box") else {}
    import attribx
    from attribx.distributed import explain_dataset_distributed
    from attribx.streaming import explain_dataset
    from distributed import Client, LocalCluster
    path = os.path.join(tmp, "x.npy")
    np.save(path, x)
    n = len(x)
    rows = []
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        explain_dataset(model, path, os.path.join(tmp, "one.h5"), method, batch_size=batch, resume=False,
                        **params)
        times.append(time.perf_counter() - t)
    t_one = statistics.median(times)
    try:
        import torch
        threads = torch.get_num_threads()
    except ImportError:
        threads = "BLAS default"
    rows.append((name, n, batch, method, f"one process ({threads} threads){_spread(times)}", t_one, n / t_one, "", "", ""))
    t = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(_warm)                      # imports on the workers (torch takes seconds), timed as start-up
        t_start = time.perf_counter() - t
        # what the call spends sending the graph to every worker, measured apart (the call does it again)
        graph = attribx.translate(model, input_shape=x.shape[1:])
        t = time.perf_counter()
        client.scatter(graph, broadcast=True, hash=False).result()
        t_ship = time.perf_counter() - t
        mb = sum(v.nbytes for nd in graph.nodes for v in nd.params.values()) / 1e6
        dtimes = []
        for _ in range(repeat):
            t = time.perf_counter()
            explain_dataset_distributed(model, path, os.path.join(tmp, "dask.h5"), method, batch_size=batch,
                                        resume=False, scheduler=client, **params)
            dtimes.append(time.perf_counter() - t)
        t_cold = dtimes[0]                   # the first call sends the graph; later ones find it on the workers
        dtimes = dtimes[1:] or dtimes
        t_dask = statistics.median(dtimes)
    a = attribx.open_relevance(os.path.join(tmp, "one.h5"), lazy=False)
    b = attribx.open_relevance(os.path.join(tmp, "dask.h5"), lazy=False)
    diff = float(np.abs(a.values - b.values).max())
    same = bool((a["sample"].values == b["sample"].values).all())
    rows.append((name, n, batch, method, f"dask LocalCluster, {workers} workers × 1 thread; first call {t_cold:.2f} s (sends the graph), later"
                 f"{_spread(dtimes)[1:]}", t_dask, n / t_dask,
                 f"{t_start:.1f}", f"{t_ship:.2f} ({mb:.2f} MB)", f"{diff:.1e}{'' if same else ' (sample order differs!)'}"))
    for r in rows:
        print(f"{r[0]:45s} {r[4]:42s} {r[5]:8.2f} s {r[6]:9.1f} samples/s  start {r[7]}  ship {r[8]}  max|Δ| {r[9]}",
              flush=True)
    return rows


def gpu_part(n: int, batch: int):
    import torch
    if not torch.cuda.is_available():
        msg = "GPU part skipped: torch.cuda.is_available() is False on this machine"
        print(msg)
        return [], msg
    import torchvision

    import attribx
    from attribx_torch.engine import TorchEngine
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval().cuda()
    x = torch.randn(n, 3, 224, 224, device="cuda")
    eng = TorchEngine(device="cuda")
    low, high = float(x.min()), float(x.max())
    graph = attribx.translate(model, input_shape=(3, 224, 224))

    def lrp():
        for i in range(0, n, batch):
            r = attribx.explain(graph, x[i:i + batch], "lrp.epsilon_gamma_box", engine=eng, progress_bar=False,
                                  low=low, high=high)
        return r

    def grad():
        for i in range(0, n, batch):
            xb = x[i:i + batch].clone().requires_grad_(True)
            out = model(xb)
            out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
            _ = xb.grad.cpu().numpy()          # to the host, as explain's relevance is
        return xb.grad

    rows = []
    for label, fn in (("lrp.epsilon_gamma_box (attribx, torch engine on the GPU)", lrp),
                      ("plain gradient (torch autograd, same module)", grad)):
        fn()                                   # warm-up (cuDNN autotuning, allocator)
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows.append((label, n, batch, dt, n / dt))
        print(f"{label:60s} {dt:8.2f} s {n / dt:9.1f} images/s", flush=True)
    return rows, torch.cuda.get_device_name(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-digits", type=int, default=4000)
    ap.add_argument("--n-vgg", type=int, default=64)
    ap.add_argument("--vgg-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", default="lrp.epsilon_gamma_box")
    ap.add_argument("--gpu-n", type=int, default=256)
    ap.add_argument("--gpu-batch", type=int, default=32)
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per setting; the median is reported (dask: of the runs after the first)")
    ap.add_argument("--out", default=None, help="append a Markdown section to this file (RESULTS.md)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        name, model, x = digits_model(args.n_digits)
        rows += run_one(name, model, x, args.method, 128, args.workers, tmp, args.repeat)
        if not args.skip_vgg:
            try:
                import torchvision  # noqa: F401
                name, model, x = vgg_model(args.n_vgg, args.vgg_size)
                rows += run_one(name, model, x, args.method, 16, args.workers, tmp, args.repeat)
            except ImportError:
                print("VGG16 skipped: torchvision is not installed")
    try:
        gpu_rows, gpu_note = gpu_part(args.gpu_n, args.gpu_batch)
    except ImportError:
        gpu_rows, gpu_note = [], "GPU part skipped: torch is not installed"
    if args.out:
        cpu = f"{os.cpu_count()}-core {platform.machine()}"
        lines = [f"\n## {datetime.date.today()}: streaming explain, one process vs dask LocalCluster ({cpu})\n",
                 "Produced by `benchmarks/streaming.py` (inputs in a `.npy` file, relevance streamed into one "
                 "HDF5 file; median of --repeat runs, wall-clock seconds of the whole call on a shared machine; the "
                 "cluster's start-up is listed apart; max|Δ| compares the two files).\n",
                 "| model | samples | batch | method | run | time (s) | samples/s | cluster start (s) | graph to workers (s) | max abs Δ |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2f} | {r[6]:.1f} | {r[7]} | {r[8]} | {r[9]} |")
        if gpu_rows:
            lines += ["", f"GPU ({gpu_note}), VGG16 224×224, random weights:", "",
                      "| pass | images | batch | time (s) | images/s |", "|---|---|---|---|---|"]
            lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.1f} |" for r in gpu_rows]
        else:
            lines += ["", f"- {gpu_note}."]
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
