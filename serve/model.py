"""The served model: one ONNX Runtime session and what its ``ln2d.*`` metadata says about it.

Everything the server needs (name, labels, input size, mean/std) comes from the metadata that
``ln2d export`` writes, read through ONNX Runtime, so serving needs neither torch nor onnx.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ln2d.constants import PROVIDERS
from ln2d.metadata import ModelMetadata
from ln2d.parity_record import ParityRecord, Replay, replay
from ln2d.preprocessing import SCALE
from ln2d.runtime import ProviderNotActive, SessionSettings, available_providers, open_session
from ln2d.serve.static_batches import StaticBatches

log = logging.getLogger("ln2d.serve")


class ModelLoadError(Exception):
    """The model cannot be served: a missing or invalid file, or an unavailable provider."""


@dataclass(frozen=True)
class ModelInfo:
    """What a client needs to know to send an image, and what the server needs to decode it."""

    name: str
    labels: tuple[str, ...]
    input_name: str
    output_name: str
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float
    precision: str = "fp32"  # "int8" for a model from ln2d quantize

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


class Model:
    """An ONNX Runtime session over a batch of normalised ``(N, C, H, W)`` float32 images."""

    def __init__(
        self,
        path: Path,
        provider: str,
        cpu_fallback: bool,
        threads: int,
        name: str | None = None,
        labels: tuple[str, ...] | None = None,
        io_binding: bool = False,
        static_batches: tuple[int, ...] = (),
    ) -> None:
        """``name`` (a repository's folder name) replaces the metadata's; ``labels`` (its
        labels.txt) serve a model without ln2d metadata. ``io_binding`` copies each batch to the
        provider's device once and reads the logits back once: off by default, because on an
        H200 it made the digits model's run 7-10 % slower than a plain one (make gpu-check,
        model_run; docs/benchmarks.md). ``static_batches``: run every batch padded to one of
        these sizes, into buffers bound once, and on CUDA as a captured graph per size
        (``serve.static_batches``; ``warm_up`` captures them)."""
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if io_binding and static_batches:
            raise ValueError("static batches bind their own buffers: not with io_binding")
        started = time.monotonic()
        self.session = _session(path, provider, cpu_fallback, threads, bool(static_batches))
        self.load_seconds = time.monotonic() - started
        self.provider = self.session.get_providers()[0]
        self.threads = threads
        info, self.record = _info(self.session, path, labels)
        self.info = info if name is None else dataclasses.replace(info, name=name)
        on_gpu = self.provider == PROVIDERS["cuda"]
        device = "cuda" if on_gpu else "cpu"
        self._device = device if io_binding else None
        self._static = (
            StaticBatches(
                self.session,
                self.info.sample_shape,
                self.info.num_classes,
                static_batches,
                device,
                graphs=on_gpu,
            )
            if static_batches
            else None
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._static is not None:
            return self._static.run(batch)
        if self._device is not None:
            return self._run_bound(batch)
        (logits,) = self.session.run([self.info.output_name], {self.info.input_name: batch})
        return logits

    def _run_bound(self, batch: np.ndarray) -> np.ndarray:
        """The batch goes to the device in one copy, the logits are allocated there and come
        back in one copy (``make gpu-check`` times it against a plain run)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.info.input_name, np.ascontiguousarray(batch))
        binding.bind_output(self.info.output_name, self._device)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def replay(self) -> Replay | None:
        """The model's parity record run through this session here (None without a record).
        One sample at a time: every server runs batch 1, whatever its batch settings."""
        if self.record is None:
            return None

        def run(feeds) -> list[np.ndarray]:
            (x,) = feeds.values()
            return [np.concatenate([self.run(x[i : i + 1]) for i in range(len(x))])]

        return replay(self.record, run, "cuda" if self.provider == PROVIDERS["cuda"] else "cpu")

    def close(self) -> None:
        """Release the session now, not whenever the last reference goes."""
        if self._static is not None:
            self._static.close()
        self.session = None

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run every batch size once, so first requests do not pay for allocations and tuning;
        with static batches, capture (and check) each size's graph instead."""
        if self._static is not None:
            self._static.capture()
            return
        for size in batch_sizes:
            self.run(np.zeros((size, *self.info.sample_shape), np.float32))


