#!/usr/bin/env python3
"""Markdown tables of attnkit.eval JSON reports (docs/fidelity/*.json), as docs/FIDELITY.md
shows them. Usage: python bench/fidelity_tables.py docs/fidelity/lm-topk-512.json ..."""
import json
import sys


def fmt(x, digits=4):
    return "" if x is None else f"{x:.{digits}g}"


CAUSAL = [("perplexity", lambda r, e: fmt(r["perplexity"])),
          ("vs exact", lambda r, e: f"{100 * (r['perplexity'] / e['perplexity'] - 1):+.2f}%"),
          ("KL", lambda r, e: fmt(r["kl"], 3)),
          ("top-1 agreement", lambda r, e: fmt(r["top1_agreement"], 3))]
ENCODER = [("cosine mean", lambda r, e: fmt(r["cosine_mean"])),
           ("cosine min", lambda r, e: fmt(r["cosine_min"])),
           ("Spearman", lambda r, e: fmt(r["spearman"]))]
COMMON = [("layer error", lambda r, e: fmt(r.get("layer_error_mean"), 3)),
          ("attention ms", lambda r, e: fmt(r.get("attention_ms"), 3)),
          ("model s", lambda r, e: fmt(r["seconds_per_window"], 3))]


def table(report):
    rows, meta = report["rows"], report["meta"]
    cols = (CAUSAL if meta["kind"] == "causal" else ENCODER) + COMMON
    cols = [c for c in cols if any(c[1](r, rows[0]) for r in rows)]
    lines = ["| config | " + " | ".join(c[0] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['config']} | " + " | ".join(c[1](r, rows[0]) for c in cols) + " |")
    return "\n".join(lines)


for path in sys.argv[1:]:
    with open(path) as f:
        report = json.load(f)
    meta = report["meta"]
    what = (f"{meta['windows']} windows of {meta['tokens']} tokens" if meta["kind"] == "causal"
            else f"{meta['sentences']} sentences")
    print(f"{path}: {meta['model']}, {what}; {meta.get('cpu', '')}, {meta['threads']} threads\n")
    print(table(report) + "\n")
