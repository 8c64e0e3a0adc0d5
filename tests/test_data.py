"""The input pipeline: reference agreement, synthetic dots, evaluation meta, bad input."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dpn import data
from keras_dpn.core import transforms as T
from keras_dpn.core.codec import HeatmapCodec
from keras_dpn.data.parser import PersonParser, decode_window
from keras_dpn.core.keypoints import COCO_17, KeypointSpec

# A synthetic person, 17 COCO joints in a 600 x 630 image, >= 45 px apart.
JOINTS = 1.5 * np.array([
    [200, 50], [230, 40], [170, 40], [260, 60], [140, 60], [250, 110], [150, 110], [290, 160],
    [110, 160], [320, 210], [80, 210], [235, 220], [165, 220], [245, 300], [155, 300],
    [250, 370], [150, 370]], np.float64)
LEFT = [i for i, n in enumerate(COCO_17.names) if n.startswith("left")]
RIGHT = [i for i, n in enumerate(COCO_17.names) if n.startswith("right")]
COLORS = {"left": (255, 0, 0), "right": (0, 255, 0), "center": (0, 0, 255)}


def side(j):
    return "left" if j in LEFT else "right" if j in RIGHT else "center"


def paint_person(shift=(0, 0), size=(630, 600)):
    img = np.zeros(size + (3,), np.uint8)
    joints = JOINTS + np.asarray(shift)
    for j, (x, y) in enumerate(joints):
        cv2.circle(img, (int(round(x)), int(round(y))), 6, COLORS[side(j)][::-1], -1)  # BGR
    return img, joints


def write_coco(tmp_path, images, k=17, extra_annotations=(), name="ann.json"):
    """images: list of (file_name, bgr image or None, [(bbox, keypoints (k, 3))])."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    out = {"images": [], "annotations": list(extra_annotations),
           "categories": [{"id": 1, "name": "person", "keypoints": [f"j{i}" for i in range(k)]}]}
    ann_id = 1000
    for i, (fname, img, people) in enumerate(images):
        h, w = (img.shape[:2] if img is not None else (100, 100))
        if img is not None:
            cv2.imwrite(str(img_dir / fname), img, [cv2.IMWRITE_JPEG_QUALITY, 97])
        out["images"].append({"id": i + 1, "file_name": fname, "height": h, "width": w})
        for bbox, kp in people:
            ann_id += 1
            out["annotations"].append({
                "id": ann_id, "image_id": i + 1, "bbox": list(map(float, bbox)),
                "keypoints": np.asarray(kp, float).reshape(-1).tolist(), "iscrowd": 0,
                "category_id": 1, "area": float(bbox[2] * bbox[3]),
                "num_keypoints": int((np.asarray(kp)[:, 2] > 0).sum())})
    path = tmp_path / name
    path.write_text(json.dumps(out))
    return str(path), str(img_dir)


@pytest.fixture(scope="module")
def dots_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dots")
    images = []
    for i, shift in enumerate([(0, 0), (40, 30), (-20, 50)]):
        img, joints = paint_person(shift)
        kp = np.concatenate([joints, np.full((17, 1), 2.0)], axis=1)
        box = [joints[:, 0].min() - 20, joints[:, 1].min() - 20,
               np.ptp(joints[:, 0]) + 40, np.ptp(joints[:, 1]) + 40]
        images.append((f"dots{i}.jpg", img, [(box, kp)]))
    ann, img_dir = write_coco(tmp, images)
    data.build_coco_shards(ann, img_dir, str(tmp / "shards" / "dots"), 1, num_workers=1,
                           progress=False, verbose=False)
    return str(tmp / "shards" / "dots-*.tfrecord")


@pytest.fixture(scope="module")
def sample_shards(tmp_path_factory, sample_dir):
    tmp = tmp_path_factory.mktemp("sample")
    coco = data.build_coco_shards(
        sample_dir / "coco/annotations/person_keypoints_sample.json", sample_dir / "coco/images",
        str(tmp / "coco"), 2, num_workers=1, progress=False, verbose=False)
    mpii = data.build_mpii_shards(sample_dir / "mpii/valid_sample.json", sample_dir / "mpii/images",
                                  str(tmp / "mpii"), 1, num_workers=1, progress=False, verbose=False)
    return {"coco": str(tmp / "coco-*.tfrecord"), "mpii": str(tmp / "mpii-*.tfrecord"),
            "coco_manifest": coco, "mpii_manifest": mpii, "dir": tmp}


# ----------------------------------------------------------- reference agreement
@pytest.mark.parametrize("rotation,flip", [(0.0, False), (27.0, False), (-61.0, True), (0.0, True)])
def test_transform_matches_numpy_reference(rotation, flip):
    """Crop, joints, heatmaps and target weights equal the HRNet procedure in numpy."""
    rng = np.random.default_rng(int(abs(rotation)) + flip)
    img = rng.integers(0, 255, (150, 210, 3)).astype(np.uint8)
    img = cv2.GaussianBlur(img, (7, 7), 2)  # smooth, so interpolation rounding stays small
    joints = rng.uniform(-10, 200, (17, 2))
    vis = (rng.uniform(size=17) > 0.2).astype(np.float64)
    center, scale = np.array([95.3, 70.1]), np.array([120.0, 160.0])
    parser = PersonParser("coco")
    crop, hm, w = parser.transform(tf.constant(img), tf.constant(joints, tf.float32),
                                   tf.constant(vis, tf.float32), tf.constant(center, tf.float32),
                                   tf.constant(scale, tf.float32), rotation, flip)
    # Reference: flip image, joints (x -> W - 1 - x, pairs swapped) and center, then crop.
    r_img, r_joints, r_vis, r_center = img, joints.copy(), vis.copy(), center.copy()
    if flip:
        width = img.shape[1]
        r_img = img[:, ::-1].copy()
        r_joints[:, 0] = width - 1 - r_joints[:, 0]
        for a, b in COCO_17.flip_pairs:
            r_joints[[a, b]] = r_joints[[b, a]]
            r_vis[[a, b]] = r_vis[[b, a]]
        r_center[0] = width - r_center[0] - 1
    m = T.get_affine_transform(r_center, scale, rotation, (256, 192))
    r_crop = cv2.warpAffine(r_img.astype(np.float32), m, (192, 256), flags=cv2.INTER_LINEAR)
    r_hm, r_w = HeatmapCodec().encode(T.affine_transform_points(r_joints, m), r_vis)
    np.testing.assert_array_equal(w.numpy(), r_w)
    np.testing.assert_allclose(hm.numpy(), r_hm, atol=1e-5)
    got = crop.numpy() * np.array(T.IMAGENET_STD) + np.array(T.IMAGENET_MEAN)
    diff = np.abs(got * 255.0 - r_crop)[2:-2, 2:-2]
    assert np.mean(diff) < 1.0 and np.percentile(diff, 99) < 4.0, (np.mean(diff), diff.max())


