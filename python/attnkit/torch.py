"""attnkit.torch: attnkit mechanisms as PyTorch operators, functions and nn.Module layers.

Tensors go to the C++ kernels through DLPack without copies (a tensor whose last dimension is
not contiguous is made contiguous first, since the kernels read rows). With torch >= 2.4 every
mechanism is a custom operator, ``torch.ops.attnkit.<name>`` with ``<name>_backward``, which
torch.compile(fullgraph=True) traces and torch.export keeps; older torch (Debian's 1.13) runs
the same code in an autograd.Function (``backend()`` says which). Gradients come from each
mechanism's backward pass. dtypes: float32 runs the kernels; float64 the double-precision
references (so ``torch.autograd.gradcheck`` checks them against finite differences);
bfloat16 and float16 give outputs and gradients in the input dtype, computed with float32
accumulation and states (bfloat16 kernels where the mechanism has them, float32 kernels on
the exactly widened inputs otherwise).

    import torch, attnkit.torch as ak
    q, k, v = (torch.randn(2, 8, 512, 64, requires_grad=True) for _ in range(3))  # [B, H, S, D]
    out = ak.attention(q, k, v, "linear", causal=True, layout="bhsd", map="elu1")
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

import attnkit as _ak
from attnkit import _torch_ops as _ops

__all__ = ["Attention", "AttentionFunction", "MultiheadAttention", "attention", "backend",
           "scaled_dot_product_attention"]

_LAYOUTS = ("bshd", "bhsd")


def _int32s(x: Any, name: str) -> Optional[torch.Tensor]:
    """An index argument (key_lengths, key_begin, cu_seqlens, ...) as an int32 tensor (the
    operator checks the values)."""
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise _ak.Error(f"{name}: must be integers ({e})") from None
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise _ak.Error(f"{name}: must be integers (got {x.dtype})")
    return x.detach().to(torch.int32)


def _flat(spec: _ops.Spec, key_lengths: Any, masks: dict) -> dict:
    """The operator's flat mask and mechanism arguments (attnkit._torch_ops.MASK_SCHEMA)."""
    flat = _ops.defaults()
    flat.update(causal=spec.causal, scale=spec.scale, config=spec.config,
                key_lengths=_int32s(key_lengths, "key_lengths"))
    for n in ("key_begin", "query_positions", "cu_seqlens_q", "cu_seqlens_k"):
        flat[n] = _int32s(masks.get(n), n)
    for n in ("max_seqlen_q", "max_seqlen_k"):
        if masks.get(n) is not None:
            flat[n] = int(masks[n])
    flat["window_left"], flat["window_right"] = _ak._window(masks.get("window_size", (-1, -1)))
    flat["softcap"] = float(masks.get("softcap", 0.0) or 0.0)
    for n in ("alibi_slopes", "attn_mask"):
        m = masks.get(n)
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            m = torch.as_tensor(m)
        if m.requires_grad:
            raise _ak.Error(f"{n}: is a constant here (no gradient); pass {n}.detach()")
        flat[n] = m
    return flat


class AttentionFunction(torch.autograd.Function):
    """out = mechanism(q, k, v; gate, memory, filter) with attnkit's backward pass: the path
    for torch < 2.4, which has no torch.library.custom_op (the same attnkit._torch_ops.forward
    and backward the custom operators run).

    q [B, Sq, Hq, Dk], k [B, Sk, Hk, Dk], v [B, Sk, Hk, Dv], gate [B, Sk, Hk] or None,
    memory [B, L, Hq, Dk] or None, filter [Hk, width] or None -> out [B, Sq, Hq, Dv].
    Gradients flow to q, k, v, gate, memory and filter; flat (the masks, a dict of
    attnkit._torch_ops.MASK_NAMES) holds constants.
    """

    @staticmethod
    def forward(ctx: Any, name: str, flat: dict, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor, gate: Optional[torch.Tensor], memory: Optional[torch.Tensor],
                filter: Optional[torch.Tensor]) -> torch.Tensor:
        args = [flat[n] for n in _ops.MASK_NAMES]
        out, lse = _ops.forward(name, q, k, v, gate, memory, filter, *args)
        ctx.name, ctx.args = name, args
        ctx.save_for_backward(q, k, v, out, lse, gate, memory, filter)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple:
        q, k, v, out, lse, gate, memory, filter = ctx.saved_tensors
        g = _ops.backward(ctx.name, dout, q, k, v, out, lse, gate, memory, filter, *ctx.args)
        extra = (d if t is not None else None for d, t in zip(g[3:], (gate, memory, filter)))
        return (None, None, *g[:3], *extra)

    @staticmethod
    def symbolic(g: Any, name: str, flat: dict, q: Any, k: Any, v: Any, gate: Any, memory: Any,
                 filter: Any) -> Any:
        """ONNX (TorchScript exporter): one node attnkit::<name> in the custom domain
        "attnkit", instead of the constants the trace would otherwise record."""
        arrays = [n for n in _ops.ARRAY_NAMES if flat.get(n) is not None]
        return _onnx_node(g, name, flat, arrays, (q, k, v, gate, memory, filter), outputs=1)


