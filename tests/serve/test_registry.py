"""The registry in process, on real tiny models in a real repository folder: what resolves,
when a swap happens, that an unload waits for the requests holding a version, that a failed
load leaves what served before, and what a poll sees."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from ln2d.serve.registry import LoadFailed, Registry, Source
from ln2d.serve.settings import Settings
from tests.serve.prometheus import sample
from tests.tiny_models import classifier, with_record

X = np.zeros((1, 1, 8, 8), np.float32)


def add_version(repo: Path, name: str, version: int, seed: int = 1) -> None:
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(classifier(seed=seed), str(path))


def registry(repo: Path, **settings: object) -> Registry:
    options = Settings(model_path=repo, max_batch=2, access_log=False, **settings)
    return Registry(options, Metrics(), Source.repository(repo))


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_newest_selected_version_serves_and_others_are_404(tmp_path):
    for version in (1, 2, 3):
        add_version(tmp_path, "m", version, seed=version)
    (tmp_path / "m" / "config.pbtxt").write_text("version_policy: { latest { num_versions: 2 } }")

    async def main():
        models = registry(tmp_path)
        await models.load("m")
        try:
            assert models.resolve("m").version == 3
            assert models.resolve("m", "2").version == 2
            for name, version in (("m", "1"), ("m", "x"), ("other", None)):
                with pytest.raises(ApiError) as refused:
                    models.resolve(name, version)
                assert refused.value.status == 404
            assert models.default().name == "m"  # the only model is the default
            states = {(e["name"], e.get("version"), e["state"]) for e in models.index()}
            assert states == {("m", "2", "READY"), ("m", "3", "READY")}
            expected = [(s.name, s.version) for s in models.ready_versions()]
            assert expected == [("m", 2), ("m", 3)]
        finally:
            await models.stop()

    run(main())


def test_a_swap_serves_the_new_version_first_and_the_old_one_until_its_requests_end(tmp_path):
    add_version(tmp_path, "m", 1)

    async def main():
        models = registry(tmp_path, model_control_mode="explicit")
        await models.load("m")
        old = models.resolve("m")
        with old:  # a request in flight on version 1
            add_version(tmp_path, "m", 2, seed=2)
            swap = asyncio.create_task(models.load("m"))
            while not models.ready_versions() or models.resolve("m").version != 2:
                await asyncio.sleep(0.01)  # version 2 takes new requests ...
            await asyncio.sleep(0.05)
            assert not swap.done()  # ... while version 1 waits for the one it holds
            states = {e["version"]: e["state"] for e in models.index()}
            assert states == {"1": "UNLOADING", "2": "READY"}
            assert old.model.run(X).shape == (1, 10)  # and it still computes
        await swap
        assert {e["version"]: e["state"] for e in models.index()} == {
            "1": "UNAVAILABLE",
            "2": "READY",
        }
        assert old.model.session is None  # released at once, not whenever gc runs
        await models.stop()

    run(main())


def test_a_failed_load_keeps_what_served_and_says_why(tmp_path):
    add_version(tmp_path, "m", 1)

    async def main():
        models = registry(tmp_path)
        await models.load("m")
        broken = tmp_path / "m" / "2" / "model.onnx"
        broken.parent.mkdir()
        broken.write_bytes(b"not a model")
        with pytest.raises(LoadFailed, match="version 2: cannot load"):
            await models.load("m")
        assert models.resolve("m").version == 1
        entries = models.index()
        assert {"name": "m", "version": "1", "state": "READY", "reason": ""} in entries
        (failed,) = [e for e in entries if e.get("version") == "2"]
        assert failed["state"] == "UNAVAILABLE" and "cannot load" in failed["reason"]
        await models.stop()

    run(main())


def test_max_models_bounds_the_loaded_models_not_their_versions(tmp_path):
    add_version(tmp_path, "a", 1)
    add_version(tmp_path, "b", 1)

    async def main():
        models = registry(tmp_path, max_models=1)
        await models.load("a")
        add_version(tmp_path, "a", 2, seed=2)
        await models.load("a")  # a new version of a loaded model takes no new slot
        with pytest.raises(LoadFailed, match="max_models is 1"):
            await models.load("b")
        await models.unload("a")
        await models.load("b")
        assert [s.name for s in models.ready_versions()] == ["b"]
        await models.stop()

    run(main())


def test_a_poll_loads_new_models_unloads_gone_ones_and_retries_only_changed_files(tmp_path, caplog):
    add_version(tmp_path, "a", 1)

    def failed_loads() -> int:
        return sum("cannot load model 'b'" in r.getMessage() for r in caplog.records)

    async def main():
        models = registry(tmp_path, model_control_mode="poll")
        await models.poll()
        assert [s.name for s in models.ready_versions()] == ["a"]
        broken = tmp_path / "b" / "1" / "model.onnx"
        broken.parent.mkdir(parents=True)
        broken.write_bytes(b"half a file")
        await models.poll()
        reason = models.failure("b")
        assert reason is not None and "cannot load" in reason and failed_loads() == 1
        await models.poll()
        assert failed_loads() == 1  # nothing changed: no retry, no new error line
        onnx.save(classifier(), str(broken))  # the rest of the file arrived
        await models.poll()
        assert models.failure("b") is None
        assert [s.name for s in models.ready_versions()] == ["a", "b"]
        shutil.rmtree(tmp_path / "a")
        await models.poll()
        assert [s.name for s in models.ready_versions()] == ["b"]
        await models.stop()

    run(main())


def _recorded(repo: Path, name: str, shift: float, config: str = "") -> None:
    path = repo / name / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(with_record(classifier(), shift), str(path))
    if config:
        (repo / name / "config.pbtxt").write_text(config)


ACCEPT = 'parameters: { key: "ln2d.accept_drift" value: { string_value: "true" } }'


def test_a_version_whose_parity_record_holds_here_serves_and_says_so(tmp_path):
    _recorded(tmp_path, "m", shift=0.0)

    async def main():
        models = registry(tmp_path)
        await models.load("m")
        try:
            replay = models.resolve("m").replay
            assert replay.passed and replay.record.samples == 4
            text = models.metrics.exposition().decode()
            ratio = sample(text, "ln2d_parity_record_ratio", model="m")
            assert ratio == pytest.approx(replay.ratio)
        finally:
            await models.stop()

    run(main())


def test_a_drifted_version_is_refused_with_the_numbers_and_the_old_one_keeps_serving(tmp_path):
    add_version(tmp_path, "m", 1)

    async def main():
        models = registry(tmp_path, model_control_mode="explicit")
        await models.load("m")
        try:
            path = tmp_path / "m" / "2" / "model.onnx"
            path.parent.mkdir()
            onnx.save(with_record(classifier(), shift=0.01), str(path))
            with pytest.raises(LoadFailed) as refused:
                await models.load("m")
            reason = str(refused.value)
            assert "parity record does not hold on this machine" in reason
            assert "max abs error 0.01" in reason and "--accept-drift" in reason
            assert "since it was recorded" in reason  # this machine is not the recording's
            assert models.resolve("m").version == 1  # what served before still serves
            text = models.metrics.exposition().decode()
            ratio = sample(text, "ln2d_parity_record_ratio", model="m", version="2")
            assert ratio > 1
            states = {(e.get("version"), e["state"]) for e in models.index()}
            assert ("2", "UNAVAILABLE") in states
        finally:
            await models.stop()

    run(main())


@pytest.mark.parametrize(
    ("settings", "config"), [({"accept_drift": True}, ""), ({}, ACCEPT)], ids=["flag", "config"]
)
def test_a_drift_accepted_by_flag_or_config_is_served_and_shown(tmp_path, settings, config):
    _recorded(tmp_path, "m", shift=0.01, config=config)

    async def main():
        models = registry(tmp_path, **settings)
        await models.load("m")
        try:
            replay = models.resolve("m").replay
            assert not replay.passed and replay.ratio > 1
        finally:
            await models.stop()

    run(main())


def test_the_accept_drift_parameter_takes_true_or_false_only(tmp_path):
    _recorded(tmp_path, "m", shift=0.0, config=ACCEPT.replace('"true"', '"yes"'))

    async def main():
        models = registry(tmp_path)
        with pytest.raises(LoadFailed, match='is string_value "true" or "false"'):
            await models.load("m")

    run(main())