def test_half_body_and_augmentation_rates():
    """Ranges and rates of the random crop parameters, 4000 people in one draw.

    Half-body picks the upper body when a standard normal is below 0.5, as the
    reference's ``np.random.randn() < 0.5`` does: Phi(0.5) = 0.691, not 0.5.
    """
    n = 4000
    parser = PersonParser("coco", augment=data.AugmentConfig(half_body_prob=1.0))
    joints = tf.constant(np.broadcast_to(JOINTS, (n, 17, 2)), tf.float32)
    vis = tf.ones([n, 17])
    c0 = tf.constant([[300.0, 300.0]] * n)
    s0 = tf.constant([[400.0, 533.3]] * n)
    c, s, r, f = (v.numpy() for v in parser.sample_augmentation(joints, vis, c0, s0, [1, 2]))
    assert c.shape == (n, 2) and r.shape == (n,) and f.shape == (n,)
    refs = []
    for part in (JOINTS[list(COCO_17.upper_body)], JOINTS[list(COCO_17.lower_body)]):
        w, h = np.ptp(part, 0)
        w, h = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
        refs.append((part.mean(0), np.array([w, h]) * 1.5))
    dist = np.stack([np.abs(c - rc).max(1) for rc, _ in refs], 1)
    which = dist.argmin(1)
    assert dist.min(1).max() < 1e-3  # every window is one of the two half bodies
    ratio = s / np.stack([refs[w][1] for w in which])
    assert (ratio[:, 0] >= 0.7 - 1e-5).all() and (ratio[:, 0] <= 1.3 + 1e-5).all()
    np.testing.assert_allclose(ratio[:, 0], ratio[:, 1], atol=1e-4)
    # Binomial standard errors at n = 4000 are below 0.008: 0.03 is > 3.5 of them.
    assert abs(np.mean(which == 0) - 0.6915) < 0.03  # upper body: Phi(0.5)
    assert np.abs(r).max() <= 80.0 and abs(np.mean(r == 0) - 0.4) < 0.03
    assert abs(np.std(r[r != 0]) - 40 * 0.95) < 4  # N(0, 40) clipped at 2 sigma
    assert abs(np.mean(f) - 0.5) < 0.03
    # A person with 8 or fewer labelled joints never gets a half-body window.
    few = tf.constant(np.broadcast_to((np.arange(17) < 8).astype(np.float32), (n, 17)))
    c2, _, _, _ = parser.sample_augmentation(joints, few, c0, s0, [1, 2])
    np.testing.assert_array_equal(c2.numpy(), c0.numpy())


# ------------------------------------------------------------- synthetic dots
def _crop_rgb(crop):
    return crop * np.array(T.IMAGENET_STD) + np.array(T.IMAGENET_MEAN)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_dots_land_under_heatmap_peaks(dots_shards, flip_prob):
    """Random scale/rotation (+ flip): every peak sits on its own dot, L/R swapped by flips."""
    ds = data.build_dataset(dots_shards, batch_size=6, seed=11 + int(flip_prob), repeat=True,
                            deterministic=True,
                            augment=data.AugmentConfig(flip_prob=flip_prob, half_body_prob=0.0,
                                                       rotation_prob=1.0))
    checked = 0
    for images, heatmaps, weights in ds.take(2):
        for b in range(images.shape[0]):
            rgb = _crop_rgb(images[b].numpy())
            red = (rgb[..., 0] > 0.35) & (rgb[..., 1] < 0.25)
            green = (rgb[..., 1] > 0.35) & (rgb[..., 0] < 0.25)
            blue = (rgb[..., 2] > 0.35) & (rgb[..., 0] < 0.25) & (rgb[..., 1] < 0.25)
            masks = {"left": red, "right": green, "center": blue}
            for j in range(17):
                if weights[b, j] == 0:
                    continue
                hm = heatmaps[b, :, :, j].numpy()
                py, px = np.unravel_index(np.argmax(hm), hm.shape)
                if not (2 <= px < 46 and 2 <= py < 62):
                    continue
                expected = side(j)
                if flip_prob == 1.0 and expected != "center":
                    expected = "right" if expected == "left" else "left"
                win = (slice(max(0, 4 * py - 8), 4 * py + 9), slice(max(0, 4 * px - 8), 4 * px + 9))
                mask = masks[expected][win]
                assert mask.sum() >= 2, (j, expected, px, py)
                for other in masks:
                    if other != expected:
                        assert masks[other][win].sum() < mask.sum(), (j, other)
                ys, xs = np.nonzero(mask)
                cx = (xs.mean() + win[1].start) / 4.0
                cy = (ys.mean() + win[0].start) / 4.0
                assert abs(cx - px) <= 1.0 and abs(cy - py) <= 1.0, (j, cx, cy, px, py)
                checked += 1
    assert checked >= 100


