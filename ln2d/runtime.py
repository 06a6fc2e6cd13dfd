"""Every ONNX Runtime session ln2d opens comes from ``open_session``: the fusion gate, parity,
quantization, timing, placement and the server. One place decides the provider and its options
(TF32 off on CUDA, and NVIDIA's pip libraries loaded first: ``ln2d.cuda``), registers ln2d's
native op where this install has it, and sets threads, spinning, the memory arena, profiling
and where a model's external data is. Torch-free: the server uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ln2d import cuda, native
from ln2d.constants import PROVIDERS, ort_provider

# Where ONNX Runtime finds the external data of a model it is given as bytes.
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


class ProviderNotActive(RuntimeError):
    """ONNX Runtime opened the session on another provider than the one asked for."""


@dataclass(frozen=True)
class SessionSettings:
    provider: str = "cpu"  # a key of PROVIDERS
    threads: int = 0  # intra-op threads; 0: ONNX Runtime's default (one per core)
    # Spinning threads burn the cores a server's event loop and decoders need between batches,
    # and make side-by-side timings steal from each other: off unless asked for.
    spinning: bool = False
    arena: bool = True  # False: what a run allocates goes back when it ends
    cpu_fallback: bool = False  # the CPU runs the nodes the provider cannot
    profile_to: str = ""  # ONNX Runtime's profiler writes there (a file name prefix)
    cuda_graph: bool = False  # CUDA only: runs may capture and replay graphs (gpu_graph_id)
    data_folder: Path | None = None  # external data of a model given as bytes


def open_session(model, settings: SessionSettings = SessionSettings()):
    """A session of ``model``: a file path, bytes, or anything with ``SerializeToString`` (an
    onnx.ModelProto). Raises ProviderNotActive when ONNX Runtime falls back to another provider
    without ``cpu_fallback``; its own load errors pass through ``native.explain``, which names
    the missing library when that is the cause."""
    import onnxruntime as ort

    options = native.session_options()
    options.log_severity_level = 3
    options.inter_op_num_threads = 1
    if settings.threads:
        options.intra_op_num_threads = settings.threads
    spinning = "1" if settings.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
    options.enable_cpu_mem_arena = settings.arena
    if settings.data_folder is not None:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(settings.data_folder))
    if settings.profile_to:
        options.enable_profiling = True
        options.profile_file_prefix = settings.profile_to
    if settings.provider == "cuda":
        cuda.prepare()
    name, provider_options = ort_provider(settings.provider)
    if settings.cuda_graph:
        if settings.provider != "cuda":
            raise ValueError(f"CUDA graphs need the cuda provider, not {settings.provider}")
        provider_options = {**provider_options, "enable_cuda_graph": "1"}
    providers = [(name, provider_options)]
    if settings.cpu_fallback and settings.provider != "cpu":
        providers.append(ort_provider("cpu"))
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    try:
        session = ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        explained = native.explain(exc)
        if explained is exc:
            raise
        raise explained from exc
    active = session.get_providers()[0]
    if active != PROVIDERS[settings.provider] and not settings.cpu_fallback:
        why = f": {cuda.not_loaded_message()}" if settings.provider == "cuda" else ""
        raise ProviderNotActive(
            f"{PROVIDERS[settings.provider]} was requested but ONNX Runtime activated {active}{why}"
        )
    return session


def available_providers() -> list[str]:
    """The ln2d provider names this onnxruntime build offers."""
    import onnxruntime as ort

    offered = ort.get_available_providers()
    return [name for name, provider in PROVIDERS.items() if provider in offered]
