"""The server as clients meet it: a real ``ln2d serve`` process on 127.0.0.1 with the real
exported digits model, real image bytes, raw HTTP (httpx) and the stock tritonclient."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from ln2d.data import Preprocessing
from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import reference_session
from tests.images import digit, encode, png, png_header_only
from tests.serve.prometheus import sample

pytestmark = pytest.mark.integration

MODEL = "ln2d-layernorm2d"
MAX_BODY = 1_000_000


@pytest.fixture(scope="module")
def server(digits_onnx):
    with ServerProcess(
        digits_onnx, ["--max-body-bytes", str(MAX_BODY), "--max-images", "8"]
    ) as running:
        yield running
    assert running.process.returncode == 0


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def reference(digits_onnx):
    """Softmax scores computed without the server: ln2d's own preprocessing + ORT."""
    session = reference_session(digits_onnx)
    meta = session.get_modelmeta().custom_metadata_map
    pre = Preprocessing.from_dict(json.loads(meta["ln2d.input"]))

    def scores(pixels: np.ndarray) -> np.ndarray:
        x = pre(pixels[None, :, :, None])
        (logits,) = session.run(None, {"input": x})
        e = np.exp(logits[0].astype(np.float64) - logits[0].max())
        return e / e.sum()

    return scores


def by_index(prediction: list[dict]) -> dict[int, float]:
    return {p["index"]: p["score"] for p in prediction}


def classify(http: httpx.Client, body: bytes, media_type: str = "image/png", **params) -> dict:
    response = http.post(
        "/v1/classify", content=body, headers={"content-type": media_type}, params=params
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_classify_png_equals_the_training_pipeline_and_onnxruntime(http, reference):
    pixels, label = digit(3)
    answer = classify(http, png(pixels), top_k=10)
    assert answer["model"] == MODEL and answer["provider"] == "CPUExecutionProvider"
    (prediction,) = answer["predictions"]
    assert prediction[0]["label"] == label
    scores = [p["score"] for p in prediction]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-6
    expected = reference(pixels)
    for index, score in by_index(prediction).items():
        assert score == pytest.approx(expected[index], abs=1e-6)
    assert set(answer["timings_ms"]) == {"decode", "queue", "inference", "total"}


def test_multipart_several_files_keep_their_order(http):
    files = [("file", (f"{i}.png", png(digit(i)[0]), "image/png")) for i in range(4)]
    answer = http.post("/v1/classify", files=files, params={"top_k": 1}).json()
    assert [p[0]["label"] for p in answer["predictions"]] == [digit(i)[1] for i in range(4)]


LOSSLESS = {
    "image/png": ("PNG", {}),
    "image/bmp": ("BMP", {}),
    "image/tiff": ("TIFF", {}),
    "image/gif": ("GIF", {}),
    "image/webp": ("WEBP", {"lossless": True}),
}


@pytest.mark.parametrize("media_type", sorted(LOSSLESS))
def test_every_lossless_format_gives_the_png_scores(http, media_type):
    pixels, _ = digit(5)
    fmt, options = LOSSLESS[media_type]
    got = classify(http, encode(Image.fromarray(pixels), fmt, **options), media_type, top_k=10)
    want = classify(http, png(pixels), top_k=10)
    assert by_index(got["predictions"][0]) == pytest.approx(by_index(want["predictions"][0]))


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda im: im.convert("RGB"), id="RGB"),
        pytest.param(lambda im: im.convert("RGBA"), id="RGBA"),
        pytest.param(lambda im: im.convert("LA"), id="LA"),
        pytest.param(lambda im: im.convert("P"), id="palette"),
        pytest.param(
            lambda im: Image.fromarray(np.asarray(im).astype(np.uint16) * 257), id="16-bit"
        ),
    ],
)
def test_modes_are_converted_to_what_the_model_expects(http, convert):
    pixels, _ = digit(7)
    got = classify(http, encode(convert(Image.fromarray(pixels)), "PNG"), top_k=10)
    want = classify(http, png(pixels), top_k=10)
    assert by_index(got["predictions"][0]) == pytest.approx(by_index(want["predictions"][0]))


def test_jpeg_and_cmyk_jpeg_classify_like_the_png(http):
    pixels, label = digit(9)
    big = Image.fromarray(pixels).resize((64, 64))
    for image in (big, big.convert("CMYK")):
        answer = classify(http, encode(image, "JPEG", quality=95), "image/jpeg")
        assert answer["predictions"][0][0]["label"] == label


def test_exif_orientation_is_applied(http):
    pixels, _ = digit(11)
    upright = Image.fromarray(pixels)
    # Stored rotated; EXIF orientation 6 tells the viewer to rotate 90 degrees clockwise back.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    got = classify(http, encode(stored, "PNG", exif=exif), top_k=10)
    want = classify(http, png(pixels), top_k=10)
    assert by_index(got["predictions"][0]) == pytest.approx(by_index(want["predictions"][0]))


