"""Issue 19's benchmark: attribx's AttnLRP / CP-LRP on transformers against LXT 2.1 and a plain gradient pass.

Same model (random weights from a seed; nothing is downloaded), same input, one run of this script:

* ``vit_b_16``: torchvision's ViT-B/16, batch 4 at 224² on a CPU (32 on a GPU). LXT 2.1 patches torchvision's
  ViT with CP-LRP only, so LXT is timed with CP-LRP there; attribx with both ``lrp.cp`` and ``lrp.attn``.
* ``gpt2``: a GPT-2-small-sized config (12 layers, 768 wide, 12 heads, vocabulary 50257), batch 1, the logit of
  one token at the last position, sequences of ``--seq`` tokens (128 and 512).
* ``llama``: a Llama-architecture config (RMSNorm, rotary positions, SiLU-gated MLP, grouped-query attention;
  ``--llama-size``: ``small`` is 8 layers × 1024 wide, 16 heads, 4 key/value heads, vocabulary 32000; ``1b`` has
  Llama 3.2 1B's shape (16 layers × 2048, 32 heads, 8 key/value heads, vocabulary 128256, 1.24 B parameters, 5 GB
  in float32); ``7b`` Llama 2 7B's (27 GB in float32: more than a 24 GB machine holds, so for a GPU)), batch 1.

Each measurement runs in a fresh subprocess (LXT patches transformers' and torchvision's classes for the whole
process, and peak memory must not mix): it builds the model, warms up once, then times ``--repeat`` calls
(median) and measures the peak rise of resident memory during one call (VmHWM after a reset, see
:class:`attribx.benchmark.PeakRSS`; on a GPU ``torch.cuda.max_memory_allocated``). Modes:

* ``gradient``: the plain gradient pass of the explained logit w.r.t. the input (pixels; token embeddings),
  the unpatched model, input gradients only (``torch.autograd.grad``, no weight gradients): the reference the
  ratios divide by;
* ``lxt``: LXT's patched model, one gradient × input pass (its "efficient" mode: that is all LXT does), input
  gradients only as well;
* ``attribx``: ``attribx.explain`` on the translated graph (translation timed apart, once per model and shape:
  it is paid once, not per explanation).

    python benchmarks/transformer_speed.py --models vit_b_16 gpt2 llama --out benchmarks/RESULTS.md
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT / "tests" / "anchors"
LLAMA_SIZES = {
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),       # Llama 3.2 1B's shape
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}
TARGET = 7          # the explained class / next token


def build(name: str, llama_size: str = "small"):
    """The model ``name`` with random weights from seed 0, in eval mode (float32)."""
    import torch
    torch.manual_seed(0)
    if name == "vit_b_16":
        import torchvision
        return torchvision.models.vit_b_16(weights=None).eval()
    import transformers as tr
    if name == "gpt2":
        cfg = tr.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
        cls = tr.GPT2LMHeadModel
    elif name == "llama":
        cfg = tr.LlamaConfig(max_position_embeddings=2048, **LLAMA_SIZES[llama_size])
        cls = tr.LlamaForCausalLM
    else:
        raise SystemExit(f"unknown model {name!r}: vit_b_16, gpt2 or llama")
    cfg._attn_implementation = "eager"
    return cls(cfg).eval()


def module_of(name: str):
    import importlib
    return importlib.import_module({"vit_b_16": "torchvision.models.vision_transformer",
                                    "gpt2": "transformers.models.gpt2.modeling_gpt2",
                                    "llama": "transformers.models.llama.modeling_llama"}[name])


def make_input(name: str, batch: int, seq: int):
    import numpy as np
    rng = np.random.default_rng(1)
    if name == "vit_b_16":
        return rng.normal(size=(batch, 3, 224, 224)).astype("float32")
    return rng.integers(0, 1000, size=(batch, seq)).astype("int64")


def worker(spec: dict) -> dict:
    """One (model, mode, method) measurement in this process: seconds per call (median) and peak memory."""
    import torch
    torch.set_num_threads(spec["threads"])
    from attribx.benchmark import PeakRSS
    name, mode, device = spec["model"], spec["mode"], torch.device(spec["device"])
    x_np = make_input(name, spec["batch"], spec["seq"])
    image = name == "vit_b_16"
    out = {}
    if mode == "lxt":
        sys.path.insert(0, str(ANCHORS))
        from lxt_reference import patched_model
        model = patched_model(lambda: build(name, spec["llama_size"]), module_of(name),
                              "cp_LRP" if image else spec["lxt_variant"]).to(device)
    else:
        model = build(name, spec["llama_size"]).to(device)
    x = torch.from_numpy(x_np).to(device)

    def logit_grad():
        """The explained logit's gradient times the input (pixels; token embeddings summed per token). Only the
        input's gradient is asked for (``torch.autograd.grad``): a ``backward()`` would compute every weight's
        gradient too, which no explanation needs (it made the gradient pass about 1.4× slower)."""
        if image:
            xi = x.detach().clone().requires_grad_(True)
            g, = torch.autograd.grad(model(xi)[:, TARGET].sum(), xi)
            return (xi * g).detach()
        emb = model.get_input_embeddings()(x).detach().requires_grad_(True)
        g, = torch.autograd.grad(model(inputs_embeds=emb, use_cache=False).logits[:, -1, TARGET].sum(), emb)
        return (emb * g).sum(-1).detach()

    if mode in ("gradient", "lxt"):
        call = logit_grad
    else:
        import attribx
        t0 = time.perf_counter()
        graph = attribx.translate(model, input_shape=tuple(x_np.shape[1:]))
        out["translate_s"] = time.perf_counter() - t0
        kw = {} if image else {"position": -1}
        method, params = spec["method"], {"epsilon": 0.0}

        def call():
            return attribx.explain(graph, x_np, method, target=TARGET, device=spec["device"], progress_bar=False,
                                   **kw, **params)
    call()                                    # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    out["seconds"] = statistics.median(times)
    out["runs"] = times
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        out["peak_bytes"] = float(torch.cuda.max_memory_allocated(device) - base)
        out["memory"] = "torch.cuda.max_memory_allocated"
    else:
        with PeakRSS() as rss:
            call()
        out["peak_bytes"], out["memory"] = rss.peak, f"RSS ({rss.how})"
    return out


def run_one(spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit_b_16", "gpt2", "llama"])
    p.add_argument("--seq", nargs="+", type=int, default=[128, 512], help="sequence lengths of the language models")
    p.add_argument("--batch", type=int, default=None, help="ViT batch (default 4 on a CPU, 32 on a GPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1,
                   help="run every measurement this many times, interleaved (median over rounds)")
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--llama-size", choices=sorted(LLAMA_SIZES), default="small")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--out", default=None, help="append the Markdown table to this file")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return 0
    from tqdm import tqdm
    cuda = a.device.startswith("cuda")
    cases = []
    for name in a.models:
        shapes = [(a.batch or (32 if cuda else 4), 0)] if name == "vit_b_16" else [(1, s) for s in a.seq]
        for batch, seq in shapes:
            modes = [("gradient", None), ("lxt", None)]
            modes += [("attribx", "lrp.cp"), ("attribx", "lrp.attn")] if name == "vit_b_16" else \
                     [("attribx", "lrp.attn")]
            cases += [dict(model=name, batch=batch, seq=seq, mode=m, method=meth, device=a.device,
                           repeat=a.repeat, threads=a.threads, llama_size=a.llama_size, lxt_variant="attnLRP")
                      for m, meth in modes]
    runs = [[] for _ in cases]
    order = [i for _ in range(a.rounds) for i in range(len(cases))]    # interleaved: load drifts alike
    for i in tqdm(order, desc="transformer benchmark"):
        runs[i].append(run_one(cases[i], a.timeout))
    results = [{**spec, **_combine(r)} for spec, r in zip(cases, runs)]
    table = _table(results, a)
    print(table)
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write("\n" + table + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def _combine(runs: list[dict]) -> dict:
    """One measurement from the rounds: the median time and peak over the rounds that did not fail."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("seconds", "peak_bytes", "translate_s"):
        if key in out:
            out[key] = statistics.median(r[key] for r in ok)
    out["runs"] = [t for r in ok for t in r["runs"]]
    out["rounds"] = len(ok)
    return out


