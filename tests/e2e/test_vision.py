"""image_analyze with real models through `jetsonmind serve`'s gateway, driven by the official Python MCP SDK:
EfficientNet-Lite0 (converted and imported by ./setup.sh) classifies scikit-image's sample photographs with the
right ImageNet class in its top five; a YOLOv8n detector (nudenet's 320n.onnx, a test asset only: its model says
AGPL-3.0) finds the astronaut's face; properties are measured on a picture whose figures are known; bad images get
clear errors and the server keeps serving."""

import base64
import struct
import zlib

import pytest
from mcp import Client

from conftest import MODELS, ROOT, import_model, make_data_dir, start_serve, stop_serve

pytestmark = pytest.mark.anyio

ASSETS = ROOT / "tests" / "e2e" / "assets"
CLASSIFIER = "efficientnet-lite0"
DETECTOR = "nudenet-320n"

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


@pytest.fixture(scope="module")
def vision_server(binary, tmp_path_factory):
    data = make_data_dir(binary, tmp_path_factory.mktemp("vision-data"))
    if not (MODELS / CLASSIFIER / "model.onnx").is_file():
        pytest.fail(f"{MODELS / CLASSIFIER} is missing: run ./setup.sh")
    import_model(binary, data, MODELS / CLASSIFIER, "--link", "--license", "apache-2.0")
    asset("320n.onnx")
    import_model(binary, data, ASSETS / "320n.onnx", "--name", DETECTOR, "--license", "agpl-3.0")
    served = start_serve(
        binary,
        data,
        tmp_path_factory.mktemp("logs") / "serve.log",
        {"JETSONMIND_COMPUTE__VISION__DETECT_MODEL": DETECTOR, "JETSONMIND_COMPUTE__VISION__MAX_PIXELS": "4000000"},
    )
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
    """A PNG of one colour, written by hand (no imaging library in the test environment)."""
    row = b"\x00" + bytes(rgb) * width
    return png_header(width, height) + png_chunk(b"IDAT", zlib.compress(row * height)) + png_chunk(b"IEND", b"")


async def test_properties_are_measured(vision_server):
    async with Client(vision_server.url) as client:
        result = await analyze(client, data_uri(png(64, 48, (200, 30, 30))), "properties")
        assert not result.is_error, text_of(result)
        out = result.structured_content
        assert (out["width"], out["height"], out["image"]["format"]) == (64, 48, "png")
        assert out["mean_rgb"] == [200.0, 30.0, 30.0]
        assert out["dominant_colours"] == [{"hex": "#c81e1e", "rgb": [200, 30, 30], "share": 1.0}]
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
