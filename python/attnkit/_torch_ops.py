"""attnkit's mechanisms as PyTorch operators: ``torch.ops.attnkit.<name>`` and
``torch.ops.attnkit.<name>_backward`` for every mechanism.

With torch >= 2.4 they are ``torch.library.custom_op``s with fake (shape and dtype) kernels and
registered autograd, so torch.compile(fullgraph=True) traces through them and torch.export
keeps them as nodes. With older torch (Debian's 1.13) ``attnkit.torch`` runs the same two
functions, ``forward`` and ``backward`` below, inside an autograd.Function instead.

Every operator takes q [B, Sq, Hq, Dk], k [B, Sk, Hk, Dk], v [B, Sk, Hk, Dv] (any strides),
gate [B, Sk, Hk]?, memory [B, L, Hq, Dk]?, filter [Hk, width]?, the masks as flat arguments
(``MASK_SCHEMA``: Tensor? for the arrays, -1 / 0 for "none" in the numbers) and the mechanism
(causal, scale with 0 = the default, config "key=value,...", save_lse: a backward may
follow) and returns (out [B, Sq, Hq, Dv] in q's dtype, lse [B, Hq, Sq] float32 or [0] when
the call keeps none).

dtypes: float32 runs the kernels, float64 the references; bfloat16 and float16 q, k, v pass to
the library as they are, which runs the bfloat16 kernels where the mechanism has them
(``capabilities["bfloat16"]``, and ``["bfloat16_backward"]`` for the gradients: softmax's, on
AMX tiles where the CPU has them), otherwise float32 copies (exact), with float32 accumulation
and states, and writes out and the gradients in the input dtype, rounded once. gate, memory and
filter are float32 there (float64 for float64 q): they are converted, and their gradients
converted back.
"""
import functools
from typing import Any, NamedTuple, Optional

import torch

import attnkit as _ak

# torch.library.custom_op and register_fake arrived in torch 2.4.
AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")

MASK_SCHEMA = ("Tensor? key_lengths, Tensor? key_begin, Tensor? query_positions, "
               "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
               "int window_left, int window_right, Tensor? alibi_slopes, float softcap, "
               "Tensor? attn_mask, bool causal, float scale, str config, bool save_lse")
MASK_NAMES = tuple(a.split()[-1] for a in MASK_SCHEMA.split(", "))
ARRAY_NAMES = tuple(a.split()[-1] for a in MASK_SCHEMA.split(", ") if a.startswith("Tensor?"))
_FORWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, Tensor? gate, Tensor? memory, "
                   f"Tensor? filter, {MASK_SCHEMA}) -> (Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
                    f"Tensor? gate, Tensor? memory, Tensor? filter, {MASK_SCHEMA}) -> "
                    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")


def defaults() -> dict:
    """The flat mask and mechanism arguments of a call with no masks."""
    return dict(key_lengths=None, key_begin=None, query_positions=None, cu_seqlens_q=None,
                cu_seqlens_k=None, max_seqlen_q=-1, max_seqlen_k=-1, window_left=-1,
                window_right=-1, alibi_slopes=None, softcap=0.0, attn_mask=None, causal=False,
                scale=0.0, config="", save_lse=False)


class Spec(NamedTuple):
    """A mechanism as the operators take it: plain values, so torch.compile treats them as
    constants (no extension object is made while tracing)."""
    name: str
    causal: bool
    scale: float  # 0: the mechanism's default
    config: str   # key=value,...


def spec(name: str, causal: bool, scale: Optional[float], config: dict) -> Spec:
    if scale is not None and not scale > 0:
        raise _ak.Error(f"scale: must be > 0 (got {scale})")
    return Spec(str(name), bool(causal), float(scale or 0.0), _ak._config_string(config))


def _constant(fn: Any) -> Any:
    """fn evaluated once at trace time by torch.compile (its result is a constant)."""
    assume = getattr(getattr(torch, "compiler", None), "assume_constant_result", None)
    return assume(fn) if assume is not None else fn


