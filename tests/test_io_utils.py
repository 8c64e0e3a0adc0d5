"""Atomic writes: all or nothing, with ordinary permissions."""

import os
import stat

import pytest

from keras_dpn import io_utils


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_publishes_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with io_utils.atomic_file(tmp_path / "a.txt", "w") as f:
            f.write("x")
        with io_utils.atomic_path(tmp_path / "b.bin") as tmp:
            open(tmp, "wb").write(b"y")
        with io_utils.atomic_directory(tmp_path / "d") as tmp:
            open(os.path.join(tmp, "f"), "w").write("z")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "b.bin") == 0o644
    assert _mode(tmp_path / "d") == 0o755


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with io_utils.atomic_file(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_existing_directory_refused_then_replaced_whole(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        with io_utils.atomic_directory(out):
            pass
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(out, overwrite=True) as tmp:
            open(os.path.join(tmp, "new.txt"), "w").write("half")
            raise RuntimeError("killed")
    assert sorted(os.listdir(out)) == ["old.txt"]
    with io_utils.atomic_directory(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").write("new")
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["export"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_directory_onto_a_regular_file_fails_and_leaves_nothing(tmp_path, overwrite):
    # Found by exporting onto a file: the file used to be renamed to a hidden
    # `.NAME.old-*` copy and left there.
    target = tmp_path / "export"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match="not a folder.*Received: "):
        with io_utils.atomic_directory(target, overwrite=overwrite):
            pass
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert target.read_text() == "not a folder"
    # A file where a parent folder should be: a one-line ValueError too.
    with pytest.raises(ValueError, match="a file stands in its path"):
        with io_utils.atomic_directory(target / "sub" / "x"):
            pass
    assert sorted(os.listdir(tmp_path)) == ["export"]
