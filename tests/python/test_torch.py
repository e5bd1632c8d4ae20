"""attnkit.torch: autograd against finite differences (gradcheck, float64 references) and
against PyTorch's own attention, modules, layouts and DLPack zero-copy."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as ak  # noqa: E402

TRAINABLE = [n for n in attnkit.mechanisms() if attnkit.Mechanism(n).capabilities["backward"]]
# Small configs so gradcheck's finite differences stay cheap and away from kinks.
CONFIGS = {"linear": {"map": "elu1", "norm": "kernel"}, "topk": {"k": 3}, "rfa": {"features": 8},
           "performer": {"features": 8}, "memory": {"chunk": 2, "width": 2}}


def torch_softmax_attention(q, k, v, causal):
    """[B, S, H, D] softmax attention in plain PyTorch ops (autograd is PyTorch's)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if causal:
        sq, sk = s.shape[-2:]
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
        s = s.masked_fill(~mask, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def inputs(b=1, s=6, h=2, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, s, h, d, generator=g, dtype=dtype, requires_grad=True)
            for _ in range(3)]


def memory_for(name, q, seed=1):
    if not attnkit.Mechanism(name).capabilities["needs_memory"]:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q.shape[0], 3, q.shape[2], q.shape[3], generator=g, dtype=q.dtype,
                       requires_grad=True)


@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(name, causal):
    if causal and not attnkit.Mechanism(name).capabilities["causal"]:
        pytest.skip("non-causal only")
    q, k, v = inputs()
    memory = memory_for(name, q)
    cfg = CONFIGS.get(name, {})
    if memory is None:
        f = lambda q, k, v: ak.attention(q, k, v, name, causal=causal, **cfg)  # noqa: E731
        assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-6)
    else:
        f = lambda q, k, v, m: ak.attention(q, k, v, name, causal=causal, memory=m, **cfg)  # noqa
        assert torch.autograd.gradcheck(f, (q, k, v, memory), eps=1e-6, atol=1e-6)


def test_gated_linear_gradcheck_includes_the_gate():
    q, k, v = inputs()
    gate = torch.randn(1, 6, 2, dtype=torch.float64, requires_grad=True)
    f = lambda q, k, v, g: ak.attention(q, k, v, "linear", causal=True, gated=1, gate=g)  # noqa
    assert torch.autograd.gradcheck(f, (q, k, v, gate), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_float32_softmax_matches_pytorch_autograd(causal):
    q, k, v = inputs(b=2, s=50, h=3, d=16, dtype=torch.float32)
    dout = torch.randn(2, 50, 3, 16)
    out = ak.attention(q, k, v, causal=causal)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref = torch_softmax_attention(q, k, v, causal)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, atol=5e-5, rtol=1e-4)


def test_bhsd_layout_replaces_scaled_dot_product_attention():
    q, k, v = (torch.randn(2, 4, 33, 16, requires_grad=True) for _ in range(3))  # [B, H, S, D]
    out = ak.attention(q, k, v, "softmax", causal=True, layout="bhsd")
    assert out.shape == (2, 4, 33, 16)
    ref = torch_softmax_attention(*(t.transpose(1, 2) for t in (q, k, v)), True).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_dlpack_zero_copy_and_torch_outputs():
    x = torch.randn(1, 16, 2, 8)
    out = attnkit.attention(x, x, x, "linear", causal=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    # Strided torch view: same numbers as a contiguous copy.
    base = torch.randn(1, 2, 16, 8)
    view = base.transpose(1, 2)
    torch.testing.assert_close(attnkit.attention(view, view, view),
                               attnkit.attention(*(view.contiguous(),) * 3), rtol=0, atol=0)
    # bfloat16 tensors run the bfloat16 softmax kernel, bfloat16 out: the float32 out that the
    # same call writes when given one, rounded once.
    xb = x.bfloat16()
    out = attnkit.attention(xb, xb, xb)
    assert out.dtype == torch.bfloat16
    wide = attnkit.Mechanism("softmax").forward(xb, xb, xb, out=torch.empty(out.shape))
    torch.testing.assert_close(out, wide.bfloat16(), rtol=0, atol=0)


def test_requires_grad_outside_autograd_glue_is_a_clear_error():
    q, k, v = inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="q: requires grad"):
        attnkit.attention(q, k, v)


