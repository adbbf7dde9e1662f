"""image_analyze and multi_modal_inference with real models through `jetsonmind serve`'s gateway, driven by the
official Python MCP SDK: EfficientNet-Lite0 (converted and imported by ./setup.sh) classifies scikit-image's sample
photographs with the right ImageNet class in its top five; PP-OCRv4 reads text rendered at test time with a character
error rate under 5%; a YOLOv8n detector (nudenet's 320n.onnx, a test asset only: its model says AGPL-3.0) finds the
astronaut's face; properties are measured on a picture whose figures are known; the language model answers a question
about a photograph (and a spoken one) with the photograph's class, describes a picture from what was found in it, and
stops when cancelled; bad images get clear errors and the server keeps serving."""

import base64
import io
import struct
import zlib

import anyio
import pytest
from mcp import Client
from PIL import Image, ImageDraw, ImageFont

from conftest import MODELS, ROOT, cancel_once_started, import_model, make_data_dir, read_json, start_serve, stop_serve
from test_speech import speak

pytestmark = pytest.mark.anyio

ASSETS = ROOT / "tests" / "e2e" / "assets"
CLASSIFIER = "efficientnet-lite0"
DETECTOR = "nudenet-320n"
TEXT_READER = "ppocr-v4"
SPEECH = "whisper-tiny.en"

