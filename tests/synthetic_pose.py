"""Synthetic people for the tracking and video tests: painted skeletons and dot finders.

A person is 17 COCO joints painted as dots on a black frame; joint ``j`` has
its own colour (red channel ``CODES[j]``, green 255), so a "pose model" can
find each joint by colour. Two finders read them:

* :class:`DotPose`, numpy: for each box, looks inside the crop window that
  :class:`keras_dpn.PoseEstimator` would cut (same center / scale / padding)
  and returns the centroid of each joint's dot nearest the window center
  (score 1), or nothing (score 0) when the dot is outside the window. Exact,
  fast, and optionally noisy (seeded).
* :func:`dot_model`, a real Keras heatmap model (two 1x1 convolutions and a
  4x average pool, weights set by hand) whose heatmap ``j`` lights up on
  pixels of colour ``j``: it runs through PoseEstimator, export and the CLI.
"""

import numpy as np

from keras_dpn.core import transforms

# (x, y) of the 17 COCO joints for a person of height 1 centred on (0, 0).
TEMPLATE = np.array([
    [0.00, -0.40], [-0.06, -0.46], [0.06, -0.46], [-0.13, -0.42], [0.13, -0.42],
    [-0.17, -0.28], [0.17, -0.28], [-0.18, -0.14], [0.18, -0.14], [-0.21, 0.02],
    [0.21, 0.02], [-0.08, 0.03], [0.08, 0.03], [-0.09, 0.25], [0.09, 0.25],
    [-0.10, 0.47], [0.10, 0.47]], np.float64)
CODES = 20 + 13 * np.arange(17)  # red channel of joint j; green is 255
DOT_RADIUS = 4


def skeleton(center, height):
    """(17, 2) joint positions of a person of ``height`` px centred at ``center``."""
    return TEMPLATE * height + np.asarray(center, np.float64)


def paint(shape, people, radius=DOT_RADIUS):
    """A black RGB frame with each (17, 2) person painted as coloured dots."""
    import cv2
    frame = np.zeros(tuple(shape[:2]) + (3,), np.uint8)
    for joints in people:
        for j, (x, y) in enumerate(joints):
            cv2.circle(frame, (int(round(x)), int(round(y))), radius,
                       (int(CODES[j]), 255, 130), -1, cv2.LINE_8)
    return frame


def person_box(joints, margin=0.1):
    """The xywh box a detector would give a painted person."""
    x0, y0 = joints.min(0)
    x1, y1 = joints.max(0)
    pad = margin * (y1 - y0)
    return np.array([x0 - pad, y0 - pad, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad], np.float32)


class DotPose:
    """A numpy "pose model" that finds painted joints inside each crop window.

    Args:
        noise: standard deviation (px) of Gaussian noise added to x, y.
        seed: noise seed.
        input_size: the (H, W) whose aspect ratio the crop windows take.
    """

    def __init__(self, noise=0.0, seed=0, input_size=(128, 96)):
        from keras_dpn import COCO_17
        self.spec = COCO_17
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.input_size = input_size
        self.calls = []  # the boxes of every call

    def predict(self, image, boxes, box_scores=None):
        import cv2
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.calls.append(boxes.copy())
        h, w = self.input_size
        centers, scales = transforms.box_to_center_scale(boxes, w / h)
        people = []
        for box, c, s in zip(boxes, centers.reshape(-1, 2), scales.reshape(-1, 2)):
            x0, y0 = np.floor(c - s / 2).astype(int)
            x1, y1 = np.ceil(c + s / 2).astype(int)
            x0, y0 = max(x0, 0), max(y0, 0)
            window = image[y0:max(y1, y0), x0:max(x1, x0)]
            kp = np.zeros((17, 3), np.float32)
            kp[:, :2] = c
            for j in range(17):
                mask = ((np.abs(window[..., 0].astype(int) - CODES[j]) <= 3)
                        & (window[..., 1] >= 200)).astype(np.uint8)
                if not mask.any():
                    continue
                n, _, _, centroids = cv2.connectedComponentsWithStats(mask)
                found = centroids[1:] + [x0, y0]
                best = found[np.argmin(((found - c) ** 2).sum(-1))]
                kp[j] = [best[0], best[1], 1.0]
            if self.noise:
                kp[:, :2] += self.rng.normal(0, self.noise, (17, 2))
            people.append(dict(keypoints=kp, box=box, score=float(kp[:, 2].mean())))
        return people


def dot_model(input_size=(128, 96), tolerance=6.0):
    """A Keras heatmap model (stride 4) that finds the painted joints.

    Pixel -> heatmap ``j``: ``relu(1 - |R - CODES[j]| / tolerance - 8 (1 - G))``
    (R in 0-255, G in 0-1), written as two 1x1 convolutions over the
    ImageNet-normalized input, then a 4x4 average pool.
    """
    import keras
    k = len(CODES)
    mean = np.asarray(transforms.IMAGENET_MEAN)
    std = np.asarray(transforms.IMAGENET_STD)
    w1 = np.zeros((1, 1, 3, 2 * k + 1), np.float32)
    b1 = np.zeros(2 * k + 1, np.float32)
    # R (0-255) = 255 (x_R std_R + mean_R); G (0-1) = x_G std_G + mean_G.
    w1[0, 0, 0, :k], b1[:k] = 255 * std[0], 255 * mean[0] - CODES
    w1[0, 0, 0, k:2 * k], b1[k:2 * k] = -255 * std[0], CODES - 255 * mean[0]
    w1[0, 0, 1, 2 * k], b1[2 * k] = std[1], mean[1]
    w2 = np.zeros((1, 1, 2 * k + 1, k), np.float32)
    for j in range(k):
        w2[0, 0, j, j] = w2[0, 0, k + j, j] = -1.0 / tolerance
        w2[0, 0, 2 * k, j] = 8.0
    b2 = np.full(k, 1.0 - 8.0, np.float32)
    inputs = keras.Input(tuple(input_size) + (3,))
    x = keras.layers.Conv2D(2 * k + 1, 1, activation="relu", name="color_distance")(inputs)
    x = keras.layers.Conv2D(k, 1, activation="relu", name="color_match")(x)
    x = keras.layers.AveragePooling2D(4, name="heatmaps")(x)
    model = keras.Model(inputs, x, name="dot_model")
    model.get_layer("color_distance").set_weights([w1, b1])
    model.get_layer("color_match").set_weights([w2, b2])
    return model


def moving_people(num_frames, tracks, shape=(480, 640)):
    """Frames and ground truth for people moving at constant velocities.

    Args:
        tracks: list of dicts ``start`` (x, y), ``velocity`` (px/frame),
            ``height``, optional ``frames`` (range of frames where visible).

    Returns:
        ``(frames list of RGB arrays, truth list of {track index: (17, 2)})``.
    """
    frames, truth = [], []
    for t in range(num_frames):
        present = {}
        for i, tr in enumerate(tracks):
            if t in tr.get("frames", range(num_frames)):
                center = np.asarray(tr["start"], np.float64) + t * np.asarray(tr["velocity"])
                present[i] = skeleton(center, tr["height"])
        frames.append(paint(shape, present.values()))
        truth.append(present)
    return frames, truth
