"""The browser page at ``/``, driven in a real headless Chromium (Debian's, through Playwright)
against a real ``ln2d serve`` on loopback with the exported digits model.

Screenshots go to ``artifacts/screenshots/`` (``LN2D_SCREENSHOTS`` overrides it)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import run_cli
from tests.images import digit, encode

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("LN2D_SCREENSHOTS", "artifacts/screenshots"))
# Headless, and nothing that phones home: the page and the server must work offline.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]
PHONE = {"width": 375, "height": 740}
# Every wait is for an event (a file chooser, a selector, a response); this only bounds how long
# a loaded 2-core machine may take before a missing event counts as a failure.
TIMEOUT_MS = 60_000
ANSWERED = "Failed to load resource: the server responded with a status of"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.any_target,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser`"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(digits_onnx) -> Iterator[ServerProcess]:
    process = ServerProcess(digits_onnx)
    yield process
    assert process.stop() == 0


class Page:
    """One browser tab on a server's page, recording anything that would mean a broken page."""

    def __init__(self, browser, url: str, **context: object) -> None:
        self.context = browser.new_context(**context)
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.tab.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.tab.on("console", self._console)
        self.tab.on(
            "request",
            lambda r: (
                r.url.startswith((url, "blob:", "data:"))
                or self.problems.append(f"left the server: {r.url}")
            ),
        )
        self.tab.goto(url + "/")
        self.tab.wait_for_function("() => document.getElementById('model-info').textContent")

    def _console(self, message) -> None:
        # Chromium logs every 4xx/5xx answer as a console error; those are served answers the
        # page explains, not failures of the page.
        if message.type == "error" and not message.text.startswith(ANSWERED):
            self.problems.append(f"console: {message.text}")

    def upload(self, name: str, data: bytes, mime: str = "image/png") -> None:
        self.tab.set_input_files("#file", {"name": name, "mimeType": mime, "buffer": data})

    def predictions(self) -> list[tuple[str, str]]:
        self.tab.wait_for_selector("#predictions li")
        rows = self.tab.locator("#predictions li")
        return [
            (row.locator(".label").inner_text(), row.locator(".score").inner_text())
            for row in rows.all()
        ]

    def error(self) -> str:
        self.tab.wait_for_selector("#error:not([hidden])")
        return self.tab.inner_text("#error")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser, server) -> Iterator[Page]:
    tab = Page(browser, server.url)
    yield tab
    tab.close()
    assert tab.problems == []


def digit_png(index: int = 0, size: int = 128) -> tuple[bytes, str]:
    """A validation digit scaled up to ``size`` px, as a person would photograph or export it."""
    pixels, label = digit(index)
    return encode(Image.fromarray(pixels).resize((size, size), Image.NEAREST), "PNG"), label


def shown(answer: dict) -> list[tuple[str, str]]:
    """How the page must render a /v1/classify answer: label and score in percent."""
    return [(p["label"], percent(p["score"])) for p in answer["predictions"][0]]


def percent(score: float) -> str:
    return "< 0.1 %" if score < 0.0005 else f"{score * 100:.1f} %"


def test_upload_shows_the_same_top_k_as_the_api(page, server):
    data, label = digit_png(3)
    page.upload("digit.png", data)
    rows = page.predictions()
    answer = httpx.post(
        f"{server.url}/v1/classify", content=data, headers={"content-type": "image/png"}
    ).json()
    assert rows == shown(answer) and len(rows) == 5
    assert rows[0][0] == label
    info = page.tab.inner_text("#model-info")
    assert answer["model"] in info and answer["provider"] in info and "fp32" in info
    latency = page.tab.inner_text("#latency")
    assert answer["provider"] in latency and "round trip" in latency
    preview = page.tab.locator("#preview")
    assert preview.is_visible() and preview.get_attribute("alt") == "Preview of digit.png"
    assert page.tab.inner_text("#result-title") == "digit.png"
    assert page.tab.inner_text("#status") == f"Top class: {label}."
    page.screenshot("desktop-prediction")


def test_top_k_control_sets_the_number_of_bars(page, server):
    page.tab.fill("#top-k", "3")
    page.upload("digit.png", digit_png(5)[0])
    assert len(page.predictions()) == 3


def test_a_non_image_shows_a_readable_error_then_the_page_still_works(page):
    page.upload("notes.txt", b"these are my notes, not a picture\n", mime="text/plain")
    message = page.error()
    assert message.startswith("That file could not be read as an image")
    assert "{" not in message
    page.tab.wait_for_selector("#result", state="hidden")  # no preview, no empty result box
    page.screenshot("desktop-not-an-image")

    page.upload("digit.png", digit_png(1)[0])
    assert page.predictions()
    assert page.tab.locator("#error").is_hidden()


