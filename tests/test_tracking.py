"""PoseTracker and the One-Euro filter on synthetic sequences (numpy only, no model)."""

import numpy as np
import pytest

import synthetic_pose as sp
from keras_dpn.inference.tracking import (DEFAULT_SMOOTHING, OneEuroFilter, PoseTracker,
                                box_from_keypoints, keypoint_similarity)


def _truth_detector(truth, t, rng=None):
    """A detector that returns the painted people's boxes, in a shuffled order."""
    boxes = [sp.person_box(j) for j in truth[t].values()]
    scores = [0.9] * len(boxes)
    if rng is not None and boxes:
        order = rng.permutation(len(boxes))
        boxes, scores = [boxes[i] for i in order], [scores[i] for i in order]
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def _run(tracker, frames, truth, pose, detector=None):
    calls = []

    def detect(image):
        calls.append(t)
        return detector(t)

    out = []
    for t, frame in enumerate(frames):
        out.append(tracker.update(frame, pose.predict, detect if detector else None))
    return out, calls


def _id_of_truth(people, joints):
    """The id of the tracked person whose keypoints are on ``joints`` (None if none)."""
    for p in people:
        if np.abs(p["raw_keypoints"][:, :2] - joints).max() < 2.0:
            return p["id"]
    return None


# ---------------------------------------------------------------------------
# One-Euro filter
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("speed", [3.0, 30.0, 300.0, 3000.0])
def test_one_euro_lag_is_the_stated_one(speed):
    f = OneEuroFilter(**DEFAULT_SMOOTHING)
    scale, fps = 150.0, 30.0
    out = [f(speed * i / fps, i / fps, scale) for i in range(150)]
    lag = speed * 149 / fps - out[-1]
    # Settled on exactly the documented steady-state lag ...
    np.testing.assert_allclose(lag, f.lag(speed, scale), rtol=0.02)
    # ... which is under both stated bounds.
    assert lag < speed / (2 * np.pi * DEFAULT_SMOOTHING["min_cutoff"])
    assert lag < scale / (2 * np.pi * DEFAULT_SMOOTHING["beta"])


def test_one_euro_smooths_still_noise_and_keeps_still_values():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(**DEFAULT_SMOOTHING)
    noisy = 100.0 + rng.normal(0, 2.0, (300, 17, 2))
    out = np.stack([f(x, i / 30.0, scale=150.0) for i, x in enumerate(noisy)])
    raw_jitter = np.std(noisy[50:] - 100.0)
    assert np.std(out[50:] - 100.0) < 0.4 * raw_jitter
    assert abs(np.mean(out[50:]) - 100.0) < 0.1  # no bias on a still joint


