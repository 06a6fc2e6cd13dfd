"""Decoding in threads or in worker processes: which is faster here?

``ln2d serve`` decodes in threads, because Pillow releases the GIL while it decodes. Worker
processes avoid the GIL altogether but pay for copying each body in and each array out. This
script decodes the serving benchmark's bodies (a 224x224 PNG photo and a 12-megapixel JPEG,
for a 3x32x32 model) with the server's own ``images.decode``, in a pool of threads and in a
pool of processes of the same size, in alternating rounds, and prints images per second.

    python scripts/decode_workers.py   # about a minute on 2 cores
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

from ln2d.cpu_quota import available_cpus
from ln2d.serve.images import decode
from ln2d.serve.model import ModelInfo
from ln2d.serve.tools.bench_serve import _encoded, _photo

INFO = ModelInfo(
    name="decode-bench",
    input_name="input",
    output_name="logits",
    channels=3,
    height=32,
    width=32,
    labels=tuple(str(i) for i in range(10)),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    scale=1 / 255,
)
MAX_PIXELS = 40_000_000


def _decode(body: bytes):
    return decode(body, INFO, MAX_PIXELS)


def images_per_second(pool: Executor, body: bytes, count: int) -> float:
    started = time.perf_counter()
    list(pool.map(_decode, [body] * count))
    return count / (time.perf_counter() - started)


def main() -> None:
    workers = available_cpus()
    bodies = {
        "png_224": (_encoded(_photo(224, 224), "PNG"), 400),
        "jpeg_12mp": (_encoded(_photo(4000, 3000), "JPEG", quality=90), 40),
    }
    print(f"{workers} workers each; images/s, median of 5 alternating rounds")
    with ThreadPoolExecutor(workers) as threads, ProcessPoolExecutor(workers) as processes:
        pools = {"threads": threads, "processes": processes}
        for name, (body, count) in bodies.items():
            rates: dict[str, list[float]] = {kind: [] for kind in pools}
            for pool in pools.values():
                images_per_second(pool, body, count // 4)  # warm: imports, first decode
            for _ in range(5):
                for kind, pool in pools.items():
                    rates[kind].append(images_per_second(pool, body, count))
            row = {kind: statistics.median(values) for kind, values in rates.items()}
            print(
                f"{name}: threads {row['threads']:,.0f}, processes {row['processes']:,.0f} "
                f"(processes / threads = {row['processes'] / row['threads']:.2f})"
            )


if __name__ == "__main__":
    main()
