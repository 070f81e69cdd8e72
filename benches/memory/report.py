"""A table and a plot from benches/memory/run.sh's raw.jsonl.

    python benches/memory/report.py OUT_DIR

Every figure is the median over the rounds of one (binary set, size, role).
The bytes per item are the slope between the smallest and the largest size,
so what does not grow with the catalogue (ONNX Runtime, the runtime's
threads) drops out. Writes OUT_DIR/memory.md and OUT_DIR/memory.png.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROLES = [
    ("one", "one node (`vecrec serve`, whole generation)"),
    ("front", "front tier (`vecrec route --front`)"),
    ("shard", "a shard of 3 (`vecrec serve`)"),
]


def main():
    out = Path(sys.argv[1])
    runs = defaultdict(list)  # (set, items, role) -> [record]
    for line in (out / "raw.jsonl").read_text().splitlines():
        r = json.loads(line)
        runs[(r["set"], r["items"], r["role"])].append(r)
    if not runs:
        sys.exit(f"no records in {out / 'raw.jsonl'}")
    sets = sorted({k[0] for k in runs}, key=lambda s: (s != "base", s))
    sizes = sorted({k[1] for k in runs})

    def med(key, field):
        rs = runs.get(key, [])
        return statistics.median(r[field] for r in rs) / (1024 if field.endswith("_kb") else 1) if rs else float("nan")

    lines = ["# Memory of a served hybrid generation against catalogue size", ""]
    lines.append(
        "Seeded samples (`vecrec-sample --seed 42`, 400 users and ~15k events per "
        "3,000 items), built as 3 shards with a front (`vecrec-build --shards 3`), "
        "release build, this machine. Each process is driven with Recommend "
        "(concurrency 2) first. `anon` is RssAnon (the process's own memory), "
        "`file` RssFile (the generation's pages it touched through the map); "
        "medians over rounds. `benches/memory/run.sh`."
    )
    lines += ["", "| binaries | process | items | rounds | anon MiB | file MiB | start s |", "|---|---|---|---|---|---|---|"]
    for s in sets:
        for role, title in ROLES:
            for n in sizes:
                key = (s, n, role)
                lines.append(
                    f"| {s} | {title} | {n:,} | {len(runs.get(key, []))} | {med(key, 'anon_kb'):,.1f} | "
                    f"{med(key, 'file_kb'):,.1f} | {med(key, 'start_s'):.2f} |"
                )
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        lines += ["", f"Own memory per item (the slope of `anon` from {lo:,} to {hi:,} items), bytes:", ""]
        lines += ["| binaries | " + " | ".join(r[0] for r in ROLES) + " |", "|---|" + "---|" * len(ROLES)]
        for s in sets:
            cells = []
            for role, _ in ROLES:
                d = med((s, hi, role), "anon_kb") - med((s, lo, role), "anon_kb")
                cells.append(f"{d * 1024 * 1024 / (hi - lo):,.0f}")
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in sets:
        for role, title in ROLES:
            ys = [med((s, n, role), "anon_kb") for n in sizes]
            ax.plot(sizes, ys, marker="o", linestyle="-" if s != "base" else "--", label=f"{s}: {title}")
    ax.set_xlabel("items")
    ax.set_ylabel("RssAnon, MiB (median)")
    ax.set_title("Own memory of a served hybrid generation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=120)


if __name__ == "__main__":
    main()
