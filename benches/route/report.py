"""Writes results/route.md and results/route.png from results/raw.jsonl and
results/ndcg.json (benches/route/run.sh): medians over the rounds, and every
fault round."""

import datetime
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
hybrid = out.name == "hybrid"
rows = [json.loads(line) for line in (out / "raw.jsonl").read_text().splitlines() if line.strip()]
nd = json.loads((out / "ndcg.json").read_text())
rounds = sorted({r["round"] for r in rows})


def written(name):
    t = datetime.datetime.fromtimestamp((out / name).stat().st_mtime, datetime.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M UTC")


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def errs(r):
    return sum(r["errors"].values())


def partial(r):
    # Rows written before vecrec-load counted partial answers have none.
    return r.get("partial", 0)


def per_call(r, key, scale=1.0):
    # r[key], counted over the whole run (its warm-up too), per call: the
    # calls of the whole run are taken at the measured rate (so the idle
    # moments as vecrec-load starts and stops count a little extra); None
    # for rows written before run.sh counted it.
    if key not in r or not r["achieved_rps"]:
        return None
    total_s = r["duration_s"] + r.get("warmup_s", 0)
    return scale * r[key] / (r["achieved_rps"] * total_s)


def cpu_ms(r, key):
    return per_call(r, key, 1000.0)


lines = [
    "# One node against 3 shards × 2 replicas behind `vecrec route`",
    "",
    (
        "ml-latest-small, hybrid pipeline (the shards sliced from one node's generation, "
        "`front/`, which the router serves with `--front` and which is the one node), "
        if hybrid
        else "ml-latest-small, content pipeline, "
    )
    + "everything on one 2-core machine over loopback "
    "(7 servers, the router and the load generator share the cores). "
    + (
        f"Reproduce: `PIPELINE=hybrid benches/route/run.sh` ({len(rounds)} rounds)."
        if hybrid
        else f"Reproduce: `benches/route/run.sh` ({len(rounds)} rounds)."
    ),
    "",
    "## Quality: TEST NDCG@10 (built on TRAIN, exact search)",
    "",
    f"From `ndcg.json`, written {written('ndcg.json')}; the speed and fault rows below from "
    f"`raw.jsonl`, written {written('raw.jsonl')} (`NDCG=0` runs keep the last `ndcg.json`: "
    "TEST is read once per landed change).",
    "",
    "| | NDCG@10 | 95% half-width |",
    "|---|---:|---:|",
    f"| one node | {nd['one_node_ndcg10']:.4f} | {nd['one_node_half_width']:.4f} |",
    f"| router over 3 shards | {nd['routed_ndcg10']:.4f} | {nd['routed_half_width']:.4f} |",
    "",
    f"{nd['users']} TEST users; paired difference (router − one node) {nd['paired_difference']:+.4f}; "
    f"identical top-10 lists for {nd['identical_lists']} of {nd['users']} users. "
    + (
        "Both use the server's default settings, which are the settings `vecrec-eval` chose on validation (README, Configuration)."
        if hybrid
        else "Both use the server's default profile settings (the newest 20 items, decay 0.7); "
        "`vecrec-eval`'s content-only row (0.0181) uses the newest 2, as chosen on validation."
    ),
    "",
    "## Latency: closed loop, concurrency 8 (HNSW search; medians of the rounds)",
    "",
    "| rpc | server | req/s | p50 ms | p99 ms | errors | partial | CPU ms a call: server | shards | hedged shard calls a call |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]


def fmt_ms(xs):
    xs = [x for x in xs if x is not None]
    return f"{med(xs):.2f}" if xs else "–"


for rpc in ("similar", "recommend"):
    for who in ("one", "router"):
        rs = [r for r in rows if r["kind"] == "normal" and r["rpc"] == rpc and r["label"] == who]
        name = "one node" if who == "one" else "router, 3 × 2"
        shards = fmt_ms([cpu_ms(r, "cpu_s_shards") for r in rs]) if who == "router" else "–"
        hedged = fmt_ms([per_call(r, "hedges") for r in rs]) if who == "router" else "–"
        lines.append(
            f"| {rpc} | {name} | {med([r['achieved_rps'] for r in rs]):,.0f} | "
            f"{med([r['p50_ms'] for r in rs]):.2f} | {med([r['p99_ms'] for r in rs]):.2f} | "
            f"{sum(errs(r) for r in rs)} | {sum(partial(r) for r in rs)} | "
            f"{fmt_ms([cpu_ms(r, 'cpu_s_server') for r in rs])} | {shards} | {hedged} |"
        )
lines += [
    "",
    "CPU ms a call: user and system CPU time of the serving processes over the run, its "
    "warm-up included, divided by the calls answered at the measured rate over that time "
    "(/proc/PID/stat); for the router, its own and the six replicas' together (shards). "
    "Hedged shard calls a call: calls the router sent to a second replica of a shard "
    "because the first had not answered within `route.hedge_after_ms` (each shard is "
    "asked once a call besides; `vecrec_route_hedges_total`), counted the same way.",
]
lines += [
    "",
    "## Faults: Recommend through the router while one replica of every shard is SIGKILLed",
    "",
    "Each round: a run of the same length before the fault, then one in which a replica of "
    "each of the 3 shards is killed part-way.",
    "",
    "| round | req/s before | p99 ms before | req/s during | p99 ms during | p99 ratio | failed during | partial during |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
]
failed = []
ratios = []
for rd in rounds:
    b = [r for r in rows if r["round"] == rd and r["kind"] == "before-fault"]
    f = [r for r in rows if r["round"] == rd and r["kind"] == "fault"]
    if not (b and f):
        continue
    b, f = b[0], f[0]
    ratio = f["p99_ms"] / b["p99_ms"]
    ratios.append(ratio)
    lines.append(
        f"| {rd} | {b['achieved_rps']:,.0f} | {b['p99_ms']:.2f} | {f['achieved_rps']:,.0f} | "
        f"{f['p99_ms']:.2f} | {ratio:.2f}× | {errs(f)} | {partial(f)} |"
    )
    failed.append(errs(f) + partial(f))


def bar(ok):
    return "met" if ok else "**missed**"


lines += [
    "",
    f"Median p99 ratio during the fault: {med(ratios):.2f}×.",
    "",
    "## Against the bars of issue 15",
    "",
    f"- TEST NDCG@10 through the router within ±0.002 of one node: "
    f"{bar(abs(nd['paired_difference']) <= 0.002)} ({nd['paired_difference']:+.4f}).",
    f"- Top-10 lists identical with exact search: "
    f"{bar(nd['identical_lists'] == nd['users'])} ({nd['identical_lists']} of {nd['users']}).",
    f"- No failed or partial call while a replica of every shard is killed: "
    f"{bar(bool(failed) and sum(failed) == 0)} ({sum(failed)} in {len(failed)} rounds).",
    f"- The router's p99 during the fault within 2× of before, every round: "
    f"{bar(bool(ratios) and max(ratios) <= 2.0)} (worst {max(ratios, default=float('nan')):.2f}×).",
    "",
    "![latency of one node and the router; p99 before and during the fault](route.png)",
    "",
]
(out / "route.md").write_text("\n".join(lines))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
labels, p50, p99 = [], [], []
for rpc in ("similar", "recommend"):
    for who in ("one", "router"):
        rs = [r for r in rows if r["kind"] == "normal" and r["rpc"] == rpc and r["label"] == who]
        labels.append(f"{rpc}\n{'one node' if who == 'one' else 'router 3×2'}")
        p50.append(med([r["p50_ms"] for r in rs]))
        p99.append(med([r["p99_ms"] for r in rs]))
x = range(len(labels))
a.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
a.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
a.set_xticks(list(x), labels)
a.set_ylabel("ms (closed loop, concurrency 8)")
a.set_title("one node against the router")
a.legend()
before = [r["p99_ms"] for rd in rounds for r in rows if r["round"] == rd and r["kind"] == "before-fault"]
during = [r["p99_ms"] for rd in rounds for r in rows if r["round"] == rd and r["kind"] == "fault"]
b.plot(rounds[: len(before)], before, "o-", label="before the fault")
b.plot(rounds[: len(during)], during, "s-", label="a replica of every shard killed")
b.set_xticks(rounds)
b.set_xlabel("round")
b.set_ylabel("router Recommend p99, ms")
b.set_ylim(bottom=0)
b.set_title("p99 through the router under SIGKILL")
b.legend()
fig.tight_layout()
fig.savefig(out / "route.png", dpi=110)
print("\n".join(lines))