def _table(results: list[dict], a) -> str:
    import torch
    import transformers
    lines = [f"## {time.strftime('%Y-%m-%d')}: transformers, attribx against LXT 2.1 and a gradient pass "
             f"(`benchmarks/transformer_speed.py`), {platform.machine()} {os.cpu_count()} cores, device "
             f"{a.device}, {a.threads} torch thread(s), torch {torch.__version__}, transformers "
             f"{transformers.__version__}, {a.rounds} interleaved round(s) of {a.repeat} call(s), load average "
             f"{os.getloadavg()[0]:.1f} at the end",
             "",
             "| model | input | method | median time (s) | × gradient | × LXT | peak memory (MiB) | memory × gradient "
             "| translation (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    key = lambda r: (r["model"], r["batch"], r["seq"])       # noqa: E731
    base = {key(r): r for r in results if r["mode"] == "gradient"}
    lxt = {key(r): r for r in results if r["mode"] == "lxt"}
    for r in results:
        shape = f"batch {r['batch']}" + (f", {r['seq']} tokens" if r["seq"] else ", 224²")
        label = {"gradient": "gradient (plain)", "lxt": "LXT " + ("CP-LRP" if r["model"] == "vit_b_16" else
                                                                  "AttnLRP")}.get(r["mode"], r["method"])
        if "error" in r:
            lines.append(f"| {r['model']} | {shape} | {label} | failed: {r['error']} | | | | | |")
            continue
        g, lx = base.get(key(r), {}), lxt.get(key(r), {})
        cells = [r["model"], shape, label, f"{r['seconds']:.3f}",
                 f"{r['seconds'] / g['seconds']:.2f}" if "seconds" in g else "",
                 f"{r['seconds'] / lx['seconds']:.2f}" if "seconds" in lx and r["mode"] == "attribx" else "",
                 f"{r['peak_bytes'] / 2 ** 20:.0f}",
                 f"{r['peak_bytes'] / g['peak_bytes']:.2f}" if g.get("peak_bytes") else "",
                 f"{r['translate_s']:.1f}" if "translate_s" in r else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
