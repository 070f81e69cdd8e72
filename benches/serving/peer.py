#!/usr/bin/env python3
"""Python peer of vecrec for the serving benchmark (benches/serving/run.sh).

Serves vecrec's own gRPC API (proto/vecrec/v1/vecrec.proto, service
vecrec.v1.Recommender) with grpcio + onnxruntime + faiss, on the same model and
data as vecrec's content-only index:

  - catalogue: every movieId in ratings.csv; text "title | genres[ | tags]",
    exactly as src/movielens.rs builds it;
  - encoder: all-MiniLM-L6-v2 (ONNX) with the HF tokenizer, truncation at 256
    tokens, mean pooling over the attention mask, L2-normalised;
  - index: faiss IndexHNSWFlat (M 16, efConstruction 200, efSearch 64, inner
    product on unit vectors = cosine), searched with ef = max(64, k);
  - users: the positives (rating >= 4) oldest first (ties by item id), the
    newest 20 weighted 0.7**a (a = steps before the newest), mean, normalised.

RPCs: SimilarItems, SearchText, Embed, Recommend, GetItem; the writes
(UpsertItems, DeleteItems, RecordEvents) answer UNIMPLEMENTED, as do
attribute filters. Limits as vecrec's defaults: k in 1..=1000 (0 means 10),
at most 256 texts per Embed, 8192 bytes per text, 1000 history items.

Encoding, as vecrec's server does it: --sessions ONNX Runtime sessions, each
run by its own worker thread that takes every request waiting (up to
--batch-texts texts, a request is never split) into one forward pass, so the
texts of concurrent requests share a pass; a request whose deadline has passed
when a worker takes it is answered DEADLINE_EXCEEDED without being encoded.
--no-batching instead encodes in the calling thread (sessions used round-robin).

The catalogue's embeddings (and the HNSW graph) are cached under --cache,
keyed by a hash of the model, the tokenizer and the texts, so only the first
start embeds the 9,724 texts (1-2 minutes on 2 cores).

Prints "peer listening on ADDR" on stdout once it serves; SIGTERM or SIGINT
stops it.

    .cache/serving-venv/bin/python benches/serving/peer.py --addr 127.0.0.1:50061
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import itertools
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VECREC_CACHE", REPO / ".cache"))
# The model as published (vecrec itself runs its W8A8 rewrite, $VECREC_MODEL;
# benches/serving/run.sh also runs this peer on that file, as a separate row).
DEFAULT_MODEL = os.environ.get("VECREC_MODEL_STOCK", str(CACHE / "models/minilm/model.onnx"))
DEFAULT_TOKENIZER = os.environ.get("VECREC_TOKENIZER", str(CACHE / "models/minilm/tokenizer.json"))
DEFAULT_MOVIELENS = REPO.parent / "shared/datasets/ml-latest-small"

DIM = 384
MAX_TOKENS = 256
HNSW_M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 64
PROFILE_ITEMS = 20
PROFILE_DECAY = 0.7
DEFAULT_K = 10
MAX_K = 1000
MAX_TEXTS = 256
MAX_TEXT_BYTES = 8192
MAX_HISTORY = 1000
BULK_BATCH = 32
READ_ONLY = "the peer is read-only: UpsertItems, DeleteItems and RecordEvents are not implemented"


def log(msg: str) -> None:
    print(f"peer: {msg}", file=sys.stderr, flush=True)


class Abort(Exception):
    """A request error: answered with a gRPC status code and message."""

    def __init__(self, code, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


# ---------------------------------------------------------------- data ----

def year_of(title: str):
    """The release year of a title such as "Heat (1995)" (as movielens.rs)."""
    t = title.rstrip()
    if not t.endswith(")"):
        return None
    inner = t[:-1]
    y = inner[-4:]
    if len(inner) >= 5 and inner[-5] == "(" and y.isascii() and y.isdigit():
        return float(y)
    return None


def _rows(path: Path):
    with open(path, newline="", encoding="utf-8") as f:
        r = csv.reader(f)
        next(r, None)
        yield from r


def load_movielens(d: Path):
    """Items and positives exactly as src/movielens.rs.

    Returns (items, positives): items is a list of dicts sorted by movieId
    (id, title, text, categories, tags, numeric); positives a list of
    (user, item, timestamp) integer triples with rating >= 4.0, file order.
    """
    rated = set()
    positives = []
    for row in _rows(d / "ratings.csv"):
        user, item, rating, ts = int(row[0]), int(row[1]), float(row[2]), int(row[3])
        rated.add(item)
        if rating >= 4.0:
            positives.append((user, item, ts))
    movies = {}
    for row in _rows(d / "movies.csv"):
        movies[int(row[0])] = (row[1] if len(row) > 1 else "", row[2] if len(row) > 2 else "")
    tags: dict[int, set] = {}
    if (d / "tags.csv").exists():
        for row in _rows(d / "tags.csv"):
            tags.setdefault(int(row[1]), set()).add(row[2] if len(row) > 2 else "")
    items = []
    for mid in sorted(rated):
        title, genres = movies.get(mid, ("", ""))
        tag_list = sorted(tags.get(mid, ()))  # code-point order = Rust's byte order
        text = f"{title} | {genres}"
        if tag_list:
            text += " | " + ", ".join(tag_list)
        y = year_of(title)
        items.append({
            "id": str(mid),
            "title": title,
            "text": text,
            "categories": [g for g in genres.split("|") if g and g != "(no genres listed)"],
            "tags": tag_list,
            "numeric": {"year": y} if y is not None else {},
        })
    return items, positives


# ------------------------------------------------------------- encoder ----

class Encoder:
    """Tokenizer plus ONNX Runtime sessions; encode() is thread-safe."""

    def __init__(self, model: str, tokenizer: str, sessions: int, threads: int, spin: bool):
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.np = np
        self.tok = Tokenizer.from_file(tokenizer)
        self.tok.no_padding()
        self.tok.enable_truncation(MAX_TOKENS)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.sessions = [
            ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
            for _ in range(sessions)
        ]
        names = {i.name for i in self.sessions[0].get_inputs()}
        self.type_ids = "token_type_ids" in names
        self._rr = itertools.count()

    def session(self):
        s = self.sessions
        return s[0] if len(s) == 1 else s[next(self._rr) % len(s)]

    def forward(self, encs, sess):
        """Unit vectors (len(encs), DIM) of tokenised texts, one pass padded to the longest."""
        np = self.np
        b = len(encs)
        if b == 1:
            ids = np.array(encs[0].ids, dtype=np.int64)[None, :]
            mask = np.ones_like(ids)
        else:
            n = max(len(e.ids) for e in encs)
            ids = np.zeros((b, n), np.int64)
            mask = np.zeros((b, n), np.int64)
            for r, e in enumerate(encs):
                m = len(e.ids)
                ids[r, :m] = e.ids
                mask[r, :m] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.type_ids:
            feed["token_type_ids"] = np.zeros_like(ids)
        h = sess.run(["last_hidden_state"], feed)[0]
        if b == 1:
            v = h.mean(axis=1)
        else:
            m = mask.astype(np.float32)
            v = np.einsum("bld,bl->bd", h, m) / m.sum(axis=1, keepdims=True)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v

    def encode(self, texts, sess=None, chunk: int = BULK_BATCH):
        """Unit vectors (len(texts), DIM) float32; more than `chunk` texts go in
        length-sorted passes of `chunk`."""
        np = self.np
        sess = sess or self.session()
        if len(texts) == 1:
            return self.forward([self.tok.encode(texts[0])], sess)
        encs = self.tok.encode_batch(list(texts))
        if len(encs) <= chunk:
            return self.forward(encs, sess)
        out = np.empty((len(encs), DIM), np.float32)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            out[part] = self.forward([encs[i] for i in part], sess)
        return out


class Job:
    __slots__ = ("texts", "deadline", "done", "arrived")

    def __init__(self, texts, deadline, done):
        self.texts = texts
        self.deadline = deadline
        self.done = done  # done(vectors, error)
        self.arrived = time.monotonic()


class DeadlinePassed(Exception):
    pass


class Batcher:
    """Dynamic batching as vecrec's encoder/batcher.rs: one worker thread per
    session; a free worker takes every waiting request up to `max_texts`
    texts (a request is never split); with `max_wait` > 0 and under load (a
    worker busy, or the last batch joined several requests) it waits up to
    that long from the oldest request's arrival for more."""

    def __init__(self, encoder: Encoder, max_texts: int, max_wait_s: float):
        self.enc = encoder
        self.max_texts = max_texts
        self.max_wait = max_wait_s
        self.queue = collections.deque()
        self.cv = threading.Condition(threading.Lock())
        self.busy = 0
        for i, sess in enumerate(encoder.sessions):
            threading.Thread(target=self._work, args=(sess,), name=f"encoder-{i}", daemon=True).start()

    def submit(self, job: Job) -> None:
        with self.cv:
            self.queue.append(job)
            self.cv.notify()

    def _take(self, joined_last: bool):
        q = self.queue
        with self.cv:
            while not q:
                self.cv.wait()
            batch = [q.popleft()]
            n = len(batch[0].texts)
            while True:
                while q and n + len(q[0].texts) <= self.max_texts:
                    j = q.popleft()
                    batch.append(j)
                    n += len(j.texts)
                if q or n >= self.max_texts or self.max_wait <= 0 or not (self.busy or joined_last):
                    break
                left = batch[0].arrived + self.max_wait - time.monotonic()
                if left <= 0:
                    break
                self.cv.wait(left)
            self.busy += 1
            if q:
                self.cv.notify()
        return batch

    def _work(self, sess) -> None:
        joined_last = False
        while True:
            batch = self._take(joined_last)
            try:
                now = time.monotonic()
                live = []
                for j in batch:
                    if j.deadline is not None and j.deadline <= now:
                        j.done(None, DeadlinePassed())
                    else:
                        live.append(j)
                joined_last = len(live) > 1
                if not live:
                    continue
                if len(live) == 1:
                    live[0].done(self.enc.encode(live[0].texts, sess, self.max_texts), None)
                    continue
                texts = [t for j in live for t in j.texts]
                vecs = self.enc.encode(texts, sess, self.max_texts)
                s = 0
                for j in live:
                    e = s + len(j.texts)
                    j.done(vecs[s:e], None)
                    s = e
            except Exception as e:  # noqa: BLE001 - handed to the callers
                for j in batch:
                    try:
                        j.done(None, e)
                    except Exception:  # noqa: BLE001
                        pass
            finally:
                with self.cv:
                    self.busy -= 1


