"""Bad shards and unusual images.

A shard that is cut short, corrupt, unparsable or of another keypoint set
fails with one line naming the file (and the record) and the problem: before
anything runs where the manifest or the file's framing tells, else when the
record is read. Unusual images (progressive or CMYK JPEGs, PNG bytes, a
stored size that is not the JPEG's, windows outside the image or of zero
area) give the crops a whole-image decode and one warp give, never an error
inside tf.data.
"""

import io
import json
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dpn import data
from keras_dpn.core import transforms as T
from keras_dpn.core.codec import HeatmapCodec
from keras_dpn.data.pipeline import shard_error
from keras_dpn.core.keypoints import COCO_17
from keras_dpn.training.losses import JointsMSE
from repo_scripts import load_script

INPUT, HEATMAP = (128, 96), (32, 24)


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory):
    """The bundled COCO sample in two shards with a manifest (copy it before damaging it):
    what the builder's command line writes with no data arguments."""
    from keras_dpn.data.cli import main
    folder = tmp_path_factory.mktemp("sample_set")
    assert main("coco", ["--output", str(folder / "coco"), "--num-workers", "1",
                         "--no-progress"]) == 0
    return folder, json.loads((folder / "coco-manifest.json").read_text())


def _copy(sample_set, tmp_path, manifest=True):
    folder = tmp_path / "copy"
    shutil.copytree(sample_set[0], folder)
    if not manifest:
        (folder / "coco-manifest.json").unlink()
    return folder


def _flip_byte(path, record=0):
    """Damages a record's data (its checksum fails; the file keeps its size)."""
    raw = bytearray(path.read_bytes())
    start = 0
    for _ in range(record):
        start += 12 + int(np.frombuffer(raw[start:start + 8], "<u8")[0]) + 4
    raw[start + 2000] ^= 0xFF
    path.write_bytes(bytes(raw))


def _drain(ds):
    for _ in ds:
        pass


def _one_line_error(ds):
    """Iterates ``ds``; returns the one line :func:`shard_error` finds in the error."""
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _drain(ds)
    line = shard_error(info.value)
    assert line is not None, str(info.value)[:2000]
    assert "\n" not in line
    return line


def _write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for r in records:
            writer.write(r)
    return str(path)


def _record(image_id=1, k=17, people=1, encoded=None, **overrides):
    """A small keras_dpn record (``overrides`` replace its features)."""
    if encoded is None:
        encoded = cv2.imencode(".jpg", np.full((60, 80, 3), 128, np.uint8))[1].tobytes()
    kp = np.zeros((people, k, 3), np.float32)
    kp[..., 0], kp[..., 1], kp[..., 2] = 30, 20, 2
    ex = data.make_example(encoded, image_id, f"{image_id}.jpg", 60, 80,
                           bbox=np.tile([[20, 10, 30, 40]], (people, 1)), keypoints=kp,
                           area=[1200.0] * people, iscrowd=[0] * people,
                           person_id=list(range(people)))
    for key, feature in overrides.items():
        ex.features.feature[key].CopyFrom(feature)
    return ex.SerializeToString()


# ------------------------------------------------------------- the shard files
def test_truncated_shard_without_manifest_is_an_error(sample_set, tmp_path):
    folder = _copy(sample_set, tmp_path, manifest=False)
    pattern = str(folder / "coco-*.tfrecord")
    # Whole files: the records are counted from their framing, as the manifest says.
    shards = data.resolve_shards(pattern, 17)
    assert shards.expected_records == [s["records"] for s in sample_set[1]["shards"]]
    shard = folder / "coco-00001-of-00002.tfrecord"
    raw = shard.read_bytes()
    shard.write_bytes(raw[:len(raw) - 5000])  # cut inside the last record
    with pytest.raises(ValueError) as info:
        data.build_dataset(pattern, batch_size=4)
    message = str(info.value)
    last = sample_set[1]["shards"][1]["records"] - 1
    assert message == (f"Bad shard {shard}: truncated: it ends inside record {last} "
                       f"({len(raw) - 5000} bytes, 5000 missing).")
    shard.write_bytes(raw[:5])  # inside the first header
    with pytest.raises(ValueError, match=r"coco-00001-of-00002.tfrecord: truncated: it ends "
                                         r"inside the header of record 0 \(5 bytes\)\.$"):
        data.build_dataset(pattern, training=False)
    report = data.check_shards(pattern, progress=False)
    assert any("coco-00001-of-00002.tfrecord: truncated" in p for p in report["problems"])