def _session(path: Path, provider: str, cpu_fallback: bool, threads: int, graphs: bool):
    if provider not in available_providers():
        if not cpu_fallback:
            raise ModelLoadError(
                f"{PROVIDERS[provider]} is not available in this onnxruntime build "
                f"({', '.join(PROVIDERS[p] for p in available_providers())}); install "
                "onnxruntime-gpu, "
                "or allow --cpu-fallback"
            )
        log.warning("%s is not available; serving on CPU (--cpu-fallback)", PROVIDERS[provider])
        provider = "cpu"
    graphs = graphs and provider == "cuda"  # ONNX Runtime has no graphs on the CPU
    settings = SessionSettings(provider, threads, cpu_fallback=cpu_fallback, cuda_graph=graphs)
    try:
        return open_session(path, settings)
    except ProviderNotActive as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:  # onnxruntime raises its own untyped errors for invalid files
        raise ModelLoadError(f"cannot load {path}: {exc}") from exc


def _info(
    session, path: Path, labels: tuple[str, ...] | None
) -> tuple[ModelInfo, ParityRecord | None]:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(
            f"expected one input and one output, got {len(inputs)} and {len(outputs)}"
        )
    if inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4:
        raise ModelLoadError(
            f"expected a float32 (N, C, H, W) input, got {inputs[0].type} {inputs[0].shape}"
        )
    if len(outputs[0].shape) != 2:
        raise ModelLoadError(
            f"{path} outputs {outputs[0].shape}, not (N, classes) logits: ln2d serve classifies "
            "images; run this model with ONNX Runtime or Triton directly"
        )
    try:
        meta = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map)
        return _from_metadata(meta, inputs[0], outputs[0]), meta.parity_record
    except (KeyError, ValueError, TypeError) as exc:
        log.warning(
            "%s has no usable ln2d metadata (%s); serving with labels.txt or index labels, the "
            "input size "
            "from the graph (default 32x32) and no normalisation",
            path,
            exc,
        )
        return _from_graph(path, inputs[0], outputs[0], labels), None


def _from_metadata(meta: ModelMetadata, model_input, model_output) -> ModelInfo:
    spec, labels = meta.input, meta.labels
    if spec is None or labels is None or meta.name is None:
        raise KeyError("name, labels or input")
    classes = model_output.shape[-1]
    if isinstance(classes, int) and classes != len(labels):
        raise ValueError(f"{len(labels)} labels for {classes} outputs")
    return ModelInfo(
        name=meta.name,
        labels=labels,
        input_name=model_input.name,
        output_name=model_output.name,
        channels=spec.channels,
        height=spec.height,
        width=spec.width,
        mean=spec.mean,
        std=spec.std,
        scale=spec.scale,
        precision=meta.precision_name,
    )


def _from_graph(path: Path, model_input, model_output, labels: tuple[str, ...] | None) -> ModelInfo:
    _, channels, height, width = (d if isinstance(d, int) else None for d in model_input.shape)
    classes = model_output.shape[-1]
    if channels not in (1, 3) or not isinstance(classes, int):
        raise ModelLoadError(
            f"{path} has no ln2d metadata and its shapes do not say the channels (1 or 3) and "
            f"the class count: input {model_input.shape}, output {model_output.shape}"
        )
    if labels is None or len(labels) != classes:
        labels = tuple(str(i) for i in range(classes))
    return ModelInfo(
        name=path.stem,
        labels=labels,
        input_name=model_input.name,
        output_name=model_output.name,
        channels=channels,
        height=height or 32,
        width=width or 32,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        scale=SCALE,
    )
