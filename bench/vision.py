#!/usr/bin/env python3
"""Benchmark the image engine (on ONNX Runtime and on tract) against onnxruntime (Python), side by side in one run, on the same ONNX files and
photographs (scikit-image's, fetched by ./setup.sh):

1. classify: EfficientNet-Lite0 (models/efficientnet-lite0, converted by set-up) on five photographs.
2. detect: a YOLOv8n detector (tests/e2e/assets/320n.onnx, a test asset) on the same photographs.
3. ocr: PP-OCRv4 (models/ppocr-v4) on three pictures of text rendered here (straight, turned 7 degrees, large);
   the peer is RapidOCR's own pipeline on onnxruntime with the same two ONNX files. Beside the speed, each side's
   character error rate against the text drawn.

  .venv/bin/python bench/vision.py [--runs 5] [--threads 2] [--runtimes onnxruntime,tract]

JetsonMind runs `image_analyze` through `jetsonmind serve` (compute.vision.threads = --threads), once per runtime it
can run image models on (compute.vision.runtime: ONNX Runtime's library, as ./setup.sh puts it beside the binary, and
tract, in the binary; --runtimes picks), each a server of its own, and is timed by the server's own figure for the
call (`timings.total_ms`: base64 and image decoding, preprocessing, inference, top-k or
suppression), the client's time over loopback MCP printed beside it; onnxruntime (intra-op threads = --threads) is
timed from the file to the same answer (Pillow decoding, numpy preprocessing). The sides take turns, once each per
round, the order turning from round to round; the result is images per second from the medians, each runtime's ratio
to onnxruntime's, and whether both found the same.
"""

import asyncio
import base64
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BINARY, ROOT, engine_bench_args, peers_python, run_peer

CLASSIFIER = ROOT / "models" / "efficientnet-lite0"
TEXT_READER = ROOT / "models" / "ppocr-v4"
ASSETS = ROOT / "tests" / "e2e" / "assets"
DETECTOR = ASSETS / "320n.onnx"
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png"]
# Each task's model (what the peer loads) and the kind of pictures it gets.
TASKS = {"classify": (CLASSIFIER / "model.onnx", "photos"), "detect": (DETECTOR, "photos"),
         "ocr": (TEXT_READER, "texts")}
FOUND = {"classify": "classes", "detect": "detections", "ocr": "lines"}


def text_pictures(work):
    """The OCR pictures, rendered as the tests render them, and the text drawn in each."""
    from test_vision import TEXT_LINES, rendered

    pictures = {"text.png": (TEXT_LINES, {}), "text-turned.png": (TEXT_LINES, {"angle": 7}),
                "text-large.png": (TEXT_LINES[2:], {"size": 60})}
    drawn = {}
    for name, (lines, options) in pictures.items():
        (work / name).write_bytes(rendered(lines, **options)[0])
        drawn[name] = "\n".join(lines)
    return drawn


async def rounds(urls, images, runs, peers_once):
    """`runs` rounds; in each, JetsonMind on each runtime (`urls`: runtime -> its server) analyzes every image of
    each task (`images[task]`) once and the peer does too (`peers_once()`), the order of the sides turning."""
    from mcp import Client

    mine = {runtime: {task: {"seconds": [], "client_seconds": [], "found": {}} for task in TASKS} for runtime in urls}
    theirs = {task: {"seconds": [], "found": {}} for task in TASKS}
    payloads = {path: base64.b64encode(path.read_bytes()).decode() for paths in images.values() for path in paths}
    async with contextlib.AsyncExitStack() as stack:
        clients = {runtime: await stack.enter_async_context(Client(url)) for runtime, url in urls.items()}

        async def analyze(runtime, task, path):
            started = time.perf_counter()
            result = await clients[runtime].call_tool("image_analyze",
                                                      {"image_data": payloads[path], "analysis_type": task})
            elapsed = time.perf_counter() - started
            assert not result.is_error, result.content
            return result.structured_content, elapsed

        for runtime in urls:  # loads the models
            for task in TASKS:
                await analyze(runtime, task, images[task][0])

        async def peers_round():
            for task, per_image in (await asyncio.to_thread(peers_once)).items():
                theirs[task]["seconds"].append(sum(r["seconds"][0] for r in per_image.values()))
                theirs[task]["found"] = {Path(p).name: r["found"] for p, r in per_image.items()}

        def our_round(runtime):
            async def run():
                for task in TASKS:
                    server, client_side = 0.0, 0.0
                    for path in images[task]:
                        out, elapsed = await analyze(runtime, task, path)
                        server += out["timings"]["total_ms"] / 1000
                        client_side += elapsed
                        mine[runtime][task]["found"][path.name] = out[FOUND[task]]
                    mine[runtime][task]["seconds"].append(server)
                    mine[runtime][task]["client_seconds"].append(client_side)
            return run

        sides = [peers_round, *(our_round(runtime) for runtime in urls)]
        for turn in range(runs):
            for side in sides[turn % len(sides):] + sides[:turn % len(sides)]:
                await side()
    return mine, theirs