def _multipart(*parts: tuple[str, bytes, str]) -> dict:
    return {"files": [(name, ("x", data, media)) for name, data, media in parts]}


GOOD_PNG = png(digit(0)[0])
V2_PATH = f"/v2/models/{MODEL}/infer"


def _v2(inputs: list[dict], **extra: object) -> dict:
    return {"content": json.dumps({"inputs": inputs, **extra}).encode()}


def _tensor(**changes: object) -> dict:
    tensor = {"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [0.0] * 256}
    return {**tensor, **changes}


HOSTILE = [
    # (id, method, path, request kwargs, expected status)
    (
        "text-body",
        "POST",
        "/v1/classify",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
    ),
    (
        "svg",
        "POST",
        "/v1/classify",
        {"content": b"<svg/>", "headers": {"content-type": "image/svg+xml"}},
        415,
    ),
    ("no-content-type", "POST", "/v1/classify", {"content": GOOD_PNG}, 415),
    (
        "empty",
        "POST",
        "/v1/classify",
        {"content": b"", "headers": {"content-type": "image/png"}},
        400,
    ),
    (
        "garbage",
        "POST",
        "/v1/classify",
        {"content": b"\x00" * 500, "headers": {"content-type": "image/png"}},
        400,
    ),
    (
        "truncated",
        "POST",
        "/v1/classify",
        {"content": GOOD_PNG[:60], "headers": {"content-type": "image/png"}},
        400,
    ),
    (
        "bomb-header",
        "POST",
        "/v1/classify",
        {"content": png_header_only(100_000, 100_000), "headers": {"content-type": "image/png"}},
        413,
    ),
    (
        "bomb-under-pil-limit",
        "POST",
        "/v1/classify",
        {"content": png_header_only(8000, 6000), "headers": {"content-type": "image/png"}},
        413,
    ),
    (
        "body-too-large",
        "POST",
        "/v1/classify",
        {"content": b"\x00" * (MAX_BODY + 1), "headers": {"content-type": "image/png"}},
        413,
    ),
    (
        "chunked-too-large",
        "POST",
        "/v1/classify",
        {"content": iter([b"\x00" * 65536] * 20), "headers": {"content-type": "image/png"}},
        413,
    ),
    (
        "gzip",
        "POST",
        "/v1/classify",
        {"content": GOOD_PNG, "headers": {"content-type": "image/png", "content-encoding": "gzip"}},
        415,
    ),
    (
        "top-k-zero",
        "POST",
        "/v1/classify?top_k=0",
        {"content": GOOD_PNG, "headers": {"content-type": "image/png"}},
        422,
    ),
    (
        "top-k-text",
        "POST",
        "/v1/classify?top_k=abc",
        {"content": GOOD_PNG, "headers": {"content-type": "image/png"}},
        422,
    ),
    (
        "multipart-no-file",
        "POST",
        "/v1/classify",
        {"data": {"name": "x"}, "files": {"other": ("x", b"1")}},
        400,
    ),
    (
        "multipart-text-file",
        "POST",
        "/v1/classify",
        _multipart(("file", b"hello", "text/plain")),
        415,
    ),
    (
        "multipart-too-many",
        "POST",
        "/v1/classify",
        _multipart(*[("file", GOOD_PNG, "image/png")] * 9),
        400,
    ),
    (
        "multipart-broken",
        "POST",
        "/v1/classify",
        {
            "content": b"--x\r\nbroken",
            "headers": {"content-type": "multipart/form-data; boundary=x"},
        },
        400,
    ),
    ("v2-not-json", "POST", V2_PATH, {"content": b"{nope"}, 400),
    ("v2-not-object", "POST", V2_PATH, {"content": b"[1, 2]"}, 400),
    ("v2-not-utf8", "POST", V2_PATH, {"content": b"\xff\xfe{}"}, 400),
    ("v2-no-inputs", "POST", V2_PATH, {"content": b"{}"}, 400),
    ("v2-unknown-input", "POST", V2_PATH, _v2([_tensor(name="x")]), 400),
    ("v2-int32", "POST", V2_PATH, _v2([_tensor(datatype="INT32")]), 400),
    ("v2-bad-shape", "POST", V2_PATH, _v2([_tensor(shape=[1, 3, 16, 16])]), 400),
    ("v2-shape-not-ints", "POST", V2_PATH, _v2([_tensor(shape=[1, 1, 16, "16"])]), 400),
    (
        "v2-too-many-images",
        "POST",
        V2_PATH,
        _v2([_tensor(shape=[9, 1, 16, 16], data=[0.0] * 9 * 256)]),
        400,
    ),
    ("v2-short-data", "POST", V2_PATH, _v2([_tensor(data=[0.0] * 255)]), 400),
    ("v2-string-data", "POST", V2_PATH, _v2([_tensor(data=["0"] * 256)]), 400),
    ("v2-ragged-data", "POST", V2_PATH, _v2([_tensor(data=[[0.0], [0.0, 1.0]])]), 400),
    (
        "v2-nan",
        "POST",
        V2_PATH,
        {"content": json.dumps({"inputs": [_tensor(data=[float("nan")] * 256)]}).encode()},
        400,
    ),
    (
        "v2-infinity",
        "POST",
        V2_PATH,
        {"content": json.dumps({"inputs": [_tensor(data=[float("inf")] * 256)]}).encode()},
        400,
    ),
    (
        "v2-header-length-text",
        "POST",
        V2_PATH,
        {"content": b"{}", "headers": {"inference-header-content-length": "x"}},
        400,
    ),
    (
        "v2-header-length-too-big",
        "POST",
        V2_PATH,
        {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
        400,
    ),
    (
        "v2-header-length-negative",
        "POST",
        V2_PATH,
        {"content": b"{}", "headers": {"inference-header-content-length": "-1"}},
        400,
    ),
    ("v2-unknown-output", "POST", V2_PATH, _v2([_tensor()], outputs=[{"name": "probs"}]), 400),
    (
        "v2-bad-classification",
        "POST",
        V2_PATH,
        _v2([_tensor()], outputs=[{"name": "logits", "parameters": {"classification": -1}}]),
        400,
    ),
    (
        "v2-gzip",
        "POST",
        V2_PATH,
        {**_v2([_tensor()]), "headers": {"content-encoding": "gzip"}},
        415,
    ),
    ("v2-unknown-model", "POST", "/v2/models/nope/infer", _v2([_tensor()]), 404),
    ("v2-unknown-version", "POST", f"/v2/models/{MODEL}/versions/7/infer", _v2([_tensor()]), 404),
    # '²' is a digit to str.isdigit, not to int(): found by the contract test as a 500.
    ("v2-unicode-version", "POST", f"/v2/models/{MODEL}/infer?version=²", _v2([_tensor()]), 404),
    ("v1-unknown-model", "POST", "/v1/models/nope/classify", {"content": b""}, 404),
    ("unknown-path", "GET", "/nope", {}, 404),
    ("wrong-method", "GET", "/v1/classify", {}, 405),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE],
)
def test_hostile_input_gets_its_4xx_and_the_server_goes_on(http, method, path, kwargs, status):
    response = http.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200
    assert classify(http, GOOD_PNG)["predictions"][0][0]["label"] == digit(0)[1]


def test_binary_tensor_with_bad_sizes_or_nan(http):
    values = np.zeros((1, 1, 16, 16), np.float32)
    for data, size in [
        (values.tobytes(), 1000),  # claims more than the shape holds
        (values.tobytes() + b"\x00" * 4, 1024),  # leftover bytes
        (np.full_like(values, np.nan).tobytes(), 1024),
    ]:
        tensor = _tensor(parameters={"binary_data_size": size})
        del tensor["data"]
        header = json.dumps({"inputs": [tensor]}).encode()
        response = http.post(
            V2_PATH,
            content=header + data,
            headers={"inference-header-content-length": str(len(header))},
        )
        assert response.status_code == 400, response.text


def test_request_id_is_echoed_or_made(http):
    assert (
        http.get("/v2/health/live", headers={"x-request-id": "abc-1"}).headers["x-request-id"]
        == "abc-1"
    )
    made = http.get("/v2/health/live").headers["x-request-id"]
    assert made and made != "abc-1"


def test_metrics_count_requests_and_stages(http):
    classify(http, GOOD_PNG)
    text = http.get("/metrics").text
    served = {"model": MODEL, "version": "1"}
    assert sample(text, "ln2d_requests_total", endpoint="/v1/classify", status="200", **served)
    # A 415 is refused before the model is looked up: no model label.
    assert sample(text, "ln2d_requests_total", endpoint="/v1/classify", status="415")
    for stage in ("decode", "queue", "inference", "total"):
        assert sample(text, "ln2d_stage_seconds_count", stage=stage, **served) >= 1
    assert sample(text, "ln2d_model_load_seconds", **served) > 0
    assert sample(text, "ln2d_model_memory_bytes", **served) >= 0
    assert sample(text, "ln2d_model_ready", **served) == 1
    assert sample(text, "ln2d_ready") == 1
    assert sample(text, "ln2d_batch_size_count", **served) >= 1


def test_openapi_docs_and_model_info(http):
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    assert "image/png" in spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    info = http.get("/v1/model").json()
    assert info["name"] == MODEL and info["labels"] == [str(i) for i in range(10)]
    assert info["input"]["channels"] == 1
