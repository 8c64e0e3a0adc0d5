"""Video: sources, tracked and smoothed output files, the CLI end to end, bad input."""

import json
import os

import numpy as np
import pytest

import deploy_helpers as dh
import synthetic_pose as sp
from keras_dpn.cli import main as cli
from keras_dpn.inference.video import VideoSource, predict_video

SAMPLE_VIDEO = os.path.join(dh.ROOT, "sample_data", "video", "basketball_426x240_40frames.mp4")
SHAPE = (360, 320)


def _write_video(path, frames, fps=30.0, fourcc="FFV1"):
    import cv2
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))
    writer.release()
    return str(path)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _count_frames(path):
    import cv2
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.read()[0]:
        n += 1
    shape = (capture.get(cv2.CAP_PROP_FRAME_HEIGHT), capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    capture.release()
    return n, shape


def _truncated(tmp_path, frames=20):
    path = _write_video(tmp_path / "full.avi", [np.random.default_rng(i).integers(
        0, 255, (48, 64, 3), np.uint8) for i in range(frames)], fourcc="MJPG")
    data = open(path, "rb").read()
    os.remove(path)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    return str(cut)


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """A lossless 30-frame video of two painted people walking towards each
    other in two rows, its ground truth (top person first) and a COCO
    detection file with both boxes on every frame (image_id = frame index)."""
    folder = tmp_path_factory.mktemp("two_people")
    tracks = [dict(start=(60, 80), velocity=(4, 0), height=100),
              dict(start=(260, 280), velocity=(-4, 0), height=100)]
    frames, truth = sp.moving_people(30, tracks, shape=SHAPE)
    video = _write_video(folder / "two_people.mkv", frames)
    detections = [dict(image_id=t, category_id=1, bbox=sp.person_box(j).tolist(), score=0.9)
                  for t in range(30) for j in truth[t].values()]
    dets = folder / "detections.json"
    dets.write_text(json.dumps(detections))
    return video, truth, str(dets)


def _check_tracks(records, truth, tolerance, body=slice(0, 17)):
    """Top person = id 1, bottom = id 2 on every frame, keypoints near the truth."""
    for r in records:
        people = {p["id"]: np.asarray(p["keypoints"]) for p in r["people"]}
        assert sorted(people) == [1, 2], r["frame"]
        for i, track_id in ((0, 1), (1, 2)):
            error = np.linalg.norm(people[track_id][body, :2] - truth[r["frame"]][i][body], axis=1)
            assert error.max() < tolerance, (r["frame"], track_id, error.max())


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

def test_video_source_reads_and_checks(two_people, tmp_path):
    video, _, _ = two_people
    with VideoSource(video) as source:
        assert source.fps == pytest.approx(30.0) and source.frame_count == 30
        frames = list(source.frames())
    assert len(frames) == 30 and frames[0][2].shape == SHAPE + (3,)
    assert frames[3][1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="Video file not found"):
        VideoSource(str(tmp_path / "missing.mp4"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00 not a video at all" * 100)
    with pytest.raises(ValueError, match="Could not open the video.*garbage.mp4"):
        VideoSource(str(garbage))
    cut = _truncated(tmp_path)
    with VideoSource(cut) as source:
        with pytest.raises(ValueError, match=r"ended early: frame \d+ of the 20.*cut.avi"):
            list(source.frames())
    with VideoSource(cut) as source:
        assert len(list(source.frames(max_frames=2))) == 2  # stopping early is no error
    with pytest.raises(ValueError, match="Could not open the camera"):
        VideoSource(7)


# ---------------------------------------------------------------------------
# predict_video with a numpy pose function
# ---------------------------------------------------------------------------

def test_predict_video_tracks_and_writes(two_people, tmp_path):
    video, truth, dets = two_people
    out, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    summary = predict_video(sp.DotPose(), video, str(out), str(jsonl), detections=dets,
                            detect_every=10, progress=False)
    assert summary["frames"] == 30 and summary["ids"] == [1, 2]
    assert summary["detector_calls"] == 3  # frames 0, 10, 20
    records = _read_jsonl(jsonl)
    assert [r["frame"] for r in records] == list(range(30))
    _check_tracks(records, truth, tolerance=1.0)
    assert _count_frames(out) == (30, SHAPE)
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "out.mp4"]  # no temporary files
    # Smoothed: the same ids, and the lag of 4 px/frame (120 px/s) stays within
    # the filter's bounds: v / (2 pi min_cutoff) at any time (the speed estimate
    # starts at 0), and under size / (2 pi beta) once the speed estimate settles.
    smoothed = tmp_path / "smoothed.jsonl"
    predict_video(sp.DotPose(), video, None, str(smoothed), detections=dets, smoothing=True,
                  progress=False)
    smooth = _read_jsonl(smoothed)
    _check_tracks(smooth, truth, tolerance=120 / (2 * np.pi * 1.0))
    size = 121  # the crop box: joints (93 px tall) plus 2 x 15% margins
    _check_tracks(smooth[20:], truth, tolerance=size / (2 * np.pi * 5.0))
    assert smooth[20]["people"][0]["keypoints"] != records[20]["people"][0]["keypoints"]


def test_outputs_appear_only_when_complete(two_people, tmp_path):
    """During the run only hidden temporary files exist (a kill leaves nothing
    complete-looking); an error or Ctrl-C removes them too."""
    video, _, dets = two_people
    out, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    seen = []

    class Watcher(sp.DotPose):
        def predict(self, image, boxes, box_scores=None):
            seen.append(sorted(os.listdir(tmp_path)))
            if len(seen) == 5 and self.interrupt:
                raise KeyboardInterrupt
            return super().predict(image, boxes)

    watcher = Watcher()
    watcher.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        predict_video(watcher, video, str(out), str(jsonl), detections=dets, progress=False)
    assert len(seen) == 5 and all(len(names) == 2 and all(n.startswith(".out.partial-")
                                                          for n in names) for names in seen)
    assert os.listdir(tmp_path) == []
    # A truncated video: the error names it, nothing is left.
    with pytest.raises(ValueError, match="ended early.*cut.avi"), \
            pytest.warns(UserWarning, match="whole image"):
        predict_video(sp.DotPose(), _truncated(tmp_path), str(out), str(jsonl), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["cut.avi"]
    # A detector that breaks on its second call (frame 5).
    answers = iter([(np.array([[50, 20, 60, 120.0]]), np.array([0.9])),
                    (np.array([[50, 20, np.inf, 120.0]]), np.array([0.9]))])

    def flaky(image):
        return next(answers)

    with pytest.raises(ValueError, match=r"detector 'flaky'.*NaN or infinite"):
        predict_video(sp.DotPose(), video, str(out), str(jsonl), detector=flaky,
                      detect_every=5, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["cut.avi"]
    # An existing output is refused before anything is read.
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="out.mp4"):
        predict_video(sp.DotPose(), video, str(out), str(jsonl), progress=False)
    assert out.read_bytes() == b"keep me"


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

def test_cli_video_with_a_real_dot_model(two_people, tmp_path, capsys):
    """keras-dpn predict on the synthetic video, through a .keras model that finds
    the painted joints: ids follow the two people, keypoints follow the joints."""
    video, truth, dets = two_people
    model = tmp_path / "dots.keras"
    sp.dot_model().save(model)
    out = tmp_path / "pose.mp4"
    rc = cli.main(["predict", video, "--model", str(model), "--out", str(out), "--boxes", dets,
                   "--detect-every", "10", "--smooth"])
    assert rc == 0, capsys.readouterr().err
    assert "detector run on 3 frame(s)" in capsys.readouterr().out
    records = _read_jsonl(tmp_path / "pose.jsonl")
    assert [r["frame"] for r in records] == list(range(30))
    # Heatmaps have a 4x stride (~3 px of decoding error), plus the smoothing lag.
    _check_tracks(records, truth, tolerance=10.0, body=slice(5, 17))
    assert _count_frames(out) == (30, SHAPE)


def test_cli_sample_video_end_to_end(exported, tmp_path, capsys):
    _, folder, _ = exported
    out = tmp_path / "basketball_pose.mp4"
    rc = cli.main(["predict", SAMPLE_VIDEO, "--model", os.path.join(folder, "model_fp32.tflite"),
                   "--out", str(out), "--smooth", "--detect-every", "5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "whole image is used as one person box" in captured.err
    assert _count_frames(out) == (40, (240, 426))
    assert "detector run on 0 frame(s)" in captured.out
    records = _read_jsonl(tmp_path / "basketball_pose.jsonl")
    assert [r["frame"] for r in records] == list(range(40))
    np.testing.assert_allclose([r["time"] for r in records], np.arange(40) / 29.97, atol=1e-3)
    # Random weights: what is found is meaningless, but it is tracked and written
    # in full; the first crop (nobody tracked, no detector) is the whole frame.
    assert any(r["people"] for r in records)
    first = next(r for r in records if r["people"])
    np.testing.assert_allclose(first["people"][0]["box"], [0, 0, 426, 240])
    for r in records:
        for p in r["people"]:
            assert isinstance(p["id"], int) and p["id"] >= 1
            assert np.asarray(p["keypoints"]).shape == (17, 3) and len(p["box"]) == 4
            assert np.isfinite(p["keypoints"]).all()


def test_cli_video_bad_input(exported, tmp_path, capsys):
    _, folder, _ = exported
    model = os.path.join(folder, "model_fp32.tflite")
    out = str(tmp_path / "o.mp4")

    def run(*args):
        rc = cli.main(["predict", *args, "--model", model, "--out", out])
        return rc, capsys.readouterr().err

    rc, err = run("--source", "7")
    assert rc == 2 and "Could not open the camera" in err
    rc, err = run(SAMPLE_VIDEO, "--source", "0")
    assert rc == 2 and "not both" in err
    rc, err = run(_truncated(tmp_path))
    assert rc == 2 and "ended early" in err and "cut.avi" in err
    rc, err = run(SAMPLE_VIDEO, "--beta", "2")
    assert rc == 2 and "need --smooth" in err
    rc, err = run(SAMPLE_VIDEO, "--detect-every", "0")
    assert rc == 2 and "--detect-every" in err
    rc, err = run(SAMPLE_VIDEO, "--detector", model)
    assert rc == 2 and "detector" in err
    assert sorted(os.listdir(tmp_path)) == ["cut.avi"]
    # An image input refuses the video-only options.
    image = os.path.join(dh.ROOT, "sample_data", "coco", "images", "000000000785.jpg")
    rc = cli.main(["predict", image, "--model", model, "--out", str(tmp_path / "o.png"),
                   "--smooth"])
    assert rc == 2 and "apply to videos" in capsys.readouterr().err