def test_mechanism_without_backward_is_refused_before_running():
    without = [n for n in attnkit.mechanisms() if n not in TRAINABLE]
    if not without:
        pytest.skip("every mechanism has a backward pass")
    q, k, v = inputs(dtype=torch.float32)
    memory = memory_for(without[0], q)
    with pytest.raises(ValueError, match="backward"):
        ak.attention(q, k, v, without[0], memory=memory)
    with torch.no_grad():
        assert torch.isfinite(ak.attention(q, k, v, without[0], memory=memory)).all()


@pytest.mark.parametrize("name", TRAINABLE)
def test_multihead_layer_trains_one_step(name):
    torch.manual_seed(0)
    layer = ak.MultiheadAttention(32, 4, name, causal=attnkit.Mechanism(name).capabilities[
        "causal"], memory_slots=4, **CONFIGS.get(name, {}))
    x = torch.randn(2, 24, 32)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="num_heads"):
        ak.MultiheadAttention(30, 4)
    with pytest.raises(ValueError, match="layout"):
        ak.Attention("softmax", layout="sbhd")


def test_padding_keys_get_no_gradient_and_lengths_may_be_a_tensor():
    q, k, v = inputs(b=2, s=8, dtype=torch.float32)
    lengths = torch.tensor([8, 5], dtype=torch.int64)
    out = ak.attention(q, k, v, "linear", key_lengths=lengths, map="elu1", norm="kernel")
    out.sum().backward()
    assert torch.count_nonzero(k.grad[1, 5:]) == 0 and torch.count_nonzero(v.grad[1, 5:]) == 0
    assert torch.count_nonzero(v.grad[1, :5]) > 0


def test_memory_filter_weights_are_learnable():
    q, k, v = inputs(s=7)
    memory = memory_for("memory", q)
    weights = torch.tensor([[0.5, -0.25, 0.75], [0.1, 0.2, 0.3]], dtype=torch.float64,
                           requires_grad=True)
    f = lambda q, k, v, m, w: ak.attention(q, k, v, "memory", causal=True, memory=m, filter=w,  # noqa
                                           chunk=3, width=3)
    assert torch.autograd.gradcheck(f, (q, k, v, memory, weights), eps=1e-6, atol=1e-6)
    layer = ak.MultiheadAttention(16, 2, "memory", causal=True, memory_slots=3, chunk=4, width=3)
    assert layer.inner.filter is not None and layer.inner.filter.shape == (2, 3)
    layer(torch.randn(1, 9, 16)).sum().backward()
    assert torch.count_nonzero(layer.inner.filter.grad) > 0


def test_scaled_dot_product_attention_drop_in():
    q, k, v = (torch.randn(2, 4, 33, 16, requires_grad=True) for _ in range(3))  # [B, H, L, E]
    for causal in (False, True):
        out = ak.scaled_dot_product_attention(q, k, v, is_causal=causal)
        ref = torch_softmax_attention(*(t.transpose(1, 2) for t in (q, k, v)), causal)
        torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-5, rtol=1e-4)
        sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
        if sdpa is not None:
            torch.testing.assert_close(out, sdpa(q, k, v, is_causal=causal), atol=2e-5,
                                       rtol=1e-4)
    out = ak.scaled_dot_product_attention(q, k, v, is_causal=True, mechanism="linear",
                                          map="elu1", norm="kernel")
    out.sum().backward()
    assert q.grad is not None
    with pytest.raises(ValueError, match="dropout_p"):
        ak.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    # attn_mask (bool and float) and is_causal with L != S (top-left, as PyTorch aligns it).
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    keep = torch.rand(33, 33) > 0.3
    keep[:, 0] = True
    with torch.no_grad():
        for mask in (keep, torch.where(keep, 0.0, float("-inf")) + 0.1 * torch.randn(33, 33)):
            out = ak.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if sdpa is not None:
                torch.testing.assert_close(out, sdpa(q, k, v, attn_mask=mask), atol=2e-5,
                                           rtol=1e-4)
        out = ak.scaled_dot_product_attention(q, k[:, :, :20], v[:, :, :20], is_causal=True)
        if sdpa is not None:
            torch.testing.assert_close(
                out, sdpa(q, k[:, :, :20], v[:, :, :20], is_causal=True), atol=2e-5, rtol=1e-4)
        # Row i sees keys j <= i: the last 13 rows see all 20 keys.
        full = ak.scaled_dot_product_attention(q[:, :, 19:], k[:, :, :20], v[:, :, :20])
        torch.testing.assert_close(out[:, :, 19:], full, atol=2e-5, rtol=1e-4)


