"""attnkit: efficient attention mechanisms with fast CPU kernels.

Arrays are [B, S, H, D] (batch, sequence, heads, head dim) with the last dimension contiguous
and any other strides; numpy arrays and DLPack tensors (PyTorch included) are read in place,
never copied. float32 runs the SIMD kernels, float64 the double-precision references;
bfloat16 (PyTorch) and float16 (numpy, PyTorch) run the bfloat16 kernels where a mechanism has
them, else float32 copies, and come back in their own dtype. Every rule the C++ library
checks raises ``attnkit.Error`` (a ``ValueError``) with the library's message.

    import numpy as np, attnkit
    q = k = v = np.random.randn(1, 1024, 8, 64).astype(np.float32)
    out = attnkit.attention(q, k, v, "linear", causal=True, map="elu1")
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from ._core import Error, available_cpus, cpu_report, max_threads, num_threads, set_num_threads
from ._core import bf16_path, bf16_paths, set_bf16_path
from ._core import Mask as _CoreMask
from ._core import Mechanism as _CoreMechanism
from ._core import config_keys as _config_keys
from ._core import mechanism_names as _mechanism_names
from ._core import topk_feed_forward as _topk_feed_forward
from ._core import version as _version

__all__ = ["Error", "Gradients", "Mechanism", "Stream", "attention", "available_cpus",
           "bf16_path", "bf16_paths", "config_keys", "cpu_report", "max_threads", "mechanisms",
           "num_threads", "set_bf16_path", "set_num_threads", "topk_feed_forward"]
__version__ = _version()


def mechanisms() -> list[str]:
    """Names of every registered mechanism."""
    return list(_mechanism_names())


def config_keys(mechanism: str) -> list[dict]:
    """The config keys ``Mechanism(mechanism, **config)`` accepts: dicts with key, type,
    default, allowed and help, as the C++ factory reads them (the same list `attnkit list`
    prints)."""
    return list(_config_keys(mechanism))


def _config_table() -> str:
    lines = []
    for name in mechanisms():
        keys = config_keys(name)
        lines.append(f"    {name}:" + ("" if keys else " (no config keys)"))
        for k in keys:
            lines.append(f"        {k['key']}={k['default']}  ({k['type']} {k['allowed']}): "
                         f"{k['help']}")
    return "\n".join(lines)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


_DTYPES = "float32, float64, bfloat16 or float16"


def _array(x: Any, name: str, required: bool = False, writable: bool = False) -> Any:
    """x as something the extension reads in place: numpy arrays and DLPack tensors pass as
    they are; lists and scalars become numpy arrays (a copy, as numpy makes one). What the
    extension could not take (object dtypes, odd strides, read-only outputs) is an Error
    naming the argument here, not a TypeError from the binding."""
    if x is None:
        if required:
            raise Error(f"{name}: is required (got None)")
        return None
    if not (isinstance(x, np.ndarray) or hasattr(x, "__dlpack__")):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as e:
            raise Error(f"{name}: must be an array ({e})") from None
    if _is_torch(x):
        if x.requires_grad:
            raise Error(f"{name}: requires grad; use attnkit.torch for autograd, "
                        f"or pass {name}.detach()")
        if x.device.type != "cpu":
            raise Error(f"{name}: must be on the CPU (got {x.device})")
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub" or x.dtype.kind == "f" and x.dtype.itemsize not in (2, 4, 8):
            raise Error(f"{name}: dtype must be {_DTYPES} (got {x.dtype})")
        if not x.dtype.isnative:
            raise Error(f"{name}: byte order must be native (got {x.dtype.str})")
        if any(st % x.itemsize for st in x.strides):
            raise Error(f"{name}: strides {x.strides} must be multiples of the item size "
                        f"({x.itemsize} bytes)")
        if writable and not x.flags.writeable:
            raise Error(f"{name}: is written, so it must be a writable array")
    return x


def _out_dtype(q: Any) -> Any:
    """The output dtype rule of the library: q's dtype for float64, bfloat16 and float16 (the
    narrow ones computed in float32 and rounded once); float32 otherwise."""
    if _is_torch(q):
        import torch
        keep = (torch.float64, torch.bfloat16, torch.float16)
        return q.dtype if q.dtype in keep else torch.float32
    dtype = getattr(q, "dtype", None)
    return dtype if dtype in (np.float64, np.float16) else np.float32


def _compute_dtype(q: Any) -> Any:
    """The dtype of the float arguments besides q, k, v and out (memory, gate, filter and
    their gradients, lse): float64 for float64 q, else float32."""
    if _is_torch(q):
        import torch
        return torch.float64 if q.dtype == torch.float64 else torch.float32
    return np.float64 if getattr(q, "dtype", None) == np.float64 else np.float32


def _float32(like: Any) -> Any:
    if _is_torch(like):
        import torch
        return torch.float32
    return np.float32


def _empty(like: Any, shape: tuple, dtype: Any) -> Any:
    if _is_torch(like):
        import torch
        return torch.empty(shape, dtype=dtype, device=like.device)
    return np.empty(shape, dtype=dtype)


def _shape(x: Any) -> tuple:
    return tuple(int(s) for s in x.shape)


def _result_shape(q: Any, v: Any) -> tuple:
    """[B, Sq, Hq, Dv]; a placeholder when ranks are wrong, so that the library reports the
    rank rule for q, k or v (it checks those before out)."""
    qs, vs = _shape(q), _shape(v)
    return qs[:3] + vs[3:] if len(qs) == 4 and len(vs) == 4 else (1, 1, 1, 1)


def _int32s(x: Any, name: str) -> Optional[np.ndarray]:
    """x as a contiguous int32 array for the extension (key_lengths, key_begin, cu_seqlens,
    ...; it checks the rank); a copy only when x is another integer type or a list."""
    if x is None:
        return None
    if _is_torch(x):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise Error(f"{name}: must be integers (got {a.dtype})")
    if a.dtype != np.int32 and a.size and (a.min() < np.iinfo(np.int32).min or
                                           a.max() > np.iinfo(np.int32).max):
        raise Error(f"{name}: values must fit in int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def _attn_mask(m: Any) -> Any:
    """attn_mask as SDPA takes it (bool: True attends; float: added to the logits), any
    rank up to 4 broadcast to [B, Hq, Sq, Sk] by leading ones; bool passes as a uint8 view."""
    m = _array(m, "attn_mask")
    if m is None:
        return None
    nd = len(m.shape)
    if nd > 4:
        raise Error(f"attn_mask: rank must be at most 4 [B, Hq, Sq, Sk] (got {nd})")
    if nd < 4:
        m = m.reshape((1,) * (4 - nd) + _shape(m))
    if _is_torch(m):
        import torch
        return m.view(torch.uint8) if m.dtype == torch.bool else m
    return m.view(np.uint8) if m.dtype == np.bool_ else m


def _window(window_size: Any) -> tuple:
    """window_size as the pair of ints (left, right), -1 = unbounded."""
    try:
        left, right = (int(w) for w in window_size)
    except (TypeError, ValueError):
        raise Error(f"window_size: must be a pair (left, right), -1 = unbounded "
                    f"(got {window_size!r})") from None
    return left, right


def _mask(key_begin: Any = None, query_positions: Any = None, cu_seqlens_q: Any = None,
          cu_seqlens_k: Any = None, max_seqlen_q: Optional[int] = None,
          max_seqlen_k: Optional[int] = None, window_size: Any = (-1, -1),
          alibi_slopes: Any = None, softcap: float = 0.0, attn_mask: Any = None) -> Any:
    """The masks of one call for the extension (None when there are none)."""
    cu_q, cu_k = _int32s(cu_seqlens_q, "cu_seqlens_q"), _int32s(cu_seqlens_k, "cu_seqlens_k")
    for cu, limit, name in ((cu_q, max_seqlen_q, "max_seqlen_q"),
                            (cu_k, max_seqlen_k, "max_seqlen_k")):
        if limit is None:
            continue
        if cu is None:
            raise Error(f"{name}: is only for packed batches (cu_seqlens_q / cu_seqlens_k)")
        longest = int(np.diff(cu).max()) if cu.size > 1 else 0
        if int(limit) < longest:
            raise Error(f"{name}: ({int(limit)}) is less than the longest sequence ({longest})")
    left, right = _window(window_size)
    args = dict(key_begin=_int32s(key_begin, "key_begin"),
                query_positions=_int32s(query_positions, "query_positions"),
                cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, alibi_slopes=_array(alibi_slopes,
                                                                           "alibi_slopes"),
                attn_mask=_attn_mask(attn_mask))
    if all(v is None for v in args.values()) and (left, right) == (-1, -1) and not softcap:
        return None
    return _CoreMask(window_left=left, window_right=right, softcap=float(softcap), **args)


_MASK_KEYS = ("key_begin", "query_positions", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
              "max_seqlen_k", "window_size", "alibi_slopes", "softcap", "attn_mask")
_MASK_DOC = """
        Masks (names as FlashAttention's flash_attn_func / flash_attn_varlen_func and SDPA;
        ``capabilities["masks"]`` lists what this mechanism takes, others raise Error):
        key_lengths / key_begin: B ints, keys outside [key_begin, key_lengths) are padding
        (right / left padding); query_positions: B ints, the key position of query row 0
        (default Sk - Sq, bottom-right causal alignment); cu_seqlens_q / cu_seqlens_k: n + 1
        int32 prefix sums of a packed batch (q [1, total_q, Hq, Dk]; memory [n, L, Hq, Dk]),
        max_seqlen_q / max_seqlen_k checked against them; window_size=(left, right): keys at
        most left before / right after the query (-1 = unbounded); alibi_slopes [Hq] or
        [B, Hq]: logit -= slope |query position - key|; softcap > 0: logit = softcap
        tanh(logit / softcap); attn_mask [B|1, Hq|1, Sq, Sk] (fewer leading dims broadcast):
        bool (True attends) or float added to the logits. A row with no visible key gives 0.