@_constant
def has_backward(name: str, causal: bool, scale: float, config: str) -> bool:
    return mechanism(name, causal, scale, config).capabilities["backward"]


@functools.lru_cache(maxsize=256)
def mechanism(name: str, causal: bool, scale: float, config: str) -> _ak.Mechanism:
    """The Mechanism of an operator call (cached: a decode loop calls with the same spec)."""
    pairs = dict(kv.split("=", 1) for kv in config.split(",")) if config else {}
    return _ak.Mechanism(name, causal=causal, scale=scale or None, **pairs)


def _rows(t: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None) -> Any:
    """t detached, with a contiguous last dimension (the kernels read rows), in dtype."""
    if t is None:
        return None
    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t if t.dim() == 0 or t.stride(-1) == 1 or t.size(-1) <= 1 else t.contiguous()


def _keywords(a: dict, q_dtype: torch.dtype) -> tuple:
    """(key_lengths, the mask keywords of Mechanism.forward) from the flat arguments a, for
    kernels reading q_dtype (float masks in float64 for float64, else float32)."""
    float_dtype = torch.float64 if q_dtype == torch.float64 else torch.float32
    kw = {n: a[n] for n in ("key_begin", "query_positions", "cu_seqlens_q", "cu_seqlens_k")
          if a[n] is not None}
    for n in ("max_seqlen_q", "max_seqlen_k"):
        if a[n] >= 0:
            kw[n] = a[n]
    if (a["window_left"], a["window_right"]) != (-1, -1):
        kw["window_size"] = (a["window_left"], a["window_right"])
    if a["softcap"]:
        kw["softcap"] = a["softcap"]
    if a["alibi_slopes"] is not None:
        kw["alibi_slopes"] = _rows(a["alibi_slopes"], float_dtype)
    mask = a["attn_mask"]
    if mask is not None:
        kw["attn_mask"] = _rows(mask, float_dtype if mask.is_floating_point() else None)
    return a["key_lengths"], kw


def _aux_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of gate, memory and filter for q of dtype (the library's compute dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _has_lse(m: _ak.Mechanism, dtype: torch.dtype, save: bool) -> bool:
    """Whether the forward of inputs of dtype saves lse for the backward: softmax, when the
    backward reads what the forward computed (bfloat16 only with a bfloat16 backward) and a
    backward may follow (save_lse: an inference call keeps the decode kernel, which has no
    lse; a backward without lse recomputes it)."""
    caps = m.capabilities
    same = dtype != torch.bfloat16 or caps["bfloat16"] == caps["bfloat16_backward"]
    return save and caps["emits_lse"] and same and dtype != torch.float64


def forward(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            gate: Optional[torch.Tensor], memory: Optional[torch.Tensor],
            filter: Optional[torch.Tensor], *flat: Any) -> tuple:
    """(out, lse) of mechanism name; flat: the MASK_NAMES arguments in order."""
    a = dict(zip(MASK_NAMES, flat))
    m = mechanism(name, a["causal"], a["scale"], a["config"])
    dtype, aux = q.dtype, _aux_dtype(q.dtype)
    q, k, v = (_rows(t) for t in (q, k, v))
    gate, memory, filter = (_rows(t, aux) for t in (gate, memory, filter))
    lengths, kw = _keywords(a, q.dtype)
    if _has_lse(m, dtype, a["save_lse"]):
        out, lse = m.forward(q, k, v, key_lengths=lengths, memory=memory, gate=gate,
                             filter=filter, return_lse=True, **kw)
    else:
        out = m.forward(q, k, v, key_lengths=lengths, memory=memory, gate=gate, filter=filter,
                        **kw)
        lse = q.new_empty((0,), dtype=torch.float32)
    return out, lse


def backward(name: str, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor],
             gate: Optional[torch.Tensor], memory: Optional[torch.Tensor],
             filter: Optional[torch.Tensor], *flat: Any) -> tuple:
    """(dq, dk, dv, dgate, dmemory, dfilter), each in its input's dtype ([0] when absent)."""
    a = dict(zip(MASK_NAMES, flat))
    m = mechanism(name, a["causal"], a["scale"], a["config"])
    like = (q, k, v, gate, memory, filter)
    aux = _aux_dtype(q.dtype)
    dout, q, k, v, out = (_rows(t, q.dtype) for t in (dout, q, k, v, out))
    gate, memory, filter = (_rows(t, aux) for t in (gate, memory, filter))
    lengths, kw = _keywords(a, q.dtype)
    g = m.backward(q, k, v, out, dout, key_lengths=lengths, memory=memory, gate=gate,
                   filter=filter, lse=_rows(lse) if lse is not None and lse.numel() else None,
                   **kw)
    return tuple(q.new_empty((0,)) if d is None else d.to(t.dtype) for d, t in zip(g, like))


