#!/usr/bin/env bash
# Builds the three images with buildah (no daemon) and reports their sizes and build times:
#   ln2d-serve:test       docker/Dockerfile, on python:3.11-slim-bookworm
#   ln2d-serve:ray-test   the same with the ray extra (EXTRAS=serve,ray,cpu): the image
#                         KubeRay runs as Ray's head and workers (docker/kubernetes-ray)
#   ln2d-serve:gpu-test   docker/Dockerfile.gpu's own steps, on that same base instead of the
#                         CUDA runtime, which no registry here serves: everything but the
#                         CUDA libraries is built and checked
# Where no registry is reachable, docker/stand-in-base.sh provides the base first.
# Prints one line per image and writes them as JSON to $REPORT (default artifacts/images.json).
#
#   docker/build-images.sh            (as root; make image runs it, after training a model)
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=docker.io/library/python:3.11-slim-bookworm
REPORT=${REPORT:-artifacts/images.json}
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

layers_of() {  # the image's layers as "digest size" lines, from its manifest
    "${buildah[@]}" inspect --type image "$1" | python3 -c '
import json, sys
for layer in json.loads(json.load(sys.stdin)["Manifest"])["layers"]:
    print(layer["digest"], layer["size"])'
}

build() {  # tag dockerfile [build args...]
    local tag=$1 dockerfile=$2 started
    shift 2
    started=$(date +%s)
    "${buildah[@]}" bud --isolation chroot --pull=never --format docker --layers=false \
        -f "$dockerfile" -t "$tag" "$@" . >&2
    echo "$(( $(date +%s) - started ))"
}

[ -f artifacts/model.onnx ] || { echo "artifacts/model.onnx is missing: make image trains one" >&2; exit 2; }
docker/stand-in-base.sh >&2
cpu_seconds=$(build ln2d-serve:test docker/Dockerfile)
gpu_seconds=$(build ln2d-serve:gpu-test docker/Dockerfile.gpu --build-arg CUDA_BASE="$BASE")
ray_seconds=$(build ln2d-serve:ray-test docker/Dockerfile --build-arg EXTRAS=serve,ray,cpu)

mkdir -p "$(dirname "$REPORT")"
python3 - "$REPORT" "$(layers_of "$BASE")" \
    ln2d-serve:test "$(layers_of ln2d-serve:test)" "$cpu_seconds" \
    ln2d-serve:gpu-test "$(layers_of ln2d-serve:gpu-test)" "$gpu_seconds" \
    ln2d-serve:ray-test "$(layers_of ln2d-serve:ray-test)" "$ray_seconds" <<'PY'
import json, sys

def layers(text):
    return dict(line.split() for line in text.splitlines())

report, base, rest = sys.argv[1], layers(sys.argv[2]), sys.argv[3:]
base_bytes = sum(map(int, base.values()))
rows = []
for tag, text, seconds in zip(rest[::3], rest[1::3], rest[2::3]):
    image = layers(text)
    total = sum(map(int, image.values()))
    above = sum(int(size) for digest, size in image.items() if digest not in base)
    rows.append({"image": tag, "total_mb": total / 1e6, "base_mb": base_bytes / 1e6,
                 "above_base_mb": above / 1e6, "build_seconds": int(seconds)})
    print(f"{tag}: {total / 1e6:.1f} MB, of which {above / 1e6:.1f} MB above the "
          f"{base_bytes / 1e6:.1f} MB base; built in {seconds} s")
with open(report, "w") as out:
    json.dump(rows, out, indent=2)
PY
