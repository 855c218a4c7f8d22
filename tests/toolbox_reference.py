"""An independent numpy re-statement of the LRP toolbox's layer-wise rules (test helper, not attribx code).

The LRP Toolbox (Lapuschkin et al., JMLR 2016; github sebastian-lapuschkin/lrp_toolbox, python/modules/)
is "free for academic use only", so nothing here is copied from it: this file re-derives the same
mathematics from reading its sources (latest stored versions: convolution.py and sumpool.py at commit
7bcde75, linear.py at 34a9940, module.py/rect.py/flatten.py at 58f19af, sequential.py at 18ac710, the
CNN demo lrp_cnn_demo.py at 3e95ce3). It works in NCHW with PyTorch-layout (out, in, kh, kw) filters;
the toolbox works in NHWC with (h, w, in, out) filters, which changes nothing in the arithmetic.

What the toolbox does, in words (per rule, per layer type):

Convolution (convolution.py, ``Convolution._*_lrp``), with z_ij = x_i w_ij the contribution of input
i to output j inside its receptive field and z_j = sum_i z_ij + b_j the layer output:

* ``simple`` (LRP-0, ``_simple_lrp``): R_i = sum_j z_ij / (z_j + 1e-16 sgn(z_j)) R_j with
  sgn(0) = +1. The bias is in the denominator (z_j is the stored forward output) and is not
  redistributed: the bias's share of R_j is absorbed.
* ``epsilon`` (``_epsilon_lrp``): the same with eps instead of 1e-16.
* ``flat`` (``_flat_lrp``): R_j split evenly over its receptive field, 1 / (kh kw C_in) each; no
  bias, no stabiliser, independent of the input.
* ``ww`` / ``w^2`` (``_ww_lrp``): R_j split in proportion to w_ij^2 / sum_i w_ij^2; no bias, no
  stabiliser, independent of the input.
* ``alphabeta`` (``_alphabeta_lrp``; the parameter is alpha, beta = 1 - alpha, so alpha = 2 means a
  *negative* beta = -1 and R = alpha R+ + beta R-, i.e. alpha R+ - |beta| R-): contributions are
  split by the sign of z_ij itself (z_ij > 0 positive, everything else negative), so x-·w- counts as
  positive. Positive denominator: sum of positive z_ij + max(b_j, 0) + 1e-16 (an unsigned 1e-16);
  negative denominator: z_j - (positive denominator) - 1e-16 = sum of negative z_ij + min(b_j, 0)
  - 2e-16. Biases enter the denominators only (b+ in the positive one, b- in the negative one) and
  are not distributed. alpha = 1 (beta = 0) keeps only the positive term, with the same positive
  denominator.

Sum pooling (sumpool.py, ``SumPool``): the forward pass is the window sum times 1/sqrt(kh kw)
("normalizer", 0.5 for 2x2). Its LRP works with the window sum itself, i.e. it divides the stored
output by the normalizer again before using it as a denominator, so the 1/sqrt(area) scaling cancels
and never reaches the relevance:

* ``simple`` (``_simple_lrp``): R_i = x_i / (s + 1e-12 sgn(s)) R_j with s the plain window sum
  (note 1e-12 here, not 1e-16 as in the convolution).
* ``epsilon``: the same with eps.
* ``flat`` and ``ww`` (``_ww_lrp`` calls ``_flat_lrp``): R_j split evenly, 1/(kh kw) per window
  position; no stabiliser.
* ``alphabeta`` (``_alphabeta_lrp``): as for the convolution with the inputs themselves as the
  contributions (unit weights, no bias): positive part x_i [x_i > 0] / (sum + 1e-16), weighted by
  alpha. With alpha != 1 the *toolbox code* writes the beta term as beta Zn (R/Zsn) R, i.e. with R
  twice (a toolbox bug); after a ReLU the inputs are non-negative, so Zn = 0 and that term is exactly
  zero here. We write the intended formula. With non-negative inputs the pooling layer thus returns
  alpha R (it does not conserve for alpha = 2; this is the alpha-beta rule, not a bug).

ReLU (rect.py, ``Rect.lrp``) and flatten (flatten.py, ``Flatten.lrp``): relevance passes unchanged
(reshaped for flatten). Sequential (sequential.py, ``Sequential.lrp``): the modules' ``lrp`` in
reverse order, all with the same rule and parameter (module.py, ``Module.lrp``). The starting
relevance in the CNN demo (lrp_cnn_demo.py) is the network output masked to one class: Y * onehot
(the prediction there; a true label is the documented alternative).

The toolbox computes in float64 (its forward pass writes into ``np.zeros``), and so does this file.
"""
from __future__ import annotations