# The flat arguments an ONNX node carries as attributes (name, symbolic_helper kind).
_ONNX_ATTRIBUTES = (("causal", "b"), ("scale", "f"), ("config", "s"), ("window_left", "i"),
                    ("window_right", "i"), ("softcap", "f"))


def _onnx_node(g: Any, name: str, values: dict, arrays: list, tensors: tuple,
               outputs: int) -> Any:
    """attnkit::<name>(q, k, v[, gate, memory, filter]) with the mechanism and the scalar
    masks as attributes; mask arrays (padding, ALiBi, attn_mask) are refused by name."""
    if arrays:
        raise _ak.Error(f"onnx: attnkit.{name} exports without mask arrays only (got "
                        f"{', '.join(arrays)})")
    names = ("q", "k", "v", "gate", "memory", "filter")
    present = [(n, t) for n, t in zip(names, tensors) if t is not None and not _is_none_value(t)]
    return g.op(f"attnkit::{name}", *(t for _, t in present),
                inputs_s=",".join(n for n, _ in present), causal_i=int(values["causal"]),
                scale_f=float(values["scale"]), config_s=str(values["config"]),
                window_left_i=int(values["window_left"]),
                window_right_i=int(values["window_right"]), softcap_f=float(values["softcap"]),
                outputs=outputs)


def _is_none_value(t: Any) -> bool:
    return hasattr(t, "node") and t.node().mustBeNone()


def _register_onnx_symbolics() -> None:
    """The custom operators' TorchScript ONNX symbolics (torch 2.x): the node above, from
    the operator's constant arguments."""
    register = getattr(torch.onnx, "register_custom_op_symbolic", None)
    if not _ops.AVAILABLE or register is None:
        return
    from torch.onnx import symbolic_helper as sh

    def make(name: str) -> Any:
        def symbolic(g: Any, q: Any, k: Any, v: Any, gate: Any, memory: Any, filter: Any,
                     *flat: Any) -> Any:
            a = dict(zip(_ops.MASK_NAMES, flat))
            values = {n: sh._maybe_get_const(a[n], kind) for n, kind in _ONNX_ATTRIBUTES}
            arrays = [n for n in _ops.ARRAY_NAMES if not _is_none_value(a[n])]
            return _onnx_node(g, name, values, arrays, (q, k, v, gate, memory, filter), 2)
        return symbolic

    for name in _ak.mechanisms():
        register(f"attnkit::{name}", make(name), 1)


_register_onnx_symbolics()


def _apply(spec: _ops.Spec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           layout: str, key_lengths: Any, gate: Optional[torch.Tensor],
           memory: Optional[torch.Tensor], filter: Optional[torch.Tensor],
           masks: dict) -> torch.Tensor:
    if layout not in _LAYOUTS:
        raise _ak.Error(f"layout: must be one of {_LAYOUTS} (got {layout!r})")
    _ak._mask_kwargs(masks)
    _ak._check_filter(filter)
    for t, name in ((q, "q"), (k, "k"), (v, "v"), (gate, "gate"), (memory, "memory"),
                    (filter, "filter")):
        if t is not None and not isinstance(t, torch.Tensor):
            raise _ak.Error(f"{name}: must be a torch.Tensor (got {type(t).__name__})")
    flat = _flat(spec, key_lengths, masks)
    if layout == "bhsd":  # views, not copies: the kernels take any batch/sequence/head strides
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, gate, memory, filter))
    if tracked and not _ops.has_backward(*spec):
        raise _ak.Error(f"backward: {spec.name} has no backward pass; call it under "
                        "torch.no_grad() or detach its inputs")
    flat["save_lse"] = tracked
    if _ops.AVAILABLE:
        out = _ops.call(spec.name, q, k, v, gate, memory, filter, flat)[0]
    else:
        out = AttentionFunction.apply(spec.name, flat, q, k, v, gate, memory, filter)
    return out.transpose(1, 2) if layout == "bhsd" else out


