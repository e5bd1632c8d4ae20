"""attnkit on numpy arrays: values against float64 numpy references, zero-copy, errors."""
import threading

import numpy as np
import pytest

import attnkit
from npref import (attention_np, elu1, linear_weights, qkv, softmax_backward_np,
                   softmax_weights)

F32_TOL = 2e-5  # relative to the output scale; the C++ suite owns the tight per-kernel budgets


def close(got, want, tol):
    scale = max(1.0, float(np.abs(want).max()))
    assert np.abs(np.asarray(got, dtype=np.float64) - want).max() <= tol * scale


def test_mechanism_names():
    assert {"softmax", "linear", "heinsen", "rfa", "performer", "ra", "lara", "topk", "luna",
            "memory"} <= set(attnkit.mechanisms())


@pytest.mark.parametrize("dtype,tol", [(np.float32, F32_TOL), (np.float64, 1e-12)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(37, 37), (5, 40), (40, 23)])
def test_softmax_matches_numpy(rng, dtype, tol, causal, sq, sk):
    q, k, v = qkv(rng, sq=sq, sk=sk, dtype=dtype)
    lengths = np.array([sk, max(sk - 7, 0)])
    out = attnkit.attention(q, k, v, "softmax", causal=causal, key_lengths=lengths)
    assert out.dtype == dtype and out.shape == (2, sq, 4, 8)
    want = attention_np(q, k, v, softmax_weights(16 ** -0.5), causal, lengths)
    close(out, want, tol)


def test_softmax_lse(rng):
    q, k, v = qkv(rng, sq=9, sk=9, hq=2, hk=2)
    out, lse = attnkit.Mechanism("softmax").forward(q, k, v, return_lse=True)
    s = np.einsum("bihd,bjhd->bhij", q.astype(float), k.astype(float)) / 4.0
    close(lse, np.log(np.exp(s).sum(-1)), 1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("config,phi,norm", [
    ({}, lambda x: x, "none"),
    ({"map": "elu1", "norm": "kernel"}, elu1, "kernel"),
    ({"map": "relu", "norm": "length"}, lambda x: np.maximum(x, 0), "length"),
])
def test_linear_matches_numpy(rng, causal, config, phi, norm):
    q, k, v = qkv(rng, sq=70, sk=70)
    out = attnkit.attention(q, k, v, "linear", causal=causal, **config)
    want = attention_np(q, k, v, linear_weights(phi, norm), causal)
    close(out, want, 1e-4)


def test_heinsen_is_exp_kernel_linear_attention(rng):
    q, k, v = qkv(rng, sq=30, sk=30)
    out = attnkit.attention(q, k, v, "heinsen", causal=True)
    close(out, attention_np(q, k, v, linear_weights(np.exp, "kernel"), True), 1e-5)


def test_topk_with_k_at_least_length_is_softmax(rng):
    q, k, v = qkv(rng, sq=20, sk=20)
    out = attnkit.attention(q, k, v, "topk", k=20)
    close(out, attnkit.attention(q, k, v, "softmax"), 1e-6)


def memory_args(rng, name, q, k):
    if not attnkit.Mechanism(name).capabilities["needs_memory"]:
        return {}
    return {"memory": rng.standard_normal((q.shape[0], 6, q.shape[2], q.shape[3]))}


@pytest.mark.parametrize("name", attnkit.mechanisms())
def test_every_mechanism_float32_kernel_matches_float64_reference(rng, name):
    q, k, v = qkv(rng, sq=48, sk=48, hq=2, hk=2, dv=16)
    m = attnkit.Mechanism(name)
    extra = memory_args(rng, name, q, k)
    got = m(q, k, v, **{a: t.astype(np.float32) for a, t in extra.items()})
    want = m(*(t.astype(np.float64) for t in (q, k, v)), **extra)
    assert got.dtype == np.float32 and want.dtype == np.float64
    assert np.isfinite(got).all()
    close(got, want, 1e-4)


@pytest.mark.parametrize("name", attnkit.mechanisms())
def test_every_mechanism_takes_float16_and_gives_it_back(rng, name):
    """float16 q, k, v: out in float16, exactly the float32 run on the same (exactly widened)
    values rounded once; float32 out on request; gradients in float16 too: the float32 ones
    on the same values, to float16's rounding."""
    q, k, v = (t.astype(np.float16) for t in qkv(rng, sq=48, sk=48, hq=2, hk=2, dv=16))
    m = attnkit.Mechanism(name)
    extra = {a: t.astype(np.float32) for a, t in memory_args(rng, name, q, k).items()}
    wide = [t.astype(np.float32) for t in (q, k, v)]
    out = m(q, k, v, **extra)
    want = m(*wide, **extra)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, want.astype(np.float16))
    out32 = m.forward(q, k, v, out=np.empty(want.shape, np.float32), **extra)
    np.testing.assert_array_equal(out32, want)
    if not m.capabilities["backward"]:
        return
    dout = rng.standard_normal(out.shape).astype(np.float16)
    g = m.backward(q, k, v, out, dout, **extra)
    ref = m.backward(*wide, out.astype(np.float32), dout.astype(np.float32), **extra)
    for got, r in zip(g[:3], ref[:3]):
        assert got.dtype == np.float16
        close(got.astype(np.float32), r, 2 ** -10)


