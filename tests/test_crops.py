"""PersonCrops: the OpenCV / numpy PyDataset, against the tf.data parser it stands in for."""

import cv2
import numpy as np
import pytest

from keras_dpn.core import transforms
from keras_dpn.data import AugmentConfig, PersonCrops, PersonParser, read_coco

INPUT, HEATMAP = (128, 96), (32, 24)


@pytest.fixture(scope="module")
def sample(sample_dir):
    return (str(sample_dir / "coco" / "annotations" / "person_keypoints_sample.json"),
            str(sample_dir / "coco" / "images"))


def test_training_batches(sample):
    crops = PersonCrops(*sample, batch_size=16, input_size=INPUT, heatmap_size=HEATMAP, seed=3)
    assert len(crops) == 124 // 16  # the partial batch is dropped
    images, heatmaps, weight = crops[len(crops) - 1]
    assert images.shape == (16, *INPUT, 3) and images.dtype == np.float32
    assert heatmaps.shape == (16, *HEATMAP, 17) and weight.shape == (16, 17)
    assert 0 < weight.mean() <= 1 and heatmaps.max() == pytest.approx(1.0)
    # With every augmentation off and no shuffling, batch 2 holds the box crops
    # of people 32-47 in annotation order, cut here with OpenCV directly.
    plain = PersonCrops(*sample, batch_size=16, input_size=INPUT, heatmap_size=HEATMAP, seed=3,
                        shuffle=False, augment=None)
    entries, _ = read_coco(*sample)
    people = [(e["path"], p["bbox"]) for e in entries for p in e["people"]][32:48]
    expected = [transforms.normalize_image(transforms.crop_image(
        cv2.imread(path)[..., ::-1], *transforms.box_to_center_scale(bbox, INPUT[1] / INPUT[0]),
        INPUT)) for path, bbox in people]
    np.testing.assert_allclose(plain[2][0], np.stack(expected), rtol=0, atol=1e-6)
    # Seeded: the same batch again; the next epoch, another order and other draws.
    again = PersonCrops(*sample, batch_size=16, input_size=INPUT, heatmap_size=HEATMAP, seed=3)
    np.testing.assert_array_equal(again[2][1], crops[2][1])
    first = crops[0][1]
    crops.on_epoch_end()
    assert not np.array_equal(crops[0][1], first)
    with pytest.raises(IndexError):
        crops[len(crops)]


def test_evaluation_batches_follow_the_annotations(sample):
    crops = PersonCrops(*sample, training=False, batch_size=50, input_size=INPUT,
                        heatmap_size=HEATMAP)
    assert len(crops) == 3  # 124 people: 50 + 50 + 24
    batches = list(crops)
    images, meta = batches[-1]
    assert images.shape == (24, *INPUT, 3)
    assert set(meta) == {"image_id", "center", "scale", "score", "bbox", "person_id", "keypoints"}
    entries, _ = read_coco(*sample)
    first = entries[0]["people"][0]
    center, scale = transforms.box_to_center_scale(first["bbox"], INPUT[1] / INPUT[0])
    np.testing.assert_allclose(batches[0][1]["center"][0], center)
    np.testing.assert_allclose(batches[0][1]["scale"][0], scale)
    assert batches[0][1]["image_id"][0] == entries[0]["image_id"]
    np.testing.assert_array_equal(np.concatenate([m["score"] for _, m in batches]), 1.0)


@pytest.mark.parametrize("rotation,zoom,flip", [(0.0, 1.0, False), (25.0, 0.8, False),
                                                (-40.0, 1.2, True)])
def test_transform_matches_the_tf_data_parser(sample, rotation, zoom, flip):
    entries, _ = read_coco(*sample)
    entry = next(e for e in entries if len(e["people"]) > 1)
    person = entry["people"][1]
    image = cv2.imread(entry["path"])[..., ::-1].copy()
    kp = person["keypoints"]
    joints, visible = kp[:, :2], np.minimum(kp[:, 2], 1.0)
    center, scale = transforms.box_to_center_scale(person["bbox"], INPUT[1] / INPUT[0])
    scale = scale * zoom
    crops = PersonCrops(*sample, batch_size=1, input_size=INPUT, heatmap_size=HEATMAP)
    got = crops.transform(image, joints, visible, center, scale, rotation, flip)
    parser = PersonParser(input_size=INPUT, heatmap_size=HEATMAP)
    expected = [np.asarray(t) for t in parser.transform(image, joints, visible, center, scale,
                                                         rotation, flip)]
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)  # heatmaps
    np.testing.assert_array_equal(got[2], expected[2])  # target weights
    # Both warp with OpenCV's bilinear: the same crop up to uint8 rounding.
    grey = np.abs(got[0] - expected[0]) * np.asarray(transforms.IMAGENET_STD) * 255
    assert grey.mean() < 0.5


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size"),
    (dict(augment=AugmentConfig), "augment"),
    (dict(augment="reference"), "augment"),
    (dict(batch_size=200), "fewer than one training batch"),
])
def test_bad_arguments(sample, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PersonCrops(*sample, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(flip_prob=1.5), r"^`flip_prob` must be in \[0, 1\]. Received: flip_prob=1.5$"),
    (dict(scale_factor=1.0), r"^`scale_factor` must be in \[0, 1\). Received: scale_factor=1.0$"),
    (dict(rotation_factor=-1), r"^`rotation_factor` must be >= 0. Received: rotation_factor=-1$"),
    (dict(half_body_prob=float("nan")), r"^`half_body_prob` must be a finite number. "
                                        r"Received: half_body_prob=nan$"),
    (dict(half_body_min_joints=2.5), r"^`half_body_min_joints` must be an int >= 0. "
                                     r"Received: half_body_min_joints=2.5$"),
])
def test_bad_augment_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kwargs)


def test_old_loose_augmentation_arguments_name_the_new_one(sample):
    with pytest.raises(TypeError, match=r"augment=AugmentConfig\(flip_prob=...\).*"
                                        r"Received: flip_prob=0.0$"):
        PersonCrops(*sample, flip_prob=0.0)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        PersonCrops(str(tmp_path / "missing.json"), str(tmp_path))
