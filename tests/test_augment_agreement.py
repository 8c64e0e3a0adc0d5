"""The two executors of keras_dpn.data.augment agree, and agree with the reference.

The training augmentation's rule is written once (``Augment``) and run by a
TensorFlow executor (``PersonParser``, inside tf.data) and a numpy one
(``PersonCrops``). Fed the same draws, both must give the same windows,
flips, half-body choices and affine matrices (1e-5), on every person of the
bundled COCO sample and on synthetic people made to reach every branch (few
joints, one half of the body missing, flat bodies, clipped rotations and
scales). Both are also checked against a per-person transcription of the
HRNet reference (``JointsDataset.__getitem__`` / ``half_body_transform``,
``get_affine_transform``'s three points) written here with plain Python
branches, so a slip in the shared rule fails too, not only a difference
between the executors.
"""

import dataclasses

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dpn.core import transforms as T
from keras_dpn.core.keypoints import get_keypoint_spec
from keras_dpn.data import AugmentConfig, PersonCrops, PersonParser, read_coco
from keras_dpn.data.augment import Draws, NumpyAugment, TFAugment

INPUT, HEATMAP = (128, 96), (32, 24)
# Not the defaults: every branch taken often, and factors other than 0.3 / 40.
BUSY = AugmentConfig(scale_factor=0.35, rotation_factor=45.0, rotation_prob=0.8, flip_prob=0.5,
                     half_body_prob=0.7, half_body_min_joints=5)


@pytest.fixture(scope="module")
def coco(sample_dir):
    return (str(sample_dir / "coco" / "annotations" / "person_keypoints_sample.json"),
            str(sample_dir / "coco" / "images"))


def _sample_people(coco):
    """Joints, visibility, box windows and image widths of every person of the sample."""
    entries, _ = read_coco(*coco)
    kp, centers, scales, widths = [], [], [], []
    for entry in entries:
        for person in entry["people"]:
            kp.append(np.asarray(person["keypoints"], np.float64))
            c, s = T.box_to_center_scale(person["bbox"], INPUT[1] / INPUT[0])
            centers.append(c)
            scales.append(s)
            widths.append(entry["width"])
    kp = np.stack(kp)
    return (kp[..., :2], np.minimum(kp[..., 2], 1.0), np.stack(centers).astype(np.float64),
            np.stack(scales).astype(np.float64), np.array(widths, np.float64))


def _synthetic_people(spec, rng, n=400):
    """People of ``spec`` with 0..K labelled joints, sometimes a whole half missing,
    sometimes flat (all joints on one row or one column)."""
    k = spec.num_keypoints
    joints = rng.uniform(20, 600, (n, k, 2))
    labelled = np.arange(k)[None] < rng.integers(0, k + 1, (n, 1))
    labelled = np.take_along_axis(labelled, rng.permuted(np.tile(np.arange(k), (n, 1)), axis=1), 1)
    upper, lower = list(spec.upper_body), list(spec.lower_body)
    labelled[0::7, upper] = False   # only the lower body
    labelled[3::7, lower] = False   # only the upper body
    labelled[5::11, :] = True
    joints[5::11, :, 1] = 300.0     # flat: no height
    joints[6::11, :, 0] = 250.0     # thin: no width
    centers = rng.uniform(100, 500, (n, 2))
    scales = rng.uniform(50, 400, (n, 1)) * np.array([[1.0, INPUT[0] / INPUT[1]]])
    widths = rng.integers(300, 900, n).astype(np.float64)
    return joints, labelled.astype(np.float64), centers, scales, widths


def _draws(seed, n, rotation_scale=1.0):
    """Six draws per person, float32 values (what TensorFlow draws), as float64."""
    rng = np.random.default_rng(seed)

    def as_float32(x):
        return x.astype(np.float32).astype(np.float64)

    def u():
        return as_float32(rng.uniform(size=n))

    def g(s=1.0):
        return as_float32(rng.standard_normal(n) * s)

    # Normal draws up to 3 sigma and beyond reach the clips of scale and rotation.
    return Draws(half_body=u(), upper=g(), scale=g(1.5), rotate=u(),
                 rotation=g(rotation_scale), flip=u())