def test_strided_views_are_read_in_place(rng):
    # [B, H, S, D] storage seen as [B, S, H, D]: no copy, same numbers as contiguous input.
    base = rng.standard_normal((3, 2, 4, 33, 16)).astype(np.float32)
    q, k, v = (base[i].transpose(0, 2, 1, 3) for i in range(3))
    assert not q.flags.c_contiguous
    out = attnkit.attention(q, k, v, "softmax", causal=True)
    ref = attnkit.attention(*(np.ascontiguousarray(t) for t in (q, k, v)), "softmax", causal=True)
    np.testing.assert_array_equal(out, ref)


def test_out_is_written_in_place(rng):
    q, k, v = qkv(rng, hq=2, hk=2)
    out = np.full((2, 37, 2, 8), np.nan, dtype=np.float32)
    res = attnkit.Mechanism("linear").forward(q, k, v, out=out)
    assert res is out and np.isfinite(out).all()


@pytest.mark.parametrize("mutate,message", [
    (lambda q, k, v: (q[0], k, v), "q: must have rank 4"),
    (lambda q, k, v: (q.astype(np.int32), k, v), "q: dtype must be float32"),
    (lambda q, k, v: (q, k[:, :, :, :8], v), "k"),
    (lambda q, k, v: (q, k, v[:, :5]), "v"),
    (lambda q, k, v: (q[..., ::2], k[..., ::2], v), "stride"),
    (lambda q, k, v: (np.where(q > 2, np.nan, q).astype(np.float32), k, v), "NaN"),
    (lambda q, k, v: (q.astype(np.float16), k, v), "k: must be float16, got float32"),
    (lambda q, k, v: (q.astype(">f4"), k, v), "q: byte order must be native"),
    (lambda q, k, v: (q, k, np.zeros((2, 37, 2, 0), np.float32)), "v"),
])
def test_bad_input_raises_value_error_naming_the_argument(rng, mutate, message):
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match=message):
        attnkit.attention(*mutate(q, k, v))


def test_bad_options_raise_value_error(rng):
    q, k, v = qkv(rng)
    with pytest.raises(ValueError, match="unknown key 'kk'"):
        attnkit.Mechanism("topk", kk=3)
    with pytest.raises(ValueError, match="nosuch"):
        attnkit.Mechanism("nosuch")
    with pytest.raises(ValueError, match="scale"):
        attnkit.Mechanism("softmax", scale=-1.0)
    # The message says what Python accepts: leave the scale None.
    for name in ("linear", "heinsen"):
        with pytest.raises(ValueError, match=r"no logit scale; leave it unset \(0, or None in"):
            attnkit.Mechanism(name, scale=0.5)
        attnkit.Mechanism(name, scale=None)
    with pytest.raises(ValueError, match="key_lengths"):
        attnkit.attention(q, k, v, key_lengths=[37, 99])
    with pytest.raises(ValueError, match="key_lengths: must be integers"):
        attnkit.attention(q, k, v, key_lengths=[1.5, 2.0])
    with pytest.raises(attnkit.Error, match="memory"):
        attnkit.attention(q, k, v, "luna")
    with pytest.raises(ValueError, match="q: is required"):
        attnkit.attention(None, k, v)


@pytest.mark.parametrize("name", attnkit.mechanisms())
def test_empty_sequences_give_empty_outputs(name):
    q = np.zeros((1, 0, 2, 16), np.float32)
    memory = np.zeros((1, 2, 2, 16), np.float32)
    needs = attnkit.Mechanism(name).capabilities["needs_memory"]
    assert attnkit.attention(q, q, q, name, memory=memory if needs else None).shape == q.shape


