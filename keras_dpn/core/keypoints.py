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
import json
import math
import os
from typing import Sequence, Tuple

import numpy as np

# The keypoint-set file format: to_dict() / from_dict(), docs/keypoints.md.
REQUIRED_FIELDS = ("name", "names", "flip_pairs", "skeleton", "sigmas")
OPTIONAL_FIELDS = ("upper_body", "lower_body", "joint_weights", "colors")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
_DEFAULTS = {f: () for f in OPTIONAL_FIELDS}


def _short(value, limit=100):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_number(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_))


def _is_list(x):
    return isinstance(x, (list, tuple, np.ndarray))


def _checked(values, where):
    """The fields of a keypoint set, type- and range-checked, as tuples.

    Raises:
        ValueError: one line: ``where``, the field, what is wrong, the value.
    """
    def fail(field, problem):
        raise ValueError(f"{where}: `{field}` {problem}. "
                         f"Received: {field}={_short(values[field])}")

    name = values["name"]
    if not isinstance(name, str) or not name.strip():
        fail("name", "must be a non-empty string")
    names = values["names"]
    if not _is_list(names) or len(names) == 0:
        fail("names", "must be a non-empty list of joint names")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            fail("names", f"entry {i} ({n!r}) is not a non-empty string")
    seen = set()
    for n in names:
        if n in seen:
            fail("names", f"lists {n!r} twice (joint names must be unique)")
        seen.add(n)
    k = len(names)
    joints = f"0..{k - 1} ({k} joints)"

    def index_list(field):
        value = values[field]
        if not _is_list(value):
            fail(field, "must be a list of joint indices")
        for i, j in enumerate(value):
            if not _is_int(j):
                fail(field, f"entry {i} ({j!r}) is not an integer joint index")
            if not 0 <= j < k:
                fail(field, f"entry {i} ({int(j)}) is outside {joints}")
        out = tuple(int(j) for j in value)
        if len(set(out)) != len(out):
            fail(field, f"lists joint {next(j for j in out if out.count(j) > 1)} twice")
        return out

    def pair_list(field):
        value = values[field]
        if not _is_list(value):
            fail(field, "must be a list of [a, b] joint index pairs")
        out = []
        for i, p in enumerate(value):
            if not _is_list(p) or len(p) != 2 or not all(_is_int(j) for j in p):
                fail(field, f"entry {i} ({_short(p, 40)}) is not a pair of joint indices [a, b]")
            a, b = int(p[0]), int(p[1])
            if not (0 <= a < k and 0 <= b < k):
                fail(field, f"entry {i} [{a}, {b}] names a joint outside {joints}")
            if a == b:
                fail(field, f"entry {i} [{a}, {b}] pairs joint {a} with itself")
            out.append((a, b))
        return tuple(out)

    def per_joint(field, positive, optional):
        value = values[field]
        if not _is_list(value):
            fail(field, "must be a list of numbers, one per joint")
        if optional and len(value) == 0:
            return ()
        if len(value) != k:
            fail(field, f"has {len(value)} entries; it needs one per joint ({k})")
        for i, x in enumerate(value):
            bad = not _is_number(x) or not math.isfinite(x) or (x <= 0 if positive else x < 0)
            if bad:
                fail(field, f"entry {i} ({x!r}) for joint {names[i]!r} is not a finite number "
                            f"{'> 0' if positive else '>= 0'}")
        return tuple(float(x) for x in value)

    flip_pairs = pair_list("flip_pairs")
    partner = {}
    for i, (a, b) in enumerate(flip_pairs):
        if {a, b} in [set(p) for p in flip_pairs[:i]]:
            fail("flip_pairs", f"lists the pair [{a}, {b}] twice")
        for j in (a, b):
            if j in partner:
                fail("flip_pairs", f"puts joint {j} ({names[j]!r}) in two pairs "
                                   f"({list(partner[j])} and [{a}, {b}])")
            partner[j] = (a, b)
    skeleton = pair_list("skeleton")
    colors = values["colors"]
    if not _is_list(colors):
        fail("colors", "must be a list of [r, g, b] colours, one per skeleton limb")
    if len(colors) and len(colors) != len(skeleton):
        fail("colors", f"has {len(colors)} entries; it needs one per skeleton limb "
                       f"({len(skeleton)}) or none")
    for i, c in enumerate(colors):
        if (not _is_list(c) or len(c) != 3
                or not all(_is_int(x) and 0 <= x <= 255 for x in c)):
            fail("colors", f"entry {i} ({_short(c, 40)}) is not [r, g, b] of integers 0..255")
    return {
        "name": name, "names": tuple(names), "flip_pairs": flip_pairs, "skeleton": skeleton,
        "sigmas": per_joint("sigmas", positive=True, optional=False),
        "upper_body": index_list("upper_body"), "lower_body": index_list("lower_body"),
        "joint_weights": per_joint("joint_weights", positive=False, optional=True),
        "colors": tuple(tuple(int(x) for x in c) for c in colors),
    }


