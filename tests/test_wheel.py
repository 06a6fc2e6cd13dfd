"""The images without a Docker engine: hadolint on both Dockerfiles, and the CPU image's exact
entrypoint and environment run as a plain process from the wheel in a fresh venv (no torch)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import DOCKERFILES, ROOT, image_command
from tests.images import digit, png

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_cpu_image_entrypoint_from_the_wheel_in_a_fresh_venv(digits_onnx, tmp_path):
    wheels, venv, context = tmp_path / "wheels", tmp_path / "venv", tmp_path / "src"
    context.mkdir()
    # The same wheel build as the image's first stage, from the files it copies (a build/ left
    # in the checkout by an older layout cannot leak into the wheel).
    for name in ("pyproject.toml", "README.md", "ln2d", "export", "serve"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, context / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels),
         str(context)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("ln2d-*.whl")
    # One top-level name, ln2d: the export and serve folders install as ln2d.export, ln2d.serve.
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if ".dist-info" not in name}
        assert "ln2d/serve/static/index.html" in archive.namelist()
    assert tops == {"ln2d"}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[serve,cpu]"], check=True)
    no_torch = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True
    )
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    served = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys, ln2d.serve.app; print(*sys.modules)"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert "torch" not in served.stdout.split() and "ln2d.export" not in served.stdout
    # (FastAPI itself imports opentelemetry's API; ln2d's tracing needs the SDK.)
    assert "opentelemetry.sdk" not in served.stdout.split() and "grpc" not in served.stdout.split()
    # gRPC and tracing are extras: asked for without them, one line says which to install.
    ln2d = str(venv / "bin" / "ln2d")
    for flags, extra in (
        (["--grpc-port", "0"], "grpc"),
        (["--otlp-endpoint", "http://x"], "tracing"),
    ):
        refused = subprocess.run(
            [ln2d, "serve", str(digits_onnx), *flags], capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"ln2d[serve,{extra}]" in refused.stderr

    entrypoint, env = image_command(DOCKERFILES[0])
    assert entrypoint == ["ln2d", "serve"]
    # Only what must differ outside a container: the model's path, and loopback with a free port.
    env.update(LN2D_MODEL_PATH=str(digits_onnx), LN2D_HOST="127.0.0.1", LN2D_PORT="0")
    command = [str(venv / "bin" / entrypoint[0]), *entrypoint[1:]]
    server = ServerProcess(None, env=env, command=command)
    pixels, label = digit(0)
    answer = httpx.post(
        f"{server.url}/v1/classify", content=png(pixels), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200 and answer.json()["predictions"][0][0]["label"] == label
    assert server.stop() == 0


def test_compose_agrees_with_the_images():
    import yaml

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name, dockerfile in (("ln2d", DOCKERFILES[0]), ("ln2d-gpu", DOCKERFILES[1])):
        service = services[name]
        _, env = image_command(dockerfile)
        assert service["build"]["dockerfile"] == f"docker/{dockerfile.name}"
        assert service["ports"][0].endswith(f":{env['LN2D_PORT']}")
        drain = float(
            service["environment"].get("LN2D_DRAIN_TIMEOUT_S", env["LN2D_DRAIN_TIMEOUT_S"])
        )
        assert float(service["stop_grace_period"].rstrip("s")) > drain
    gpu = services["ln2d-gpu"]
    assert gpu["environment"]["LN2D_PROVIDER"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["ln2d:8000", "ln2d-gpu:8000"]
