"""How many SearchText queries a second the encoder's forward pass alone allows
on this machine: one single-thread ONNX Runtime session (as each of vecrec's
encoder workers runs, and as the peer's batching server does), fed the
serving benchmark's own queries (benches/serving/queries.txt, tokenised
without padding, batches padded to their longest query) at batch sizes 1, 4,
8 and 16, for 3 s each. The product with the core count is an upper bound on
any server's SearchText throughput that runs this model through ONNX
Runtime: it leaves out tokenising, the index, gRPC and the load generator.

    .cache/serving-venv/bin/python benches/serving/encoder_ceiling.py \
        [--model .cache/models/minilm/model-a8.onnx] [--seconds 3]

Prints one JSON line per model and batch size.
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODELS = os.path.join(REPO, ".cache", "models", "minilm")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        action="append",
        help="ONNX model file (repeatable; default: model-a8.onnx and model.onnx)",
    )
    ap.add_argument("--tokenizer", default=os.path.join(MODELS, "tokenizer.json"))
    ap.add_argument("--queries", default=os.path.join(HERE, "queries.txt"))
    ap.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    args = ap.parse_args()
    models = args.model or [
        os.path.join(MODELS, "model-a8.onnx"),
        os.path.join(MODELS, "model.onnx"),
    ]
    tok = Tokenizer.from_file(args.tokenizer)
    tok.no_padding()
    with open(args.queries) as f:
        queries = [line.strip() for line in f if line.strip()]
    cores = len(os.sched_getaffinity(0))
    for model in models:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        for batch in (1, 4, 8, 16):
            # Every batch (the queries from each starting point) is tokenised
            # and laid out before the clock starts: only forward passes are timed.
            feeds = []
            for first in range(len(queries)):
                texts = [queries[(first + j) % len(queries)] for j in range(batch)]
                enc = tok.encode_batch(texts)
                width = max(len(e.ids) for e in enc)
                ids = np.zeros((batch, width), np.int64)
                mask = np.zeros((batch, width), np.int64)
                for j, e in enumerate(enc):
                    ids[j, : len(e.ids)] = e.ids
                    mask[j, : len(e.ids)] = 1
                feed = {"input_ids": ids, "attention_mask": mask}
                if "token_type_ids" in names:
                    feed["token_type_ids"] = np.zeros_like(ids)
                feeds.append((feed, int(mask.sum())))
            done, tokens, passes = 0, 0, 0
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                feed, n_tokens = feeds[passes % len(feeds)]
                session.run(None, feed)
                passes += 1
                done += batch
                tokens += n_tokens
            elapsed = time.perf_counter() - start
            per_core = done / elapsed
            print(
                json.dumps(
                    {
                        "model": os.path.basename(model),
                        "batch": batch,
                        "queries_per_s_per_core": round(per_core, 1),
                        "ms_per_query": round(1000 * elapsed / done, 2),
                        "tokens_per_query": round(tokens / done, 1),
                        "cores": cores,
                        "ceiling_queries_per_s": round(per_core * cores, 1),
                    }
                ),
                flush=True,
            )

if __name__ == "__main__":
    main()
