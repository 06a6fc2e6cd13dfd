#!/usr/bin/env bash
# Removes from a serving virtual environment what serving never touches, so that the image
# carries only what runs. Each removal is exercised by the image's run test (make image-test),
# which serves PNG, JPEG and v2 requests from the result. Needs binutils (strip, readelf).
#
#   slim-venv.sh /opt/venv
set -euo pipefail
# Under pipefail, `readelf | grep -q` fails when grep stops reading early (readelf gets
# SIGPIPE): every test below counts matches instead.

venv=$1
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

# Installers: the image never installs anything at run time.
"$venv/bin/python" -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true

# Test suites, and byte code (PYTHONDONTWRITEBYTECODE is set, so none is written back).
find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +

# onnxruntime's Python tools (transformer optimizer, quantization, model tools): the server
# only opens sessions.
rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization "$site"/onnxruntime/tools

# onnxruntime's C API library, for programs that link it; the Python module does not load it.
# Removed only when no library of the package needs it.
capi="$site/onnxruntime/capi"
needed=$(readelf -d "$capi"/*.so* 2>/dev/null | grep -c 'NEEDED.*\[libonnxruntime\.so' || true)
if [ "$needed" = 0 ]; then
    rm -f "$capi"/libonnxruntime.so*
fi

# Debug sections in extension modules (uvloop ships 11 MB of them).
find "$site" -name '*.so' -type f -print0 | while IFS= read -r -d '' library; do
    if [ "$(readelf -S "$library" | grep -c '\.debug_')" != 0 ]; then
        strip --strip-debug "$library"
    fi
done
