#!/usr/bin/env python3
"""Time vs sequence length for every mechanism, from `attnkit compare -f json`, as a PNG.

    /usr/bin/python3 bench/plot.py [--attnkit build/attnkit] [--seq 512,1024,...] [--out docs/time_vs_n.png]
    /usr/bin/python3 bench/plot.py --from bench.csv compare_4096.json ... [--out plot.png]

--from plots saved results instead of running attnkit: `attnkit bench -f csv|json` files (a
row per mechanism and seq) and `attnkit compare -f json` files (seq from their metadata).

Quadratic mechanisms (softmax, ra, topk) stop at --max-quadratic to keep the run short.
Needs matplotlib (Debian python3-matplotlib).
"""
import argparse
import csv
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
    ap.add_argument("--from", dest="saved", nargs="+", metavar="FILE",
                    help="saved attnkit bench (CSV/JSON) or compare (JSON) output to plot")
    args = ap.parse_args()
    times = load_saved(args.saved) if args.saved else run_compare(args)
    plot(times, args)


def load_saved(paths):
    """{mechanism: [(seq, ms), ...]} from saved bench CSV/JSON and compare JSON files."""
    times = {}
    for path in paths:
        with open(path) as f:
            if path.endswith(".json"):
                doc = json.load(f)
                rows = doc["rows"]
                seq = doc.get("shape", {}).get("seq_q")
            else:
                rows, seq = list(csv.DictReader(f)), None
        for r in rows:
            ms = r.get("median_ms", r.get("time_ms"))
            n = r.get("seq", r.get("context", seq))
            if ms in (None, "") or n in (None, ""):
                continue  # a skipped compare row
            name = r["mechanism"].split("(")[0].split(" ")[0]
            times.setdefault(name, []).append((int(n), float(ms)))
    return {k: sorted(v) for k, v in times.items()}


def run_compare(args):
    times = {}
    for n in (int(x) for x in args.seq.split(",")):
        names = subprocess.run([args.attnkit, "list", "-f", "json"], check=True, capture_output=True,
                               text=True).stdout
        mechs = [r["mechanism"] for r in json.loads(names)["rows"]
                 if (n <= args.max_quadratic or r["mechanism"] not in QUADRATIC)
                 and not (args.causal and not r["causal"])]
        cmd = [args.attnkit, "compare", "-n", str(n), "--reps", "1", "-f", "json", "-m", ",".join(mechs)]
        if args.causal:
            cmd.append("--causal")
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for row in out["rows"]:
            if row["time_ms"] is not None:
                times.setdefault(row["mechanism"], []).append((n, float(row["time_ms"])))
    return times


def plot(times, args):
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
