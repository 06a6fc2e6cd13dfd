"""The names the command line offers are the ones the libraries implement, and the server and
the Triton repository batch alike: each is typed once, in ln2d.constants."""

from __future__ import annotations

from ln2d import constants
from ln2d.export.fusion import targets
from ln2d.model import NORMS
from ln2d.serve.settings import Settings


def test_norm_names_are_the_model_norms():
    assert tuple(NORMS) == constants.NORMS


def test_target_names_are_the_fusion_rules():
    assert tuple(targets.TARGETS) == constants.TARGETS
    assert constants.DEFAULT_TARGET in targets.TARGETS


def test_server_defaults_are_the_batching_defaults(monkeypatch):
    for name in ("MAX_BATCH", "MAX_DELAY_MS", "MAX_QUEUE", "TIMEOUT_S"):
        monkeypatch.delenv(f"LN2D_{name}", raising=False)
    settings = Settings(model_path="model.onnx")
    batching = constants.BATCHING
    assert (settings.max_batch, settings.max_delay_ms, settings.max_queue, settings.timeout_s) == (
        batching.max_batch,
        batching.max_delay_ms,
        batching.max_queue,
        batching.timeout_s,
    )
