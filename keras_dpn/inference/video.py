"""Pose on a video file or a webcam: tracked ids, smoothing, drawn video, JSON lines.

:func:`predict_video` reads frames with OpenCV, follows every person with a
:class:`keras_dpn.inference.tracking.PoseTracker` (ids, crops from the previous frame's
keypoints, a detector every ``detect_every`` frames, optional One-Euro
smoothing) and writes

* the drawn video (``.mp4``): skeletons, crop boxes and ``id N`` labels;
* a JSON-lines file, one line per frame::

    {"frame": 0, "time": 0.0, "people": [{"id": 1, "score": 0.81,
     "box": [x, y, w, h], "keypoints": [[x, y, score], ...]}]}

  (keypoints in the keypoint set's order, image pixels; smoothed when
  smoothing is on; ``box`` is the crop box of that frame).

Both files are written under temporary names and renamed at the end: a run
that fails (a video that cannot be opened or ends early, a broken detector)
or is killed leaves neither. A webcam recording ends at ``max_frames`` or on
Ctrl-C, which keeps what was recorded.

Example, on the test suite's 5-frame clip with an untrained tiny model and a stand-in
detector (one box, the left half of the frame); the call is the same with an exported
file (``PoseEstimator("saved_models/dpn4_32/model_fp32.tflite")``) and a detection
model (``detector="person_detector.onnx"``):

>>> import os, tempfile, numpy as np, keras_dpn
>>> est = keras_dpn.PoseEstimator(keras_dpn.DPN1_32(input_shape=(64, 48, 3)))
>>> def left_half(image):  # image -> (boxes xywh (N, 4), scores (N,))
...     return np.array([[0, 0, image.shape[1] / 2, image.shape[0]]]), np.array([0.9])
>>> with tempfile.TemporaryDirectory() as d:
...     summary = predict_video(est, "tests/data/video/street_5frames.mp4",
...                             os.path.join(d, "pose.mp4"), os.path.join(d, "pose.jsonl"),
...                             detector=left_half, smoothing=True, progress=False,
...                             keypoint_threshold=0)  # an untrained model: every joint counts
>>> summary["frames"], summary["ids"], summary["detector_calls"]
(5, [1], 1)
"""

import contextlib
import json
import os
import time
import warnings

import numpy as np

from keras_dpn.core import io_utils
from keras_dpn.inference.detectors import DetectionFile, check_detections, get_detector
from keras_dpn.inference.tracking import PoseTracker

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# Containers whose frame count is exact (stored per frame), not duration x fps.
_EXACT_COUNT_SUFFIXES = (".mp4", ".mov")


