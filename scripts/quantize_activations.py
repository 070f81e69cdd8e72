#!/usr/bin/env python3
"""Rewrites the MiniLM int8 model so that its weight products run on int8
activations too (W8A8), quantised per token.

The model as shipped stores its weights as int8 with one scale per output
column, dequantised by `Cast` and `Mul` nodes; ONNX Runtime folds those at
load time, so every product runs in f32 (72% of a forward pass on this
machine). This script replaces each such `MatMul(x, W)` with

    s    = max(|x|, over the last axis) / 127        one scale per token row
    x_u8 = round(x / s) + 128                        uint8, zero point 128
    y    = float(MatMulInteger(x_u8, W_int8, 128)) * s * w_scale

so the product runs in ONNX Runtime's integer kernels (VNNI where the CPU has
it). The scale is per row, never per tensor: a token's activations are
quantised from that token alone, and products accumulate exactly in int32, so
a text's vector does not depend on the other texts in its batch (the
property the server's dynamic batching relies on). The attention products
(query x key, weights x value) and everything else stay f32. Rows that share
an input (query, key and value) share one quantisation.

Usage: quantize_activations.py IN.onnx OUT.onnx

The output is written under a temporary name and renamed into place. Needs
the `onnx` package (the project venv has it).
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# MiniLM-L6 has six layers of query, key, value, attention output and two
# feed-forward products.
EXPECTED_PRODUCTS = 36


def weight_product_inputs(graph):
    """Maps the output of each weight-dequantising `Mul(Cast(W_int8), scale)`
    to (W_int8 initializer name, scale initializer name)."""
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = {}
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        cast_out, scale = node.input
        cast = producer.get(cast_out)
        if cast is None or cast.op_type != "Cast" or scale not in inits:
            continue
        w = inits.get(cast.input[0])
        if w is None or w.data_type != TensorProto.INT8 or len(w.dims) != 2:
            continue
        n_out = w.dims[1]
        scale_arr = numpy_helper.to_array(inits[scale])
        if scale_arr.size not in (1, n_out):
            continue
        found[node.output[0]] = (cast.input[0], scale)
    return found


def rewrite(model):
    graph = model.graph
    weights = weight_product_inputs(graph)
    consts = [
        numpy_helper.from_array(np.array(1e-12, np.float32), "a8_eps"),
        numpy_helper.from_array(np.array(127.0, np.float32), "a8_127"),
        numpy_helper.from_array(np.array(128.0, np.float32), "a8_128"),
        numpy_helper.from_array(np.array(128, np.uint8), "a8_zero_point"),
    ]
    quantised = {}
    nodes = []
    rewritten = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in quantised:
            p = f"a8_{x}"
            nodes += [
                helper.make_node("Abs", [x], [f"{p}_abs"]),
                helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_max"], axes=[-1], keepdims=1),
                helper.make_node("Max", [f"{p}_max", "a8_eps"], [f"{p}_max_pos"]),
                helper.make_node("Div", [f"{p}_max_pos", "a8_127"], [f"{p}_scale"]),
                helper.make_node("Div", [x, f"{p}_scale"], [f"{p}_scaled"]),
                helper.make_node("Round", [f"{p}_scaled"], [f"{p}_rounded"]),
                helper.make_node("Add", [f"{p}_rounded", "a8_128"], [f"{p}_shifted"]),
                helper.make_node("Cast", [f"{p}_shifted"], [f"{p}_u8"], to=TensorProto.UINT8),
            ]
            quantised[x] = (f"{p}_u8", f"{p}_scale")
        x_u8, x_scale = quantised[x]
        w_int8, w_scale = weights[node.input[1]]
        p = f"a8_{node.output[0]}"
        nodes += [
            helper.make_node("MatMulInteger", [x_u8, w_int8, "a8_zero_point"], [f"{p}_i32"]),
            helper.make_node("Cast", [f"{p}_i32"], [f"{p}_f32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}_f32", x_scale], [f"{p}_row_scaled"]),
            helper.make_node("Mul", [f"{p}_row_scaled", w_scale], [node.output[0]]),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    prune(graph)
    return rewritten


def prune(graph):
    """Drops nodes and initializers nothing reads any more (the f32 weight
    dequantisation)."""
    while True:
        needed = {o.name for o in graph.output}
        for n in graph.node:
            needed.update(n.input)
        keep = [n for n in graph.node if any(o in needed for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    needed = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    src, dst = sys.argv[1], sys.argv[2]
    model = onnx.load(src)
    n = rewrite(model)
    if n != EXPECTED_PRODUCTS:
        sys.exit(
            f"quantize_activations: expected {EXPECTED_PRODUCTS} int8 weight products in {src}, found {n}"
        )
    model.doc_string = (model.doc_string + "\n" if model.doc_string else "") + (
        "W8A8: weight products on per-token int8 activations (vecrec scripts/quantize_activations.py)"
    )
    onnx.checker.check_model(model)
    tmp = f"{dst}.tmp.{os.getpid()}"
    try:
        onnx.save(model, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"quantize_activations: {n} products now int8 x int8 -> {dst}")


if __name__ == "__main__":
    main()