def test_deterministic_with_seed(dots_shards):
    def first(seed):
        ds = data.build_dataset(dots_shards, batch_size=3, seed=seed, deterministic=True)
        return [t.numpy() for t in next(iter(ds))]

    a, b, c = first(5), first(5), first(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


# ------------------------------------------------------------ real sample data
def test_training_batches_on_sample(sample_shards):
    ds = data.build_dataset(sample_shards["coco"], batch_size=16, seed=0)
    assert int(ds.cardinality()) == 124 // 16
    images, heatmaps, weights = next(iter(ds))
    assert images.shape == (16, 256, 192, 3) and images.dtype == tf.float32
    assert heatmaps.shape == (16, 64, 48, 17) and weights.shape == (16, 17)
    assert 0.5 < float(tf.reduce_max(heatmaps)) <= 1.0
    assert set(np.unique(weights.numpy())) <= {0.0, 1.0}
    assert abs(float(tf.reduce_mean(images))) < 1.5


def test_heatmap_size_defaults_to_a_quarter_of_the_input(sample_shards):
    ds = data.build_dataset(sample_shards["coco"], batch_size=2, input_size=(64, 48), seed=0)
    images, heatmaps, _ = next(iter(ds))
    assert images.shape == (2, 64, 48, 3) and heatmaps.shape == (2, 16, 12, 17)


def _records(pattern, k=17):
    files = sorted(tf.io.gfile.glob(pattern))
    return [data.decode_example(r, k) for r in tf.data.TFRecordDataset(files)]


def _old_crops(encoded, inverse, size):
    """The previous pipeline: the whole image decoded, TensorFlow's projective warp (float)."""
    full = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
    return np.stack([T.warp_image_tf(full, inverse[i], size).numpy()
                     for i in range(inverse.shape[0])])


@pytest.mark.parametrize("size,dct_min_zoom", [((256, 192), 2.0), ((64, 48), 2.0)])
def test_window_decode_keeps_crops_and_targets(sample_shards, size, dct_min_zoom):
    """Each person through the old path (whole JPEG, projective warp) and the new one
    (the windows of all its image's people decoded once, DCT-scaled when they are big,
    OpenCV warp): crops agree to rounding, or to the DCT's smoothing; targets are
    those of a numpy transcription of the reference (same heatmap peaks)."""
    parser = PersonParser("coco", input_size=size, heatmap_size=(size[0] // 4, size[1] // 4),
                          dct_min_zoom=dct_min_zoom)
    codec = parser.codec
    diffs = {}
    for n, rec in enumerate(_records(sample_shards["coco"])[:20]):
        kp = tf.constant(rec["keypoints"])
        joints, vis = kp[..., :2], tf.minimum(kp[..., 2], 1.0)
        c0, s0 = parser.center_scale(rec)
        c, s, r, f = parser.sample_augmentation(joints, vis, c0, s0, [n, 5])
        width = int(tf.image.extract_jpeg_shape(rec["encoded"])[1])
        _, _, inverse = parser.crop_geometry(joints, vis, c, s, r, f, width)
        _, to_window = decode_window(rec["encoded"], inverse, size, dct_min_zoom)
        ratio = int(round(1.0 / float(to_window[0, 0])))
        new = parser.crop_image(rec["encoded"], inverse).numpy().astype(np.float32)
        old = _old_crops(rec["encoded"], inverse, size)
        diffs.setdefault(ratio, []).extend(np.abs(new - old).mean(axis=(1, 2, 3)))
        # Targets of the whole record path against the reference's steps in numpy.
        out = parser.parse_record_train(rec, [n, 5])
        _, heatmaps, weight = parser.targets(out["crop"], out["joints"], out["visible"])
        for i in range(int(rec["num_people"])):
            rj, rv, rc = joints[i].numpy().astype(np.float64), vis[i].numpy(), c[i].numpy()
            if f[i]:
                rj[:, 0] = width - 1 - rj[:, 0]
                rj, rv = rj[COCO_17.flip_index], rv[COCO_17.flip_index]
                rc = np.array([width - 1 - rc[0], rc[1]])
            m = T.get_affine_transform(rc, s[i].numpy(), float(r[i]), size)
            ref_hm, ref_w = codec.encode(T.affine_transform_points(rj, m), rv)
            np.testing.assert_array_equal(weight[i].numpy(), ref_w)
            got = heatmaps[i].numpy().reshape(-1, 17).argmax(0)
            want = ref_hm.reshape(-1, 17).argmax(0)
            np.testing.assert_array_equal(got[ref_w > 0], want[ref_w > 0])
    # Rounding to uint8 (what the reference's cv2 warp of a uint8 image does): < 0.5.
    assert max(diffs[1]) < 0.5, max(diffs[1])
    if size == (64, 48):
        # Big people at 64x48 read >= 4 source pixels per crop pixel: DCT-scaled.
        assert {2, 4} <= set(diffs), {k: len(v) for k, v in diffs.items()}
        assert max(max(v) for v in diffs.values()) < 12.0
        assert np.mean([d for k, v in diffs.items() if k > 1 for d in v]) < 8.0
    else:
        assert set(diffs) == {1}


def _jpeg(img, mode="RGB", **kwargs):
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).convert(mode).save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def test_unusual_images_and_windows_in_shards(tmp_path):
    """Progressive, CMYK, PNG bytes, a header size that is not the stored one, a window
    outside the image, a zero-area box: the crops of a full decode, no error."""
    rgb, joints = paint_person()
    rgb = np.ascontiguousarray(cv2.GaussianBlur(rgb, (5, 5), 2)[..., ::-1])
    kp = np.concatenate([joints, np.full((17, 1), 2.0)], axis=1)
    box = [joints[:, 0].min() - 20, joints[:, 1].min() - 20, 340, 560]
    images = {"progressive": _jpeg(rgb, progressive=True), "cmyk": _jpeg(rgb, "CMYK"),
              "png": cv2.imencode(".png", rgb[..., ::-1])[1].tobytes(),
              "wrong_size": _jpeg(rgb)}
    people = [box, [5000.0, 10.0, 40.0, 80.0], [200.0, 300.0, 0.0, 0.0]]
    path = tmp_path / "odd-00000-of-00001.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for i, (name, enc) in enumerate(images.items()):
            h, w_ = (100, 100) if name == "wrong_size" else rgb.shape[:2]
            ex = data.make_example(enc, i + 1, name, h, w_, people, np.stack([kp] * 3),
                                   [1.0] * 3, [0] * 3, [10 * i + j for j in range(3)])
            w.write(ex.SerializeToString())
    ev = data.build_dataset(str(path), training=False, batch_size=4, deterministic=True)
    zero = T.normalize_image(np.zeros((1, 1, 3), np.uint8))[0, 0]
    seen = 0
    for crops, meta in ev:
        for b in range(crops.shape[0]):
            name = list(images)[int(meta["image_id"][b]) - 1]
            which = int(meta["person_id"][b]) % 10
            inverse = T.get_affine_transform_tf(meta["center"][b:b + 1], meta["scale"][b:b + 1],
                                                tf.zeros([1]), (256, 192), inverse=True)
            old = T.normalize_image(_old_crops(images[name], inverse, (256, 192))[0] / 255.0)
            got = crops[b].numpy()
            assert np.abs(got - old).mean() < 0.01, (name, which)  # 0.5 grey levels
            if which == 1:  # outside the image: all fill
                np.testing.assert_allclose(got, np.broadcast_to(zero, got.shape), atol=1e-6)
            if which == 2:  # zero area: one colour, read at the box's point
                assert np.ptp(got.reshape(-1, 3), 0).max() < 1e-6
            seen += 1
    assert seen == 12
    train = data.build_dataset(str(path), batch_size=4, drop_remainder=False, seed=0)
    assert sum(int(x.shape[0]) for x, _, _ in train) == 12


def test_bad_dct_min_zoom():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="dct_min_zoom"):
            PersonParser("coco", dct_min_zoom=bad)


