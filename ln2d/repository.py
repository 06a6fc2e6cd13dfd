"""A model repository on disk, in Triton's layout, which ``ln2d triton-repo`` writes and
``ln2d serve REPO_DIR`` reads, so that one folder runs on either::

    REPO/<name>/config.pbtxt        optional for ln2d; its version_policy is honoured, and its
                                    parameter ln2d.accept_drift ("true": serve the model even
                                    where its parity record does not hold)
    REPO/<name>/labels.txt          optional; the model's own ln2d metadata comes first
    REPO/<name>/<version>/model.onnx

Nothing here opens a model: this is names, folders, versions and the version policy. Nothing
is read outside the repository: names are plain folder names, and a version whose model file
resolves (through links) outside its model's folder is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ln2d import pbtxt

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"  # Triton's default_model_filename for the ONNX Runtime backend
ACCEPT_DRIFT = "ln2d.accept_drift"  # a config.pbtxt parameter: true serves a drifted model
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{1,18}")


class RepositoryError(ValueError):
    """A model folder that cannot be served as it is; the message says why."""


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's ``version_policy``: the newest ``latest`` versions, ``all``, or ``specific``."""

    kind: str = "latest"
    count: int = 1  # for latest
    versions: tuple[int, ...] = ()  # for specific

    def select(self, available: set[int]) -> set[int]:
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return available & set(self.versions)
        return set(sorted(available)[-self.count :])

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.count}"
        if self.kind == "specific":
            return "specific " + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class ModelFolder:
    """One model's folder: which versions are there and which of them the policy serves."""

    name: str
    path: Path
    policy: VersionPolicy
    model_file: str
    on_disk: dict[int, Path]  # version -> model file
    accept_drift: bool = False  # serve versions whose parity record fails on this machine

    @property
    def selected(self) -> dict[int, Path]:
        chosen = self.policy.select(set(self.on_disk))
        return {v: p for v, p in self.on_disk.items() if v in chosen}

    def labels(self) -> tuple[str, ...] | None:
        path = self.path / LABELS_FILE
        if not path.is_file():
            return None
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())

    def fingerprint(self) -> tuple:
        """What changes when a file a load would read changes (config, labels, model files)."""
        files = [self.path / CONFIG_FILE, self.path / LABELS_FILE, *self.on_disk.values()]
        return tuple((str(f), *_stat(f)) for f in files)


def model_names(root: Path) -> list[str]:
    """The model folders in ``root``: every folder with a valid name (others are skipped, as
    Triton skips them), sorted."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and MODEL_NAME.fullmatch(p.name))


def read_model_folder(root: Path, name: str) -> ModelFolder:
    """The folder of model ``name`` in ``root``, its config's policy and its versions."""
    if not MODEL_NAME.fullmatch(name):
        raise RepositoryError(f"{name!r} is not a model name (letters, digits, '_', '-', '.')")
    folder = root / name
    if not folder.is_dir():
        raise RepositoryError(f"no model {name!r} in the repository")
    config = _config(folder)
    model_file = str(config.get("default_model_filename", MODEL_FILE))
    if Path(model_file).name != model_file:
        raise RepositoryError(f"{name}: default_model_filename must be a file name")
    on_disk = {}
    for version in folder.iterdir():
        number = version_number(version.name)
        if number is not None and version.is_dir() and (version / model_file).is_file():
            path = version / model_file
            if not path.resolve().is_relative_to(folder.resolve()):
                raise RepositoryError(f"{name}: {path} links outside the model's folder")
            on_disk[number] = path
    policy = _policy(config, name)
    if not policy.select(set(on_disk)):
        raise RepositoryError(
            f"{name}: no version to serve (policy {policy.describe()}; on disk: "
            f"{sorted(on_disk) or 'none'}; each version is a numbered folder with {model_file})"
        )
    return ModelFolder(name, folder, policy, model_file, on_disk, _accept_drift(config, name))


def version_number(text: str) -> int | None:
    """A version's number from its folder or request text: ASCII digits only (``str.isdigit``
    also takes '²', which ``int`` refuses)."""
    return int(text) if _VERSION.fullmatch(text) else None


def _config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return pbtxt.parse(path.read_text())
    except (pbtxt.PbtxtError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{folder.name}: {CONFIG_FILE}: {exc}") from None


def _policy(config: dict, name: str) -> VersionPolicy:
    policy = config.get("version_policy", {})
    if not isinstance(policy, dict) or len(policy) > 1:
        raise RepositoryError(f"{name}: version_policy must be one of latest, all, specific")
    if "all" in policy:
        return VersionPolicy("all")
    if "specific" in policy:
        specific = policy["specific"] if isinstance(policy["specific"], dict) else {}
        versions = pbtxt.as_list(specific.get("versions", []))
        if not versions or not all(isinstance(v, int) and v >= 0 for v in versions):
            raise RepositoryError(f"{name}: version_policy specific needs versions")
        return VersionPolicy("specific", versions=tuple(versions))
    latest = policy.get("latest") or {}
    count = latest.get("num_versions", 1) if isinstance(latest, dict) else None
    if not isinstance(count, int) or count < 1:
        raise RepositoryError(f"{name}: version_policy latest needs num_versions >= 1")
    return VersionPolicy("latest", count=count)


def _accept_drift(config: dict, name: str) -> bool:
    """Triton's ``parameters`` map: ``{ key: "ln2d.accept_drift" value: { string_value:
    "true" } }``."""
    for parameter in pbtxt.as_list(config.get("parameters", [])):
        if isinstance(parameter, dict) and parameter.get("key") == ACCEPT_DRIFT:
            value = parameter.get("value")
            text = value.get("string_value") if isinstance(value, dict) else None
            if text not in ("true", "false"):
                raise RepositoryError(f'{name}: {ACCEPT_DRIFT} is string_value "true" or "false"')
            return text == "true"
    return False


def _stat(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, -1)
    return (stat.st_mtime_ns, stat.st_size)
