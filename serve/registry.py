"""The models a server holds, and the one place that loads and unloads them.

A request resolves a model (and optionally a version) to a ``ServedVersion``: a session, its
own batcher and admission limit, and its metrics. Only ready versions resolve: a version
becomes ready after it has loaded and warmed up every batch size, so traffic never meets a
cold session. A swap is load-then-drain: the new versions become ready first, then the old
ones leave the routing table and are released once the requests that hold them have been
answered. Loads and unloads run one at a time (a lock), which keeps the memory figure of each
load its own; requests never wait for that lock.

The models come from a ``Source``: a repository folder (``ln2d.repository``), or one model
file, which is a repository of one model.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ln2d.cpu_quota import available_cpus
from ln2d.parity_record import Replay
from ln2d.repository import (
    ModelFolder,
    RepositoryError,
    VersionPolicy,
    model_names,
    read_model_folder,
    version_number,
)
from ln2d.serve.batcher import Batcher
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics, ModelMetrics
from ln2d.serve.model import Model, ModelInfo, ModelLoadError
from ln2d.serve.settings import Settings

if TYPE_CHECKING:
    from ln2d.serve.tracing import Tracer

log = logging.getLogger("ln2d.serve")

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


class LoadFailed(Exception):
    """A model could not be loaded; the versions it had before keep serving."""


@dataclass(eq=False)
class ServedVersion:
    """One loaded model version: what a request needs, and how many requests hold it."""

    name: str
    version: int
    path: Path
    model: Model
    batcher: Batcher
    metrics: ModelMetrics
    memory_bytes: int
    load_seconds: float
    file_stat: tuple[int, int]
    replay: Replay | None = None  # its parity record, replayed here at load
    users: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def info(self) -> ModelInfo:
        return self.model.info

    def __enter__(self) -> ServedVersion:
        """``with served:`` holds this version for one request; an unload waits until nobody
        holds it. (A class, not a generator: it is on every request's path.)"""
        self.users += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.users -= 1
        if not self.users:
            self._idle.set()

    async def idle(self) -> None:
        while self.users:
            self._idle.clear()
            await self._idle.wait()


class Source:
    """Where models come from: their names, and each one's folder, read afresh on every load."""

    def __init__(self, root: Path, single: ModelFolder | None = None) -> None:
        self.root, self.single = root, single

    @classmethod
    def repository(cls, root: Path) -> Source:
        return cls(root)

    @classmethod
    def file(cls, path: Path, name: str) -> Source:
        """One model file, served as version 1 of ``name``, with no labels.txt beside it."""
        folder = ModelFolder(name, path.parent, VersionPolicy(), path.name, {1: path})
        return cls(path.parent, folder)

    def names(self) -> list[str]:
        return [self.single.name] if self.single else model_names(self.root)

    def folder(self, name: str) -> ModelFolder:
        if self.single is None:
            return read_model_folder(self.root, name)
        if name != self.single.name:
            raise RepositoryError(f"no model {name!r}; this server has {self.single.name!r}")
        return self.single

    def labels(self, folder: ModelFolder) -> tuple[str, ...] | None:
        return None if self.single else folder.labels()


def thread_budget() -> int:
    """Inference threads for all models together: every CPU of the quota but one, which HTTP
    and decoding need."""
    return max(1, available_cpus() - 1)


def model_threads(settings: Settings, max_models: int) -> int:
    """Each model's intra-op threads: the setting, or an equal share of the budget per model
    slot (versions of one model share its share: both run only during a swap)."""
    return settings.threads or max(1, thread_budget() // max_models)


class Registry:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        source: Source,
        preloaded: Model | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """``preloaded``: a single file's model, opened before the port was bound."""
        self.settings, self.metrics, self.source = settings, metrics, source
        self.tracer = tracer
        self.single_info = preloaded.info if preloaded else None
        # A single file is a repository of one model: it gets the whole budget.
        self.max_models = 1 if source.single else settings.max_models
        self.threads_per_model = model_threads(settings, self.max_models)
        self._preloaded = {preloaded.info.name: preloaded} if preloaded else {}
        self._ready: dict[str, dict[int, ServedVersion]] = {}
        self._states: dict[tuple[str, int], tuple[str, str]] = {}  # versions not ready
        self._failed: dict[str, str] = {}  # models whose last load failed as a whole
        self._seen: dict[str, object] = {}  # each model's files at its last load (poll)
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task | None = None

    # ---- requests ----------------------------------------------------------------------

    def resolve(self, name: str, version: str | None = None) -> ServedVersion:
        """The ready version a request for ``name`` (``version``, or the newest) goes to:
        404 for an unknown or unloaded one, 503 while it is still loading."""
        table = self._ready.get(name)
        if table is not None:
            if version is None:
                return table[max(table)]
            served = table.get(version_number(version))
            if served is not None:
                return served
        raise self._not_served(name, version)

    def default(self) -> ServedVersion:
        """The model ``/v1/classify`` serves: the setting's, or the only one loaded."""
        if self.settings.default_model is not None:
            return self.resolve(self.settings.default_model)
        if len(self._ready) == 1:
            return self.resolve(next(iter(self._ready)))
        loaded = ", ".join(sorted(self._ready)) or "none"
        raise ApiError(
            404,
            f"no default model: {len(self._ready)} models are loaded ({loaded}); use "
            "/v1/models/{name}/classify, or start the server with --default-model",
        )

    def for_path(self, path: str) -> ServedVersion | None:
        """The version an inference path will resolve to, if it resolves (load shedding)."""
        parts = path.split("/")
        with suppress(ApiError):
            if parts[1:] == ["v1", "classify"]:
                return self.default()
            if len(parts) == 5 and parts[1:3] in (["v1", "models"], ["v2", "models"]):
                return self.resolve(parts[3])
            if len(parts) == 7 and parts[1:3] == ["v2", "models"] and parts[4] == "versions":
                return self.resolve(parts[3], parts[5])
        return None

    def not_ready_reason(self, name: str, version: str | None = None) -> str | None:
        """None when a request for ``name`` (``version``) would be served now, else why not;
        ApiError 404 for a model or version that is neither served nor loading nor was."""
        try:
            self.resolve(name, version)
        except ApiError as refused:
            if self._unknown(name, version):
                raise
            return refused.message
        return None

    def _unknown(self, name: str, version: str | None) -> bool:
        if not self.known(name):
            return True
        if version is None:
            return False
        number = version_number(version)
        return (name, number) not in self._states and number not in self._ready.get(name, {})

    def _not_served(self, name: str, version: str | None) -> ApiError:
        asked = f"model {name!r}" + (f" version {version!r}" if version is not None else "")
        if self._unknown(name, version):
            return ApiError(404, f"unknown {asked}")
        loading = [v for (n, v), (s, _) in self._states.items() if n == name and s == LOADING]
        if loading and (version is None or version_number(version) in loading):
            return ApiError(503, f"{asked} is loading; retry later", {"Retry-After": "1"})
        reason = self._failed.get(name) or "not loaded"
        return ApiError(404, f"{asked} is not being served: {reason}")

    def known(self, name: str) -> bool:
        """Whether ``name`` is in the repository or was loaded."""
        if name in self._ready or name in self._failed:
            return True
        return any(n == name for n, _ in self._states) or name in self.source.names()

    # ---- what is served -----------------------------------------------------------------

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` that take traffic now, oldest first."""
        return [str(v) for v in sorted(self._ready.get(name, {}))]

    def failure(self, name: str) -> str | None:
        """Why the last load of ``name`` failed, if it did."""
        return self._failed.get(name)

    def ready_versions(self) -> list[ServedVersion]:
        return [t[v] for _, t in sorted(self._ready.items()) for v in sorted(t)]

    def index(self, ready_only: bool = False) -> list[dict]:
        """The repository index as Triton answers it: one entry per version that is or was
        loaded, one per model otherwise, each with its state and the reason it is not ready."""
        entries = []
        for name in sorted({*self.source.names(), *self._ready, *(n for n, _ in self._states)}):
            versions = {v: (READY, "") for v in self._ready.get(name, {})}
            for (n, v), state in self._states.items():
                if n == name and v not in versions:
                    versions[v] = state
            for v, (state, reason) in sorted(versions.items()):
                entries.append({"name": name, "version": str(v), "state": state, "reason": reason})
            if not versions or name in self._failed:
                reason = self._failed.get(name, "not loaded")
                entries.append({"name": name, "state": UNAVAILABLE, "reason": reason})
        return [e for e in entries if e["state"] == READY] if ready_only else entries

    # ---- loading and unloading ----------------------------------------------------------

    async def start(self) -> None:
        """Load what the control mode loads at startup, and start watching in poll mode."""
        mode = self.settings.model_control_mode
        names = self.settings.load_models if mode == "explicit" else self.source.names()
        if "*" in names:
            names = self.source.names()
        for name in names:
            with suppress(LoadFailed):
                await self.load(name)
        if mode == "poll":
            self._poller = asyncio.create_task(self._poll_forever(), name="ln2d-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with suppress(asyncio.CancelledError):
                await self._poller
        for name in list(self._ready):
            await self.unload(name)

    async def load(self, name: str) -> None:
        """Load (or reload) ``name`` as its folder says now: the versions its policy selects,
        each warmed up before it takes traffic; versions no longer selected, or whose file
        changed, are drained and released after. All or nothing: if one version fails, the
        versions that served before keep serving. Raises LoadFailed with the reason."""
        async with self._lock:
            try:
                folder = self.source.folder(name)
            except RepositoryError as exc:
                self._seen[name] = ("unreadable", str(exc))
                raise self._fail(name, str(exc)) from None
            self._seen[name] = folder.fingerprint()
            current = self._ready.get(name, {})
            if not current and len(self._ready) >= self.max_models:
                raise self._fail(name, f"max_models is {self.max_models} and that many are loaded")
            wanted = folder.selected
            changed = {
                v: p
                for v, p in wanted.items()
                if v not in current or current[v].file_stat != _stat(p)
            }
            loaded = await self._load_versions(folder, changed)
            table = {v: s for v, s in current.items() if v in wanted}
            retired = [s for v, s in current.items() if v not in wanted or v in loaded]
            table.update(loaded)
            self._ready[name] = table
            self._failed.pop(name, None)
            for served in loaded.values():
                self._states.pop((name, served.version), None)
                served.metrics.ready.set(1)
            for served in retired:
                await self._retire(served)
            log.info("model %r serves versions %s", name, sorted(table))

    async def unload(self, name: str) -> None:
        """Stop routing to ``name``, let its in-flight requests finish, release it."""
        async with self._lock:
            if not self.known(name):
                raise ApiError(404, f"unknown model {name!r}")
            self._failed.pop(name, None)
            for served in self._ready.pop(name, {}).values():
                await self._retire(served)

    async def poll(self) -> None:
        """One look at the repository: load what is new or changed, unload what is gone."""
        names = set(self.source.names())
        for gone in sorted(set(self._ready) - names):
            await self.unload(gone)
        for name in sorted(names):
            try:
                seen: object = self.source.folder(name).fingerprint()
            except RepositoryError as exc:
                seen = ("unreadable", str(exc))
            if seen != self._seen.get(name):
                with suppress(LoadFailed):
                    await self.load(name)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll()
            except Exception:  # a bad folder must not stop the watching
                log.exception("polling the model repository failed")

    async def _load_versions(
        self, folder: ModelFolder, paths: dict[int, Path]
    ) -> dict[int, ServedVersion]:
        loaded: dict[int, ServedVersion] = {}
        for version, path in sorted(paths.items()):
            self._states[(folder.name, version)] = (LOADING, "")
            try:
                loaded[version] = await self._load_version(folder, version, path)
            except ModelLoadError as exc:
                self._states[(folder.name, version)] = (UNAVAILABLE, str(exc))
                for served in loaded.values():
                    self._states.pop((folder.name, served.version), None)
                    await self._release(served)
                raise self._fail(folder.name, f"version {version}: {exc}") from None
        return loaded

    async def _load_version(self, folder: ModelFolder, version: int, path: Path) -> ServedVersion:
        before, started = _resident_bytes(), time.monotonic()
        model = self._preloaded.pop(folder.name, None) or await asyncio.to_thread(
            Model,
            path,
            self.settings.provider,
            self.settings.cpu_fallback,
            self.threads_per_model,
            name=None if self.source.single else folder.name,
            labels=self.source.labels(folder),
            static_batches=self.settings.static_batches,
        )
        sizes = list(range(1, self.settings.max_batch + 1))
        try:
            await asyncio.to_thread(model.warm_up, sizes)
        except Exception as exc:  # onnxruntime's own error types: a shape the model refuses
            raise ModelLoadError(f"warm-up failed: {exc}") from exc
        replay = await self._replay(model, folder, version)
        metrics = self.metrics.for_model(folder.name, version)
        settings = self.settings
        batcher = Batcher(
            model.run,
            settings.max_batch,
            settings.max_delay_ms / 1000,
            settings.max_queue,
            metrics,
            self.tracer,
            {
                "ln2d.model": folder.name,
                "ln2d.version": str(version),
                "ln2d.provider": model.provider,
            },
        )
        batcher.start()
        seconds = model.load_seconds + time.monotonic() - started
        memory = max(0, _resident_bytes() - before)
        metrics.load_seconds.set(seconds)
        metrics.memory_bytes.set(memory)
        log.info(
            "loaded %r version %d from %s on %s (%d threads) in %.2f s, +%.0f MiB",
            folder.name,
            version,
            path,
            model.provider,
            model.threads,
            seconds,
            memory / 2**20,
        )
        return ServedVersion(
            folder.name,
            version,
            path,
            model,
            batcher,
            metrics,
            memory,
            seconds,
            _stat(path),
            replay,
        )

    async def _replay(self, model: Model, folder: ModelFolder, version: int) -> Replay | None:
        """The model's parity record, run here before the version takes traffic: a drift
        refuses the version (ModelLoadError) unless the settings or its folder accept it."""
        started = time.monotonic()
        replay = await asyncio.to_thread(model.replay)
        if replay is None:
            log.info("model %r version %d carries no parity record to replay", folder.name, version)
            return None
        self.metrics.parity_record_ratio.labels(folder.name, str(version)).set(replay.ratio)
        if replay.passed:
            log.info(
                "model %r version %d: parity record holds here (%.2fx its tolerance, %d inputs, "
                "%.1f ms)",
                folder.name,
                version,
                replay.ratio,
                replay.record.samples,
                1000 * (time.monotonic() - started),
            )
            return replay
        drift = f"its parity record does not hold on this machine: {replay.summary()}"
        if not (self.settings.accept_drift or folder.accept_drift):
            raise ModelLoadError(f"{drift}; not served (--accept-drift serves it anyway)")
        log.warning("model %r version %d: %s; served (drift accepted)", folder.name, version, drift)
        return replay

    async def _retire(self, served: ServedVersion) -> None:
        """Out of the routing table already: wait for its requests (up to the drain timeout),
        then release it."""
        key = (served.name, served.version)
        self._states[key] = (UNLOADING, "")
        served.metrics.ready.set(0)
        with suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await served.idle()
        await self._release(served)
        if key not in {(n, v) for n, t in self._ready.items() for v in t}:
            self._states[key] = (UNAVAILABLE, "unloaded")
        log.info("unloaded %r version %d", served.name, served.version)

    async def _release(self, served: ServedVersion) -> None:
        await served.batcher.stop()
        served.metrics.queue_depth.set(0)
        served.metrics.memory_bytes.set(0)
        served.model.close()
        gc.collect()
        _return_freed_memory()

    def _fail(self, name: str, reason: str) -> LoadFailed:
        log.error("cannot load model %r: %s", name, reason)
        self._failed[name] = reason
        return LoadFailed(reason)


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return (stat.st_mtime_ns, stat.st_size)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except OSError:  # not Linux: no figure
        return 0


_PAGE = 4096
_LIBC = ctypes.util.find_library("c")


def _return_freed_memory() -> None:
    """glibc keeps freed heap for reuse; a released session's hundreds of megabytes would stay
    resident. malloc_trim hands them back to the system."""
    if _LIBC is not None:
        with suppress(OSError, AttributeError):
            ctypes.CDLL(_LIBC).malloc_trim(0)
