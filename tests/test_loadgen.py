"""The load generator reads each answer's length from its headers, wherever the header sits."""

from __future__ import annotations

import pytest

from ln2d.serve.loadgen import content_length


@pytest.mark.parametrize(
    ("head", "length"),
    [
        (b"http/1.1 200 ok\r\ncontent-type: x\r\ncontent-length: 1234", 1234),  # last header
        (b"http/1.1 200 ok\r\ncontent-length: 56\r\nx-request-id: 7", 56),
        (b"http/1.1 204 no content\r\nx-request-id: 7", 0),
        (b"http/1.1 200 ok\r\ncontent-length:9", 9),
    ],
)
def test_content_length_wherever_it_is(head, length):
    assert content_length(head) == length
