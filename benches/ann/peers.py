"""ANN peers on the same TEXMEX files as `vecrec-ann-bench`, printing the same
JSON lines: hnswlib; faiss-cpu's IndexHNSWFlat, HNSW over 8-bit scalar codes
with and without an exact refine stage, and fast-scan IVF-PQ with an exact
refine stage; usearch with f32, f16 and i8 vectors.

    python peers.py --backend B --base B --queries Q --gt G --metric l2 --m 16 \
        --ef-construction 200 --ef 10,16,32,64,128,256 --threads 2

Every contender is timed alike: the module is imported and the vectors
loaded before the build timer starts; the build uses --threads threads. The
index is saved, then searched in a fresh process on one thread (or on
--search-threads threads, for the batch table): ef (or
nprobe) is set before the timer, and each timed pass is one batch call with
all the queries (so no Python per-query cost is timed; vecrec's own search
is timed one query at a time in a Rust loop, which has none either).

Memory, in the build line: `disk_mb` the index's bytes on disk;
`rss_delta_mb` the search process's resident memory after the sweep minus
its resident memory before it opened the index (interpreter, modules,
queries and ground truth already loaded); `resident_mb` that process's
anonymous memory growth plus the index file's pages in the page cache after
the sweep (mincore), so memory-mapped and read-through indexes count what
they touch and nothing twice. The file's cached pages are dropped once the
index is open (fsync, then POSIX_FADV_DONTNEED; pages mapped and touched
stay), so pages left over from writing it do not count. `open_s` is the time
from the start of the load to the first answer (page cache warm), `open_mb`
the resident memory then.
"""
import os

# One BLAS thread: the faiss-cpu wheel's OpenBLAS threads otherwise contend
# with its OpenMP threads (a 10k-vector IVF-PQ took 53 s to build that way).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import mmap  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

K = 10
# The refine stages rescore this many times k candidates exactly, as
# vecrec's int8 walk does (3x oversampling).
REFINE = 3
BACKENDS = ["hnswlib", "faiss-hnsw", "faiss-hnsw-sq8", "faiss-hnsw-sq8-refine", "faiss-ivfpq-refine",
            "usearch", "usearch-f16", "usearch-i8"]


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


def status_mb(key):
    """A /proc/self/status memory line (VmRSS, RssAnon) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def cached_mb(path):
    """MB of `path` in the page cache now (mincore on a fresh mapping, which
    faults nothing in)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    with open(path, "rb") as f:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(b & 1 for b in vec) * mmap.PAGESIZE / 1e6
        finally:
            _libc.munmap(addr, size)


