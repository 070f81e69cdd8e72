#!/usr/bin/env python3
"""Drives an experiment end to end against a running vecrec server with the
Python grpcio client: for every user of a vecrec-sample, Recommend (the
server assigns the arm and logs the list), then simulated clicks sent back
with RecordEvents and the answer's request_id.

    experiment_demo.py ADDR --sample DIR [--rounds 3] [--k 10] [--seed 1]

A simulated user examines position p with probability 1/log2(p + 1) and
clicks an examined item when it belongs to one of the user's planted
favourite categories (the sample's users.csv). Run it with the venv python
from scripts/setup.sh; then `vecrec-experiment report` reads the log.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vecrec_stubs import load_stubs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("addr", help="server address, e.g. 127.0.0.1:50051")
    ap.add_argument("--sample", required=True, type=Path,
                    help="a vecrec-sample directory (catalog.jsonl, users.csv)")
    ap.add_argument("--rounds", type=int, default=3, help="lists per user")
    ap.add_argument("--k", type=int, default=10, help="items per list")
    ap.add_argument("--seed", type=int, default=1, help="seed of the simulated clicks")
    args = ap.parse_args()

    category = {}
    with open(args.sample / "catalog.jsonl") as f:
        for line in f:
            item = json.loads(line)
            category[str(item["id"])] = set(item.get("categories", []))
    with open(args.sample / "users.csv") as f:
        users = [(r["user"], set(r["favourite_categories"].split("|")))
                 for r in csv.DictReader(f)]

    rng = random.Random(args.seed)
    pb, pb_grpc = load_stubs(tempfile.mkdtemp())
    stub = pb_grpc.RecommenderStub(grpc.insecure_channel(args.addr))
    lists = clicks = 0
    arms: dict[str, int] = {}
    for _ in range(args.rounds):
        for user, likes in users:
            r = stub.Recommend(pb.RecommendRequest(user_id=user, k=args.k), timeout=60)
            lists += 1
            arms[r.arm] = arms.get(r.arm, 0) + 1
            events = []
            for p, item in enumerate(r.items, start=1):
                examined = rng.random() < 1.0 / math.log2(p + 1)
                if examined and category.get(item.item_id, set()) & likes:
                    events.append(pb.Event(user_id=user, item_id=item.item_id,
                                           request_id=r.request_id, kind="click"))
            if events:
                stub.RecordEvents(pb.RecordEventsRequest(events=events), timeout=60)
                clicks += len(events)
    served = ", ".join(f"{a or 'no experiment'}: {n}" for a, n in sorted(arms.items()))
    print(f"{lists} lists ({served}), {clicks} clicks sent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
