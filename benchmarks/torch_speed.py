"""Speed and memory of attribx's torch engine against zennit, Captum and a plain gradient pass.

Same model, same batch, one run. Each (method, implementation) is timed in-process (median of
``--repeat`` runs after a warm-up); peak memory is measured in a fresh subprocess per measurement
(on the CPU the growth of the resident set during one attribution, from Linux's VmHWM after
resetting it through /proc/self/clear_refs; on a GPU ``torch.cuda.max_memory_allocated``), so
measurements do not mix.
Ratios are relative to the plain gradient pass of the same run.

    python benchmarks/torch_speed.py --models vgg16 resnet50 --batch 4 --device cpu --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402  shared with tf_speed / zoo_speed

OURS = {
    "lrp.epsilon": {"epsilon": 1e-6},
    "lrp.epsilon_plus_flat": {},
    "lrp.epsilon_alpha2_beta1": {},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
}
ZENNIT = {
    "lrp.epsilon": "Epsilon",
    "lrp.epsilon_plus_flat": "EpsilonPlusFlat",
    "lrp.epsilon_alpha2_beta1": "EpsilonAlpha2Beta1",
    "lrp.epsilon_gamma_box": "EpsilonGammaBox",
}


def build(model_name):
    import torch
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval()
    return model


def make_runner(impl, method, model_name, batch, device):
    """A zero-argument function that computes one attribution of the batch."""
    import torch
    model = build(model_name).to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = torch.arange(batch, device=device) % 1000
    if impl == "gradient":
        def run():
            xi = x.detach().requires_grad_(True)
            out = model(xi)
            (g,) = torch.autograd.grad(out[torch.arange(batch), target].sum(), xi)
            return g
        return run
    if impl == "attribx":
        import attribx
        graph = attribx.translate(model, input_shape=(3, 224, 224))
        eng = attribx.plugins.registry().engine("torch")(device=device)
        params = OURS[method]

        def run():
            return attribx.explain(graph, x, method, target=target.cpu().numpy(), engine=eng, **params)
        return run
    if impl == "zennit":
        from zennit import composites as zc
        from zennit.attribution import Gradient
        from zennit.core import Composite  # noqa: F401
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
        canon = [ResNetCanonizer()] if "resnet" in model_name else [VGGCanonizer()]
        if method == "lrp.epsilon":
            from zennit import rules as zr
            from zennit.types import Linear
            comp = zc.LayerMapComposite([(Linear, zr.Epsilon(1e-6))], canonizers=canon)
        elif method == "lrp.epsilon_gamma_box":
            comp = zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canon)
        else:
            comp = getattr(zc, ZENNIT[method])(canonizers=canon)
        onehot = torch.nn.functional.one_hot(target, 1000).float()

        def run():
            with Gradient(model=model, composite=comp) as attributor:
                return attributor(x.detach().requires_grad_(True), lambda o: onehot * o)[1]
        return run
    if impl == "captum":
        from captum.attr import LRP
        lrp = LRP(model)

        def run():
            return lrp.attribute(x.detach().requires_grad_(True), target=target)
        return run
    raise ValueError(impl)


def sync(device):
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(impl, method, model_name, batch, device, repeat):
    return _timing.time_it(make_runner(impl, method, model_name, batch, device), repeat, lambda: sync(device))


def peak_memory(impl, method, model_name, batch, device):
    """Peak memory of one attribution, in a fresh process (MiB)."""
    code = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import torch_speed as b, _timing
run = b.make_runner({impl!r}, {method!r}, {model_name!r}, {batch}, {device!r})
run()   # warm: one-time allocations (weights copies, caches) are not counted
if {device!r}.startswith('cuda'):
    peak = _timing.peak_cuda_growth(run, lambda: b.sync({device!r}))
else:
    peak = _timing.peak_rss_growth(run)
print(json.dumps(peak))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        return float("nan")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    p.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 32 on a GPU")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(OURS))
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--out", default=None, help="append a Markdown table to this file")
    args = p.parse_args(argv)
    import torch
    torch.set_grad_enabled(True)
    batch = args.batch or (32 if args.device.startswith("cuda") else 4)
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    rows = []
    for model_name in args.models:
        base_t = time_it("gradient", None, model_name, batch, args.device, args.repeat)
        base_m = None if args.no_memory else peak_memory("gradient", None, model_name, batch, args.device)
        rows.append((model_name, "gradient", "torch autograd", base_t, 1.0, base_m, 1.0))
        print(rows[-1], flush=True)
        for method in args.methods:
            impls = ["attribx", "zennit"] + (["captum"] if method == "lrp.epsilon" else [])
            for impl in impls:
                try:
                    t = time_it(impl, method, model_name, batch, args.device, args.repeat)
                except Exception as err:  # an anchor that cannot run this model is reported, not fatal
                    print(f"{impl} {method} {model_name}: {type(err).__name__}: {err}", file=sys.stderr)
                    continue
                m = None if args.no_memory else peak_memory(impl, method, model_name, batch, args.device)
                rows.append((model_name, method, impl, t, t / base_t, m,
                             None if m is None or not base_m else m / base_m))
                print(rows[-1], flush=True)
    table = [f"\n### {time.strftime('%Y-%m-%d')}: {machine}, device {args.device}, batch {batch}, 224×224, "
             f"torch {torch.__version__}\n",
             "| model | method | implementation | median time (s) | × gradient | peak memory (MiB) | × gradient |",
             "|---|---|---|---|---|---|---|"]
    for model_name, method, impl, t, r, m, mr in rows:
        table.append(f"| {model_name} | {method} | {impl} | {t:.3f} | {r:.2f} | "
                     f"{'' if m is None else f'{m:.0f}'} | {'' if mr is None else f'{mr:.2f}'} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