def same_answers(task, mine, theirs):
    """How many images both sides answered alike: the same top class, the same number of detections with
    each of ours overlapping its peer by IoU > 0.9, or the same number of lines of text."""

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
        elif task == "ocr":
            alike += len(ours) == len(peer)
        else:
            boxes = [[d["box"]["x"], d["box"]["y"], d["box"]["x"] + d["box"]["width"],
                      d["box"]["y"] + d["box"]["height"]] for d in ours]
            alike += len(boxes) == len(peer) and all(max((iou(b, p[2]) for p in peer), default=0) > 0.9
                                                      for b in boxes)
    return alike


def error_rates(found, drawn, ours):
    """Each picture's character error rate, as `name rate`: the text read (ours: lines' text; the peer's: strings)
    against the text drawn."""
    from test_vision import character_error_rate

    rates = []
    for name, lines in found.items():
        text = "\n".join(line["text"] if ours else line for line in lines)
        rates.append(f"{name} {character_error_rate(drawn[name], text):.3f}")
    return ", ".join(rates)


def main():
    args = engine_bench_args(__doc__, runtimes="onnxruntime,tract")
    from conftest import import_model, start_serve, stop_serve

    photos = [ASSETS / name for name in PHOTOS]
    for needed in [CLASSIFIER, DETECTOR, TEXT_READER, *photos]:
        if not needed.exists():
            sys.exit(f"{needed} is missing: run ./setup.sh")
    python = peers_python()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        drawn = text_pictures(work)
        kinds = {"photos": photos, "texts": [work / name for name in drawn]}
        images = {task: kinds[kind] for task, (_, kind) in TASKS.items()}
        data = work / "data"
        import_model(BINARY, data, CLASSIFIER, "--link")
        import_model(BINARY, data, TEXT_READER, "--link")
        import_model(BINARY, data, DETECTOR, "--name", "detector")
        env = {"JETSONMIND_CACHE__ENABLED": "false", "JETSONMIND_CACHE__INPUTS__ENABLED": "false",
               "JETSONMIND_COMPUTE__VISION__THREADS": str(args.threads),
               "JETSONMIND_COMPUTE__VISION__DETECT_MODEL": "detector"}

        def peers_once():
            return {task: run_peer(python, "vision_peers.py", {"kind": task, "model": str(model),
                                                               "threads": args.threads, "runs": 1,
                                                               "images": [str(p) for p in images[task]]})
                    for task, (model, _) in TASKS.items()}

        servers = {}
        try:
            for runtime in args.runtimes:
                servers[runtime] = start_serve(BINARY, data, work / f"serve-{runtime}.log",
                                               {**env, "JETSONMIND_COMPUTE__VISION__RUNTIME": runtime})
            mine, theirs = asyncio.run(rounds({r: s.url for r, s in servers.items()}, images, args.runs,
                                              peers_once))
        finally:
            for served in servers.values():
                stop_serve(served)
    print(f"threads {args.threads}, {len(photos)} photographs and {len(drawn)} pictures of text, median of "
          f"{args.runs} rounds (each side once per round, the order turning)\n")
    print(f"{'task':<10}{'JetsonMind on':<15}{'img/s':>8}{'(at the client)':>17}{'onnxruntime img/s':>19}"
          f"{'speed ratio':>13}{'same answer':>13}")
    for task in TASKS:
        count = len(images[task])
        peer = count / statistics.median(theirs[task]["seconds"])
        for runtime in args.runtimes:
            measured = mine[runtime][task]
            ours = count / statistics.median(measured["seconds"])
            client_side = count / statistics.median(measured["client_seconds"])
            alike = same_answers(task, measured["found"], theirs[task]["found"])
            print(f"{task:<10}{runtime:<15}{ours:>8.1f}{client_side:>17.1f}{peer:>19.1f}{ours / peer:>13.2f}"
                  f"{f'{alike}/{count}':>13}")
    for task in TASKS:
        for runtime in args.runtimes:
            each = [p / o for o, p in zip(mine[runtime][task]["seconds"], theirs[task]["seconds"])]
            print(f"  {task} on {runtime}, ratio per round: {' '.join(f'{r:.2f}' for r in each)}")
    for runtime in args.runtimes:
        print(f"  ocr character error rate, JetsonMind on {runtime}: "
              f"{error_rates(mine[runtime]['ocr']['found'], drawn, True)}")
    print(f"  ocr character error rate, RapidOCR: {error_rates(theirs['ocr']['found'], drawn, False)}")


if __name__ == "__main__":
    main()
