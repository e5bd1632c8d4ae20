#!/usr/bin/env python3
"""Time vs sequence length for every mechanism, from `attnkit compare -f json`, as a PNG.

    /usr/bin/python3 bench/plot.py [--attnkit build/attnkit] [--seq 512,1024,...] [--out docs/time_vs_n.png]

Quadratic mechanisms (softmax, ra, topk) stop at --max-quadratic to keep the run short.
Needs matplotlib (Debian python3-matplotlib).
"""
import argparse
import json
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

QUADRATIC = {"softmax", "ra", "topk"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attnkit", default="build/attnkit")
    ap.add_argument("--seq", default="512,1024,2048,4096,8192,16384,32768")
    ap.add_argument("--max-quadratic", type=int, default=16384)
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--out", default="docs/time_vs_n.png")
    args = ap.parse_args()
    times = {}
    for n in (int(x) for x in args.seq.split(",")):
        names = subprocess.run([args.attnkit, "list", "-f", "json"], check=True, capture_output=True,
                               text=True).stdout
        mechs = [r["mechanism"] for r in json.loads(names)
                 if (n <= args.max_quadratic or r["mechanism"] not in QUADRATIC)
                 and not (args.causal and r["causal"] == "no")]
        cmd = [args.attnkit, "compare", "-n", str(n), "--reps", "1", "-f", "json", "-m", ",".join(mechs)]
        if args.causal:
            cmd.append("--causal")
        for row in json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout):
            times.setdefault(row["mechanism"], []).append((n, float(row["time_ms"])))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, pts in sorted(times.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", linestyle="--" if name in QUADRATIC else "-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N (B=1, H=8, D=64)")
    ax.set_ylabel("forward time, ms (2 threads)")
    ax.set_title(f"attnkit: time vs N ({'causal' if args.causal else 'non-causal'})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(ncol=2, fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