def test_drag_and_drop(page):
    data, label = digit_png(7)
    transfer = page.tab.evaluate_handle(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png",
                                        {type: "image/png"}));
            return transfer;
        }""",
        list(data),
    )
    page.tab.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    assert page.predictions()[0][0] == label
    assert page.tab.get_attribute("#preview", "alt") == "Preview of dropped.png"


def test_keyboard_only(page):
    for _ in range(10):  # Tab until the file input has focus
        page.tab.keyboard.press("Tab")
        if page.tab.evaluate("document.activeElement.id") == "file":
            break
    else:
        pytest.fail("the file input cannot be reached with Tab")
    outline = page.tab.evaluate("getComputedStyle(document.getElementById('drop-zone')).outline")
    assert "solid" in outline  # the focused picker is visibly marked
    with page.tab.expect_file_chooser() as chooser:
        page.tab.keyboard.press("Space")
    data, label = digit_png(2)
    chooser.value.set_files({"name": "digit.png", "mimeType": "image/png", "buffer": data})
    assert page.predictions()[0][0] == label


def test_every_control_has_a_label_and_the_page_has_landmarks(page):
    unlabelled = page.tab.evaluate(
        "[...document.querySelectorAll('input, button, select')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()).map(e => e.id)"
    )
    assert unlabelled == []
    assert page.tab.get_attribute("html", "lang") == "en"
    assert page.tab.locator("main h1").count() == 1
    assert page.tab.get_attribute("#error", "role") == "alert"
    assert page.tab.get_attribute("#status", "aria-live") == "polite"


def test_a_repository_lets_the_person_pick_the_model(browser, digits_onnx, tmp_path):
    repo = tmp_path / "repo"
    for name in ("digits", "other-digits"):
        result = run_cli("triton-repo", str(digits_onnx), str(repo), "--name", name)
        assert result.returncode == 0, result.stderr
    server = ServerProcess(repo)
    page = Page(browser, server.url)
    try:
        assert page.tab.locator("#model-picker").is_visible()
        options = page.tab.locator("#model option").all_inner_texts()
        assert options == ["digits", "other-digits"]
        page.tab.select_option("#model", "other-digits")
        assert "Model other-digits version 1" in page.tab.inner_text("#model-info")
        data, label = digit_png(4)
        page.upload("digit.png", data)
        assert page.predictions()[0][0] == label
        assert page.tab.inner_text("#latency").startswith("other-digits version 1 on")
        page.screenshot("desktop-model-picker")
    finally:
        page.close()
        assert server.stop() == 0
    assert page.problems == []


def test_the_picker_stays_hidden_with_one_model(page):
    assert page.tab.locator("#model-picker").is_hidden()


def test_phone_width(browser, server):
    phone = Page(browser, server.url, viewport=PHONE, device_scale_factor=2, is_mobile=True)
    try:
        data, label = digit_png(4)
        phone.upload("digit.png", data)
        assert phone.predictions()[0][0] == label
        overflow = phone.tab.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow == 0
        for selector in ("#drop-zone", "#predictions", "#latency", "#model-info"):
            box = phone.tab.locator(selector).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
        phone.screenshot("phone-prediction")
        phone.upload("notes.txt", b"not an image", mime="text/plain")
        assert phone.error()
        phone.screenshot("phone-error")
    finally:
        phone.close()
    assert phone.problems == []


def test_pages_and_assets_need_no_token_and_carry_a_strict_policy(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    for asset in ("/static/page.js", "/static/page.css"):
        assert httpx.get(server.url + asset).status_code == 200


@pytest.fixture
def limited_server(digits_onnx) -> Iterator[ServerProcess]:
    process = ServerProcess(digits_onnx, ["--max-pixels", "1000", "--max-body-bytes", "4096"])
    yield process
    assert process.stop() == 0


def test_too_large_images_show_the_limit(browser, limited_server):
    page = Page(browser, limited_server.url)
    try:
        # Small file, too many pixels: the server's 413, explained.
        page.upload("big.png", digit_png(0, size=64)[0])
        assert page.error() == (
            "That image is too large for this server: image is 64x64 = 4096 pixels; "
            "the limit is 1000."
        )
        page.screenshot("desktop-too-large")
        # Over the body limit: refused before uploading, with the same kind of message.
        noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
        heavy = encode(Image.fromarray(noise), "PNG")
        assert len(heavy) > 4096
        page.upload("noise.png", heavy)
        page.tab.wait_for_function(
            "() => document.getElementById('error').textContent.includes('the limit is 4096')"
        )
        assert page.error().startswith("That image is too large for this server:")
    finally:
        page.close()
    assert page.problems == []


def test_busy_server_shows_try_again(browser, digits_onnx):
    # One image admitted at a time, held by senders of a 36-megapixel PNG (slow to decode),
    # so the page's upload meets a full queue.
    server = ServerProcess(digits_onnx, ["--max-queue", "1"])
    heavy = encode(Image.linear_gradient("L").resize((6000, 6000)), "PNG")
    stop = threading.Event()

    def hold_the_queue() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                client.post("/v1/classify", content=heavy, headers={"content-type": "image/png"})

    senders = [threading.Thread(target=hold_the_queue) for _ in range(3)]
    for sender in senders:
        sender.start()
    page = Page(browser, server.url)
    try:
        for _ in range(10):  # bounded: each try meets a full queue almost surely
            page.upload("digit.png", digit_png(0)[0])
            page.tab.wait_for_function(
                "() => !document.getElementById('error').hidden || "
                "document.querySelector('#predictions li')"
            )
            if page.tab.locator("#error").is_visible():
                break
        assert page.error() == "The server is busy right now. Try again in 1 s."
        page.screenshot("desktop-busy")
    finally:
        stop.set()
        for sender in senders:
            sender.join()
        page.close()
        assert server.stop() == 0
    assert page.problems == []


def test_auth_the_page_asks_for_the_token_and_then_works(browser, digits_onnx):
    server = ServerProcess(digits_onnx, env={"LN2D_TOKEN": "s3cret"})
    page = Page(browser, server.url)
    try:
        assert page.error().startswith("This server needs an access token")
        assert page.tab.get_attribute("#token-panel", "open") is not None
        page.tab.focus("#token")
        page.tab.keyboard.type("s3cret")
        page.tab.keyboard.press("Enter")
        page.tab.wait_for_function(
            "() => document.getElementById('model-info').textContent.startsWith('Model ')"
        )
        data, label = digit_png(6)
        page.upload("digit.png", data)
        assert page.predictions()[0][0] == label
        page.screenshot("desktop-token")
    finally:
        page.close()
        assert server.stop() == 0
    assert page.problems == []