# --------------------------------------------------------------- core -----

class Core:
    """Catalogue, vectors, index, user profiles; the RPC logic without gRPC."""

    def __init__(self, args, pb2, grpc):
        import faiss
        import numpy as np

        self.np, self.faiss, self.pb2, self.grpc = np, faiss, pb2, grpc
        t0 = time.monotonic()
        items, positives = load_movielens(args.movielens)
        self.items = items
        self.ids = [it["id"] for it in items]
        self.titles = [it["title"] for it in items]
        self.index_of = {iid: i for i, iid in enumerate(self.ids)}
        log(f"{len(items)} items, {len(positives)} positives from {args.movielens} "
            f"({time.monotonic() - t0:.1f}s)")

        cpus = os.cpu_count() or 1
        sessions = args.sessions or cpus
        threads = args.ort_threads or max(1, cpus // sessions)
        self.args = args
        self.encoder = Encoder(args.model, args.tokenizer, sessions, threads, args.ort_spin)
        log(f"encoder: {sessions} session(s) x {threads} intra-op thread(s), "
            f"spinning {'on' if args.ort_spin else 'off'}, "
            + (f"batching up to {args.batch_texts} texts, wait {args.batch_wait_us} us"
               if args.batching else "no batching"))

        key = self._cache_key(args)
        args.cache.mkdir(parents=True, exist_ok=True)
        self.vectors = self._item_vectors(args.cache / f"items-{key}.npy")
        self.index = self._hnsw(args.cache / f"hnsw-{key}-m{HNSW_M}-efc{EF_CONSTRUCTION}.faiss")
        faiss.omp_set_num_threads(1)  # one query per call; OpenMP would fight the gRPC threads

        self._profiles(positives)
        self.fallbacks = 0  # Recommend searches that had to over-fetch (not locked: a statistic)
        self.batcher = (Batcher(self.encoder, args.batch_texts, args.batch_wait_us / 1e6)
                        if args.batching else None)
        self.code = grpc.StatusCode
        log(f"ready in {time.monotonic() - t0:.1f}s")

    # -- start-up --

    def _cache_key(self, args) -> str:
        h = hashlib.sha256()
        for p in (args.model, args.tokenizer):
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(f"trunc{MAX_TOKENS}|mean|l2\n".encode())
        for iid, it in zip(self.ids, self.items):
            h.update(iid.encode())
            h.update(b"\t")
            h.update(it["text"].encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def _item_vectors(self, path: Path):
        np = self.np
        if path.exists():
            v = np.load(path)
            if v.shape == (len(self.items), DIM) and v.dtype == np.float32:
                log(f"item vectors from {path}")
                return np.ascontiguousarray(v)
            log(f"ignoring {path}: shape {v.shape} {v.dtype}")
        log(f"embedding {len(self.items)} item texts (cached afterwards in {path.parent})")
        t = time.monotonic()
        # a bulk session on every core (the serving sessions may have one thread each)
        bulk = Encoder(self.args.model, self.args.tokenizer, 1, os.cpu_count() or 1, True)
        v = bulk.encode([it["text"] for it in self.items]).astype(np.float32)
        del bulk
        log(f"embedded in {time.monotonic() - t:.1f}s")
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
        np.save(tmp, v)
        os.replace(tmp, path)
        return v

    def _hnsw(self, path: Path):
        faiss = self.faiss
        if path.exists():
            idx = faiss.read_index(str(path))
            if idx.ntotal == len(self.items) and idx.d == DIM:
                idx.hnsw.efSearch = EF_SEARCH
                log(f"HNSW graph from {path}")
                return idx
        t = time.monotonic()
        idx = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = EF_CONSTRUCTION
        idx.hnsw.efSearch = EF_SEARCH
        idx.add(self.vectors)
        log(f"HNSW built in {time.monotonic() - t:.1f}s")
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(idx, str(tmp))
        os.replace(tmp, path)
        return idx

    def _profiles(self, positives) -> None:
        np = self.np
        by_user: dict[int, list] = {}
        for u, i, ts in positives:
            idx = self.index_of.get(str(i))
            if idx is not None:
                by_user.setdefault(u, []).append((ts, idx))
        users = sorted(by_user)
        self.user_of = {str(u): n for n, u in enumerate(users)}
        self.profiles = np.empty((len(users), DIM), np.float32)
        self.exclusions = []
        for n, u in enumerate(users):
            h = sorted(by_user[u])
            hist = [i for _, i in h]
            self.profiles[n] = self._profile(hist)
            self.exclusions.append(self._exclusion(hist))
        log(f"{len(users)} user profiles")

    def _profile(self, hist):
        """Recency-weighted mean of the newest PROFILE_ITEMS of `hist` (oldest first), normalised."""
        np = self.np
        recent = hist[::-1][:PROFILE_ITEMS]
        w = PROFILE_DECAY ** np.arange(len(recent), dtype=np.float32)
        v = w @ self.vectors[recent]
        v /= np.linalg.norm(v)
        return v

    def _exclusion(self, hist):
        """(seen set, search parameters whose selector skips the seen items)."""
        faiss, np = self.faiss, self.np
        seen = np.unique(np.asarray(hist, dtype=np.int64))
        batch = faiss.IDSelectorBatch(seen)
        sel = faiss.IDSelectorNot(batch)
        params = faiss.SearchParametersHNSW()
        params.efSearch = EF_SEARCH
        params.sel = sel
        # keep the selectors alive as long as the parameters
        return (frozenset(seen.tolist()), params, (batch, sel, seen))

    def _search(self, x, n, excl=None):
        """Top n of the graph for the (1, DIM) query x, with ef = max(64, n) as
        vecrec (faiss itself does not raise ef to n); excl: skip its seen items."""
        if n <= EF_SEARCH:
            if excl is None:
                return self.index.search(x, n)
            return self.index.search(x, n, params=excl[1])
        params = self.faiss.SearchParametersHNSW()
        params.efSearch = n
        if excl is not None:
            params.sel = excl[2][1]
        return self.index.search(x, n, params=params)

    # -- checks --

    def k_of(self, k: int) -> int:
        if k == 0:
            return DEFAULT_K
        if k > MAX_K:
            raise Abort(self.code.INVALID_ARGUMENT, f"k = {k} is over the limit of {MAX_K}")
        return k

    def no_filter(self, req) -> None:
        if req.HasField("filter"):
            f = req.filter
            if f.categories_any or f.tags_all or f.ranges:
                raise Abort(self.code.UNIMPLEMENTED, "attribute filters are not supported by the peer")

    def check_text(self, text: str, what: str) -> None:
        if len(text) > MAX_TEXT_BYTES // 4 and len(text.encode()) > MAX_TEXT_BYTES:
            raise Abort(self.code.INVALID_ARGUMENT,
                        f"{what} has {len(text.encode())} bytes, over the limit of {MAX_TEXT_BYTES}")

    def item(self, item_id: str) -> int:
        i = self.index_of.get(item_id)
        if i is None:
            raise Abort(self.code.NOT_FOUND, f"unknown item {item_id!r}")
        return i

    # -- searches --

    def _scored(self, resp, D, I, k, skip=None):
        ids, titles = self.ids, self.titles
        add = resp.items.add
        n = 0
        for s, i in zip(D[0].tolist(), I[0].tolist()):
            if i < 0 or i == skip:
                continue
            add(item_id=ids[i], score=s, title=titles[i])
            n += 1
            if n == k:
                break
        return resp

    def similar(self, req):
        self.no_filter(req)
        k = self.k_of(req.k)
        i = self.item(req.item_id)
        D, I = self._search(self.vectors[i:i + 1], k + 1)
        return self._scored(self.pb2.SimilarItemsResponse(), D, I, k, skip=i)

    def search_prepare(self, req):
        if not req.query:
            raise Abort(self.code.INVALID_ARGUMENT, "the query is empty")
        self.check_text(req.query, "the query")
        self.no_filter(req)
        return self.k_of(req.k)

    def search_answer(self, vec, k):
        D, I = self._search(vec.reshape(1, DIM), k)
        return self._scored(self.pb2.SearchTextResponse(), D, I, k)

    def embed_prepare(self, req):
        texts = req.texts
        if not texts:
            raise Abort(self.code.INVALID_ARGUMENT, "no texts to embed")
        if len(texts) > MAX_TEXTS:
            raise Abort(self.code.INVALID_ARGUMENT,
                        f"{len(texts)} texts, over the limit of {MAX_TEXTS} per request")
        for n, t in enumerate(texts):
            self.check_text(t, f"text {n}")
        return list(texts)

    def embed_answer(self, vecs):
        pb2 = self.pb2
        return pb2.EmbedResponse(embeddings=[pb2.Embedding(values=v) for v in vecs.tolist()], dim=DIM)

    def recommend(self, req):
        np = self.np
        self.no_filter(req)
        k = self.k_of(req.k)
        if req.history:
            if len(req.history) > MAX_HISTORY:
                raise Abort(self.code.INVALID_ARGUMENT,
                            f"history has {len(req.history)} items, over the limit of {MAX_HISTORY}")
            hist = [self.item(i) for i in req.history]
            vec = self._profile(hist).reshape(1, DIM)
            excl = None if req.include_seen else self._exclusion(hist)
        elif req.user_id:
            u = self.user_of.get(req.user_id)
            if u is None:
                raise Abort(self.code.NOT_FOUND, f"unknown user {req.user_id!r}")
            vec = self.profiles[u:u + 1]
            excl = None if req.include_seen else self.exclusions[u]
        else:
            raise Abort(self.code.INVALID_ARGUMENT, "give a user_id or a non-empty history")
        resp = self.pb2.RecommendResponse()
        if excl is None:
            D, I = self._search(vec, k)
            return self._scored(resp, D, I, k)
        seen = excl[0]
        # The selector skips seen items inside the graph search; when the
        # graph's candidates run out first, over-fetch and drop them instead.
        D, I = self._search(vec, k, excl)
        if I[0, -1] < 0 and len(self.ids) - len(seen) > int((I[0] >= 0).sum()):
            self.fallbacks += 1
            D, I = self._search(vec, k + len(seen))
            keep = np.fromiter((i >= 0 and i not in seen for i in I[0].tolist()), bool, I.shape[1])
            D, I = D[:, keep], I[:, keep]
        return self._scored(resp, D, I, k)

    def get_item(self, req):
        it = self.items[self.item(req.id)]
        return self.pb2.GetItemResponse(id=it["id"], title=it["title"], text=it["text"],
                                        categories=it["categories"], tags=it["tags"],
                                        numeric=it["numeric"])


# -------------------------------------------------------------- servers ---

def deadline_of(context):
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def make_sync_servicer(core: Core, pb2_grpc, workers: int):
    code = core.code

    def encode(texts, context):
        deadline = deadline_of(context)
        if core.batcher is None:
            return core.encoder.encode(texts)
        lock = threading.Lock()
        lock.acquire()
        box = [None, None]

        def done(v, e):
            box[0], box[1] = v, e
            lock.release()

        core.batcher.submit(Job(texts, deadline, done))
        lock.acquire()
        if box[1] is not None:
            raise box[1]
        return box[0]

    def handle(context, f, *a):
        try:
            return f(*a)
        except Abort as e:
            context.abort(e.code, e.msg)
        except DeadlinePassed:
            context.abort(code.DEADLINE_EXCEEDED, "deadline passed before encoding")

    class Servicer(pb2_grpc.RecommenderServicer):
        def SimilarItems(self, req, context):
            return handle(context, core.similar, req)

        def SearchText(self, req, context):
            def run():
                k = core.search_prepare(req)
                return core.search_answer(encode([req.query], context)[0], k)
            return handle(context, run)

        def Embed(self, req, context):
            def run():
                return core.embed_answer(encode(core.embed_prepare(req), context))
            return handle(context, run)

        def Recommend(self, req, context):
            return handle(context, core.recommend, req)

        def GetItem(self, req, context):
            return handle(context, core.get_item, req)

        def UpsertItems(self, req, context):
            context.abort(code.UNIMPLEMENTED, READ_ONLY)

        def DeleteItems(self, req, context):
            context.abort(code.UNIMPLEMENTED, READ_ONLY)

        def RecordEvents(self, req, context):
            context.abort(code.UNIMPLEMENTED, READ_ONLY)

    return Servicer()


def make_aio_servicer(core: Core, pb2_grpc, workers: int):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    code = core.code
    pool = None if core.batcher is not None else ThreadPoolExecutor(max_workers=workers)

    def _settle(fut, v, e):
        if not fut.done():
            if e is not None:
                fut.set_exception(e)
            else:
                fut.set_result(v)

    async def encode(texts, context):
        loop = asyncio.get_running_loop()
        if pool is not None:
            return await loop.run_in_executor(pool, core.encoder.encode, texts)
        fut = loop.create_future()
        core.batcher.submit(Job(texts, deadline_of(context),
                                lambda v, e: loop.call_soon_threadsafe(_settle, fut, v, e)))
        return await fut

    class Servicer(pb2_grpc.RecommenderServicer):
        async def SimilarItems(self, req, context):
            try:
                return core.similar(req)
            except Abort as e:
                await context.abort(e.code, e.msg)

        async def SearchText(self, req, context):
            try:
                k = core.search_prepare(req)
                vec = (await encode([req.query], context))[0]
                return core.search_answer(vec, k)
            except Abort as e:
                await context.abort(e.code, e.msg)
            except DeadlinePassed:
                await context.abort(code.DEADLINE_EXCEEDED, "deadline passed before encoding")

        async def Embed(self, req, context):
            try:
                texts = core.embed_prepare(req)
                return core.embed_answer(await encode(texts, context))
            except Abort as e:
                await context.abort(e.code, e.msg)
            except DeadlinePassed:
                await context.abort(code.DEADLINE_EXCEEDED, "deadline passed before encoding")

        async def Recommend(self, req, context):
            try:
                return core.recommend(req)
            except Abort as e:
                await context.abort(e.code, e.msg)

        async def GetItem(self, req, context):
            try:
                return core.get_item(req)
            except Abort as e:
                await context.abort(e.code, e.msg)

        async def UpsertItems(self, req, context):
            await context.abort(code.UNIMPLEMENTED, READ_ONLY)

        async def DeleteItems(self, req, context):
            await context.abort(code.UNIMPLEMENTED, READ_ONLY)

        async def RecordEvents(self, req, context):
            await context.abort(code.UNIMPLEMENTED, READ_ONLY)

    return Servicer()


def serve_sync(core, grpc, pb2_grpc, args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.so_reuseport", 0)],
                         maximum_concurrent_rpcs=args.max_concurrent_rpcs)
    pb2_grpc.add_RecommenderServicer_to_server(make_sync_servicer(core, pb2_grpc, args.workers), server)
    bind(server, args.addr)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    server.start()
    print(f"peer listening on {args.addr}", flush=True)
    while not stop.wait(1.0):
        pass
    log(f"stopping ({core.fallbacks} Recommend over-fetches)")
    server.stop(grace=1.0).wait()


def serve_aio(core, grpc, pb2_grpc, args) -> None:
    import asyncio

    async def main():
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)],
                                 maximum_concurrent_rpcs=args.max_concurrent_rpcs)
        pb2_grpc.add_RecommenderServicer_to_server(make_aio_servicer(core, pb2_grpc, args.workers), server)
        bind(server, args.addr)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        await server.start()
        print(f"peer listening on {args.addr}", flush=True)
        await stop.wait()
        log(f"stopping ({core.fallbacks} Recommend over-fetches)")
        await server.stop(grace=1.0)

    asyncio.run(main())


