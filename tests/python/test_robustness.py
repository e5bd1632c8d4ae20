"""Defects found from outside (issue 9), one regression test each: concurrency, fork,
thread caps and failures, bad arrays and configs, pickling, packaging files."""
import copy
import io
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import attnkit


def qkv(rng, s=64, h=2, d=16, b=1):
    return [rng.standard_normal((b, s, h, d)).astype(np.float32) for _ in range(3)]


def test_concurrent_calls_run_at_the_same_time(rng):
    """A long call in one Python thread does not hold up calls from another (each call takes
    a Context of its own), and both stay correct."""
    attnkit.set_num_threads(1)
    try:
        big = qkv(rng, s=3072, h=8, d=64)
        small = qkv(rng, s=32)
        want = attnkit.attention(*small, "softmax")
        spans = {}

        def long_call():
            t0 = time.perf_counter()
            attnkit.attention(*big, "softmax")
            spans["long"] = (t0, time.perf_counter())

        t = threading.Thread(target=long_call)
        t.start()
        time.sleep(0.01)
        done = []
        while t.is_alive():
            np.testing.assert_array_equal(attnkit.attention(*small, "softmax"), want)
            done.append(time.perf_counter())
        t.join()
        inside = [x for x in done if spans["long"][0] < x < spans["long"][1]]
        assert len(inside) >= 5, f"only {len(inside)} small calls finished during the long one"
    finally:
        attnkit.set_num_threads(0)


def _child_runs_attnkit():
    q, k, v = (np.ones((1, 200, 4, 32), np.float32) for _ in range(3))
    out = attnkit.attention(q, k, v, "linear", map="elu1", norm="kernel")
    os._exit(0 if np.allclose(out, 1.0) else 1)


def test_fork_after_use(rng):
    attnkit.set_num_threads(2)
    try:
        attnkit.attention(*qkv(rng, s=512, h=4, d=32), "softmax")  # the pool has run
        pid = os.fork()
        if pid == 0:
            _child_runs_attnkit()
        deadline = time.time() + 60
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            pytest.fail("the forked child hung")
    finally:
        attnkit.set_num_threads(0)


def _mp_job(seed):
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((1, 100, 2, 16)).astype(np.float32) for _ in range(3))
    return float(attnkit.attention(q, k, v, "softmax", causal=True).sum())


def test_multiprocessing_fork_pool(rng):
    attnkit.attention(*qkv(rng, s=256), "softmax")
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        got = pool.map_async(_mp_job, [1, 2, 3]).get(timeout=60)
    assert got == [_mp_job(s) for s in (1, 2, 3)]


def test_thread_count_is_capped():
    with pytest.raises(attnkit.Error, match=r"threads: must be <= \d+"):
        attnkit.set_num_threads(100000)
    assert attnkit.max_threads() >= 64
    assert 1 <= attnkit.available_cpus() <= os.cpu_count()
    assert attnkit.num_threads() == attnkit.available_cpus()


