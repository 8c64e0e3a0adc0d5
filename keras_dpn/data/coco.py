"""COCO keypoint annotations -> image entries for the shard writer.

Reads a COCO-format ``person_keypoints_*.json`` (or a custom dataset in the
same format with another keypoint count), checks its structure and returns
one entry per image with the people that can be trained on. Structural
faults (missing keys, keypoint arrays of the wrong length, duplicate image
ids) raise ``ValueError`` naming the file and the annotation; annotations
that are well-formed but unusable are skipped and counted by reason.
"""

import json
import math
import os

import numpy as np

from keras_dpn.data.shards import SkipCounter, build_from_reader
from keras_dpn.keypoints import get_keypoint_spec


def load_json(path, what="annotation file"):
    """Loads a JSON file with errors that name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"The {what} does not exist. Received: {path!r}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"The {what} {path!r} is not valid JSON: {e}") from None


def read_coco(annotation_file, image_dir, dataset="coco"):
    """Reads and checks a COCO keypoint annotation file.

    Args:
        annotation_file: path of the COCO-format json.
        image_dir: folder holding the ``file_name`` of every image.
        dataset: ``"coco"`` or a ``KeypointSpec`` (its keypoint count is
            what every annotation must have).

    Returns:
        ``(entries, skips)``: a list of image dicts (``image_id``, ``filename``,
        ``path``, ``height``, ``width``, ``people``) and a ``SkipCounter``.

    Raises:
        ValueError: unreadable file, missing keys, wrong keypoint length.

    Example:
    >>> entries, skips = read_coco("sample_data/coco/annotations/person_keypoints_sample.json",
    ...                            "sample_data/coco/images")  # doctest: +SKIP
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
    kp_categories = {c["id"] for c in data.get("categories", []) if isinstance(c, dict)
                     and c.get("keypoints") is not None and "id" in c}
    images = {}
    for i, img in enumerate(data["images"]):
        missing = [key for key in ("id", "file_name") if key not in img]
        if missing:
            raise ValueError(f"{name}: images[{i}] misses key(s) {missing}. Received: {img!r:.200}")
        if img["id"] in images:
            raise ValueError(f"{name}: duplicate image id {img['id']} (images[{i}]).")
        images[img["id"]] = {
            "image_id": int(img["id"]), "filename": str(img["file_name"]),
            "path": os.path.join(os.fspath(image_dir), str(img["file_name"])),
            "height": int(img.get("height", 0)), "width": int(img.get("width", 0)),
            "people": []}
    skips = SkipCounter()
    for i, ann in enumerate(data["annotations"]):
        ann_id = ann.get("id", i)
        where = f"annotation id {ann_id} (annotations[{i}])"
        missing = [key for key in ("image_id", "bbox") if key not in ann]
        if missing:
            raise ValueError(f"{name}: {where} misses key(s) {missing}.")
        if ann["image_id"] not in images:
            skips.add("annotation_for_unknown_image", f"{where}, image id {ann['image_id']}")
            continue
        if ann.get("iscrowd", 0):
            skips.add("crowd", where)
            continue
        if kp_categories and ann.get("category_id") not in kp_categories:
            skips.add("not_person_category", where)
            continue
        if "keypoints" not in ann:
            raise ValueError(f"{name}: {where} has no `keypoints`.")
        kp = ann["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) if isinstance(kp, list) else kp
            raise ValueError(
                f"{name}: {where} has {n} keypoint values; the keypoint spec "
                f"{spec.name!r} needs 3 x {k} = {3 * k}. Pass the matching `dataset=`.")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{name}: {where} `bbox` must be [x, y, w, h]. Received: {bbox!r}")
        try:
            kp = np.asarray(kp, np.float64).reshape(k, 3)
            bbox = [float(v) for v in bbox]
        except (TypeError, ValueError):
            raise ValueError(f"{name}: {where} has non-numeric box or keypoint values.") from None
        if not (np.isfinite(kp).all() and all(math.isfinite(v) for v in bbox)):
            skips.add("non_finite_values", where)
            continue
        if not (kp[:, 2] > 0).any():
            skips.add("no_keypoints", where)
            continue
        # Visibility 1 (labelled, occluded) and 2 (visible) both train, as in the reference.
        images[ann["image_id"]]["people"].append({
            "id": int(ann_id), "bbox": bbox, "keypoints": kp.astype(np.float32),
            "area": float(ann.get("area", bbox[2] * bbox[3])), "iscrowd": 0})
    return list(images.values()), skips


def build_coco_shards(annotation_file, image_dir, output_prefix, num_shards=1, dataset="coco",
                      num_workers=2, keep_empty_images=True, progress=True, verbose=True):
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

    Returns:
        The manifest dict.

    Example:
    >>> build_coco_shards("sample_data/coco/annotations/person_keypoints_sample.json",
    ...                   "sample_data/coco/images", "/tmp/shards/coco_sample", 2)  # doctest: +SKIP
    """
    return build_from_reader(read_coco, annotation_file, image_dir, output_prefix, num_shards,
                             dataset=dataset, num_workers=num_workers,
                             keep_empty_images=keep_empty_images, progress=progress,
                             verbose=verbose)
