"""The peer of bench/vision.py, run in the peers' venv (bench/cache/peers): onnxruntime on the same ONNX files,
with the same preprocessing JetsonMind does (Pillow decodes; numpy crops, normalizes, suppresses); for `ocr`,
RapidOCR's own pipeline (OpenCV, pyclipper) on the same detector and recognizer, without its direction classifier
(JetsonMind has none) and at PaddleOCR's standard detector size (longer side 960, as JetsonMind). Reads a JSON job
on stdin, prints JSON: per image, the seconds of each run and what was found."""

import json
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def classify_one(sess, meta, path):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    side = round(min(w, h) * float(meta.get("crop", 0.875)))
    left, top = (w - side) // 2, (h - side) // 2
    size = sess.get_inputs()[0].shape[2]
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    mean = np.array(json.loads(meta.get("pixel_mean", "[123.675, 116.28, 103.53]")), np.float32)
    scale = np.array(json.loads(meta.get("pixel_scale", "[58.395, 57.12, 57.375]")), np.float32)
    x = ((np.asarray(image, np.float32) - mean) / scale).transpose(2, 0, 1)[None]
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p)[:5]
    return [[int(i), float(p[i])] for i in top]


def detect_one(sess, meta, path, size=320, min_score=0.25, max_overlap=0.45):
    image = Image.open(path).convert("RGB")
    w, h = image.size
    scale = min(size / w, size / h)
    fw, fh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    left, top = (size - fw) // 2, (size - fh) // 2
    canvas.paste(image.resize((fw, fh), Image.BILINEAR), (left, top))
    x = (np.asarray(canvas, np.float32) / 255).transpose(2, 0, 1)[None]
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0][0]
    scores = out[4:].max(0)
    keep = scores >= min_score
    classes, scores, boxes = out[4:].argmax(0)[keep], scores[keep], out[:4, keep].T
    xy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                   boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1)
    xy = (xy - [left, top, left, top]) / scale
    found = []
    for i in np.argsort(-scores):
        overlaps = False
        for j in found:
            if classes[j] != classes[i]:
                continue
            ix = max(0, min(xy[i, 2], xy[j, 2]) - max(xy[i, 0], xy[j, 0]))
            iy = max(0, min(xy[i, 3], xy[j, 3]) - max(xy[i, 1], xy[j, 1]))
            area = lambda k: (xy[k, 2] - xy[k, 0]) * (xy[k, 3] - xy[k, 1])
            if ix * iy / (area(i) + area(j) - ix * iy) > max_overlap:
                overlaps = True
                break
        if not overlaps:
            found.append(i)
    return [[int(classes[i]), float(scores[i]), [float(v) for v in xy[i]]] for i in found]


def text_reader(model_dir, threads):
    """RapidOCR on `model_dir`'s det.onnx and rec.onnx: a function from a picture's path to its lines' text."""
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(det_model_path=f"{model_dir}/det.onnx", rec_model_path=f"{model_dir}/rec.onnx",
                      intra_op_num_threads=threads, inter_op_num_threads=1, use_cls=False,
                      det_limit_type="max", det_limit_side_len=960)

    def read(path):
        lines, _ = engine(path, use_cls=False)
        return [line[1] for line in lines or []]

    return read


def job_runner(job):
    """The job's analysis as a function of a picture's path."""
    if job["kind"] == "ocr":
        return text_reader(job["model"], job["threads"])
    sess = session(job["model"], job["threads"])
    meta = sess.get_modelmeta().custom_metadata_map
    analysis = classify_one if job["kind"] == "classify" else detect_one
    return lambda path: analysis(sess, meta, path)


def main():
    job = json.load(sys.stdin)
    run = job_runner(job)
    run(job["images"][0])  # warm-up
    results = {}
    for path in job["images"]:
        times = []
        for _ in range(job["runs"]):
            started = time.perf_counter()
            found = run(path)
            times.append(time.perf_counter() - started)
        results[path] = {"seconds": times, "found": found}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
