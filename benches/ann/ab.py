#!/usr/bin/env python3
"""A/B of two builds of vecrec-ann-bench on one data set: interleaved rounds,
median queries/s per ef, one thread searching (as benches/ann/run.sh).

    benches/ann/ab.py BIN_A BIN_B SET [--backend hnsw-int8] [--rounds 3]

SET is a directory under .cache/bench-data/ (debian60k, clustered200k) or
bigann10k (read from ../shared/datasets/ann-bigann10k). Build the two
binaries first, e.g. `git stash; cargo build --release --features ann-bench
--bin vecrec-ann-bench; cp target/release/vecrec-ann-bench /tmp/a; git stash
pop; ...`. Each round builds the index afresh in each binary (the graphs of
a parallel build differ slightly from run to run, so recall is printed too).
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def files(name):
    if name == "bigann10k":
        d = REPO.parent / "shared/datasets/ann-bigann10k"
        return (d / "bigann10k_base.bvecs", d / "bigann10k_query.bvecs",
                d / "bigann10k_groundtruth.ivecs", "l2")
    d = REPO / ".cache/bench-data" / name
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    return (d / f"{name}_base.fvecs", d / f"{name}_query.fvecs",
            d / f"{name}_groundtruth.ivecs", meta.get("metric", "cosine"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("set")
    p.add_argument("--backend", default="hnsw-int8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ef", default="10,16,24,32,64,128,256")
    args = p.parse_args()
    base, queries, gt, metric = files(args.set)
    runs = {args.a: [], args.b: []}
    for r in range(1, args.rounds + 1):
        order = [args.a, args.b] if r % 2 else [args.b, args.a]
        for binary in order:
            out = subprocess.run(
                [binary, "--backend", args.backend, "--base", base, "--queries", queries,
                 "--gt", gt, "--metric", metric, "--m", "16", "--ef-construction", "200",
                 "--ef", args.ef, "--threads", "2", "--round", str(r)],
                check=True, capture_output=True, text=True).stdout
            runs[binary] += [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    print(f"{args.set}, {args.backend}, medians of {args.rounds} interleaved rounds")
    print("| ef | recall A | QPS A | recall B | QPS B | B / A |")
    print("|---:|---:|---:|---:|---:|---:|")
    for ef in [int(e) for e in args.ef.split(",")]:
        row = []
        for binary in (args.a, args.b):
            pts = [x for x in runs[binary] if x.get("ef") == ef and "selectivity" not in x]
            row.append((statistics.median(x["recall@10"] for x in pts),
                        statistics.median(x["qps"] for x in pts)))
        (ra, qa), (rb, qb) = row
        print(f"| {ef} | {ra:.4f} | {qa:,.0f} | {rb:.4f} | {qb:,.0f} | {qb / qa:.2f}× |")
    builds = {b: statistics.median(x["build_s"] for x in runs[b] if "build_s" in x) for b in runs}
    print(f"build s: A {builds[args.a]:.2f}, B {builds[args.b]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
