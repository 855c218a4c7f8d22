"""Plain-numpy reference implementations of the LRP rules for ONE affine layer, in matrix form.

Independent of attribx: nothing here imports it. Conventions (as the seeds and zennit write them):

* ``x`` is the layer input, (N, in); ``W`` is (in, out) (the torch weight transposed), ``b`` is (out,)
  or None; ``R`` is the relevance at the layer output, (N, out). Z = x W + b.
* ``stab(z, s) = z + s * sign(z)`` with sign(0) = +1.
* Convolutions and pools are handled by turning them into a dense (in, out) matrix over the flattened
  (C*H*W) input with a direct loop (:func:`conv_matrix`, :func:`avg_pool_matrix`) and then using the
  same formulas.
"""
from __future__ import annotations

import numpy as np


# -- helpers -----------------------------------------------------------------------------------------
def stab(z, s):
    """z + s·sign(z), sign(0) = +1 (also for -0.0)."""
    return z + s * np.where(z >= 0, 1.0, -1.0)


def pos(a):
    return np.maximum(a, 0.0)


def neg(a):
    return np.minimum(a, 0.0)


def _bias(b, n_out):
    return np.zeros(n_out) if b is None else np.asarray(b, dtype=np.float64)


# -- rules -------------------------------------------------------------------------------------------
def lrp_zero(x, W, b, R, zero_bias=False):
    """LRP-0: S = R / Z where Z != 0 else 0; R_in = x ⊙ (S Wᵀ)."""
    b = np.zeros(W.shape[1]) if zero_bias else _bias(b, W.shape[1])
    Z = x @ W + b
    nz = Z != 0
    S = np.where(nz, R / np.where(nz, Z, 1.0), 0.0)
    return x * (S @ W.T)


def lrp_epsilon(x, W, b, R, epsilon=1e-6, zero_bias=False):
    """LRP-ε: S = R / stab(Z, ε); R_in = x ⊙ (S Wᵀ)."""
    b = np.zeros(W.shape[1]) if zero_bias else _bias(b, W.shape[1])
    Z = x @ W + b
    S = R / stab(Z, epsilon)
    return x * (S @ W.T)


def lrp_alpha_beta(x, W, b, R, alpha=2.0, beta=1.0, stabilizer=1e-6, zero_bias=False):
    """LRP-αβ in zennit's convention: positive contributions x+W+, x-W- (and b+), negative ones
    x+W-, x-W+ (and b-), each normalised by its own total."""
    b = np.zeros(W.shape[1]) if zero_bias else _bias(b, W.shape[1])
    xp, xn = pos(x), neg(x)
    Wp, Wn = pos(W), neg(W)
    Zp = xp @ Wp + pos(b) + xn @ Wn
    Zn = xp @ Wn + neg(b) + xn @ Wp
    Sp = R / stab(Zp, stabilizer)
    Sn = R / stab(Zn, stabilizer)
    Rp = xp * (Sp @ Wp.T) + xn * (Sp @ Wn.T)
    Rn = xp * (Sn @ Wn.T) + xn * (Sn @ Wp.T)
    return alpha * Rp - beta * Rn


def lrp_z_plus(x, W, b, R, stabilizer=1e-6, zero_bias=False):
    return lrp_alpha_beta(x, W, b, R, 1.0, 0.0, stabilizer, zero_bias)


def lrp_gamma(x, W, b, R, gamma=0.25, stabilizer=1e-6, zero_bias=False):
    """Generalised LRP-γ (zennit ≥ 0.5): the sign of the true output picks the branch."""
    b_true = _bias(b, W.shape[1])
    Z = x @ W + b_true
    Wgp = W + gamma * pos(W)
    Wgn = W + gamma * neg(W)
    if zero_bias:
        bgp = bgn = np.zeros(W.shape[1])
    else:
        bgp = b_true + gamma * pos(b_true)
        bgn = b_true + gamma * neg(b_true)
    xp, xn = pos(x), neg(x)
    Zp = xp @ Wgp + bgp + xn @ Wgn
    Zn = xp @ Wgn + bgn + xn @ Wgp
    Gp = np.where(Z > 0, R / stab(Zp, stabilizer), 0.0)
    Gn = np.where(Z < 0, R / stab(Zn, stabilizer), 0.0)
    return xp * (Gp @ Wgp.T) + xn * (Gp @ Wgn.T) + xp * (Gn @ Wgn.T) + xn * (Gn @ Wgp.T)


def lrp_flat(ones_matrix, R, stabilizer=1e-6):
    """LRP-flat from the layer's 0/1 connectivity matrix (in, out) (the layer with all-ones weights):
    Z = 1ᵀ M, S = R / stab(Z), R_in = S Mᵀ (not multiplied by x)."""
    Z = np.ones(ones_matrix.shape[0]) @ ones_matrix
    S = R / stab(Z, stabilizer)
    return S @ ones_matrix.T


def lrp_w_square(W, b, R, stabilizer=1e-6, zero_bias=False):
    """LRP-w²: Z = Σ_i W_ij² (+ b_j²), S = R / stab(Z), R_in = S (W²)ᵀ (not multiplied by x)."""
    W2 = W * W
    Z = W2.sum(axis=0) + (0.0 if zero_bias else _bias(b, W.shape[1]) ** 2)
    S = R / stab(Z, stabilizer)
    return S @ W2.T


