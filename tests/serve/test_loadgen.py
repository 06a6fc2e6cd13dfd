"""The load generator reads each answer's headers wherever they sit, and a client that honours
Retry-After waits as long as the server says before it asks again."""

from __future__ import annotations

import pytest

from ln2d.serve.tools.launcher import ServerProcess
from ln2d.serve.tools.loadgen import header, http_request, run_load
from tests.images import digit, png


@pytest.mark.parametrize(
    ("head", "name", "value"),
    [
        (b"http/1.1 200 ok\r\ncontent-type: x\r\ncontent-length: 1234", b"content-length", b"1234"),
        (b"http/1.1 200 ok\r\ncontent-length: 56\r\nx-request-id: 7", b"content-length", b"56"),
        (b"http/1.1 204 no content\r\nx-request-id: 7", b"content-length", None),
        (b"http/1.1 200 ok\r\ncontent-length:9", b"content-length", b"9"),
        (b"http/1.1 503 busy\r\nretry-after: 1\r\ncontent-length: 9", b"retry-after", b"1"),
    ],
)
def test_a_header_wherever_it_is(head, name, value):
    assert header(head, name) == value


@pytest.mark.integration
def test_clients_that_honour_retry_after_wait_a_second_after_a_503(digits_onnx):
    """Every ln2d 503 says Retry-After: 1. Over 1.5 s, a client that honours it and is refused
    at once asks at most twice; one that does not, many times."""
    request = http_request("POST", "/v1/classify", png(digit(0)[0]), {"Content-Type": "image/png"})
    with ServerProcess(digits_onnx, ["--max-queue", "1", "--max-batch", "1"]) as server:
        polite = run_load(server.host, server.port, request, 32, 1.5, honour_retry_after=True)
        eager = run_load(server.host, server.port, request, 32, 1.5)
    assert polite.status_counts()[503] <= 2 * 32 < eager.status_counts()[503]
