"""The whole app in process through httpx (Starlette's TestClient runs its lifespan): a real
tiny ONNX model, real PNG bytes, the same preprocessing and scores as a direct run."""

from __future__ import annotations

import io
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ln2d.preprocessing import normalise, to_pixels
from ln2d.serve.app import create_app
from ln2d.serve.model import Model
from ln2d.serve.settings import Settings
from tests.serve.prometheus import sample
from tests.tiny_models import ELSEWHERE, classifier, with_record


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(classifier(), str(path))
    return path


@pytest.fixture(scope="module")
def client(model_path):
    settings = Settings(model_path=model_path, max_batch=4, access_log=False)
    app = create_app(settings, Model(model_path, "cpu", cpu_fallback=False, threads=1))
    with TestClient(app) as http:
        deadline = time.monotonic() + 30
        while http.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        yield http


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_classify_equals_preprocessing_and_a_direct_run(client, model_path):
    pixels = np.random.default_rng(3).integers(0, 256, (20, 16), dtype=np.uint8)
    answer = client.post("/v1/classify?top_k=10", content=_png(pixels),
                         headers={"content-type": "image/png"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    x = normalise(to_pixels(Image.fromarray(pixels), 1, 8, 8), (0.5,), (0.25,))[None]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0][0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for p in prediction:
        assert p["score"] == pytest.approx(expected[p["index"]], abs=1e-6)
    assert prediction[0]["index"] == int(expected.argmax())


@pytest.mark.parametrize(
    ("body", "media_type", "status", "fragment"),
    [
        (b"not an image", "image/png", 400, "not a decodable image"),
        (b"", "image/png", 400, "empty image"),
        (b"{}", "application/json", 415, "unsupported media type"),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_message(client, body, media_type, status, fragment):
    answer = client.post("/v1/classify", content=body, headers={"content-type": media_type})
    assert answer.status_code == status and fragment in answer.json()["error"]


def test_model_and_metrics(client):
    model = client.get("/v1/model").json()
    assert model["name"] == "tiny" and model["version"] == "1" and len(model["labels"]) == 10
    metrics = client.get("/metrics").text
    # Prometheus writes labels sorted by name.
    request = 'endpoint="/v1/classify",model="tiny",status="200",version="1"'
    assert f"ln2d_requests_total{{{request}}} " in metrics
    assert 'ln2d_model_ready{model="tiny",version="1"} 1.0' in metrics


def test_openapi_documents_every_error_answer(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    error_ref = "#/components/schemas/ErrorResponse"
    expected = {
        ("/v1/classify", "post"): {"200", "400", "401", "404", "413", "415", "422", "503", "504"},
        ("/v1/models/{name}/classify", "post"): {"200", "400", "401", "404", "413", "503"},
        ("/v1/model", "get"): {"200", "401", "404"},
        ("/v1/models", "get"): {"200", "401"},
        ("/v2/repository/index", "post"): {"200", "400", "401"},
        ("/v2/repository/models/{name}/load", "post"): {"200", "400", "401", "403", "404"},
        ("/v2/repository/models/{name}/unload", "post"): {"200", "401", "403", "404"},
        ("/v2/models/{name}/infer", "post"): {
            "200",
            "400",
            "401",
            "404",
            "413",
            "415",
            "503",
            "504",
        },
        ("/v2/models/{name}/ready", "get"): {"200", "400", "401", "404"},
        ("/v2/health/ready", "get"): {"200", "400"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses <= set(responses), (path, sorted(responses))
        for status in statuses - {"200", "422"}:
            schema = responses[status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": error_ref}, (path, status)
    assert spec["components"]["schemas"]["ErrorResponse"]["required"] == ["error"]
    metrics = paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert any(media.startswith("text/plain") for media in metrics)
    # And the server answers as documented: an unknown model is a 404 with the error schema.
    answer = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert answer.status_code == 404 and set(answer.json()) == {"error"}


def test_io_binding_gives_the_logits_of_a_plain_run(model_path):
    """The GPU path's IO binding, exercised on the CPU device: one copy in, one copy out."""
    plain = Model(model_path, "cpu", cpu_fallback=False, threads=1)
    bound = Model(model_path, "cpu", cpu_fallback=False, threads=1, io_binding=True)
    batch = np.random.default_rng(5).standard_normal((3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(bound.run(batch), plain.run(batch))
    assert plain.run(batch[:1]).shape == bound.run(batch[:1]).shape == (1, 10)


def test_warm_before_serving_is_ready_at_startup_and_the_self_test_runs_the_model(
    model_path, tmp_path
):
    """What a Ray Serve replica uses: startup waits for the warm-up, and its health check
    (``self_test``) runs every loaded model, failing on non-finite logits or when not ready."""
    from ln2d.serve.errors import ApiError

    broken = classifier()
    weights = next(i for i in broken.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    values = onnx.numpy_helper.to_array(weights).copy()
    values.fill(np.nan)
    weights.CopyFrom(onnx.numpy_helper.from_array(values, weights.name))
    nan_path = tmp_path / "nan.onnx"
    onnx.save(broken, str(nan_path))
    for path, healthy in ((model_path, True), (nan_path, False)):
        settings = Settings(model_path=path, max_batch=4, access_log=False)
        app = create_app(settings, warm_before_serving=True)
        with TestClient(app) as http:
            assert http.get("/v2/health/ready").status_code == 200  # no polling: already warm
            state = app.state.ln2d
            if healthy:
                http.portal.call(state.self_test)
                state.set_not_ready("draining")
                with pytest.raises(ApiError, match="not ready: draining"):
                    http.portal.call(state.self_test)
            else:
                with pytest.raises(RuntimeError, match="non-finite logits"):
                    http.portal.call(state.self_test)


def _app_for(path, **settings):
    options = Settings(model_path=path, max_batch=4, access_log=False, **settings)
    return create_app(options, Model(path, "cpu", cpu_fallback=False, threads=1))


def _settled(http: TestClient) -> None:
    """Wait until startup has loaded (or failed to load) the model."""
    deadline = time.monotonic() + 30
    while "loading" in http.get("/v2/health/ready").json().get("error", ""):
        assert time.monotonic() < deadline, "the model never finished loading"
        time.sleep(0.05)


def test_a_model_whose_parity_record_fails_here_never_becomes_ready(tmp_path):
    path = tmp_path / "drifted.onnx"
    onnx.save(with_record(classifier(), shift=0.01), str(path))
    with TestClient(_app_for(path)) as http:
        _settled(http)
        ready = http.get("/v2/health/ready")
        assert ready.status_code == 400
        error = ready.json()["error"]
        assert "parity record does not hold on this machine" in error and "max abs error" in error
        refused = http.post("/v1/classify", content=_png(np.zeros((8, 8), np.uint8)))
        assert refused.status_code == 503
        assert sample(http.get("/metrics").text, "ln2d_parity_record_ratio", model="tiny") > 1


def test_an_accepted_drift_serves_and_the_metadata_shows_it(tmp_path):
    path = tmp_path / "drifted.onnx"
    onnx.save(with_record(classifier(), shift=0.01), str(path))
    with TestClient(_app_for(path, accept_drift=True)) as http:
        _settled(http)
        assert http.get("/v2/health/ready").status_code == 200
        record = http.get("/v2/models/tiny").json()["parameters"]["parity_record"]
        assert record["passed"] is False and record["ratio"] > 1 and record["samples"] == 4
        assert record["recorded_on"]["cpu_features"] == ELSEWHERE["cpu_features"]
        answer = http.post("/v1/classify", content=_png(np.zeros((8, 8), np.uint8)),
                           headers={"content-type": "image/png"})  # fmt: skip
        assert answer.status_code == 200
