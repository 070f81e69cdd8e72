"""The seeded clustered set of the ANN benchmark: unit vectors in 384
dimensions drawn around 2,000 random centres (like sentence embeddings of a
catalogue), 200,000 base vectors and 1,000 queries from the same law, and the
exact top-100 neighbours by cosine similarity. Written as TEXMEX files:

    python make_clustered.py OUT_DIR [--n 200000] [--seed 42]

writes OUT_DIR/clustered200k_{base,query}.fvecs and _groundtruth.ivecs.
"""
import argparse
import os

import numpy as np


def write_fvecs(path, x):
    n, d = x.shape
    out = np.empty((n, d + 1), dtype=np.float32)
    out[:, 0] = np.array([d], dtype=np.int32).view(np.float32)[0]
    out[:, 1:] = x
    out.tofile(path)


def write_ivecs(path, x):
    n, d = x.shape
    out = np.empty((n, d + 1), dtype=np.int32)
    out[:, 0] = d
    out[:, 1:] = x
    out.tofile(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--centres", type=int, default=2_000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    centres = rng.standard_normal((a.centres, a.dim)).astype(np.float32)

    def draw(n):
        c = centres[rng.integers(0, a.centres, n)]
        x = c + 0.9 * rng.standard_normal((n, a.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    base = draw(a.n)
    queries = draw(a.queries)
    gt = np.empty((a.queries, 100), dtype=np.int32)
    for s in range(0, a.queries, 100):
        sims = queries[s:s + 100] @ base.T
        top = np.argpartition(-sims, 100, axis=1)[:, :100]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        gt[s:s + 100] = np.take_along_axis(top, order, axis=1)
    os.makedirs(a.out, exist_ok=True)
    name = f"clustered{a.n // 1000}k"
    write_fvecs(os.path.join(a.out, f"{name}_base.fvecs"), base)
    write_fvecs(os.path.join(a.out, f"{name}_query.fvecs"), queries)
    write_ivecs(os.path.join(a.out, f"{name}_groundtruth.ivecs"), gt)
    print(f"wrote {name} ({a.n} x {a.dim}, {a.queries} queries) to {a.out}")


if __name__ == "__main__":
    main()
