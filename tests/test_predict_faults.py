"""`keras-dpn predict` and PoseEstimator on bad input and faults (issue 19): thresholds,
16-bit files, damaged .keras files and videos, outputs that cannot be written, and the
leftovers of a killed video run."""

import errno
import os
import re
import signal
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

import deploy_helpers as dh
import synthetic_pose as sp
from keras_dpn.cli import main as cli
from keras_dpn.inference.estimator import PoseEstimator, read_image

IMAGE = os.path.join(dh.ROOT, "sample_data", "coco", "images", "000000000785.jpg")
# FFmpeg's own lines: "[mpeg4 @ 0x55...] ..." (default) or "[OPENCV:FFMPEG:16] ..." (logged
# through OpenCV when OPENCV_FFMPEG_LOGLEVEL is set).
FFMPEG_LINE = re.compile(r"^\[(OPENCV:FFMPEG|[\w,]+ @ 0x[0-9a-f]+)")


@pytest.fixture(scope="module")
def dots_keras(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "dots.keras"
    sp.dot_model().save(path)
    return str(path)


def _run_cli(capsys, *argv):
    rc = cli.main(["predict", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ---------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["--box-threshold", "--score-threshold"])
@pytest.mark.parametrize("value", ["nan", "-0.1", "1.5", "inf", "abc"])
def test_thresholds_must_be_in_0_1(option, value, capsys, tmp_path):
    # NaN used to keep every detection (--box-threshold) or draw nothing (--score-threshold).
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", IMAGE, "--model", "m.keras", "--out", str(tmp_path / "o.png"),
                  option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be a number in [0, 1]. Received: '{value}'" in err
    assert os.listdir(tmp_path) == []


def test_library_score_thresholds_are_checked(tmp_path):
    from keras_dpn.inference.detectors import DetectionFile
    for value in (float("nan"), -1, 2.0, "x"):
        with pytest.raises(ValueError, match=r"`score_threshold` must be a number in \[0, 1\]"):
            DetectionFile([], value)
    assert DetectionFile([], 1.0).score_threshold == 1.0


def test_boxes_file_json_error_names_file_line_and_column(tmp_path, capsys):
    broken = tmp_path / "boxes.json"
    broken.write_text('[{"image_id": 785,\n  "bbox": [1, 2, 3, 4],, }]')
    rc, _, err = _run_cli(capsys, IMAGE, "--model", "missing.keras", "--out",
                          str(tmp_path / "o.png"), "--boxes", str(broken))
    assert rc == 2 and err.count("\n") == 1, err
    assert re.search(r"error: Could not read a COCO detection-results JSON file\. "
                     r"Received: file='.*boxes\.json' \(.*line 2 column 24", err), err


# ---------------------------------------------------------------------------
# 16-bit image files
# ---------------------------------------------------------------------------

def test_16bit_png_is_converted_with_a_note(dots_keras, tmp_path, capsys):
    """docs/input-checks.md: 16-bit images are never rescaled silently. A 16-bit PNG *file* is
    converted by its top 8 bits with a note (OpenCV used to do it without one);
    a 16-bit *array* stays an error (its range is unknown)."""
    import cv2
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (64, 48, 3), dtype=np.uint16)
    path = tmp_path / "deep_1.png"
    assert cv2.imwrite(str(path), deep)
    with pytest.warns(UserWarning, match=r"deep_1\.png is a 16-bit image: converted to 8 bits"):
        rgb = read_image(str(path))
    np.testing.assert_array_equal(rgb, (deep[..., ::-1] >> 8).astype(np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an 8-bit file: no note
        read_image(IMAGE)
    with pytest.raises(ValueError, match="16-bit images are not rescaled"):
        read_image(deep)
    rc, out, err = _run_cli(capsys, str(path), "--model", dots_keras,
                            "--out", str(tmp_path / "pose.png"))
    assert rc == 0, err
    assert re.search(r"^keras-dpn predict: warning: .*deep_1\.png is a 16-bit image: "
                     r"converted to 8 bits", err, re.M), err
    assert (tmp_path / "pose.png").exists()


# ---------------------------------------------------------------------------
# Damaged .keras files
# ---------------------------------------------------------------------------

def test_damaged_keras_file_is_named_not_missing(dots_keras, tmp_path, capsys):
    # Keras says "File not found" for a file that is there but damaged.
    import zipfile
    data = open(dots_keras, "rb").read()
    cases = {"truncated.keras": data[:len(data) // 2], "text.keras": b"hello\n"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("notes.txt", "no model here")
    expected = {"truncated.keras": "not a zip archive", "text.keras": "not a zip archive",
                "other.keras": "the archive holds no config.json"}
    for name, what in expected.items():
        path = str(tmp_path / name)
        with pytest.raises(ValueError, match=rf"^Not a valid \.keras file: {what}.*"
                                             rf"Received: model_or_path='.*{name}'$") as info:
            PoseEstimator(path)
        assert "File not found" not in str(info.value)
        rc, _, err = _run_cli(capsys, IMAGE, "--model", path, "--out", str(tmp_path / "o.png"))
        assert rc == 2 and err.count("\n") <= 2, err  # the whole-image warning, the error
        assert f"error: Not a valid .keras file: {what}" in err and name in err
        assert "File not found" not in err
    assert not (tmp_path / "o.png").exists()


# ---------------------------------------------------------------------------
# Outputs that cannot be written
# ---------------------------------------------------------------------------

def test_output_in_the_way_or_read_only(tmp_path, capsys, monkeypatch):
    """One line naming the path, before the model is loaded (the model path is bogus:
    reaching it would be another error)."""
    (tmp_path / "file").write_text("keep")
    rc, _, err = _run_cli(capsys, IMAGE, "--model", "missing.keras",
                          "--out", str(tmp_path / "file" / "sub" / "o.png"))
    assert rc == 2 and err.count("\n") == 1, err
    assert re.search(r"error: Cannot write into .*file/sub: .*file is a file, not a folder\. "
                     r"Received: --out=", err), err
    (tmp_path / "folder.png").mkdir()
    rc, _, err = _run_cli(capsys, IMAGE, "--model", "missing.keras",
                          "--out", str(tmp_path / "folder.png"), "--overwrite")
    assert rc == 2 and "--out is a folder; give a file name" in err and "folder.png" in err
    video = os.path.join(dh.ROOT, "sample_data", "video", "basketball_426x240_40frames.mp4")
    rc, _, err = _run_cli(capsys, video, "--model", "missing.keras", "--out",
                          str(tmp_path / "v.mp4"), "--jsonl", str(tmp_path / "file" / "v.jsonl"))
    assert rc == 2 and re.search(r"Cannot write into .*file: .* Received: --jsonl=", err), err

    # As root a chmod'ed folder stays writable: fail new files as a read-only disk does.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    rc, _, err = _run_cli(capsys, IMAGE, "--model", "missing.keras",
                          "--out", str(tmp_path / "ro" / "o.png"))
    assert rc == 2 and err.count("\n") == 1, err
    assert re.search(r"Cannot write into .*/ro: .* refuses new files \(Read-only file system\)"
                     r"\. Received: --out=", err), err
    assert sorted(os.listdir(tmp_path)) == ["file", "folder.png"]


def test_write_failure_after_inference_is_one_line(dots_keras, tmp_path, capsys, monkeypatch):
    import keras_dpn.core.io_utils as io_utils

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_utils.os, "replace", full_disk)
    rc, _, err = _run_cli(capsys, IMAGE, "--model", dots_keras, "--out", str(tmp_path / "o.png"))
    assert rc == 2 and re.search(r"error: Could not write the image \(No space left on device\)"
                                 r"\. Received: --out='.*o\.png'$", err, re.M), err
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Videos: FFmpeg's log, leftovers of a killed run
# ---------------------------------------------------------------------------

def _damaged_mp4(folder):
    """An mp4 whose second half is overwritten with noise: it opens, then FFmpeg
    complains about damaged frames and the video ends early."""
    import cv2
    path = os.path.join(folder, "damaged.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    rng = np.random.default_rng(0)
    for _ in range(60):
        writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(open(path, "rb").read())
    noise = np.random.default_rng(1)
    for k in range(len(data) // 2, len(data) - 2000, 37):
        data[k] = int(noise.integers(0, 256))
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


def test_damaged_video_prints_no_ffmpeg_log(dots_keras, tmp_path):
    """A child `keras-dpn predict` on a damaged video: the one-line error and no
    FFmpeg lines (there were 3,433 on a longer file)."""
    video = _damaged_mp4(str(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    # The control: plain OpenCV prints FFmpeg's complaints about this file.
    control = subprocess.run(
        [sys.executable, "-c", "import cv2, sys; c = cv2.VideoCapture(sys.argv[1])\n"
                               "while c.read()[0]: pass", video],
        capture_output=True, text=True, env=env, timeout=120)
    assert sum(bool(FFMPEG_LINE.match(line)) for line in control.stderr.splitlines()) >= 1
    proc = subprocess.run(
        [sys.executable, "-m", "keras_dpn.cli.main", "predict", video, "--model", dots_keras,
         "--out", str(tmp_path / "o.mp4")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert [line for line in lines if FFMPEG_LINE.match(line)] == []
    assert re.match(r"keras-dpn predict: error: The video ended early: frame \d+ of the 60 .*"
                    r"damaged\.mp4", lines[-1]), lines[-5:]
    assert sorted(os.listdir(tmp_path)) == ["damaged.mp4"]


_KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("io_utils", sys.argv[1])
io_utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io_utils)
with io_utils.atomic_path(sys.argv[2]) as video, io_utils.atomic_file(sys.argv[3], "w") as f:
    open(video, "wb").write(b"half a video")
    f.write('{"frame": 0}\\n')
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def test_rerun_removes_leftovers_of_a_killed_video_run(tmp_path):
    """kill -9 during a video predict leaves hidden .partial-* files; the next run
    of the same target removes them (another target's stay)."""
    import keras_dpn.core.io_utils as io_utils
    from keras_dpn.inference.video import predict_video
    out, jsonl = tmp_path / "out" / "pose.mp4", tmp_path / "out" / "pose.jsonl"
    out.parent.mkdir()
    other = tmp_path / "out" / ".other.partial-abcd1234.mp4"
    other.write_bytes(b"not ours")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, io_utils.__file__,
                              str(out), str(jsonl)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    left = sorted(n for n in os.listdir(out.parent) if n != other.name)
    assert len(left) == 2 and all(".partial-" in n for n in left), left
    frames, truth = sp.moving_people(6, [dict(start=(60, 80), velocity=(4, 0), height=100)],
                                     shape=(240, 320))
    import cv2
    source = str(tmp_path / "walk.mkv")
    writer = cv2.VideoWriter(source, cv2.VideoWriter_fourcc(*"FFV1"), 30.0, (320, 240))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    boxes = [[sp.person_box(j).tolist() for j in truth[t].values()] for t in range(6)]

    def detector(image, calls=[]):  # noqa: B006 - the frame counter
        calls.append(1)
        return np.asarray(boxes[len(calls) - 1]), np.ones(1)

    summary = predict_video(sp.DotPose(), source, str(out), str(jsonl), detector=detector,
                            detect_every=1, progress=False)
    assert summary["frames"] == 6
    assert sorted(os.listdir(out.parent)) == sorted([other.name, "pose.jsonl", "pose.mp4"])
