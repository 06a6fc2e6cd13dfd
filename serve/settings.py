"""The server's whole configuration: one typed object, read from flags and ``LN2D_*`` variables.

Every field is an ``ln2d serve`` flag (``max_batch`` -> ``--max-batch``) and an environment
variable (``LN2D_MAX_BATCH``); a flag wins over the variable, the variable over the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ln2d.constants import BATCHING
from ln2d.serve.static_batches import batch_sizes

ENV_PREFIX = "LN2D_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    model_path: Path = Field(
        description="the ONNX model (written by ln2d export), or a model repository folder "
        "(written by ln2d triton-repo: NAME/config.pbtxt, NAME/VERSION/model.onnx)"
    )
    model_control_mode: Literal["none", "explicit", "poll"] = Field(
        "none",
        description="repository: none = load every model at start; explicit = only the "
        "load/unload API (and --load-models) loads; poll = watch the folder",
    )
    load_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="explicit mode: models to load at start (comma list; * = all)",
    )
    poll_interval_s: float = Field(
        5.0, gt=0, description="poll mode: seconds between looks at the repository"
    )
    max_models: int = Field(
        4,
        ge=1,
        description="repository: most models loaded at once; the inference thread budget is "
        "split between them",
    )
    default_model: str | None = Field(
        None, description="the model /v1/classify serves (default: the only one loaded)"
    )
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 in a container")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="also serve the Open Inference Protocol over gRPC on this port (0 = any "
        "free port; unset = off; needs the grpc extra)",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="send OpenTelemetry traces to this OTLP/HTTP URL (e.g. "
        "http://collector:4318/v1/traces); the standard OTEL_EXPORTER_OTLP_* variables also "
        "turn tracing on; needs the tracing extra",
    )
    provider: Literal["cpu", "cuda"] = Field("cpu", description="ONNX Runtime execution provider")
    cpu_fallback: bool = Field(
        False, description="with --provider cuda, serve on CPU when CUDA is unavailable"
    )
    cuda_graphs: bool = Field(
        False,
        description="with --provider cuda: pad each batch to a power of two (or to max_batch) "
        "and run it as the CUDA graph captured for that size at warm-up",
    )
    accept_drift: bool = Field(
        False,
        description="serve a model whose parity record does not hold on this machine (the "
        "drift is still logged and shown in its metadata and metrics); a repository model can "
        "accept it in its config.pbtxt (parameter ln2d.accept_drift: true)",
    )
    max_batch: int = Field(
        BATCHING.max_batch, ge=1, le=1024, description="largest batch sent to the model"
    )
    max_delay_ms: float = Field(
        BATCHING.max_delay_ms,
        ge=0,
        le=1000,
        description="how long a batch waits for more images after the first",
    )
    max_queue: int = Field(
        BATCHING.max_queue, ge=1, description="images admitted but not yet answered; beyond it: 503"
    )
    timeout_s: float = Field(
        BATCHING.timeout_s,
        gt=0,
        description="per-request deadline from arrival to answer: a body not in by then gets 408, "
        "an answer not ready by then 504",
    )
    head_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a connection whose request head is not complete this long after it opened "
        "(or after the previous answer) is closed",
    )
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads per model (0 = the CPU quota less one, "
        "split between max_models)",
    )
    decode_threads: int = Field(
        0, ge=0, description="image decoding threads (0 = from the CPU quota)"
    )
    max_body_bytes: int = Field(
        16 * 2**20, ge=1024, description="largest request body; beyond it: 413"
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="largest image (width x height) decoded; beyond it: 413"
    )
    max_images: int = Field(64, ge=1, description="most images in one request")
    top_k: int = Field(5, ge=1, description="default number of classes in /v1/classify")
    token: SecretStr | None = Field(
        None,
        description="bearer token required on inference and metadata endpoints (prefer the "
        "variable: flags show in ps)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma list; none = off)"
    )
    drain_timeout_s: float = Field(
        20.0, ge=0, description="on SIGTERM, how long in-flight requests may take to finish"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    access_log: bool = Field(True, description="one JSON line per request")

    @property
    def static_batches(self) -> tuple[int, ...]:
        """The batch sizes every run is padded to (none: runs take any size)."""
        return batch_sizes(self.max_batch) if self.cuda_graphs else ()

    @field_validator("cuda_graphs")
    @classmethod
    def _graphs_need_cuda(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("provider") != "cuda":
            raise ValueError("needs --provider cuda (ONNX Runtime has no CPU graphs)")
        return value

    @field_validator("cors_origins", "load_models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