def _fake_forward(name: str, q: torch.Tensor, v: torch.Tensor, a: dict) -> tuple:
    m = mechanism(name, a["causal"], a["scale"], a["config"])
    b, sq, hq = q.shape[:3] if q.dim() == 4 else (1, 1, 1)
    out = q.new_empty((b, sq, hq, v.shape[-1] if v.dim() == 4 else 1))
    lse_shape = (b, hq, sq) if _has_lse(m, q.dtype, a["save_lse"]) else (0,)
    return out, q.new_empty(lse_shape, dtype=torch.float32)


def _register(name: str) -> None:
    """torch.ops.attnkit.<name> and <name>_backward with fake kernels and autograd."""
    fwd = torch.library.custom_op(f"attnkit::{name}", functools.partial(forward, name),
                                  mutates_args=(), schema=_FORWARD_SCHEMA)
    bwd = torch.library.custom_op(f"attnkit::{name}_backward",
                                  functools.partial(backward, name), mutates_args=(),
                                  schema=_BACKWARD_SCHEMA)

    @fwd.register_fake
    def _(q, k, v, gate, memory, filter, *flat):
        return _fake_forward(name, q, v, dict(zip(MASK_NAMES, flat)))

    @bwd.register_fake
    def _(dout, q, k, v, out, lse, gate, memory, filter, *flat):
        return tuple(q.new_empty((0,)) if t is None else torch.empty_like(t)
                     for t in (q, k, v, gate, memory, filter))

    def setup_context(ctx, inputs, output):
        q, k, v, gate, memory, filter, *flat = inputs
        a = dict(zip(MASK_NAMES, flat))
        tensors = [n for n in ARRAY_NAMES if a[n] is not None]
        ctx.flat, ctx.tensor_names = a, tensors
        ctx.present = tuple(t is not None for t in (gate, memory, filter))
        ctx.save_for_backward(q, k, v, output[0], output[1], gate, memory, filter,
                              *(a[n] for n in tensors))

    def backward_formula(ctx, dout, dlse):
        q, k, v, out, lse, gate, memory, filter, *masks = ctx.saved_tensors
        a = dict(ctx.flat, **dict(zip(ctx.tensor_names, masks)))
        grads = bwd(dout, q, k, v, out, lse, gate, memory, filter,
                    *(a[n] for n in MASK_NAMES))
        dq, dk, dv, *extra = grads
        extra = [d if p else None for d, p in zip(extra, ctx.present)]
        return (dq, dk, dv, *extra) + (None,) * len(MASK_NAMES)

    fwd.register_autograd(backward_formula, setup_context=setup_context)


if AVAILABLE:
    for _name in _ak.mechanisms():
        _register(_name)


def call(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         gate: Optional[torch.Tensor], memory: Optional[torch.Tensor],
         filter: Optional[torch.Tensor], flat: dict) -> tuple:
    """torch.ops.attnkit.<name>(...) with the flat arguments given by name."""
    op = getattr(torch.ops.attnkit, name)
    return op(q, k, v, gate, memory, filter, *(flat[n] for n in MASK_NAMES))
