"""Serialized ``tf.train.Example`` -> dict of tensors: the shard record layout.

One record holds **one image with all its people**. Evaluation needs every
person of an image together (COCO results are per image, OKS-NMS runs per
image, detection boxes are looked up per image) and the JPEG is stored once
however many people it holds; training samples people by un-batching the
people of each record after reading, which costs nothing extra.

Record keys (what :func:`make_example` writes):

=========================  =======  ==========  ====================================
key                        type     length      meaning
=========================  =======  ==========  ====================================
``image/encoded``          bytes    1           the JPEG file's bytes, as they were
``image/format``           bytes    1           ``b"jpeg"``
``image/filename``         bytes    1           file name relative to the image folder
``image/id``               int64    1           COCO image id (MPII: number in the name)
``image/height``           int64    1           decoded height in pixels
``image/width``            int64    1           decoded width in pixels
``image/sha256``           bytes    1           hex sha256 of ``image/encoded``
``image/num_keypoints``    int64    1           K, joints per person
``person/bbox``            float    4 P         ``x, y, w, h`` clipped to the image
``person/keypoints``       float    3 K P       ``x, y, v`` (0-based pixels; v > 0 labelled)
``person/area``            float    P           annotation area (COCO) or box area
``person/iscrowd``         int64    P           crowd flag (0: crowds are skipped)
``person/id``              int64    P           annotation id (MPII: row in the json)
``person/center``          float    2 P or 0    crop center in pixels (MPII only)
``person/scale``           float    2 P or 0    crop size in pixels (MPII only)
=========================  =======  ==========  ====================================

COCO stores no center/scale: they depend on the network input's aspect ratio
and are derived from ``person/bbox`` by the parser. MPII stores the
annotation's own center/scale, already converted the way the HRNet reference
does (``center_y += 15 * s``, ``scale = s * 200 * 1.25`` pixels).
"""

import hashlib

import numpy as np

