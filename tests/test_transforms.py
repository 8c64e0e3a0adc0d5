"""Crop geometry against an independent reading of the HRNet reference."""

import math

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dpn.core import transforms as T


def reference_affine(center, scale, rot, output_size_hw, inv=False):
    """HRNet's get_affine_transform, re-derived with cv2.getAffineTransform."""
    out_h, out_w = output_size_hw
    src_w = scale[0]
    r = math.radians(rot)

    def get_dir(p):
        return np.array([p[0] * math.cos(r) - p[1] * math.sin(r),
                         p[0] * math.sin(r) + p[1] * math.cos(r)])

    def third(a, b):
        d = a - b
        return b + np.array([-d[1], d[0]])

    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = center
    src[1] = np.asarray(center) + get_dir([0, -0.5 * src_w])
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + np.array([0, -0.5 * out_w])
    src[2] = third(src[0], src[1])
    dst[2] = third(dst[0], dst[1])
    return cv2.getAffineTransform(dst, src) if inv else cv2.getAffineTransform(src, dst)


def reference_box2cs(box, aspect, pad=1.25):
    x, y, w, h = box
    c = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    return c, np.array([w, h]) * pad


@pytest.mark.parametrize("box", [[10, 20, 30, 60], [5, 5, 200, 40], [0, 0, 48, 64], [3.5, 7.25, 1.0, 1.0]])
def test_box_to_center_scale_matches_reference(box):
    c, s = T.box_to_center_scale(box, 192 / 256)
    rc, rs = reference_box2cs(box, 192 / 256)
    np.testing.assert_allclose(c, rc, rtol=1e-6)
    np.testing.assert_allclose(s, rs, rtol=1e-6)
    cb, sb = T.box_to_center_scale(np.array([box, box]), 192 / 256)
    np.testing.assert_allclose(sb[1], rs, rtol=1e-6)
    ct, st = T.box_to_center_scale_tf(tf.constant(box, tf.float32), 192 / 256)
    np.testing.assert_allclose(ct.numpy(), rc, rtol=1e-6)
    np.testing.assert_allclose(st.numpy(), rs, rtol=1e-5)


@pytest.mark.parametrize("rot", [0.0, 30.0, -75.0, 180.0])
@pytest.mark.parametrize("inv", [False, True])
def test_affine_matches_reference_numpy_and_tf(rot, inv):
    center, scale, size = np.array([320.5, 211.0]), np.array([150.0, 200.0]), (256, 192)
    ref = reference_affine(center, scale, rot, size, inv)
    m = T.get_affine_transform(center, scale, rot, size, inverse=inv)
    np.testing.assert_allclose(m, ref, rtol=1e-4, atol=1e-3)
    mt = T.get_affine_transform_tf(center, scale, rot, size, inverse=inv).numpy()
    np.testing.assert_allclose(mt, ref, rtol=1e-4, atol=1e-3)


def test_affine_inverse_and_points():
    m = T.get_affine_transform([100, 80], [60, 80], 25.0, (64, 48))
    mi = T.get_affine_transform([100, 80], [60, 80], 25.0, (64, 48), inverse=True)
    pts = np.random.default_rng(0).uniform(0, 200, (10, 2))
    np.testing.assert_allclose(T.affine_transform_points(T.affine_transform_points(pts, m), mi),
                               pts, atol=1e-9)
    np.testing.assert_allclose(T.affine_transform_points_tf(pts, m).numpy(),
                               T.affine_transform_points(pts, m), rtol=1e-5, atol=1e-3)
    # Center goes to the crop center.
    np.testing.assert_allclose(T.affine_transform_points([[100, 80]], m), [[24, 32]], atol=1e-9)


def test_compose_and_flip_tf_match_numpy():
    a = T.get_affine_transform([50, 40], [30, 40], 10, (64, 48))
    f = T.flip_matrix(120)
    ref = T.compose_affine(a, f)
    got = T.compose_affine_tf(tf.constant(a, tf.float32), T.flip_matrix_tf(120)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_tf_warp_matches_cv2_warp_affine():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (120, 160, 3)).astype(np.uint8)
    center, scale = T.box_to_center_scale([40, 20, 50, 70], 192 / 256)
    for rot in (0.0, 33.0):
        ref = cv2.warpAffine(img.astype(np.float32), T.get_affine_transform(center, scale, rot, (256, 192)),
                             (192, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        inv = T.get_affine_transform_tf(center, scale, rot, (256, 192), inverse=True)
        got = T.warp_image_tf(tf.constant(img), inv, (256, 192)).numpy()
        # Interior pixels agree to interpolation rounding: OpenCV 4.x weights with
        # 5-bit fixed point (median 0.67 on this noise image), 5.x exactly (~0).
        diff = np.abs(got[2:-2, 2:-2] - ref[2:-2, 2:-2])
        median_bound = 0.6 if int(cv2.__version__.split(".")[0]) >= 5 else 0.8
        assert np.median(diff) < median_bound and np.mean(diff) < 1.5, (
            np.median(diff), np.mean(diff))
    crop = T.crop_image(img, center, scale, (256, 192))
    assert crop.shape == (256, 192, 3) and crop.dtype == np.uint8


def test_normalize_image_numpy_and_tf():
    x = np.array([[[0, 128, 255]]], np.uint8)
    ref = (x / 255.0 - np.array(T.IMAGENET_MEAN)) / np.array(T.IMAGENET_STD)
    np.testing.assert_allclose(T.normalize_image(x), ref, rtol=1e-5)
    np.testing.assert_allclose(T.normalize_image(tf.constant(x)).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(T.normalize_image(x / 255.0), ref, rtol=1e-5)
    assert T.normalize_image(x).dtype == np.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="box"):
        T.box_to_center_scale([1, 2, 3], 0.75)
    with pytest.raises(ValueError, match="aspect_ratio"):
        T.box_to_center_scale([1, 2, 3, 4], 0)
    with pytest.raises(ValueError, match="output_size"):
        T.get_affine_transform([0, 0], [1, 1], 0, (1, 2, 3))
    with pytest.raises(ValueError, match="channels"):
        T.normalize_image(np.zeros((2, 2, 4), np.uint8))