import numpy as np

TOOLBOX_CONV_STAB = 1e-16      # convolution.py / linear.py: simple-LRP and alpha-beta stabiliser
TOOLBOX_POOL_STAB = 1e-12      # sumpool.py: simple-LRP stabiliser


def sgn(z):
    """The toolbox's sign for stabilisers: +1 for z >= 0, -1 otherwise."""
    return np.where(z >= 0, 1.0, -1.0)


# -- layers -------------------------------------------------------------------------------------------------
class Conv:
    """Valid (unpadded) 2-D convolution, stride 1, NCHW input, (out, in, kh, kw) weights."""

    def __init__(self, w, b):
        self.w = np.asarray(w, np.float64)
        self.b = np.asarray(b, np.float64)
        self.F, self.C, self.kh, self.kw = self.w.shape
        # weight matrix over the receptive field, (K = C*kh*kw, F), rows ordered (c, u, v)
        self.wmat = self.w.reshape(self.F, -1).T

    def patches(self, x):
        """(N, Ho, Wo, K) receptive fields, K ordered (c, u, v) like ``wmat``'s rows."""
        win = np.lib.stride_tricks.sliding_window_view(x, (self.kh, self.kw), axis=(2, 3))
        n, c, ho, wo = win.shape[:4]
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * self.kh * self.kw)

    def fold(self, rp, shape):
        """Add per-receptive-field relevance (N, Ho, Wo, K) back onto the input grid (col2im)."""
        n, ho, wo, _ = rp.shape
        rp = rp.reshape(n, ho, wo, self.C, self.kh, self.kw)
        out = np.zeros(shape)
        for u in range(self.kh):
            for v in range(self.kw):
                out[:, :, u:u + ho, v:v + wo] += rp[:, :, :, :, u, v].transpose(0, 3, 1, 2)
        return out

    def forward(self, x):
        self.x = x
        self.y = np.einsum("nhwk,kf->nfhw", self.patches(x), self.wmat) + self.b[None, :, None, None]
        return self.y

    def lrp(self, R, rule, param=None, chunk=10):
        """Relevance at the input from relevance R (N, F, Ho, Wo) with one of the toolbox's rules."""
        x, y = self.x, self.y
        n = len(x)
        Rout = np.zeros_like(x)
        K = self.wmat.shape[0]
        if rule in ("flat", "ww"):
            # input-independent: a fixed (K, F) share matrix, each column summing to one
            share = np.ones((K, self.F)) / K if rule == "flat" else self.wmat ** 2 / (self.wmat ** 2).sum(0)
            rp = np.einsum("kf,nfhw->nhwk", share, R)
            return self.fold(rp, x.shape)
        for s in range(0, n, chunk):          # the full contribution tensor, a few samples at a time
            sl = slice(s, s + chunk)
            P = self.patches(x[sl])                                  # (n, Ho, Wo, K)
            Z = P[..., :, None] * self.wmat[None, None, None]        # (n, Ho, Wo, K, F): z_ij
            Rj = R[sl].transpose(0, 2, 3, 1)[:, :, :, None, :]       # (n, Ho, Wo, 1, F)
            Y = y[sl].transpose(0, 2, 3, 1)[:, :, :, None, :]        # z_j incl. bias
            if rule == "simple":
                rp = (Z * (Rj / (Y + TOOLBOX_CONV_STAB * sgn(Y)))).sum(-1)
            elif rule == "epsilon":
                rp = (Z * (Rj / (Y + param * sgn(Y)))).sum(-1)
            elif rule == "alphabeta":
                alpha = float(param)
                beta = 1.0 - alpha           # the toolbox's parametrisation: alpha + beta = 1
                Zp = np.where(Z > 0, Z, 0.0)
                Zn = Z - Zp
                Zsp = Zp.sum(3, keepdims=True) + np.maximum(self.b, 0) + TOOLBOX_CONV_STAB
                if beta == 0:
                    rp = (Zp * (Rj / Zsp)).sum(-1)
                else:
                    Zsn = Y - Zsp - TOOLBOX_CONV_STAB
                    rp = ((alpha * Zp / Zsp + beta * Zn / Zsn) * Rj).sum(-1)
            else:
                raise ValueError(f"unknown toolbox rule {rule!r}")
            Rout[sl] = self.fold(rp, x[sl].shape)
        return Rout


