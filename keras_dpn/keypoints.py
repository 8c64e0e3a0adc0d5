"""Keypoint metadata, declared once as data.

Augmentation (flip pairs, half-body), the flip test, drawing and evaluation
(OKS sigmas) all read a :class:`KeypointSpec`; nothing downstream hard-codes
a joint count. A custom COCO-format dataset is described the same way:

>>> spec = KeypointSpec(name="hand5", names=("a", "b", "c", "d", "e"),
...                     flip_pairs=(), skeleton=((0, 1),), sigmas=(0.05,) * 5,
...                     upper_body=(0, 1, 2), lower_body=(3, 4))
>>> spec.num_keypoints
5
"""

import dataclasses
from typing import Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
    """Everything the pipeline needs to know about one keypoint set.

    Attributes:
        name: short identifier, e.g. ``"coco"``.
        names: joint names in channel order.
        flip_pairs: ``(left, right)`` index pairs swapped by a horizontal flip.
        skeleton: ``(a, b)`` index pairs drawn as limbs (0-based).
        sigmas: per-joint OKS sigmas (COCO evaluation; also used for OKS-NMS).
        upper_body: joint indices of the upper body (half-body augmentation).
        lower_body: joint indices of the lower body.
        joint_weights: per-joint loss weights (1.0 by default).
        colors: RGB colour per limb for drawing.
    """

    name: str
    names: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    skeleton: Tuple[Tuple[int, int], ...]
    sigmas: Tuple[float, ...]
    upper_body: Tuple[int, ...]
    lower_body: Tuple[int, ...]
    joint_weights: Tuple[float, ...] = ()
    colors: Tuple[Tuple[int, int, int], ...] = ()

    def __post_init__(self):
        k = len(self.names)
        if k < 1:
            raise ValueError(f"KeypointSpec {self.name!r} needs at least one joint name.")
        for field in ("sigmas",):
            if len(getattr(self, field)) != k:
                raise ValueError(
                    f"KeypointSpec {self.name!r}: `{field}` has {len(getattr(self, field))} "
                    f"entries, expected one per joint ({k}).")
        if self.joint_weights and len(self.joint_weights) != k:
            raise ValueError(
                f"KeypointSpec {self.name!r}: `joint_weights` has {len(self.joint_weights)} "
                f"entries, expected {k}.")
        for pairs, field in ((self.flip_pairs, "flip_pairs"), (self.skeleton, "skeleton")):
            for a, b in pairs:
                if not (0 <= a < k and 0 <= b < k):
                    raise ValueError(
                        f"KeypointSpec {self.name!r}: `{field}` names joint ({a}, {b}) "
                        f"outside 0..{k - 1}.")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation p with ``flipped[..., j] = original[..., p[j]]``."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def weights(self) -> np.ndarray:
        if self.joint_weights:
            return np.asarray(self.joint_weights, np.float32)
        return np.ones(self.num_keypoints, np.float32)

    def limb_colors(self) -> Sequence[Tuple[int, int, int]]:
        if self.colors:
            return self.colors
        # A fixed hue wheel so pictures are reproducible.
        out = []
        for i in range(len(self.skeleton)):
            h = i / max(1, len(self.skeleton))
            r, g, b = _hsv_to_rgb(h, 0.85, 1.0)
            out.append((int(255 * r), int(255 * g), int(255 * b)))
        return tuple(out)


def _hsv_to_rgb(h, s, v):
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


COCO_17 = KeypointSpec(
    name="coco",
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear",
           "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
           "left_wrist", "right_wrist", "left_hip", "right_hip",
           "left_knee", "right_knee", "left_ankle", "right_ankle"),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # The COCO annotation file's skeleton, made 0-based.
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12),
              (5, 6), (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2),
              (1, 3), (2, 4), (3, 5), (4, 6)),
    # COCO keypoint evaluation sigmas (cocoapi, pycocotools/cocoeval.py).
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
            0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089),
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
    # Loss weights of the HRNet reference: heavier on elbows/wrists/knees/ankles.
    joint_weights=(1., 1., 1., 1., 1., 1., 1., 1.2, 1.2, 1.5, 1.5, 1., 1., 1.2, 1.2, 1.5, 1.5),
)

MPII_16 = KeypointSpec(
    name="mpii",
    names=("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis",
           "thorax", "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder",
           "l_shoulder", "l_elbow", "l_wrist"),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8),
              (8, 9), (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15)),
    # MPII has no official OKS sigmas (PCKh does not read them; OKS-NMS does).
    # These are mmpose's, "adapted from COCO": open-mmlab/mmpose
    # configs/_base_/datasets/mpii.py (commit ba8cf337), same joint order.
    sigmas=(0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026,
            0.026, 0.062, 0.072, 0.179, 0.179, 0.072, 0.062),
    upper_body=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    lower_body=(0, 1, 2, 3, 4, 5, 6),
    joint_weights=(1.5, 1.2, 1., 1., 1.2, 1.5, 1., 1., 1., 1., 1.5, 1.2, 1., 1., 1.2, 1.5),
)

_REGISTRY = {"coco": COCO_17, "mpii": MPII_16}


def validate_num_keypoints(num_keypoints, arg_name="num_keypoints"):
    """Checks a keypoint (heatmap channel) count: an int >= 1.

    Raises:
        ValueError: naming ``arg_name`` and what it received.
    """
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(
            f"`{arg_name}` must be an int >= 1. Received: {arg_name}={num_keypoints!r}")
    return num_keypoints


def get_keypoint_spec(name_or_spec) -> KeypointSpec:
    """Returns the spec for ``"coco"`` / ``"mpii"``, or passes a spec through."""
    if isinstance(name_or_spec, KeypointSpec):
        return name_or_spec
    if name_or_spec not in _REGISTRY:
        raise ValueError(
            f"Unknown keypoint set. Expected one of {sorted(_REGISTRY)} or a "
            f"KeypointSpec. Received: {name_or_spec!r}")
    return _REGISTRY[name_or_spec]