def test_refused_threads_raise_instead_of_hanging():
    code = textwrap.dedent("""
        import resource, numpy as np, attnkit
        resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))
        attnkit.set_num_threads(64)
        q = np.ones((1, 512, 8, 64), np.float32)
        try:
            attnkit.attention(q, q, q, "softmax")
        except attnkit.Error as e:
            print("ERROR", e)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ERROR threads: could not start worker thread" in r.stdout, r.stdout + r.stderr


def test_bad_arrays_are_attnkit_errors(rng):
    q, k, v = qkv(rng)
    message = "q: dtype must be float32, float64, bfloat16 or float16"
    with pytest.raises(attnkit.Error, match=message):
        attnkit.attention(q.astype(object), k, v)
    with pytest.raises(attnkit.Error, match="k: dtype must be"):
        attnkit.attention(q, k.astype(np.complex64), v)
    strided = np.lib.stride_tricks.as_strided(q, shape=q.shape,
                                              strides=(q.strides[0], q.strides[1] + 2,
                                                       q.strides[2], q.strides[3]))
    with pytest.raises(attnkit.Error, match=r"q: strides .* must be multiples of the item size"):
        attnkit.attention(strided, k, v)
    out = np.empty_like(q)
    out.flags.writeable = False
    with pytest.raises(attnkit.Error, match="out: is written, so it must be a writable array"):
        attnkit.Mechanism("softmax")(q, k, v, out=out)
    with pytest.raises(attnkit.Error, match="q: dtype must be .* \\(got object\\)"):
        attnkit.attention({"a": 1}, k, v)


def test_config_values_cannot_inject_keys(rng):
    with pytest.raises(attnkit.Error, match="config k: value '5,query_chunk=1' must be"):
        attnkit.Mechanism("topk", k="5,query_chunk=1")
    with pytest.raises(attnkit.Error, match="config k: value '5 query_chunk=1'"):
        attnkit.Mechanism("topk", k="5 query_chunk=1")
    assert attnkit.Mechanism("topk", k=5).describe().startswith("topk(k=5,query_chunk=32)")


def test_filter_has_one_meaning(rng):
    q, k, v = qkv(rng, s=40)
    mem = rng.standard_normal((1, 4, 2, 16)).astype(np.float32)
    with pytest.raises(attnkit.Error, match="filter: is the memory's conv filter weights"):
        attnkit.attention(q, k, v, "memory", memory=mem, filter="maxpool")
    out = attnkit.attention(q, k, v, "memory", memory=mem, filter_type="maxpool", width=3)
    assert np.isfinite(out).all()
    torch = pytest.importorskip("torch")
    import attnkit.torch as ak
    t = [torch.from_numpy(x) for x in (q, k, v)]
    with pytest.raises(attnkit.Error, match="filter: is the memory's conv filter weights"):
        ak.attention(*t, "memory", memory=torch.from_numpy(mem), filter="maxpool")


def test_inputs_are_checked_before_outputs_are_allocated():
    """A stride-0 q of 2^26 x 8 x 1024 floats (a 2 TiB out) with a bad k or v: the rule about
    k or v, not numpy's MemoryError for out."""
    q = np.lib.stride_tricks.as_strided(np.zeros(1024, np.float32), shape=(1, 1 << 26, 8, 1024),
                                        strides=(0, 0, 0, 4))
    k = np.zeros((1, 4, 3, 1024), np.float32)
    with pytest.raises(attnkit.Error, match=r"k: heads \(3\) must divide q heads \(8\)"):
        attnkit.attention(q, k, k)
    with pytest.raises(attnkit.Error, match=r"v: seq \(3\) must equal k seq \(4\)"):
        attnkit.attention(q, k[:, :, :2], k[:, :3, :2])


def test_huge_stream_specs_name_the_stream():
    m = attnkit.Mechanism("linear")
    with pytest.raises(attnkit.Error, match="stream: batch x heads x head_dim"):
        m.stream(batch=1 << 30, heads=64, head_dim=64)
    with pytest.raises(attnkit.Error, match=r"max_tokens: must be in \[0, 2\^31\)"):
        attnkit.Mechanism("softmax").stream(batch=1, heads=2, head_dim=8, max_tokens=1 << 62)
    with pytest.raises(attnkit.Error, match="max_tokens"):
        attnkit.Mechanism("softmax").stream(batch=1, heads=2, head_dim=8, max_tokens=-1)


def test_empty_arrays_any_numpy(rng):
    """numpy 2 gives empty arrays stride 0; numpy 1 does not: both run."""
    q = np.zeros((1, 0, 2, 16), np.float32)
    k, v = qkv(rng, s=5)[1:]
    assert attnkit.attention(q, k, v).shape == (1, 0, 2, 16)
    e = np.zeros((1, 0, 2, 16), np.float32)
    out = attnkit.attention(qkv(rng, s=3)[0], e, e, "softmax")
    assert out.shape == (1, 3, 2, 16) and not out.any()


def test_mechanism_pickles_and_deepcopies(rng):
    m = attnkit.Mechanism("topk", causal=True, scale=0.5, k=7, query_chunk=9)
    for m2 in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert m2.describe() == m.describe() and m2.causal
        q, k, v = qkv(rng, s=20)
        np.testing.assert_array_equal(m2(q, k, v), m(q, k, v))
    torch = pytest.importorskip("torch")
    import attnkit.torch as ak
    layer = ak.MultiheadAttention(32, 2, "luna", causal=True, memory_slots=4)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    kwargs = {"weights_only": False} if "weights_only" in torch.load.__code__.co_varnames else {}
    layer2 = torch.load(buf, **kwargs)
    x = torch.randn(1, 10, 32)
    with torch.no_grad():
        torch.testing.assert_close(layer2(x), layer(x))


def test_docstrings_list_config_keys_from_the_registry():
    doc = attnkit.Mechanism.__doc__
    for name in attnkit.mechanisms():
        assert f"    {name}:" in doc
        for k in attnkit.config_keys(name):
            assert f"{k['key']}={k['default']}" in doc
            assert k["help"]
    keys = {k["key"]: k for k in attnkit.config_keys("lara")}
    assert {"landmarks", "mis", "alpha", "sample", "seed"} <= set(keys)
    assert keys["mis"]["allowed"] == "opt|biased|bh"


def test_package_files_and_console_script():
    pkg = os.path.dirname(attnkit.__file__)
    assert os.path.exists(os.path.join(pkg, "py.typed"))
    assert os.path.exists(os.path.join(pkg, "_core.pyi"))
    assert attnkit.__version__ == "0.1.0"
    from importlib import metadata
    meta = metadata.metadata("attnkit")
    assert meta["License"] or any("Apache" in c for c in meta.get_all("Classifier"))
    assert "torch" in (meta.get_all("Provides-Extra") or [])
    exe = os.path.join(os.path.dirname(sys.executable), "attnkit")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "attnkit 0.1.0", r.stdout + r.stderr
