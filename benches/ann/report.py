"""Table (markdown) and recall/QPS plot (PNG) from the JSON lines of run.sh.

QPS at a target recall is interpolated linearly between the two sweep points
around it; `-` means the sweep never reached that recall. The last columns
compare each backend with the best PyPI peer (hnswlib, faiss-cpu, usearch) at
the same target.
"""
import collections
import json
import sys

PEERS = {"hnswlib", "faiss-hnsw", "faiss-ivfpq", "usearch"}

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def at(points, target):
    pts = sorted(points, key=lambda p: p[0])
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1 and r1 > r0:
            return q0 + (q1 - q0) * (target - r0) / (r1 - r0)
    hit = [q for r, q in pts if r >= target]
    return max(hit) if hit and pts[0][0] >= target else None


def main():
    path, name, hw = sys.argv[1], sys.argv[2], sys.argv[3]
    builds, sweeps = {}, collections.defaultdict(list)
    filtered = collections.defaultdict(list)
    for line in open(path):
        row = json.loads(line)
        if row.get("event") == "build":
            builds[row["backend"]] = row
        elif "selectivity" in row:
            filtered[(row["backend"], row["selectivity"])].append((row["recall@10"], row["qps"]))
        else:
            sweeps[row["backend"]].append((row["recall@10"], row["qps"]))
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    best = {t: max((at(p, t) or 0 for b, p in sweeps.items() if b in PEERS), default=0) for t in (0.95, 0.99)}
    ratio = lambda q, t: None if q is None or not best[t] else q / best[t]
    lines = [f"# ANN benchmark: {name}", "", f"Hardware: {hw}. M=16, ef_construction=200, k=10, build with 2 threads, queries single-threaded.",
             "Memory: resident MB of a fresh process after loading the index and running the whole sweep (at the first answer in brackets).", "",
             "| backend | QPS @ recall 0.95 | QPS @ 0.99 | best recall | build s | memory MB | open s | × best peer @0.95 | @0.99 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b, pts in sweeps.items():
        bd = builds.get(b, {})
        q95, q99 = at(pts, 0.95), at(pts, 0.99)
        mem = fmt(bd.get("mem_mb"), ".1f") + (f" ({bd['open_mb']:.1f})" if bd.get("open_mb") is not None else "")
        lines.append(f"| {b} | {fmt(q95, ',.0f')} | {fmt(q99, ',.0f')} | {max(p[0] for p in pts):.3f} | "
                     f"{fmt(bd.get('build_s'), '.2f')} | {mem} | {fmt(bd.get('open_s'), '.3f')} | "
                     f"{fmt(ratio(q95, 0.95), '.2f')} | {fmt(ratio(q99, 0.99), '.2f')} |")
    if filtered:
        lines += ["", "Filtered search (a seeded pseudo-random share of the rows passes; recall against brute force over them;",
                  "vecrec's planner searches the passing rows exactly when that is cheaper than the graph):", "",
                  "| backend | selectivity | QPS @ recall 0.95 | QPS @ 0.99 | best recall |", "|---|---|---|---|---|"]
        for (b, sel), pts in sorted(filtered.items()):
            lines.append(f"| {b} | {sel:.0%} | {fmt(at(pts, 0.95), ',.0f')} | {fmt(at(pts, 0.99), ',.0f')} | {max(p[0] for p in pts):.3f} |")
    md = path.rsplit(".", 1)[0] + ".md"
    open(md, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt.figure(figsize=(7, 4.5))
    for b, pts in sweeps.items():
        pts = sorted(pts)
        plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
    plt.yscale("log")
    plt.xlabel("recall@10")
    plt.ylabel("queries/s (1 thread)")
    plt.title(f"{name}: recall vs QPS")
    plt.grid(True, which="both", alpha=0.3)
    plt.legend()
    png = path.rsplit(".", 1)[0] + ".png"
    plt.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
