#!/usr/bin/env python3
"""Drives a running vecrec server with the Python grpcio client, a client
nobody on this project wrote, to check the API from the outside.

    grpc_client_test.py ADDR [--wait SECONDS]

Run it with the venv python from scripts/setup.sh. The stubs are generated
from proto/vecrec/v1/vecrec.proto (found relative to this file) into a
temporary directory. Every check prints one line; the last line is
"N passed, M failed" and the exit status is 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "scripts"))
from vecrec_stubs import load_stubs  # noqa: E402
SERVICE = "vecrec.v1.Recommender"
METHODS = {"Recommend", "SimilarItems", "SearchText", "SearchVector", "Embed", "GetItem",
           "UpsertItems", "DeleteItems", "RecordEvents", "ShardSources", "UserEvents",
           "ItemStates"}
LIVE_ID = "py-live-item-1"
UNKNOWN_ID = "vecrec-test-no-such-item-7f3a"
QUERY = "space adventure"
K = 5
TIMEOUT_S = 60


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def reflection_call(channel: grpc.Channel, request) -> tuple[str, list]:
    """Sends one reflection request, on v1 first and then on v1alpha.

    grpcio-reflection ships only the v1alpha messages, but v1 is the same
    protocol under a new package name, so those messages serve both.
    """
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            return version, list(call(iter([request]), timeout=TIMEOUT_S))
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
    raise CheckFailed("server reflection is not served (neither v1 nor v1alpha)")


def expect_code(call, code: grpc.StatusCode) -> None:
    try:
        call()
    except grpc.RpcError as err:
        expect(err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}")
        return
    raise CheckFailed(f"expected {code.name}, the call succeeded")


def ids_of(items) -> list[str]:
    return [item.item_id for item in items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("addr", help="server address, host:port")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the server (default 30)")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="vecrec-stubs-")
    pb2, pb2_grpc = load_stubs(tmp.name)
    channel = grpc.insecure_channel(args.addr)
    stub = pb2_grpc.RecommenderStub(channel)
    state: dict[str, str] = {}
    passed = failed = 0

    def check(name: str):
        def run(fn):
            nonlocal passed, failed
            try:
                detail = fn()
            except CheckFailed as err:
                failed += 1
                print(f"FAIL {name}: {err}")
            except grpc.RpcError as err:
                failed += 1
                print(f"FAIL {name}: rpc failed: {err.code().name}: {err.details()}")
            except Exception:  # noqa: BLE001 - a broken check is a failed check
                failed += 1
                print(f"FAIL {name}: unexpected error\n{traceback.format_exc()}")
            else:
                passed += 1
                print(f"ok   {name}" + (f" ({detail})" if detail else ""))
            return fn
        return run

    def item_id() -> str:
        if "item" not in state:
            raise CheckFailed("no item id to work with (SearchText returned none)")
        return state["item"]

    try:
        grpc.channel_ready_future(channel).result(timeout=args.wait)
    except grpc.FutureTimeoutError:
        print(f"FAIL connect: no server at {args.addr} after {args.wait:g}s")
        print("0 passed, 1 failed")
        return 1

    @check("health: Check(\"\") is SERVING")
    def _():
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        expect(reply.status == health_pb2.HealthCheckResponse.SERVING, f"status is {status}")

    @check(f"reflection: lists {SERVICE}")
    def _():
        version, replies = reflection_call(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
        expect(len(replies) == 1, f"expected one reply, got {len(replies)}")
        reply = replies[0]
        expect(reply.HasField("list_services_response"), f"unexpected reply: {reply}")
        names = [s.name for s in reply.list_services_response.service]
        expect(SERVICE in names, f"services are {names}")
        return f"reflection {version}"

    @check(f"reflection: describes {SERVICE} with its {len(METHODS)} methods")
    def _():
        _, replies = reflection_call(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE))
        reply = replies[0]
        expect(reply.HasField("file_descriptor_response"), f"unexpected reply: {reply}")
        found: set[str] = set()
        for blob in reply.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)
            for svc in fdp.service:
                if f"{fdp.package}.{svc.name}" == SERVICE:
                    found = {m.name for m in svc.method}
        expect(found == METHODS, f"methods are {sorted(found)}, expected {sorted(METHODS)}")

    @check("Embed: 2 texts give 2 unit vectors of one dimension")
    def _():
        reply = stub.Embed(pb2.EmbedRequest(texts=["a space adventure", "a quiet romantic comedy"]), timeout=TIMEOUT_S)
        expect(len(reply.embeddings) == 2, f"got {len(reply.embeddings)} embeddings")
        dims = [len(e.values) for e in reply.embeddings]
        expect(dims[0] == dims[1] and dims[0] > 0, f"dimensions are {dims}")
        expect(reply.dim == dims[0], f"dim field is {reply.dim}, vectors have {dims[0]}")
        norms = [math.sqrt(sum(v * v for v in e.values)) for e in reply.embeddings]
        expect(all(abs(n - 1.0) < 1e-3 for n in norms), f"norms are {norms}")
        return f"dim {dims[0]}"

    @check(f"SearchText: {K} items, scores non-increasing")
    def _():
        reply = stub.SearchText(pb2.SearchTextRequest(query=QUERY, k=K), timeout=TIMEOUT_S)
        if reply.items:
            # Kept even if a check below fails, so the checks that need an
            # item id still run and report their own findings.
            state["item"] = reply.items[0].item_id
        expect(len(reply.items) == K, f"got {len(reply.items)} items for k={K}")
        scores = [item.score for item in reply.items]
        expect(all(b <= a + 1e-6 for a, b in zip(scores, scores[1:])), f"scores are {scores}")
        return f"top {state['item']!r}"

    @check("SearchVector: the query's embedding gives SearchText's answer")
    def _():
        vector = stub.Embed(pb2.EmbedRequest(texts=[QUERY]), timeout=TIMEOUT_S).embeddings[0].values
        by_vector = stub.SearchVector(pb2.SearchVectorRequest(vector=vector, k=K), timeout=TIMEOUT_S)
        by_text = stub.SearchText(pb2.SearchTextRequest(query=QUERY, k=K), timeout=TIMEOUT_S)
        got = [i.item_id for i in by_vector.items]
        want = [i.item_id for i in by_text.items]
        expect(got == want, f"SearchVector gave {got}, SearchText {want}")
        expect_code(lambda: stub.SearchVector(pb2.SearchVectorRequest(vector=[1.0, 2.0], k=K), timeout=TIMEOUT_S),
                    grpc.StatusCode.INVALID_ARGUMENT)
        return f"{len(got)} items"

    @check("GetItem: the top search hit, with a title")
    def _():
        wanted = item_id()
        reply = stub.GetItem(pb2.GetItemRequest(id=wanted), timeout=TIMEOUT_S)
        expect(reply.id == wanted, f"asked for {wanted!r}, got {reply.id!r}")
        expect(reply.title != "", "title is empty")
        return repr(reply.title)

    @check("SimilarItems: never the item itself")
    def _():
        wanted = item_id()
        reply = stub.SimilarItems(pb2.SimilarItemsRequest(item_id=wanted, k=10), timeout=TIMEOUT_S)
        expect(len(reply.items) > 0, "no items")
        expect(wanted not in ids_of(reply.items), f"{wanted!r} is in {ids_of(reply.items)}")

    @check("Recommend: history items are excluded")
    def _():
        wanted = item_id()
        reply = stub.Recommend(pb2.RecommendRequest(history=[wanted], k=10), timeout=TIMEOUT_S)
        expect(len(reply.items) > 0, "no items")
        expect(wanted not in ids_of(reply.items), f"{wanted!r} is in {ids_of(reply.items)}")

    @check("UpsertItems: a new item is found at once, DeleteItems removes it")
    def _():
        item = pb2.Item(id=LIVE_ID, title="Submarine cartography",
                        text="mapping the ocean floor with sonar from a small submarine",
                        categories=["science"])
        reply = stub.UpsertItems(pb2.UpsertItemsRequest(items=[item]), timeout=TIMEOUT_S)
        expect(reply.upserted == 1 and reply.sequence > 0, f"reply {reply}")
        got = stub.GetItem(pb2.GetItemRequest(id=LIVE_ID), timeout=TIMEOUT_S)
        expect(got.title == item.title, f"title {got.title!r}")
        hits = stub.SearchText(pb2.SearchTextRequest(query="sonar maps of the sea floor", k=3), timeout=TIMEOUT_S)
        expect(LIVE_ID in ids_of(hits.items), f"search found {ids_of(hits.items)}")
        stub.DeleteItems(pb2.DeleteItemsRequest(ids=[LIVE_ID]), timeout=TIMEOUT_S)
        expect_code(lambda: stub.GetItem(pb2.GetItemRequest(id=LIVE_ID), timeout=TIMEOUT_S),
                    grpc.StatusCode.NOT_FOUND)

    @check("GetItem: unknown id is NOT_FOUND")
    def _():
        expect_code(lambda: stub.GetItem(pb2.GetItemRequest(id=UNKNOWN_ID), timeout=TIMEOUT_S),
                    grpc.StatusCode.NOT_FOUND)

    @check("SimilarItems: unknown id is NOT_FOUND")
    def _():
        expect_code(lambda: stub.SimilarItems(pb2.SimilarItemsRequest(item_id=UNKNOWN_ID, k=5), timeout=TIMEOUT_S),
                    grpc.StatusCode.NOT_FOUND)

    @check("SearchText: k=100000 is INVALID_ARGUMENT")
    def _():
        expect_code(lambda: stub.SearchText(pb2.SearchTextRequest(query=QUERY, k=100000), timeout=TIMEOUT_S),
                    grpc.StatusCode.INVALID_ARGUMENT)

    @check("SearchText: empty query is INVALID_ARGUMENT")
    def _():
        expect_code(lambda: stub.SearchText(pb2.SearchTextRequest(query="", k=K), timeout=TIMEOUT_S),
                    grpc.StatusCode.INVALID_ARGUMENT)

    channel.close()
    tmp.cleanup()
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