@dataclasses.dataclass(frozen=True)
class KeypointSpec:
    """Everything the pipeline needs to know about one keypoint set.

    Attributes:
        name: short identifier, e.g. ``"coco"``.
        names: joint names in channel order.
        flip_pairs: ``(left, right)`` index pairs swapped by a horizontal flip.
        skeleton: ``(a, b)`` index pairs drawn as limbs (0-based).
        sigmas: per-joint OKS sigmas (COCO evaluation; also used for OKS-NMS).
        upper_body: joint indices of the upper body (half-body augmentation;
            empty: none).
        lower_body: joint indices of the lower body.
        joint_weights: per-joint loss weights (empty: 1.0 each).
        colors: RGB colour per limb for drawing (empty: a fixed hue wheel).

    Every field is checked on construction (one-line ``ValueError`` naming the
    field); :meth:`to_dict` / :meth:`from_dict` are the keypoint-set file
    format (``docs/keypoints.md``).
    """

    name: str
    names: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    skeleton: Tuple[Tuple[int, int], ...]
    sigmas: Tuple[float, ...]
    upper_body: Tuple[int, ...] = ()
    lower_body: Tuple[int, ...] = ()
    joint_weights: Tuple[float, ...] = ()
    colors: Tuple[Tuple[int, int, int], ...] = ()

    def __post_init__(self):
        # Lists (a dict from JSON, a user's call) become tuples, so every spec
        # compares, hashes and round-trips the same way.
        values = _checked({f: getattr(self, f) for f in FIELDS}, f"KeypointSpec {self.name!r}")
        for field, value in values.items():
            object.__setattr__(self, field, value)

    def to_dict(self):
        """Every field as JSON-ready data (the keypoint-set file format).

        ``KeypointSpec.from_dict(spec.to_dict()) == spec`` for every spec.
        """
        return {
            "name": self.name,
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "skeleton": [list(p) for p in self.skeleton],
            "sigmas": list(self.sigmas),
            "upper_body": list(self.upper_body),
            "lower_body": list(self.lower_body),
            "joint_weights": list(self.joint_weights),
            "colors": [list(c) for c in self.colors],
        }

    @classmethod
    def from_dict(cls, fields, source=None):
        """A spec from :meth:`to_dict`'s data (e.g. a parsed keypoint-set file).

        Args:
            fields: dict with the required fields ``name``, ``names``,
                ``flip_pairs``, ``skeleton``, ``sigmas`` and the optional
                ``upper_body``, ``lower_body``, ``joint_weights``, ``colors``.
            source: where the dict came from (a file, ``run_config.json``),
                named at the start of every error.

        Raises:
            ValueError: one line naming ``source`` and the field: a missing or
                unknown field, a wrong type, or a value out of range.
        """
        where = source or "Keypoint set"
        if not isinstance(fields, dict):
            raise ValueError(f"{where}: a keypoint set must be a JSON object with the fields "
                             f"{list(FIELDS)}. Received: {_short(fields)}")
        unknown = sorted(set(fields) - set(FIELDS), key=str)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; a keypoint set has the fields "
                             f"{list(FIELDS)}.")
        missing = [f for f in REQUIRED_FIELDS if f not in fields]
        if missing:
            raise ValueError(f"{where}: missing required field(s) {missing} (required: "
                             f"{list(REQUIRED_FIELDS)}).")
        values = _checked({**_DEFAULTS, **fields}, where)
        builtin = _REGISTRY.get(values["name"])
        spec = cls(**values)
        if builtin is not None and spec != builtin:
            raise ValueError(f"{where}: `name` {values['name']!r} is the built-in set's, but the "
                             "other fields differ from it: give the set its own name.")
        return spec

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


