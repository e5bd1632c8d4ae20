"""float64 numpy references for the package tests (written from SPEC.md)."""
import numpy as np


def qkv(rng, b=2, sq=37, sk=37, hq=4, hk=2, dk=16, dv=8, dtype=np.float32):
    """Random [B, S, H, D] q, k, v (GQA when hk < hq)."""
    q = rng.standard_normal((b, sq, hq, dk)).astype(dtype)
    k = rng.standard_normal((b, sk, hk, dk)).astype(dtype)
    v = rng.standard_normal((b, sk, hk, dv)).astype(dtype)
    return q, k, v


def visible(causal, sq, sk, length, i):
    """Keys visible to query i: bottom-right aligned causal mask, padding at >= length."""
    n = length
    if causal:
        n = min(n, i + 1 + sk - sq)
    return max(n, 0)


def attention_np(q, k, v, weights, causal=False, key_lengths=None):
    """Generic float64 attention: out_i = sum_j w(q_i, k_<n) v_j with w from weights(qi, K)
    (normalised inside weights). Heads of k, v are shared by groups of q heads (GQA)."""
    b, sq, hq, _ = q.shape
    _, sk, hk, dv = v.shape
    out = np.zeros((b, sq, hq, dv))
    for bi in range(b):
        length = sk if key_lengths is None else key_lengths[bi]
        for h in range(hq):
            g = h // (hq // hk)
            for i in range(sq):
                n = visible(causal, sq, sk, length, i)
                if n == 0:
                    continue
                w = weights(q[bi, i, h].astype(np.float64), k[bi, :n, g].astype(np.float64))
                out[bi, i, h] = w @ v[bi, :n, g].astype(np.float64)
    return out


def softmax_weights(scale):
    def w(qi, kk):
        s = scale * (kk @ qi)
        e = np.exp(s - s.max())
        return e / e.sum()
    return w


def linear_weights(phi, norm):
    """Linear attention weights phi(q).phi(k_j) with SPEC 1 normalisers."""
    def w(qi, kk):
        a = phi(kk) @ phi(qi)
        if norm == "kernel":
            return a / a.sum()
        if norm == "length":
            return a / len(kk)
        return a
    return w


def elu1(x):
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))


def softmax_backward_np(q, k, v, dout, scale, causal=False):
    """dq, dk, dv of sum(out * dout) for softmax attention, float64, no GQA."""
    b, sq, h, _ = q.shape
    sk = k.shape[1]
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for bi in range(b):
        for hi in range(h):
            for i in range(sq):
                n = visible(causal, sq, sk, sk, i)
                kk, vv = k[bi, :n, hi].astype(float), v[bi, :n, hi].astype(float)
                s = scale * (kk @ q[bi, i, hi])
                p = np.exp(s - s.max())
                p /= p.sum()
                o = p @ vv
                do = dout[bi, i, hi].astype(float)
                dp = vv @ do
                ds = p * (dp - do @ o)
                dq[bi, i, hi] = scale * ds @ kk
                dk[bi, :n, hi] += scale * np.outer(ds, q[bi, i, hi])
                dv[bi, :n, hi] += np.outer(p, do)
    return dq, dk, dv
