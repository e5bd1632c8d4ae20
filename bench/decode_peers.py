#!/usr/bin/env python3
"""One decode step (append one token's k, v; attend one query) of exact softmax attention
after a context of N tokens: attnkit's C++ stream (`attnkit bench --decode`), its Python
stream (attnkit.Mechanism.stream: append + query) and PyTorch SDPA on a preallocated
KV cache (the cache written in place, SDPA over its first N + 1 rows), same run.

    python bench/decode_peers.py [--attnkit build/attnkit] [--seq 1000,10000,100000]
"""
import argparse
import json
import subprocess

import numpy as np

import attnkit
from timing import median_ms


def cli_us(binary, seqs, threads, reps):
    cmd = [binary, "bench", "-m", "softmax", "--decode", "-n", ",".join(map(str, seqs)),
           "-f", "json", "--threads", str(threads), "--reps", str(reps)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {int(r["context"]): float(r["median_us"]) for r in out["rows"]}


def python_stream_us(n, reps, heads=8, dim=64):
    rng = np.random.default_rng(0)
    m = attnkit.Mechanism("softmax", causal=True)
    s = m.stream(batch=1, heads=heads, head_dim=dim)
    s.append(*(rng.standard_normal((1, n, heads, dim), dtype=np.float32) for _ in range(2)))
    k, v, q = (rng.standard_normal((1, 1, heads, dim), dtype=np.float32) for _ in range(3))

    def step():
        s.append(k, v)
        s.query(q)
    return 1e3 * median_ms(step, reps)


def sdpa_us(torch, n, reps, heads=8, dim=64):
    cache_k, cache_v = (torch.randn(1, heads, n + reps + 8, dim) for _ in range(2))
    q, k, v = (torch.randn(1, heads, 1, dim) for _ in range(3))
    pos = [n]

    def step():
        cache_k[:, :, pos[0]] = k[:, :, 0]
        cache_v[:, :, pos[0]] = v[:, :, 0]
        pos[0] += 1
        torch.nn.functional.scaled_dot_product_attention(
            q, cache_k[:, :, :pos[0]], cache_v[:, :, :pos[0]])
    with torch.no_grad():
        return 1e3 * median_ms(step, reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnkit", default="build/attnkit")
    ap.add_argument("--seq", default="1000,10000,100000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    attnkit.set_num_threads(args.threads)
    seqs = [int(x) for x in args.seq.split(",")]
    cli = cli_us(args.attnkit, seqs, args.threads, args.reps)
    print(f"# PyTorch {torch.__version__}, {args.threads} threads, B=1 H=8 D=64, float32, "
          f"median of {args.reps} steps (us)")
    print("| context | attnkit CLI | attnkit Python stream | Python / CLI | SDPA + KV cache "
          "| speed-up (Python) |")
    print("|---|---|---|---|---|---|")
    for n in seqs:
        py, sd = python_stream_us(n, args.reps), sdpa_us(torch, n, args.reps)
        print(f"| {n} | {cli[n]:.0f} | {py:.0f} | {py / cli[n]:.2f} | {sd:.0f} | {sd / py:.2f}x |")


if __name__ == "__main__":
    main()