def test_corrupt_record_without_manifest_stops_the_run(sample_set, tmp_path):
    """Before: read silently up to the bad record, the rest of the shard dropped."""
    folder = _copy(sample_set, tmp_path, manifest=False)
    shard = folder / "coco-00001-of-00002.tfrecord"
    _flip_byte(shard, record=1)
    ds = data.build_dataset(str(folder / "coco-*.tfrecord"), batch_size=16,
                            options=data.PipelineOptions(shuffle_buffer=0))
    line = _one_line_error(ds)
    n = sample_set[1]["shards"][1]["records"]
    assert line == (f"Corrupt or truncated shard {shard}: record 1 cannot be read (bad checksum "
                    f"or cut short); read 1 of {n} records. Rebuild it; "
                    "keras_dpn.data.check_shards lists every bad record.")
    # Record 0 damaged: seen before anything runs.
    _flip_byte(shard, record=0)
    with pytest.raises(ValueError, match=r"^Bad shard .*coco-00001-of-00002.tfrecord: record 0 "
                                         r"cannot be read \(bad checksum\)\. Rebuild it\.$"):
        data.build_dataset(str(folder / "coco-*.tfrecord"))


def test_other_keypoint_set_fails_before_reading(sample_set, tmp_path):
    with pytest.raises(ValueError, match=r"hold 17 keypoints per person \(set 'coco', .*"
                                         r"-manifest.json\); the requested keypoint set "
                                         r"'mpii' has 16"):
        data.build_dataset(str(sample_set[0] / "coco-*.tfrecord"), dataset="mpii")
    folder = _copy(sample_set, tmp_path, manifest=False)
    with pytest.raises(ValueError) as info:
        data.build_dataset(str(folder / "coco-*.tfrecord"), dataset="mpii")
    assert str(info.value) == (
        f"Bad shard {folder / 'coco-00000-of-00002.tfrecord'}: its records hold 17 keypoints "
        "per person; the keypoint spec has 16. Pass the matching `dataset=`. "
        "(1 more bad shard(s))")


def _int64(v):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v))


def _floats(v):
    return tf.train.Feature(float_list=tf.train.FloatList(value=v))