"""


def _config_string(config: dict) -> str:
    """key=value,... for the C++ parser; a value that would split into other keys is refused
    (k="5,query_chunk=1" must not set query_chunk)."""
    def fmt(k: str, v: Any) -> str:
        if isinstance(v, (np.ndarray, list, tuple, dict)) or hasattr(v, "__dlpack__"):
            hint = (" (the memory filter weights are the filter argument; the filter kind is "
                    "filter_type)") if k == "filter_type" else ""
            raise Error(f"config {k}: must be a number, bool or name, got {type(v).__name__}"
                        + hint)
        text = ("1" if v else "0") if isinstance(v, (bool, np.bool_)) else str(v)
        if not text or any(c in text for c in ", =\t\n"):
            raise Error(f"config {k}: value {text!r} must be non-empty without ',', '=' or "
                        "spaces")
        return text
    for k in config:
        if not k or any(c in k for c in ", =\t\n:"):
            raise Error(f"config: key {k!r} must be a plain name")
    return ",".join(f"{k}={fmt(k, v)}" for k, v in config.items())


def _check_filter(filter: Any) -> None:
    if isinstance(filter, str):
        raise Error(f"filter: is the memory's conv filter weights [Hk, width] (got the string "
                    f"{filter!r}); the filter kind is the config key filter_type, e.g. "
                    f"filter_type={filter!r}")


def _mask_kwargs(masks: dict) -> dict:
    unknown = sorted(set(masks) - set(_MASK_KEYS))
    if unknown:
        raise Error(f"{unknown[0]}: unknown keyword (masks: {', '.join(_MASK_KEYS)}; config "
                    f"keys go to Mechanism(...))")
    return masks


class Gradients(NamedTuple):
    dq: Any
    dk: Any
    dv: Any
    dgate: Any = None    # linear gated=1
    dmemory: Any = None  # luna, memory
    dfilter: Any = None  # memory, filter_type=conv with weights


def _restore(name: str, causal: bool, scale: Optional[float], config: dict) -> "Mechanism":
    return Mechanism(name, causal=causal, scale=scale, **config)


class Mechanism:
    """One attention mechanism with its options and config.

    ``Mechanism("topk", causal=True, k=32)``; unknown keys are errors. ``scale=None`` is
    1/sqrt(head dim). Picklable (copy.deepcopy, torch.save of a module holding one).
    Config keys per mechanism (``attnkit.config_keys(name)``), key=default:
    """

    def __init__(self, name: str, *, causal: bool = False, scale: Optional[float] = None,
                 **config: Any) -> None:
        if scale is not None and not scale > 0:
            raise Error(f"scale: must be > 0 (got {scale})")
        self._args = (str(name), bool(causal), None if scale is None else float(scale),
                      dict(config))
        self._m = _CoreMechanism(name, 0.0 if scale is None else float(scale), bool(causal),
                                 _config_string(config))

    def __reduce__(self) -> tuple:
        return (_restore, self._args)

    name = property(lambda self: self._m.name)
    causal = property(lambda self: self._m.causal)

    @property
    def capabilities(self) -> dict:
        """causal, streaming, backward, needs_memory, uses_gate, uses_filter, emits_lse (every
        mechanism has a non-causal forward), bfloat16 (its own bfloat16 kernels; every
        mechanism takes bfloat16 and float16, on float32 copies where it has none), aligned
        (queries and keys are one sequence, Sq == Sk: memory's chunks and lara's landmarks
        pool queries),
        and masks: the mask keywords it takes (key_lengths and causal: every mechanism)."""
        return self._m.capabilities()

    def describe(self) -> str:
        return self._m.describe()

    def __repr__(self) -> str:
        return f"attnkit.Mechanism({self.describe()!r})"

    def forward(self, q: Any, k: Any, v: Any, *, key_lengths: Any = None, memory: Any = None,
                gate: Any = None, filter: Any = None, out: Any = None, return_lse: bool = False,
                return_memory: bool = False, **masks: Any) -> Any:
        """out [B, Sq, Hq, Dv] for q [B, Sq, Hq, Dk], k [B, Sk, Hk, Dk], v [B, Sk, Hk, Dv].

        key_lengths: B ints (keys at or past a length are padding); memory [B, L, Hq, Dk]
        (luna, memory); gate [B, Sk, Hk] (linear gated=1); filter [Hk, kappa] (memory).
        out: written in place when given. return_lse adds lse [B, Hq, Sq] (softmax);
        return_memory adds the packed / final memory [B, L, Hq, Dv] (luna, memory).
        """
        mask = _mask(**_mask_kwargs(masks))
        q, k, v = (_array(t, n, required=True) for t, n in ((q, "q"), (k, "k"), (v, "v")))
        _check_filter(filter)
        memory, gate, filter = _array(memory, "memory"), _array(gate, "gate"), _array(
            filter, "filter")
        lengths = _int32s(key_lengths, "key_lengths")
        # Every input rule first: outputs sized from a bad input are never allocated.
        self._m.check_inputs(q, k, v, key_lengths=lengths, memory=memory, gate=gate,
                             filter=filter, mask=mask)
        if out is None:
            out = _empty(q, _result_shape(q, v), _out_dtype(q))
        else:
            out = _array(out, "out", writable=True)
        lse = mem_out = None
        if return_lse:
            qs = _shape(q)
            lse = _empty(q, (qs[0], qs[2], qs[1]) if len(qs) == 4 else (1, 1, 1),
                         _float32(q))
        if return_memory:
            if memory is None:
                raise Error("memory: return_memory needs memory [B, L, Hq, Dk]")
            ms, vs = _shape(memory), _shape(v)
            mem_shape = ms[:3] + vs[3:] if len(ms) == 4 and len(vs) == 4 else (1, 1, 1, 1)
            mem_out = _empty(q, mem_shape, _compute_dtype(q))
        self._m.forward(q, k, v, out, lse=lse, key_lengths=lengths,
                        memory=memory, memory_out=mem_out, gate=gate, filter=filter, mask=mask)
        if not (return_lse or return_memory):
            return out
        return (out,) + ((lse,) if return_lse else ()) + ((mem_out,) if return_memory else ())

    __call__ = forward

    def stream(self, batch: int, heads: int, head_dim: int, *, kv_heads: Optional[int] = None,
               value_dim: Optional[int] = None, max_tokens: int = 0,
               memory: Any = None, window: int = -1, softcap: float = 0.0,
               alibi_slopes: Any = None, filter: Any = None) -> Stream:
        """A streaming state for this mechanism (causal by nature: a query sees every token
        appended before it; a decode step equals the last row of the causal forward).
        softmax and topk keep a KV cache (top-k over it per query); memory its memory and one
        chunk's buffer; the others a fixed-size state. memory [B, L, Hq, Dk] float32 for luna
        and memory (copied); filter [Hk, width] float32: memory's conv weights (copied).
        window >= 0 (softmax, topk): a query sees the last window + 1 tokens, kept in a fixed
        ring buffer (equal to forward(..., causal, window_size=(window, 0))). softcap,
        alibi_slopes ([Hq] or [B, Hq] float32, copied; not with a window): the logit masks,
        with a query's rows at the last positions. linear gated=1: append takes the gate."""
        value_dim = head_dim if value_dim is None else value_dim
        core = self._m.new_stream(int(batch), int(heads), int(kv_heads or heads), int(head_dim),
                                  int(value_dim), int(max_tokens),
                                  memory=_array(memory, "memory"), window=int(window),
                                  softcap=float(softcap),
                                  alibi_slopes=_array(alibi_slopes, "alibi_slopes"),
                                  filter=_array(filter, "filter"))
        return Stream(core, value_dim)

    def backward(self, q: Any, k: Any, v: Any, out: Any, dout: Any, *, key_lengths: Any = None,
                 memory: Any = None, gate: Any = None, filter: Any = None,
                 lse: Any = None, **masks: Any) -> Gradients:
        """Gradients of sum(out * dout) with respect to q, k, v (and gate, memory, filter when
        given);
        out is this mechanism's forward output for the same inputs. softmax: passing the
        forward's lse (``forward(..., return_lse=True)``) saves the backward a forward pass.
        The masks are the forward's (same keywords)."""
        mask = _mask(**_mask_kwargs(masks))
        args = [_array(t, n, required=True)
                for t, n in ((q, "q"), (k, "k"), (v, "v"), (out, "out"), (dout, "dout"))]
        _check_filter(filter)
        memory, gate, filter = _array(memory, "memory"), _array(gate, "gate"), _array(
            filter, "filter")
        dq, dk, dv = (_empty(t, _shape(t), t.dtype) for t in args[:3])
        dgate = None if gate is None else _empty(gate, _shape(gate), gate.dtype)
        dmemory = None if memory is None else _empty(memory, _shape(memory), memory.dtype)
        dfilter = None if filter is None else _empty(filter, _shape(filter), filter.dtype)
        self._m.backward(*args, dq, dk, dv, key_lengths=_int32s(key_lengths, "key_lengths"),
                         memory=memory, gate=gate, filter=filter, dgate=dgate, dmemory=dmemory,
                         dfilter=dfilter, lse=_array(lse, "lse"), mask=mask)
        return Gradients(dq, dk, dv, dgate, dmemory, dfilter)


