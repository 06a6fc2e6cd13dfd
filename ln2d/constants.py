"""Names and defaults that more than one part of ln2d needs, each typed once. Torch-free, so
that the server, the exporter and the command line all read them from here."""

from __future__ import annotations

from dataclasses import dataclass

# ONNX Runtime's execution providers, by the names the command line takes.
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The options every ln2d session gives each provider. ONNX Runtime's CUDA provider runs fp32
# Conv and MatMul in TF32 on Ampere and later unless told not to: about 1e-3 off fp32 (seen on
# an H100: ten times parity's fp32 tolerance). An fp32 model computes in fp32; fp16 is the
# fast path on a GPU, with its own gates.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"cpu": {}, "cuda": {"use_tf32": "0"}}


def ort_provider(name: str) -> tuple[str, dict[str, str]]:
    """ONNX Runtime's provider entry, with ln2d's options, for a command-line provider name."""
    return PROVIDERS[name], PROVIDER_OPTIONS[name]


# Where torch trains and benchmarks, by the names the command line takes (auto: CUDA if any).
DEVICES = ("auto", "cpu", "cuda")
# Mixed precision for training: autocast to this dtype (fp16 also scales the loss).
AMP_DTYPES = ("bf16", "fp16")

# The fusion targets (export.fusion.targets holds their rules) and the default one.
TARGETS = ("cpu", "cpu-native", "cuda", "portable")
DEFAULT_TARGET = "cpu"

# How ln2d quantize stores int8 weights (export.quantize.SCHEMES says what each is) and the
# default, chosen by measurement on both of ONNX Runtime's x86 paths (docs/precision.md).
INT8_SCHEMES = ("u8s7", "u8s8", "u8u8")
DEFAULT_INT8_SCHEME = "u8s7"

# The norm layers SimpleLN_CNN can be built with (ln2d.model holds their constructors).
NORMS = ("layernorm2d", "batchnorm", "groupnorm", "instancenorm", "none")


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: the defaults of ``ln2d serve`` and of ``ln2d triton-repo``."""

    max_batch: int = 32
    max_delay_ms: float = 2.0  # how long a batch waits for more after its first request
    max_queue: int = 64  # admitted but not yet answered; beyond it, 503 (Triton: UNAVAILABLE)
    timeout_s: float = 10.0  # per request, from arrival to answer


BATCHING = Batching()
