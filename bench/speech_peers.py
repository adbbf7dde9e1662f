"""The peers of bench/speech.py, run in their own venv (bench/cache/peers): faster-whisper on a CTranslate2
whisper directory and onnxruntime on an ONNX sentence-embedding model. Reads a JSON job on stdin, prints JSON."""

import json
import sys
import time


def transcribe(job):
    from faster_whisper import WhisperModel

    model = WhisperModel(job["model"], device="cpu", compute_type="float32", cpu_threads=job["threads"])
    results = {}
    for path in job["files"]:
        # Greedy, timestamps on, each window prompted with the text so far, no VAD: what JetsonMind does.
        options = dict(beam_size=1, temperature=0.0, language="en", vad_filter=False, condition_on_previous_text=True)
        list(model.transcribe(job["warmup"], **options)[0])
        times, text = [], ""
        for _ in range(job["runs"]):
            started = time.perf_counter()
            segments, _ = model.transcribe(path, **options)
            text = " ".join(s.text.strip() for s in segments)
            times.append(time.perf_counter() - started)
        results[path] = {"seconds": times, "text": text}
    return results


def embed(job):
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(job["tokenizer"])
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
    texts, batch = job["texts"], job["batch"]

    def run():
        vectors = []
        for at in range(0, len(texts), batch):
            encoded = tokenizer.encode_batch(texts[at : at + batch])
            ids = np.array([e.ids for e in encoded], np.int64)
            mask = np.array([e.attention_mask for e in encoded], np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            vectors.extend(session.run(None, feed)[0].tolist())
        return vectors

    run()
    times = []
    for _ in range(job["runs"]):
        started = time.perf_counter()
        vectors = run()
        times.append(time.perf_counter() - started)
    return {"seconds": times, "first": vectors[:4]}


if __name__ == "__main__":
    job = json.load(sys.stdin)
    print(json.dumps({"transcribe": transcribe, "embed": embed}[job["kind"]](job)))
