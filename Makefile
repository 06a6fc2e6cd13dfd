# The two commands a fresh clone needs: `make demo` and `make test`.
# Both create .venv from nothing (plain `python3 -m venv` + pip) the first time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARTIFACTS ?= artifacts

.PHONY: demo test test-fast test-sanitized test-native-serving test-older-cpu lint venv browser image image-test image-tools clean gpu-check gpu-check-dry
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

venv: $(STAMP)

$(STAMP): pyproject.toml tests/requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# timm and segment-anything declare torchvision, which has no CPU build: test-only, no deps.
	$(BIN)/python -m pip install --quiet --no-deps -r tests/requirements-nodeps.txt
	touch $(STAMP)

# The main job on the bundled digits, as the real commands a user would type.
demo: $(STAMP)
	$(BIN)/ln2d train --out $(ARTIFACTS)/model.safetensors
	$(BIN)/ln2d info $(ARTIFACTS)/model.safetensors
	$(BIN)/ln2d export $(ARTIFACTS)/model.safetensors -o $(ARTIFACTS)/model.onnx \
		--report $(ARTIFACTS)/fuse.json
	$(BIN)/ln2d parity $(ARTIFACTS)/model.safetensors $(ARTIFACTS)/model.onnx \
		--json $(ARTIFACTS)/parity.json
	$(BIN)/ln2d samples $(ARTIFACTS)/samples
	# Starts ln2d serve on a free port, classifies over REST, stops it with SIGTERM.
	$(BIN)/ln2d predict --serve $(ARTIFACTS)/model.onnx $(ARTIFACTS)/samples/*

# On a GPU machine: every GPU measurement in one run of at most 8 minutes, written to
# $(ARTIFACTS)/gpu-check/gpu-check.{json,md} (docs/development.md: "The GPU check").
gpu-check: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --out $(ARTIFACTS)/gpu-check

# Its rehearsal on the CPU (make test runs it too: tests/test_gpu_check.py).
gpu-check-dry: $(STAMP)
	$(BIN)/python scripts/gpu_check.py --dry-run --out $(ARTIFACTS)/gpu-check-dry

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The page's tests drive Debian's chromium headless (Playwright, from .venv, brings no browser).
browser: $(CHROMIUM)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| ($(SUDO) apt-get update -q \
		    && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# Two pytest-xdist workers, each given whole files: the tests wait on servers and subprocesses
# as much as they compute, and a file's module fixtures (a Ray cluster, a server) stay one.
WORKERS ?= -n 2 --dist loadfile

test: lint browser
	$(BIN)/python -m pytest -m "not image" $(WORKERS)
	$(MAKE) test-sanitized
	$(MAKE) test-native-serving

# The serving tests again with the served model fused for cpu-native (ln2d's own op): every
# test of the folder that serves the digits model (a new one cannot be missed), but those
# marked any_target, whose outcome does not depend on how it was fused (tests/conftest.py).
test-native-serving: $(STAMP)
	LN2D_TEST_TARGET=cpu-native $(BIN)/python -m pytest -p no:cacheprovider $(WORKERS) tests/serve

# The native kernels built again with AddressSanitizer and UBSan (any finding aborts), and their
# tests run once against those builds (LN2D_NATIVE_LIBRARY and LN2D_EAGER_LIBRARY point ln2d
# at them). The ASan
# runtime is preloaded because python itself is not instrumented; Python's own allocations
# are not leaks of ours, so leak detection is off; -s lets a report reach the log (ASan exits
# the process, and pytest would lose what it captured).
SANITIZED := build/sanitized/_layernorm2d.so
SANITIZED_EAGER := build/sanitized/_layernorm2d_eager.so
SANITIZE  := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

# ASan's interceptor aborts on any C++ exception torch raises (a failed CHECK in its
# __cxa_throw): the tests where torch throws by design (TorchScript's graph walk, a second
# backward) are left to the normal run.
NO_CXX_THROW := not memory and not twice and not jit_trace

test-sanitized: $(STAMP)
	mkdir -p $(dir $(SANITIZED))
	$(CC) -std=c11 -O1 -g -fPIC -shared $(SANITIZE) ln2d/native/layernorm2d.c -o $(SANITIZED) -lm
	$(CC) -std=c11 -O1 -g -fPIC -shared -fopenmp-simd $(SANITIZE) ln2d/native/layernorm2d_eager.c \
		-o $(SANITIZED_EAGER) -lm -lpthread
	env LD_PRELOAD="$$($(CC) -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
		LN2D_NATIVE_LIBRARY=$(abspath $(SANITIZED)) \
		LN2D_EAGER_LIBRARY=$(abspath $(SANITIZED_EAGER)) \
		$(BIN)/python -m pytest -s -p no:cacheprovider -m "not integration" -k "$(NO_CXX_THROW)" \
		tests/ln2d/test_native.py tests/ln2d/test_functional.py

# The numerics tests (marker cpu_numerics) again on an older CPU: qemu-user runs this .venv's
# Python as a Haswell (x86-64-v3: AVX2 and FMA, no AVX-512, no VNNI), and every process it
# starts too (the wrapper passes itself as argv[0], so sys.executable is the wrapper). The
# models come from this machine, as a user's would: trained and exported here, then checked
# there. u8s8.onnx is int8 in the scheme that drifts without VNNI, for the drift's own test.
OLDER_CPU := Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl
LANE := build/older-cpu

test-older-cpu: $(STAMP) /usr/bin/qemu-x86_64
	rm -rf $(LANE) && mkdir -p $(LANE)
	printf '#!/bin/sh\nexec qemu-x86_64 -cpu $(OLDER_CPU) -0 "$$0" "$$(dirname "$$0")/python" "$$@"\n' \
		> $(BIN)/python-older-cpu && chmod +x $(BIN)/python-older-cpu
	$(BIN)/ln2d train --out $(LANE)/digits.safetensors --no-progress
	$(BIN)/ln2d export $(LANE)/digits.safetensors -o $(LANE)/digits.onnx
	$(BIN)/ln2d export $(LANE)/digits.safetensors -o $(LANE)/fp16.onnx --precision fp16
	$(BIN)/ln2d quantize $(LANE)/digits.onnx -o $(LANE)/u8s8.onnx --scheme u8s8 --per-channel \
		--no-progress
	LN2D_TEST_MODELS=$(abspath $(LANE)) timeout 600 $(BIN)/python-older-cpu -m pytest \
		-p no:cacheprovider -m cpu_numerics $(WORKERS)

/usr/bin/qemu-x86_64:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user \
		|| ($(SUDO) apt-get update -q \
		    && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user)

# The fast tier, in process (under a minute): fusion on hand-built graphs, the codec, the
# batcher and the app with real tiny ONNX Runtime sessions. `make test` runs everything.
test-fast: lint
	$(BIN)/python -m pytest -m "not integration and not image" $(WORKERS)

# The container images, built and run with buildah (no Docker daemon needed; root or sudo).
# Where no registry is reachable, docker/stand-in-base.sh makes the Python base from Debian's
# packages first; the GPU image's steps are built on that base instead of the CUDA runtime.
image: image-tools $(ARTIFACTS)/model.onnx
	$(SUDO) env REPORT=$(ARTIFACTS)/images.json docker/build-images.sh

# Runs the built CPU image as a container: entrypoint, user, health check, drain on SIGTERM.
image-test: image
	$(SUDO) $(BIN)/python -m pytest -m image

image-tools: /usr/bin/buildah /usr/sbin/debootstrap

/usr/bin/buildah /usr/sbin/debootstrap:
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap \
		|| ($(SUDO) apt-get update -q \
		    && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap)

# A model for the images to bake in, made by the demo's own commands.
$(ARTIFACTS)/model.onnx: | $(STAMP)
	$(BIN)/ln2d train --out $(ARTIFACTS)/model.safetensors
	$(BIN)/ln2d export $(ARTIFACTS)/model.safetensors -o $@

clean:
	rm -rf $(ARTIFACTS) .pytest_cache build dist *.egg-info