BAD_RECORDS = {
    # record 2 of 4: what is wrong with it, and the line that names it
    "other_keypoint_count": (lambda: _record(3, k=16),
                             "Bad shard {}: record 2 holds 16 keypoints per person; the keypoint "
                             "spec has 17. Pass the matching `dataset=`."),
    "not_an_example": (lambda: b"\x0a\xff\xff\xff garbage",
                       "Corrupt shard {}: record 2 cannot be parsed (not a tf.train.Example, or "
                       "a key of another type). Rebuild it; keras_dpn.data.check_shards lists "
                       "every bad record."),
    "key_of_another_type": (lambda: _record(3, **{"image/id": _floats([3.0])}),
                            "Corrupt shard {}: record 2 cannot be parsed (not a tf.train.Example, "
                            "or a key of another type). Rebuild it; keras_dpn.data.check_shards "
                            "lists every bad record."),
    "foreign_example": (lambda: tf.train.Example().SerializeToString(),
                        "Bad shard {}: record 2 is not a keras_dpn record (image/id, "
                        "image/height, image/width or image/num_keypoints missing or repeated)."),
    "keypoints_cut_short": (lambda: _record(3, people=2, **{"person/keypoints": _floats([1.0] * 60)}),
                            "Bad shard {}: record 2 has person fields of inconsistent lengths "
                            "(bbox, keypoints, area, iscrowd, id, center, scale)."),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_names_shard_and_record(tmp_path, case):
    make_bad, expected = BAD_RECORDS[case]
    path = _write_records(tmp_path / "odd-00000-of-00001.tfrecord",
                          [_record(1), _record(2), make_bad(), _record(4)])
    ds = data.build_dataset(path, batch_size=2, input_size=INPUT, heatmap_size=HEATMAP,
                            deterministic=True)
    assert _one_line_error(ds) == expected.format(path)
    # Evaluation without a manifest counts the people first: the same line, before running.
    with pytest.raises(ValueError) as info:
        data.build_dataset(path, training=False, input_size=INPUT, heatmap_size=HEATMAP)
    assert str(info.value) == expected.format(path)
    report = data.check_shards(path, dataset="coco", progress=False, decode_images=False)
    assert report["records"] == 3 and len(report["problems"]) == 1
    assert report["problems"][0].startswith(f"{path} record 2: ")


def test_bad_first_record_fails_before_reading(tmp_path):
    path = _write_records(tmp_path / "odd-00000-of-00001.tfrecord", [b"garbage", _record(2)])
    with pytest.raises(ValueError, match=r"^Bad shard .*odd-00000-of-00001.tfrecord: record 0 is "
                                         r"not a tf.train.Example: not a keras_dpn shard\.$"):
        data.build_dataset(path)


def test_model_fit_and_the_recipe_show_the_line(sample_set, tmp_path, capsys):
    """``model.fit`` raises TensorFlow's error holding the line; the recipe prints just it."""
    import keras

    folder = _copy(sample_set, tmp_path)
    for shard in folder.glob("coco-*.tfrecord"):
        _flip_byte(shard)
    pattern = str(folder / "coco-*.tfrecord")
    ds = data.build_dataset(pattern, batch_size=2, input_size=INPUT, heatmap_size=HEATMAP,
                            options=data.PipelineOptions(shuffle_buffer=0))
    model = keras.Sequential([keras.Input(INPUT + (3,)), keras.layers.AveragePooling2D(4),
                              keras.layers.Conv2D(17, 1)])
    model.compile("sgd", JointsMSE())
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(ds, steps_per_epoch=2, verbose=0)
    line = shard_error(info.value)
    assert line.startswith("Corrupt or truncated shard ") and "coco-0000" in line
    assert "\n" not in line and line in str(info.value)

    train_coco = load_script("recipes/train_coco.py")
    ann = train_coco.SAMPLE["coco"]["annotations"]
    code = train_coco.main(["--model", "DPN1_32", "--input-size", "64", "48", "--batch-size", "2",
                            "--steps-per-epoch", "1", "--epochs", "1", "--strategy", "default",
                            "--verbose", "0", "--export-formats", "none",
                            "--train-shards", pattern, "--val-shards", pattern,
                            "--annotations", ann, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: Corrupt or truncated shard ") and "coco-0000" in err[-1]


# ---------------------------------------------------- unusual images and windows
def _picture(height=240, width=320, seed=0):
    """A smooth RGB picture (interpolation differences stay small) with sharp edges."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3)).astype(np.uint8), (0, 0), 3)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    cv2.rectangle(img, (120, 60), (170, 150), (250, 30, 40), -1)
    return img


def _encode(rgb, kind):
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if kind in ("baseline", "size_differs"):
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    if kind == "progressive":
        return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                          cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    if kind == "png":
        return cv2.imencode(".png", bgr)[1].tobytes()
    if kind == "cmyk":
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
        return buf.getvalue()
    raise ValueError(kind)


JOINTS = np.array([[150, 70], [155, 66], [145, 66], [160, 68], [140, 68], [170, 90], [130, 90],
                   [178, 115], [122, 115], [182, 140], [118, 140], [162, 150], [138, 150],
                   [164, 180], [136, 180], [166, 205], [134, 205]], np.float32)
BOX = [110.0, 55.0, 80.0, 160.0]


def _person_record(encoded, image_id=1, stored_size=(240, 320), box=BOX, center=None,
                   scale=None):
    kp = np.concatenate([JOINTS, np.full((17, 1), 2.0, np.float32)], 1)[None]
    return data.make_example(encoded, image_id, "odd.jpg", *stored_size, bbox=[box], keypoints=kp,
                             area=[box[2] * box[3]], iscrowd=[0], person_id=[7],
                             center=center, scale=scale).SerializeToString()


def _reference_crop(decoded, center, scale, flip=False):
    """The reference procedure: the whole image, flipped first if asked, one warp."""
    img, center = decoded, np.array(center, np.float64)
    if flip:
        img = np.ascontiguousarray(decoded[:, ::-1])
        center[0] = decoded.shape[1] - 1 - center[0]
    m = T.get_affine_transform(center, np.array(scale, np.float64), 0, INPUT)
    return cv2.warpAffine(img, m, (INPUT[1], INPUT[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0), m


def _decode(encoded):
    """The whole image as the pipeline decodes it: the accurate IDCT, equal to OpenCV's
    decoder (the reference's cv2.imread) for RGB JPEGs and PNGs."""
    if encoded[:8] == b"\x89PNG\r\n\x1a\n":
        return tf.io.decode_png(encoded, channels=3).numpy()
    return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE").numpy()


def _pixels(images):
    """Normalized float crops back to 0..255 RGB."""
    return images * np.array(T.IMAGENET_STD) * 255 + np.array(T.IMAGENET_MEAN) * 255


def _train(pattern):
    flip_only = data.AugmentConfig(scale_factor=0.0, rotation_prob=0.0, half_body_prob=0.0,
                                   flip_prob=1.0)
    return data.build_dataset(pattern, batch_size=1, input_size=INPUT, heatmap_size=HEATMAP,
                              drop_remainder=False, augment=flip_only, deterministic=True,
                              seed=0, options=data.PipelineOptions(shuffle_buffer=0))


@pytest.mark.parametrize("kind", ["baseline", "progressive", "cmyk", "png", "size_differs"])
def test_unusual_image_crops_as_a_whole_image_warp(tmp_path, kind):
    """Evaluation and (flipped) training crops against the reference procedure on the
    whole decoded image; the targets under the flipped joints."""
    rgb = _picture()
    encoded = _encode(rgb, kind)
    stored = (100, 100) if kind == "size_differs" else (240, 320)  # the header wins
    path = _write_records(tmp_path / "odd-00000-of-00001.tfrecord",
                          [_person_record(encoded, stored_size=stored)])
    decoded = _decode(encoded)
    assert decoded.shape == (240, 320, 3)
    if kind != "cmyk":  # OpenCV converts CMYK with other rounding (1 grey level)
        bgr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(decoded, bgr[..., ::-1])

    images, meta = next(iter(data.build_dataset(path, training=False, batch_size=4,
                                                input_size=INPUT, heatmap_size=HEATMAP)))
    assert images.shape[0] == 1
    center, scale = meta["center"].numpy()[0], meta["scale"].numpy()[0]
    expected, _ = _reference_crop(decoded, center, scale)
    assert np.abs(_pixels(images.numpy()[0]) - expected).mean() < 0.5

    images, heatmaps, weights = next(iter(_train(path)))
    expected, m = _reference_crop(decoded, center, scale, flip=True)
    assert np.abs(_pixels(images.numpy()[0]) - expected).mean() < 0.5
    joints = JOINTS.astype(np.float64).copy()
    joints[:, 0] = 320 - 1 - joints[:, 0]
    joints = joints[list(COCO_17.flip_index)]
    hm, w = HeatmapCodec(INPUT, HEATMAP).encode(T.affine_transform_points(joints, m), np.ones(17))
    np.testing.assert_array_equal(weights.numpy()[0], w)
    np.testing.assert_allclose(heatmaps.numpy()[0], hm, atol=1e-5)


def test_builder_keeps_progressive_and_cmyk_and_reencodes_png(tmp_path):
    """The shard builder's counts for these files: stored as they are, or re-encoded once."""
    rgb = _picture()
    folder = tmp_path / "images"
    folder.mkdir()
    ann = {"images": [], "annotations": [],
           "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_17.names)}]}
    for i, kind in enumerate(["progressive", "cmyk", "png"]):
        name = f"{kind}.{'png' if kind == 'png' else 'jpg'}"
        (folder / name).write_bytes(_encode(rgb, kind))
        ann["images"].append({"id": i + 1, "file_name": name, "height": 240, "width": 320})
        kp = np.concatenate([JOINTS, np.full((17, 1), 2.0)], 1)
        ann["annotations"].append({"id": 10 + i, "image_id": i + 1, "bbox": BOX, "iscrowd": 0,
                                   "category_id": 1, "area": BOX[2] * BOX[3],
                                   "keypoints": kp.reshape(-1).tolist(), "num_keypoints": 17})
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    manifest = data.build_coco_shards(tmp_path / "ann.json", folder, str(tmp_path / "s" / "odd"),
                                      1, num_workers=1, progress=False, verbose=False)
    assert manifest["records"] == 3 and manifest["people"] == 3 and manifest["skipped"] == {}
    assert {k: v["count"] for k, v in manifest["notes"].items()} == {"reencoded_to_jpeg": 1}
    stored = [tf.train.Example.FromString(r.numpy()).features.feature["image/encoded"]
              .bytes_list.value[0] for r in tf.data.TFRecordDataset(
                  str(tmp_path / "s" / "odd-00000-of-00001.tfrecord"))]
    assert stored[:2] == [(folder / "progressive.jpg").read_bytes(), (folder / "cmyk.jpg").read_bytes()]
    assert stored[2][:3] == b"\xff\xd8\xff"


def test_windows_outside_the_image_or_of_zero_area(tmp_path):
    """Every person counted, finite numbers, zero target weights; a window outside the
    image reads black, one of zero area the one pixel under it."""
    rgb = _picture()
    encoded = _encode(rgb, "baseline")
    path = _write_records(tmp_path / "odd-00000-of-00001.tfrecord", [
        _person_record(encoded, 1),
        # MPII-style stored window, wholly outside the image
        _person_record(encoded, 2, center=[[-900.0, -700.0]], scale=[[60.0, 80.0]]),
        # a box of zero area (the builder skips those; another tool may not)
        _person_record(encoded, 3, box=[150.0, 100.0, 0.0, 0.0])])

    under = _decode(encoded)[100, 150]  # below the zero-area box
    images, heatmaps, weights = (np.concatenate([b[i].numpy() for b in _train(path)])
                                 for i in range(3))
    assert images.shape[0] == 3 and np.isfinite(images).all() and np.isfinite(heatmaps).all()
    assert weights[0].sum() == 17
    assert np.abs(_pixels(images[1])).max() < 1e-3
    assert np.abs(_pixels(images[2]) - under).max() < 1.01
    for n in (1, 2):
        assert weights[n].sum() == 0 and heatmaps[n].max() == 0, n

    dets = [{"image_id": 1, "category_id": 1, "bbox": BOX, "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [5000.0, 10.0, 50.0, 90.0], "score": 0.8},
            {"image_id": 2, "category_id": 1, "bbox": [-400.0, -300.0, 40.0, 50.0], "score": 0.7}]
    ev = data.build_dataset(path, training=False, batch_size=8, input_size=INPUT,
                            heatmap_size=HEATMAP, detections=dets, verbose=False)
    images, meta = next(iter(ev))
    order = np.argsort(-meta["score"].numpy())
    images = _pixels(images.numpy()[order])
    assert images.shape[0] == 3 and np.isfinite(images).all()
    expected, _ = _reference_crop(_decode(encoded),
                                  meta["center"].numpy()[order[0]], meta["scale"].numpy()[order[0]])
    assert np.abs(images[0] - expected).mean() < 0.5
    assert np.abs(images[1:]).max() < 1e-3

    images, meta = next(iter(data.build_dataset(path, training=False, batch_size=8,
                                                input_size=INPUT, heatmap_size=HEATMAP,
                                                deterministic=True)))
    assert meta["image_id"].numpy().tolist() == [1, 2, 3]
    images = _pixels(images.numpy())
    assert np.abs(images[1]).max() < 1e-3 and np.abs(images[2] - under).max() < 1.01