class VideoSource:
    """Frames of a video file or a camera, as RGB uint8 arrays.

    Args:
        source: a video file path, or a camera index (int, or a string of
            digits such as ``"0"``).

    Raises:
        ValueError: the file is missing or cannot be opened, or the camera
            cannot be opened; while iterating, a file that ends before the
            frame count its header declares.

    FFmpeg's own log is silenced (``OPENCV_FFMPEG_LOGLEVEL=-8`` unless that
    variable is set already; it takes effect if no video was opened in the
    process before): a damaged file printed thousands of decoder lines before
    the one-line error.
    """

    def __init__(self, source):
        # Read by OpenCV when its FFmpeg backend starts (the first capture).
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        import cv2
        self.live = isinstance(source, int) or (isinstance(source, str) and source.isdigit())
        if self.live:
            self.name = f"camera {int(source)}"
            self._capture = cv2.VideoCapture(int(source))
            if not self._capture.isOpened():
                raise ValueError(f"Could not open the camera (none at that index, or OpenCV "
                                 f"built without camera support). Received: source={source!r}")
        else:
            self.name = os.fspath(source)
            if not os.path.isfile(self.name):
                raise ValueError(f"Video file not found. Received: source={self.name!r}")
            self._capture = cv2.VideoCapture(self.name)
            if not self._capture.isOpened():
                raise ValueError(f"Could not open the video (not a video, truncated, or a codec "
                                 f"OpenCV cannot read). Received: source={self.name!r}")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if np.isfinite(fps) and 0 < fps < 1000 else 30.0
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not self.live and np.isfinite(count) and count > 0 \
            else None

    def frames(self, max_frames=None):
        """Yields ``(index, seconds, rgb)``; checks that a file is read to its end."""
        start = time.monotonic()
        index = 0
        while max_frames is None or index < max_frames:
            ok, bgr = self._capture.read()
            if not ok:
                break
            t = time.monotonic() - start if self.live else index / self.fps
            yield index, t, np.ascontiguousarray(bgr[..., ::-1])
            index += 1
        else:
            return  # stopped at max_frames, not by the end of the file
        if index == 0:
            raise ValueError(f"The video has no readable frames. Received: source={self.name!r}")
        if self.frame_count is not None:
            exact = os.path.splitext(self.name)[1].lower() in _EXACT_COUNT_SUFFIXES
            # Other containers estimate the count from the duration: allow one frame.
            if index < self.frame_count - (0 if exact else 1):
                raise ValueError(
                    f"The video ended early: frame {index} of the {self.frame_count} its header "
                    f"declares could not be read (a truncated or damaged file). "
                    f"Received: source={self.name!r}")

    def close(self):
        self._capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jsonl_record(index, t, people):
    def r(values, digits):
        return np.round(np.asarray(values, np.float64), digits).tolist()
    return json.dumps(dict(frame=index, time=round(t, 4), people=[
        dict(id=p["id"], score=round(float(p["score"]), 4), box=r(p["box"], 2),
             keypoints=[[round(x, 2), round(y, 2), round(s, 4)] for x, y, s in
                        np.asarray(p["keypoints"], np.float64).tolist()])
        for p in people]))


def _check_outputs(paths, overwrite):
    paths = [os.path.abspath(p) for p in paths if p]
    if len(set(paths)) != len(paths):
        raise ValueError(f"The video and JSON-lines outputs must differ. Received: {paths}")
    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"Output already exists: {path}. "
                                  "Pass overwrite=True (--overwrite) to replace it.")


