"""``ln2d parity MODEL.onnx`` with no checkpoint: the model's own parity record, replayed on this
machine's providers (``ln2d.parity_record``). Torch-free."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ln2d import machine
from ln2d.constants import PROVIDERS
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.onnx_io import read_graph
from ln2d.metadata import MetadataError
from ln2d.parity_record import ParityRecord, Replay, replay
from ln2d.runtime import SessionSettings, available_providers, open_session


@dataclass
class ReplayReport:
    model: str
    record: ParityRecord
    precision: str
    replays: dict[str, Replay] = field(default_factory=dict)  # by provider
    skipped: dict[str, str] = field(default_factory=dict)  # provider -> why
    requested: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.replays) and all(
            p in self.replays and self.replays[p].passed for p in self.requested
        )

    def table(self) -> str:
        record = self.record
        made = record.recorded_on
        there = "within" if record.ratio is None else f"{record.ratio:.2f}x"
        rows = [
            f"parity record: {self.model} ({self.precision}): {record.samples} inputs against "
            f"{record.reference}'s outputs, {record.tolerance}; recorded on {made['machine']} "
            f"{' '.join(made['cpu_features'])}, onnxruntime {made['onnxruntime']} "
            f"({there} the tolerance there)",
            "| provider | status | max abs | x tolerance | what differs from the recording |",
            "|---|---|---|---|---|",
        ]
        for provider, result in self.replays.items():
            status = "pass" if result.passed else "FAIL"
            moved = machine.difference(made, result.machine) or "nothing"
            rows.append(
                f"| {provider} | {status} | {result.max_abs:.3g} | {result.ratio:.2f} | {moved} |"
            )
        rows += [f"| {provider} | {why} | | | |" for provider, why in self.skipped.items()]
        return "\n".join(rows)

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "precision": self.precision,
                "passed": self.passed,
                "replays": {p: r.to_json() for p, r in self.replays.items()},
                "skipped": self.skipped,
            },
            indent=2,
        )


def replay_file(path: Path, providers: list[str], requested: list[str]) -> ReplayReport:
    """Replay ``path``'s record on each of ``providers`` that this machine has."""
    try:
        meta = metadata.read(read_graph(path))
    except MetadataError as exc:
        raise UserError(f"{path}: {exc}") from None
    if meta.parity_record is None:
        raise UserError(
            f"{path} carries no parity record (models written before ln2d recorded one, or "
            "by another tool): compare it with its checkpoint, ln2d parity CKPT MODEL.onnx"
        )
    report = ReplayReport(str(path), meta.parity_record, meta.precision_name, requested=requested)
    for provider in providers:
        if provider not in available_providers():
            report.skipped[provider] = f"skipped: no {PROVIDERS[provider]} here"
            continue
        try:
            session = open_session(path, SessionSettings(provider))
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            raise UserError(f"cannot load {path}: {' '.join(str(exc).split())}") from None
        run = lambda feeds, session=session: session.run(None, dict(feeds))  # noqa: E731
        report.replays[provider] = replay(meta.parity_record, run, provider)
    return report