def test_grouped_arguments_are_checked():
    """build_dataset's grouped settings: each checked in one line, and an argument of the
    old loose signature names its new place (before any shard is read)."""
    for bad, match in ((dict(shuffle_buffer=-1), r"^`shuffle_buffer` must be an int >= 0\. "),
                       (dict(cycle_length=0), r"^`cycle_length` must be an int >= 1\. "),
                       (dict(num_parallel_calls=0), r"^`num_parallel_calls` must be "),
                       (dict(dct_min_zoom=float("nan")), r"^`dct_min_zoom` must be ")):
        with pytest.raises(ValueError, match=match):
            data.PipelineOptions(**bad)
    for name, value, home in (("flip_prob", 0.0, r"augment=AugmentConfig\(flip_prob=...\)"),
                              ("shuffle_buffer", 0, r"options=PipelineOptions\(shuffle_buffer"),
                              ("det_score_threshold", 0.5, r"detections=Detections\(path, "
                                                           r"score_threshold=...\)")):
        with pytest.raises(TypeError, match=home + f".*Received: {name}={value}$"):
            data.build_dataset("no-such-shards-*.tfrecord", **{name: value})
    with pytest.raises(TypeError, match="unexpected keyword argument 'flip_probability'"):
        data.build_dataset("no-such-shards-*.tfrecord", flip_probability=0.5)
    with pytest.raises(ValueError, match=r"^`augment` must be .*Received: augment='none'$"):
        data.build_dataset("no-such-shards-*.tfrecord", dataset="coco", augment="none")
    with pytest.raises(ValueError, match=r"^`options` must be .*Received: options=\{"):
        data.build_dataset("no-such-shards-*.tfrecord", options={"shuffle_buffer": 0})


