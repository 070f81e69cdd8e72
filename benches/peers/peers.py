"""Recommendation peers under the EVAL.md section 1 protocol (MovieLens
ml-latest-small, per-user temporal split, full ranking).

Six peers, each tuned on VALIDATION (fit on val_train.csv, scored on val.csv,
NDCG@10) over a small grid, then refitted on TRAIN with the chosen setting and
scored once on TEST (fit on train.csv, scored on test.csv):

  Popularity            count of fit-set interactions per item
  ItemKNN (cosine)      item-item cosine, top-k neighbours kept per item;
                        score(u, j) = sum over the user's items i of sim_k(i, j)
  EASE                  Steck 2019, closed form, lambda grid
  implicit ALS          `implicit` 0.7.3, raw user_factors @ item_factors.T
  MiniLM content        published MiniLM (ONNX) item-text vectors; user
                        profile = mean of the last n fit-set items
  EASE + MiniLM content per-user min-max score fusion of the two above

Ranking (as src/eval): every catalogue item is scored, the user's fit-set
items are dropped, items are ranked by score descending with ties broken by
the lower item id, and the top 10/20 are kept. Metrics match
src/eval/metrics.rs (R = min(K, |truth|)).

Writes <out>/peers.json and <out>/peers.md; progress and timings go to stderr.
Run it through benches/peers/run.sh, which sets up the pinned venv.
"""
import argparse
import csv
import hashlib
import json
import os
import sys
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.abspath(os.environ.get("VECREC_SHARED", os.path.join(REPO, "..", "shared")))
CACHE = os.environ.get("VECREC_CACHE", os.path.join(REPO, ".cache"))
KS = (10, 20)
SPLIT_FILES = ("val_train.csv", "val.csv", "train.csv", "test.csv")
ALL_PEERS = ("popularity", "itemknn", "ease", "als", "content", "fusion")
T0 = time.perf_counter()


def log(msg):
    """Progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def read_interactions(path):
    """(user, item, timestamp) int64 columns of a split csv."""
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return a[:, 0], a[:, 1], a[:, 2]


class Split:
    """One fit/evaluation pair (val_train -> val, or train -> test).

    Items are indexed in ascending item-id order, so "ties broken by the lower
    item id" is "ties broken by the lower column index". Users are indexed in
    ascending user-id order over the union of the fit and evaluation users.
    """

    def __init__(self, name, fit_path, eval_path, catalogue):
        self.name = name
        self.catalogue = catalogue  # sorted item ids
        n_items = len(catalogue)
        fu, fi, ft = read_interactions(fit_path)
        eu, ei, _ = read_interactions(eval_path)
        self.users = np.unique(np.concatenate([fu, eu]))
        fu_row = np.searchsorted(self.users, fu)
        fi_col = np.searchsorted(catalogue, fi)
        ei_col = np.searchsorted(catalogue, ei)
        assert (catalogue[fi_col] == fi).all() and (catalogue[ei_col] == ei).all(), "item outside the catalogue"
        # Binary user x item matrix of the fit set.
        self.X = sp.csr_matrix(
            (np.ones(len(fu), np.float64), (fu_row, fi_col)), shape=(len(self.users), n_items))
        self.X.sum_duplicates()
        self.X.data[:] = 1.0
        # Fit-set interactions of each user ordered by (timestamp, item id):
        # the content profile takes the last n of them.
        order = np.lexsort((fi, ft, fu))
        self.history = [[] for _ in self.users]
        for r, c in zip(fu_row[order], fi_col[order]):
            self.history[r].append(c)
        # Evaluated users: every user with a held-out item, ascending id.
        self.eval_users = np.unique(eu)
        self.eval_rows = np.searchsorted(self.users, self.eval_users)
        eval_pos = np.searchsorted(self.eval_users, eu)
        self.truth = np.zeros((len(self.eval_users), n_items), bool)
        self.truth[eval_pos, ei_col] = True
        # Items a user may not be recommended: their fit-set items.
        self.excluded = self.X[self.eval_rows].toarray() > 0
        log(f"{name}: {self.X.nnz} fit interactions, {len(self.users)} users, "
            f"{len(self.eval_users)} evaluated users, {int(self.truth.sum())} held-out items")

    @property
    def X_eval(self):
        """Fit-set rows of the evaluated users."""
        return self.X[self.eval_rows]


# --------------------------------------------------------------------------
# Ranking and metrics (src/eval/metrics.rs)
# --------------------------------------------------------------------------

def top_k(split, scores, k=max(KS)):
    """Top-k item columns per evaluated user: fit-set items dropped, score
    descending, ties to the lower item id (stable sort of -score)."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    assert scores.shape == split.excluded.shape
    assert np.isfinite(scores).all(), "non-finite score"
    scores[split.excluded] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert not split.excluded[np.arange(len(order))[:, None], order].any(), "too few candidates"
    return order


