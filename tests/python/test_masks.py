"""Masks from Python (numpy and torch): every keyword against a numpy reference written from
the definitions in include/attnkit/mask.hpp, packed batches against separate calls, masked
gradients against finite differences, and the errors."""
import numpy as np
import pytest

import attnkit


def masked_softmax_np(q, k, v, *, causal=False, scale=None, key_lengths=None, key_begin=None,
                      query_positions=None, window_size=(-1, -1), alibi_slopes=None, softcap=0.0,
                      attn_mask=None):
    """float64 masked softmax attention, loops over the definitions (independent of C++)."""
    b, sq, hq, dk = q.shape
    sk, hk = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(dk) if scale is None else scale
    out = np.zeros((b, sq, hq, v.shape[3]))
    mask = None if attn_mask is None else np.broadcast_to(attn_mask, (b, hq, sq, sk))
    for bi in range(b):
        lo = 0 if key_begin is None else key_begin[bi]
        hi = sk if key_lengths is None else key_lengths[bi]
        p0 = sk - sq if query_positions is None else query_positions[bi]
        for h in range(hq):
            kv = h // (hq // hk)
            for i in range(sq):
                p = p0 + i
                x = scale * (k[bi, :, kv].astype(np.float64) @ q[bi, i, h].astype(np.float64))
                if softcap:
                    x = softcap * np.tanh(x / softcap)
                if alibi_slopes is not None:
                    slope = alibi_slopes[h] if np.ndim(alibi_slopes) == 1 else alibi_slopes[bi, h]
                    x = x - slope * np.abs(p - np.arange(sk))
                if mask is not None:
                    m = mask[bi, h, i]
                    x = np.where(m, x, -np.inf) if m.dtype == bool else x + m
                j = np.arange(sk)
                ok = (j >= lo) & (j < hi)
                if causal:
                    ok &= j <= p
                if window_size[0] >= 0:
                    ok &= j >= p - window_size[0]
                if window_size[1] >= 0:
                    ok &= j <= p + window_size[1]
                x = np.where(ok, x, -np.inf)
                if np.isfinite(x).any():
                    w = np.exp(x - x.max())
                    out[bi, i, h] = (w / w.sum()) @ v[bi, :, kv]
    return out


def inputs(rng, b=2, sq=21, sk=37, hq=4, hk=2, d=8):
    return (rng.standard_normal((b, sq, hq, d)), rng.standard_normal((b, sk, hk, d)),
            rng.standard_normal((b, sk, hk, d)))


CASES = [
    dict(key_begin=[5, 0], key_lengths=[37, 30]),
    dict(query_positions=[0, 10]),
    dict(window_size=(6, 0)),
    dict(window_size=(4, 3)),
    dict(alibi_slopes=np.array([0.5, 0.25, 0.125, 0.0625])),
    dict(alibi_slopes=np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])),
    dict(softcap=1.5),
    dict(attn_mask="bool"),
    dict(attn_mask="float"),
    dict(key_begin=[3, 1], window_size=(9, 2), alibi_slopes=np.array([0.3] * 4), softcap=2.0,
         attn_mask="float"),
]


def concrete(case, rng, dtype):
    case = dict(case)
    if isinstance(case.get("attn_mask"), str):
        keep = rng.random((21, 37)) > 0.25
        case["attn_mask"] = keep if case["attn_mask"] == "bool" else np.where(
            keep, rng.standard_normal((2, 4, 21, 37)), -np.inf).astype(dtype)
    if "alibi_slopes" in case:
        case["alibi_slopes"] = case["alibi_slopes"].astype(dtype)
    return case


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(c))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name", ["softmax", "topk"])
def test_masks_match_numpy_reference(rng, case, causal, name):
    q, k, v = inputs(rng)
    config = {"k": 64} if name == "topk" else {}  # k >= Sk: topk is exact softmax
    m = attnkit.Mechanism(name, causal=causal, **config)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        kw = concrete(case, np.random.default_rng(1), dtype)
        want = masked_softmax_np(q, k, v, causal=causal, **kw)
        got = m.forward(*(t.astype(dtype) for t in (q, k, v)), **kw)
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


