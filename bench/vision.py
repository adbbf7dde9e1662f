#!/usr/bin/env python3
"""Benchmark the image engine (tract) against onnxruntime, side by side in one run, on the same ONNX files and
photographs (scikit-image's, fetched by ./setup.sh):

1. classify: EfficientNet-Lite0 (models/efficientnet-lite0, converted by set-up) on five photographs.
2. detect: a YOLOv8n detector (tests/e2e/assets/320n.onnx, a test asset) on the same photographs.

  .venv/bin/python bench/vision.py [--runs 5] [--threads 2]

JetsonMind runs `image_analyze` through `jetsonmind serve` (compute.vision.threads = --threads) and is timed by the
server's own figure for the call (`timings.total_ms`: base64 and image decoding, preprocessing, inference, top-k or
suppression), the client's time over loopback MCP printed beside it; onnxruntime (intra-op threads = --threads) is
timed from the file to the same answer (Pillow decoding, numpy preprocessing). The sides take turns, once each per
round; the result is images per second from the medians, their ratio, and whether both sides found the same.
"""

import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BINARY, ROOT, engine_bench_args, peers_python, run_peer

CLASSIFIER = ROOT / "models" / "efficientnet-lite0"
ASSETS = ROOT / "tests" / "e2e" / "assets"
DETECTOR = ASSETS / "320n.onnx"
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png"]
TASKS = {"classify": CLASSIFIER / "model.onnx", "detect": DETECTOR}


async def rounds(url, images, runs, peers_once):
    """`runs` rounds; in each, JetsonMind analyzes every image once per task and the peer does too
    (`peers_once()`), the side that goes first alternating."""
    from mcp import Client

    mine = {task: {"seconds": [], "client_seconds": [], "found": {}} for task in TASKS}
    theirs = {task: {"seconds": [], "found": {}} for task in TASKS}
    payloads = {path: base64.b64encode(path.read_bytes()).decode() for path in images}
    async with Client(url) as client:

        async def analyze(task, path):
            started = time.perf_counter()
            result = await client.call_tool("image_analyze", {"image_data": payloads[path], "analysis_type": task})
            elapsed = time.perf_counter() - started
            assert not result.is_error, result.content
            return result.structured_content, elapsed

        for task in TASKS:  # loads the models
            await analyze(task, images[0])

        async def peers_round():
            for task, per_image in (await asyncio.to_thread(peers_once)).items():
                theirs[task]["seconds"].append(sum(r["seconds"][0] for r in per_image.values()))
                theirs[task]["found"] = {Path(p).name: r["found"] for p, r in per_image.items()}

        for turn in range(runs):
            if turn % 2:
                await peers_round()
            for task in TASKS:
                server, client_side = 0.0, 0.0
                for path in images:
                    out, elapsed = await analyze(task, path)
                    server += out["timings"]["total_ms"] / 1000
                    client_side += elapsed
                    mine[task]["found"][path.name] = out["classes" if task == "classify" else "detections"]
                mine[task]["seconds"].append(server)
                mine[task]["client_seconds"].append(client_side)
            if turn % 2 == 0:
                await peers_round()
    return mine, theirs


def same_answers(task, mine, theirs):
    """How many images both sides answered alike: the same top class, or the same number of detections with
    each of ours overlapping its peer by IoU > 0.9."""

    def iou(a, b):
        ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
        return ix * iy / union if union > 0 else 0

    alike = 0
    for name, ours in mine.items():
        peer = theirs[name]
        if task == "classify":
            alike += ours[0]["class_id"] == peer[0][0]
        else:
            boxes = [[d["box"]["x"], d["box"]["y"], d["box"]["x"] + d["box"]["width"],
                      d["box"]["y"] + d["box"]["height"]] for d in ours]
            alike += len(boxes) == len(peer) and all(max((iou(b, p[2]) for p in peer), default=0) > 0.9
                                                      for b in boxes)
    return alike


def main():
    args = engine_bench_args(__doc__)
    from conftest import import_model, start_serve, stop_serve

    images = [ASSETS / name for name in PHOTOS]
    for needed in [CLASSIFIER, DETECTOR, *images]:
        if not needed.exists():
            sys.exit(f"{needed} is missing: run ./setup.sh")
    python = peers_python()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        import_model(BINARY, data, CLASSIFIER, "--link")
        import_model(BINARY, data, DETECTOR, "--name", "detector")
        env = {"JETSONMIND_CACHE__ENABLED": "false", "JETSONMIND_COMPUTE__VISION__THREADS": str(args.threads),
               "JETSONMIND_COMPUTE__VISION__DETECT_MODEL": "detector"}

        def peers_once():
            return {task: run_peer(python, "vision_peers.py", {"kind": task, "model": str(model),
                                                               "threads": args.threads, "runs": 1,
                                                               "images": [str(p) for p in images]})
                    for task, model in TASKS.items()}

        served = start_serve(BINARY, data, work / "serve.log", env)
        try:
            mine, theirs = asyncio.run(rounds(served.url, images, args.runs, peers_once))
        finally:
            stop_serve(served)
    print(f"threads {args.threads}, {len(images)} photographs, median of {args.runs} rounds "
          f"(each side once per round, in turn)\n")
    print(f"{'task':<10}{'JetsonMind img/s':>18}{'(at the client)':>17}{'onnxruntime img/s':>19}{'speed ratio':>13}"
          f"{'same answer':>13}")
    for task in TASKS:
        ours = len(images) / statistics.median(mine[task]["seconds"])
        client_side = len(images) / statistics.median(mine[task]["client_seconds"])
        peer = len(images) / statistics.median(theirs[task]["seconds"])
        alike = same_answers(task, mine[task]["found"], theirs[task]["found"])
        print(f"{task:<10}{ours:>18.1f}{client_side:>17.1f}{peer:>19.1f}{ours / peer:>13.2f}"
              f"{f'{alike}/{len(images)}':>13}")
    for task in TASKS:
        each = [p / o for o, p in zip(mine[task]["seconds"], theirs[task]["seconds"])]
        print(f"  {task} ratio per round: {' '.join(f'{r:.2f}' for r in each)}")


if __name__ == "__main__":
    main()
