"""Table (markdown) and recall/QPS plot (PNG) from the JSON lines of run.sh.

Per round, a backend's QPS at a target recall is interpolated linearly
between the two sweep points around it (`-`: the sweep never reached that
recall); the table gives the median over the rounds and, in brackets, the
lowest and highest. The last columns divide by the best PyPI peer's median
at the same target, f32 and quantised peers alike.
"""
import collections
import json
import statistics
import sys

PEERS = {"hnswlib", "faiss-hnsw", "faiss-hnsw-sq8", "faiss-hnsw-sq8-refine", "faiss-ivfpq-refine",
         "usearch", "usearch-f16", "usearch-i8"}

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def at(points, target):
    pts = sorted(points, key=lambda p: p[0])
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1 and r1 > r0:
            return q0 + (q1 - q0) * (target - r0) / (r1 - r0)
    hit = [q for r, q in pts if r >= target]
    return max(hit) if hit and pts[0][0] >= target else None


def spread(values, spec):
    """'median (low–high)' of the values that are not None; '-' if none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "-", None
    med = statistics.median(vals)
    if len(vals) == 1:
        return format(med, spec), med
    return f"{format(med, spec)} ({format(min(vals), spec)}–{format(max(vals), spec)})", med


def main():
    path, name, hw = sys.argv[1], sys.argv[2], sys.argv[3]
    builds = collections.defaultdict(list)
    sweeps = collections.defaultdict(lambda: collections.defaultdict(list))
    filtered = collections.defaultdict(list)
    order = []
    for line in open(path):
        row = json.loads(line)
        b, rnd = row["backend"], row.get("round", 1)
        if b not in order:
            order.append(b)
        if row.get("event") == "build":
            builds[b].append(row)
        elif "selectivity" in row:
            filtered[(b, row["selectivity"])].append((row["recall@10"], row["qps"]))
        else:
            sweeps[b][rnd].append((row["recall@10"], row["qps"], row["ef"]))
    rounds = max((len(r) for r in sweeps.values()), default=0)
    threads = max((r.get("search_threads", 1) for v in builds.values() for r in v), default=1)
    searching = ("searches on one thread (vecrec one query at a time in Rust, the peers one batch call of all "
                 "queries per pass" if threads == 1 else
                 f"searches on {threads} threads (vecrec's queries split over {threads} threads in Rust, the "
                 f"peers one batch call of all queries per pass with {threads} threads")
    fmt = lambda x, spec: "-" if x is None else format(x, spec)

    def qps_at(b, t):
        return [at([(r, q) for r, q, _ in pts], t) for pts in sweeps[b].values()]

    med = {(b, t): spread(qps_at(b, t), ",.0f")[1] for b in sweeps for t in (0.95, 0.99)}
    best = {t: max((med[(b, t)] or 0 for b in sweeps if b in PEERS), default=0) for t in (0.95, 0.99)}
    ratio = lambda q, t: None if q is None or not best[t] else q / best[t]
    lines = [f"# ANN benchmark: {name}", "",
             f"Hardware: {hw}. M=16, ef_construction=200, k=10, builds with 2 threads, {searching}, ef set before "
             f"the timer). {rounds} interleaved round(s): medians, lowest–highest in brackets.",
             "Memory in MB: `disk` the index's files; `RSS Δ` the search process's growth from before it opened the "
             "index to after the sweep; `resident` its anonymous growth plus the index files' pages in the page cache "
             "after the sweep (mincore; cached pages left from the build dropped at open).", "",
             "| backend | QPS @ recall 0.95 | QPS @ 0.99 | best recall | build s | disk | RSS Δ | resident | open s | × best peer @0.95 | @0.99 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in order:
        if b not in sweeps:
            continue
        bd = builds.get(b, [])
        col = lambda k, spec: spread([r.get(k) for r in bd], spec)[0]
        best_recall = max(r for pts in sweeps[b].values() for r, _, _ in pts)
        q95, q99 = spread(qps_at(b, 0.95), ",.0f"), spread(qps_at(b, 0.99), ",.0f")
        lines.append(f"| {b} | {q95[0]} | {q99[0]} | {best_recall:.3f} | {col('build_s', '.2f')} | "
                     f"{col('disk_mb', '.1f')} | {col('rss_delta_mb', '.1f')} | {col('resident_mb', '.1f')} | "
                     f"{col('open_s', '.3f')} | {fmt(ratio(q95[1], 0.95), '.2f')} | {fmt(ratio(q99[1], 0.99), '.2f')} |")
    if filtered:
        lines += ["", "Filtered search, round 1 (a seeded pseudo-random share of the rows passes; recall against brute "
                  "force over them; vecrec's planner searches the passing rows exactly when that is cheaper than the graph):", "",
                  "| backend | selectivity | QPS @ recall 0.95 | QPS @ 0.99 | best recall |", "|---|---|---|---|---|"]
        for (b, sel), pts in sorted(filtered.items()):
            lines.append(f"| {b} | {sel:.0%} | {fmt(at(pts, 0.95), ',.0f')} | {fmt(at(pts, 0.99), ',.0f')} | {max(p[0] for p in pts):.3f} |")
    md = path.rsplit(".", 1)[0] + ".md"
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt.figure(figsize=(8, 5))
    for b in order:
        if b not in sweeps:
            continue
        by_ef = collections.defaultdict(list)
        for pts in sweeps[b].values():
            for r, q, ef in pts:
                by_ef[ef].append((r, q))
        pts = sorted((statistics.median(r for r, _ in v), statistics.median(q for _, q in v)) for v in by_ef.values())
        plt.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if b not in PEERS else "x",
                 linestyle="-" if b not in PEERS else "--", label=b)
    plt.yscale("log")
    plt.xlabel("recall@10")
    plt.ylabel("queries/s (1 thread, median of rounds)")
    plt.title(f"{name}: recall vs QPS")
    plt.grid(True, which="both", alpha=0.3)
    plt.legend(fontsize=7)
    png = path.rsplit(".", 1)[0] + ".png"
    plt.savefig(png, dpi=120, bbox_inches="tight")
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    main()