def test_script_exits_with_a_live_iterator(sample_shards, tmp_path):
    """The OpenCV warp runs Python in tf.data's threads: a script that ends while an
    iterator still prefetches must exit, not wait forever at interpreter shutdown
    (without the parser's exit guard this hung or aborted in about half the runs)."""
    import subprocess
    import sys
    script = tmp_path / "live_iterator.py"
    script.write_text(
        "from keras_dpn import data\n"
        f"ds = data.build_dataset({sample_shards['coco']!r}, batch_size=16, repeat=True)\n"
        "it = iter(ds)\n"
        "next(it)\n"
        "print('done', flush=True)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


def test_mpii_training_and_eval(sample_shards):
    ds = data.build_dataset(sample_shards["mpii"], dataset="mpii", batch_size=5,
                            input_size=(256, 256), heatmap_size=(64, 64), seed=0)
    images, heatmaps, weights = next(iter(ds))
    assert images.shape == (5, 256, 256, 3) and heatmaps.shape == (5, 64, 64, 16)
    ev = data.build_dataset(sample_shards["mpii"], dataset="mpii", training=False, batch_size=8,
                            input_size=(256, 256), heatmap_size=(64, 64), deterministic=True)
    _, meta = next(iter(ev))
    rows = json.load(open(os.path.join(os.path.dirname(__file__), "..", "sample_data", "mpii",
                                       "valid_sample.json")))
    by_id = {int(p): i for i, p in enumerate(meta["person_id"].numpy())}
    for r, row in enumerate(rows):
        i = by_id[r]
        s = row["scale"]
        ref_c = np.array([row["center"][0] - 1, row["center"][1] + 15 * s - 1])
        np.testing.assert_allclose(meta["center"].numpy()[i], ref_c, rtol=1e-5)
        np.testing.assert_allclose(meta["scale"].numpy()[i], [s * 250] * 2, rtol=1e-5)
        kp = meta["keypoints"].numpy()[i]
        np.testing.assert_allclose(kp[:, :2][kp[:, 2] > 0],
                                   (np.array(row["joints"]) - 1)[np.array(row["joints_vis"]) > 0],
                                   atol=1e-4)
    with pytest.raises(ValueError, match="16"):
        data.build_dataset(sample_shards["mpii"], dataset="coco")


def test_eval_gt_boxes_meta(sample_shards, sample_dir):
    ev = data.build_dataset(sample_shards["coco"], training=False, batch_size=64,
                            deterministic=True)
    assert int(ev.cardinality()) == 2
    metas = [m for _, m in ev]
    meta = {k: np.concatenate([m[k].numpy() for m in metas]) for k in metas[0]}
    assert len(meta["image_id"]) == 124 and (meta["score"] == 1).all()
    ann = json.load(open(sample_dir / "coco/annotations/person_keypoints_sample.json"))
    by_id = {a["id"]: a for a in ann["annotations"]}
    sizes = {i["id"]: (i["height"], i["width"]) for i in ann["images"]}
    for n in range(0, 124, 7):
        a = by_id[int(meta["person_id"][n])]
        assert a["image_id"] == meta["image_id"][n]
        h, w = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        x1, y1 = max(0, x), max(0, y)
        clean = [x1, y1, min(w - 1, x1 + max(0, bw - 1)) - x1, min(h - 1, y1 + max(0, bh - 1)) - y1]
        np.testing.assert_allclose(meta["bbox"][n], clean, rtol=1e-5, atol=1e-3)
        c, s = T.box_to_center_scale(clean, 192 / 256)
        np.testing.assert_allclose(meta["center"][n], c, rtol=1e-5)
        np.testing.assert_allclose(meta["scale"][n], s, rtol=1e-5)


def test_eval_crops_match_opencv_inference_crops(sample_shards, sample_dir):
    """An evaluation crop from the shards is the crop PoseEstimator cuts (cv2.imread +
    cv2.warpAffine) to uint8 rounding: the JPEG is decoded with the same accurate IDCT,
    so the model sees in deployment the pixels it was evaluated on."""
    from keras_dpn.inference.estimator import read_image
    ev = data.build_dataset(sample_shards["coco"], training=False, batch_size=16,
                            deterministic=True, verbose=False)
    images, meta = next(iter(ev))
    crops = (images.numpy() * T.IMAGENET_STD + T.IMAGENET_MEAN) * 255.0
    ann = json.load(open(sample_dir / "coco/annotations/person_keypoints_sample.json"))
    files = {i["id"]: i["file_name"] for i in ann["images"]}
    diffs = []
    for n in range(len(crops)):
        image = read_image(str(sample_dir / "coco/images" / files[int(meta["image_id"][n])]))
        want = T.crop_image(image, meta["center"][n].numpy(), meta["scale"][n].numpy(), (256, 192))
        diffs.append(np.abs(crops[n] - want.astype(np.float32)).mean())
    # Rounding to uint8 on one side only: < 0.5 grey levels; a different IDCT gave 1.2.
    assert max(diffs) < 0.5, max(diffs)


def test_eval_detections(sample_shards, sample_dir, tmp_path):
    det_file = sample_dir / "coco/annotations/person_detections_sample.json"
    dets = json.load(open(det_file))
    ev = data.build_dataset(sample_shards["coco"], training=False, batch_size=32,
                            detections=data.Detections(str(det_file), score_threshold=0.5),
                            verbose=False)
    kept = [d for d in dets if d["score"] >= 0.5]
    assert int(ev.cardinality()) == -(-len(kept) // 32)
    scores = np.concatenate([m["score"].numpy() for _, m in ev])
    np.testing.assert_allclose(np.sort(scores), np.sort([d["score"] for d in kept]), rtol=1e-6)
    # Detections on images the shards do not hold.
    bad = tmp_path / "dets_other.json"
    bad.write_text(json.dumps(dets[:3] + [dict(dets[0], image_id=123456789)]))
    with pytest.raises(ValueError, match=r"dets_other.json.*123456789"):
        data.build_dataset(sample_shards["coco"], training=False, detections=str(bad))
    with pytest.raises(ValueError, match="no detection left"):
        data.build_dataset(sample_shards["coco"], training=False,
                           detections=data.Detections(str(det_file), score_threshold=2.0))
    missing_key = tmp_path / "dets_bad.json"
    missing_key.write_text(json.dumps([{"image_id": 785, "score": 0.9}]))
    with pytest.raises(ValueError, match=r"detection \[0\] misses key\(s\) \['bbox'\]"):
        data.build_dataset(sample_shards["coco"], training=False, detections=str(missing_key))
    with pytest.raises(ValueError, match="training=False"):
        data.build_dataset(sample_shards["coco"], detections=str(det_file))


def test_custom_keypoint_spec(tmp_path):
    spec = KeypointSpec(name="tri5", names=("a", "l", "r", "l2", "r2"),
                        flip_pairs=((1, 2), (3, 4)), skeleton=((0, 1), (0, 2)),
                        sigmas=(0.05,) * 5, upper_body=(0, 1, 2), lower_body=(3, 4))
    img = np.full((120, 160, 3), 90, np.uint8)
    kp = np.array([[80, 30, 2], [60, 50, 2], [100, 50, 2], [60, 90, 1], [100, 90, 2]], float)
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([50, 20, 60, 80], kp)])], k=5)
    data.build_coco_shards(ann, img_dir, str(tmp_path / "s" / "tri"), 1, dataset=spec,
                           num_workers=1, progress=False, verbose=False)
    ds = data.build_dataset(str(tmp_path / "s" / "tri-*.tfrecord"), dataset=spec, batch_size=1)
    _, heatmaps, weights = next(iter(ds))
    assert heatmaps.shape == (1, 64, 48, 5) and weights.shape == (1, 5)
    with pytest.raises(ValueError, match="3 x 17 = 51"):
        data.read_coco(ann, img_dir, "coco")


