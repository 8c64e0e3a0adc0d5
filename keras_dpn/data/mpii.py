"""MPII annotations (the common ``train.json`` / ``valid.json`` layout) -> image entries.

Each row holds one person: ``joints`` (16 x 2, 1-based Matlab pixels),
``joints_vis`` (16), ``center`` (2, 1-based), ``scale`` (person height / 200)
and ``image``. The conversion follows the HRNet reference's ``mpii.py``:
``center_y += 15 * scale``, ``scale *= 1.25``, both made 0-based, and here
``scale`` is further turned into pixels (``* 200``). People of the same image
are grouped into one record.
"""

import json
import os

import numpy as np

from keras_dpn.data.coco import first_bad, load_json, numbers
from keras_dpn.data.shards import SkipCounter, build_from_reader
from keras_dpn.core.keypoints import get_keypoint_spec

PIXEL_STD = 200.0


def _image_id(name, table):
    stem = os.path.splitext(os.path.basename(name))[0]
    if stem.isdigit():
        return int(stem)
    # Non-numeric names get stable ids in order of first appearance.
    return table.setdefault(name, 10 ** 12 + len(table))


def read_mpii(annotation_file, image_dir, dataset="mpii"):
    """Reads and checks an MPII json in the common layout.

    Args:
        annotation_file: ``train.json`` / ``valid.json`` style list.
        image_dir: folder holding the images.
        dataset: ``"mpii"`` or a ``KeypointSpec`` with the joint count.

    Returns:
        ``(entries, skips)`` as :func:`keras_dpn.data.coco.read_coco`. A person's
        ``id`` is its row number in the file (the evaluation order).

    Raises:
        ValueError: not a list, missing keys, wrong joint count.
    """
    spec = get_keypoint_spec(dataset)
    k = spec.num_keypoints
    rows = load_json(annotation_file)
    name = os.path.basename(os.fspath(annotation_file))
    if not isinstance(rows, list):
        raise ValueError(f"{name}: expected a JSON list of people. Received: a {type(rows).__name__}")
    skips = SkipCounter()
    images, ids = {}, {}
    for i, row in enumerate(rows):
        where = f"row {i} (image {row.get('image') if isinstance(row, dict) else '?'})"
        if not isinstance(row, dict):
            raise ValueError(f"{name}: row {i} is not an object. Received: {row!r:.100}")
        missing = [key for key in ("joints", "joints_vis", "center", "scale", "image")
                   if key not in row]
        if missing:
            raise ValueError(f"{name}: {where} misses key(s) {missing}.")
        # Booleans and null are not numbers (numpy would read them as 1/0 and NaN).
        for key in ("joints", "joints_vis", "center"):
            if numbers(row[key]) is None:
                raise ValueError(f"{name}: {where} `{key}` must be a list of numbers; "
                                 f"{key}{first_bad(row[key])}.")
        if isinstance(row["scale"], bool) or not isinstance(row["scale"], (int, float)):
            raise ValueError(f"{name}: {where} `scale` must be a number. "
                             f"Received: scale={json.dumps(row['scale'])[:60]}")
        if not isinstance(row["image"], str) or not row["image"]:
            raise ValueError(f"{name}: {where} `image` must be a non-empty file name. "
                             f"Received: image={json.dumps(row['image'])[:60]}")
        joints = numbers(row["joints"])
        vis = numbers(row["joints_vis"]).reshape(-1)
        center = numbers(row["center"]).reshape(-1)
        s = float(row["scale"])
        if joints.shape != (k, 2) or vis.shape != (k,):
            raise ValueError(
                f"{name}: {where} has joints of shape {joints.shape} and joints_vis of length "
                f"{vis.shape[0]}; the keypoint spec {spec.name!r} needs ({k}, 2) and {k}.")
        if center.shape != (2,):
            raise ValueError(f"{name}: {where} `center` must be [x, y]. Received: {row['center']!r}")
        # Finite as stored (float32): 1e39 is finite here but infinite in a shard.
        values = np.concatenate([joints.reshape(-1), center, [s, s * 1.25 * PIXEL_STD]])
        with np.errstate(over="ignore"):
            finite = np.isfinite(values.astype(np.float32)).all()
        if not finite:
            skips.add("non_finite_values", where)
            continue
        if s <= 0 or center[0] == -1:
            skips.add("zero_area_box", where)
            continue
        if not (vis > 0).any():
            skips.add("no_keypoints", where)
            continue
        center = center.copy()
        center[1] += 15 * s
        center -= 1
        size = s * 1.25 * PIXEL_STD
        kp = np.concatenate([joints - 1, vis[:, None]], axis=1).astype(np.float32)
        kp[vis <= 0, :2] = 0
        side = s * PIXEL_STD  # the unpadded window, as the person's box
        bbox = [center[0] - side / 2, center[1] - side / 2, side, side]
        image = str(row["image"])
        entry = images.setdefault(image, {
            "image_id": _image_id(image, ids), "filename": image,
            "path": os.path.join(os.fspath(image_dir), image), "height": 0, "width": 0,
            "people": []})
        entry["people"].append({"id": i, "bbox": bbox, "keypoints": kp, "area": side * side,
                                "iscrowd": 0, "center": center.astype(np.float32).tolist(),
                                "scale": [size, size]})
    return list(images.values()), skips


def build_mpii_shards(annotation_file, image_dir, output_prefix, num_shards=1, dataset="mpii",
                      num_workers=2, keep_empty_images=True, progress=True, verbose=True,
                      overwrite=False):
    """Builds MPII TFRecord shards (see :func:`keras_dpn.data.coco.build_coco_shards`).

    Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     manifest = build_mpii_shards("sample_data/mpii/valid_sample.json",
    ...                                  "sample_data/mpii/images", os.path.join(d, "mpii"), 1,
    ...                                  progress=False, verbose=False)
    >>> manifest["dataset"], manifest["num_shards"], manifest["people"]
    ('mpii', 1, 5)
    """
    return build_from_reader(read_mpii, annotation_file, image_dir, output_prefix, num_shards,
                             dataset=dataset, num_workers=num_workers,
                             keep_empty_images=keep_empty_images, progress=progress,
                             verbose=verbose, overwrite=overwrite)
