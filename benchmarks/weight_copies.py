"""How many copies of a torch model's weights attribx holds: the translation, the graph passes, the engine.

Two ways, on one model (random weights, eval mode):

* by memory addresses: the bytes of the graph's parameter arrays that share no memory with the model's
  parameters and buffers (before and after the graph passes: folded batch norms make new weights), and the
  bytes of the torch engine's converted parameters that share no memory with the graph's arrays;
* by the resident set: what translating, the first explanation (the engine's parameters) and the peak of
  a later explanation (modified weights, activations) add, in units of the weights' size.

    python benchmarks/weight_copies.py --model regnet_y_16gf --size 64 --batch 1
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402


def _spans(arrays):
    """(start, end) byte ranges of arrays' buffers."""
    out = []
    for a in arrays:
        start = a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data_ptr()
        nbytes = a.nbytes if isinstance(a, np.ndarray) else a.numel() * a.element_size()
        out.append((start, start + nbytes))
    return out


def own_bytes(arrays, owners):
    """Bytes of ``arrays`` whose buffer lies in none of ``owners``' buffers (a copy of their own)."""
    spans = _spans(owners)
    total = 0
    for (lo, hi), a in zip(_spans(arrays), arrays):
        if not any(s <= lo and hi <= e for s, e in spans):
            total += hi - lo
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="regnet_y_16gf")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--method", default="lrp.epsilon_gamma_box")
    args = p.parse_args(argv)
    import torch
    import torchvision

    import attribx
    from torch_speed import OURS
    torch.manual_seed(0)
    rss = [("imports", _timing.rss_mib())]
    model = torchvision.models.get_model(args.model, weights=None).eval()
    rss.append(("model", _timing.rss_mib()))
    tensors = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    raw = attribx.translate(model, passes=False, input_shape=(3, args.size, args.size))
    graph = attribx.translate(model, input_shape=(3, args.size, args.size))
    rss.append(("translate (raw graph cached + graph after passes)", _timing.rss_mib()))
    raw_params = [a for n in raw.nodes for a in n.params.values()]
    params = [a for n in graph.nodes for a in n.params.values()]
    engine = attribx.plugins.registry().engine("torch")()
    x = torch.randn(args.batch, 3, args.size, args.size)

    def run():
        return attribx.explain(graph, x, args.method, target=[0] * args.batch, engine=engine,
                               **OURS.get(args.method, {}))
    run()
    _timing.trim()
    rss.append(("first explain (engine parameters), freed memory trimmed", _timing.rss_mib()))
    peak = _timing.peak_rss_growth(run)

    def gradient():
        xi = x.clone().requires_grad_(True)
        return torch.autograd.grad(model(xi)[:, 0].sum(), xi)
    gradient()
    grad_peak = _timing.peak_rss_growth(gradient)
    hits = [v[1] if isinstance(v, tuple) else v for v in engine._param_cache.values()]   # (node ref, params)
    eng_params = [t for hit in hits for t in hit.values() if isinstance(t, torch.Tensor)]
    mib = 2 ** 20
    print(f"{args.model}: {sum(t.numel() for t in tensors) / 1e6:.1f} M values, weights {weights / mib:.0f} MiB; "
          f"input {args.batch}×3×{args.size}×{args.size}, {args.method}")
    print("by addresses (MiB of their own, not shared):")
    print(f"  graph before passes: {own_bytes(raw_params, tensors) / mib:.0f} "
          f"(of {sum(a.nbytes for a in raw_params) / mib:.0f})")
    print(f"  graph after passes:  {own_bytes(params, tensors + raw_params) / mib:.0f} beyond the raw graph and "
          f"the model (of {sum(a.nbytes for a in params) / mib:.0f})")
    print(f"  engine parameters:   {own_bytes(eng_params, params) / mib:.0f} beyond the graph "
          f"(of {sum(t.numel() * t.element_size() for t in eng_params) / mib:.0f})")
    print("by the resident set (MiB, × the weights):")
    for (label, v), (_, before) in zip(rss[1:], rss[:-1]):
        print(f"  {label}: +{v - before:.0f} ({(v - before) * mib / weights:.2f}×)")
    print(f"  peak growth of a later explain: +{peak:.0f} ({peak * mib / weights:.2f}×); of torch's gradient "
          f"pass: +{grad_peak:.0f} ({grad_peak * mib / weights:.2f}×)")
    print(f"  resident set at the explain's peak: {rss[-1][1] + peak:.0f} MiB in all (the process, imports included)")


if __name__ == "__main__":
    main()
