"""A model run at a few fixed batch sizes, into buffers bound once: what CUDA graphs need.

ONNX Runtime's CUDA provider replays a captured graph on the addresses and shapes it was
captured with, one graph per ``gpu_graph_id``. So each batch size the server warms up gets its
own input and output buffers on the device, bound once, and its own graph id; a batch is
zero-padded up to the next size, copied into that size's input buffer, and its rows are read
back from the output. The provider keeps its graphs per thread, so every run, warm-up
included, happens on this runner's one thread.

On the CPU the same path runs without capture (ONNX Runtime has no CPU graphs): that is how
the tests check it on a machine without a GPU.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# Runs before a graph is trusted: ONNX Runtime runs a graph id twice normally (allocating
# what the graph will need), captures it on the third, replays it from the fourth.
CAPTURE_RUNS = 4
# A captured graph must give what the regular run gave; only the reduction order may differ.
CAPTURE_RTOL, CAPTURE_ATOL = 1e-4, 1e-5
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class CaptureMismatch(RuntimeError):
    """A captured graph's output differs from the run it was captured from."""


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """The sizes a batch is padded to: powers of two below ``max_batch``, and ``max_batch``.
    Padding at most doubles a batch, and a GPU runs a small model's batch of 32 in about the
    time of a batch of 1 (0.28 against 0.22 ms on an H200)."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


@dataclass
class _Slot:
    """One batch size: its bound buffers and the run options that name its graph."""

    size: int
    inputs: object  # onnxruntime.OrtValue
    outputs: object
    binding: object  # onnxruntime.IOBinding
    options: object  # onnxruntime.RunOptions


class StaticBatches:
    """``run(batch)`` for a session opened with CUDA graphs enabled (or a CPU session)."""

    def __init__(
        self,
        session,
        sample_shape: tuple[int, ...],
        classes: int,
        sizes: tuple[int, ...],
        device: str,
        graphs: bool,
    ) -> None:
        """A session of one (N, *sample_shape) float32 input and one (N, classes) output.
        ``device``: "cuda" or "cpu", where the buffers live; ``graphs``: name a graph id per
        size (the session must have been opened with ``enable_cuda_graph``)."""
        import onnxruntime as ort

        (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
        out_type = _NUMPY_TYPES[model_output.type]
        self._session = session
        self._slots: list[_Slot] = []
        for graph_id, size in enumerate(sorted(sizes), start=1):  # 0 is ONNX Runtime's own
            inputs = ort.OrtValue.ortvalue_from_shape_and_type(
                (size, *sample_shape), np.float32, device, 0
            )
            outputs = ort.OrtValue.ortvalue_from_shape_and_type(
                (size, classes), out_type, device, 0
            )
            binding = session.io_binding()
            binding.bind_ortvalue_input(model_input.name, inputs)
            binding.bind_ortvalue_output(model_output.name, outputs)
            options = ort.RunOptions()
            if graphs:
                options.add_run_config_entry("gpu_graph_id", str(graph_id))
            self._slots.append(_Slot(size, inputs, outputs, binding, options))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ln2d-static-batches")

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(slot.size for slot in self._slots)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The logits of ``batch`` (at most the largest size), as a plain run gives them."""
        return self._thread.submit(self._run, batch).result()

    def capture(self, rng: np.random.Generator | None = None) -> None:
        """Run every size until its graph is captured and replayed, and check that the replay
        gives the regular run's logits; CaptureMismatch if not."""
        rng = rng or np.random.default_rng(0)
        for slot in self._slots:
            shape = (slot.size, *slot.inputs.shape()[1:])
            batch = rng.standard_normal(shape).astype(np.float32)
            outputs = [self.run(batch) for _ in range(CAPTURE_RUNS)]
            if not np.allclose(outputs[-1], outputs[0], CAPTURE_RTOL, CAPTURE_ATOL):
                worst = float(np.max(np.abs(outputs[-1].astype(np.float64) - outputs[0])))
                raise CaptureMismatch(
                    f"batch size {slot.size}: the captured graph's logits differ from the "
                    f"regular run's by up to {worst:.3g}"
                )

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        count = len(batch)
        slot = next((s for s in self._slots if s.size >= count), None)
        if slot is None:
            raise ValueError(f"a batch of {count} is larger than the largest size {self.sizes[-1]}")
        if count < slot.size:
            padding = np.zeros((slot.size - count, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, padding])
        slot.inputs.update_inplace(np.ascontiguousarray(batch, np.float32))
        self._session.run_with_iobinding(slot.binding, slot.options)
        # A copy: on the CPU the array is the bound buffer, which the next run overwrites.
        return np.array(slot.outputs.numpy()[:count])
