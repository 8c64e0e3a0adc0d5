"""Faults for the I/O tests (shards, training, export, publish): tmpfs mounts (read-only,
tiny), dead writers' temporary names."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, options)``: a tmpfs under ``tmp_path`` (skips where none can be
    mounted, e.g. without root), unmounted after the test."""
    mounted = []

    def mount(name, options):
        point = tmp_path / name
        point.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                               capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot mount a tmpfs here: {e}")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        unmount(point)


def unmount(point):
    """Unmounts a test's tmpfs; lazily where a file on it is still open (a child process
    not yet reaped), so no mount outlives the test."""
    done = subprocess.run(["umount", str(point)], capture_output=True, timeout=60)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=60)


def dead_token():
    """The 8 characters io_utils puts in a temporary name, for a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid, digits = int(proc.stdout), ""
    for _ in range(5):
        pid, r = divmod(pid, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
    return f"p{digits}zz"


def snapshot(folder):
    """``{relative path: bytes}`` of every file under ``folder``."""
    out = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out