# ---------------------------------------------------------------- reference
def _reference(config, spec, draws, joints, visible, center, scale, width, i):
    """Person ``i`` by the reference's per-person branches, in float64 Python.

    Returns ``(center, scale, rotation, flip, half_body, forward, inverse)``.
    """
    d = {name: float(getattr(draws, name)[i]) for name in Draws._fields}
    joints, visible = joints[i], visible[i] > 0
    center, scale = center[i].copy(), scale[i].copy()
    half = False
    if (visible.sum() > config.half_body_min_joints and d["half_body"] < config.half_body_prob):
        # lib/dataset/JointsDataset.py, half_body_transform
        upper = [j for j in spec.upper_body if visible[j]]
        lower = [j for j in spec.lower_body if visible[j]]
        chosen = upper if (d["upper"] < 0.5 and len(upper) > 2) or len(lower) <= 2 else lower
        if len(chosen) >= 2:
            pts = joints[chosen]
            w, h = pts.max(0) - pts.min(0)
            ar = INPUT[1] / INPUT[0]
            if w > ar * h:
                h = w / ar
            else:
                w = h * ar
            center, scale, half = pts.mean(0), np.array([w, h]) * 1.5, True
    sf, rf = config.scale_factor, config.rotation_factor
    scale = scale * min(max(d["scale"] * sf + 1.0, 1.0 - sf), 1.0 + sf)
    rotation = min(max(d["rotation"] * rf, -2.0 * rf), 2.0 * rf) \
        if d["rotate"] <= config.rotation_prob else 0.0
    flip = d["flip"] < config.flip_prob
    # The image, the joints and the center are mirrored, then cropped.
    crop_center = np.array([width[i] - 1.0 - center[0], center[1]]) if flip else center
    forward = T.get_affine_transform(crop_center, scale, rotation, INPUT)
    inverse = T.get_affine_transform(crop_center, scale, rotation, INPUT, inverse=True)
    if flip:
        forward = T.compose_affine(forward, T.flip_matrix(width[i]))
        inverse = T.compose_affine(T.flip_matrix(width[i]), inverse)
    return center, scale, rotation, flip, half, forward, inverse


# ----------------------------------------------------------------- executors
def _run(executor, draws, joints, visible, center, scale, width):
    """One executor's sample and matrices, as numpy."""
    s = executor.sample(draws, joints, visible, center, scale)
    forward, inverse = executor.matrices(s.center, s.scale, s.rotation, s.flip, width)
    moved, vis = executor.crop_joints(joints, visible, forward, s.flip)
    return {k: np.asarray(v) for k, v in
            dict(center=s.center, scale=s.scale, rotation=s.rotation, flip=s.flip,
                 half_body=s.half_body, forward=forward, inverse=inverse, joints=moved,
                 visible=vis).items()}


def _close(name, a, b, i=None, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol,
                               err_msg=name if i is None else f"{name} of person {i}")


def _close_affine(name, a, b):
    """Matrices equal to 1e-5 of their size: the linear part relative to its largest
    entry, the shift relative to what it is made of (the linear part times image
    coordinates of up to 1000 px), where float32 cancels up to 3e-4 px."""
    linear = np.abs(b[..., :2]).max((-2, -1))
    np.testing.assert_array_less(np.abs(a[..., :2] - b[..., :2]).max((-2, -1)),
                                 1e-5 * linear, err_msg=name)
    np.testing.assert_array_less(np.abs(a[..., 2] - b[..., 2]).max(-1),
                                 1e-5 * (1000.0 * linear + np.abs(b[..., 2]).max(-1)),
                                 err_msg=name)


def _compare(config, spec, numpy_executor, draws, joints, visible, center, scale, width,
             check_reference=True):
    """Both executors (and the reference) on the same people and draws; what they chose."""
    tf_out = _run(TFAugment(config, spec, INPUT), draws, joints, visible, center, scale, width)
    np_out = _run(numpy_executor, draws, joints, visible, center, scale, width)
    for name in ("flip", "half_body", "visible"):
        np.testing.assert_array_equal(tf_out[name], np_out[name], err_msg=name)
    for name in ("center", "scale", "rotation"):
        _close(name, tf_out[name], np_out[name])
    for name in ("forward", "inverse"):
        _close_affine(name, tf_out[name], np_out[name])
    # Crop pixels, from the forward matrix: float32 rounds to 4e-4 px here.
    _close("joints", tf_out["joints"], np_out["joints"], atol=2e-3)
    if check_reference:
        config = config.resolved(spec)
        for i in range(len(joints)):
            ref = _reference(config, spec, draws, joints, visible, center, scale, width, i)
            for name, value in zip(("center", "scale", "rotation"), ref[:3]):
                _close(name, np_out[name][i], value, i)
            assert (np_out["flip"][i], np_out["half_body"][i]) == ref[3:5], i
            _close("forward", np_out["forward"][i], ref[5], i)
            _close("inverse", np_out["inverse"][i], ref[6], i)
    return np_out


@pytest.mark.parametrize("config", [AugmentConfig(), BUSY], ids=["reference", "busy"])
def test_executors_agree_on_the_sample(coco, config):
    spec = get_keypoint_spec("coco")
    people = _sample_people(coco)
    n = len(people[0])
    assert n == 124
    seen = {"flip": 0, "half_body": 0, "upper": 0, "rotated": 0}
    for seed in range(6):
        draws = _draws(seed, n)
        out = _compare(config, spec, NumpyAugment(config, spec, INPUT), draws, *people)
        seen["flip"] += out["flip"].sum()
        seen["half_body"] += out["half_body"].sum()
        seen["upper"] += (out["half_body"] & (draws.upper < 0.5)).sum()
        seen["rotated"] += (out["rotation"] != 0).sum()
    # Every branch was compared, many times.
    assert min(seen.values()) > 20, seen