def drop_cached(path):
    """Drops the file's clean, unmapped pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def prepare(x, metric):
    if metric == "cosine":
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    return x


def faiss_factory(backend, n, d, m):
    if backend == "faiss-hnsw":
        return f"HNSW{m},Flat"
    if backend == "faiss-hnsw-sq8":
        return f"HNSW{m}_SQ8"
    if backend == "faiss-hnsw-sq8-refine":
        return f"HNSW{m}_SQ8,RFlat"
    nlist = max(16, int(4 * np.sqrt(n)))
    pq = max(k for k in (8, 16, 32, 48, 64, 96, 128) if d % k == 0 and k <= d // 2)
    # Fast-scan PQ (4-bit codes): the plain 8-bit PQ's training took 51 s on
    # 10k vectors here, fast-scan 0.3 s.
    return f"IVF{nlist},PQ{pq}x4fs,RFlat"


def import_backend(backend):
    if backend == "hnswlib":
        import hnswlib
        return hnswlib
    if backend.startswith("faiss"):
        import faiss
        return faiss
    from usearch.index import Index
    return Index


def build(backend, base, a, path):
    """Builds and saves; seconds of the build alone (imported beforehand)."""
    lib = import_backend(backend)
    n, d = base.shape
    t = time.perf_counter()
    if backend == "hnswlib":
        space = {"l2": "l2", "cosine": "cosine", "ip": "ip"}[a.metric]
        idx = lib.Index(space=space, dim=d)
        idx.init_index(max_elements=n, M=a.m, ef_construction=a.ef_construction, random_seed=1)
        idx.set_num_threads(a.threads)
        idx.add_items(base, np.arange(n))
        secs = time.perf_counter() - t
        idx.save_index(path)
    elif backend.startswith("faiss"):
        lib.omp_set_num_threads(a.threads)
        mt = lib.METRIC_L2 if a.metric == "l2" else lib.METRIC_INNER_PRODUCT
        idx = lib.index_factory(d, faiss_factory(backend, n, d, a.m), mt)
        hnsw = getattr(lib.downcast_index(idx.base_index) if backend.endswith("refine") else idx, "hnsw", None)
        if hnsw is not None:
            hnsw.efConstruction = a.ef_construction
        if not idx.is_trained:
            idx.train(base)
        idx.add(base)
        secs = time.perf_counter() - t
        lib.write_index(idx, path)
    else:
        metric = {"l2": "l2sq", "cosine": "cos", "ip": "ip"}[a.metric]
        dtype = {"usearch": "f32", "usearch-f16": "f16", "usearch-i8": "i8"}[backend]
        idx = lib(ndim=d, metric=metric, dtype=dtype, connectivity=a.m, expansion_add=a.ef_construction)
        idx.add(np.arange(n), base, threads=a.threads)
        secs = time.perf_counter() - t
        idx.save(path)
    return secs


def search(backend, a, path, dim, n):
    lib = import_backend(backend)
    queries = np.ascontiguousarray(prepare(read_vecs(a.queries), a.metric))
    gt = read_vecs(a.gt)[:, :K]
    rss0, anon0 = status_mb("VmRSS"), status_mb("RssAnon")
    st = a.search_threads
    t = time.perf_counter()
    if backend == "hnswlib":
        idx = lib.Index(space={"l2": "l2", "cosine": "cosine", "ip": "ip"}[a.metric], dim=dim)
        idx.load_index(path, max_elements=n)
        idx.set_num_threads(st)

        def set_ef(ef):
            idx.set_ef(max(ef, K))

        def batch(qs):
            return idx.knn_query(qs, k=K, num_threads=st)[0]
    elif backend.startswith("faiss"):
        lib.omp_set_num_threads(st)
        idx = lib.read_index(path, lib.IO_FLAG_MMAP)
        inner = lib.downcast_index(idx.base_index) if backend.endswith("refine") else idx
        if backend.endswith("refine"):
            idx.k_factor = REFINE

        def set_ef(ef):
            if backend.startswith("faiss-ivfpq"):
                lib.extract_index_ivf(inner).nprobe = max(1, ef // 4)
            else:
                inner.hnsw.efSearch = max(ef, K * (REFINE if backend.endswith("refine") else 1))

        def batch(qs):
            return idx.search(qs, K)[1]
    else:
        idx = lib.restore(path, view=True)

        def set_ef(ef):
            idx.expansion_search = max(ef, K)

        def batch(qs):
            return idx.search(qs, K, threads=st).keys
    set_ef(a.ef[0])
    batch(queries[:1])
    open_s = time.perf_counter() - t
    open_mb = status_mb("VmRSS")
    drop_cached(path)
    rows = []
    for ef in a.ef:
        set_ef(ef)
        found = batch(queries)
        hits = sum(len(set(map(int, f)) & set(map(int, g))) for f, g in zip(found, gt))
        done, t = 0, time.perf_counter()
        while True:
            batch(queries)
            done += len(queries)
            if time.perf_counter() - t >= 0.5:
                break
        rows.append({"backend": backend, "ef": ef, "search_threads": st,
                     "recall@10": hits / (len(queries) * K),
                     "qps": done / (time.perf_counter() - t)})
    rss_delta = status_mb("VmRSS") - rss0
    resident = status_mb("RssAnon") - anon0 + cached_mb(path)
    print(json.dumps({"mem_mb": status_mb("VmRSS"), "rss_delta_mb": rss_delta, "resident_mb": resident,
                      "open_s": open_s, "open_mb": open_mb}))
    for r in rows:
        print(json.dumps(r))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, choices=BACKENDS)
    p.add_argument("--base", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--metric", default="l2", choices=["l2", "cosine", "ip"])
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", default="10,16,32,64,128,256", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--search-threads", type=int, default=1,
                   help="threads of the timed batch searches (one by default)")
    p.add_argument("--round", type=int, default=1, help="round number, copied into every line")
    p.add_argument("--search-only", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.search_only:
        search(a.backend, a, a.search_only, a.dim, a.n)
        return
    base = np.ascontiguousarray(prepare(read_vecs(a.base), a.metric))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "index.bin")
        build_s = build(a.backend, base, a, path)
        disk_mb = os.path.getsize(path) / 1e6
        n, dim = base.shape
        del base
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--search-only", path, "--n", str(n), "--dim", str(dim)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"{a.backend}: the search process failed:\n{child.stderr}")
        out = child.stdout.splitlines()
    first = json.loads(out[0])
    print(json.dumps({"backend": a.backend, "event": "build", "round": a.round, "n": n, "dim": dim, "m": a.m,
                      "ef_construction": a.ef_construction, "threads": a.threads,
                      "search_threads": a.search_threads, "build_s": build_s,
                      "disk_mb": disk_mb, **first}))
    for line in out[1:]:
        print(json.dumps({**json.loads(line), "round": a.round}))


if __name__ == "__main__":
    main()