# ----------------------------------------------------------------- bad input
def test_malformed_annotation_files(tmp_path):
    img = np.zeros((50, 50, 3), np.uint8)
    kp = np.ones((17, 3)) * 10
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([5, 5, 20, 20], kp)])])
    good = json.load(open(ann))

    def variant(name, obj):
        p = tmp_path / name
        p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(p)

    with pytest.raises(ValueError, match="not valid JSON"):
        data.read_coco(variant("broken.json", '{"images": ['), img_dir)
    with pytest.raises(ValueError, match="does not exist"):
        data.read_coco(str(tmp_path / "nope.json"), img_dir)
    with pytest.raises(ValueError, match="missing top-level key 'annotations'"):
        data.read_coco(variant("noann.json", {"images": good["images"]}), img_dir)
    bad = json.loads(json.dumps(good))
    del bad["annotations"][0]["bbox"]
    with pytest.raises(ValueError, match=r"annotation id 1001 .* misses key\(s\) \['bbox'\]"):
        data.read_coco(variant("nobbox.json", bad), img_dir)
    bad = json.loads(json.dumps(good))
    bad["annotations"][0]["keypoints"] = bad["annotations"][0]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"annotation id 1001 .* has 48 keypoint values"):
        data.read_coco(variant("shortkp.json", bad), img_dir)
    bad = json.loads(json.dumps(good))
    del bad["images"][0]["file_name"]
    with pytest.raises(ValueError, match=r"images\[0\] misses key\(s\) \['file_name'\]"):
        data.read_coco(variant("noname.json", bad), img_dir)
    with pytest.raises(ValueError, match="joints of shape"):
        data.read_mpii(variant("mpii.json", [{"joints": [[1, 2]] * 15, "joints_vis": [1] * 15,
                                              "center": [5, 5], "scale": 1.0, "image": "a.jpg"}]),
                       img_dir)


def _mutated(tmp_path, good, change, name):
    bad = json.loads(json.dumps(good))
    change(bad)
    path = tmp_path / name
    path.write_text(json.dumps(bad))
    return str(path)


def _set(d, where, key, value):
    d[where[0]][where[1]][key] = value


# What the file holds -> the line the reader answers with (after "ann.json: ").
FIELD_FAULTS = {
    "image_id_a_list": (lambda d: _set(d, ("images", 0), "id", [1]),
                        "images[0] `id` must be an integer (image ids are integers). "
                        "Received: id=[1]"),
    "image_id_a_fraction": (lambda d: _set(d, ("images", 0), "id", 139.7),
                            "images[0] `id` must be an integer (image ids are integers). "
                            "Received: id=139.7"),
    "image_id_a_string": (lambda d: _set(d, ("images", 1), "id", "abc"),
                          "images[1] `id` must be an integer (image ids are integers). "
                          "Received: id=\"abc\""),
    "height_null": (lambda d: _set(d, ("images", 0), "height", None),
                    "images[0] (image id 1) `height` must be a non-negative integer (or "
                    "absent). Received: height=null"),
    "file_name_a_number": (lambda d: _set(d, ("images", 1), "file_name", 5),
                           "images[1] (image id 2) `file_name` must be a non-empty string. "
                           "Received: file_name=5"),
    "image_a_number": (lambda d: d["images"].__setitem__(1, 7),
                       "images[1] must be an object. Received: 7"),
    "annotation_a_number": (lambda d: d["annotations"].__setitem__(0, 5),
                            "annotations[0] must be an object. Received: 5"),
    "annotation_id_a_list": (lambda d: _set(d, ("annotations", 1), "id", [1]),
                             "annotations[1] `id` must be an integer. Received: id=[1]"),
    "duplicate_annotation_id": (lambda d: _set(d, ("annotations", 1), "id", 1001),
                                "duplicate annotation id 1001 (annotations[0] and "
                                "annotations[1])."),
    "duplicate_image_id": (lambda d: _set(d, ("images", 1), "id", 1.0),
                           "duplicate image id 1 (images[1])."),
    "annotation_image_id_a_fraction": (lambda d: _set(d, ("annotations", 0), "image_id", 1.5),
                                       "annotation id 1001 (annotations[0]) `image_id` must be "
                                       "an integer (image ids are integers). "
                                       "Received: image_id=1.5"),
    "boolean_keypoints": (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, True),
                          "annotation id 1001 (annotations[0]) `keypoints` must hold numbers "
                          "(booleans and null are not); keypoints[2] is true."),
    "null_keypoint": (lambda d: d["annotations"][1]["keypoints"].__setitem__(4, None),
                      "annotation id 1002 (annotations[1]) `keypoints` must hold numbers "
                      "(booleans and null are not); keypoints[4] is null."),
    "keypoints_a_string": (lambda d: _set(d, ("annotations", 0), "keypoints", "1 2 3"),
                           "annotation id 1001 (annotations[0]) has \"1 2 3\" keypoint values; "
                           "the keypoint spec 'coco' needs 3 x 17 = 51. Pass the matching "
                           "`dataset=`."),
    "bbox_not_numbers": (lambda d: _set(d, ("annotations", 0), "bbox", ["5", 5, 20, 20]),
                         "annotation id 1001 (annotations[0]) `bbox` must be [x, y, w, h], four "
                         "numbers. Received: bbox=[\"5\", 5, 20, 20]"),
    "iscrowd_a_string": (lambda d: _set(d, ("annotations", 0), "iscrowd", "no"),
                         "annotation id 1001 (annotations[0]) `iscrowd` must be 0 or 1. "
                         "Received: iscrowd=\"no\""),
    "area_null": (lambda d: _set(d, ("annotations", 1), "area", None),
                  "annotation id 1002 (annotations[1]) `area` must be a number. "
                  "Received: area=null"),
}


@pytest.mark.parametrize("case", sorted(FIELD_FAULTS))
def test_annotation_fields_are_type_checked(tmp_path, case):
    """Every field the reader uses, checked at the door: one line naming the file, the
    entry and the field (before: TypeError / AttributeError from inside, a float id
    truncated, booleans read as 1/0, duplicates passed)."""
    img = np.zeros((50, 50, 3), np.uint8)
    kp = np.ones((17, 3)) * 10
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([5, 5, 20, 20], kp)]),
                                         ("b.jpg", img, [([5, 5, 20, 20], kp)])])
    change, expected = FIELD_FAULTS[case]
    path = _mutated(tmp_path, json.load(open(ann)), change, "bad.json")
    with pytest.raises(ValueError) as info:
        data.read_coco(path, img_dir)
    assert str(info.value) == "bad.json: " + expected


