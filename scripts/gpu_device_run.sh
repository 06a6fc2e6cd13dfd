#!/usr/bin/env bash
# On the GPU machine (the device tool), in every call: keep the parts of scripts/gpu_bundle.sh's
# bundle that came with this call; once all have come (their checksum matches), unpack them and
# run the GPU check in the seconds given. docs/development.md, "The GPU check".
#
#     scripts/gpu_device_run.sh BUDGET_SECONDS [MORE gpu_check.py ARGUMENTS]
#
# (--dry-run rehearses it here: tests/test_gpu_check.py.)
set -uo pipefail
budget=${1:?usage: gpu_device_run.sh BUDGET_SECONDS [MORE gpu_check.py ARGUMENTS]}
shift
out=${OUT:-/tmp/gpu-check}
stash=/var/tmp/ln2d-gpu  # outside the checkout: it outlives the call while the machine is warm
mkdir -p "$stash" "$out"
cp .gpu/part-* .gpu/site.sha256 "$stash"/ 2>/dev/null
expected=$(cut -d' ' -f1 "$stash/site.sha256")
if [ "$(cat "$stash"/part-* | sha256sum | cut -d' ' -f1)" != "$expected" ]; then
    echo "gpu_device_run: parts so far: $(cd "$stash" && echo part-*); waiting for the rest"
    exit 0
fi
rm -rf /tmp/site
cat "$stash"/part-* | python3 -c "import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode='r|xz').extractall('/tmp/site', filter='data')" || exit
# onnxruntime-gpu[cuda,cudnn] installs NVIDIA's CUDA 13 libraries beside onnxruntime, which is
# where preload_dlls looks; this Python has the same libraries (torch's) in its own site-packages.
if nvidia=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null); then
    ln -sfn "$nvidia" /tmp/site/nvidia && echo "gpu_device_run: NVIDIA's libraries from $nvidia"
fi
# The checkout's ln2d with its two other packages where the wheel puts them, ahead of the copy
# in /tmp/site: tests and the check import ln2d from the checkout.
ln -sfn ../serve ln2d/serve && ln -sfn ../export ln2d/export || exit
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 PATH=/tmp/site/bin:$PATH
python3 scripts/gpu_check.py --out "$out" --work /tmp/gpu-work --budget "$budget" "$@" 2>&1 |
    tee "$out/log.txt"
