#!/usr/bin/env python3
"""Exact softmax attention: attnkit against PyTorch on the same shapes, in one run.

Runs `attnkit bench -f json` and PyTorch's attention (the naive matmul-softmax-matmul
form, and scaled_dot_product_attention where the installed version has it) with the same
thread count, then prints times and attnkit's speed-up. PyTorch is optional: Debian's
python3-torch (run with /usr/bin/python3) or a PyPI torch. The linear families' peers
(fast-transformers, the PyTorch chunked form): bench/linear_peers.py. Usage:

    /usr/bin/python3 bench/peers.py [--attnkit build/attnkit] [--seq 1024,4096] [--threads 2]
        [--dim 64,128] [--dtype float32,bfloat16]
"""
import argparse
import json
import math
import subprocess
import sys

from timing import median_ms


def attnkit_rows(binary, seqs, threads, reps, *options):
    """(median ms per sequence length, run meta) from `attnkit bench -f json` with options."""
    cmd = [binary, "bench", *options, "-n", ",".join(map(str, seqs)), "-f", "json",
           "--threads", str(threads), "--reps", str(reps)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {int(r["seq"]): float(r["median_ms"]) for r in out["rows"]}, out


def attnkit_ms(binary, seqs, threads, reps, *options):
    return attnkit_rows(binary, seqs, threads, reps, *options)[0]


def peaks(bench_binary):
    """GFLOP/s peaks measured now by attnkit_bench: fp32 FMA, AMX bf16, AVX512-BF16 dot."""
    cmd = [bench_binary, "--benchmark_filter=Peak", "--benchmark_format=json"]
    try:
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return {}
    names = {"BM_FmaPeak": "fp32", "BM_AmxBf16Peak": "amx", "BM_DotBf16Peak": "avx512bf16"}
    found = {}
    for b in out["benchmarks"]:
        key = names.get(b["name"].split("/")[0])
        if key and "GFLOP" in b and not b.get("error_occurred"):
            found[key] = b["GFLOP"]
    return found


def torch_times(torch, seqs, causal, reps, heads=8, dim=64, dtype=None):
    out = {}
    for n in seqs:
        q, k, v = (torch.randn(1, heads, n, dim).to(dtype or torch.float32) for _ in range(3))
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1) if causal else None

        def naive():
            s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(dim))
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            return torch.softmax(s, dim=-1) @ v

        with torch.no_grad():
            row = {"naive": median_ms(naive, reps)}
            sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
            if sdpa is not None:
                row["sdpa"] = median_ms(lambda: sdpa(q, k, v, is_causal=causal), reps)
        out[n] = row
    return out


def flops(n, causal, heads=8, dim=64):
    pairs = n * (n + 1) / 2 if causal else n * n
    return 4.0 * dim * pairs * heads


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnkit", default="build/attnkit")
    ap.add_argument("--attnkit-bench", default="build/bench/attnkit_bench",
                    help="measures the peaks (fp32 FMA, AMX, AVX512-BF16) in the same run")
    ap.add_argument("--seq", default="1024,2048,4096")
    ap.add_argument("--dim", default="64", help="head dims, e.g. 64,128")
    ap.add_argument("--dtype", default="float32", help="float32 and/or bfloat16, e.g. float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    seqs = [int(x) for x in args.seq.split(",")]
    try:
        import torch
    except ImportError:
        sys.exit("peers.py: PyTorch is not importable (apt-get install python3-torch; run /usr/bin/python3)")
    torch.set_num_threads(args.threads)
    peak = peaks(args.attnkit_bench)
    print(f"# PyTorch {torch.__version__}, {args.threads} threads, B=1 H=8, median of {args.reps}; "
          "peaks measured now (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    print("| dtype | D | N | causal | attnkit path | attnkit ms | GFLOP/s | % of peak | torch naive ms "
          "| speed-up | torch sdpa ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype in args.dtype.split(","):
        bf16 = dtype == "bfloat16"
        for dim in (int(x) for x in args.dim.split(",")):
            for causal in (False, True):
                ours, meta = attnkit_rows(args.attnkit, seqs, args.threads, args.reps, "-m", "softmax",
                                          "-d", str(dim), *(["--bf16"] if bf16 else []),
                                          *(["--causal"] if causal else []))
                path = meta["bf16_path"] if bf16 else "fp32"
                theirs = torch_times(torch, seqs, causal, args.reps, dim=dim,
                                     dtype=torch.bfloat16 if bf16 else torch.float32)
                for n in seqs:
                    t, p = ours[n], theirs[n]
                    sdpa = p.get("sdpa")
                    rate = flops(n, causal, dim=dim) / t / 1e6
                    frac = f"{100 * rate / peak[path]:.0f}%" if path in peak else "-"
                    print(f"| {dtype} | {dim} | {n} | {'yes' if causal else 'no'} | {path} | {t:.2f} | "
                          f"{rate:.0f} | {frac} | {p['naive']:.2f} | {p['naive'] / t:.2f}x | "
                          f"{f'{sdpa:.2f}' if sdpa else '-'} | {f'{sdpa / t:.2f}x' if sdpa else '-'} |")


if __name__ == "__main__":
    main()
