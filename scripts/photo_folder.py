"""An image folder of real photographs, for measuring what reduced precision costs on a model
trained on photos rather than on the 8x8 digits.

scikit-image ships seven colour photographs (astronaut, coffee, cat, rocket, a stained tissue,
a retina, the Hubble deep field). Each becomes a class; its samples are random crops of 48 to
160 pixels, so that telling them apart needs colour and texture, not one fixed view. 160 crops
per class by default, saved as PNG into DIR/<class>/; ``--crops N --size S`` makes N per class,
each resized to S x S (``--crops 7143 --size 64``: 50,001 photos, for scripts/train_memory.py).

    pip install scikit-image
    python scripts/photo_folder.py DIR [--crops N] [--size S]
    ln2d train --data DIR --size 32 --out photos.safetensors
    ln2d export photos.safetensors -o photos.onnx
    ln2d quantize photos.onnx -o photos.int8.onnx --calibrate DIR
    ln2d parity photos.safetensors photos.int8.onnx --data DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")
PHOTOS += ("hubble_deep_field",)
CROPS = 160


def main(root: Path, crops: int, side: int | None) -> None:
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        height, width = photo.shape[:2]
        for index in range(crops):
            size = int(rng.integers(48, min(160, height, width) + 1))
            top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
            crop = Image.fromarray(photo[top : top + size, left : left + size])
            if side is not None:
                crop = crop.resize((side, side), Image.Resampling.BILINEAR)
            crop.save(folder / f"{index:05d}.png")
    print(f"wrote {len(PHOTOS)} classes x {crops} crops to {root}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, metavar="DIR")
    parser.add_argument("--crops", type=int, default=CROPS, help="crops per class")
    parser.add_argument("--size", type=int, help="resize each crop to SIZE x SIZE")
    args = parser.parse_args()
    main(args.root, args.crops, args.size)
