"""The recall ceiling of 8-bit scalar codes on a set: rank every base row
by its distance on the codes (brute force, no graph) and count how many of
the exact 10 nearest come back. An index that ranks its answer on the same
codes ends near this figure however wide its beam (its recall curve
flattens there), since it orders the rows it finds by these distances.

    .cache/bench-venv/bin/python benches/ann/code_ceiling.py DIR NAME
    (e.g. DIR = .cache/bench-data/debian60k, NAME = debian60k)

Reads DIR/NAME_{base,query}.fvecs and _groundtruth.ivecs (cosine sets: the
vectors are unit length, the score is the dot product). Quantisers:
  global           one scale (99.99th percentile of |x| / 127) for base and
                   query, as vecrec's int8 codes (here the percentile of
                   every value, vecrec's of a sample);
  global, query    the same base codes, the query with a scale of its own;
  per-dimension    each dimension divided by its own 99.99th percentile
                   first (the query multiplied by it), query scale of its own;
  per-dimension,   the same base codes against the f32 query;
  f32 query
  per-dimension    per-dimension min/max to a grid of 256 values (near
  min/max          faiss SQ8's scheme), the f32 query.
"""
import sys

import numpy as np


def fvecs(path):
    a = np.fromfile(path, dtype=np.int32)
    return a.reshape(-1, a[0] + 1)[:, 1:].view(np.float32).copy()


def ivecs(path):
    a = np.fromfile(path, dtype=np.int32)
    return a.reshape(-1, a[0] + 1)[:, 1:]


def q8(a, s):
    return np.clip(np.round(a / s), -127, 127).astype(np.float32)


def main():
    d, name = sys.argv[1], sys.argv[2]
    x = fvecs(f"{d}/{name}_base.fvecs")
    q = fvecs(f"{d}/{name}_query.fvecs")
    gt = ivecs(f"{d}/{name}_groundtruth.ivecs")[:, :10]

    def recall(scores):
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        return np.mean([len(set(t) & set(g)) / 10 for t, g in zip(top, gt)])

    x = x.astype(np.float32)
    q = q.astype(np.float32)
    s = np.percentile(np.abs(x), 99.99) / 127
    sq = np.abs(q).max(1, keepdims=True) / 127
    w = np.percentile(np.abs(x), 99.99, axis=0)
    w = np.maximum(w, w.max() * 1e-6)
    xw, qw = x / w, q * w
    sw = np.percentile(np.abs(xw), 99.99) / 127
    sqw = np.abs(qw).max(1, keepdims=True) / 127
    lo, hi = x.min(0), x.max(0)
    step = np.maximum(hi - lo, 1e-12) / 255
    # Each score matrix is made, scored and dropped in turn (each is
    # queries × rows).
    rows = [
        ("exact (f32)", lambda: q @ x.T),
        ("global", lambda: q8(q, s) @ q8(x, s).T),
        ("global, query", lambda: (q8(q, sq) * sq) @ q8(x, s).T),
        ("per-dimension", lambda: (q8(qw, sqw) * sqw) @ q8(xw, sw).T),
        ("per-dimension, f32 query", lambda: qw @ q8(xw, sw).T),
        ("per-dimension min/max", lambda: q @ (lo + step * np.round((x - lo) / step)).T),
    ]
    print(f"{name}: {x.shape[0]} × {x.shape[1]}, {q.shape[0]} queries; "
          "recall@10 of brute force on the codes")
    for label, scores in rows:
        print(f"{label:28s} {recall(scores().astype(np.float32)):.4f}")


if __name__ == "__main__":
    main()