def test_packed_batch_equals_separate_calls(rng):
    lengths_q, lengths_k = [7, 1, 12], [9, 30, 12]
    seqs = [inputs(rng, b=1, sq=a, sk=b) for a, b in zip(lengths_q, lengths_k)]
    cat = [np.concatenate([s[i] for s in seqs], axis=1).astype(np.float32) for i in range(3)]
    cu_q = np.cumsum([0] + lengths_q).astype(np.int32)
    cu_k = np.cumsum([0] + lengths_k).astype(np.int32)
    for name in ("softmax", "linear", "heinsen"):
        m = attnkit.Mechanism(name, causal=True)
        out = m.forward(*cat, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=12,
                        max_seqlen_k=30)
        for s, (q, k, v) in enumerate(seqs):
            alone = m.forward(*(t.astype(np.float32) for t in (q, k, v)))
            np.testing.assert_allclose(out[:, cu_q[s]:cu_q[s + 1]], alone, atol=1e-6)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        g = m.backward(*cat, out, dout, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        for s, (q, k, v) in enumerate(seqs):
            args = [t.astype(np.float32) for t in (q, k, v)]
            alone = m.backward(*args, m.forward(*args), dout[:, cu_q[s]:cu_q[s + 1]])
            np.testing.assert_allclose(g.dq[:, cu_q[s]:cu_q[s + 1]], alone.dq, atol=2e-5)
            np.testing.assert_allclose(g.dk[:, cu_k[s]:cu_k[s + 1]], alone.dk, atol=2e-5)


def test_mask_errors_name_the_argument(rng):
    q, k, v = (t.astype(np.float32) for t in inputs(rng))
    with pytest.raises(attnkit.Error, match="window_size: is not supported by linear"):
        attnkit.attention(q, k, v, "linear", window_size=(3, 3))
    with pytest.raises(attnkit.Error, match="softcap: is not supported by ra"):
        attnkit.attention(q, k, v, "ra", softcap=2.0)
    with pytest.raises(attnkit.Error, match="window_size: must be a pair"):
        attnkit.attention(q, k, v, window_size=3)
    with pytest.raises(attnkit.Error, match=r"max_seqlen_q: \(3\) is less than the longest"):
        attnkit.attention(q[:1], k[:1], v[:1], cu_seqlens_q=[0, 10, 21], cu_seqlens_k=[0, 17, 37],
                          max_seqlen_q=3)
    with pytest.raises(attnkit.Error, match="attn_mask: Sk"):
        attnkit.attention(q, k, v, attn_mask=np.ones((21, 36), bool))
    with pytest.raises(attnkit.Error, match="alibi_slopes: must be float32"):
        attnkit.attention(q, k, v, alibi_slopes=np.ones(4))
    with pytest.raises(attnkit.Error, match="window: unknown keyword"):
        attnkit.Mechanism("softmax").forward(q, k, v, window=(1, 1))
    assert "window_size" in attnkit.Mechanism("topk").capabilities["masks"]
    assert attnkit.Mechanism("luna").capabilities["masks"] == ["key_begin", "cu_seqlens"]


def test_torch_masked_gradients_match_finite_differences():
    torch = pytest.importorskip("torch")
    import attnkit.torch as ak
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 6, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    slopes = torch.tensor([0.3, 0.1], dtype=torch.float64)
    keep = torch.rand(6, 6, generator=g) > 0.2
    keep[:, 0] = True
    f = lambda q, k, v: ak.attention(q, k, v, causal=True, window_size=(3, 0),  # noqa: E731
                                     alibi_slopes=slopes, softcap=2.0, attn_mask=keep,
                                     key_begin=torch.tensor([1, 0]))
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)
    # float32 kernel gradients equal the float64 references'.
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    f32 = lambda q, k, v: ak.attention(q, k, v, causal=True, window_size=(3, 0),  # noqa: E731
                                       alibi_slopes=slopes.float(), softcap=2.0, attn_mask=keep,
                                       key_begin=torch.tensor([1, 0]))
    f(q, k, v).square().sum().backward()
    f32(q32, k32, v32).square().sum().backward()
    for a, b in ((q32, q), (k32, k), (v32, v)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4)


def test_windowed_stream_is_a_ring_matching_the_windowed_forward(rng):
    q, k, v = (t.astype(np.float32) for t in inputs(rng, b=1, sq=20, sk=20))
    m = attnkit.Mechanism("softmax", causal=True)
    s = m.stream(batch=1, heads=4, head_dim=8, kv_heads=2, window=5)
    full = m.forward(q, k, v, window_size=(5, 0))
    for t in range(20):
        s.append(k[:, t:t + 1], v[:, t:t + 1])
        np.testing.assert_allclose(s.query(q[:, t:t + 1])[:, 0], full[:, t], atol=2e-6)
    assert s.length == 20 and s.state_bytes == 6 * 2 * 8 * 2 * 4  # 6 tokens, k and v
    with pytest.raises(attnkit.Error, match=r"window: only a KV-cache stream \(softmax, topk\) keeps a sliding window"):
        attnkit.Mechanism("linear").stream(batch=1, heads=1, head_dim=4, window=3)


def test_stream_softcap_and_alibi_decode_as_the_masked_forward(rng):
    q, k, v = (t.astype(np.float32) for t in inputs(rng, b=1, sq=12, sk=12))
    slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    m = attnkit.Mechanism("softmax", causal=True)
    s = m.stream(batch=1, heads=4, head_dim=8, kv_heads=2, softcap=2.0, alibi_slopes=slopes)
    full = m.forward(q, k, v, softcap=2.0, alibi_slopes=slopes)
    for t in range(12):
        s.append(k[:, t:t + 1], v[:, t:t + 1])
        np.testing.assert_allclose(s.query(q[:, t:t + 1])[:, 0], full[:, t], atol=2e-6)