def predict_video(estimator, source, out_video=None, out_jsonl=None, detector=None,
                  detections=None, detect_every=10, smoothing=None, score_threshold=0.3,
                  max_frames=None, overwrite=False, progress=True, **tracker_kwargs):
    """Tracks the people of a video and writes the drawn video and JSON lines.

    Person boxes come from, in this order: ``detections`` (a COCO
    detection-results file whose ``image_id`` is the 0-based frame index),
    ``detector`` (or the estimator's own), the whole image (with a warning).
    Either is consulted on detection frames only (see
    :class:`~keras_dpn.inference.tracking.PoseTracker`); in between, crops follow the
    keypoints.

    Args:
        estimator: a :class:`keras_dpn.PoseEstimator` (or any object with
            ``predict(image, boxes)`` and ``spec``).
        source: video file path, camera index, or an open :class:`VideoSource`
            (closed at the end).
        out_video: ``.mp4`` to write (None: no video).
        out_jsonl: JSON-lines file to write (None: none).
        detector: see :func:`keras_dpn.inference.detectors.get_detector`.
        detections: path of a COCO detection-results file, or a
            :class:`~keras_dpn.inference.detectors.DetectionFile`.
        detect_every: detector period in frames.
        smoothing: None, True (defaults) or a dict of One-Euro parameters
            (``min_cutoff`` Hz, ``beta`` per person size, ``d_cutoff`` Hz).
        score_threshold: joint score below which joints are not drawn.
        max_frames: stop after this many frames (a webcam runs until Ctrl-C
            otherwise).
        overwrite: replace existing outputs.
        progress: show a progress bar.
        **tracker_kwargs: other :class:`~keras_dpn.inference.tracking.PoseTracker`
            arguments (``iou_threshold``, ``min_keypoints``, ...).

    Returns:
        A dict: ``frames`` (count), ``ids`` (every id seen), ``detector_calls``,
        ``fps``, ``video`` and ``jsonl`` (the paths written).

    Raises:
        ValueError: the source cannot be opened, ends early or has no frames;
            a detector returns malformed boxes; a detection file is broken.
        FileExistsError: an output exists and ``overwrite`` is False.
    """
    import cv2
    from tqdm import tqdm

    from keras_dpn.inference import visualize
    from keras_dpn.inference.estimator import WHOLE_IMAGE_WARNING
    if out_video is not None and os.path.splitext(os.fspath(out_video))[1].lower() != ".mp4":
        raise ValueError(f"The drawn video is written as .mp4. Received: out_video={out_video!r}")
    _check_outputs([out_video, out_jsonl], overwrite)
    if detections is not None and not isinstance(detections, DetectionFile):
        detections = DetectionFile(detections)
    detect = get_detector(detector) if detector is not None else \
        getattr(estimator, "detector", None)
    if detections is None and detect is None:
        warnings.warn(WHOLE_IMAGE_WARNING, stacklevel=2)
    spec = estimator.spec
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(
            source if isinstance(source, VideoSource) else VideoSource(source))
        tracker = PoseTracker(spec, detect_every=detect_every, smoothing=smoothing,
                              fps=video.fps, **tracker_kwargs)
        tmp_video = stack.enter_context(io_utils.atomic_path(out_video)) if out_video else None
        jsonl = stack.enter_context(io_utils.atomic_file(out_jsonl, "w")) if out_jsonl else None
        total = video.frame_count if max_frames is None else \
            min(max_frames, video.frame_count or max_frames)
        bar = stack.enter_context(tqdm(total=total, unit="frame", desc="predict",
                                       disable=not progress))
        writer = None
        ids = set()
        frames = 0

        def pose_fn(image, boxes):
            return estimator.predict(image, boxes)

        try:
            for index, t, rgb in video.frames(max_frames):
                if detections is not None:
                    def detect_fn(image, i=index):
                        boxes, scores = detections.lookup(i)
                        return check_detections(boxes, scores, image.shape,
                                                f"Detection file {detections.name!r} at frame {i}")
                else:
                    detect_fn = detect
                people = tracker.update(rgb, pose_fn, detect_fn,
                                        timestamp=t if video.live else None)
                ids.update(p["id"] for p in people)
                if jsonl is not None:
                    jsonl.write(_jsonl_record(index, t, people) + "\n")
                if tmp_video is not None:
                    drawn = visualize.draw_skeleton(
                        rgb, people, spec, score_threshold,
                        boxes=[p["box"] for p in people],
                        labels=[f"id {p['id']}" for p in people])
                    if writer is None:
                        h, w = drawn.shape[:2]
                        writer = cv2.VideoWriter(tmp_video, cv2.VideoWriter_fourcc(*"mp4v"),
                                                 video.fps, (w, h))
                        if not writer.isOpened():
                            raise ValueError(f"OpenCV could not open an mp4 writer. "
                                             f"Received: out_video={out_video!r}")
                    writer.write(np.ascontiguousarray(drawn[..., ::-1]))
                frames += 1
                bar.update(1)
        except KeyboardInterrupt:
            if not video.live:
                raise
            # Ctrl-C is how a webcam recording ends: keep it.
        finally:
            if writer is not None:
                writer.release()
        if frames == 0:
            raise ValueError(f"No frame was processed. Received: source={video.name!r}, "
                             f"max_frames={max_frames!r}")
    return dict(frames=frames, ids=sorted(ids), detector_calls=tracker.detector_calls,
                fps=video.fps, video=os.path.abspath(out_video) if out_video else None,
                jsonl=os.path.abspath(out_jsonl) if out_jsonl else None)
