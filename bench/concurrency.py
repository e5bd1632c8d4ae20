#!/usr/bin/env python3
"""Python threads calling attnkit at once (an inference server): T threads x 1 attnkit thread
each against the same calls one after another, in one run.

    .venv/bin/python bench/concurrency.py [--threads 2] [--seq 2048] [--mechanism softmax]

Each call takes a Context of its own, so with the CPUs to spare the concurrent wall time is
close to one call's (speedup ~T); calls serialised on one lock would show ~1.0x.
"""
import argparse
import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median_ms  # noqa: E402

import attnkit  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--mechanism", default="softmax")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--preallocate", action="store_true",
                    help="pass out= buffers (no fresh output pages per call)")
    args = ap.parse_args()
    attnkit.set_num_threads(1)
    rng = np.random.default_rng(0)
    inputs = [[rng.standard_normal((1, args.seq, args.heads, args.dim)).astype(np.float32)
               for _ in range(3)] for _ in range(args.threads)]
    m = attnkit.Mechanism(args.mechanism, causal=True)
    want = [m(*x) for x in inputs]
    bufs = [np.empty_like(w) for w in want] if args.preallocate else [None] * args.threads

    def sequential():
        for x, b in zip(inputs, bufs):
            m(*x, out=b)

    outs = [None] * args.threads

    def concurrent():
        def work(i):
            outs[i] = m(*inputs[i], out=bufs[i])
        ts = [threading.Thread(target=work, args=(i,)) for i in range(args.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    seq_ms = median_ms(sequential, args.reps)
    con_ms = median_ms(concurrent, args.reps)
    for o, w in zip(outs, want):  # concurrent calls give the same bits (checked untimed)
        np.testing.assert_array_equal(o, w)
    print(f"{args.mechanism} causal B=1 H={args.heads} N={args.seq} D={args.dim}, "
          f"{args.threads} Python threads x 1 attnkit thread"
          f"{', preallocated out' if args.preallocate else ''}; CPUs available: "
          f"{attnkit.available_cpus()}")
    print(f"sequential {seq_ms:.1f} ms, concurrent {con_ms:.1f} ms, "
          f"speedup {seq_ms / con_ms:.2f}x")


if __name__ == "__main__":
    main()
