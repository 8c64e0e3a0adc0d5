"""A non-editable install works without the checkout: int8 export with the default
calibration, and ``keras-dpn predict`` on the bundled photo.

The package is copied to a temporary folder and installed from there (pip
builds in the source tree), into a virtual environment that reuses this
interpreter's packages (``--system-site-packages``, ``--no-deps``,
``--no-build-isolation``: nothing is downloaded).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-4000:])
    return result.stdout


@pytest.mark.slow
def test_non_editable_install_exports_int8_and_predicts(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copytree(os.path.join(REPO, "keras_dpn"), source / "keras_dpn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    # No pip cache or version check: nothing written to or fetched for the home folder.
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
          "--no-cache-dir", "--disable-pip-version-check", source], tmp_path)
    shutil.rmtree(source)  # the installed copy must stand alone

    work = tmp_path / "work"
    work.mkdir()
    where = _run([python, "-c", "import keras_dpn.core.assets as a, keras_dpn; "
                  "print(keras_dpn.__file__); print(a.SAMPLE_IMAGE)"], work).split()
    assert all(path.startswith(str(venv)) for path in where), where
    _run([bin_dir / "keras-dpn", "export", "DPN1_32", "--input-size", "128", "96",
          "--formats", "tflite_int8", "--name", "dpn1", "--out-dir", work], work)
    folder = work / "dpn1"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["tflite"]["model_int8.tflite"]["inputs"][0]["dtype"] == "int8"
    _run([bin_dir / "keras-dpn", "predict", where[1], "--model", folder / "model_int8.tflite",
          "--out", work / "pose.png"], work)
    assert (work / "pose.png").stat().st_size > 10_000
    assert sorted(os.listdir(work)) == ["dpn1", "pose.png"]