def load_keypoint_spec(path):
    """Reads a keypoint-set file (JSON, :meth:`KeypointSpec.to_dict`'s fields).

    Raises:
        ValueError: one line naming the file: missing, unreadable, not JSON
            (with the line and column), or a field that is missing, unknown
            or wrong (see :meth:`KeypointSpec.from_dict`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Keypoint set file not found: {path}. Received: keypoints={path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Keypoint set file {path} cannot be read "
                         f"({getattr(e, 'strerror', None) or e}).") from None
    try:
        fields = json.loads(text)
    except ValueError as e:
        where = (f" at line {e.lineno} column {e.colno}"
                 if isinstance(e, json.JSONDecodeError) else "")
        raise ValueError(f"Keypoint set file {path} is not valid JSON: "
                         f"{getattr(e, 'msg', e)}{where}.") from None
    return KeypointSpec.from_dict(fields, source=f"Keypoint set file {path}")


def save_keypoint_spec(spec, path):
    """Writes ``spec`` (a name, file, dict or spec) as a keypoint-set file, atomically."""
    from keras_dpn.core import io_utils
    spec = get_keypoint_spec(spec)
    with io_utils.atomic_file(os.fspath(path), "w") as f:
        json.dump(spec.to_dict(), f, indent=1)
        f.write("\n")
    return os.fspath(path)


def get_keypoint_spec(keypoints, source=None) -> KeypointSpec:
    """The keypoint set ``keypoints`` names.

    Args:
        keypoints: ``"coco"`` / ``"mpii"``, a path to a keypoint-set ``.json``
            file, a dict of its fields (:meth:`KeypointSpec.to_dict`), or a
            :class:`KeypointSpec` (passed through).
        source: where a dict came from, named in its errors.

    Raises:
        ValueError: one line: an unknown name, or a file / dict that is not a
            valid keypoint set (naming the file and the field).
    """
    if isinstance(keypoints, KeypointSpec):
        return keypoints
    if isinstance(keypoints, dict):
        return KeypointSpec.from_dict(keypoints, source=source)
    if isinstance(keypoints, (str, os.PathLike)):
        text = os.fspath(keypoints)
        if text in _REGISTRY:
            return _REGISTRY[text]
        if text.lower().endswith(".json") or os.path.isfile(text):
            return load_keypoint_spec(text)
    raise ValueError(
        f"Unknown keypoint set. Expected one of {sorted(_REGISTRY)}, a keypoint-set .json "
        f"file, a dict of its fields or a KeypointSpec. Received: {keypoints!r}")


def keypoint_source(keypoints):
    """Where a ``keypoints`` argument comes from, for messages: a file, a built-in set."""
    if isinstance(keypoints, (str, os.PathLike)):
        text = os.fspath(keypoints)
        return f"built-in {text!r}" if text in _REGISTRY else f"from {text}"
    return "given"


def check_keypoint_count(spec, count, count_from, spec_from=None):
    """Raises when the keypoint set ``spec`` has not ``count`` joints.

    Args:
        spec: the :class:`KeypointSpec`.
        count: the joint count of the other side (shards, a model).
        count_from: what holds ``count``, e.g. ``"the model DPN4_32"``.
        spec_from: where the set came from, e.g. ``"from body12.json"``.

    Raises:
        ValueError: one line with both counts and where each came from.
    """
    if spec.num_keypoints != count:
        where = f" ({spec_from})" if spec_from else ""
        raise ValueError(f"Keypoint count mismatch: the keypoint set {spec.name!r}{where} has "
                         f"{spec.num_keypoints} joints but {count_from} has {count}.")
    return spec
