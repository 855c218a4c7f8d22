"""Arras et al.'s (2017) LRP for bidirectional LSTMs, written here from the paper's equations (their
``lrp_linear``: numerator w·h_in + bias_factor·(b + ε·sign(z))/n_in, denominator z + ε·sign(z),
sign(0) = +1; the cell update c_t = f·c_{t-1} + i·g as a linear map with identity weights over the 2d
inputs [f·c_{t-1}, i·g]; the gates take nothing, the signals all; the output layer a linear map over
[h_left, h_right]). Independent of attribx: plain numpy loops over time. Weights as in
``../shared/data/sst-bilstm`` (Arras's gate order i, g, f, o).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst-bilstm" / "bilstm.npz"


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def lrp_linear(h_in, w, b, z, r_out, n_in, eps, bias_factor):
    """w: (D_in, D_out); the share of b and ε goes evenly to n_in inputs when bias_factor = 1."""
    sign = np.where(z >= 0, 1.0, -1.0)
    numer = w * h_in[:, None] + bias_factor * (b + eps * sign)[None, :] / n_in
    return (numer / (z + eps * sign)[None, :] * r_out[None, :]).sum(axis=1)


def arras_lstm_direction(x, wx, wh, b, order):
    """Forward of one direction over x (T, e) with weights in Arras's gate order (i, g, f, o)."""
    d = wh.shape[1]
    idx = {g: slice(k * d, (k + 1) * d) for k, g in enumerate("igfo")}
    T = len(x)
    h, c = np.zeros((T + 1, d)), np.zeros((T + 1, d))      # index -1 holds the zero initial state
    gates, pre = {}, np.zeros((T, 4 * d))
    for t in order:
        prev = t - 1 if order[0] == 0 else t + 1
        prev = prev if 0 <= prev < T else -1
        pre[t] = wx @ x[t] + wh @ h[prev] + b
        i, g, f, o = (sigmoid(pre[t][idx["i"]]), np.tanh(pre[t][idx["g"]]), sigmoid(pre[t][idx["f"]]),
                      sigmoid(pre[t][idx["o"]]))
        c[t] = f * c[prev] + i * g
        h[t] = o * np.tanh(c[t])
        gates[t] = (i, g, f, prev)
    return h, c, gates, pre, idx


def arras_lrp(x, net, target, eps, bias_factor):
    """Input relevance (T, e), relevance left on the four initial states, and the explained score."""
    T, e = x.shape
    d = net["Whh_Left"].shape[1]
    runs = {}
    for side, order in (("Left", list(range(T))), ("Right", list(range(T - 1, -1, -1)))):
        runs[side] = arras_lstm_direction(x, net[f"Wxh_{side}"], net[f"Whh_{side}"],
                                          net[f"bxh_{side}"] + net[f"bhh_{side}"], order) + (order,)
    last = {"Left": T - 1, "Right": 0}
    s = net["Why_Left"] @ runs["Left"][0][last["Left"]] + net["Why_Right"] @ runs["Right"][0][last["Right"]]
    r_out = np.zeros_like(s)
    r_out[target] = s[target]
    r_x = np.zeros((T, e))
    kept = 0.0
    for side in ("Left", "Right"):
        h, c, gates, pre, idx, order = runs[side]
        b = net[f"bxh_{side}"] + net[f"bhh_{side}"]
        r_h, r_c = np.zeros((T + 1, d)), np.zeros((T + 1, d))
        r_h[last[side]] = lrp_linear(h[last[side]], net[f"Why_{side}"].T, np.zeros(len(s)), s, r_out, 2 * d,
                                     eps, bias_factor)
        for t in reversed(order):
            i, g, f, prev = gates[t]
            r_c[t] += r_h[t]
            r_c[prev] += lrp_linear(f * c[prev], np.eye(d), np.zeros(d), c[t], r_c[t], 2 * d, eps, bias_factor)
            r_g = lrp_linear(i * g, np.eye(d), np.zeros(d), c[t], r_c[t], 2 * d, eps, bias_factor)
            gi = idx["g"]
            r_x[t] += lrp_linear(x[t], net[f"Wxh_{side}"][gi].T, b[gi], pre[t][gi], r_g, d + e, eps, bias_factor)
            r_h[prev] += lrp_linear(h[prev], net[f"Whh_{side}"][gi].T, b[gi], pre[t][gi], r_g, d + e, eps,
                                    bias_factor)
        kept += r_h[-1].sum() + r_c[-1].sum()
    return r_x, kept, s[target]


def random_net(rng, e=5, d=4, classes=3, scale=0.5):
    net = {}
    for side in ("Left", "Right"):
        net[f"Wxh_{side}"] = rng.normal(size=(4 * d, e)) * scale
        net[f"Whh_{side}"] = rng.normal(size=(4 * d, d)) * scale
        net[f"bxh_{side}"] = rng.normal(size=4 * d) * scale
        net[f"bhh_{side}"] = rng.normal(size=4 * d) * scale
        net[f"Why_{side}"] = rng.normal(size=(classes, d))
    return net


def sst_net():
    if not SST.exists():
        pytest.skip(f"the SST BiLSTM is not here ({SST})")
    return dict(np.load(SST))
