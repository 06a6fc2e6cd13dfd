"""The bring-your-own-model section of docs/export.md runs as written: its files, its commands
and its Python, in a fresh folder."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def _blocks() -> list[tuple[str, str]]:
    page = (ROOT / "docs" / "export.md").read_text()
    section = page.split("<!-- byom:start")[1].split("<!-- byom:end -->")[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, re.S)


def test_the_bring_your_own_model_example_runs(tmp_path):
    (module, script), (_, commands), (_, api) = _blocks()
    assert module == "python" and script.startswith("# mynet.py")
    (tmp_path / "mynet.py").write_text(script)
    for line in commands.replace("\\\n", " ").strip().splitlines():
        argv = shlex.split(line)
        if argv[0] == "ln2d":
            argv = [sys.executable, "-m", "ln2d", *argv[1:]]
        elif argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}: {done.stdout} {done.stderr}"
    done = subprocess.run(
        [sys.executable, "-c", api], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and (tmp_path / "mynet-api.onnx").is_file()
