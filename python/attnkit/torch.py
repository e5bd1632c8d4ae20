"""attnkit.torch: attnkit mechanisms as PyTorch autograd Functions and nn.Module layers.

Tensors go to the C++ kernels through DLPack without copies (a tensor whose last dimension is
not contiguous is made contiguous first, since the kernels read rows). Gradients come from
each mechanism's backward pass: float32 runs the kernels, float64 the double-precision
references, so ``torch.autograd.gradcheck`` checks them against finite differences.

    import torch, attnkit.torch as ak
    q, k, v = (torch.randn(2, 8, 512, 64, requires_grad=True) for _ in range(3))  # [B, H, S, D]
    out = ak.attention(q, k, v, "linear", causal=True, layout="bhsd", map="elu1")
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

import attnkit as _ak

__all__ = ["Attention", "AttentionFunction", "MultiheadAttention", "attention",
           "scaled_dot_product_attention"]

_LAYOUTS = ("bshd", "bhsd")


def _rows(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t detached (DLPack exports no autograd state) with a contiguous last dimension."""
    if t is None:
        return None
    t = t.detach()
    return t if t.dim() == 0 or t.stride(-1) == 1 or t.size(-1) <= 1 else t.contiguous()


class AttentionFunction(torch.autograd.Function):
    """out = mechanism(q, k, v; gate, memory, filter) with attnkit's backward pass.

    q [B, Sq, Hq, Dk], k [B, Sk, Hk, Dk], v [B, Sk, Hk, Dv], gate [B, Sk, Hk] or None,
    memory [B, L, Hq, Dk] or None, filter [Hk, width] or None -> out [B, Sq, Hq, Dv].
    Gradients flow to q, k, v, gate, memory and filter; key_lengths and the masks (a dict of
    Mechanism.forward's mask keywords) are constants.
    """

    @staticmethod
    def forward(ctx: Any, mechanism: _ak.Mechanism, key_lengths: Any, masks: dict,
                q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: Optional[torch.Tensor],
                memory: Optional[torch.Tensor], filter: Optional[torch.Tensor]) -> torch.Tensor:
        q, k, v, gate, memory, filter = (_rows(t) for t in (q, k, v, gate, memory, filter))
        masks = {n: _rows(m) if isinstance(m, torch.Tensor) else m for n, m in masks.items()}
        lse = None
        if mechanism.name == "softmax" and q.dtype == torch.float32:
            # The backward reuses the forward's log-sum-exp instead of a forward pass.
            out, lse = mechanism.forward(q, k, v, key_lengths=key_lengths, return_lse=True,
                                         **masks)
        else:
            out = mechanism.forward(q, k, v, key_lengths=key_lengths, memory=memory, gate=gate,
                                    filter=filter, **masks)
        ctx.mechanism, ctx.key_lengths, ctx.masks = mechanism, key_lengths, masks
        ctx.save_for_backward(q, k, v, out, gate, memory, filter, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: torch.Tensor) -> tuple:
        # The saved output is the Function's own output, which now carries autograd state.
        q, k, v, out, gate, memory, filter, lse = (_rows(t) for t in ctx.saved_tensors)
        g = ctx.mechanism.backward(q, k, v, out, _rows(dout), key_lengths=ctx.key_lengths,
                                   memory=memory, gate=gate, filter=filter, lse=lse, **ctx.masks)
        return None, None, None, g.dq, g.dk, g.dv, g.dgate, g.dmemory, g.dfilter


def _apply(mechanism: _ak.Mechanism, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
           layout: str, key_lengths: Any, gate: Optional[torch.Tensor],
           memory: Optional[torch.Tensor], filter: Optional[torch.Tensor],
           masks: dict) -> torch.Tensor:
    if layout not in _LAYOUTS:
        raise _ak.Error(f"layout: must be one of {_LAYOUTS} (got {layout!r})")
    _ak._mask_kwargs(masks)
    for name in ("attn_mask", "alibi_slopes"):
        m = masks.get(name)
        if isinstance(m, torch.Tensor) and m.requires_grad:
            raise _ak.Error(f"{name}: is a constant here (no gradient); pass {name}.detach()")
    _ak._check_filter(filter)
    for t, name in ((q, "q"), (k, "k"), (v, "v"), (gate, "gate"), (memory, "memory"),
                    (filter, "filter")):
        if t is not None and not isinstance(t, torch.Tensor):
            raise _ak.Error(f"{name}: must be a torch.Tensor (got {type(t).__name__})")
    if layout == "bhsd":  # views, not copies: the kernels take any batch/sequence/head strides
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, gate, memory, filter))
    if tracked and not mechanism.capabilities["backward"]:
        raise _ak.Error(f"backward: {mechanism.name} has no backward pass; call it under "
                        "torch.no_grad() or detach its inputs")
    if tracked and q.dtype == torch.bfloat16:
        raise _ak.Error("q: bfloat16 inputs have no backward pass; use float32 (bfloat16 "
                        "runs forward only, under torch.no_grad())")
    out = AttentionFunction.apply(mechanism, key_lengths, masks, q, k, v, gate, memory, filter)
    return out.transpose(1, 2) if layout == "bhsd" else out


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
    m = _ak.Mechanism(mechanism, causal=causal, scale=scale, **config_and_masks)
    return _apply(m, q, k, v, layout, key_lengths, gate, memory, filter, masks)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 mechanism: str = "softmax", **config: Any) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention's signature ([..., H, L, E] with
    one batch dimension: [B, H, L, E]) computed by an attnkit mechanism, with gradients.
    Key/value heads may divide query heads (GQA) whatever enable_gqa says. attn_mask: bool
    (True attends) or float added to the logits, broadcastable to [B, H, L, S] (a constant:
    no gradient). is_causal aligns the mask top-left as PyTorch does (query i sees keys
    j <= i, also for L != S); attnkit.torch.attention's causal aligns it bottom-right.
    dropout_p > 0 is an error (attnkit has no dropout)."""
    if dropout_p != 0.0:
        raise _ak.Error(f"dropout_p: must be 0 (got {dropout_p}); attnkit has no dropout")
    if query.dim() != 4:
        raise _ak.Error(f"query: must be [B, H, L, E] (got {query.dim()} dimensions)")
    masks = {}
    if attn_mask is not None:
        masks["attn_mask"] = attn_mask
    if is_causal and query.shape[-2] != key.shape[-2]:  # top-left: row 0 at key position 0
        masks["query_positions"] = torch.zeros(query.shape[0], dtype=torch.int32)
    return attention(query, key, value, mechanism, causal=is_causal, scale=scale, layout="bhsd",
                     **masks, **config)


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
        return _apply(self.mechanism, q, k, v, self.layout, key_lengths, gate, memory, filter,
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
