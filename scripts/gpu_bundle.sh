#!/usr/bin/env bash
# What `make gpu-check` needs on the GPU machine that its Python (3.12, torch with CUDA 13's
# pip libraries, the CPU onnxruntime; no network) lacks, installed here into one folder and
# packed as .gpu/site.tar.xz in parts of at most 61 MiB (.gpu is git-ignored via
# .git/info/exclude). One device call carries at most 64 MiB with the checkout, so the parts
# travel over consecutive calls on a warm machine, and scripts/gpu_device_run.sh unpacks them
# (docs/development.md, "The GPU check"). xz, not the wheels' zip, because onnxruntime-gpu's
# CUDA provider (277 MB) shrinks to 178 MiB with it against 221 MiB in the wheel: one call fewer.
#
#     scripts/gpu_bundle.sh [PYTHON_VERSION]   # 3.12 (the device's); 3.11 rehearses here
set -euo pipefail
python_version=${1:-3.12}
out=.gpu
rm -rf "$out" && mkdir -p "$out/wheels"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
abi=cp${python_version/./}
platform=(--only-binary=:all: --python-version "$python_version" --implementation cp --abi "$abi"
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
# The versions this checkout's .venv tested together (make venv), for the packages that
# Python lacks (KINDS.md's list): the serving stack (FastAPI imports opentelemetry-api),
# pydantic, and fp16 export's converter.
missing=(fastapi starlette uvicorn httptools python-multipart pydantic pydantic-core
         annotated-types typing-inspection pydantic-settings python-dotenv annotated-doc
         onnxconverter-common opentelemetry-api)
# py-spy: the GPU check profiles the CUDA and the CPU server under load with it.
tools=(py-spy==0.4.3)
pins=$(.venv/bin/python - "${missing[@]}" <<'PY'
import importlib.metadata as metadata, sys
print(" ".join(f"{name}=={metadata.version(name)}" for name in sys.argv[1:]))
PY
)
# onnxruntime-gpu 1.31 on PyPI is a CUDA 13 build: it uses the nvidia-* 13 libraries torch
# brought there (ln2d.cuda.prepare loads them).
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps "${platform[@]}" -d "$out/wheels" \
    "onnxruntime-gpu==1.31.1" "${tools[@]}" $pins
# Installed here (wheels install by unpacking), so the device only unpacks a folder.
python3 -m pip install -q --no-deps --no-compile "${platform[@]}" --target "$out/site" \
    "$out"/wheels/*.whl
rm -rf "$out/wheels"
# ln2d itself, for its entry points (the CLI's commands): the code comes from the checkout that
# travels (scripts/gpu_device_run.sh puts it first on the path), and its C kernels, built here
# for this Python, are skipped there.
.venv/bin/python -m pip install -q --no-deps --no-build-isolation --no-compile \
    --target "$out/site" .
tar -C "$out/site" -cf - . | xz -T0 -6 > "$out/site.tar.xz"
rm -rf "$out/site"
split -b 61M -d "$out/site.tar.xz" "$out/part-"
(cd "$out" && sha256sum site.tar.xz > site.sha256 && rm site.tar.xz)
ls -l "$out"
