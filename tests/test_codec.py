"""HeatmapCodec against literal transcriptions of the HRNet reference formulas."""

import numpy as np
import pytest
import tensorflow as tf

from keras_dpn.core import transforms as T
from keras_dpn.core.codec import HeatmapCodec, flip_back, merge_flip
from keras_dpn.core.keypoints import COCO_17, MPII_16


def reference_generate_target(joints, joints_vis, image_size_wh, heatmap_size_wh, sigma):
    """HRNet JointsDataset.generate_target (gaussian), written out as loops."""
    k = joints.shape[0]
    target_weight = np.ones((k,), np.float32)
    target_weight[:] = joints_vis
    target = np.zeros((k, heatmap_size_wh[1], heatmap_size_wh[0]), np.float32)
    tmp_size = sigma * 3
    for j in range(k):
        stride = np.asarray(image_size_wh) / np.asarray(heatmap_size_wh)
        mu_x = int(joints[j][0] / stride[0] + 0.5)
        mu_y = int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= heatmap_size_wh[0] or ul[1] >= heatmap_size_wh[1] or br[0] < 0 or br[1] < 0:
            target_weight[j] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
        g_x = max(0, -ul[0]), min(br[0], heatmap_size_wh[0]) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], heatmap_size_wh[1]) - ul[1]
        img_x = max(0, ul[0]), min(br[0], heatmap_size_wh[0])
        img_y = max(0, ul[1]), min(br[1], heatmap_size_wh[1])
        if target_weight[j] > 0.5:
            target[j][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
    return np.transpose(target, (1, 2, 0)), target_weight


def reference_final_preds(heatmaps_bkhw, center, scale, heatmap_hw):
    """HRNet get_max_preds + get_final_preds (post-process) + transform_preds."""
    b, k, h, w = heatmaps_bkhw.shape
    flat = heatmaps_bkhw.reshape(b, k, -1)
    idx = np.argmax(flat, 2).reshape(b, k, 1)
    maxvals = np.amax(flat, 2).reshape(b, k, 1)
    preds = np.tile(idx, (1, 1, 2)).astype(np.float32)
    preds[:, :, 0] = preds[:, :, 0] % w
    preds[:, :, 1] = np.floor(preds[:, :, 1] / w)
    preds *= np.tile(np.greater(maxvals, 0.0), (1, 1, 2)).astype(np.float32)
    for n in range(b):
        for p in range(k):
            hm = heatmaps_bkhw[n][p]
            px = int(np.floor(preds[n][p][0] + 0.5))
            py = int(np.floor(preds[n][p][1] + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
                preds[n][p] += np.sign(diff) * .25
    out = preds.copy()
    for i in range(b):
        inv = T.get_affine_transform(center[i], scale[i], 0, heatmap_hw, inverse=True)
        out[i] = T.affine_transform_points(preds[i], inv)
    return preds, out, maxvals[..., 0]


@pytest.mark.parametrize("sigma", [2.0, 1.5, 3.0])
@pytest.mark.parametrize("sizes", [((256, 192), (64, 48)), ((256, 256), (64, 64)), ((384, 288), (96, 72))])
def test_encode_matches_reference(sigma, sizes):
    input_size, heatmap_size = sizes
    rng = np.random.default_rng(int(sigma * 10) + heatmap_size[0])
    k = 40
    # Joints inside, near and far outside the crop, and some invisible.
    joints = rng.uniform(-60, max(input_size) + 60, (k, 2))
    joints[:4] = [[0, 0], [input_size[1] - 1, input_size[0] - 1], [-1.9, 5], [3, -30]]
    vis = (rng.uniform(size=k) > 0.2).astype(np.float32)
    ref_hm, ref_w = reference_generate_target(joints, vis, input_size[::-1], heatmap_size[::-1], sigma)
    codec = HeatmapCodec(input_size, heatmap_size, sigma)
    hm, w = codec.encode(joints, vis)
    np.testing.assert_array_equal(w, ref_w)
    np.testing.assert_allclose(hm, ref_hm, atol=1e-6)
    hm_tf, w_tf = codec.encode_tf(tf.constant(joints, tf.float32), tf.constant(vis))
    np.testing.assert_array_equal(w_tf.numpy(), ref_w)
    np.testing.assert_allclose(hm_tf.numpy(), ref_hm, atol=1e-6)


def test_encode_tf_batched_and_far_values():
    codec = HeatmapCodec()
    joints = np.array([[[10.0, 10.0], [1e12, -1e12]], [[100.0, 200.0], [-5.0, 3.0]]], np.float32)
    vis = np.ones((2, 2), np.float32)
    hm, w = codec.encode_tf(joints, vis)
    assert hm.shape == (2, 64, 48, 2)
    for i in range(2):
        ref_hm, ref_w = codec.encode(joints[i], vis[i])
        np.testing.assert_allclose(hm[i].numpy(), ref_hm, atol=1e-6)
        np.testing.assert_array_equal(w[i].numpy(), ref_w)


def test_target_weight_rules():
    codec = HeatmapCodec()
    kp = np.array([[50, 50], [50, 50], [-30, 50], [-20, 50], [192 + 25, 10], [192 + 20, 10]], np.float32)
    _, w = codec.encode(kp, [1, 0, 1, 1, 1, 1])
    # Invisible -> 0. x=-30 -> mu=-7, br=0 -> not < 0 -> kept (patch touches nothing visible
    # but the reference keeps it); x=-20 -> mu=-4, kept. Right side: mu=54 -> ul=48 >= 48 -> 0.
    assert w.tolist() == [1, 0, 1, 1, 0, 1]
    _, w = codec.encode([[-31 * 4.0, 0]], [1])
    assert w.tolist() == [0]


@pytest.mark.parametrize("unbiased,tolerance", [(True, 1.0), (False, 2.0)])
def test_round_trip_sub_pixel(unbiased, tolerance):
    """encode -> decode -> image: within 1 input px (unbiased), stride / 2 (reference)."""
    codec = HeatmapCodec((256, 192), (64, 48), sigma=2.0, unbiased=unbiased)
    rng = np.random.default_rng(3)
    k = 17
    errs = []
    for trial in range(20):
        kp = rng.uniform(12, [180, 244], (k, 2))  # sub-pixel, away from the border
        hm, w = codec.encode(kp, np.ones(k))
        assert w.min() == 1
        coords, maxvals = codec.decode(hm[None])
        errs.append(np.abs(coords[0] * codec.stride - kp).max())
        # Through the crop: image points -> crop -> heatmaps -> decode_to_image.
        center, scale = np.array([300.0, 200.0]), np.array([150.0, 200.0])
        m = T.get_affine_transform(center, scale, 0, codec.input_size)
        mi = T.get_affine_transform(center, scale, 0, codec.input_size, inverse=True)
        img_pts = T.affine_transform_points(kp, mi)
        hm2, _ = codec.encode(T.affine_transform_points(img_pts, m), np.ones(k))
        out = codec.decode_to_image(hm2[None], center[None], scale[None])
        err_img = np.abs(out[0, :, :2] - img_pts).max() * (codec.input_size[1] / scale[0])
        errs.append(err_img)
    assert max(errs) <= tolerance + 1e-4, max(errs)


def test_decode_matches_reference_on_random_heatmaps():
    rng = np.random.default_rng(5)
    hm = rng.uniform(-0.1, 1, (3, 64, 48, 17)).astype(np.float32)
    hm[0, :, :, 3] = -1  # no positive maximum -> (0, 0)
    hm[1, 0, 0, 4] = 5  # peak on the border -> no quarter offset
    hm[2, 1, 10, 5] = 5  # row 1: the reference's strict 1 < py test
    center = rng.uniform(100, 400, (3, 2))
    scale = rng.uniform(50, 300, (3, 2))
    ref_coords, ref_img, ref_max = reference_final_preds(np.transpose(hm, (0, 3, 1, 2)), center,
                                                         scale, (64, 48))
    codec = HeatmapCodec()
    coords, maxvals = codec.decode(hm)
    np.testing.assert_allclose(coords, ref_coords)
    np.testing.assert_allclose(maxvals, ref_max)
    assert coords[0, 3].tolist() == [0, 0] and coords[2, 5].tolist() == [10, 1]
    img = codec.decode_to_image(hm, center, scale)
    np.testing.assert_allclose(img[..., :2], ref_img, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(img[..., 2], ref_max)
    c_tf, m_tf = codec.decode_tf(tf.constant(hm))
    np.testing.assert_allclose(c_tf.numpy(), ref_coords)
    np.testing.assert_allclose(m_tf.numpy(), ref_max)
    img_tf = codec.decode_to_image_tf(tf.constant(hm), tf.constant(center, tf.float32),
                                      tf.constant(scale, tf.float32))
    np.testing.assert_allclose(img_tf.numpy(), img, rtol=1e-5, atol=1e-2)


def test_flip_back_matches_reference():
    rng = np.random.default_rng(7)
    hm = rng.uniform(size=(2, 64, 48, 17)).astype(np.float32)
    # Reference: NCHW, flip W, swap pairs, then output[:, :, :, 1:] = output[:, :, :, :-1].
    ref = np.transpose(hm, (0, 3, 1, 2))[:, :, :, ::-1].copy()
    for a, b in COCO_17.flip_pairs:
        ref[:, [a, b]] = ref[:, [b, a]]
    ref[:, :, :, 1:] = ref.copy()[:, :, :, :-1]
    ref = np.transpose(ref, (0, 2, 3, 1))
    np.testing.assert_array_equal(flip_back(hm, COCO_17.flip_index), ref)
    np.testing.assert_array_equal(flip_back(tf.constant(hm), COCO_17.flip_index).numpy(), ref)
    merged = merge_flip(hm, hm, COCO_17.flip_index)
    np.testing.assert_allclose(merged, (hm + ref) / 2)


def _partners_by_name(names):
    """Left/right partner of every joint from its name alone (left_x / right_x, l_x / r_x)."""
    def other(name):
        for a, b in (("left_", "right_"), ("l_", "r_"), ("right_", "left_"), ("r_", "l_")):
            if name.startswith(a):
                return b + name[len(a):]
        return name
    return [names.index(other(n)) for n in names]


def _flip_mismatches(spec, flip_index, shift=True, tensor=False):
    """Joints whose flipped-back heatmap peak is not where the unflipped one is.

    Every joint sits on its own heatmap pixel (x = 4u, so the Gaussian peaks
    exactly at u). The mirrored crop is built from the joint *names* (its
    joint j is the partner of j, at x -> W - 1 - x), never from the spec's
    flip pairs, so a wrong pair in the spec moves a peak. The mirror puts
    the peak at 48 - u, mirroring back gives u - 1, and only the reference's
    one-pixel shift to the right returns it to u: no shift, or a shift the
    other way, moves every peak.
    """
    codec = HeatmapCodec((256, 192), (64, 48))
    k = spec.num_keypoints
    u = 3 + (np.arange(k) * 7) % 42        # distinct columns in 3..44
    v = 4 + np.arange(k) * 3               # distinct rows
    kp = np.stack([4.0 * u, 4.0 * v], 1)
    partner = _partners_by_name(spec.names)
    kp_mirror = kp[partner].copy()
    kp_mirror[:, 0] = 191 - kp_mirror[:, 0]
    hm, _ = codec.encode(kp, np.ones(k))
    hm_mirror, _ = codec.encode(kp_mirror, np.ones(k))
    x = tf.constant(hm_mirror[None]) if tensor else hm_mirror[None]
    back = np.asarray(flip_back(x, flip_index, shift=shift))[0]
    merged = np.asarray(merge_flip(hm[None], hm_mirror[None], flip_index, shift=shift))[0]
    wrong = []
    for j in range(k):
        peak = np.unravel_index(np.argmax(back[..., j]), back.shape[:2])
        # Averaged with the unflipped heatmap (the flip test) the two peaks coincide: 1.0.
        if peak != (v[j], u[j]) or merged[v[j], u[j], j] != 1.0:
            wrong.append(spec.names[j])
    return wrong


@pytest.mark.parametrize("spec", [COCO_17, MPII_16], ids=lambda s: s.name)
def test_flip_back_returns_every_joint_to_its_pixel(spec):
    assert _flip_mismatches(spec, spec.flip_index) == []
    assert _flip_mismatches(spec, spec.flip_index, tensor=True) == []
    # The check can fail: a pair table with one wrong pair, and a missing or
    # reversed shift, move peaks.
    a, b = spec.flip_pairs[0]
    c, d = spec.flip_pairs[1]
    wrong_pair = list(spec.flip_index)
    wrong_pair[a], wrong_pair[b], wrong_pair[c], wrong_pair[d] = c, d, a, b
    assert set(_flip_mismatches(spec, wrong_pair)) == {spec.names[i] for i in (a, b, c, d)}
    assert len(_flip_mismatches(spec, spec.flip_index, shift=False)) == spec.num_keypoints


def test_bad_arguments():
    with pytest.raises(ValueError, match="input_size"):
        HeatmapCodec(input_size=(256,))
    with pytest.raises(ValueError, match="sigma"):
        HeatmapCodec(sigma=0)
    with pytest.raises(ValueError, match="visible"):
        HeatmapCodec().encode(np.zeros((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="heatmaps"):
        HeatmapCodec().decode(np.zeros((64, 48)))
    with pytest.raises(ValueError, match="center"):
        HeatmapCodec().decode_to_image(np.zeros((2, 64, 48, 1)), np.zeros((1, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="flip_index"):
        flip_back(np.zeros((1, 4, 4, 3)), [1, 0])
