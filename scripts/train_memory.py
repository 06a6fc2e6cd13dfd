"""How much memory ``ln2d train`` takes on a large image folder: its peak resident set.

Runs ``ln2d train --data DIR --size 64 --epochs 1`` as a child process and reports the child's
peak RSS (``getrusage``), next to what the folder's images take as uint8 and as float32.

    python scripts/photo_folder.py /tmp/photos50k --crops 7143 --size 64   # 50,001 photos
    python scripts/train_memory.py /tmp/photos50k
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ln2d.data import IMAGE_SUFFIXES


def main(root: Path) -> None:
    count = sum(1 for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable, "-m", "ln2d", "train", "--data", str(root), "--size", "64",
            "--epochs", "1", "--no-progress", "--out", str(Path(scratch) / "m.safetensors"),
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    pixels = count * 64 * 64 * 3
    print(done.stdout.strip())
    print(
        f"{count} images of 64x64x3: {pixels / 1e9:.2f} GB as uint8, {4 * pixels / 1e9:.2f} GB "
        f"as float32; ln2d train's peak resident set {peak_gb:.2f} GB ({seconds:.0f} s)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