@pytest.mark.parametrize("dataset", ["coco", "mpii"])
@pytest.mark.parametrize("config", [AugmentConfig(half_body_prob=1.0), BUSY],
                         ids=["always_half_body", "busy"])
def test_executors_agree_on_synthetic_people(dataset, config):
    spec = get_keypoint_spec(dataset)
    rng = np.random.default_rng(11)
    people = _synthetic_people(spec, rng)
    draws = _draws(4, len(people[0]), rotation_scale=2.5)
    out = _compare(config, spec, NumpyAugment(config, spec, INPUT), draws, *people)
    rotation = np.abs(out["rotation"])
    assert (rotation == 2 * config.rotation_factor).sum() > 10  # clipped rotations met
    assert out["half_body"].sum() > 50 and (~out["half_body"]).sum() > 50


def test_parser_and_person_crops_run_the_executors(coco, monkeypatch):
    """The users' wiring: PersonParser's seeded draws through the numpy executor give
    its windows; PersonCrops fed those draws gives the parser's targets and crops."""
    spec = get_keypoint_spec("coco")
    joints, visible, center, scale, width = _sample_people(coco)
    parser = PersonParser("coco", input_size=INPUT, heatmap_size=HEATMAP, augment=BUSY)
    seed = tf.constant([3, 4], tf.int64)
    c, s, r, f = (t.numpy() for t in parser.sample_augmentation(
        tf.constant(joints, tf.float32), tf.constant(visible, tf.float32),
        tf.constant(center, tf.float32), tf.constant(scale, tf.float32), seed))
    draws = Draws(*(np.asarray(d, np.float64) for d in parser.augment.draws(seed, [len(c)])))
    expected = NumpyAugment(BUSY, spec, INPUT).sample(draws, joints, visible, center, scale)
    for name, got in zip(("center", "scale", "rotation"), (c, s, r)):
        _close(name, got, getattr(expected, name))
    np.testing.assert_array_equal(f, expected.flip)

    crops = PersonCrops(*coco, batch_size=16, input_size=INPUT, heatmap_size=HEATMAP,
                        augment=BUSY, shuffle=False)
    first = slice(0, 16)
    batch = Draws(*(d[first] for d in draws))
    monkeypatch.setattr(crops.augment, "draws", lambda rng, shape: batch)
    images, heatmaps, weight = crops[0]
    cs, ss, rs, fs = parser.sample_augmentation(joints[first], visible[first], center[first],
                                                scale[first], None, draws=batch)
    moved, vis, _ = parser.crop_geometry(joints[first], visible[first], cs, ss, rs, fs,
                                         width[first])
    _, want_heatmaps, want_weight = parser.targets(tf.zeros((16,) + INPUT + (3,), tf.uint8),
                                                   moved, vis)
    np.testing.assert_array_equal(weight, want_weight.numpy())
    np.testing.assert_allclose(heatmaps, want_heatmaps.numpy(), atol=1e-5)
    assert fs.numpy().any() and (rs.numpy() != 0).any()
    entries, _ = read_coco(*coco)
    paths = [e["path"] for e in entries for _ in e["people"]][first]
    for n, path in enumerate(paths):
        image = cv2.imread(path)[..., ::-1].copy()
        crop, _, _ = parser.transform(image, joints[n], visible[n], cs[n], ss[n], rs[n], fs[n])
        grey = np.abs(images[n] - crop.numpy()) * np.asarray(T.IMAGENET_STD) * 255
        assert grey.mean() < 0.5, (n, grey.mean())


class _DriftedNumpyAugment(NumpyAugment):
    """A copy of the numpy rule as crops.py had it: the half-body threshold fixed at 8."""

    def sample(self, draws, joints, visible, center, scale):
        fixed = dataclasses.replace(self.config, half_body_min_joints=8)
        saved, self.config = self.config, fixed
        try:
            return super().sample(draws, joints, visible, center, scale)
        finally:
            self.config = saved


def test_a_drifted_executor_fails_the_comparison():
    """The comparison sees a copy that drifted (``> 8`` where the config says 5)."""
    spec = get_keypoint_spec("coco")
    people = _synthetic_people(spec, np.random.default_rng(2))
    draws = _draws(5, len(people[0]))
    _compare(BUSY, spec, NumpyAugment(BUSY, spec, INPUT), draws, *people)
    with pytest.raises(AssertionError, match="half_body"):
        _compare(BUSY, spec, _DriftedNumpyAugment(BUSY, spec, INPUT), draws, *people,
                 check_reference=False)
