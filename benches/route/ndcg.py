"""NDCG@10 on ml-latest-small TEST through vecrec's gRPC API (EVAL.md §1):
for each user with a TEST item, Recommend(user_id, k=10) from an index built
on TRAIN (seen items, which are TRAIN's, are left out by the server), binary
gains, IDCG over min(10, |TEST_u|). Run against one node and against the
router over the shards, with the paired per-user difference.

    python ndcg.py --split DIR --one 127.0.0.1:P --routed 127.0.0.1:Q --out F.json
"""

import argparse
import csv
import json
import math
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from vecrec_stubs import load_stubs  # noqa: E402


def ndcg(ranked, relevant, k=10):
    dcg = sum(1.0 / math.log2(r + 2) for r, i in enumerate(ranked[:k]) if i in relevant)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return dcg / idcg


def mean_hw(xs):
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, 1.96 * sd / math.sqrt(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", required=True, type=Path)
    ap.add_argument("--one", required=True)
    ap.add_argument("--routed", required=True)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    test = defaultdict(set)
    with open(a.split / "test.csv") as f:
        for row in csv.DictReader(f):
            test[row["user"]].add(row["item"])
    with tempfile.TemporaryDirectory() as tmp:
        pb2, pb2_grpc = load_stubs(tmp)
        scores = {}
        lists = {}
        for name, addr in (("one", a.one), ("routed", a.routed)):
            stub = pb2_grpc.RecommenderStub(grpc.insecure_channel(addr))
            per_user = {}
            for u in sorted(test, key=int):
                r = stub.Recommend(pb2.RecommendRequest(user_id=u, k=10), timeout=30)
                if r.partial:
                    raise SystemExit(f"{name}: a partial answer for user {u}")
                ranked = [i.item_id for i in r.items]
                lists.setdefault(u, []).append(ranked)
                per_user[u] = ndcg(ranked, test[u])
            scores[name] = per_user
    users = sorted(test, key=int)
    identical = sum(1 for u in users if lists[u][0] == lists[u][1])
    one = [scores["one"][u] for u in users]
    routed = [scores["routed"][u] for u in users]
    diff = [r - o for r, o in zip(routed, one)]
    m1, h1 = mean_hw(one)
    m2, h2 = mean_hw(routed)
    md = sum(diff) / len(diff)
    out = {
        "users": len(users),
        "one_node_ndcg10": m1, "one_node_half_width": h1,
        "routed_ndcg10": m2, "routed_half_width": h2,
        "paired_difference": md,
        "identical_lists": identical,
    }
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
