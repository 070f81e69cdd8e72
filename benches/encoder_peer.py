"""Python peer of benches/encoder.rs: onnxruntime + HF tokenizers on the same
512 MovieLens item texts, batch 32, length-sorted batches, all cores; also the
raw forward time (the floor: model only, tokenisation excluded).

Run with the venv from `make setup`:
    .cache/venv/bin/python benches/encoder_peer.py
"""
import csv
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("VECREC_CACHE", os.path.join(REPO, ".cache"))
SHARED = os.environ.get("VECREC_SHARED", os.path.join(REPO, "..", "shared"))
BATCH = 32


def main():
    with open(os.path.join(SHARED, "datasets/ml-latest-small/split/item_text.csv"), newline="") as f:
        texts = [row[1] for row in list(csv.reader(f))[1:513]]
    tok = Tokenizer.from_file(os.path.join(CACHE, "models/minilm/tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count()
    # The model the Rust encoder runs ($VECREC_MODEL: the W8A8 rewrite by default).
    model = os.environ.get("VECREC_MODEL", os.path.join(CACHE, "models/minilm/model-a8.onnx"))
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])

    def batches():
        encs = tok.encode_batch(texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for s in range(0, len(order), BATCH):
            chunk = [encs[i] for i in order[s:s + BATCH]]
            n = max(len(e.ids) for e in chunk)
            ids = np.zeros((len(chunk), n), np.int64)
            mask = np.zeros_like(ids)
            for r, e in enumerate(chunk):
                ids[r, :len(e.ids)] = e.ids
                mask[r, :len(e.ids)] = 1
            yield ids, mask

    def encode(prepared=None):
        out = []
        for ids, mask in prepared or batches():
            h = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
            v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return out

    encode()  # warm-up
    runs = 5
    t = time.perf_counter()
    for _ in range(runs):
        encode()
    full = (time.perf_counter() - t) / runs
    prepared = list(batches())
    t = time.perf_counter()
    for _ in range(runs):
        for ids, mask in prepared:
            sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    forward = (time.perf_counter() - t) / runs
    print(f"python onnxruntime {ort.__version__} + tokenizers: {len(texts) / full:.0f} texts/s (512 texts, batch {BATCH}, {os.cpu_count()} threads)")
    print(f"raw forward only (floor): {len(texts) / forward:.0f} texts/s")


if __name__ == "__main__":
    sys.exit(main())
