"""Pixel flipping and region perturbation: attribx against Quantus 0.6.0, same model, same relevance, one run.

Settings (each ours and Quantus's, with the same batch size and seed, so the curves are the same and
the time ratio compares equal work; the largest relative difference of the curves is reported):

* ``digits``: a small CNN trained here on scikit-learn's digits (1×8×8, ~2 s), ``--n`` images (default
  1000), LRP-ε+ relevance: ``PixelFlipping`` (every entry, 64 steps, black baseline, softmax) and
  ``RegionPerturbation`` (2×2 patches, 16 regions, most relevant first, black baseline, softmax).
* ``rgb32``: a bigger input, 3×32×32 (CIFAR-sized) with a randomly initialised CNN, ``--n`` images:
  ``PixelFlipping`` with ``features_in_step=32`` (96 steps).

Ours runs with ``convention="quantus"`` on the torch engine (the model translated once per call, as a
user calls it); Quantus runs the torch module itself. Rows marked "ours only" time our other settings
(the samek2017 convention with its random-order reference; the numpy engine) for scale. Timings are the
median of ``--repeat`` runs after a warm-up, on one torch thread (tiny models: more threads only add
overhead on a shared machine).

    python benchmarks/pixel_flipping.py --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np


def digits_model(n):
    """The shared digits CNN (attribx.datasets.digits) trained on the first 1200 digits, in [0, 1] as
    Quantus's baselines assume; ``n`` images cycled from the whole set."""
    from attribx.datasets.digits import load_digits_images, train_digits_cnn

    x, y = load_digits_images("unit")
    model = train_digits_cnn(x[:1200], y[:1200], steps=80)
    idx = np.arange(n) % len(x)
    return model, x[idx], y[idx]


def rgb32_model(n):
    import torch
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 8 * 8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    rng = np.random.default_rng(0)
    x = rng.random((n, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, x, y


def timed(fn, repeat):
    fn()                                          # warm-up (imports, translation caches, allocator)
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def quantus_run(metric_cls, kwargs, model, x, y, a, batch, seed):
    import quantus  # noqa: F401

    def run():
        np.random.seed(seed)
        metric = metric_cls(disable_warnings=True, **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True, softmax=True,
                                     batch_size=batch), dtype=np.float64)
    return run


def ours_run(evaluator, params, model, x, rel, batch, seed, engine=None):
    import attribx

    def run():
        return attribx.evaluate(evaluator, model, x, rel, seed=seed, batch_size=batch, engine=engine,
                                progress_bar=False, **params)["curve"].values
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="images per setting")
    p.add_argument("--batch", type=int, default=64, help="batch size (Quantus's default is 64)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--settings", nargs="+", default=["digits", "rgb32"], choices=["digits", "rgb32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append a Markdown section to this file")
    args = p.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    import torchvision  # noqa: F401  (before quantus: with TensorFlow installed, quantus importing it first crashes)
    import quantus

    import attribx

    rows = []   # (setting, evaluator, what, ours s, quantus s, ratio, max rel diff)
    seed = 3
    for setting in args.settings:
        model, x, y = digits_model(args.n) if setting == "digits" else rgb32_model(args.n)
        rel = attribx.explain(model, x, "lrp.epsilon_plus", target=y)
        a = rel.values
        shape = "×".join(str(s) for s in x.shape[1:])
        if setting == "digits":
            cases = [("pixel_flipping", "PixelFlipping, every entry (64 steps), black",
                      quantus.PixelFlipping, {}, {}),
                     ("region_perturbation", "RegionPerturbation, 2×2 patches (16 regions), morf, black",
                      quantus.RegionPerturbation, {"patch_size": 2, "regions_evaluation": 16},
                      {"patch_size": 2, "steps": 16})]
        else:
            cases = [("pixel_flipping", "PixelFlipping, features_in_step 32 (96 steps), black",
                      quantus.PixelFlipping, {"features_in_step": 32}, {"features_in_step": 32})]
        for evaluator, what, cls, qkw, okw in cases:
            t_q, curve_q = timed(quantus_run(cls, qkw, model, x, y, a, args.batch, seed), args.repeat)
            t_o, curve_o = timed(ours_run(evaluator, {"convention": "quantus", **okw}, model, x, rel, args.batch,
                                          seed), args.repeat)
            diff = float(np.abs(curve_o - curve_q).max() / np.abs(curve_q).max())
            rows.append((f"{setting} ({args.n} × {shape})", what, t_o, t_q, t_o / t_q, f"{diff:.1e}"))
            print(rows[-1], flush=True)
        if setting == "digits":
            # ours only, for scale: the numpy engine, and the samek2017 convention (64 steps + a random run)
            t_n, _ = timed(ours_run("pixel_flipping", {"convention": "quantus"}, model, x, rel, args.batch, seed,
                                    engine="numpy"), args.repeat)
            rows.append((f"{setting} ({args.n} × {shape})", "PixelFlipping as above, numpy engine (ours only)",
                         t_n, None, None, ""))
            t_s, _ = timed(ours_run("pixel_flipping", {"steps": 64}, model, x, rel, args.batch, seed),
                           args.repeat)
            rows.append((f"{setting} ({args.n} × {shape})",
                         "samek2017 pixel flipping, 64 steps + random-order reference (ours only)", t_s, None, None,
                         ""))
            print(rows[-2:], flush=True)

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)
    table = ["| setting | evaluation | attribx (s) | Quantus 0.6.0 (s) | attribx / Quantus | curves: max rel. diff |",
             "|---|---|---|---|---|---|"]
    for setting, what, t_o, t_q, r, d in rows:
        table.append(f"| {setting} | {what} | {t_o:.3f} | {fmt(t_q, '.3f')} | {fmt(r, '.3f')} | {d or '—'} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        head = (f"\n## {datetime.date.today().isoformat()}: pixel flipping against Quantus 0.6.0 "
                f"(`benchmarks/pixel_flipping.py`), {os.cpu_count()}-core {platform.machine()} CPU, "
                f"torch {torch.__version__}, {args.threads} torch thread(s), batch {args.batch}, median of "
                f"{args.repeat} runs\n\n")
        with open(args.out, "a") as f:
            f.write(head + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
