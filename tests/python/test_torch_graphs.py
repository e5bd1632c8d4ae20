"""attnkit inside PyTorch graphs: the custom operators (torch >= 2.4) under torch.library's
opcheck, torch.compile(fullgraph=True) forward and training step, torch.export, ONNX; and the
older-torch path (autograd.Function) saying what it is."""
import io

import pytest

torch = pytest.importorskip("torch")
import attnkit  # noqa: E402
import attnkit.torch as ak  # noqa: E402
from attnkit import _torch_ops as ops  # noqa: E402

CUSTOM = ak.backend() == "custom_op"
needs_custom_op = pytest.mark.skipif(not CUSTOM, reason=f"torch {torch.__version__} has no "
                                     "torch.library.custom_op (attnkit runs an autograd.Function)")
CONFIGS = {"linear": {"map": "elu1", "norm": "kernel"}, "topk": {"k": 3}, "rfa": {"features": 8},
           "performer": {"features": 8}, "ra": {"samples": 2}, "lara": {"landmarks": 2},
           "memory": {"chunk": 4, "width": 2}}


def test_backend_matches_the_torch_version():
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert ak.backend() == ("custom_op" if (major, minor) >= (2, 4) else "autograd.Function")


def _flat(**over):
    flat = ops.defaults()
    flat.update(over)
    return [flat[n] for n in ops.MASK_NAMES]


@needs_custom_op
@pytest.mark.parametrize("name", attnkit.mechanisms())
def test_every_mechanism_is_an_operator_that_passes_opcheck(name):
    """opcheck: the schema, the fake kernel's shapes and dtypes against the real one, and the
    registered autograd (for mechanisms with a backward pass)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    mech = attnkit.Mechanism(name, **CONFIGS.get(name, {}))
    memory = torch.randn(2, 3, 2, 4, dtype=torch.float64) if mech.capabilities[
        "needs_memory"] else None
    if mech.capabilities["backward"]:
        for t in (q, k, v) + ((memory,) if memory is not None else ()):
            t.requires_grad_()
    config = attnkit._config_string(CONFIGS.get(name, {}))
    args = (q, k, v, None, memory, None, *_flat(config=config))
    torch.library.opcheck(getattr(torch.ops.attnkit, name), args)
    assert hasattr(torch.ops.attnkit, f"{name}_backward")


class Block(torch.nn.Module):
    """A pre-norm self-attention block around an attnkit mechanism (GQA: 4 query heads over
    2 key/value heads), with a left-padding mask."""

    def __init__(self, mechanism: str, **config):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.q, self.kv = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        self.mechanism, self.config = mechanism, config

    def forward(self, x: torch.Tensor, key_begin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        h = self.norm(x)
        q = self.q(h).view(b, s, 4, 4)
        k, v = self.kv(h).view(b, s, 2, 2, 4).unbind(2)
        y = ak.attention(q, k, v, self.mechanism, causal=True, key_begin=key_begin, **self.config)
        return x + y.reshape(b, s, 16)


@needs_custom_op
@pytest.mark.parametrize("name", ["softmax", "linear", "topk"])
def test_compile_fullgraph_forward_and_training_step_match_eager(name):
    torch.manual_seed(0)
    model = Block(name, **CONFIGS.get(name, {}))
    x = torch.randn(2, 12, 16, requires_grad=True)
    key_begin = torch.tensor([0, 3], dtype=torch.int32)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, ref = compiled(x, key_begin), model(x, key_begin)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    ref.square().sum().backward()
    for g, r in zip(grads, [p.grad for p in model.parameters()] + [x.grad]):
        torch.testing.assert_close(g, r)


@needs_custom_op
def test_compile_with_inductor_and_export_keep_the_operator():
    torch.manual_seed(0)
    model = Block("softmax").eval()
    x, key_begin = torch.randn(2, 12, 16), torch.tensor([0, 3], dtype=torch.int32)
    with torch.no_grad():
        ref = model(x, key_begin)
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x, key_begin), ref)
    exported = torch.export.export(model, (x, key_begin))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "attnkit.softmax.default" in targets, targets
    torch.testing.assert_close(exported.module()(x, key_begin), ref)
    # The exported program runs on other inputs of the same shapes: it is a graph, not values.
    x2 = torch.randn(2, 12, 16)
    torch.testing.assert_close(exported.module()(x2, key_begin), model(x2, key_begin))


class Plain(torch.nn.Module):
    def forward(self, q, k, v):
        return ak.attention(q, k, v, "softmax", causal=True)


class Padded(torch.nn.Module):
    def forward(self, q, k, v):
        return ak.attention(q, k, v, "softmax", key_lengths=torch.tensor([5], dtype=torch.int32))


def test_onnx_export_writes_the_attnkit_node_or_fails_loudly():
    """Never a graph of constants: the TorchScript exporter writes an attnkit::softmax node in
    the custom domain "attnkit" (mask arrays are refused by name); the dynamo exporter, which
    has no translation for the operators, raises."""
    q = torch.randn(1, 8, 2, 16)
    f = io.BytesIO()
    kwargs = {"dynamo": False} if CUSTOM else {}
    torch.onnx.export(Plain(), (q, q, q), f, custom_opsets={"attnkit": 1}, **kwargs)
    try:
        import onnx
    except ImportError:  # Debian has no onnx package: read the protobuf's strings
        assert b"attnkit" in f.getvalue() and b"softmax" in f.getvalue()
    else:
        graph = onnx.load_from_string(f.getvalue()).graph
        nodes = [(n.domain, n.op_type) for n in graph.node]
        assert ("attnkit", "softmax") in nodes, nodes
        node = next(n for n in graph.node if n.domain == "attnkit")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["causal"] == 1 and attrs["inputs"] == b"q,k,v", attrs
    # torch 1.13's tracer fails on the Function's constant arrays before the symbolic runs
    # (an opaque "unordered_map::at", but an error).
    with pytest.raises(Exception, match="mask arrays" if CUSTOM else ""):
        torch.onnx.export(Padded(), (q, q, q), io.BytesIO(), **kwargs)
    if CUSTOM:
        with pytest.raises(Exception):
            torch.onnx.export(Plain().eval(), (q, q, q), dynamo=True)