def test_one_euro_bad_input():
    with pytest.raises(ValueError, match="min_cutoff"):
        OneEuroFilter(min_cutoff=0)
    with pytest.raises(ValueError, match="beta"):
        OneEuroFilter(beta=float("nan"))
    f = OneEuroFilter()
    f([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="increase"):
        f([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="shape"):
        f([1.0, 2.0, 3.0], 1.0)


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------

def test_box_from_keypoints_and_oks():
    joints = sp.skeleton((100, 100), 100)
    kp = np.concatenate([joints, np.ones((17, 1))], axis=1)
    x0, y0 = joints.min(0)
    x1, y1 = joints.max(0)
    box = box_from_keypoints(kp, margin=0.1)
    np.testing.assert_allclose(box, [x0 - 9.3, y0 - 9.3, x1 - x0 + 18.6, y1 - y0 + 18.6],
                               atol=1e-4)
    kp[2:, 2] = 0.0
    assert box_from_keypoints(kp, 0.3) is not None
    kp[1:, 2] = 0.0
    assert box_from_keypoints(kp, 0.3) is None  # one joint: no box
    a = np.concatenate([joints, np.ones((17, 1))], axis=1)
    assert keypoint_similarity(a, a, [0.05] * 17, 1e4) == 1.0
    # COCO OKS: exp(-d^2 / (2 area (2 sigma)^2)), here the same for every joint.
    np.testing.assert_allclose(keypoint_similarity(a, a + [30, 0, 0], [0.05] * 17, 1e4),
                               np.exp(-30 ** 2 / (2 * 1e4 * 0.1 ** 2)))


# ---------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------

def test_ids_stay_with_people_across_detections():
    """Two people pass each other in two rows, a third comes and goes: ids never swap."""
    tracks = [dict(start=(80, 90), velocity=(5, 0), height=100),
              dict(start=(560, 250), velocity=(-5, 0), height=100),
              dict(start=(100, 400), velocity=(6, 0), height=100, frames=range(23, 50))]
    frames, truth = sp.moving_people(60, tracks)
    rng = np.random.default_rng(0)
    tracker = PoseTracker("coco", detect_every=5)
    out, calls = _run(tracker, frames, truth, sp.DotPose(),
                      detector=lambda t: _truth_detector(truth, t, rng))
    ids = {i: set() for i in range(3)}
    for t, people in enumerate(out):
        assert len(people) == len(truth[t]) or t in (23, 24)  # C waits for a detection frame
        for i, joints in truth[t].items():
            found = _id_of_truth(people, joints)
            if found is not None:
                ids[i].add(found)
    assert ids[0] == {1} and ids[1] == {2}  # one id each, all along
    assert ids[2] == {3}  # the newcomer gets the next id at the detection on frame 25
    assert _id_of_truth(out[25], truth[25][2]) == 3
    assert all(len(p) == 2 for p in out[50:])  # it left; its id is not reused
    assert calls == list(range(0, 60, 5)) and tracker.detector_calls == 12


def test_crops_follow_the_previous_keypoints():
    """With one detection at frame 0, the crop follows a fast person across the frame."""
    frames, truth = sp.moving_people(50, [dict(start=(60, 90), velocity=(9, 5), height=110)])
    pose = sp.DotPose()
    tracker = PoseTracker("coco", detect_every=1000)
    out, calls = _run(tracker, frames, truth, pose, detector=lambda t: _truth_detector(truth, t))
    assert calls == [0]
    for t, people in enumerate(out):
        assert [p["id"] for p in people] == [1]
        assert np.abs(people[0]["keypoints"][:, :2] - truth[t][0]).max() < 1.0
        if t:
            # The crop of frame t is the box of frame t-1's keypoints.
            expected = box_from_keypoints(out[t - 1][0]["raw_keypoints"],
                                          tracker.keypoint_threshold, tracker.box_margin)
            np.testing.assert_allclose(pose.calls[t][0], expected, atol=1e-3)
            assert not people[0]["detected"]
    # Control: the person moved out of the first frame's crop long ago.
    lost = sp.DotPose().predict(frames[-1], pose.calls[0])[0]
    assert lost["keypoints"][:, 2].sum() == 0


def test_lost_person_is_dropped_and_returns_with_a_new_id():
    tracks = [dict(start=(100, 120), velocity=(2, 0), height=100,
                   frames=[t for t in range(40) if not 10 <= t < 15])]
    frames, truth = sp.moving_people(40, tracks)
    tracker = PoseTracker("coco", detect_every=20)
    out, calls = _run(tracker, frames, truth, sp.DotPose(),
                      detector=lambda t: _truth_detector(truth, t))
    assert [len(p) for p in out[9:16]] == [1, 0, 0, 0, 0, 0, 1]
    assert {p["id"] for p in out[5]} == {1} and {p["id"] for p in out[20]} == {2}
    # Lost on frame 10 (no detection due); from the next frame on, nobody is
    # tracked, so the detector runs on every frame until someone is found.
    assert calls == [0, 11, 12, 13, 14, 15, 35]


def test_duplicate_detections_become_one_person():
    joints = sp.skeleton((150, 120), 100)
    frame = sp.paint((240, 320), [joints])
    box = sp.person_box(joints)
    bigger = box + np.array([-20, -15, 40, 30], np.float32)  # IoU with box < 0.8
    tracker = PoseTracker("coco")
    people = tracker.update(frame, sp.DotPose().predict,
                            lambda image: (np.stack([box, bigger]), np.array([0.9, 0.8])))
    assert [p["id"] for p in people] == [1]
    assert tracker.update(frame, sp.DotPose().predict)[0]["id"] == 1


def test_whole_image_without_detector():
    frames, truth = sp.moving_people(6, [dict(start=(150, 120), velocity=(3, 0), height=100)],
                                     shape=(240, 320))
    pose = sp.DotPose()
    out, _ = _run(PoseTracker("coco"), frames, truth, pose)
    np.testing.assert_allclose(pose.calls[0], [[0, 0, 320, 240]])
    assert [[p["id"] for p in people] for people in out] == [[1]] * 6


def test_smoothing_lowers_jitter_within_the_lag_bound():
    speed = 3.0  # px per frame, to the right, at 30 fps
    frames, truth = sp.moving_people(90, [dict(start=(80, 120), velocity=(speed, 0),
                                               height=100)], shape=(240, 480))

    def run(smoothing):
        tracker = PoseTracker("coco", detect_every=1000, smoothing=smoothing)
        out, _ = _run(tracker, frames, truth, sp.DotPose(noise=1.5, seed=3),
                      detector=lambda t: _truth_detector(truth, t))
        assert all([p["id"] for p in people] == [1] for people in out)
        kp = np.stack([people[0]["keypoints"][:, :2] for people in out])
        return kp, np.asarray([people[0]["box"][2:].max() for people in out])

    raw, _ = run(None)
    smooth, sizes = run(DEFAULT_SMOOTHING)
    true = np.stack([truth[t][0] for t in range(90)])

    def jitter(kp):  # frame-to-frame acceleration: zero for the true, constant-speed motion
        return np.sqrt(np.mean(np.diff(kp[30:], n=2, axis=0) ** 2))

    assert jitter(smooth) < 0.4 * jitter(raw)
    lag = np.mean(true[30:, :, 0] - smooth[30:, :, 0])
    bound = sizes.mean() / (2 * np.pi * DEFAULT_SMOOTHING["beta"])
    assert 0 < lag < bound
    assert abs(np.mean(true[30:, :, 1] - smooth[30:, :, 1])) < 0.3  # no lag across the motion


def test_tracker_bad_arguments():
    with pytest.raises(ValueError, match="detect_every"):
        PoseTracker(detect_every=0)
    with pytest.raises(ValueError, match="smoothing"):
        PoseTracker(smoothing="yes")
    with pytest.raises(ValueError, match="beta"):
        PoseTracker(smoothing=dict(beta=-1.0))
    tracker = PoseTracker()
    with pytest.raises(ValueError, match="one pose per box"):
        tracker.update(np.zeros((50, 50, 3), np.uint8), lambda image, boxes: [])
