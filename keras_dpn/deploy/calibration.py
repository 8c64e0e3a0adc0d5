"""Calibration data for int8 quantization, and the TFLite converter settings that use it.

Full-integer TFLite files need *representative* inputs to fix the range of
every activation. Both :mod:`keras_dpn.deploy.export` (post-training quantization)
and :mod:`keras_dpn.deploy.qat` (the quantization-aware file) read them from here:

* :func:`person_crops` cuts the annotated people of a COCO keypoints file
  exactly as the models see them (box -> center/scale x1.25 -> affine crop),
  with their keypoints in crop pixels;
* :func:`default_crops` returns crops of real people that ship inside the
  package (``keras_dpn/core/assets/calibration_crops.jpg``: 64 people of the
  bundled COCO sample at 256x192, resized to the model's input), so an
  installed package calibrates without a dataset;
* :func:`tflite_options` is the one definition of what ``fp32``, ``fp16``,
  ``int8_dynamic`` and ``int8`` mean for the converter, applied by Keras'
  ``model.export(format="litert")`` and by :func:`apply_tflite_options`.

Inputs are normalized with :func:`keras_dpn.core.transforms.normalize_image`.
"""

import json
import os

import numpy as np

from keras_dpn.core import assets
from keras_dpn.core import transforms

TFLITE_QUANTIZATIONS = ("fp32", "fp16", "int8_dynamic", "int8")

# The packaged crops: a grid of MOSAIC_COLUMNS x rows crops of MOSAIC_CROP (H, W).
MOSAIC_CROP = (256, 192)
MOSAIC_COLUMNS = 8


def person_crops(annotation_file, input_size, image_dir=None, max_people=None,
                 min_keypoints=1):
    """Crops of the annotated people of a COCO keypoints file, as a model sees them.

    Crowd regions, boxes under one pixel and people with fewer than
    ``min_keypoints`` labelled keypoints are skipped; the rest are taken in
    file order.

    Args:
        annotation_file: a COCO keypoints annotation file.
        input_size: ``(H, W)`` of the crops.
        image_dir: folder of the images; defaults to ``../images`` beside the
            annotation file's folder (the layout of ``sample_data/coco``).
        max_people: stop after this many (None: all).
        min_keypoints: skip people with fewer labelled keypoints.

    Returns:
        ``(crops, records)``: uint8 RGB ``(N, H, W, 3)``, and per person a
        dict with ``image_id``, ``bbox``, ``center``, ``scale`` and
        ``keypoints`` (``(K, 3)`` float32: x, y in crop pixels, visibility).
    """
    import cv2

    with open(annotation_file) as f:
        coco = json.load(f)
    if image_dir is None:
        image_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
            annotation_file))), "images")
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    h, w = input_size
    crops, records, cache = [], [], {}
    for ann in coco["annotations"]:
        if max_people is not None and len(crops) >= max_people:
            break
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) < min_keypoints:
            continue
        if ann["bbox"][2] < 1 or ann["bbox"][3] < 1:
            continue
        image_id = ann["image_id"]
        if image_id not in cache:
            path = os.path.join(image_dir, files[image_id])
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"Could not read the image of annotation {ann.get('id')}. "
                                 f"Received: image_dir={image_dir!r} ({files[image_id]})")
            # One decoded image at a time: a file lists its annotations by image.
            cache = {image_id: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)}
        center, scale = transforms.box_to_center_scale(ann["bbox"], w / h)
        crops.append(np.asarray(transforms.crop_image(cache[image_id], center, scale, (h, w)),
                                np.uint8))
        matrix = transforms.get_affine_transform(center, scale, 0.0, (h, w))
        keypoints = np.asarray(ann.get("keypoints", []), np.float32).reshape(-1, 3)
        xy = transforms.affine_transform_points(keypoints[:, :2], matrix)
        records.append(dict(
            image_id=image_id, bbox=[float(v) for v in ann["bbox"]],
            center=np.asarray(center, np.float32).tolist(),
            scale=np.asarray(scale, np.float32).tolist(),
            keypoints=np.concatenate([xy, keypoints[:, 2:]], axis=1).astype(np.float32)))
    if not crops:
        raise ValueError(f"No person with at least {min_keypoints} keypoint(s) in the file. "
                         f"Received: annotation_file={annotation_file!r}")
    return np.stack(crops), records