class Rect:
    def forward(self, x):
        return np.maximum(x, 0.0)

    def lrp(self, R, rule, param=None):
        return R


class SumPool:
    """Non-overlapping sum pooling (kernel = stride = k), scaled by 1/sqrt(k*k) like the toolbox's."""

    def __init__(self, k=2):
        self.k = k
        self.normalizer = 1.0 / np.sqrt(k * k)

    def windows(self, a):
        n, c, h, w = a.shape
        k = self.k
        return a.reshape(n, c, h // k, k, w // k, k)

    def forward(self, x):
        self.x = x
        self.y = self.windows(x).sum(axis=(3, 5)) * self.normalizer
        return self.y

    def lrp(self, R, rule, param=None):
        xw = self.windows(self.x)                                    # (n, c, Ho, k, Wo, k)
        Rw = R[:, :, :, None, :, None]
        s = (self.y / self.normalizer)[:, :, :, None, :, None]        # the plain window sum
        if rule == "simple":
            out = xw * (Rw / (s + TOOLBOX_POOL_STAB * sgn(s)))
        elif rule == "epsilon":
            out = xw * (Rw / (s + param * sgn(s)))
        elif rule in ("flat", "ww"):
            out = np.broadcast_to(Rw / (self.k * self.k), xw.shape)
        elif rule == "alphabeta":
            alpha = float(param)
            beta = 1.0 - alpha
            Zp = np.where(xw > 0, xw, 0.0)
            Zn = xw - Zp
            Zsp = Zp.sum(axis=(3, 5), keepdims=True) + TOOLBOX_CONV_STAB
            out = alpha * Zp * (Rw / Zsp)
            if beta != 0:
                Zsn = s - Zsp - TOOLBOX_CONV_STAB
                out = out + beta * Zn * (Rw / Zsn)   # intended formula; zero for non-negative inputs
        else:
            raise ValueError(f"unknown toolbox rule {rule!r}")
        return np.ascontiguousarray(out).reshape(self.x.shape)


class Flatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(len(x), -1)

    def lrp(self, R, rule, param=None):
        return R.reshape(self.shape)


class Sequential:
    def __init__(self, modules):
        self.modules = list(modules)

    def forward(self, x):
        for m in self.modules:
            x = m.forward(x)
        return x

    def lrp(self, R, rule="simple", param=None):
        """The toolbox's ``Sequential.lrp(R, rule, param)``: every module, in reverse, with one rule.

        ``self.relevance_out[i]`` keeps the relevance that arrived at module i's output."""
        self.relevance_out = [None] * len(self.modules)
        for i in reversed(range(len(self.modules))):
            self.relevance_out[i] = R
            R = self.modules[i].lrp(R, rule, param)
        return R


def lenet5(weights) -> Sequential:
    """The toolbox's LeNet-5 (models/MNIST/LeNet-5) from the weights in lenet5.npz."""
    mods = []
    for k in range(1, 5):
        mods.append(Conv(weights[f"conv{k}_W_oihw"], weights[f"conv{k}_B"]))
        if k < 4:
            mods += [Rect(), SumPool(2)]
    mods.append(Flatten())
    return Sequential(mods)


def initial_relevance(y, target):
    """The demo's starting relevance: the output masked to the target class (Y * onehot)."""
    mask = np.zeros_like(y)
    mask[np.arange(len(y)), target] = 1.0
    return y * mask


def explain(net: Sequential, x, target, rule="simple", param=None):
    """Forward x (float64), start from Y * onehot(target), run the toolbox's LRP with one rule."""
    y = net.forward(np.asarray(x, np.float64))
    return net.lrp(initial_relevance(y, target), rule, param)
