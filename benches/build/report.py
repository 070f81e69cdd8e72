"""Tables and a plot from benches/build/run.sh's reports.

    python benches/build/report.py RAW_DIR OUT_DIR

RAW_DIR holds vecrec-build --report files named full-N-rR.json and
rebuild-N-rR.json (N items, round R). Every figure is the median over the
rounds of one size. Writes OUT_DIR/build.md and OUT_DIR/build.png.
"""
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

def load(raw):
    runs = defaultdict(lambda: defaultdict(list))  # kind -> items -> [report]
    for p in sorted(Path(raw).glob("*.json")):
        m = re.fullmatch(r"(full|rebuild)-(\d+)-r(\d+)\.json", p.name)
        if m:
            runs[m.group(1)][int(m.group(2))].append(json.loads(p.read_text()))
    return runs


def stage(report, name):
    return next((s for s in report["stages"] if s["stage"] == name), None)


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def main():
    raw, out = Path(sys.argv[1]), Path(sys.argv[2])
    runs = load(raw)
    full = runs["full"]
    sizes = sorted(full)
    if not sizes:
        sys.exit(f"no reports under {raw}")
    names = [s["stage"] for s in full[sizes[-1]][0]["stages"]]
    lines = ["# vecrec-build cost against catalogue size", ""]
    lines.append(
        "Seeded samples (`vecrec-sample --seed 42`, 400 users and ~15k events "
        "per 3,000 items), release build, this machine; medians over rounds "
        "(rounds per size in the table). `benches/build/run.sh`."
    )
    lines.append("")
    lines.append("## Full build (empty embedding cache)")
    lines.append("")
    head = "| items | users | events | rounds | total s | all but embedding s | s per 1k items (all but embedding) | peak RSS MiB |"
    lines += [head, "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        rs = full[n]
        total = med([r["total_seconds"] for r in rs])
        emb = med([stage(r, "embedding")["seconds"] for r in rs])
        rest = total - emb
        lines.append(
            f"| {n:,} | {rs[0]['users']:,} | {rs[0]['interactions']:,} | {len(rs)} | {total:.1f} | "
            f"{rest:.1f} | {1000 * rest / n:.2f} | {med([r['peak_rss_mib'] for r in rs]):,.0f} |"
        )
    for title, field, fmt in (
        ("Seconds per stage:", "seconds", "{:.1f}"),
        ("Peak RSS per stage, MiB:", "peak_rss_mib", "{:,.0f}"),
    ):
        lines += ["", title, ""]
        lines.append("| items | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(names))
        for n in sizes:
            cells = [fmt.format(med([(stage(r, s) or {}).get(field) for r in full[n]])) for s in names]
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    reb = runs["rebuild"]
    if reb:
        lines += ["", "## Rebuild after 1% of the texts changed", ""]
        lines.append(
            "The bar: the rebuild takes at most 1.1 × (the changed texts' share of a full "
            "build's embedding time + the full build's time for everything but embedding)."
        )
        lines.append("")
        lines.append(
            "| items | texts embedded | from the cache | embedding s (full) | embedding s (rebuild) | "
            "all but embedding s (full) | rebuild total s | bound s | within |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for n in sorted(reb):
            rs = reb[n]
            emb_full = med([stage(r, "embedding")["seconds"] for r in full[n]])
            rest_full = med([r["total_seconds"] - stage(r, "embedding")["seconds"] for r in full[n]])
            emb = med([stage(r, "embedding")["seconds"] for r in rs])
            total = med([r["total_seconds"] for r in rs])
            bound = 1.1 * (emb_full * rs[0]["embedded"] / max(1, n) + rest_full)
            lines.append(
                f"| {n:,} | {rs[0]['embedded']:,} | {rs[0]['reused_embeddings']:,} | {emb_full:.1f} | {emb:.1f} | "
                f"{rest_full:.1f} | {total:.1f} | {bound:.1f} | {'yes' if total <= bound else 'no'} |"
            )
    (out / "build.md").write_text("\n".join(lines) + "\n")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for s in names:
        ys = [med([(stage(r, s) or {}).get("seconds") for r in full[n]]) for n in sizes]
        ax1.plot(sizes, ys, marker="o", label=s)
        ms = [med([(stage(r, s) or {}).get("peak_rss_mib") for r in full[n]]) for n in sizes]
        ax2.plot(sizes, ms, marker="o", label=s)
    for ax, what in ((ax1, "seconds"), (ax2, "peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_title("time per stage")
    ax2.set_title("peak memory per stage")
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "build.png", dpi=110)
    print((out / "build.md").read_text())


if __name__ == "__main__":
    main()
