"""Loading never runs code from a file; bad files give one readable error."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from ln2d.checkpoint import StateDictFlags, load_checkpoint
from ln2d.errors import UserError
from ln2d.model import SimpleLN_CNN


class _Payload:
    """Unpickling this runs os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    state = {"head.weight": torch.zeros(10, 8), "evil": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state))
    with pytest.raises(UserError, match=r"refusing to load .*evil\.pt.*not just tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is live: an unsafe load runs it. So the refusal above is what protected us.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_plain_state_dict_with_flags(tmp_path):
    model = SimpleLN_CNN(3, 4, (8, 16), "groupnorm").eval()
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    flags = StateDictFlags(norm="groupnorm", labels=("a", "b", "c", "d"), size=20)
    checkpoint = load_checkpoint(path, flags)
    assert checkpoint.config.widths == (8, 16) and checkpoint.config.num_classes == 4
    assert checkpoint.preprocessing.height == 20 and checkpoint.labels == ("a", "b", "c", "d")
    x = torch.randn(2, 3, 20, 20)
    torch.testing.assert_close(checkpoint.model()(x), model(x), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (None, "missing.safetensors", "does not exist"),
        (b"\x00" * 3, "short.safetensors", "not a readable safetensors"),
        (b"PK\x03\x04garbage", "broken.pt", "not a readable PyTorch state dict"),
    ],
)
def test_bad_files_give_readable_errors(tmp_path, content, name, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    whole, path = tmp_path / "whole.safetensors", tmp_path / "cut.safetensors"
    save_file(SimpleLN_CNN(1, 10, (8, 16)).state_dict(), str(whole))
    path.write_bytes(whole.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = tmp_path / "other.pt"
    state = SimpleLN_CNN(1, 10, (8, 16)).state_dict()
    state["features.1.1.weight"] = torch.ones(5)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"features.1.1.weight: checkpoint \(5,\) vs model \(16,\)"):
        load_checkpoint(path)


def test_wrong_norm_flag_is_reported(tmp_path):
    path = tmp_path / "bn.pt"
    torch.save(SimpleLN_CNN(1, 10, (8,), "batchnorm").state_dict(), path)
    with pytest.raises(UserError, match=r"unexpected features\.0\.1\.num_batches_tracked"):
        load_checkpoint(path, StateDictFlags(norm="layernorm2d"))