from keras_dpn.core.optional import tf_data as tf


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def make_example(encoded, image_id, filename, height, width, bbox, keypoints, area,
                 iscrowd, person_id, center=None, scale=None):
    """Builds one image record (see the module table for the keys).

    Args:
        encoded: JPEG bytes, stored unchanged.
        image_id: int image id.
        filename: str file name.
        height, width: decoded image size.
        bbox: ``(P, 4)`` boxes ``x, y, w, h``.
        keypoints: ``(P, K, 3)``.
        area: ``(P,)``.
        iscrowd: ``(P,)``.
        person_id: ``(P,)``.
        center, scale: optional ``(P, 2)`` each.

    Returns:
        ``tf.train.Example``.
    """
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
        raise ValueError(f"`keypoints` must be (P, K, 3). Received: keypoints.shape={keypoints.shape}")
    num_keypoints = keypoints.shape[1]
    feature = {
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([b"jpeg"]),
        "image/filename": _bytes([filename.encode("utf-8")]),
        "image/id": _int64([image_id]),
        "image/height": _int64([height]),
        "image/width": _int64([width]),
        "image/sha256": _bytes([hashlib.sha256(encoded).hexdigest().encode("ascii")]),
        "image/num_keypoints": _int64([num_keypoints]),
        "person/bbox": _float(np.asarray(bbox, np.float32).reshape(-1)),
        "person/keypoints": _float(keypoints.reshape(-1)),
        "person/area": _float(np.asarray(area, np.float32).reshape(-1)),
        "person/iscrowd": _int64(np.asarray(iscrowd).reshape(-1)),
        "person/id": _int64(np.asarray(person_id).reshape(-1)),
        "person/center": _float(np.asarray(center if center is not None else [], np.float32).reshape(-1)),
        "person/scale": _float(np.asarray(scale if scale is not None else [], np.float32).reshape(-1)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/sha256": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/num_keypoints": tf.io.FixedLenFeature([], tf.int64),
    "person/bbox": tf.io.VarLenFeature(tf.float32),
    "person/keypoints": tf.io.VarLenFeature(tf.float32),
    "person/area": tf.io.VarLenFeature(tf.float32),
    "person/iscrowd": tf.io.VarLenFeature(tf.int64),
    "person/id": tf.io.VarLenFeature(tf.int64),
    "person/center": tf.io.VarLenFeature(tf.float32),
    "person/scale": tf.io.VarLenFeature(tf.float32),
}

# What inspect_example finds wrong with a record that parses (index = code).
RECORD_PROBLEMS = (
    "",
    "is not a keras_dpn record (image/id, image/height, image/width or image/num_keypoints "
    "missing or repeated)",
    "holds another keypoint count than the keypoint spec",
    "has person fields of inconsistent lengths (bbox, keypoints, area, iscrowd, id, "
    "center, scale)",
)


def inspect_example(serialized, num_keypoints=-1):
    """Checks one serialized record against the layout without failing on what it finds.

    A record that is not a ``tf.train.Example`` at all (or stores a key with
    another type) still fails to parse; everything :func:`decode_example`
    would trip over later is returned as a code instead, so that the reader
    can name the shard and the record.

    Args:
        serialized: scalar string tensor.
        num_keypoints: K the keypoint spec expects; -1 accepts any.

    Returns:
        ``(code, k)``: int32 index into :data:`RECORD_PROBLEMS` (0: fine) and
        the record's int64 ``image/num_keypoints`` (-1 when absent).
    """
    # Not the image bytes: copying them would cost more than all the rest.
    lenient = {key: tf.io.VarLenFeature(f.dtype) if isinstance(f, tf.io.FixedLenFeature) else f
               for key, f in _FEATURES.items()
               if key not in ("image/encoded", "image/filename", "image/sha256")}
    p = tf.io.parse_single_example(serialized, lenient)
    size = {key: tf.size(v.values) for key, v in p.items()}
    scalars_ok = tf.reduce_all(tf.stack([
        tf.equal(size[key], 1) for key in ("image/id", "image/height", "image/width",
                                           "image/num_keypoints")]))
    k = tf.reduce_max(tf.concat([p["image/num_keypoints"].values,
                                 tf.constant([-1], tf.int64)], 0))
    k_ok = (num_keypoints < 0) | tf.equal(k, num_keypoints)
    people = size["person/bbox"] // 4
    layout_ok = tf.reduce_all(tf.stack([
        tf.equal(size["person/bbox"] % 4, 0),
        tf.equal(tf.cast(size["person/keypoints"], tf.int64), tf.cast(people * 3, tf.int64) * k),
        tf.equal(size["person/area"], people),
        tf.equal(size["person/iscrowd"], people),
        tf.equal(size["person/id"], people),
        tf.equal(size["person/center"], size["person/scale"]),
        tf.equal(size["person/center"], 0) | tf.equal(size["person/center"], 2 * people)]))
    code = tf.where(~scalars_ok, 1, tf.where(~k_ok, 2, tf.where(~layout_ok, 3, 0)))
    return tf.cast(code, tf.int32), k


def decode_example(serialized, num_keypoints):
    """Parses one serialized record into a dict of tensors.

    Args:
        serialized: scalar string tensor.
        num_keypoints: K expected by the caller's keypoint spec; a record
            with another K fails with a message naming both.

    Returns:
        dict with, for P people:

        - ``encoded``: string ``()``, JPEG bytes.
        - ``filename``: string ``()``.
        - ``image_id``: int64 ``()``.
        - ``height``, ``width``: int32 ``()``.
        - ``sha256``: string ``()``.
        - ``bbox``: float32 ``(P, 4)`` as ``x, y, w, h``.
        - ``keypoints``: float32 ``(P, K, 3)``.
        - ``area``: float32 ``(P,)``.
        - ``iscrowd``: int64 ``(P,)``.
        - ``person_id``: int64 ``(P,)``.
        - ``center``, ``scale``: float32 ``(P, 2)`` (zeros when not stored).
        - ``has_center``: bool ``(P,)``, True when center/scale were stored.
        - ``num_people``: int32 ``()``.

    Example:
    >>> ex = make_example(b"\\xff\\xd8", 7, "a.jpg", 4, 6, [[0, 0, 2, 2]],
    ...                   np.ones((1, 17, 3)), [4.0], [0], [11])
    >>> d = decode_example(ex.SerializeToString(), 17)
    >>> d["keypoints"].shape.as_list(), int(d["image_id"])
    ([1, 17, 3], 7)
    """
    p = tf.io.parse_single_example(serialized, _FEATURES)
    dense = {k: tf.sparse.to_dense(v) for k, v in p.items() if isinstance(v, tf.SparseTensor)}
    bbox = tf.reshape(dense["person/bbox"], [-1, 4])
    num_people = tf.shape(bbox)[0]
    check = tf.debugging.assert_equal(
        p["image/num_keypoints"], tf.constant(num_keypoints, tf.int64),
        message=(f"Shard records hold a different keypoint count than the keypoint spec "
                 f"expects ({num_keypoints}); pass the matching `dataset=`"))
    with tf.control_dependencies([check]):
        keypoints = tf.reshape(dense["person/keypoints"], [num_people, num_keypoints, 3])
    has = tf.size(dense["person/center"]) > 0
    zeros = tf.zeros([num_people, 2], tf.float32)
    center = tf.cond(has, lambda: tf.reshape(dense["person/center"], [-1, 2]), lambda: zeros)
    scale = tf.cond(has, lambda: tf.reshape(dense["person/scale"], [-1, 2]), lambda: zeros)
    return {
        "encoded": p["image/encoded"],
        "filename": p["image/filename"],
        "image_id": p["image/id"],
        "height": tf.cast(p["image/height"], tf.int32),
        "width": tf.cast(p["image/width"], tf.int32),
        "sha256": p["image/sha256"],
        "bbox": bbox,
        "keypoints": keypoints,
        "area": dense["person/area"],
        "iscrowd": dense["person/iscrowd"],
        "person_id": dense["person/id"],
        "center": center,
        "scale": scale,
        "has_center": tf.fill([num_people], has),
        "num_people": num_people,
    }