def test_integral_float_ids_are_read_as_integers(tmp_path):
    img = np.zeros((50, 50, 3), np.uint8)
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([5, 5, 20, 20], np.ones((17, 3)) * 10)])])

    def floats(d):
        d["images"][0].update(id=1.0, height=50.0)
        d["annotations"][0].update(id=1001.0, image_id=1.0)

    entries, _ = data.read_coco(_mutated(tmp_path, json.load(open(ann)), floats, "f.json"),
                                img_dir)
    assert [(type(e["image_id"]), e["image_id"], e["height"]) for e in entries] == [(int, 1, 50)]
    assert [(type(p["id"]), p["id"]) for p in entries[0]["people"]] == [(int, 1001)]


def test_mpii_fields_are_type_checked(tmp_path):
    row = {"joints": [[10.0, 10.0]] * 16, "joints_vis": [1] * 16, "center": [20.0, 20.0],
           "scale": 0.2, "image": "a.jpg"}
    cases = [({"joints_vis": [True] + [1] * 15}, "`joints_vis` must be a list of numbers; "
                                                 "joints_vis[0] is true."),
             ({"joints": [[10.0, None]] + [[10.0, 10.0]] * 15},
              "`joints` must be a list of numbers; joints[0][1] is null."),
             ({"scale": None}, "`scale` must be a number. Received: scale=null"),
             ({"center": "20 20"}, "`center` must be a list of numbers; center is \"20 20\"."),
             ({"image": 5}, "`image` must be a non-empty file name. Received: image=5")]
    for change, expected in cases:
        path = tmp_path / "m.json"
        path.write_text(json.dumps([row, dict(row, **change)]))
        with pytest.raises(ValueError) as info:
            data.read_mpii(str(path), str(tmp_path))
        image = change.get("image", "a.jpg")
        assert str(info.value) == f"m.json: row 1 (image {image}) {expected}"


