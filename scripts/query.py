#!/usr/bin/env python3
"""A tiny command-line client for the vecrec gRPC service.

    query.py ADDR recommend USER_ID [K]
    query.py ADDR search "TEXT" [K]
    query.py ADDR similar ITEM_ID [K]

Run it with the venv python from scripts/setup.sh (it needs grpcio and
grpcio-tools). The Python stubs are generated from proto/vecrec/v1/vecrec.proto
into a temporary directory on every run, so they never go stale.
"""

from __future__ import annotations

import sys
import tempfile

import grpc

from vecrec_stubs import load_stubs
USAGE = __doc__.split("\n\n")[1]


def print_table(items) -> None:
    if not items:
        print("(no items)")
        return
    id_width = max(7, *(len(i.item_id) for i in items))
    print(f"{'#':>3}  {'score':>8}  {'item_id':<{id_width}}  title")
    for rank, item in enumerate(items, 1):
        print(f"{rank:>3}  {item.score:>8.4f}  {item.item_id:<{id_width}}  {item.title}")


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5) or argv[2] not in ("recommend", "search", "similar"):
        print(USAGE, file=sys.stderr)
        return 2
    addr, command, arg = argv[1], argv[2], argv[3]
    try:
        k = int(argv[4]) if len(argv) == 5 else 10
    except ValueError:
        print(f"error: K must be an integer, got {argv[4]!r}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="vecrec-stubs-") as tmp:
        pb2, pb2_grpc = load_stubs(tmp)
        with grpc.insecure_channel(addr) as channel:
            stub = pb2_grpc.RecommenderStub(channel)
            try:
                if command == "recommend":
                    label = f"recommend for user {arg!r}"
                    reply = stub.Recommend(pb2.RecommendRequest(user_id=arg, k=k), timeout=30)
                elif command == "search":
                    label = f"search {arg!r}"
                    reply = stub.SearchText(pb2.SearchTextRequest(query=arg, k=k), timeout=30)
                else:
                    label = f"items similar to {arg!r}"
                    reply = stub.SimilarItems(pb2.SimilarItemsRequest(item_id=arg, k=k), timeout=30)
            except grpc.RpcError as err:
                print(f"error: {command} at {addr}: {err.code().name}: {err.details()}", file=sys.stderr)
                return 1
    print(f"{label}, k={k}:")
    print_table(reply.items)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