def backend() -> str:
    """Which path attnkit.torch runs: "custom_op" (torch >= 2.4: torch.ops.attnkit.*, traced by
    torch.compile and torch.export) or "autograd.Function" (older torch: eager only)."""
    return "custom_op" if _ops.AVAILABLE else "autograd.Function"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, /,
              mechanism: str = "softmax", *, causal: bool = False,
              scale: Optional[float] = None, layout: str = "bshd",
              key_lengths: Any = None, gate: Optional[torch.Tensor] = None,
              memory: Optional[torch.Tensor] = None, filter: Optional[torch.Tensor] = None,
              **config_and_masks: Any) -> torch.Tensor:
    """Differentiable attention. layout "bshd": [B, S, H, D]; "bhsd": [B, H, S, D], the layout
    of torch.nn.functional.scaled_dot_product_attention, which
    ``attention(q, k, v, "softmax", causal=c, layout="bhsd")`` replaces. Mask keywords
    (window_size, alibi_slopes, softcap, attn_mask [B|1, Hq|1, Sq, Sk], key_begin,
    query_positions, cu_seqlens_q/k, max_seqlen_q/k) as attnkit.Mechanism.forward takes
    them, whatever the layout; the rest is the mechanism's config."""
    masks = {k: config_and_masks.pop(k) for k in _ak._MASK_KEYS if k in config_and_masks}
    spec = _ops.spec(mechanism, causal, scale, config_and_masks)
    return _apply(spec, q, k, v, layout, key_lengths, gate, memory, filter, masks)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Any = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, mechanism: str = "softmax",
                                 **config: Any) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention's signature and semantics, computed by
    an attnkit mechanism, with gradients: query [B, H, L, E] (or [B, L, E]: one head), key
    [B, Hk, S, E], value [B, Hk, S, Ev] -> [B, H, L, Ev]. Hk != H needs enable_gqa=True (H a
    multiple of Hk), as in PyTorch. attn_mask: bool (True attends) or float added to the logits,
    broadcastable to [B, H, L, S] (a constant: no gradient), or a
    torch.nn.attention.bias.CausalBias: causal_upper_left / causal_lower_right. is_causal aligns
    the mask top-left as PyTorch does (query i sees keys j <= i, also for L != S);
    causal_lower_right(L, S) aligns it bottom-right (the last query sees every key: a KV-cache
    decode step), as attnkit.torch.attention's causal=True does. scale: the logit scale
    (default 1/sqrt(E)). dropout_p > 0 is an error (attnkit has no dropout)."""
    if dropout_p != 0.0:
        raise _ak.Error(f"dropout_p: must be 0 (got {dropout_p}); attnkit has no dropout")
    if query.dim() == 3:  # [B, L, E]: one head
        out = scaled_dot_product_attention(
            query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1),
            _unsqueeze_mask(attn_mask), dropout_p, is_causal, scale, enable_gqa,
            mechanism=mechanism, **config)
        return out.squeeze(1)
    if query.dim() != 4:
        raise _ak.Error(f"query: must be [B, H, L, E] or [B, L, E] (got {query.dim()} "
                        "dimensions)")
    if not enable_gqa and key.dim() == 4 and key.shape[1] != query.shape[1]:
        raise _ak.Error(f"enable_gqa: key has {key.shape[1]} heads and query {query.shape[1]}; "
                        "pass enable_gqa=True for grouped-query attention (as PyTorch's SDPA)")
    masks: dict = {}
    causal = bool(is_causal)
    top_left = causal
    variant = _causal_variant(attn_mask)
    if variant is not None:
        if causal:
            raise _ak.Error("is_causal: must be False when attn_mask is a CausalBias")
        causal, top_left, attn_mask = True, variant == "upper_left", None
    if attn_mask is not None:
        masks["attn_mask"] = attn_mask
    if top_left and query.shape[-2] != key.shape[-2]:  # row 0 at key position 0
        masks["query_positions"] = torch.zeros(query.shape[0], dtype=torch.int32)
    return attention(query, key, value, mechanism, causal=causal, scale=scale, layout="bhsd",
                     **masks, **config)


def _causal_variant(mask: Any) -> Optional[str]:
    """"upper_left" / "lower_right" for a torch.nn.attention.bias.CausalBias, else None."""
    if type(mask).__name__ != "CausalBias" or not hasattr(mask, "variant"):
        return None
    return "upper_left" if getattr(mask.variant, "name", "") == "UPPER_LEFT" else "lower_right"


def _unsqueeze_mask(mask: Any) -> Any:
    """A 3-D query's mask [B|1, L, S] as the 4-D call's [B|1, 1, L, S]."""
    if isinstance(mask, torch.Tensor) and mask.dim() == 3:
        return mask.unsqueeze(1)
    return mask


class Attention(nn.Module):
    """The inner product of multi-head attention, (q, k, v) -> out, by an attnkit mechanism.

    For mechanisms that read a memory (luna, memory) the module owns it as a parameter
    [memory_slots, heads, head_dim], shared over the batch; for memory with filter_type=conv and
    width > 1 also the filter weights [kv_heads, width] (the depthwise conv of arXiv
    2404.00798, initialised to the box filter). For linear gated=1 pass the gate logits
    [B, Sk, Hk] to forward.
    """

    def __init__(self, mechanism: str = "softmax", *, causal: bool = False,
                 scale: Optional[float] = None, layout: str = "bshd",
                 memory_slots: int = 0, heads: int = 0, head_dim: int = 0,
                 kv_heads: int = 0, **config: Any) -> None:
        super().__init__()
        self.mechanism = _ak.Mechanism(mechanism, causal=causal, scale=scale, **config)
        self._spec = _ops.spec(mechanism, causal, scale, config)
        if layout not in _LAYOUTS:
            raise _ak.Error(f"layout: must be one of {_LAYOUTS} (got {layout!r})")
        self.layout = layout
        self.memory = None
        if self.mechanism.capabilities["needs_memory"]:
            if memory_slots <= 0 or heads <= 0 or head_dim <= 0:
                raise _ak.Error(f"memory_slots: {mechanism} needs memory_slots, heads and "
                                "head_dim > 0 for its learnable memory")
            # N(0, 1) as the tiny paper's code initialises memory.
            self.memory = nn.Parameter(torch.randn(memory_slots, heads, head_dim))
        self.filter = None
        width = int(config.get("width", 1))
        if mechanism == "memory" and config.get("filter_type", "conv") == "conv" and width > 1:
            self.filter = nn.Parameter(torch.full((kv_heads or heads, width), 1.0 / width))

    def extra_repr(self) -> str:
        return f"{self.mechanism.describe()}, layout={self.layout}"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                key_lengths: Any = None, gate: Optional[torch.Tensor] = None,
                **masks: Any) -> torch.Tensor:
        """Mask keywords as attnkit.Mechanism.forward (window_size, attn_mask, ...)."""
        memory = None
        if self.memory is not None:  # [L, H, D] -> [B, L, H, D], a stride-0 view
            memory = self.memory.unsqueeze(0).expand(q.shape[0], -1, -1, -1).to(q.dtype)
        filter = None if self.filter is None else self.filter.to(q.dtype)
        return _apply(self._spec, q, k, v, self.layout, key_lengths, gate, memory, filter,
                      masks)


class MultiheadAttention(nn.Module):
    """Self-attention layer: x [B, S, E] -> [B, S, E] with q/k/v/out projections around an
    attnkit inner product (num_heads heads of E / num_heads). For linear gated=1 a gate
    projection [E -> num_heads] supplies the gate logits."""

    def __init__(self, embed_dim: int, num_heads: int, mechanism: str = "softmax", *,
                 causal: bool = False, bias: bool = True, memory_slots: int = 16,
                 **config: Any) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads:
            raise _ak.Error(f"num_heads: must divide embed_dim ({embed_dim}), got {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.inner = Attention(mechanism, causal=causal, memory_slots=memory_slots,
                               heads=num_heads, head_dim=self.head_dim, **config)
        gated = str(config.get("gated", "0")).lower() in ("1", "true", "on")
        self.gate = nn.Linear(embed_dim, num_heads, bias=True) if gated else None

    def forward(self, x: torch.Tensor, *, key_lengths: Any = None, **masks: Any) -> torch.Tensor:
        b, s, e = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.num_heads, self.head_dim).unbind(2)
        gate = None if self.gate is None else self.gate(x)
        y = self.inner(q, k, v, key_lengths=key_lengths, gate=gate, **masks)
        return self.out(y.reshape(b, s, e))
