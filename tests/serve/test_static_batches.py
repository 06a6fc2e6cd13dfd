"""Static batches (``ln2d serve --cuda-graphs``): every batch padded to a fixed size and run
into buffers bound once. The path runs on the CPU here (no capture), and as CUDA graphs where
a GPU is (the cuda-marked test)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest

from ln2d.serve.model import Model
from ln2d.serve.static_batches import batch_sizes
from tests.helpers import cuda_unavailable
from tests.tiny_models import classifier


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A real hand-built classifier: padding and shared buffers do not depend on the model."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    onnx.save(classifier(), str(path))
    return path


@pytest.mark.parametrize(
    ("max_batch", "sizes"),
    [(1, (1,)), (8, (1, 2, 4, 8)), (12, (1, 2, 4, 8, 12)), (32, (1, 2, 4, 8, 16, 32))],
)
def test_batches_are_padded_to_powers_of_two_and_the_largest(max_batch, sizes):
    assert batch_sizes(max_batch) == sizes


def _batches(model: Model, counts) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal((n, *model.info.sample_shape)).astype(np.float32) for n in counts]


def test_every_batch_size_gives_the_plain_runs_logits(tiny_onnx):
    plain = Model(tiny_onnx, "cpu", False, 1)
    static = Model(tiny_onnx, "cpu", False, 1, static_batches=batch_sizes(8))
    static.warm_up(list(range(1, 9)))
    for batch in _batches(plain, range(1, 9)):  # 3, 5, 6 and 7 are padded
        np.testing.assert_allclose(static.run(batch), plain.run(batch), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="a batch of 9 is larger than the largest size 8"):
        static.run(_batches(plain, [9])[0])
    static.close()


def test_runs_from_many_threads_each_get_their_own_logits(tiny_onnx):
    """The bound buffers are shared: runs from the event loop's threads must not mix."""
    plain = Model(tiny_onnx, "cpu", False, 1)
    static = Model(tiny_onnx, "cpu", False, 1, static_batches=batch_sizes(4))
    batches = _batches(plain, [1, 2, 3, 4] * 4)
    expected = [plain.run(batch) for batch in batches]
    got: list[np.ndarray | None] = [None] * len(batches)

    def run(index: int) -> None:
        for _ in range(20):
            got[index] = static.run(batches[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for logits, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-6)
    static.close()


def test_static_batches_bind_their_own_buffers(tiny_onnx):
    with pytest.raises(ValueError, match="not with io_binding"):
        Model(tiny_onnx, "cpu", False, 1, io_binding=True, static_batches=(1, 2))


@pytest.mark.cuda
@pytest.mark.skipif(bool(cuda_unavailable()), reason=str(cuda_unavailable()))
def test_cuda_graphs_give_the_plain_cuda_runs_logits(digits_onnx):
    plain = Model(digits_onnx, "cuda", False, 1)
    graphs = Model(digits_onnx, "cuda", False, 1, static_batches=batch_sizes(8))
    graphs.warm_up(list(range(1, 9)))  # captures every size, and checks each replay
    for batch in _batches(plain, range(1, 9)):
        np.testing.assert_allclose(graphs.run(batch), plain.run(batch), rtol=1e-4, atol=1e-5)
    graphs.close()
