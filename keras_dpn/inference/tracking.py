"""Pose tracking across video frames: ids, crops that follow people, smoothing.

Numpy only (no deep-learning backend): the model is reached through two
callables, so the same logic serves a Keras model, a TFLite or an ONNX file,
or a test double.

* :class:`PoseTracker` gives each person an id that persists across frames.
  After the first frame the crop of a tracked person comes from its keypoints
  in the previous frame (as MoveNet and MediaPipe Pose do), so the person
  detector only runs every ``detect_every`` frames (and whenever nobody is
  tracked) to find new people; detections are matched to the tracked people
  by box IoU, and two tracks that converge on one person (OKS) are merged.
* :class:`OneEuroFilter` smooths keypoints: the 1-Euro filter of G. Casiez,
  N. Roussel and D. Vogel, "1 € Filter: A Simple Speed-based Low-pass Filter
  for Noisy Input in Interactive Systems", CHI 2012
  (https://doi.org/10.1145/2207676.2208639).

Example:
>>> import numpy as np
>>> f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
>>> [round(float(f(x, t)), 3) for t, x in enumerate([0.0, 1.0, 1.0])]
[0.0, 0.863, 0.981]
"""

import math

import numpy as np

from keras_dpn.inference.detectors import box_iou, clip_boxes
from keras_dpn.core.keypoints import get_keypoint_spec


# ---------------------------------------------------------------------------
# One-Euro filter
# ---------------------------------------------------------------------------

