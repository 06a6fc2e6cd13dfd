#!/usr/bin/env bash
# What `make gpu-check` needs on the GPU machine that its Python (3.12, torch with CUDA 13's
# pip libraries, the CPU onnxruntime; no network) lacks, as wheels in .gpu/ (git-ignored via
# .git/info/exclude), in parts of at most 60 MiB: one device call carries at most 64 MiB, so
# the parts travel over consecutive calls on a warm machine (docs/development.md, "The GPU
# check"). Run from the repository root, on a machine with pip access.
set -euo pipefail
out=.gpu
rm -rf "$out" && mkdir -p "$out/wheels"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
platform=(--only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The versions this checkout's .venv tested together (make venv), for the packages that
# Python lacks (KINDS.md's list): the serving stack, pydantic, and fp16 export's converter.
missing=(fastapi starlette uvicorn httptools python-multipart pydantic pydantic-core
         annotated-types typing-inspection pydantic-settings python-dotenv annotated-doc
         onnxconverter-common)
pins=$(.venv/bin/python - "${missing[@]}" <<'PY'
import importlib.metadata as metadata, sys
print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
PY
)
# onnxruntime-gpu 1.31 on PyPI is a CUDA 13 build: it uses the nvidia-* 13 libraries torch
# brought there (ln2d.cuda.prepare loads them).
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps "${platform[@]}" -d "$out/wheels" \
    "onnxruntime-gpu==1.31.1" $pins
# The big wheel in parts; the first device call reassembles them with cat.
for wheel in "$out"/wheels/onnxruntime_gpu-*.whl; do
    split -b 60M -d "$wheel" "$out/$(basename "$wheel").part-"
    rm "$wheel"
done
du -sh "$out"/* "$out"/wheels