# ImageNet classes (index: label) any of which is a right answer for the photograph.
PHOTOS = {
    "chelsea.png": {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"},
    "coffee.png": {967: "espresso", 968: "cup", 504: "coffee mug"},
    "rocket.jpg": {657: "missile", 744: "projectile", 812: "space shuttle"},
    "motorcycle_left.png": {665: "moped", 670: "motor scooter"},
}


def asset(name):
    path = ASSETS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run ./setup.sh")
    return path.read_bytes()


def data_uri(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def start_vision_server(binary, tmp_path_factory, runtime):
    """`jetsonmind serve` with the test models imported, its image models on `runtime` (named, so a missing ONNX
    Runtime library fails the test instead of falling back to tract)."""
    data = make_data_dir(binary, tmp_path_factory.mktemp(f"vision-data-{runtime}"))
    if not (MODELS / CLASSIFIER / "model.onnx").is_file():
        pytest.fail(f"{MODELS / CLASSIFIER} is missing: run ./setup.sh")
    for model in (CLASSIFIER, TEXT_READER, SPEECH):
        if not (MODELS / model).is_dir():
            pytest.fail(f"{MODELS / model} is missing: run ./setup.sh")
        import_model(binary, data, MODELS / model, "--link")
    asset("320n.onnx")
    import_model(binary, data, ASSETS / "320n.onnx", "--name", DETECTOR, "--license", "agpl-3.0")
    return start_serve(
        binary,
        data,
        tmp_path_factory.mktemp(f"logs-{runtime}") / "serve.log",
        {
            "JETSONMIND_COMPUTE__VISION__DETECT_MODEL": DETECTOR,
            "JETSONMIND_COMPUTE__VISION__MAX_PIXELS": "4000000",
            "JETSONMIND_COMPUTE__VISION__RUNTIME": runtime,
        },
    )


@pytest.fixture(scope="module")
def vision_server(binary, tmp_path_factory):
    served = start_vision_server(binary, tmp_path_factory, "onnxruntime")
    yield served
    stop_serve(served)


async def analyze(client, image, analysis_type, **options):
    return await client.call_tool("image_analyze", {"image_data": image, "analysis_type": analysis_type, **options})


def text_of(result):
    return " ".join(c.text for c in result.content if c.type == "text")


@pytest.mark.parametrize("photo", sorted(PHOTOS))
async def test_photos_are_classified_with_the_right_class_in_the_top_five(vision_server, photo):
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(asset(photo)), "classify")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert out["model"] == CLASSIFIER
        assert out["engine"].startswith("onnx classifier on onnxruntime 1."), out["engine"]
        assert len(out["classes"]) == 5
        right = PHOTOS[photo]
        found = [c for c in out["classes"] if c["class_id"] in right]
        assert found, f"{photo}: {out['classes']}"
        assert all(c["label"] == right[c["class_id"]] for c in found)
        scores = [c["score"] for c in out["classes"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
        assert out["classes"][0]["label"] in text_of(result)
        assert out["image"]["format"] == photo.rsplit(".", 1)[1].replace("jpg", "jpeg")


async def test_the_astronauts_face_is_detected(vision_server):
    async with Client(vision_server.url) as client:
        result = await analyze(client, base64.b64encode(asset("astronaut.png")).decode(), "detect")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert out["model"] == DETECTOR
        faces = [d for d in out["detections"] if d["label"].startswith("FACE_")]
        assert faces, out["detections"]
        face = faces[0]["box"]
        # Eileen Collins's face in the 512x512 photograph: centred near (224, 131), about 100 pixels across.
        centre = (face["x"] + face["width"] / 2, face["y"] + face["height"] / 2)
        assert abs(centre[0] - 224) < 30 and abs(centre[1] - 131) < 30, face
        assert 60 < face["width"] < 150 and 60 < face["height"] < 150, face
        assert faces[0]["score"] > 0.5
        assert "FACE_" in text_of(result)

        # The classifier is not a detector: the error says what it is.
        result = await analyze(client, data_uri(asset("astronaut.png")), "detect", model=CLASSIFIER)
        assert result.is_error and "is an image classifier, not an image object detector" in text_of(result)


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width, height):
    """A PNG's signature and header: 8-bit RGB of `width` x `height`."""
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def png(width, height, rgb):
    """A PNG of one colour, written byte by byte (its pixels exactly known)."""
    row = b"\x00" + bytes(rgb) * width
    return png_header(width, height) + png_chunk(b"IDAT", zlib.compress(row * height)) + png_chunk(b"IEND", b"")


async def test_properties_are_measured(vision_server):
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(png(64, 48, (200, 30, 30))), "properties")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert (out["width"], out["height"], out["image"]["format"]) == (64, 48, "png")
        assert out["mean_rgb"] == [200.0, 30.0, 30.0]
        assert out["dominant_colours"] == [{"hex": "#c81e1e", "name": "red", "rgb": [200, 30, 30], "share": 1.0}]
        assert out["focus"] == "blurry" and out["sharpness"] == 0.0
        assert "64x48 PNG" in text_of(result)

        photo = (await analyze(client, data_uri(asset("chelsea.png")), "properties")).structured_content
        assert (photo["width"], photo["height"]) == (451, 300)
        assert photo["sharpness"] > 0 and not photo["grayscale"]
        assert 0 < photo["brightness"] < 255 and len(photo["dominant_colours"]) >= 2


async def test_bad_images_get_clear_errors_and_the_server_keeps_serving(vision_server):
    photo = asset("chelsea.png")
    # A valid PNG header claiming 100000 x 100000 pixels (30 GB decoded), with a few bytes of pixels after it.
    huge = png_header(100_000, 100_000) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b"")
    cases = {
        "truncated": (data_uri(photo[: len(photo) // 2]), "damaged or truncated"),
        "huge": (data_uri(huge), "takes at most 4000000 (compute.vision.max_pixels)"),
        "not an image": (base64.b64encode(b"hello, this is text").decode(), "not an image this server reads"),
        "not base64": ("%%% not base64 %%%", "neither base64 nor a data URI"),
        "a path not allowed": ("/etc/passwd", "compute.vision.allowed_dirs is empty"),
    }
    async with Client(vision_server.url) as client:
        for case, (image, expected) in cases.items():
            for analysis_type in ("classify", "properties"):
                result = await analyze(client, image, analysis_type)
                assert result.is_error, f"{case}: {result.structured_content}"
                assert expected in text_of(result), f"{case}: {text_of(result)}"
        result = await analyze(client, data_uri(photo), "classify", top_k=0)
        assert result.is_error and "top_k" in text_of(result)
        result = await analyze(client, data_uri(photo), "detect", min_score=2)
        assert result.is_error and "min_score" in text_of(result)
        result = await analyze(client, data_uri(photo), "classify")
        assert not result.is_error, text_of(result)


# Text of the kinds a camera meets: a sentence, figures and punctuation, a name.
TEXT_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice 2026-11-30: total 1,234.56 EUR",
    "Gate 14 closes at 09:45",
]


def rendered(lines, size=34, angle=0):
    """A white picture with `lines` of black text in Pillow's own font, turned by `angle` degrees; PNG bytes and
    where each line was drawn (its top and bottom)."""
    font = ImageFont.load_default(size=size)
    picture = Image.new("RGB", (900, 80 + len(lines) * 2 * size), "white")
    draw = ImageDraw.Draw(picture)
    spans = []
    for i, line in enumerate(lines):
        top = 40 + i * 2 * size
        box = draw.textbbox((40, top), line, font=font)
        draw.text((40, top), line, fill="black", font=font)
        spans.append((box[1], box[3]))
    if angle:
        picture = picture.rotate(angle, expand=True, fillcolor="white", resample=Image.BICUBIC)
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue(), spans


def edit_distance(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def character_error_rate(expected, read):
    return edit_distance(expected, read) / len(expected)


async def test_rendered_text_is_read_line_by_line_with_its_boxes(vision_server):
    image, spans = rendered(TEXT_LINES)
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(image), "ocr")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert out["model"] == TEXT_READER
        read = [line["text"] for line in out["lines"]]
        assert len(read) == len(TEXT_LINES), read
        expected = "\n".join(TEXT_LINES)
        assert character_error_rate(expected, out["text"]) < 0.05, (expected, out["text"])
        assert out["text"] == "\n".join(read)
        for line, (top, bottom) in zip(out["lines"], spans):
            middle = line["box"]["y"] + line["box"]["height"] / 2
            assert top - 5 < middle < bottom + 5, (line, top, bottom)
            assert 0.5 < line["confidence"] <= 1 and len(line["corners"]) == 4
        assert f'"{read[0]}"' in text_of(result)


async def test_turned_text_is_read_too(vision_server):
    image, _ = rendered(TEXT_LINES[:2], angle=7)
    async with Client(vision_server.url) as client:
        out = (await analyze(client, data_uri(image), "ocr")).structured_content
        assert character_error_rate("\n".join(TEXT_LINES[:2]), out["text"]) < 0.05, out["text"]


async def test_a_photograph_without_text_reads_none_and_limits_hold(vision_server):
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(png(200, 100, (240, 240, 240))), "ocr")
        assert not result.is_error, text_of(result)
        assert result.structured_content["lines"] == [] and "Found no text" in text_of(result)
        image, _ = rendered(TEXT_LINES)
        out = (await analyze(client, data_uri(image), "ocr", max_lines=1)).structured_content
        assert len(out["lines"]) == 1
        result = await analyze(client, data_uri(image), "ocr", model=CLASSIFIER)
        assert result.is_error and "not an image text reader (OCR)" in text_of(result)


async def test_multi_modal_answers_about_the_photograph_with_its_class(vision_server):
    stages = []

    async def on_progress(progress, total, message):
        stages.append(message)

    question = {
        "text": "",
        "image": data_uri(asset("chelsea.png")),
        "task": "What animal is in the picture? Answer with one word.",
    }
    async with Client(vision_server.url) as client:
        result = await client.call_tool("multi_modal_inference", question, progress_callback=on_progress)
        assert not result.is_error, text_of(result)
        out = result.structured_content
        labels = [c["label"] for c in out["image"]["classify"]["classes"]]
        assert labels[0] in PHOTOS["chelsea.png"].values(), labels
        assert "cat" in out["answer"].lower() or "tabby" in out["answer"].lower(), out
        assert {"ocr", "properties"} <= set(out["image"]) and "audio" not in out
        assert "not the image or audio itself" in out["derived_from"]
        assert text_of(result) == out["answer"]
        assert stages[0] == "reading the image and audio" and stages[-1] == "answering", stages

        # A spoken question about the same photograph: both parts run, the transcript reaches the model.
        spoken = base64.b64encode(await speak(client, "What kind of animal is this?")).decode()
        both = {**question, "audio": spoken, "task": "Answer the spoken question with one word."}
        out = (await client.call_tool("multi_modal_inference", both)).structured_content
        assert "animal" in out["audio"]["text"].lower(), out["audio"]
        assert "cat" in out["answer"].lower() or "tabby" in out["answer"].lower(), out


async def test_describe_writes_from_the_findings_and_says_so(vision_server):
    image, _ = rendered(["OPEN DAILY 9 TO 5"], size=60)
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(image), "describe")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert out["description"] and "not from the picture itself" in text_of(result)
        assert "OPEN DAILY" in out["findings"]["ocr"]["text"]
        assert out["findings"]["properties"]["dominant_colours"][0]["name"] == "white"
        assert "no model looked at the picture as a whole" in out["derived_from"]


