"""Reading a model repository folder: names, versions, the version policy, and the files a
load must never read (outside the repository)."""

from __future__ import annotations

import pytest

from ln2d.repository import RepositoryError, model_names, read_model_folder


def make_model(root, name, versions, config=""):
    folder = root / name
    folder.mkdir(parents=True)
    for version in versions:
        (folder / str(version)).mkdir()
        (folder / str(version) / "model.onnx").write_bytes(b"model %d" % version)
    if config:
        (folder / "config.pbtxt").write_text(config)
    return folder


def test_names_are_valid_folders_only(tmp_path):
    for name in ("b", "a.1", "with-dash"):
        make_model(tmp_path, name, [1])
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a file").write_text("")
    assert model_names(tmp_path) == ["a.1", "b", "with-dash"]


@pytest.mark.parametrize(
    ("config", "served"),
    [
        ("", [3]),  # Triton's default: the latest one
        ("version_policy: { latest { num_versions: 2 } }", [2, 3]),
        ("version_policy: { all {} }", [1, 2, 3]),
        ("version_policy: { specific { versions: [1, 3] } }", [1, 3]),
        ("version_policy { specific { versions: 2 } }", [2]),
    ],
)
def test_the_policy_picks_the_versions(tmp_path, config, served):
    make_model(tmp_path, "m", [1, 2, 3], config)
    (tmp_path / "m" / "4").mkdir()  # a version folder without its model file is not one
    make_model(tmp_path / "m", "²", [])  # a digit to str.isdigit, not to int()
    (tmp_path / "m" / "²" / "model.onnx").write_bytes(b"")
    folder = read_model_folder(tmp_path, "m")
    assert sorted(folder.on_disk) == [1, 2, 3]
    assert sorted(folder.selected) == served
    assert folder.selected[served[0]] == tmp_path / "m" / str(served[0]) / "model.onnx"


def test_labels_file_and_model_file_name(tmp_path):
    folder = make_model(tmp_path, "m", [], 'default_model_filename: "net.onnx"')
    (folder / "7").mkdir()
    (folder / "7" / "net.onnx").write_bytes(b"x")
    (folder / "labels.txt").write_text("cat\ndog\n\n")
    read = read_model_folder(tmp_path, "m")
    assert read.selected == {7: folder / "7" / "net.onnx"}
    assert read.labels() == ("cat", "dog")


def test_fingerprint_changes_with_any_file_a_load_reads(tmp_path):
    folder = make_model(tmp_path, "m", [1])
    before = read_model_folder(tmp_path, "m").fingerprint()
    assert read_model_folder(tmp_path, "m").fingerprint() == before
    (folder / "1" / "model.onnx").write_bytes(b"a new model, longer")
    changed = read_model_folder(tmp_path, "m").fingerprint()
    assert changed != before
    make_model(tmp_path / "m", "2", []).rmdir()  # an empty folder is not a version
    assert read_model_folder(tmp_path, "m").fingerprint() == changed
    (folder / "labels.txt").write_text("a\n")
    assert read_model_folder(tmp_path, "m").fingerprint() != changed


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("../m", "", "not a model name"),
        ("missing", "", "no model 'missing'"),
        ("m", "version_policy: { latest { num_versions: 0 } }", "num_versions >= 1"),
        ("m", "version_policy: { specific { versions: [9] } }", "no version to serve"),
        ("m", "version_policy: { all {} latest {} }", "one of latest, all, specific"),
        ("m", "version_policy: {", "config.pbtxt: the text ends"),
        ("m", 'default_model_filename: "../1/model.onnx"', "must be a file name"),
    ],
)
def test_a_folder_that_cannot_be_served_says_why(tmp_path, name, config, message):
    make_model(tmp_path, "m", [1], config)
    with pytest.raises(RepositoryError, match=message):
        read_model_folder(tmp_path, name)


def test_a_model_file_linking_outside_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(b"not yours")
    repo = tmp_path / "repo"
    folder = make_model(repo, "m", [])
    (folder / "1").mkdir()
    (folder / "1" / "model.onnx").symlink_to(outside)
    with pytest.raises(RepositoryError, match="links outside"):
        read_model_folder(repo, "m")
