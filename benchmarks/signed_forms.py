"""The rules' forms for inputs of both signs (``Gamma.fast_signed``, ``AlphaBeta.fast_signed``) against the general
formula they replace, in one process: each composite with the signed forms off ("before") and on ("after") timed
interleaved with torch autograd's gradient pass, round by round (:func:`_timing.time_interleaved`), so the
before/after ratios see the same load. One model per process keeps memory apart:

    python benchmarks/signed_forms.py efficientnet_b0 --threads 1
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _timing  # noqa: E402
from zoo_speed import torch_setup  # noqa: E402

METHODS = ["lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1", "lrp.epsilon_plus_flat"]


def signed_forms(on: bool):
    """Take the signed forms (``on``) or, as before them, the general formula on inputs of both signs."""
    from attribx.rules import AlphaBeta, Gamma
    def off(self, op, eng, R, x):
        return self.general(op, eng, R, *op.split())
    for cls in (Gamma, AlphaBeta):
        own = ORIGINAL.setdefault(cls, cls.__dict__["fast_signed"])
        cls.fast_signed = own if on else off


ORIGINAL: dict = {}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    base, explain, sync, _, _, _ = torch_setup(args.model, args.size, args.batch, "cpu")
    for method in args.methods:
        run = explain(method)

        def before():
            signed_forms(False)
            try:
                run()
            finally:
                signed_forms(True)
        t_base, t_before, t_after = _timing.time_interleaved([base, before, run], args.repeat, sync)
        print(f"{args.model} {method}: gradient {t_base:.3f} s, before {t_before / t_base:.2f}×, "
              f"after {t_after / t_base:.2f}× ({os.getloadavg()[0]:.1f} load)", flush=True)


if __name__ == "__main__":
    main()