async def test_bad_parts_get_clear_errors_and_cancelling_stops_the_answer(vision_server):
    async with Client(vision_server.url) as client:
        bad = {"text": "", "image": base64.b64encode(b"not a picture").decode(), "task": "What is it?"}
        result = await client.call_tool("multi_modal_inference", bad)
        assert result.is_error and "the image:" in text_of(result) and "not an image" in text_of(result)
        result = await client.call_tool("multi_modal_inference", {"text": "hi", "task": ""})
        assert result.is_error and "task" in text_of(result)

        answering = anyio.Event()

        async def on_progress(progress, total, message):
            if message == "answering":
                answering.set()

        story = {
            "text": "",
            "image": data_uri(asset("chelsea.png")),
            "task": "Count from 1 to 1000, one number per line.",
            "max_tokens": 4000,
        }
        await cancel_once_started(
            lambda: client.call_tool("multi_modal_inference", story, progress_callback=on_progress),
            answering,
            "a 4000-token count",
        )

        async def generating():
            status = await read_json(client, "jetson://compute/status")
            return status["running"]

        with anyio.fail_after(5):
            while await generating():
                await anyio.sleep(0.1)


def test_an_openai_client_sends_a_picture(vision_server):
    import openai

    client = openai.OpenAI(base_url=vision_server.url.removesuffix("/mcp") + "/v1", api_key="unused", max_retries=0)
    content = [
        {"type": "text", "text": "What animal is in the picture? Answer with one word."},
        {"type": "image_url", "image_url": {"url": data_uri(asset("chelsea.png"))}},
    ]
    request = {"model": "default", "messages": [{"role": "user", "content": content}], "max_tokens": 24}
    answer = client.chat.completions.create(**request).choices[0].message.content
    assert "cat" in answer.lower() or "tabby" in answer.lower(), answer
    chunks = list(client.chat.completions.create(**request, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    web = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": web}])
    assert "data URI" in refused.value.body["message"]


async def test_a_picture_sent_again_is_not_decoded_again(vision_server):
    picture = data_uri(png(321, 123, (10, 200, 90)))
    async with Client(vision_server.url) as client:
        before = (await read_json(client, "jetson://data/cache"))["by_kind"].get("image/decoded", {})
        first = (await analyze(client, picture, "properties")).structured_content
        again = (await analyze(client, picture, "classify")).structured_content
        after = await read_json(client, "jetson://data/cache")
        decoded = after["by_kind"]["image/decoded"]
        assert decoded["misses"] == before.get("misses", 0) + 1
        assert decoded["hits"] == before.get("hits", 0) + 1
        assert after["recent"][0]["kind"] == "image/decoded" and after["recent"][0]["bytes"] == 321 * 123 * 3
        assert 0 < after["bytes"] <= after["max_bytes"] and after["ttl_seconds"] == 600
        assert "jetson://cache/inference" in after["see_also"]
        assert again["image"] == first["image"]


async def test_tract_finds_what_onnxruntime_finds(binary, tmp_path_factory, vision_server):
    """The other runtime (tract, in the binary) runs the same models to the same findings: the same best class and
    top five of each photograph, the astronaut's face within two pixels, the same text read."""
    text, _ = rendered(TEXT_LINES)
    requests = [(data_uri(asset(photo)), "classify") for photo in sorted(PHOTOS)]
    requests += [(data_uri(asset("astronaut.png")), "detect"), (data_uri(text), "ocr")]
    tract = start_vision_server(binary, tmp_path_factory, "tract")
    try:
        found = {}
        for name, served in (("onnxruntime", vision_server), ("tract", tract)):
            async with Client(served.url) as client:
                results = [await analyze(client, image, task) for image, task in requests]
            assert not any(r.is_error for r in results), [text_of(r) for r in results]
            found[name] = [r.structured_content for r in results]
    finally:
        stop_serve(tract)
    assert found["tract"][0]["engine"] == "onnx classifier on tract"
    *classified, detected, read = zip(found["onnxruntime"], found["tract"])
    for ours, theirs in classified:
        assert [c["label"] for c in ours["classes"]] == [c["label"] for c in theirs["classes"]], (ours, theirs)
        assert all(abs(a["score"] - b["score"]) < 0.01 for a, b in zip(ours["classes"], theirs["classes"]))
    faces = [[d for d in out["detections"] if d["label"].startswith("FACE_")][0]["box"] for out in detected]
    assert all(abs(faces[0][k] - faces[1][k]) <= 2 for k in ("x", "y", "width", "height")), faces
    assert read[0]["text"] == read[1]["text"], read


@pytest.mark.parametrize("runtime", ["onnxruntime", "auto"])
async def test_without_the_onnxruntime_library_image_models_say_why_or_run_on_tract(binary, tmp_path, runtime):
    """Asked for by name, a missing ONNX Runtime library fails the image model's load with the reason and the
    server keeps serving; `auto` runs the model on tract instead."""
    data = make_data_dir(binary, tmp_path / "data")
    import_model(binary, data, MODELS / CLASSIFIER, "--link")
    missing = tmp_path / "nowhere" / "libonnxruntime.so"
    env = {"JETSONMIND_COMPUTE__VISION__RUNTIME": runtime, "JETSONMIND_COMPUTE__VISION__ONNXRUNTIME_LIBRARY": str(missing)}
    served = start_serve(binary, data, tmp_path / "serve.log", env)
    try:
        async with Client(served.url) as client:
            result = await analyze(client, data_uri(asset("chelsea.png")), "classify")
            if runtime == "onnxruntime":
                assert result.is_error, result.structured_content
                assert 'compute.vision.runtime is "onnxruntime"' in text_of(result), text_of(result)
                assert str(missing) in text_of(result), text_of(result)
                result = await analyze(client, data_uri(asset("chelsea.png")), "properties")
                assert not result.is_error, text_of(result)
            else:
                assert not result.is_error, text_of(result)
                assert result.structured_content["engine"] == "onnx classifier on tract"
                assert result.structured_content["classes"][0]["class_id"] in PHOTOS["chelsea.png"]
    finally:
        stop_serve(served)
    if runtime == "auto":
        assert "image models run on tract: ONNX Runtime's library did not load" in served.log.read_text()
