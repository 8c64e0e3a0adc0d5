"""JAX ``--strategy mirrored`` (``keras.distribution.DataParallel``) on two devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` gives any CPU two JAX
devices; the same few training steps at the same global batch, run once on one
device and once split over two, must give the same losses and weights (one
SPMD program: BatchNorm statistics and the loss are over the global batch).
A second device that got its own batch size, scaled its loss or kept its own
BatchNorm statistics would not. Each run is a child process (Keras picks its
backend at import).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import backend_checks as checks

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_parallel_child.py")


def test_two_device_data_parallel_matches_one_device(tmp_path):
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=checks.REPO)
    env.pop("XLA_FLAGS", None)
    runs = {}
    for devices in (1, 2):
        out = tmp_path / str(devices)
        out.mkdir()
        child_env = dict(env)
        if devices == 2:
            child_env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        # Both at once: each child is mostly single-threaded compilation.
        runs[devices] = (out, subprocess.Popen([sys.executable, CHILD, str(out)], env=child_env,
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True))
    results, weights = {}, {}
    for devices, (out, proc) in runs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        results[devices] = json.loads((out / "result.json").read_text())
        with np.load(out / "weights.npz") as f:
            weights[devices] = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    one, two = results[1], results[2]
    assert (one["devices"], one["replicas"]) == (1, 1)
    assert (two["devices"], two["replicas"], two["mesh"]) == (2, 2, "(2,)")
    assert len(one["loss"]) == len(two["loss"]) == 3
    assert len(set(one["loss"])) == 3  # the steps trained: every step's loss differs
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert len(weights[1]) == len(weights[2]) > 100
    for a, b in zip(weights[1], weights[2]):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max() + 1e-12))
