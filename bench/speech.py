#!/usr/bin/env python3
"""Benchmark the speech and embedding engines against their peers, side by side in one run, on the same files:

1. Transcription: JetsonMind's whisper (candle, `audio_process` through `jetsonmind serve`) against
   faster-whisper (CTranslate2, PyPI) on the very same `model.bin` (f32, greedy, timestamps, each window prompted
   with the text so far, no VAD), on espeak-ng speech: a 10 s clip and a 70 s recording. Real-time factor
   (seconds of compute per second of audio) and the speed ratio.
2. Embeddings: JetsonMind's `embed` (candle, inference cache off) against onnxruntime (PyPI) on the same
   all-MiniLM-L6-v2 weights (written as ONNX by bench/minilm_onnx.py, numpy and onnx only), 256 sentences in
   batches of 32. Texts per second, the ratio, and how close the two sides' vectors are.

  .venv/bin/python bench/speech.py [--runs 5] [--threads 2]

The peers are installed, pinned, into a venv of their own (bench/cache/peers) on the first run. JetsonMind is
timed at the client (MCP over loopback HTTP, base64 audio included); both sides use --threads CPU threads. The
sides take turns, one run each per round, so that drift in the machine's speed falls on both; the medians' ratio
is the result, and each round's ratio is printed too. Run on an otherwise idle machine; needs ./setup.sh to have
run.
"""

import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import BINARY, ROOT, engine_bench_args, peers_python, run_peer

WHISPER = ROOT / "models" / "whisper-tiny.en"
MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
PARAGRAPH = ("The quick brown fox jumps over the lazy dog. Please call me tomorrow morning at nine. "
             "We will meet at the library after lunch. Turn left at the second traffic light.")
SUBJECTS = ["The engineer", "A small robot", "My neighbour", "The old train", "A curious student", "The river"]
VERBS = ["carefully studies", "quickly crosses", "slowly repairs", "happily describes", "never forgets"]
OBJECTS = ["the bridge over the valley", "a long report about batteries", "the garden after the rain",
           "an unusual map of the city", "the noisy engine", "a letter from a friend abroad", "the night sky"]


def peer(python, job):
    return run_peer(python, "speech_peers.py", job)