def test_every_bf16_path_gives_the_float32_result_to_bf16_rounding():
    """attnkit.bf16_paths() (amx where the CPU has it, amx-emulated, avx512bf16, fp32): each
    forced path runs the bfloat16 softmax kernel to within P's bfloat16 rounding of the float32
    run on the same values (the output rounded to bfloat16 too), and cpu_report() names the
    path taken."""
    paths = attnkit.bf16_paths()
    assert "fp32" in paths and attnkit.bf16_path() == paths[0]
    q, k, v = (t.to(torch.bfloat16) for t in inputs(s=70, d=40, dtype=torch.float32))
    ref = ak.attention(q.float(), k.float(), v.float(), causal=True)
    try:
        for path in paths:
            attnkit.set_bf16_path(path)
            assert f"bf16: {path}" in attnkit.cpu_report()
            out = ak.attention(q, k, v, causal=True)
            # P and the output each rounded to bfloat16: 2^-9 max|v| apiece.
            torch.testing.assert_close(out.float(), ref, atol=2 ** -8 * v.abs().max().item() + 2e-6,
                                       rtol=0)
        with pytest.raises(ValueError, match="bf16_path: 'tpu' is not a bfloat16 path"):
            attnkit.set_bf16_path("tpu")
    finally:
        attnkit.set_bf16_path("")
    assert attnkit.bf16_path() == paths[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["softmax", "linear", "topk"])
def test_low_precision_in_is_low_precision_out_with_gradients(dtype, name):
    """bfloat16 / float16 in -> the same dtype out and in the gradients, equal to the float32
    run on the same (exactly widened) values to the dtype's rounding."""
    config = CONFIGS.get(name, {})
    q, k, v = (t.detach().to(dtype).requires_grad_() for t in inputs(s=9, d=8, dtype=torch.float32))
    out = ak.attention(q, k, v, name, causal=True, **config)
    assert out.dtype == dtype
    out.float().square().sum().backward()
    assert all(t.grad.dtype == dtype for t in (q, k, v))
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = ak.attention(q32, k32, v32, name, causal=True, **config)
    ref.square().sum().backward()
    tol = dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.float(), ref.detach(), **tol)
    for t, r in ((q, q32), (k, k32), (v, v32)):
        torch.testing.assert_close(t.grad.float(), r.grad, **tol)


def test_sdpa_scale_gqa_and_both_causal_alignments():
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = (torch.randn(2, 2, 11, 8, generator=g) for _ in range(2))
    with pytest.raises(ValueError, match="enable_gqa"):
        ak.scaled_dot_product_attention(q, k, v)
    kr, vr = (t.repeat_interleave(2, dim=1) for t in (k, v))  # GQA as repeated heads
    with torch.no_grad():
        out = ak.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)
        ref = torch_softmax_attention(*(t.transpose(1, 2) for t in (q * 0.3 * 8 ** 0.5, kr, vr)),
                                      False).transpose(1, 2)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        # Bottom-right causal (torch.nn.attention.bias.causal_lower_right): query i sees keys
        # j <= i + S - L, attnkit.torch.attention's causal=True.
        bottom = torch_softmax_attention(*(t.transpose(1, 2) for t in (q, kr, vr)),
                                         True).transpose(1, 2)
        bias = pytest.importorskip("torch.nn.attention.bias") if sdpa is not None else None
        if bias is not None:
            out = ak.scaled_dot_product_attention(q, k, v, bias.causal_lower_right(7, 11),
                                                  enable_gqa=True)
            torch.testing.assert_close(out, bottom, atol=2e-5, rtol=1e-4)
            out = ak.scaled_dot_product_attention(q, k, v, bias.causal_upper_left(7, 11),
                                                  enable_gqa=True)
            top = ak.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            torch.testing.assert_close(out, top)
            torch.testing.assert_close(top, sdpa(q, kr, vr, is_causal=True), atol=2e-5,
                                       rtol=1e-4)
        torch.testing.assert_close(ak.attention(q, k, v, causal=True, layout="bhsd"), bottom,
                                   atol=2e-5, rtol=1e-4)
        # [B, L, E]: one head.
        out = ak.scaled_dot_product_attention(q[:, 0], kr[:, 0], vr[:, 0], is_causal=True)
        torch.testing.assert_close(out, sdpa(q[:, 0], kr[:, 0], vr[:, 0], is_causal=True)
                                   if sdpa else out, atol=2e-5, rtol=1e-4)
