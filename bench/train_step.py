#!/usr/bin/env python3
"""One training step of the attention inner product (forward + backward) from Python:
attnkit.torch against PyTorch autograd and fast-transformers on the same shapes, one run.

Every row computes out = attention(q, k, v) on [B, H, N, D] tensors and backpropagates
sum(out * dout) into q, k, v, with the same thread count. attnkit's rows include the Python
glue (attnkit.torch.attention, layout="bhsd": strided views, no copies).

    .venv/bin/python bench/train_step.py [--seq 1024,4096] [--threads 2] [--reps 5]
        [--dtype float32|bfloat16]
"""
import argparse
import math

import torch

import attnkit
import attnkit.torch as ak

from timing import median_ms


def elu1(x):
    return torch.nn.functional.elu(x) + 1


def torch_softmax(q, k, v):
    """Naive causal softmax attention with PyTorch autograd (materialises N x N)."""
    n = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(s, -1) @ v


def torch_linear(q, k, v):
    """Causal linear attention (elu+1, kernel normaliser) with cumulative sums, PyTorch
    autograd: O(N D^2) memory per head."""
    fq, fk = elu1(q), elu1(k)
    kv = torch.einsum("bhnd,bhne->bhnde", fk, v).cumsum(2)
    num = torch.einsum("bhnd,bhnde->bhne", fq, kv)
    den = torch.einsum("bhnd,bhnd->bhn", fq, fk.cumsum(2))
    return num / den[..., None]


def fast_transformers_linear():
    try:
        from fast_transformers.causal_product import causal_dot_product
    except ImportError:
        return None

    def f(q, k, v):
        fq, fk = elu1(q), elu1(k)
        z = 1 / torch.einsum("bhnd,bhnd->bhn", fq, fk.cumsum(2))
        return causal_dot_product(fq, fk, v) * z[..., None]
    return f


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", default="1024,4096")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.set_num_threads(args.threads)
    attnkit.set_num_threads(args.threads)
    rows = {
        "attnkit softmax": lambda q, k, v: ak.attention(q, k, v, "softmax", causal=True,
                                                        layout="bhsd"),
        "torch naive softmax": torch_softmax,
        "attnkit linear": lambda q, k, v: ak.attention(q, k, v, "linear", causal=True,
                                                       layout="bhsd", map="elu1",
                                                       norm="kernel"),
        "torch cumsum linear": torch_linear,
    }
    sdpa = getattr(torch.nn.functional, "scaled_dot_product_attention", None)
    if sdpa is not None:
        rows["torch sdpa softmax"] = lambda q, k, v: sdpa(q, k, v, is_causal=True)
    ft = fast_transformers_linear()
    if ft is not None and dtype == torch.float32:  # its CPU kernel takes float32 only
        rows["fast-transformers linear"] = ft
    print(f"torch {torch.__version__}, threads {args.threads}, B=1 H=8 D=64, causal, {args.dtype}; "
          f"median ms of forward + backward; attnkit bf16 path {attnkit.bf16_path()}")
    print(f"{'':28s}" + "".join(f"{'N=' + n:>12s}" for n in args.seq.split(",")))
    for name, fn in rows.items():
        line = f"{name:28s}"
        for n in map(int, args.seq.split(",")):
            # Memory: the naive forms hold N x N (softmax) or N x D x D (cumsum) per head.
            if ("naive" in name or "cumsum" in name) and n > 4096:
                line += f"{'-':>12s}"
                continue
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, 8, n, 64, generator=g).mul_(0.5).to(dtype).requires_grad_()
                       for _ in range(3))
            dout = torch.randn(1, 8, n, 64, generator=g).to(dtype)

            def step():
                for t in (q, k, v):
                    t.grad = None
                (fn(q, k, v) * dout).sum().backward()
            line += f"{median_ms(step, args.reps):12.1f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