def speech_files(work):
    """A 10 s clip and a 70 s recording, spoken by espeak-ng."""
    import wave

    clip = work / "clip.wav"
    subprocess.run(["espeak-ng", "-w", str(clip), PARAGRAPH], check=True)
    with wave.open(str(clip)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    long = work / "long.wav"
    body = b""
    while len(body) < rate * 2 * 70:
        body += pcm + b"\0\0" * rate
    with wave.open(str(long), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(body[: rate * 2 * 70])
    return {"clip": clip, "long": long}


def sentences(count):
    return [f"{SUBJECTS[i % 6]} {VERBS[i % 5]} {OBJECTS[i % 7]}" + (" again" * (i % 4)) + f" on day {i}."
            for i in range(count)]


async def rounds(url, files, texts, runs, peers_once):
    """`runs` rounds, each timing JetsonMind once on every file and on the texts, and the peers once
    (`peers_once()`), the side that goes first alternating: interleaved, both sides see the same machine, whose
    speed on shared hardware drifts by 10-30% over minutes. Returns ours and theirs, dicts keyed by file name and
    "embed", each with its "seconds" per round (and the text, duration or first vectors of the last round)."""
    from mcp import Client

    mine = {name: {"seconds": []} for name in [*files, "embed"]}
    theirs = {name: {"seconds": []} for name in [*files, "embed"]}
    async with Client(url) as client:

        async def transcribe(path):
            data = base64.b64encode(path.read_bytes()).decode()
            result = await client.call_tool("audio_process", {"operation": "transcribe", "audio_data": data})
            assert not result.is_error, result.content
            return result.structured_content

        async def embed_all():
            vectors = []
            for at in range(0, len(texts), 32):
                result = await client.call_tool("embed", {"texts": texts[at : at + 32]})
                assert not result.is_error, result.content
                vectors.extend(result.structured_content["embeddings"])
            return vectors

        for path in files.values():
            await transcribe(path)
        await embed_all()

        async def peers_round():
            for name, result in (await asyncio.to_thread(peers_once)).items():
                theirs[name]["seconds"] += result.pop("seconds")
                theirs[name].update(result)

        for turn in range(runs):
            if turn % 2:
                await peers_round()
            for name, path in files.items():
                started = time.perf_counter()
                out = await transcribe(path)
                mine[name]["seconds"].append(time.perf_counter() - started)
                mine[name].update(text=out["text"], duration=out["duration_secs"])
            started = time.perf_counter()
            vectors = await embed_all()
            mine["embed"]["seconds"].append(time.perf_counter() - started)
            mine["embed"]["first"] = vectors[:4]
            if turn % 2 == 0:
                await peers_round()
    return mine, theirs


def main():
    args = engine_bench_args(__doc__)
    from conftest import import_model, start_serve, stop_serve

    for model in (WHISPER, MINILM):
        if not model.is_dir():
            sys.exit(f"{model} is missing: run ./setup.sh")
    python = peers_python()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = speech_files(work)
        texts = sentences(256)
        onnx_file = work / "minilm.onnx"
        subprocess.run([str(python), str(ROOT / "bench" / "minilm_onnx.py"), str(MINILM), str(onnx_file)], check=True)
        data = work / "data"
        for model in (WHISPER, MINILM):
            import_model(BINARY, data, model, "--link")
        env = {"JETSONMIND_CACHE__ENABLED": "false", "RAYON_NUM_THREADS": str(args.threads)}

        def peers_once():
            transcribed = peer(python, {"kind": "transcribe", "model": str(WHISPER), "threads": args.threads,
                                        "runs": 1, "files": [str(p) for p in files.values()],
                                        "warmup": str(files["clip"])})
            embedded = peer(python, {"kind": "embed", "model": str(onnx_file),
                                     "tokenizer": str(MINILM / "tokenizer.json"), "threads": args.threads,
                                     "runs": 1, "texts": texts, "batch": 32})
            return {**{name: transcribed[str(path)] for name, path in files.items()}, "embed": embedded}

        served = start_serve(BINARY, data, work / "serve.log", env)
        try:
            mine, theirs = asyncio.run(rounds(served.url, files, texts, args.runs, peers_once))
        finally:
            stop_serve(served)
    print(f"threads {args.threads}, median of {args.runs} rounds (each side once per round, in turn)\n")
    print(f"{'transcription':<16}{'audio s':>9}{'JetsonMind RTF':>16}{'faster-whisper RTF':>20}{'speed ratio':>13}")
    for name in files:
        duration = mine[name]["duration"]
        ours_s = statistics.median(mine[name]["seconds"])
        peer_s = statistics.median(theirs[name]["seconds"])
        print(f"{name:<16}{duration:>9.1f}{ours_s / duration:>16.3f}{peer_s / duration:>20.3f}{peer_s / ours_s:>13.2f}")
        print(f"  JetsonMind:     {mine[name]['text'][:110]}")
        print(f"  faster-whisper: {theirs[name]['text'][:110]}")
    ours_rate = len(texts) / statistics.median(mine["embed"]["seconds"])
    peer_rate = len(texts) / statistics.median(theirs["embed"]["seconds"])
    first = zip(mine["embed"]["first"], theirs["embed"]["first"])
    closeness = min(sum(a * b for a, b in zip(x, y)) for x, y in first)
    print(f"\n{'embeddings':<16}{'texts':>9}{'JetsonMind /s':>16}{'onnxruntime /s':>20}{'speed ratio':>13}")
    print(f"{'MiniLM-L6':<16}{len(texts):>9}{ours_rate:>16.1f}{peer_rate:>20.1f}{ours_rate / peer_rate:>13.2f}")
    print(f"  cosine of the two sides' vectors (lowest of the first 4): {closeness:.6f}")
    for name in [*files, "embed"]:
        each = [p / o for o, p in zip(mine[name]["seconds"], theirs[name]["seconds"])]
        print(f"  {name} ratio per round: {' '.join(f'{r:.2f}' for r in each)}")


if __name__ == "__main__":
    main()
