"""An image folder of real photographs, for measuring what reduced precision costs on a model
trained on photos rather than on the 8x8 digits.

scikit-image ships seven colour photographs (astronaut, coffee, cat, rocket, a stained tissue,
a retina, the Hubble deep field). Each becomes a class; its samples are random crops of 48 to
160 pixels, so that telling them apart needs colour and texture, not one fixed view. 160 crops
per class, saved as PNG into DIR/<class>/.

    pip install scikit-image
    python docs/photo_folder.py DIR
    ln2d train --data DIR --size 32 --out photos.safetensors
    ln2d export photos.safetensors -o photos.onnx
    ln2d quantize photos.onnx -o photos.int8.onnx --calibrate DIR
    ln2d parity photos.safetensors photos.int8.onnx --data DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
PHOTOS += ("hubble_deep_field",)
CROPS = 160


def main(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        height, width = photo.shape[:2]
        for index in range(CROPS):
            size = int(rng.integers(48, min(160, height, width) + 1))
            top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
            crop = photo[top : top + size, left : left + size]
            Image.fromarray(crop).save(folder / f"{index:03d}.png")
    print(f"wrote {len(PHOTOS)} classes x {CROPS} crops to {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
