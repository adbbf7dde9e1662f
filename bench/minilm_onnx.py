"""Write a BERT sentence-embedding model (safetensors + config.json, e.g. all-MiniLM-L6-v2) as an ONNX graph,
with numpy and `onnx` only (no torch): the same f32 weights, so onnxruntime can be measured on exactly the model
JetsonMind runs. Inputs input_ids, attention_mask, token_type_ids (int64, batch x length); output `embeddings`:
the token vectors' mean over the mask, scaled to unit length (sentence-transformers' pooling).

  python bench/minilm_onnx.py MODEL_DIR OUT.onnx
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    data = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        raw = data[8 + size + start : 8 + size + end]
        tensors[name] = np.frombuffer(raw, dtype=DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return tensors


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, array, name=None):
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind, inputs, **attrs):
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def linear(self, x, w, b):
        # Weights are stored [out, in]: x @ w.T + b.
        return self.op("Add", [self.op("MatMul", [x, self.const(w.T.copy())]), self.const(b)])

    def layer_norm(self, x, w, b, eps):
        return self.op("LayerNormalization", [x, self.const(w), self.const(b)], axis=-1, epsilon=eps)


def build(model_dir):
    config = json.loads((Path(model_dir) / "config.json").read_text())
    w = read_safetensors(Path(model_dir) / "model.safetensors")
    heads, hidden, eps = config["num_attention_heads"], config["hidden_size"], config["layer_norm_eps"]
    head = hidden // heads
    g = Graph()
    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    length = g.op("Gather", [g.op("Shape", [ids]), g.const(np.array([1], np.int64))])
    positions = g.op("Slice", [g.const(w["embeddings.position_embeddings.weight"]), g.const(np.array([0], np.int64)), length])
    x = g.op("Add", [g.op("Gather", [g.const(w["embeddings.word_embeddings.weight"]), ids]), positions])
    x = g.op("Add", [x, g.op("Gather", [g.const(w["embeddings.token_type_embeddings.weight"]), types])])
    x = g.layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)
    # (1 - mask) * -1e4 on the keys, broadcast over heads and queries.
    bias = g.op("Mul", [g.op("Sub", [g.const(np.float32(1)), maskf]), g.const(np.float32(-10000))])
    bias = g.op("Unsqueeze", [bias, g.const(np.array([1, 2], np.int64))])
    split = g.const(np.array([0, 0, heads, head], np.int64))
    merge = g.const(np.array([0, 0, hidden], np.int64))
    scale = g.const(np.float32(1 / np.sqrt(head)))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def heads_of(name, transpose):
            t = g.linear(x, w[p + f"attention.self.{name}.weight"], w[p + f"attention.self.{name}.bias"])
            return g.op("Transpose", [g.op("Reshape", [t, split])], perm=transpose)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), bias])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        attended = g.linear(context, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"])
        x = g.layer_norm(g.op("Add", [attended, x]), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        inner = g.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"])
        # Exact GELU: 0.5 x (1 + erf(x / sqrt 2)).
        erf = g.op("Erf", [g.op("Div", [inner, g.const(np.float32(np.sqrt(2)))])])
        inner = g.op("Mul", [g.op("Mul", [inner, g.const(np.float32(0.5))]), g.op("Add", [erf, g.const(np.float32(1))])])
        out = g.linear(inner, w[p + "output.dense.weight"], w[p + "output.dense.bias"])
        x = g.layer_norm(g.op("Add", [out, x]), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    weights = g.op("Unsqueeze", [maskf, g.const(np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights]), g.const(np.array([1], np.int64))], keepdims=0)
    counts = g.op("Max", [g.op("ReduceSum", [weights, g.const(np.array([1], np.int64))], keepdims=0), g.const(np.float32(1e-9))])
    mean = g.op("Div", [summed, counts])
    norm = g.op("Sqrt", [g.op("ReduceSum", [g.op("Mul", [mean, mean]), g.const(np.array([1], np.int64))], keepdims=1)])
    g.nodes.append(helper.make_node("Div", [mean, g.op("Max", [norm, g.const(np.float32(1e-12))])], ["embeddings"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"]) for n in (ids, mask, types)]
    output = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", hidden])
    graph = helper.make_graph(g.nodes, "sentence_embeddings", inputs, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(build(sys.argv[1]), sys.argv[2])