def test_read_only_output_is_refused(rng):
    q, k, v = qkv(rng)
    out = np.zeros((2, 37, 4, 8), np.float32)
    out.setflags(write=False)
    with pytest.raises((ValueError, TypeError)):
        attnkit.Mechanism("softmax").forward(q, k, v, out=out)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_backward_matches_numpy(rng, causal):
    q, k, v = qkv(rng, sq=21, sk=21, hq=2, hk=2)
    dout = rng.standard_normal((2, 21, 2, 8)).astype(np.float32)
    m = attnkit.Mechanism("softmax", causal=causal)
    g = m.backward(q, k, v, m(q, k, v), dout)
    for got, want in zip(g[:3], softmax_backward_np(q, k, v, dout, 0.25, causal)):
        close(got, want, 1e-4)
    # With the forward's lse the backward skips its forward pass; same gradients.
    out, lse = m.forward(q, k, v, return_lse=True)
    for got, want in zip(m.backward(q, k, v, out, dout, lse=lse)[:3], g[:3]):
        np.testing.assert_array_equal(got, want)


def test_topk_feed_forward_dense_is_relu_mlp(rng):
    x = rng.standard_normal((10, 12)).astype(np.float32)
    w_in = rng.standard_normal((30, 12)).astype(np.float32)
    w_out = rng.standard_normal((30, 5)).astype(np.float32)
    got = attnkit.topk_feed_forward(x, w_in, w_out, k=30)
    close(got, np.maximum(x @ w_in.T, 0).astype(float) @ w_out, 1e-5)


def test_kernels_release_the_gil(rng):
    # A Python thread keeps running while another thread is inside a kernel.
    q = rng.standard_normal((1, 2048, 8, 64)).astype(np.float32)
    done, ticks = threading.Event(), [0]

    def work():
        for _ in range(3):
            attnkit.attention(q, q, q, "softmax")
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks[0] += 1
    t.join()
    assert ticks[0] > 1000


def test_concurrent_calls_from_python_threads_give_sequential_results(rng):
    # Calls share one Context and take turns on it; each result is still its own.
    inputs = [qkv(rng, sq=64, sk=64, hq=2, hk=2) for _ in range(6)]
    want = [attnkit.attention(*t, "softmax", causal=True) for t in inputs]
    got = [None] * len(inputs)

    def work(i):
        got[i] = attnkit.attention(*inputs[i], "softmax", causal=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


STREAM_CONFIGS = {"topk": {"k": 5}, "memory": {"chunk": 6, "width": 3},
                  "linear": {"map": "elu1", "norm": "kernel", "gated": 1}}


@pytest.mark.parametrize("name", ["softmax", "topk", "linear", "heinsen", "performer", "luna",
                                  "memory"])
def test_stream_matches_causal_forward(rng, name):
    """Every streaming mechanism (all but ra and lara): each decode step equals the causal
    forward's row; gated linear appends the gate, memory its conv weights."""
    q, k, v = qkv(rng, b=1, sq=40, sk=40, hq=2, hk=2, dk=16, dv=16)
    m = attnkit.Mechanism(name, causal=True, **STREAM_CONFIGS.get(name, {}))
    caps = m.capabilities
    assert caps["streaming"]
    memory = rng.standard_normal((1, 4, 2, 16)).astype(np.float32) if caps[
        "needs_memory"] else None
    gate = rng.standard_normal((1, 40, 2)).astype(np.float32) if caps["uses_gate"] else None
    weights = rng.standard_normal((2, 3)).astype(np.float32) if caps["uses_filter"] else None
    want = m(q, k, v, memory=memory, gate=gate, filter=weights)
    s = m.stream(1, 2, 16, memory=memory, filter=weights)
    sizes = []
    for t in range(40):
        s.append(k[:, t:t + 1], v[:, t:t + 1],
                 gate=None if gate is None else gate[:, t:t + 1])
        close(s.query(q[:, t:t + 1])[:, 0], want[:, t].astype(np.float64), 1e-5)
        sizes.append(s.state_bytes)
    assert s.length == 40
    assert caps["kv_cache"] == (len(set(sizes)) > 1)  # else a fixed-size state


def test_stream_errors(rng):
    with pytest.raises(ValueError, match="stream|streaming"):
        attnkit.Mechanism("ra", causal=True).stream(1, 2, 16)
    with pytest.raises(ValueError, match="append_gated|gate"):
        attnkit.Mechanism("linear", gated=1).stream(1, 2, 16).append(
            np.zeros((1, 1, 2, 16), np.float32), np.zeros((1, 1, 2, 16), np.float32))
    with pytest.raises(ValueError, match="takes no gate"):
        attnkit.Mechanism("linear").stream(1, 2, 16).append(
            np.zeros((1, 1, 2, 16), np.float32), np.zeros((1, 1, 2, 16), np.float32),
            gate=np.zeros((1, 1, 2), np.float32))
    s = attnkit.Mechanism("linear", causal=True).stream(1, 2, 16)
    with pytest.raises(ValueError, match="k"):
        s.append(np.zeros((1, 3, 2, 8), np.float32), np.zeros((1, 3, 2, 16), np.float32))
