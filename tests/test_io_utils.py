"""Atomic writes: all or nothing, with ordinary permissions."""

import os
import stat

import pytest

from keras_dpn.core import io_utils


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


# A writer in a child process that loads io_utils.py alone (no TensorFlow import: fast).
_WRITER = """
import importlib.util, os, signal, sys, time
spec = importlib.util.spec_from_file_location("io_utils", sys.argv[1])
io_utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io_utils)
target, how = sys.argv[2], sys.argv[3]
with (io_utils.atomic_directory(target) if how == "dir" else io_utils.atomic_path(target)) as tmp:
    if how == "dir":
        open(os.path.join(tmp, "half"), "w").write("half")
    print(tmp, flush=True)
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
"""


def _writer(target, how, then):
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, io_utils.__file__, str(target), how,
                             then], stdout=subprocess.PIPE, text=True)
    tmp = proc.stdout.readline().strip()
    assert os.path.exists(tmp), tmp
    return proc, tmp


@pytest.mark.parametrize("how,name", [("dir", "export"), ("file", "dpn.tar.gz")])
def test_rerun_removes_a_killed_writers_partial_not_a_live_ones(tmp_path, how, name):
    target = tmp_path / name
    killed, dead_tmp = _writer(target, how, "kill")
    assert killed.wait(timeout=60) == -9
    assert io_utils.partial_leftovers(target) == [dead_tmp]
    assert not io_utils.partial_owner_alive(dead_tmp)
    # A rerun removes what the killed writer left ...
    live, live_tmp = _writer(target, how, "sleep")
    try:
        assert io_utils.partial_leftovers(target) == [live_tmp]
        assert io_utils.partial_owner_alive(live_tmp)
        # ... but not what a writer that still runs has not finished.
        with (io_utils.atomic_directory(target) if how == "dir"
              else io_utils.atomic_path(target)) as tmp:
            if how == "file":
                open(tmp, "w").write("whole")
        assert io_utils.partial_leftovers(target) == [live_tmp]
    finally:
        live.kill()
        live.wait()
    with io_utils.atomic_directory(tmp_path / "other"):
        pass  # another target's write leaves the dead entry of this one alone
    assert os.path.exists(live_tmp)
    assert io_utils.remove_partial_leftovers(target) == [live_tmp]
    assert sorted(os.listdir(tmp_path)) == sorted([name, "other"])


def test_temporary_names_carry_the_writer_pid(tmp_path):
    with io_utils.atomic_path(tmp_path / "a.weights.h5") as tmp:
        token = os.path.basename(tmp).split(".partial-")[1][:8]
        assert tmp.endswith(".weights.h5") and token[0] == "p"
        assert int(token[1:6], 36) == os.getpid()
    # Names without an owner (keras-dpn 0.1) count as a dead writer's.
    assert not io_utils.partial_owner_alive(str(tmp_path / ".a.partial-ab_cd123.weights.h5"))