class OneEuroFilter:
    """The 1-Euro filter (Casiez et al., CHI 2012) over arrays of any shape.

    Each element is low-pass filtered with a cutoff frequency that rises with
    its speed: ``cutoff = min_cutoff + beta * |speed| / scale``. Slow joints
    are smoothed hard (little jitter), fast ones lightly (little lag). The
    speed is the difference to the previous *raw* sample over the time step,
    itself low-pass filtered at ``d_cutoff`` (as in the authors' reference
    implementation).

    **Lag bounds.** For a value moving at a constant speed ``v`` (units per
    second) the filtered value trails it by at most ``v / (2 pi min_cutoff)``
    at any time (a time lag of at most ``1 / (2 pi min_cutoff)`` seconds,
    reached while the speed estimate is still rising), and once the speed
    estimate has settled (a few ``1 / (2 pi d_cutoff)`` seconds) by exactly
    ``v / (2 pi (min_cutoff + beta v / scale))``, which is below
    ``scale / (2 pi beta)`` whatever the speed. :meth:`lag` returns the
    settled lag.

    Args:
        min_cutoff: cutoff at rest, in Hz. Lower: less jitter, more lag.
        beta: speed coefficient, per ``scale`` unit (with keypoints in pixels
            and ``scale`` the person's size in pixels: per person size).
            Higher: less lag on fast motion.
        d_cutoff: cutoff of the speed estimate, in Hz.

    Example:
    >>> f = OneEuroFilter(min_cutoff=1.0, beta=2.0)
    >>> xs = [f(30.0 * t / 30, t / 30, scale=100.0) for t in range(90)]  # 30 px/s
    >>> round(float(30.0 * 89 / 30 - xs[-1]), 2), round(f.lag(30.0, 100.0), 2)
    (2.98, 2.98)
    """

    def __init__(self, min_cutoff=1.0, beta=0.0, d_cutoff=1.0):
        for name, value in (("min_cutoff", min_cutoff), ("d_cutoff", d_cutoff)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive number of Hz. "
                                 f"Received: {name}={value!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"`beta` must be a number >= 0. Received: beta={beta!r}")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.reset()

    def reset(self):
        self._raw = self._value = self._speed = self._t = None

    @staticmethod
    def alpha(dt, cutoff):
        """Smoothing factor of a first-order low-pass at ``cutoff`` Hz sampled every ``dt`` s."""
        tau = 1.0 / (2.0 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def lag(self, speed, scale=1.0):
        """Settled lag (in value units) at a constant ``speed`` (units per second)."""
        return abs(speed) / (2.0 * np.pi * (self.min_cutoff + self.beta * abs(speed) / scale))

    def __call__(self, x, t, scale=1.0):
        """Filters one sample.

        Args:
            x: array (any shape, fixed across calls).
            t: its time in seconds (strictly increasing).
            scale: size that ``beta`` is relative to (e.g. the person's box
                size in pixels); a scalar or an array broadcast against ``x``.

        Returns:
            The filtered array (float64, a new array).
        """
        x = np.array(x, np.float64)
        if self._value is None:
            self._raw, self._value, self._speed, self._t = x, x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        if x.shape != self._value.shape:
            raise ValueError(f"The filter was started on shape {self._value.shape}. "
                             f"Received: x with shape {x.shape}")
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"Timestamps must increase. Received: t={t!r} after {self._t!r}")
        speed = (x - self._raw) / dt
        a = self.alpha(dt, self.d_cutoff)
        self._speed = a * speed + (1 - a) * self._speed
        cutoff = self.min_cutoff + self.beta * np.abs(self._speed) / np.asarray(scale, np.float64)
        a = self.alpha(dt, cutoff)
        self._value = a * x + (1 - a) * self._value
        self._raw, self._t = x, float(t)
        return self._value.copy()


# ---------------------------------------------------------------------------
# Geometry of people
# ---------------------------------------------------------------------------

def box_from_keypoints(keypoints, score_threshold=0.3, margin=0.15):
    """The crop box of a person from its keypoints (``None`` if too few are seen).

    The box around the joints scoring at least ``score_threshold`` is grown by
    ``margin`` times its longer side on every side: joints stop short of the
    top of the head and the soles, and the person moves until the next frame.

    Returns:
        ``(4,)`` float32 xywh box, or None when fewer than 2 joints are seen.

    Example:
    >>> kp = np.array([[10, 10, 1.0], [30, 50, 1.0], [0, 0, 0.0]])
    >>> box_from_keypoints(kp, 0.3, margin=0.1).tolist()
    [6.0, 6.0, 28.0, 48.0]
    """
    kp = np.asarray(keypoints, np.float64)
    seen = kp[kp[:, 2] >= score_threshold, :2]
    if len(seen) < 2:
        return None
    x0, y0 = seen.min(axis=0)
    x1, y1 = seen.max(axis=0)
    pad = margin * max(x1 - x0, y1 - y0)
    return np.array([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad], np.float32)


def keypoint_similarity(a, b, sigmas, area, score_threshold=0.3):
    """COCO object keypoint similarity (OKS) of two ``(K, 3)`` poses of one scale.

    Args:
        a, b: ``(K, 3)`` keypoints ``x, y, score``.
        sigmas: ``(K,)`` per-joint OKS sigmas (``KeypointSpec.sigmas``).
        area: the person's area in pixels (box width times height).
        score_threshold: only joints seen in both poses count.

    Returns:
        OKS in [0, 1] (0 when no joint is seen in both).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = (a[:, 2] >= score_threshold) & (b[:, 2] >= score_threshold)
    if not both.any():
        return 0.0
    d2 = ((a[:, :2] - b[:, :2]) ** 2).sum(-1)
    k2 = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    return float(np.exp(-d2 / (2.0 * max(area, 1.0) * k2))[both].mean())


def _greedy_match(similarity, threshold):
    """(row, col) pairs, highest similarity first, each row and column used once."""
    pairs = []
    if similarity.size == 0:
        return pairs
    sim = similarity.copy()
    while True:
        r, c = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[r, c] < threshold:
            return pairs
        pairs.append((int(r), int(c)))
        sim[r, :] = -np.inf
        sim[:, c] = -np.inf


# ---------------------------------------------------------------------------
# The tracker
# ---------------------------------------------------------------------------

class _Track:
    def __init__(self, track_id, smoother):
        self.id = track_id
        self.next_box = None
        self.smoother = smoother
        self.frames = 0


class PoseTracker:
    """Frame-to-frame top-down pose tracking with stable ids.

    Each :meth:`update` (one frame):

    1. every tracked person gets a crop box from its previous keypoints
       (:func:`box_from_keypoints`); people whose box left the image are
       dropped;
    2. on a detection frame (the first, every ``detect_every`` frames, and
       any frame where nobody is tracked) the detector's boxes are matched to
       those crop boxes by IoU (greedy, at least ``iou_threshold``): a matched
       person keeps its id and takes the fresh detector box; unmatched boxes
       are new people. Without a detector the whole image is one box, and only
       while nobody is tracked;
    3. the pose function runs on all crops; a person with fewer than
       ``min_keypoints`` joints scoring ``keypoint_threshold`` is dropped
       (lost; a later detection gives it a new id);
    4. of two people whose poses overlap (OKS above ``duplicate_oks``) the
       younger is dropped;
    5. new people get the next unused id (ids start at 1 and are never
       reused); keypoints are smoothed per person with a
       :class:`OneEuroFilter` when ``smoothing`` is set.

    Args:
        keypoints: keypoint set name or spec (OKS sigmas).
        detect_every: run the detector every this many frames (1: always).
        iou_threshold: box IoU that matches a detection to a tracked person.
        keypoint_threshold: joint score that counts a joint as seen.
        min_keypoints: seen joints that keep a person tracked.
        duplicate_oks: OKS above which two tracks are one person.
        box_margin: see :func:`box_from_keypoints`.
        smoothing: None (off), True (the :class:`OneEuroFilter` defaults of
            :data:`DEFAULT_SMOOTHING`) or a dict of ``min_cutoff``, ``beta``,
            ``d_cutoff``. The filter's ``scale`` is the person's box size
            (longer side), so ``beta`` is per person size.
        fps: frame rate used for timestamps when :meth:`update` gets none.

    Example:
    >>> import numpy as np
    >>> def pose_fn(image, boxes):  # one fixed pose in every crop
    ...     kp = np.array([[x + w / 2, y + h / 2 + 10 * j, 1.0] for j in range(17)
    ...                    for x, y, w, h in [boxes[0]]], np.float32)
    ...     return [dict(keypoints=kp)] * len(boxes)
    >>> tracker = PoseTracker("coco")
    >>> people = tracker.update(np.zeros((480, 640, 3), np.uint8), pose_fn,
    ...                         lambda image: ([[100, 50, 80, 200]], [0.9]))
    >>> [p["id"] for p in people], people[0]["detected"]
    ([1], True)
    """

    def __init__(self, keypoints="coco", detect_every=10, iou_threshold=0.3,
                 keypoint_threshold=0.3, min_keypoints=4, duplicate_oks=0.8, box_margin=0.15,
                 smoothing=None, fps=30.0):
        if not isinstance(detect_every, int) or detect_every < 1:
            raise ValueError(f"`detect_every` must be an int >= 1. "
                             f"Received: detect_every={detect_every!r}")
        if not fps or not fps > 0:
            raise ValueError(f"`fps` must be positive. Received: fps={fps!r}")
        self.spec = get_keypoint_spec(keypoints)
        if not 1 <= min_keypoints <= self.spec.num_keypoints:
            raise ValueError(f"`min_keypoints` must be in 1..{self.spec.num_keypoints}. "
                             f"Received: min_keypoints={min_keypoints!r}")
        self.detect_every = detect_every
        self.iou_threshold = float(iou_threshold)
        self.keypoint_threshold = float(keypoint_threshold)
        self.min_keypoints = int(min_keypoints)
        self.duplicate_oks = float(duplicate_oks)
        self.box_margin = float(box_margin)
        if smoothing is True:
            smoothing = dict(DEFAULT_SMOOTHING)
        elif smoothing in (None, False):
            smoothing = None
        elif isinstance(smoothing, dict):
            OneEuroFilter(**smoothing)  # validates the parameters now
        else:
            raise ValueError("`smoothing` must be None, True or a dict of OneEuroFilter "
                             f"arguments. Received: smoothing={smoothing!r}")
        self.smoothing = smoothing
        self.fps = float(fps)
        self.reset()

    def reset(self):
        """Forgets every person (ids keep counting up)."""
        self.tracks = []
        self.frame_index = 0
        self._last_detection = None
        self.detector_calls = 0
        if not hasattr(self, "_next_id"):
            self._next_id = 1

    def _is_detection_frame(self, tracked):
        if not tracked or self._last_detection is None:
            return True
        return self.frame_index - self._last_detection >= self.detect_every

    def update(self, image, pose_fn, detect_fn=None, timestamp=None):
        """Tracks the people of one frame.

        Args:
            image: the frame, ``(H, W, 3)`` (passed to the two callables).
            pose_fn: ``pose_fn(image, boxes (N, 4) xywh) -> list`` of N dicts
                with ``keypoints`` ``(K, 3)`` in image pixels (what
                :meth:`keras_dpn.PoseEstimator.predict` returns).
            detect_fn: None, or ``detect_fn(image) -> (boxes (M, 4) xywh,
                scores (M,))`` (the detector interface of
                :mod:`keras_dpn.inference.detectors`).
            timestamp: the frame's time in seconds (default: index / fps).

        Returns:
            One dict per tracked person, by id: ``id``, ``keypoints`` (smoothed
            when smoothing is on), ``raw_keypoints``, ``box`` (the crop box
            used), ``score`` (mean joint score, times the detection score on
            the frame it was detected), ``detected`` (the box came from the
            detector on this frame).
        """
        shape = np.shape(image)
        t = self.frame_index / self.fps if timestamp is None else float(timestamp)
        # 1. Crops from the previous keypoints.
        candidates = []  # [track or None, box, detection score or None]
        for track in self.tracks:
            if track.next_box is None:
                continue
            box, ok = clip_boxes(track.next_box, shape)
            if ok[0] and min(box[0, 2:]) >= 2:
                candidates.append([track, box[0], None])
        # 2. Detection.
        if self._is_detection_frame(candidates):
            self._last_detection = self.frame_index
            if detect_fn is not None:
                det_boxes, det_scores = detect_fn(image)
                self.detector_calls += 1
            elif not candidates:
                det_boxes, det_scores = [[0, 0, shape[1], shape[0]]], [1.0]
            else:
                det_boxes, det_scores = np.zeros((0, 4)), np.zeros(0)
            det_boxes = np.asarray(det_boxes, np.float32).reshape(-1, 4)
            det_scores = np.asarray(det_scores, np.float32).reshape(-1)
            iou = box_iou(det_boxes, [c[1] for c in candidates])
            matched = set()
            for d, c in _greedy_match(iou, self.iou_threshold):
                candidates[c][1], candidates[c][2] = det_boxes[d], float(det_scores[d])
                matched.add(d)
            candidates += [[None, det_boxes[d], float(det_scores[d])]
                           for d in range(len(det_boxes)) if d not in matched]
        # 3. Poses; lost people are dropped.
        boxes = np.asarray([c[1] for c in candidates], np.float32).reshape(-1, 4)
        poses = pose_fn(image, boxes) if len(boxes) else []
        if len(poses) != len(boxes):
            raise ValueError(f"`pose_fn` must return one pose per box ({len(boxes)}). "
                             f"Received: {len(poses)} poses")
        alive = []
        for (track, box, det_score), pose in zip(candidates, poses):
            kp = np.asarray(pose["keypoints"], np.float32)
            if (kp[:, 2] >= self.keypoint_threshold).sum() >= self.min_keypoints:
                alive.append((track, box, det_score, kp))
        # 4. Duplicates: tracked people before new ones, older ids first.
        alive.sort(key=lambda a: (a[0] is None, a[0].id if a[0] else 0))
        kept = []
        for person in alive:
            area = float(person[1][2] * person[1][3])
            if all(keypoint_similarity(person[3], k[3], self.spec.sigmas, area,
                                       self.keypoint_threshold) <= self.duplicate_oks
                   for k in kept):
                kept.append(person)
        # 5. Ids, next crops, smoothing.
        results, tracks = [], []
        for track, box, det_score, kp in kept:
            if track is None:
                smoother = OneEuroFilter(**self.smoothing) if self.smoothing else None
                track = _Track(self._next_id, smoother)
                self._next_id += 1
            track.next_box = box_from_keypoints(kp, self.keypoint_threshold, self.box_margin)
            track.frames += 1
            smoothed = kp
            if track.smoother is not None:
                size = float(max(box[2], box[3]))
                smoothed = kp.copy()
                smoothed[:, :2] = track.smoother(kp[:, :2], t, scale=size)
            score = float(np.mean(kp[:, 2])) * (1.0 if det_score is None else det_score)
            results.append(dict(id=track.id, keypoints=smoothed.astype(np.float32),
                                raw_keypoints=kp, box=np.asarray(box, np.float32), score=score,
                                detected=det_score is not None))
            tracks.append(track)
        self.tracks = tracks
        self.frame_index += 1
        return sorted(results, key=lambda r: r["id"])


# Parameters of the --smooth option, chosen with benchmarks/video_tracking.py
# (30 fps, a 100 px person, joints jittering by 1.5 px): the frame-to-frame
# jitter falls to 16% (still) .. 49% (walking 3 heights/s) of the raw one, and
# the settled lag stays under size / (2 pi beta) = 3.2% of the person's box.
DEFAULT_SMOOTHING = dict(min_cutoff=1.0, beta=5.0, d_cutoff=1.0)
