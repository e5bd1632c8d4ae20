#!/usr/bin/env python3
"""Causal linear-attention families: attnkit against the PyTorch chunked form and
fast-transformers, on the same shapes, in one run.

For each family (linear elu+1 with the kernel normaliser, heinsen, performer) and length:
attnkit's time from `attnkit bench -f json` (forward, and forward+backward: the backward
bench times the backward alone, so the forward's median is added); PyTorch's chunked causal
form (the prefix-sum-of-chunk-states formulation of flash-linear-attention's torch
reference: per chunk of T rows, Q_c S_{<c} + tril(Q_c K_c^T) V_c, with the normaliser the
same way), forward under no_grad and forward+backward through autograd; fast-transformers'
CPU causal_dot_product on the same features (if importable). The features are computed in
torch for both peers: elu(x)+1; exp(x - max) for heinsen (sum_r exp(q_r + k_r) is linear
attention on exp features; the maxima cancel in the normaliser); Performer's positive
random features exp(w.x - |x|^2/2 - max) with 64 draws of its own (the same cost as attnkit's
performer, not its draws). Usage:

    python bench/linear_peers.py [--attnkit build/attnkit] [--seq 4096,16384] [--threads 2]
"""
import argparse
import json
import math
import subprocess
import sys

from timing import median_ms

FAMILIES = {  # name -> attnkit bench options
    "linear": ["-m", "linear", "-c", "linear:map=elu1,norm=kernel"],
    "heinsen": ["-m", "heinsen"],
    "performer": ["-m", "performer", "-c", "performer:features=64"],
}


def attnkit_ms(binary, family, seqs, threads, reps, backward):
    cmd = [binary, "bench", *FAMILIES[family], "--causal", "-n", ",".join(map(str, seqs)),
           "-f", "json", "--threads", str(threads), "--reps", str(reps),
           *(["--backward"] if backward else [])]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {int(r["seq"]): float(r["median_ms"]) for r in out["rows"]}, out.get("cpu", "")


def features(torch, family, q, k, w):
    """phi(q), phi(k) of [B, H, N, D] inputs for the family (w: [m, D] Performer draws)."""
    if family == "linear":
        return torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    if family == "heinsen":
        return (torch.exp(q - q.amax(-1, keepdim=True)),
                torch.exp(k - k.amax(dim=(-2, -1), keepdim=True)))
    def positive(x, over):
        h = x @ w.t() - 0.5 * (x * x).sum(-1, keepdim=True)
        return torch.exp(h - h.amax(dim=over, keepdim=True)) / math.sqrt(w.shape[0])
    return positive(q, -1), positive(k, (-2, -1))


def chunked_causal(torch, fq, fk, v, chunk=64):
    """out_i = sum_{j<=i} (fq_i.fk_j) v_j / sum_{j<=i} fq_i.fk_j, chunk by chunk."""
    b, h, n, f = fq.shape
    c = n // chunk
    qc, kc = fq.view(b, h, c, chunk, f), fk.view(b, h, c, chunk, f)
    vc = v.view(b, h, c, chunk, v.shape[-1])
    kv = kc.transpose(-1, -2) @ vc                    # [b, h, c, f, d] per-chunk states
    states = kv.cumsum(2) - kv                        # keys of the earlier chunks
    zs = kc.sum(-2).cumsum(2) - kc.sum(-2)            # [b, h, c, f]
    s = (qc @ kc.transpose(-1, -2)).tril()            # [b, h, c, T, T] intra-chunk
    num = qc @ states + s @ vc
    den = (qc * zs[..., None, :]).sum(-1) + s.sum(-1)
    return (num / den[..., None]).reshape(b, h, n, v.shape[-1])


def peer_ms(torch, family, n, reps, backward, ft):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, requires_grad=backward) for _ in range(3))
    w = torch.randn(64, 64)

    def chunked():
        fq, fk = features(torch, family, q, k, w)
        out = chunked_causal(torch, fq, fk, v)
        if backward:
            out.sum().backward()

    def fast_transformers():
        fq, fk = features(torch, family, q, k, w)
        den = torch.einsum("nhli,nhli->nhl", fq, fk.cumsum(2))
        out = ft(fq, fk, v) / den[..., None]
        if backward:
            out.sum().backward()

    with torch.set_grad_enabled(backward):
        row = {"chunked": median_ms(chunked, reps)}
        if ft is not None:
            row["ft"] = median_ms(fast_transformers, reps)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnkit", default="build/attnkit")
    ap.add_argument("--seq", default="4096,16384")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("linear_peers.py: PyTorch is not importable")
    torch.set_num_threads(args.threads)
    try:
        from fast_transformers.causal_product import causal_dot_product as ft
    except ImportError:
        ft = None
    seqs = [int(x) for x in args.seq.split(",")]
    print(f"# PyTorch {torch.__version__}, fast-transformers "
          f"{'present' if ft else 'not importable'}, {args.threads} threads, B=1 H=8 D=64, "
          f"causal, median of {args.reps}; GFLOP/s counts 4 N D^2 per head")
    print("| family | pass | N | attnkit ms | GFLOP/s | torch chunked ms | speed-up "
          "| fast-transformers ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family in args.families.split(","):
        fwd, cpu = attnkit_ms(args.attnkit, family, seqs, args.threads, args.reps, False)
        bwd, _ = attnkit_ms(args.attnkit, family, seqs, args.threads, args.reps, True)
        for backward in (False, True):
            for n in seqs:
                ours = fwd[n] + (bwd[n] if backward else 0.0)
                theirs = peer_ms(torch, family, n, args.reps, backward, ft)
                flops = 4.0 * n * 64 * 64 * 8 * (3 if backward else 1)
                f = theirs.get("ft")
                print(f"| {family} | {'fwd+bwd' if backward else 'fwd'} | {n} | {ours:.2f} | "
                      f"{flops / ours / 1e6:.0f} | {theirs['chunked']:.2f} | "
                      f"{theirs['chunked'] / ours:.1f}x | {f'{f:.2f}' if f else '-'} | "
                      f"{f'{f / ours:.1f}x' if f else '-'} |")
    print(f"\n# attnkit: {cpu}")


if __name__ == "__main__":
    main()