def evaluate(split, scores):
    """Per-user metrics at K = 10, 20 and the top-10 lists, as in metrics.rs."""
    top = top_k(split, scores)
    n = len(top)
    hits = split.truth[np.arange(n)[:, None], top]  # (users, 20) bool
    n_truth = split.truth.sum(1)
    per_user = {}
    for k in KS:
        h = hits[:, :k]
        r = np.minimum(k, n_truth)
        pos = np.arange(k)
        disc = 1.0 / np.log2(pos + 2.0)
        dcg = (h * disc).sum(1)
        idcg = np.array([disc[:ri].sum() for ri in r])
        n_hits = h.sum(1)
        hits_so_far = np.cumsum(h, axis=1)
        ap = (h * hits_so_far / (pos + 1.0)).sum(1) / r
        per_user[f"ndcg@{k}"] = dcg / idcg
        per_user[f"recall@{k}"] = n_hits / r
        per_user[f"precision@{k}"] = n_hits / k
        per_user[f"hit_rate@{k}"] = (n_hits > 0).astype(np.float64)
        per_user[f"ap@{k}"] = ap
    return per_user, top[:, :10]


def summarise(split, per_user, top10):
    """The Rust side's Summary (same key spelling)."""
    def mean(x):
        return float(np.mean(x))

    n = len(per_user["ndcg@10"])
    sd = float(np.std(per_user["ndcg@10"], ddof=1)) if n > 1 else 0.0
    out = {"ndcg@10": mean(per_user["ndcg@10"]), "ndcg@10_ci95": 1.96 * sd / np.sqrt(max(n, 1)),
           "ndcg@20": mean(per_user["ndcg@20"])}
    for k in KS:
        out[f"recall@{k}"] = mean(per_user[f"recall@{k}"])
    for k in KS:
        out[f"precision@{k}"] = mean(per_user[f"precision@{k}"])
    for k in KS:
        p, r = out[f"precision@{k}"], out[f"recall@{k}"]
        out[f"f1@{k}"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
    for k in KS:
        out[f"hit_rate@{k}"] = mean(per_user[f"hit_rate@{k}"])
    for k in KS:
        out[f"map@{k}"] = mean(per_user[f"ap@{k}"])
    out["coverage@10"] = len(np.unique(top10)) / len(split.catalogue)
    out["users"] = n
    return out


# --------------------------------------------------------------------------
# Peers. Each `fit_*` takes a Split and returns a function params -> scores
# (evaluated users x catalogue, float64), sharing the work common to a grid.
# --------------------------------------------------------------------------

def fit_popularity(split):
    counts = np.asarray(split.X.sum(0)).ravel()
    return lambda params: np.broadcast_to(counts, split.excluded.shape)


def active_items(split):
    """Items with at least one fit-set interaction. Items without any have an
    all-zero Gram row/column: their EASE and cosine weights are exactly zero,
    so the models are solved on the active block only (same scores, much
    smaller matrices)."""
    return np.flatnonzero(np.asarray(split.X.sum(0)).ravel() > 0)


def scatter(split, active, block):
    """Scores of the active items -> full catalogue (zeros elsewhere)."""
    full = np.zeros(split.excluded.shape)
    full[:, active] = block
    return full


def fit_itemknn(split):
    """Cosine item-item similarities, only the k largest kept per item (ties to
    the lower item id). Two readings of "top-k neighbours per item", chosen
    on validation like k:
      neighbours="candidate": score(u, j) = sum over the user's items i among
        the k nearest neighbours of the candidate j of sim(i, j) (classic
        item-based kNN; this is the variant of EVAL.md's ItemKNN figures);
      neighbours="history": score(u, j) = sum over the user's items i of
        sim(i, j) where j is among the k nearest neighbours of i.
    """
    act = active_items(split)
    Xa = split.X[:, act]
    C = (Xa.T @ Xa).toarray()
    norms = np.sqrt(np.diag(C))
    S = C / np.outer(norms, norms)
    np.fill_diagonal(S, 0.0)  # an item is not its own neighbour
    # Neighbours of each item by similarity, ties to the lower item id.
    order = np.argsort(-S, axis=1, kind="stable")
    Xe = split.X_eval[:, act]
    rows = np.arange(len(act))[:, None]

    def scores(params):
        k = params["k"]
        Sk = np.zeros_like(S)  # row i: sim(i, .) on the k nearest neighbours of i
        Sk[rows, order[:, :k]] = S[rows, order[:, :k]]
        # S is symmetric, so column j of Sk.T holds sim(., j) on the k
        # nearest neighbours of j.
        W = Sk.T if params["neighbours"] == "candidate" else Sk
        return scatter(split, act, Xe @ W)
    return scores


def fit_ease(split):
    act = active_items(split)
    Xa = split.X[:, act]
    G = (Xa.T @ Xa).toarray()
    Xe = split.X_eval[:, act]
    diag = np.arange(len(act))

    def scores(params):
        lam = float(params["lambda"])
        A = G.copy()
        A[diag, diag] += lam
        P = np.linalg.inv(A)
        B = -P / np.diag(P)[None, :]
        B[diag, diag] = 0.0
        return scatter(split, act, Xe @ B)
    return scores


def fit_als(split, threads):
    from implicit.cpu.als import AlternatingLeastSquares
    user_items = split.X.astype(np.float32).tocsr()

    def scores(params):
        # implicit asks for single-threaded BLAS (its own threads do the work;
        # it checks at construction and in fit).
        with threadpool_limits(limits=1, user_api="blas"):
            model = AlternatingLeastSquares(
                factors=params["factors"], regularization=float(params["regularization"]),
                iterations=params["iterations"], random_state=0, num_threads=threads)
            model.fit(user_items, show_progress=False)
        U = np.asarray(model.user_factors, np.float64)[split.eval_rows]
        V = np.asarray(model.item_factors, np.float64)
        return U @ V.T
    return scores


def embed_items(split_dir, model_path, tokenizer_path, cache_dir, threads, batch=32):
    """Unit-norm MiniLM vectors of item_text.csv in catalogue order, cached
    under cache_dir keyed by the model's (and the texts') sha256."""
    text_path = os.path.join(split_dir, "item_text.csv")
    key = f"minilm-{sha256_file(model_path)[:16]}-{sha256_file(text_path)[:16]}.npy"
    path = os.path.join(cache_dir, key)
    if os.path.exists(path):
        log(f"content: item vectors from cache {path}")
        return np.load(path)
    import onnxruntime as ort
    from tokenizers import Tokenizer

    with open(text_path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    ids = [int(r[0]) for r in rows]
    assert ids == sorted(ids), "item_text.csv is not in item-id order"
    texts = [r[1] for r in rows]
    tok = Tokenizer.from_file(tokenizer_path)
    tok.no_padding()
    tok.enable_truncation(256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    log(f"content: embedding {len(texts)} texts with {model_path} (inputs {sorted(inputs)})")
    encs = tok.encode_batch(texts)
    out = np.zeros((len(texts), 0), np.float32)
    # Length-sorted batches: less padding, same vectors.
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
    t = time.perf_counter()
    for s in range(0, len(order), batch):
        chunk = order[s:s + batch]
        n = max(len(encs[i].ids) for i in chunk)
        tid = np.zeros((len(chunk), n), np.int64)
        mask = np.zeros_like(tid)
        for r, i in enumerate(chunk):
            tid[r, :len(encs[i].ids)] = encs[i].ids
            mask[r, :len(encs[i].ids)] = 1
        feed = {"input_ids": tid, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(tid)
        h = sess.run(["last_hidden_state"], feed)[0]
        # Mean pooling over the attention mask, then L2 normalisation.
        v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        if out.shape[1] == 0:
            out = np.zeros((len(texts), v.shape[1]), np.float32)
        out[chunk] = v
        if (s // batch) % 50 == 0:
            log(f"content: {s + len(chunk)}/{len(texts)} texts embedded")
    log(f"content: embedded in {time.perf_counter() - t:.1f}s; cached at {path}")
    os.makedirs(cache_dir, exist_ok=True)
    np.save(path + ".tmp.npy", out)
    os.replace(path + ".tmp.npy", path)
    return out


def fit_content(split, E):
    assert E.shape[0] == len(split.catalogue)
    E = E.astype(np.float64)

    def scores(params):
        n = params["last_n"]
        profiles = np.zeros((len(split.eval_rows), E.shape[1]))
        for u, row in enumerate(split.eval_rows):
            last = split.history[row][-n:]
            if last:  # no fit-set items: all-zero scores
                p = E[last].mean(0)
                profiles[u] = p / max(np.linalg.norm(p), 1e-12)
        return profiles @ E.T  # cosine with the profile (E is unit-norm)
    return scores


def minmax_per_user(split, scores):
    """Min-max normalise each user's scores over the items that user can be
    recommended (the fit-set items are left out of min and max); a constant
    row becomes 0."""
    masked = np.where(split.excluded, np.nan, scores)
    lo = np.nanmin(masked, axis=1, keepdims=True)
    hi = np.nanmax(masked, axis=1, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (scores - lo) / np.where(span > 0, span, 1.0), 0.0)


def fit_fusion(split, ease_scores, content_scores):
    e = minmax_per_user(split, ease_scores)
    c = minmax_per_user(split, content_scores)
    return lambda params: params["w"] * e + (1.0 - params["w"]) * c


# --------------------------------------------------------------------------
# Tuning and reporting
# --------------------------------------------------------------------------

def grid_search(name, val, scorer, grid):
    """NDCG@10 on validation of every grid point; the first best is chosen."""
    results, best, best_scores = [], None, None
    for params in grid:
        t = time.perf_counter()
        scores = scorer(params)
        per_user, _ = evaluate(val, scores)
        ndcg = float(np.mean(per_user["ndcg@10"]))
        results.append({"params": params, "ndcg@10": ndcg})
        log(f"{name}: val {params} NDCG@10 {ndcg:.4f} ({time.perf_counter() - t:.1f}s)")
        if best is None or ndcg > best["ndcg@10"]:
            best, best_scores = results[-1], scores
    return best, results, best_scores


def test_once(name, test, scores, params):
    t = time.perf_counter()
    per_user, top10 = evaluate(test, scores)
    summary = summarise(test, per_user, top10)
    log(f"{name}: TEST {params} NDCG@10 {summary['ndcg@10']:.4f} ± {summary['ndcg@10_ci95']:.4f} "
        f"({time.perf_counter() - t:.1f}s)")
    per_user_ndcg = {str(int(u)): float(v) for u, v in zip(test.eval_users, per_user["ndcg@10"])}
    return summary, per_user_ndcg


def format_params(params):
    """{"w": 0.5, "ease": {"lambda": 200}} -> "w=0.5 (ease: lambda=200)"."""
    flat = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, dict))
    nested = "; ".join(f"{k}: {format_params(v)}" for k, v in params.items() if isinstance(v, dict))
    return (flat + (f" ({nested})" if nested else "")) or "–"


def write_markdown(path, result, command, seconds):
    lines = [
        "# Recommendation peers (EVAL.md section 1)",
        "",
        f"`{command}` — ml-latest-small split, every parameter chosen on validation "
        "(val_train → val, NDCG@10), refitted on TRAIN and scored once on TEST "
        f"({result['peers'][0]['test']['users'] if result['peers'] else 0} users, full ranking, "
        f"fit-set items dropped, ties to the lower item id). {result['machine']}; "
        f"a full run takes about {seconds:.0f} s. Numbers in [`peers.json`](peers.json), "
        "with every grid point and the per-user TEST NDCG@10.",
        "",
        "| peer | chosen params | val NDCG@10 | TEST NDCG@10 ± ci | Recall@10 | Recall@20 | HR@10 | Coverage@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result["peers"]:
        t = p["test"]
        name = f"**{p['name']}**" if p["name"] == result["best"] else p["name"]
        params = format_params(p["params"])
        lines.append(
            f"| {name} | {params} | {p['validation']['ndcg@10']:.4f} | "
            f"{t['ndcg@10']:.4f} ± {t['ndcg@10_ci95']:.4f} | {t['recall@10']:.4f} | "
            f"{t['recall@20']:.4f} | {t['hit_rate@10']:.3f} | {t['coverage@10']:.3f} |")
    if result.get("paired_vs_best"):
        lines += ["", f"Paired per-user TEST NDCG@10 difference against the best peer "
                  f"({result['best']}), mean ± 95% half-width:", ""]
        for name, d in result["paired_vs_best"].items():
            lines.append(f"- {name}: {d['mean']:+.4f} ± {d['ci95']:.4f}")
    lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default=os.path.join(SHARED, "datasets/ml-latest-small/split"),
                    help="folder of val_train/val/train/test/items/item_text.csv (default: %(default)s)")
    ap.add_argument("--model", default=os.path.join(CACHE, "models/minilm/model.onnx"),
                    help="the published MiniLM ONNX graph (default: %(default)s)")
    ap.add_argument("--tokenizer", default=os.path.join(CACHE, "models/minilm/tokenizer.json"),
                    help="its tokenizer.json (default: %(default)s)")
    ap.add_argument("--cache", default=os.path.join(CACHE, "bench-data/peers"),
                    help="where the item vectors are cached (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(REPO, "benches/peers/results"),
                    help="folder for peers.json and peers.md (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2,
                    help="BLAS / implicit / onnxruntime threads (default: %(default)s)")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma-separated subset of %(default)s; fusion needs ease and content")
    ap.add_argument("--merge", action="store_true",
                    help="rerun only --peers and replace them in the existing <out>/peers.json, keeping "
                         "the other peers' entries (every peer is fitted and scored independently, so "
                         "this gives what a full run would; fusion still needs ease and content)")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(ALL_PEERS)
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}")
    if "fusion" in peers and not {"ease", "content"} <= set(peers):
        ap.error("fusion needs ease and content")

    np.random.seed(0)  # nothing here draws at random except ALS, seeded by random_state=0
    threadpool_limits(limits=args.threads)
    catalogue = np.loadtxt(os.path.join(args.split, "items.csv"), skiprows=1, dtype=np.int64, ndmin=1)
    assert (np.diff(catalogue) > 0).all()
    log(f"catalogue: {len(catalogue)} items")
    val = Split("validation", os.path.join(args.split, "val_train.csv"), os.path.join(args.split, "val.csv"), catalogue)
    test = Split("TEST", os.path.join(args.split, "train.csv"), os.path.join(args.split, "test.csv"), catalogue)

    results = []
    chosen_scores = {}  # peer -> (val scores, test scores) at the chosen setting, for the fusion

    def run_peer(key, name, fitter, grid, keep=False, extra_seconds=0.0):
        t = time.perf_counter() - extra_seconds
        log(f"{name}: fitting on val_train")
        scorer = fitter(val)
        best, tried, val_scores = grid_search(name, val, scorer, grid)
        del scorer  # frees the validation model's matrices
        log(f"{name}: chose {best['params']}; refitting on train")
        test_scores = fitter(test)(best["params"])
        summary, per_user = test_once(name, test, test_scores, best["params"])
        if keep:
            chosen_scores[key] = (val_scores, test_scores)
        results.append({"name": name, "params": best["params"], "validation": {"ndcg@10": best["ndcg@10"]},
                        "grid": tried, "test": summary, "seconds": round(time.perf_counter() - t, 1),
                        "per_user_ndcg@10": per_user})
        log(f"{name}: done in {time.perf_counter() - t:.1f}s")

    if "popularity" in peers:
        run_peer("popularity", "Popularity", fit_popularity, [{}])
    if "itemknn" in peers:
        run_peer("itemknn", "ItemKNN (cosine)", fit_itemknn,
                 [{"k": k, "neighbours": n} for n in ("candidate", "history") for k in (50, 100, 200)])
    if "ease" in peers:
        run_peer("ease", "EASE", fit_ease, [{"lambda": l} for l in (50, 100, 200, 500, 1000)],
                 keep="fusion" in peers)
    if "als" in peers:
        grid = [{"factors": f, "regularization": r, "iterations": 30}
                for f in (64, 128) for r in (1, 10, 50)]
        run_peer("als", "implicit ALS", lambda s: fit_als(s, args.threads), grid)
    if "content" in peers:
        t = time.perf_counter()  # the peer's time includes embedding the catalogue (when not cached)
        E = embed_items(args.split, args.model, args.tokenizer, args.cache, args.threads)
        run_peer("content", "MiniLM content", lambda s: fit_content(s, E),
                 [{"last_n": n} for n in (1, 2, 3, 5)], keep="fusion" in peers,
                 extra_seconds=time.perf_counter() - t)
    if "fusion" in peers:
        (ev, et), (cv, ct) = chosen_scores["ease"], chosen_scores["content"]
        ease_p = next(r["params"] for r in results if r["name"] == "EASE")
        content_p = next(r["params"] for r in results if r["name"] == "MiniLM content")

        def fusion_fitter(split):
            e, c = (ev, cv) if split is val else (et, ct)
            return fit_fusion(split, e, c)
        run_peer("fusion", "EASE + MiniLM content", fusion_fitter,
                 [{"w": w, "ease": ease_p, "content": content_p} for w in (0.3, 0.5, 0.7, 0.9)])

    seconds = time.perf_counter() - T0
    out_json = os.path.join(args.out, "peers.json")
    if args.merge:
        # Keep the previous run's other peers; the total time becomes the
        # previous total with the rerun peers' times replaced.
        with open(out_json) as f:
            previous = json.load(f)
        assert previous["data"] == {f: sha256_file(os.path.join(args.split, f)) for f in SPLIT_FILES}, \
            "the existing peers.json was made from other split files"
        new = {r["name"]: r for r in results}
        old = {r["name"]: r for r in previous["peers"]}
        seconds = previous["seconds"] - sum(old[n].get("seconds", 0.0) for n in new if n in old) \
            + sum(r["seconds"] for r in results)
        order = [r["name"] for r in previous["peers"]] + [n for n in new if n not in old]
        results = [new.get(n, old.get(n)) for n in order]
        log(f"merged {sorted(new)} into {out_json}")
    model_sha = sha256_file(args.model) if "content" in peers else None
    command = " ".join(["benches/peers/run.sh"] + sys.argv[1:])
    if args.merge:
        # The files now hold what this command would give.
        command = previous.get("command", "benches/peers/run.sh")
        if "content" not in peers:
            model_sha = previous.get("model_sha256")

    best = max(results, key=lambda r: r["test"]["ndcg@10"])["name"] if results else None
    # Paired per-user differences against the best peer (EVAL.md asks for them).
    paired = {}
    if best is not None:
        b = np.array(list(next(r for r in results if r["name"] == best)["per_user_ndcg@10"].values()))
        for r in results:
            if r["name"] == best:
                continue
            d = np.array(list(r["per_user_ndcg@10"].values())) - b
            paired[r["name"]] = {"mean": float(d.mean()),
                                 "ci95": float(1.96 * d.std(ddof=1) / np.sqrt(len(d)))}
    import implicit
    import onnxruntime
    import scipy
    import tokenizers
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {
        "protocol": ("EVAL.md section 1: ml-latest-small, ratings >= 4 as binary implicit feedback, "
                     "per-user temporal split; parameters chosen on validation (fit val_train, score val) "
                     "by NDCG@10, then refitted on train and scored once on test; every catalogue item "
                     f"({len(catalogue)}) scored, the user's fit-set items dropped, ties to the lower item id, "
                     "top 10/20, no sampling; metrics as src/eval/metrics.rs"),
        "data": {f: sha256_file(os.path.join(args.split, f)) for f in SPLIT_FILES},
        "machine": f"{os.cpu_count()} cores ({cpu}), {args.threads} threads",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "implicit": implicit.__version__, "onnxruntime": onnxruntime.__version__,
                     "tokenizers": tokenizers.__version__},
        "model_sha256": model_sha,
        "command": command,
        "seconds": round(seconds, 1),
        "peers": results,
        "best": best,
        "paired_vs_best": paired,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    write_markdown(os.path.join(args.out, "peers.md"), result, command, seconds)
    log(f"wrote {args.out}/peers.json and peers.md; best on TEST: {best}")


if __name__ == "__main__":
    sys.exit(main())
