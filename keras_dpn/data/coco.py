"""COCO keypoint annotations -> image entries for the shard writer.

Reads a COCO-format ``person_keypoints_*.json`` (or a custom dataset in the
same format with another keypoint count), checks its structure and returns
one entry per image with the people that can be trained on. Structural
faults (missing keys, keypoint arrays of the wrong length, duplicate image
ids) raise ``ValueError`` naming the file and the annotation; annotations
that are well-formed but unusable are skipped and counted by reason.
"""

import json
import os

import numpy as np

from keras_dpn.data.shards import SkipCounter, build_from_reader
from keras_dpn.core.keypoints import get_keypoint_spec


def load_json(path, what="annotation file"):
    """Loads a JSON file with errors that name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The {what} does not exist. Received: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"The {what} {path!r} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"The {what} {path!r} is not valid JSON (not UTF-8 text: {e.reason} "
                         f"at byte {e.start}).") from None
    except OSError as e:
        raise ValueError(f"The {what} {path!r} cannot be read: {e.strerror or e}.") from None


def integer(value):
    """``value`` as an int if it is an integer (or an integral float such as
    ``139.0``, which some JSON writers produce), else None; booleans are not
    integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and -2 ** 63 <= value < 2 ** 63 else None


def numbers(value, length=None):
    """``value`` as a float64 array if it is a (nested) list of numbers of
    ``length`` items, else None: booleans, null and strings are not numbers."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return None
    flat, stack = [], [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat.append(v)
        else:
            return None
    try:
        return np.asarray(value, np.float64)
    except (TypeError, ValueError):  # ragged nesting
        return None


def first_bad(value):
    """Describes the first item of a list that is not a number (for messages)."""
    stack = [([], value)]
    while stack:
        where, v = stack.pop(0)
        if isinstance(v, list):
            stack[:0] = [(where + [i], x) for i, x in enumerate(v)]
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            return "".join(f"[{i}]" for i in where) + f" is {json.dumps(v)[:40]}"
    return "is ragged"


def read_coco(annotation_file, image_dir, dataset="coco"):
    """Reads and checks a COCO keypoint annotation file.

    Every field used is type-checked: ids must be integers (an integral
    float such as ``139.0`` is read as 139; ``139.7`` is an error),
    ``file_name`` a string, ``height``/``width`` non-negative integers when
    present, ``bbox`` four numbers, ``keypoints`` 3 x K numbers (booleans
    are not numbers), ``area`` a number, ``iscrowd`` 0 or 1. Image ids and
    annotation ids must be unique.

    Args:
        annotation_file: path of the COCO-format json.
        image_dir: folder holding the ``file_name`` of every image.
        dataset: ``"coco"`` or a ``KeypointSpec`` (its keypoint count is
            what every annotation must have).

    Returns:
        ``(entries, skips)``: a list of image dicts (``image_id``, ``filename``,
        ``path``, ``height``, ``width``, ``people``) and a ``SkipCounter``.

    Raises:
        ValueError: unreadable file, missing keys, a field of the wrong type,
            wrong keypoint length, duplicate ids; one line naming the file,
            the entry and the field.

    Example:
    >>> entries, skips = read_coco("sample_data/coco/annotations/person_keypoints_sample.json",
    ...                            "sample_data/coco/images")
    >>> len(entries), sum(len(e["people"]) for e in entries)
    (52, 124)
    """
    spec = get_keypoint_spec(dataset)
    k = spec.num_keypoints
    data = load_json(annotation_file)
    name = os.path.basename(os.fspath(annotation_file))
    if not isinstance(data, dict):
        raise ValueError(f"{name}: expected a JSON object with `images` and `annotations`. "
                         f"Received: a {type(data).__name__}")
    for key in ("images", "annotations"):
        if key not in data:
            raise ValueError(f"{name}: missing top-level key {key!r} (keys present: "
                             f"{sorted(data)}).")
        if not isinstance(data[key], list):
            raise ValueError(f"{name}: `{key}` must be a list. Received: {type(data[key]).__name__}")
    categories = data.get("categories", [])
    if not isinstance(categories, list):
        raise ValueError(f"{name}: `categories` must be a list. Received: {type(categories).__name__}")
    kp_categories = {integer(c["id"]) for c in categories if isinstance(c, dict)
                     and c.get("keypoints") is not None and "id" in c}
    kp_categories.discard(None)
    images = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise ValueError(f"{name}: images[{i}] must be an object. Received: {json.dumps(img)[:100]}")
        missing = [key for key in ("id", "file_name") if key not in img]
        if missing:
            raise ValueError(f"{name}: images[{i}] misses key(s) {missing}. Received: {img!r:.200}")
        image_id = integer(img["id"])
        if image_id is None:
            raise ValueError(f"{name}: images[{i}] `id` must be an integer (image ids are "
                             f"integers). Received: id={json.dumps(img['id'])[:60]}")
        if image_id in images:
            raise ValueError(f"{name}: duplicate image id {image_id} (images[{i}]).")
        where = f"images[{i}] (image id {image_id})"
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise ValueError(f"{name}: {where} `file_name` must be a non-empty string. "
                             f"Received: file_name={json.dumps(img['file_name'])[:60]}")
        size = {}
        for key in ("height", "width"):
            size[key] = integer(img.get(key, 0))
            if size[key] is None or size[key] < 0:
                raise ValueError(f"{name}: {where} `{key}` must be a non-negative integer (or "
                                 f"absent). Received: {key}={json.dumps(img[key])[:60]}")
        images[image_id] = {
            "image_id": image_id, "filename": img["file_name"],
            "path": os.path.join(os.fspath(image_dir), img["file_name"]),
            "height": size["height"], "width": size["width"], "people": []}
    skips = SkipCounter()
    ann_ids = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{name}: annotations[{i}] must be an object. "
                             f"Received: {json.dumps(ann)[:100]}")
        ann_id = integer(ann.get("id", i))
        if ann_id is None:
            raise ValueError(f"{name}: annotations[{i}] `id` must be an integer. "
                             f"Received: id={json.dumps(ann['id'])[:60]}")
        where = f"annotation id {ann_id} (annotations[{i}])"
        if "id" in ann:
            if ann_id in ann_ids:
                raise ValueError(f"{name}: duplicate annotation id {ann_id} (annotations"
                                 f"[{ann_ids[ann_id]}] and annotations[{i}]).")
            ann_ids[ann_id] = i
        missing = [key for key in ("image_id", "bbox") if key not in ann]
        if missing:
            raise ValueError(f"{name}: {where} misses key(s) {missing}.")
        image_id = integer(ann["image_id"])
        if image_id is None:
            raise ValueError(f"{name}: {where} `image_id` must be an integer (image ids are "
                             f"integers). Received: image_id={json.dumps(ann['image_id'])[:60]}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise ValueError(f"{name}: {where} `iscrowd` must be 0 or 1. "
                             f"Received: iscrowd={json.dumps(crowd)[:60]}")
        category = ann.get("category_id")
        if category is not None and integer(category) is None:
            raise ValueError(f"{name}: {where} `category_id` must be an integer. "
                             f"Received: category_id={json.dumps(category)[:60]}")
        if image_id not in images:
            skips.add("annotation_for_unknown_image", f"{where}, image id {image_id}")
            continue
        if crowd:
            skips.add("crowd", where)
            continue
        if kp_categories and integer(category) not in kp_categories:
            skips.add("not_person_category", where)
            continue
        if "keypoints" not in ann:
            raise ValueError(f"{name}: {where} has no `keypoints`.")
        kp = ann["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else json.dumps(kp)[:60]
            raise ValueError(
                f"{name}: {where} has {n} keypoint values; the keypoint spec "
                f"{spec.name!r} needs 3 x {k} = {3 * k}. Pass the matching `dataset=`.")
        kp = numbers(kp)
        if kp is None:
            raise ValueError(f"{name}: {where} `keypoints` must hold numbers (booleans and null "
                             f"are not); keypoints{first_bad(ann['keypoints'])}.")
        kp = kp.reshape(k, 3)
        bbox = numbers(ann["bbox"], 4)
        if bbox is None:
            raise ValueError(f"{name}: {where} `bbox` must be [x, y, w, h], four numbers. "
                             f"Received: bbox={json.dumps(ann['bbox'])[:80]}")
        area = ann.get("area", float(bbox[2] * bbox[3]))
        if isinstance(area, bool) or not isinstance(area, (int, float)):
            raise ValueError(f"{name}: {where} `area` must be a number. "
                             f"Received: area={json.dumps(area)[:60]}")
        # Finite as stored (float32): 1e39 is finite here but infinite in a shard.
        values = np.concatenate([kp.reshape(-1), bbox, [float(area)]])
        with np.errstate(over="ignore"):
            if not np.isfinite(values.astype(np.float32)).all():
                skips.add("non_finite_values", where)
                continue
        if not (kp[:, 2] > 0).any():
            skips.add("no_keypoints", where)
            continue
        # Visibility 1 (labelled, occluded) and 2 (visible) both train, as in the reference.
        # Joints outside the image are checked when the image's size is known (shards.py).
        images[image_id]["people"].append({
            "id": ann_id, "bbox": [float(v) for v in bbox], "keypoints": kp.astype(np.float32),
            "area": float(area), "iscrowd": 0})
    return list(images.values()), skips


def build_coco_shards(annotation_file, image_dir, output_prefix, num_shards=1, dataset="coco",
                      num_workers=2, keep_empty_images=True, progress=True, verbose=True,
                      overwrite=False):
    """Builds COCO TFRecord shards: read, check, write, report.

    Args:
        annotation_file: COCO keypoint json.
        image_dir: image folder.
        output_prefix: shards go to ``PREFIX-00000-of-000NN.tfrecord``.
        num_shards: number of shards.
        dataset: ``"coco"`` or a ``KeypointSpec`` for custom keypoint sets.
        num_workers: parallel writer processes.
        keep_empty_images: keep images without usable people (evaluation
            with detections needs every image).
        progress: tqdm bar.
        verbose: print the skip report.
        overwrite: replace a complete set already under ``output_prefix``
            (only once the new one is complete); without it that set is refused
            before anything is read or written.

    Returns:
        The manifest dict.

    Raises:
        FileExistsError: a complete set is there and ``overwrite`` is False.
        ValueError: a bad annotation file, an unusable output path, no usable person.
        keras_dpn.data.shards.ShardWriteError: an I/O fault (full disk, ...).

    Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     manifest = build_coco_shards(
    ...         "sample_data/coco/annotations/person_keypoints_sample.json",
    ...         "sample_data/coco/images", os.path.join(d, "coco_sample"), 2, progress=False,
    ...         verbose=False)
    ...     print(sorted(os.listdir(d)))
    ['coco_sample-00000-of-00002.tfrecord', 'coco_sample-00001-of-00002.tfrecord', 'coco_sample-manifest.json']
    >>> manifest["num_shards"], manifest["people"]
    (2, 124)
    """
    return build_from_reader(read_coco, annotation_file, image_dir, output_prefix, num_shards,
                             dataset=dataset, num_workers=num_workers,
                             keep_empty_images=keep_empty_images, progress=progress,
                             verbose=verbose, overwrite=overwrite)