def bind(server, addr: str) -> None:
    try:
        port = server.add_insecure_port(addr)
    except RuntimeError as e:
        raise SystemExit(f"error: cannot listen on {addr}: {e}")
    if port == 0:
        raise SystemExit(f"error: cannot listen on {addr}")


# ----------------------------------------------------------------- main ---

def parse_args(argv=None):
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(
        description="Python peer of vecrec for the serving benchmark: vecrec's gRPC API "
                    "(vecrec.v1.Recommender) served with grpcio + onnxruntime + faiss on the "
                    "same model and MovieLens data.",
        epilog="Prints 'peer listening on ADDR' on stdout once it serves; SIGTERM/SIGINT stop it. "
               "Model and tokenizer default to $VECREC_MODEL_STOCK (the model as published, "
               "not vecrec's W8A8 rewrite) / $VECREC_TOKENIZER, else "
               "$VECREC_CACHE/models/minilm/ (VECREC_CACHE defaults to <repo>/.cache).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--movielens", type=Path, default=DEFAULT_MOVIELENS,
                   help="ml-latest-small directory (ratings.csv, movies.csv, tags.csv)")
    p.add_argument("--addr", default="127.0.0.1:50061", help="host:port to listen on")
    p.add_argument("--server", choices=("aio", "sync"), default="aio",
                   help="grpc.aio (one event loop; encoding in the encoder workers) or the "
                        "thread-pool grpc.server")
    p.add_argument("--workers", type=int, default=2 * cpus,
                   help="sync server: gRPC thread-pool size; aio with --no-batching: encoding threads")
    p.add_argument("--sessions", type=int, default=0,
                   help="ONNX Runtime sessions (with batching, one worker thread each); 0 = one per core")
    p.add_argument("--ort-threads", type=int, default=0,
                   help="intra-op threads per session; 0 = the cores shared among the sessions "
                        f"(so {cpus} with --sessions 1)")
    p.add_argument("--ort-spin", action=argparse.BooleanOptionalAction, default=False,
                   help="let idle ONNX Runtime threads spin (off, as in vecrec's server: a "
                        "spinning thread takes the core from the gRPC threads)")
    p.add_argument("--batching", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batching: join the texts of concurrent SearchText/Embed requests "
                        "into one forward pass (as vecrec's server)")
    p.add_argument("--batch-texts", type=int, default=32,
                   help="most texts per forward pass (also the chunk size of large Embed requests)")
    p.add_argument("--batch-wait-us", type=int, default=0,
                   help="with batching, under load, wait up to this long from the oldest "
                        "request's arrival for more texts (0: take what is queued)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=None,
                   help="answer RESOURCE_EXHAUSTED beyond this many RPCs in flight (None: no limit)")
    p.add_argument("--cache", type=Path, default=REPO / ".cache/bench-data/serving/peer",
                   help="where catalogue embeddings (.npy) and the HNSW graph are cached, keyed "
                        "by a hash of model, tokenizer and texts")
    p.add_argument("--model", default=DEFAULT_MODEL, help="ONNX model")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer.json")
    args = p.parse_args(argv)
    for name in ("workers", "batch_texts"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("sessions", "ort_threads", "batch_wait_us"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be at least 0")
    for f in (args.movielens / "ratings.csv", args.movielens / "movies.csv",
              Path(args.model), Path(args.tokenizer)):
        if not f.is_file():
            p.error(f"{f} not found")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "scripts"))
    from vecrec_stubs import load_stubs

    import grpc

    with tempfile.TemporaryDirectory(prefix="vecrec-peer-stubs-") as stubs:
        pb2, pb2_grpc = load_stubs(stubs)
        core = Core(args, pb2, grpc)
        if args.server == "aio":
            serve_aio(core, grpc, pb2_grpc, args)
        else:
            serve_sync(core, grpc, pb2_grpc, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
