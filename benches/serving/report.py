"""Tables and a plot from benches/serving/run.sh's raw.jsonl.

    python benches/serving/report.py RAW_JSONL OUT_DIR

Every figure is the median over the rounds of the same run (same server, RPC,
concurrency or offered rate). Writes OUT_DIR/serving.md and OUT_DIR/serving.png.
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RPC_NAMES = {
    "similar": "SimilarItems",
    "search": "SearchText",
    "embed": "Embed (16 texts)",
    "recommend": "Recommend",
}


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def errors(rows):
    """Median count per status code over the rounds."""
    codes = sorted({c for r in rows for c in r.get("errors", {})})
    return {c: statistics.median(r.get("errors", {}).get(c, 0) for r in rows) for c in codes}


def fmt_rps(x):
    return f"{x:,.0f}"


def fmt_ms(x):
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def main(raw_path, out_dir):
    runs = [json.loads(line) for line in open(raw_path) if line.strip()]
    rounds = max(r["round"] for r in runs)
    closed = defaultdict(list)
    sweep = defaultdict(list)
    overload = defaultdict(list)
    rss = defaultdict(list)
    for r in runs:
        if r["kind"] == "closed":
            closed[(r["label"], r["rpc"], r["concurrency"])].append(r)
        elif r["kind"] == "sweep":
            sweep[(r["label"], r["rpc"], r["rate"])].append(r)
        elif r["kind"] == "overload":
            overload[(r["label"], r["rpc"])].append(r)
        elif r["kind"] == "rss":
            rss[(r["label"], r["rpc"])].append(r)
    dur = runs[0].get("duration_s")
    out = []
    w = out.append
    w("# Serving benchmark: vecrec against a Python peer over loopback gRPC\n")
    w(f"Medians of {rounds} interleaved rounds, {dur:g} s measured per run. "
      "Client: `vecrec-load` on the same 2-core machine, 2 HTTP/2 connections. "
      "vecrec serves the ml-latest-small hybrid index (SimilarItems, SearchText, Embed, "
      "Recommend hybrid) and the `--content-only` index (Recommend against the peer); "
      "the peer (benches/serving/peer.py: grpcio + onnxruntime + faiss HNSW M16 efSearch 64, "
      "same int8 MiniLM as published, same catalogue) implements vecrec's proto; vecrec "
      "runs its W8A8 rewrite of that model (scripts/quantize_activations.py), and "
      "`peer-a8` is the peer running that rewrite too. Reproduce: "
      "`benches/serving/run.sh`.\n")

    w("## Closed loop\n")
    w("| RPC | concurrency | vecrec req/s | p50 ms | p99 ms | peer req/s | p50 ms | p99 ms | vecrec / peer |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rpc in ["similar", "search", "embed", "recommend"]:
        mine = "vecrec-content" if rpc == "recommend" else "vecrec-hybrid"
        for c in [1, 8, 32]:
            a, b = closed.get((mine, rpc, c)), closed.get(("peer", rpc, c))
            if not a or not b:
                continue
            ra, rb = med(a, "achieved_rps"), med(b, "achieved_rps")
            name = RPC_NAMES[rpc] + (" (content-only index)" if rpc == "recommend" else "")
            w(f"| {name} | {c} | {fmt_rps(ra)} | {fmt_ms(med(a, 'p50_ms'))} | {fmt_ms(med(a, 'p99_ms'))} "
              f"| {fmt_rps(rb)} | {fmt_ms(med(b, 'p50_ms'))} | {fmt_ms(med(b, 'p99_ms'))} | {ra / rb:.2f}x |")
    w("")
    w("The peer on vecrec's W8A8 graph (`peer-a8`: the same server, model file "
      "`model-a8.onnx`), for the encoder-bound RPCs:\n")
    w("| RPC | concurrency | peer-a8 req/s | p50 ms | p99 ms | vecrec / peer-a8 |")
    w("|---|---:|---:|---:|---:|---:|")
    for rpc in ["search", "embed"]:
        for c in [1, 8, 32]:
            a, b = closed.get(("vecrec-hybrid", rpc, c)), closed.get(("peer-a8", rpc, c))
            if not a or not b:
                continue
            ra, rb = med(a, "achieved_rps"), med(b, "achieved_rps")
            w(f"| {RPC_NAMES[rpc]} | {c} | {fmt_rps(rb)} | {fmt_ms(med(b, 'p50_ms'))} | "
              f"{fmt_ms(med(b, 'p99_ms'))} | {ra / rb:.2f}x |")
    w("")
    w("Recommend on the hybrid index (all sources, reranker on), vecrec alone:\n")
    w("| concurrency | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms |")
    w("|---:|---:|---:|---:|---:|---:|")
    for c in [1, 8, 32]:
        a = closed.get(("vecrec-hybrid", "recommend", c))
        if a:
            w(f"| {c} | {fmt_rps(med(a, 'achieved_rps'))} | {fmt_ms(med(a, 'p50_ms'))} | "
              f"{fmt_ms(med(a, 'p90_ms'))} | {fmt_ms(med(a, 'p99_ms'))} | {fmt_ms(med(a, 'p999_ms'))} |")
    w("")
    errs = {k: errors(v) for k, v in closed.items() if any(r.get("errors") for r in v)}
    if errs:
        w("Errors in closed-loop runs (median count per run): " + "; ".join(
            f"{k[0]} {k[1]} c={k[2]}: {e}" for k, e in sorted(errs.items())) + "\n")

    w("## Open loop: offered rate against latency\n")
    w("Rates are fractions (20% to 120%) of each server's own concurrency-32 throughput in "
      "round 1; latency counts from each request's intended start.\n")
    w("| server | RPC | offered req/s | answered OK req/s | p50 ms | p99 ms | errors |")
    w("|---|---|---:|---:|---:|---:|---|")
    for (label, rpc, rate), rs in sorted(sweep.items()):
        e = errors(rs)
        w(f"| {label} | {RPC_NAMES[rpc]} | {fmt_rps(rate)} | {fmt_rps(med(rs, 'achieved_rps'))} | "
          f"{fmt_ms(med(rs, 'p50_ms'))} | {fmt_ms(med(rs, 'p99_ms'))} | "
          f"{', '.join(f'{k} {v:g}' for k, v in e.items()) or '-'} |")
    w("")

    w("## 4x overload (open loop, vecrec on the hybrid index)\n")
    w("Two references for the admitted requests' p99: closed loop at concurrency 1, and the "
      "same open loop at the sweep's lowest rate (20% of saturation), whose latency also "
      "counts from the intended start.\n")
    w("| RPC | offered req/s | answered OK req/s | OK p99 ms | unloaded p99 ms (c=1) | ratio | "
      "p99 ms at 20% (open loop) | ratio | "
      "RESOURCE_EXHAUSTED share | other errors | RSS before MiB | RSS peak MiB | growth |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for (label, rpc), rs in sorted(overload.items()):
        base = closed.get((label, rpc, 1))
        unloaded = med(base, "p99_ms") if base else float("nan")
        light = [v for (l, r, _), v in sweep.items() if l == label and r == rpc]
        light = min(light, key=lambda v: v[0]["rate"]) if light else None
        light_p99 = med(light, "p99_ms") if light else float("nan")
        p99 = med(rs, "p99_ms")
        e = errors(rs)
        shed = e.pop("RESOURCE_EXHAUSTED", 0)
        total = med(rs, "ok") + shed + sum(e.values())
        m = rss.get((label, rpc), [])
        before = med(m, "rss_before_kb") / 1024
        peak = med(m, "rss_peak_kb") / 1024
        w(f"| {RPC_NAMES[rpc]} | {fmt_rps(rs[0]['rate'])} | {fmt_rps(med(rs, 'achieved_rps'))} | "
          f"{fmt_ms(p99)} | {fmt_ms(unloaded)} | {p99 / unloaded:.1f}x | "
          f"{fmt_ms(light_p99)} | {p99 / light_p99:.1f}x | {shed / max(total, 1):.0%} | "
          f"{', '.join(f'{k} {v:g}' for k, v in e.items()) or '-'} | {before:.0f} | {peak:.0f} | "
          f"{(peak / before - 1):+.1%} |")
    w("")
    (Path(out_dir) / "serving.md").write_text("\n".join(out) + "\n")

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.8))
    styles = {"vecrec-hybrid": "C0-o", "vecrec-content": "C2-s", "peer": "C3-^", "peer-a8": "C1-v"}
    for ax, rpc in zip(axes, ["similar", "search", "embed", "recommend"]):
        for label, style in styles.items():
            pts = sorted((med(rs, "achieved_rps"), med(rs, "p99_ms"), med(rs, "p50_ms"))
                         for (l, r, _), rs in sweep.items() if l == label and r == rpc)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] for p in pts], style, label=f"{label} p99")
            ax.plot(xs, [p[2] for p in pts], style, alpha=0.35, label=f"{label} p50")
        ax.set_title(RPC_NAMES[rpc])
        ax.set_xlabel("answered req/s (open loop)")
        ax.set_ylabel("latency ms")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Latency against throughput over loopback gRPC, 2 cores (medians of rounds)")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "serving.png", dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
