"""The real sentence-embedding set of the ANN benchmark ("debian60k"): the
descriptions of the packages in Debian's package index (bookworm, main,
amd64; read from apt's lists, so `apt-get update` must have run), embedded
with vecrec's own encoder (`vecrec embed`), with exact ground truth.

    python make_sentences.py OUT_DIR --vecrec target/release/vecrec [--queries 1000] [--seed 42]

Every package's description, short line and long text joined, is a
document; identical documents are kept once. A seeded draw of `--queries`
packages is held apart: their short lines (a few words, like a search box)
are the queries, and neither their documents nor any document equal to one
of their short lines is in the base. Writes OUT_DIR/debian60k_{base,query}.txt
(the texts), _base.fvecs and _query.fvecs (384-d unit vectors),
_groundtruth.ivecs (exact top 100 by cosine similarity) and meta.json (the
index file read, its SHA-256, the counts).
"""
import argparse
import glob
import hashlib
import json
import os
import re
import subprocess

import numpy as np

from make_clustered import write_ivecs  # the same directory

LISTS = "/var/lib/apt/lists"
INDEX = "*_debian_dists_bookworm_main_binary-amd64_Packages*"


def packages(path):
    """(name, short line, long text) of every stanza in a Packages file."""
    raw = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True, capture_output=True).stdout
    out = []
    for stanza in raw.decode("utf-8", "replace").split("\n\n"):
        name, short, long_lines, in_desc = None, None, [], False
        for line in stanza.split("\n"):
            if line.startswith("Package:"):
                name = line[8:].strip()
                in_desc = False
            elif line.startswith("Description:"):
                short = line[12:].strip()
                in_desc = True
            elif in_desc and line.startswith(" "):
                text = line.strip()
                long_lines.append("" if text == "." else text)
            else:
                in_desc = False
        if name and short:
            out.append((name, short, " ".join(t for t in long_lines if t)))
    return out


def clean(text):
    return re.sub(r"\s+", " ", text).strip()


def read_fvecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    d = int(raw[0])
    return raw.reshape(-1, d + 1)[:, 1:].view(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--vecrec", required=True, help="the vecrec binary (for `vecrec embed`)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    found = sorted(glob.glob(os.path.join(LISTS, INDEX)))
    if not found:
        raise SystemExit(f"no Debian package index under {LISTS}: run `apt-get update` first")
    index = found[0]
    with open(index, "rb") as f:
        index_sha = hashlib.sha256(f.read()).hexdigest()
    pkgs = sorted(packages(index))
    rng = np.random.default_rng(a.seed)
    held = set(rng.choice(len(pkgs), size=a.queries, replace=False).tolist())
    queries = [clean(pkgs[i][1]) for i in sorted(held)]
    held_docs = {clean(f"{pkgs[i][1]}. {pkgs[i][2]}") for i in held}
    banned = held_docs | set(queries)
    base, seen = [], set()
    for i, (_, short, long_text) in enumerate(pkgs):
        doc = clean(f"{short}. {long_text}" if long_text else short)
        if i in held or doc in seen or doc in banned:
            continue
        seen.add(doc)
        base.append(doc)
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, "debian60k")
    for kind, texts in (("base", base), ("query", queries)):
        with open(f"{stem}_{kind}.txt", "w") as f:
            f.write("\n".join(texts) + "\n")
    for kind in ("query", "base"):
        subprocess.run([a.vecrec, "embed", "--texts", f"{stem}_{kind}.txt", "--out", f"{stem}_{kind}.fvecs"], check=True)
    xb, xq = read_fvecs(f"{stem}_base.fvecs"), read_fvecs(f"{stem}_query.fvecs")
    gt = np.empty((len(xq), 100), dtype=np.int32)
    for s in range(0, len(xq), 100):
        sims = xq[s:s + 100] @ xb.T
        top = np.argpartition(-sims, 100, axis=1)[:, :100]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        gt[s:s + 100] = np.take_along_axis(top, order, axis=1)
    write_ivecs(f"{stem}_groundtruth.ivecs", gt)
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump({"index": os.path.basename(index), "index_sha256": index_sha, "packages": len(pkgs),
                   "base": len(base), "queries": len(queries), "dim": int(xb.shape[1]), "seed": a.seed}, f, indent=1)
    print(f"{len(base)} base texts, {len(queries)} queries, {xb.shape[1]} dimensions -> {a.out}")


if __name__ == "__main__":
    main()