def test_malformed_file_from_the_command_line(tmp_path, capsys):
    """Before: `"id": [1]` gave a TypeError traceback from inside the builder."""
    from keras_dpn.data.cli import main
    img = np.zeros((50, 50, 3), np.uint8)
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([5, 5, 20, 20], np.ones((17, 3)) * 10)])])
    path = _mutated(tmp_path, json.load(open(ann)), lambda d: _set(d, ("images", 0), "id", [1]),
                    "bad.json")
    assert main("coco", ["--annotations", path, "--images", img_dir, "--output",
                         str(tmp_path / "s" / "c"), "--num-shards", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: bad.json: images[0] `id` must be an integer (image ids are "
                   "integers). Received: id=[1]"]
    assert not (tmp_path / "s").exists()


def test_keypoints_outside_the_image_are_checked_after_clipping(tmp_path):
    """Before: 1e30 keypoints passed the no-keypoints check (made before the clipping to the
    image) and were written as people with no labelled joint; the build exited 0."""
    img, joints = paint_person()
    kp = np.concatenate([joints, np.full((17, 1), 2.0)], axis=1)
    far = kp.copy()
    far[:, :2] = 1e30
    partly = kp.copy()
    partly[:5, :2] = 1e30
    beyond_float32 = kp.copy()
    beyond_float32[0, 0] = 1e39
    box = [50, 30, 400, 560]
    ann, img_dir = write_coco(tmp_path, [("p.jpg", img, [(box, kp), (box, far), (box, partly),
                                                         (box, beyond_float32)])])
    manifest = data.build_coco_shards(ann, img_dir, str(tmp_path / "s" / "c"), 1, num_workers=1,
                                      progress=False, verbose=False)
    assert manifest["people"] == 2
    assert {k: v["count"] for k, v in manifest["skipped"].items()} == {
        "no_keypoints_in_image": 1, "non_finite_values": 1}
    assert manifest["skipped"]["no_keypoints_in_image"]["examples"] == [
        "p.jpg (image id 1, person 1002)"]
    assert {k: v["count"] for k, v in manifest["notes"].items()} == {
        "joints_outside_image_set_invisible": 5}
    rec = next(iter(tf.data.TFRecordDataset(str(tmp_path / "s" / "c-00000-of-00001.tfrecord"))))
    stored = data.decode_example(rec, 17)["keypoints"].numpy()
    assert (stored[:, :, 2] > 0).sum(axis=1).tolist() == [17, 12]
    # Nobody left: the "Empty result" error, and nothing written.
    ann, _ = write_coco(tmp_path, [("p.jpg", img, [(box, far)])], name="far.json")
    with pytest.raises(ValueError, match=r"^Empty result: no usable person in 1 images"
                                         r"(.|\n)*no_keypoints_in_image"):
        data.build_coco_shards(ann, img_dir, str(tmp_path / "t" / "c"), 1, num_workers=1,
                               progress=False, verbose=False)
    assert os.listdir(tmp_path / "t") == []


def test_bad_images_and_boxes_are_counted(tmp_path, capsys):
    img, joints = paint_person()
    kp = np.concatenate([joints, np.full((17, 1), 2.0)], axis=1)
    box = [50, 30, 400, 560]
    outside_kp = kp.copy()
    outside_kp[0, :2] = [-30, 10]  # a labelled joint outside the image
    images = [("good.jpg", img, [(box, kp), ([700, 10, 50, 50], kp), ([10, 10, 0, 30], kp),
                                 (box, outside_kp)]),
              ("missing.jpg", None, [(box, kp)]),
              ("corrupt.jpg", img, [(box, kp)]),
              ("truncated.jpg", img, [(box, kp)]),
              ("png_inside.jpg", img, [(box, kp)])]
    crowd = {"id": 1, "image_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1, "category_id": 1,
             "keypoints": [0] * 51}
    nokp = {"id": 2, "image_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0, "category_id": 1,
            "keypoints": [0] * 51}
    ann, img_dir = write_coco(tmp_path, images, extra_annotations=[crowd, nokp])
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    raw = (tmp_path / "images" / "truncated.jpg").read_bytes()
    (tmp_path / "images" / "truncated.jpg").write_bytes(raw[:len(raw) // 3])
    cv2.imwrite(str(tmp_path / "png.png"), img)
    (tmp_path / "images" / "png_inside.jpg").write_bytes((tmp_path / "png.png").read_bytes())
    manifest = data.build_coco_shards(ann, img_dir, str(tmp_path / "s" / "bad"), 1, num_workers=1,
                                      progress=False)
    out = capsys.readouterr().out
    skipped = {k: v["count"] for k, v in manifest["skipped"].items()}
    notes = {k: v["count"] for k, v in manifest["notes"].items()}
    assert skipped == {"crowd": 1, "no_keypoints": 1, "box_outside_image": 1, "zero_area_box": 1,
                       "missing_image_file": 1, "corrupt_image": 2, "people_in_skipped_images": 3}
    assert notes == {"joints_outside_image_set_invisible": 1, "reencoded_to_jpeg": 1}
    assert manifest["people"] == 3 and manifest["records"] == 2
    for needle in ("missing.jpg", "corrupt.jpg", "truncated.jpg", "box_outside_image", "crowd"):
        assert needle in out
    # The joint outside the image is stored invisible.
    rec = next(iter(tf.data.TFRecordDataset(str(tmp_path / "s" / "bad-00000-of-00001.tfrecord"))))
    d = data.decode_example(rec, 17)
    assert d["keypoints"].numpy()[1, 0, 2] == 0 and d["keypoints"].numpy()[0, 0, 2] == 2


def test_empty_results_raise(tmp_path):
    img = np.zeros((50, 50, 3), np.uint8)
    kp = np.zeros((17, 3))
    ann, img_dir = write_coco(tmp_path, [("a.jpg", img, [([5, 5, 20, 20], kp)])])
    with pytest.raises(ValueError, match="Empty result"):
        data.build_coco_shards(ann, img_dir, str(tmp_path / "s" / "e"), 1, num_workers=1,
                               progress=False, verbose=False)
    assert not list((tmp_path / "s").glob("*.tfrecord"))
    kp = np.full((17, 3), 10.0)
    ann, _ = write_coco(tmp_path, [("gone.jpg", None, [([5, 5, 20, 20], kp)])], name="b.json")
    with pytest.raises(ValueError, match=r"Empty result(.|\n)*gone.jpg"):
        data.build_coco_shards(ann, img_dir, str(tmp_path / "s" / "f"), 1, num_workers=1,
                               progress=False, verbose=False)
    with pytest.raises(ValueError, match="No shard files match"):
        data.build_dataset(str(tmp_path / "nothing-*.tfrecord"))


def test_corrupt_and_incomplete_shards(sample_shards, tmp_path):
    import shutil
    src = sample_shards["dir"]
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    shard = dst / "coco-00001-of-00002.tfrecord"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte: same size, bad CRC
    shard.write_bytes(bytes(raw))
    ds = data.build_dataset(str(dst / "coco-*.tfrecord"), batch_size=8, deterministic=True,
                            options=data.PipelineOptions(shuffle_buffer=0))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="Corrupt or truncated shard .*coco-00001-of-00002"):
        for _ in ds:
            pass
    report = data.check_shards(str(dst / "coco-*.tfrecord"), progress=False)
    assert len(report["problems"]) == 1 and "coco-00001-of-00002" in report["problems"][0]
    shard.write_bytes(bytes(raw[:1000]))  # truncated: caught before reading
    with pytest.raises(ValueError, match="coco-00001-of-00002.tfrecord has 1000 bytes"):
        data.build_dataset(str(dst / "coco-*.tfrecord"))
    shard.unlink()
    (dst / "coco-00002-of-00003.tfrecord").write_bytes(b"")
    (dst / "coco-00000-of-00003.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="Incomplete shard set"):
        data.build_dataset(str(dst / "coco-*-of-00003.tfrecord"))


def test_without_manifest_and_with_input_context(sample_shards, tmp_path):
    import shutil
    dst = tmp_path / "nomanifest"
    shutil.copytree(sample_shards["dir"], dst)
    (dst / "coco-manifest.json").unlink()
    ev = data.build_dataset(str(dst / "coco-*.tfrecord"), training=False, batch_size=200)
    assert int(ev.cardinality()) == 1  # 124 people found by scanning the shards
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    ev = data.build_dataset(sample_shards["coco"], training=False, batch_size=200,
                            input_context=ctx)
    ids = np.concatenate([m["image_id"].numpy() for _, m in ev])
    expected = sample_shards["coco_manifest"]["shards"][1]
    assert len(ids) == expected["people"] and set(ids) <= set(expected["image_ids"])


@pytest.mark.parametrize("unbiased,limit", [(False, 2.0), (True, 1.0)])
def test_eval_meta_round_trip_through_codec(sample_shards, unbiased, limit):
    """GT joints -> crop (meta center/scale) -> heatmaps -> decode_to_image: back on the joints."""
    ev = data.build_dataset(sample_shards["coco"], training=False, batch_size=128)
    _, meta = next(iter(ev))
    codec = HeatmapCodec(unbiased=unbiased)
    for n in range(len(meta["image_id"])):
        kp = meta["keypoints"].numpy()[n]
        c, s = meta["center"].numpy()[n], meta["scale"].numpy()[n]
        m = T.get_affine_transform(c, s, 0, codec.input_size)
        crop_kp = T.affine_transform_points(kp[:, :2], m)
        hm, w = codec.encode(crop_kp, kp[:, 2] > 0)
        out = codec.decode_to_image(hm[None], c[None], s[None])[0]
        # Joints outside the crop keep weight 1 while part of their Gaussian
        # is on the map (the reference rule), but their peak sits on the border;
        # the quarter offset is only applied 2 heatmap pixels inside the border.
        margin = 2 * codec.stride
        inside = ((crop_kp >= margin)
                  & (crop_kp <= np.array(codec.input_size[::-1]) - 1 - margin)).all(1)
        ok = (w > 0) & inside
        err_input_px = np.abs(out[ok, :2] - kp[ok, :2]).max() * codec.input_size[1] / s[0]
        assert err_input_px <= limit + 1e-3, (n, err_input_px)