def write_crop_mosaic(crops, path, quality=90):
    """Writes ``(N, *MOSAIC_CROP, 3)`` uint8 crops as one JPEG grid (how the assets are made).

    The crop sizes are multiples of 16, so JPEG blocks never straddle two crops.
    """
    import cv2

    from keras_dpn.core import io_utils
    crops = np.asarray(crops, np.uint8)
    if crops.ndim != 4 or crops.shape[1:3] != MOSAIC_CROP:
        raise ValueError(f"`crops` must be uint8 (N, {MOSAIC_CROP[0]}, {MOSAIC_CROP[1]}, 3). "
                         f"Received: crops with shape {crops.shape}")
    rows = -(-len(crops) // MOSAIC_COLUMNS)
    h, w = MOSAIC_CROP
    grid = np.zeros((rows * h, MOSAIC_COLUMNS * w, 3), np.uint8)
    for i, crop in enumerate(crops):
        r, c = divmod(i, MOSAIC_COLUMNS)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = crop
    ok, encoded = cv2.imencode(".jpg", grid[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode the mosaic. Received: path={path!r}")
    with io_utils.atomic_file(path, "wb") as f:
        f.write(encoded.tobytes())


def read_crop_mosaic(path=None):
    """The crops of a mosaic written by :func:`write_crop_mosaic` (uint8 RGB, all-black tiles dropped)."""
    import cv2
    path = path or assets.CALIBRATION_CROPS
    bgr = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Could not read the crop mosaic. Received: path={path!r}")
    h, w = MOSAIC_CROP
    rgb = bgr[..., ::-1]
    tiles = [rgb[r:r + h, c:c + w] for r in range(0, rgb.shape[0], h)
             for c in range(0, rgb.shape[1], w)]
    return np.stack([t for t in tiles if t.max() > 8])


def default_crops(input_size, max_crops=64):
    """Real person crops shipped with the package, resized to ``input_size``.

    64 people of the bundled COCO sample cut at 256x192 (see
    ``keras_dpn/core/assets/README.md``). Another aspect ratio than 3:4 stretches
    them a little, which does not matter for activation ranges.

    Args:
        input_size: ``(H, W)``.
        max_crops: how many at most.

    Returns:
        uint8 RGB ``(N, H, W, 3)``.
    """
    import cv2
    h, w = input_size
    crops = read_crop_mosaic()[:max_crops]
    if (h, w) == MOSAIC_CROP:
        return crops
    shrink = h * w < MOSAIC_CROP[0] * MOSAIC_CROP[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return np.stack([cv2.resize(c, (w, h), interpolation=interpolation) for c in crops])


def calibration_data(representative_data, input_size, max_crops=64):
    """Normalized float32 calibration inputs ``(N, H, W, 3)``.

    Args:
        representative_data: uint8 RGB crops ``(N, H, W, 3)``, float crops
            already normalized, or None for :func:`default_crops`.
        input_size: the model's ``(H, W)``.
        max_crops: how many default crops.

    Raises:
        ValueError: for data of another shape, or an empty set.
    """
    if representative_data is None:
        representative_data = default_crops(input_size, max_crops)
    data = np.asarray(representative_data)
    if data.ndim != 4 or data.shape[1:] != (*input_size, 3) or len(data) == 0:
        raise ValueError(
            f"`representative_data` must be crops of shape (N, {input_size[0]}, {input_size[1]}, "
            f"3), N >= 1. Received: representative_data with shape {data.shape!r}")
    if data.dtype == np.uint8:
        return np.asarray(transforms.normalize_image(data), np.float32)
    return data.astype(np.float32)


def tflite_options(quantization="fp32", representative_data=None):
    """TFLite converter settings of one quantization, as keyword arguments.

    The form ``keras.Model.export(format="litert", **options)`` takes (and
    :func:`apply_tflite_options` applies to a ``tf.lite.TFLiteConverter``).
    Only builtin ops are allowed: a file that needs Select TF ops does not run
    on a plain LiteRT runtime or a mobile GPU delegate.

    Args:
        quantization: ``"fp32"``, ``"fp16"`` (float16 weights),
            ``"int8_dynamic"`` (int8 weights, float activations) or ``"int8"``
            (full integer: int8 weights, activations, input and output).
        representative_data: normalized float32 ``(N, H, W, 3)`` inputs
            (:func:`calibration_data`); required for ``"int8"``.

    Returns:
        A dict of converter attributes (``target_spec`` as a dict).
    """
    import tensorflow as tf
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {TFLITE_QUANTIZATIONS}. "
                         f"Received: quantization={quantization!r}")
    options = dict(target_spec=dict(supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS]))
    if quantization == "fp32":
        return options
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantization == "fp16":
        options["target_spec"]["supported_types"] = [tf.float16]
    elif quantization == "int8":
        if representative_data is None or len(representative_data) == 0:
            raise ValueError("Full-integer quantization needs representative inputs. "
                             f"Received: representative_data={representative_data!r}")
        data = np.asarray(representative_data, np.float32)

        def dataset():
            for item in data:
                yield [item[None]]

        options["representative_dataset"] = dataset
        options["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        options["inference_input_type"] = tf.int8
        options["inference_output_type"] = tf.int8
    return options


def apply_tflite_options(converter, options):
    """Sets :func:`tflite_options` on a ``tf.lite.TFLiteConverter``; returns it."""
    for key, value in options.items():
        if key == "target_spec":
            for spec_key, spec_value in value.items():
                setattr(converter.target_spec, spec_key, spec_value)
        else:
            setattr(converter, key, value)
    return converter
