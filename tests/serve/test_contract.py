"""The OpenAPI document against the real server: schemathesis generates requests from
``/openapi.json`` (valid and invalid, single and chained) and checks every answer's status,
content type, headers and body against what the document says. Bounded in examples and time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ln2d.serve.tools.launcher import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1), pytest.mark.any_target]

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_the_server_answers_as_its_openapi_document_says(digits_onnx, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with ServerProcess(digits_onnx) as server:
        result = subprocess.run(
            [
                str(schemathesis),
                "--config-file",
                str(CONFIG),
                "run",
                f"{server.url}/openapi.json",
                "--max-examples",
                "25",
                "--max-time",
                "60",
                "--seed",
                "1",
                "--workers",
                "1",
                "--report-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # its cache (.schemathesis/) stays out of the checkout
        )
        logs = server.logs
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "18 selected / 18 total" in result.stdout  # every operation was tested
    assert not [line for line in logs if "Traceback" in line or '"level": "error"' in line]