class Stream:
    """Incremental attention (decoding): ``append`` keys/values [B, T, Hk, D] (float32; gated
    linear also the gate logits [B, T, Hk]), ``query`` [B, Tq, Hq, Dk] against every
    appended token. Fixed-size states (linear, heinsen, rfa, performer, luna, memory) keep
    ``state_bytes`` constant; softmax and topk keep a KV cache. Made by ``Mechanism.stream``."""

    def __init__(self, core: Any, value_dim: int) -> None:
        self._s, self._value_dim = core, value_dim

    def append(self, k: Any, v: Any, gate: Any = None) -> None:
        self._s.append(_array(k, "k", required=True), _array(v, "v", required=True),
                       gate=_array(gate, "gate"))

    def query(self, q: Any, out: Any = None) -> Any:
        q = _array(q, "q", required=True)
        if out is not None:
            out = _array(out, "out", writable=True)
        else:
            qs = _shape(q)
            out = _empty(q, qs[:3] + (self._value_dim,) if len(qs) == 4 else (1, 1, 1, 1),
                         _float32(q))
        self._s.query(q, out)
        return out

    state_bytes = property(lambda self: self._s.state_bytes)
    length = property(lambda self: self._s.length)


def attention(q: Any, k: Any, v: Any, /, mechanism: str = "softmax", *, causal: bool = False,
              scale: Optional[float] = None, key_lengths: Any = None, memory: Any = None,
              gate: Any = None, filter: Any = None, **config_and_masks: Any) -> Any:
    """One call: ``Mechanism(mechanism, causal=..., scale=..., **config).forward(...,
    **masks)``; mask keywords (window_size, alibi_slopes, softcap, attn_mask, key_begin,
    query_positions, cu_seqlens_q/k, max_seqlen_q/k) as in Mechanism.forward."""
    masks = {k: config_and_masks.pop(k) for k in _MASK_KEYS if k in config_and_masks}
    m = Mechanism(mechanism, causal=causal, scale=scale, **config_and_masks)
    return m.forward(q, k, v, key_lengths=key_lengths, memory=memory, gate=gate, filter=filter,
                     **masks)


def topk_feed_forward(x: Any, keys: Any, values: Any, k: int) -> Any:
    """Top-k feed-forward: x [T, Dm], keys [F, Dm] (rows of W_in), values [F, Dout] -> [T, Dout].
    k >= F is the dense ReLU feed-forward relu(x keys^T) values."""
    x, keys, values = (_array(t, n, required=True)
                       for t, n in ((x, "x"), (keys, "keys"), (values, "values")))
    vs = _shape(values)
    out = _empty(x, (_shape(x)[0], vs[1] if len(vs) == 2 else 1), _compute_dtype(x))
    _topk_feed_forward(x, keys, values, out, int(k))
    return out


Mechanism.__doc__ += _config_table() + "\n"
Mechanism.forward.__doc__ += _MASK_DOC