def lrp_z_box(x, W, b, R, low, high, stabilizer=1e-6):
    """LRP-zᴮ: l, h broadcast to x (already flattened, (N, in) or (in,)); the biases cancel."""
    l = np.broadcast_to(np.asarray(low, dtype=np.float64), x.shape)
    h = np.broadcast_to(np.asarray(high, dtype=np.float64), x.shape)
    b = _bias(b, W.shape[1])
    Wp, Wn = pos(W), neg(W)
    Z = x @ W + b - (l @ Wp + pos(b)) - (h @ Wn + neg(b))
    S = R / stab(Z, stabilizer)
    return x * (S @ W.T) - l * (S @ Wp.T) - h * (S @ Wn.T)


def lrp_norm_sum(xs, R, epsilon=1e-6):
    """Norm rule on an elementwise sum of inputs: R_k = x_k ⊙ R / stab(Σ x, ε) (ε = 0: exact, 0/0 -> 0)."""
    z = sum(xs)
    if epsilon == 0:
        nz = z != 0
        S = np.where(nz, R / np.where(nz, z, 1.0), 0.0)
    else:
        S = R / stab(z, epsilon)
    return [x * S for x in xs]


def lrp_norm_linear(x, M, R, epsilon=1e-6):
    """Norm rule on a bias-free linear op with matrix M (an average pool): ε-rule without bias
    (ε = 0: LRP-0, 0/0 -> 0)."""
    if epsilon == 0:
        return lrp_zero(x, M, None, R)
    return lrp_epsilon(x, M, None, R, epsilon=epsilon)


# -- convolutions and pools as dense matrices ----------------------------------------------------------
def _pairs(padding, n=2):
    if isinstance(padding, int):
        return [(padding, padding)] * n
    out = []
    for p in padding:
        out.append((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])))
    return out


def _n(v, n=2):
    return (v,) * n if isinstance(v, int) else tuple(v)


def conv_out_size(size, k, s, d, pad):
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def conv_matrix(weight, in_shape, stride=1, padding=0, dilation=1, groups=1):
    """The dense (C*H*W, O*Ho*Wo) matrix of a 2-d cross-correlation (torch weight layout
    (O, C/groups, kh, kw), zero padding), built by a direct loop; returns (matrix, out_shape)."""
    C, H, Wd = in_shape
    O, Cg, kh, kw = weight.shape
    sh, sw = _n(stride)
    dh, dw = _n(dilation)
    ph, pw = _pairs(padding)
    Ho, Wo = conv_out_size(H, kh, sh, dh, ph), conv_out_size(Wd, kw, sw, dw, pw)
    Og = O // groups
    M = np.zeros((C * H * Wd, O * Ho * Wo))
    for o in range(O):
        g = o // Og
        for oy in range(Ho):
            for ox in range(Wo):
                col = (o * Ho + oy) * Wo + ox
                for ci in range(Cg):
                    c = g * Cg + ci
                    for ky in range(kh):
                        iy = oy * sh - ph[0] + ky * dh
                        if not 0 <= iy < H:
                            continue
                        for kx in range(kw):
                            ix = ox * sw - pw[0] + kx * dw
                            if not 0 <= ix < Wd:
                                continue
                            M[(c * H + iy) * Wd + ix, col] += weight[o, ci, ky, kx]
    return M, (O, Ho, Wo)


def conv_direct(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """A second, independent conv (pad + strided slices + einsum), to check :func:`conv_matrix`."""
    N, C, H, Wd = x.shape
    O, Cg, kh, kw = weight.shape
    sh, sw = _n(stride)
    dh, dw = _n(dilation)
    ph, pw = _pairs(padding)
    xp = np.pad(x, ((0, 0), (0, 0), ph, pw))
    Ho, Wo = conv_out_size(H, kh, sh, dh, ph), conv_out_size(Wd, kw, sw, dw, pw)
    Og = O // groups
    out = np.zeros((N, O, Ho, Wo))
    for g in range(groups):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        ws = weight[g * Og:(g + 1) * Og]
        for ky in range(kh):
            for kx in range(kw):
                patch = xs[:, :, ky * dh: ky * dh + sh * (Ho - 1) + 1: sh, kx * dw: kx * dw + sw * (Wo - 1) + 1: sw]
                out[:, g * Og:(g + 1) * Og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, ky, kx])
    if bias is not None:
        out += np.asarray(bias)[None, :, None, None]
    return out


def conv_bias_vector(bias, out_shape):
    """The per-channel bias repeated over the output positions, flattened like the output."""
    O, Ho, Wo = out_shape
    if bias is None:
        return None
    return np.repeat(np.asarray(bias, dtype=np.float64), Ho * Wo)


def avg_pool_matrix(in_shape, kernel, stride=None, padding=0, count_include_pad=True):
    """Dense (C*H*W, C*Ho*Wo) matrix of a 2-d average pool."""
    C, H, Wd = in_shape
    kh, kw = _n(kernel)
    sh, sw = _n(kernel if stride is None else stride)
    ph, pw = _pairs(padding)
    Ho, Wo = conv_out_size(H, kh, sh, 1, ph), conv_out_size(Wd, kw, sw, 1, pw)
    M = np.zeros((C * H * Wd, C * Ho * Wo))
    for c in range(C):
        for oy in range(Ho):
            for ox in range(Wo):
                cells = [(oy * sh - ph[0] + ky, ox * sw - pw[0] + kx) for ky in range(kh) for kx in range(kw)]
                inside = [(iy, ix) for iy, ix in cells if 0 <= iy < H and 0 <= ix < Wd]
                div = kh * kw if count_include_pad else len(inside)
                for iy, ix in inside:
                    M[(c * H + iy) * Wd + ix, (c * Ho + oy) * Wo + ox] += 1.0 / div
    return M, (C, Ho, Wo)
