"""ANN peers on the same TEXMEX files as `vecrec-ann-bench`, printing the same
JSON lines: hnswlib, faiss-cpu (IndexHNSWFlat and IVF-PQ) and usearch.

    python peers.py --base B --queries Q --gt G --metric l2 --m 16 \
        --ef-construction 200 --ef 10,16,32,64,128,256 --threads 2

Build uses --threads threads; queries run one at a time on one thread (the
single-query figure). `mem_mb` is the resident memory of a fresh process after
loading the saved index and running the sweep; `open_s` the time from the start
of that load to the first answer, `open_mb` the resident memory then.
"""
import os

# One BLAS thread: the faiss-cpu wheel's OpenBLAS threads otherwise contend
# with its OpenMP threads (a 10k-vector IVF-PQ took 53 s to build that way).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

K = 10


def read_vecs(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if path.endswith(".bvecs"):
        dim = int(np.frombuffer(raw[:4].tobytes(), np.int32)[0])
        return raw.reshape(-1, dim + 4)[:, 4:].astype(np.float32)
    kind = np.int32 if path.endswith(".ivecs") else np.float32
    arr = raw.view(np.int32)
    dim = int(arr[0])
    out = arr.reshape(-1, dim + 1)[:, 1:]
    return out.view(kind) if kind is np.float32 else out


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def prepare(x, metric):
    if metric == "cosine":
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(backend, base, a, path):
    d = base.shape[1]
    t = time.perf_counter()
    if backend == "hnswlib":
        import hnswlib
        space = {"l2": "l2", "cosine": "cosine", "ip": "ip"}[a.metric]
        idx = hnswlib.Index(space=space, dim=d)
        idx.init_index(max_elements=len(base), M=a.m, ef_construction=a.ef_construction, random_seed=1)
        idx.set_num_threads(a.threads)
        idx.add_items(base, np.arange(len(base)))
        secs = time.perf_counter() - t
        idx.save_index(path)
    elif backend.startswith("faiss"):
        import faiss
        faiss.omp_set_num_threads(a.threads)
        mt = faiss.METRIC_L2 if a.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if backend == "faiss-hnsw":
            idx = faiss.IndexHNSWFlat(d, a.m, mt)
            idx.hnsw.efConstruction = a.ef_construction
        else:
            nlist = max(16, int(4 * np.sqrt(len(base))))
            pq = max(m for m in (8, 16, 32, 48, 64) if d % m == 0 and m <= d // 2)
            # Fast-scan PQ (4-bit codes): the plain 8-bit PQ's training took
            # 51 s on 10k vectors here, fast-scan 0.3 s.
            idx = faiss.index_factory(d, f"IVF{nlist},PQ{pq}x4fs", mt)
            idx.train(base)
        idx.add(base)
        secs = time.perf_counter() - t
        faiss.write_index(idx, path)
    elif backend == "usearch":
        from usearch.index import Index
        metric = {"l2": "l2sq", "cosine": "cos", "ip": "ip"}[a.metric]
        idx = Index(ndim=d, metric=metric, dtype="f32", connectivity=a.m, expansion_add=a.ef_construction)
        idx.add(np.arange(len(base)), base, threads=a.threads)
        secs = time.perf_counter() - t
        idx.save(path)
    else:
        raise SystemExit(f"unknown backend {backend}")
    return secs


def search(backend, a, path, dim, n):
    queries = prepare(read_vecs(a.queries), a.metric)
    gt = read_vecs(a.gt)[:, :K]
    t = time.perf_counter()
    if backend == "hnswlib":
        import hnswlib
        idx = hnswlib.Index(space={"l2": "l2", "cosine": "cosine", "ip": "ip"}[a.metric], dim=dim)
        idx.load_index(path, max_elements=n)
        idx.set_num_threads(1)
        def one(q, ef):
            idx.set_ef(max(ef, K))
            return idx.knn_query(q, k=K)[0][0]
    elif backend.startswith("faiss"):
        import faiss
        faiss.omp_set_num_threads(1)
        idx = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        def one(q, ef):
            if backend == "faiss-hnsw":
                idx.hnsw.efSearch = max(ef, K)
            else:
                faiss.extract_index_ivf(idx).nprobe = max(1, ef // 4)
            return idx.search(q[None, :], K)[1][0]
    else:
        from usearch.index import Index
        idx = Index.restore(path, view=True)
        def one(q, ef):
            idx.expansion_search = max(ef, K)
            return idx.search(q, K, threads=1).keys
    one(queries[0], a.ef[0])
    open_s = time.perf_counter() - t
    open_mb = rss_mb()
    rows = []
    for ef in a.ef:
        found = [one(q, ef) for q in queries]
        hits = sum(len(set(map(int, f)) & set(map(int, g))) for f, g in zip(found, gt))
        done, t = 0, time.perf_counter()
        while time.perf_counter() - t < 0.5:
            for q in queries:
                one(q, ef)
            done += len(queries)
        rows.append({"backend": backend, "ef": ef, "recall@10": hits / (len(queries) * K), "qps": done / (time.perf_counter() - t)})
    print(json.dumps({"mem_mb": rss_mb(), "open_s": open_s, "open_mb": open_mb}))
    for r in rows:
        print(json.dumps(r))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, choices=["hnswlib", "faiss-hnsw", "faiss-ivfpq", "usearch"])
    p.add_argument("--base", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--metric", default="l2", choices=["l2", "cosine", "ip"])
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", default="10,16,32,64,128,256", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--search-only", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.search_only:
        search(a.backend, a, a.search_only, a.dim, a.n)
        return
    base = prepare(read_vecs(a.base), a.metric)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "index.bin")
        build_s = build(a.backend, base, a, path)
        n, dim = base.shape
        del base
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--search-only", path, "--n", str(n), "--dim", str(dim)],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    first = json.loads(out[0])
    print(json.dumps({"backend": a.backend, "event": "build", "n": n, "dim": dim, "m": a.m, "ef_construction": a.ef_construction,
                      "threads": a.threads, "build_s": build_s, "mem_mb": first["mem_mb"], "open_s": first["open_s"],
                      "open_mb": first["open_mb"]}))
    for line in out[1:]:
        print(line)


if __name__ == "__main__":
    main()
