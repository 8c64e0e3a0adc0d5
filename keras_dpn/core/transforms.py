"""Crop geometry of the top-down procedure: boxes, affine matrices, normalization.

A person crop follows the HRNet reference (``lib/utils/transforms.py`` and
``lib/dataset/coco.py`` of leoxiaobin/deep-high-resolution-net.pytorch):

1. A box ``(x, y, w, h)`` becomes a *center* and a *scale*: the box is widened
   (or heightened) to the network input's aspect ratio and multiplied by 1.25.
   Unlike the reference, ``scale`` is kept in source pixels (the reference
   divides by a "pixel std" of 200 and multiplies back inside the affine).
2. ``get_affine_transform`` maps the source window onto the network input:
   the center goes to the middle of the output, ``scale[0]`` source pixels
   span the output width, and the window is rotated by ``rotation`` degrees.
   Only the width of ``scale`` sets the zoom, as in the reference; step 1 is
   what makes the height agree.

Everything here exists in numpy (evaluation, inference, tests) and, where the
input pipeline needs it, in TensorFlow with the same conventions.

Example:
>>> center, scale = box_to_center_scale([10, 20, 30, 60], aspect_ratio=192 / 256)
>>> center.tolist(), scale.tolist()
([25.0, 50.0], [56.25, 75.0])
>>> m = get_affine_transform(center, scale, 0.0, output_size=(256, 192))
>>> affine_transform_points([[25.0, 50.0]], m).tolist()
[[96.0, 128.0]]
"""

import math

import numpy as np

from keras_dpn.core import optional as _optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The reference pads every person box by this factor before cropping.
DEFAULT_PADDING = 1.25


def _tf():
    # TensorFlow is imported lazily so that the numpy half of this module
    # (used by evaluation and inference) does not pay for it, and works without it.
    return _optional.tensorflow("The TensorFlow crop functions of keras_dpn.core.transforms (*_tf)")


def is_tf_tensor(x):
    """True for a TensorFlow tensor or variable, checked without importing TensorFlow."""
    return type(x).__module__.startswith("tensorflow.")


def normalize_image(image):
    """RGB image (uint8 in [0, 255] or float in [0, 1]) -> float32, ImageNet-normalized.

    Works on TensorFlow tensors (returns a tensor) and on anything numpy
    reads, such as arrays of the JAX or PyTorch backends (returns numpy).
    A uint8 input is divided by 255 first; a float input is taken as already
    in [0, 1].

    Args:
        image: ``(..., H, W, 3)`` array or tensor, RGB channel order.

    Returns:
        float32 array or tensor of the same shape.

    Example:
    >>> x = normalize_image(np.full((2, 2, 3), 255, np.uint8))
    >>> [round(float(v), 3) for v in x[0, 0]]
    [2.249, 2.429, 2.64]
    """
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    if not is_tf_tensor(image):
        image = np.asarray(image)
        if image.shape[-1:] != (3,):
            raise ValueError(f"`image` must have 3 channels (RGB) in its last axis. "
                             f"Received: image.shape={image.shape}")
        x = image.astype(np.float32)
        if image.dtype == np.uint8:
            x = x / 255.0
        return (x - mean) / std
    tf = _tf()
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape[-1] not in (None, 3):
        raise ValueError(f"`image` must have 3 channels (RGB) in its last axis. "
                         f"Received: image.shape={image.shape}")
    x = tf.cast(image, tf.float32)
    if image.dtype == tf.uint8:
        x = x / 255.0
    return (x - mean) / std


def box_to_center_scale(box, aspect_ratio, padding=DEFAULT_PADDING):
    """Box ``(x, y, w, h)`` -> ``(center (2,), scale (2,))`` in source pixels.

    The HRNet reference's ``_box2cs`` / ``_xywh2cs``: center of the box, then the
    shorter side is grown so that ``w / h == aspect_ratio``, then both sides are
    multiplied by ``padding``. Works on a single box or on ``(N, 4)`` boxes.

    Args:
        box: ``(4,)`` or ``(N, 4)`` boxes as ``x, y, width, height``.
        aspect_ratio: network input width / height (192 / 256 for 256x192).
        padding: factor applied after the aspect fix (1.25 in the reference).

    Returns:
        ``center`` and ``scale``, float32, each ``(2,)`` or ``(N, 2)``.

    Example:
    >>> c, s = box_to_center_scale([0, 0, 90, 90], aspect_ratio=0.75)
    >>> c.tolist(), s.tolist()
    ([45.0, 45.0], [112.5, 150.0])
    """
    box = np.asarray(box, np.float64)
    if box.shape[-1:] != (4,):
        raise ValueError(f"`box` must have 4 values (x, y, w, h) in its last axis. "
                         f"Received: box.shape={box.shape}")
    if not aspect_ratio > 0:
        raise ValueError(f"`aspect_ratio` must be positive. Received: aspect_ratio={aspect_ratio!r}")
    x, y, w, h = np.moveaxis(box, -1, 0)
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1)
    # Grow the short side (relative to the target aspect), never shrink.
    w2 = np.where(w > aspect_ratio * h, w, h * aspect_ratio)
    h2 = np.where(w > aspect_ratio * h, w / aspect_ratio, h)
    scale = np.stack([w2, h2], axis=-1) * padding
    return center.astype(np.float32), scale.astype(np.float32)


def box_to_center_scale_tf(box, aspect_ratio, padding=DEFAULT_PADDING):
    """TensorFlow version of :func:`box_to_center_scale` (``(..., 4)`` boxes)."""
    tf = _tf()
    box = tf.cast(box, tf.float32)
    x, y, w, h = tf.unstack(box, axis=-1)
    center = tf.stack([x + w * 0.5, y + h * 0.5], axis=-1)
    wider = w > aspect_ratio * h
    w2 = tf.where(wider, w, h * aspect_ratio)
    h2 = tf.where(wider, w / aspect_ratio, h)
    return center, tf.stack([w2, h2], axis=-1) * padding


def _rotate(point, rad):
    sn, cs = math.sin(rad), math.cos(rad)
    return np.array([point[0] * cs - point[1] * sn, point[0] * sn + point[1] * cs])


def _third_point(a, b):
    # The point that makes (a, b, c) a right angle at b, turned +90 degrees.
    d = a - b
    return b + np.array([-d[1], d[0]])


def _solve_affine(src, dst):
    """The (2, 3) matrix M with ``M @ [p, 1] == q`` for three point pairs."""
    a = np.concatenate([src, np.ones((3, 1))], axis=1)  # (3, 3)
    return np.linalg.solve(a, dst).T


def get_affine_transform(center, scale, rotation, output_size, inverse=False):
    """The (2, 3) matrix mapping the source window onto the crop (or back).

    The HRNet three-point construction: the window center maps to the crop
    center, a point ``scale[0] / 2`` above the center (turned by ``rotation``)
    maps to the top-middle of the crop, and a third point at a right angle
    fixes the rest. Written here from that description.

    Args:
        center: ``(2,)`` window center in source pixels.
        scale: ``(2,)`` window size in source pixels; only ``scale[0]`` is used.
        rotation: degrees; positive turns the window counter-clockwise in the
            image, so the content appears turned clockwise in the crop.
        output_size: ``(height, width)`` of the crop.
        inverse: if True, return the crop -> source matrix.

    Returns:
        ``(2, 3)`` float64 matrix for :func:`affine_transform_points` or
        ``cv2.warpAffine``.

    Example:
    >>> m = get_affine_transform([100, 100], [50, 50], 0, (64, 64))
    >>> affine_transform_points([[75, 75], [100, 100]], m).tolist()
    [[0.0, 0.0], [32.0, 32.0]]
    """
    center = np.asarray(center, np.float64).reshape(2)
    scale = np.asarray(scale, np.float64).reshape(-1)
    if len(output_size) != 2:
        raise ValueError(f"`output_size` must be (height, width). Received: output_size={output_size!r}")
    out_h, out_w = float(output_size[0]), float(output_size[1])
    src_w = scale[0]
    rad = math.pi * float(rotation) / 180.0
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0] = center
    src[1] = center + _rotate([0.0, src_w * -0.5], rad)
    dst[0] = [out_w * 0.5, out_h * 0.5]
    dst[1] = dst[0] + np.array([0.0, out_w * -0.5])
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    return _solve_affine(dst, src) if inverse else _solve_affine(src, dst)


def affine_transform_points(points, matrix):
    """Applies a (2, 3) affine matrix to ``(..., 2)`` points (numpy)."""
    points = np.asarray(points, np.float64)
    matrix = np.asarray(matrix, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def flip_matrix(image_width):
    """(2, 3) matrix of the reference's horizontal flip ``x -> width - 1 - x``."""
    return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0]])


def compose_affine(outer, inner):
    """(2, 3) matrix of ``outer(inner(p))``."""
    o = np.vstack([np.asarray(outer, np.float64), [0.0, 0.0, 1.0]])
    i = np.vstack([np.asarray(inner, np.float64), [0.0, 0.0, 1.0]])
    return (o @ i)[:2]


def get_affine_transform_tf(center, scale, rotation, output_size, inverse=False):
    """TensorFlow closed form of :func:`get_affine_transform`, batched.

    The three-point construction reduces to a similarity: ``dst = k R(-r) (src -
    center) + crop_center`` with ``k = out_w / scale[0]``. Tested equal to the
    numpy construction.

    Args:
        center: ``(..., 2)`` tensor.
        scale: ``(..., 2)`` tensor (only ``[..., 0]`` is used).
        rotation: ``(...)`` degrees.
        output_size: python ``(height, width)``.
        inverse: crop -> source if True.

    Returns:
        ``(..., 2, 3)`` float32 tensor.
    """
    tf = _tf()
    center = tf.cast(center, tf.float32)
    scale = tf.cast(scale, tf.float32)
    rad = tf.cast(rotation, tf.float32) * (math.pi / 180.0)
    out_h, out_w = float(output_size[0]), float(output_size[1])
    cs, sn = tf.cos(rad), tf.sin(rad)
    cx, cy = center[..., 0], center[..., 1]
    ox, oy = out_w * 0.5, out_h * 0.5
    if inverse:
        inv_k = scale[..., 0] / out_w
        a, b = inv_k * cs, -inv_k * sn
        c, d = inv_k * sn, inv_k * cs
        tx = cx - a * ox - b * oy
        ty = cy - c * ox - d * oy
    else:
        k = out_w / scale[..., 0]
        a, b = k * cs, k * sn
        c, d = -k * sn, k * cs
        tx = ox - a * cx - b * cy
        ty = oy - c * cx - d * cy
    row0 = tf.stack([a, b, tx], axis=-1)
    row1 = tf.stack([c, d, ty], axis=-1)
    return tf.stack([row0, row1], axis=-2)


def affine_transform_points_tf(points, matrix):
    """Applies ``(..., 2, 3)`` matrices to ``(..., N, 2)`` points (TensorFlow)."""
    tf = _tf()
    points = tf.cast(points, tf.float32)
    matrix = tf.cast(matrix, tf.float32)
    linear = matrix[..., :2]
    shift = matrix[..., 2]
    return tf.linalg.matmul(points, linear, transpose_b=True) + shift[..., None, :]


def compose_affine_tf(outer, inner):
    """``outer(inner(p))`` for ``(..., 2, 3)`` TensorFlow matrices."""
    tf = _tf()
    a = outer[..., :2]
    return tf.concat([tf.linalg.matmul(a, inner[..., :2]),
                      (tf.linalg.matmul(a, inner[..., 2:]) + outer[..., 2:])], axis=-1)


def flip_matrix_tf(image_width):
    """TensorFlow (2, 3) matrix of ``x -> width - 1 - x``."""
    tf = _tf()
    w = tf.cast(image_width, tf.float32)
    return tf.stack([tf.stack([-1.0, 0.0, w - 1.0]), tf.constant([0.0, 1.0, 0.0])])


def warp_image_tf(image, inverse_matrix, output_size, fill_value=0.0):
    """One bilinear warp of ``image`` into the crop, like ``cv2.warpAffine``.

    ``tf.raw_ops.ImageProjectiveTransformV3`` reads, for every output pixel
    ``(x, y)``, the input at ``M (x, y, 1)``: it wants the crop -> source
    matrix, flattened to its 8-parameter projective form (last row 0, 0).
    Pixel coordinates are integer indices on both sides, as in OpenCV, so the
    crop agrees with the reference's ``cv2.warpAffine``.

    Args:
        image: ``(H, W, C)`` or ``(B, H, W, C)`` tensor (uint8 or float).
        inverse_matrix: ``(2, 3)`` or ``(B, 2, 3)`` crop -> source matrices.
        output_size: python ``(height, width)``.
        fill_value: value outside the source image.

    Returns:
        float32 tensor ``(out_h, out_w, C)`` (or batched).
    """
    tf = _tf()
    batched = image.shape.rank == 4
    images = image if batched else image[None]
    m = tf.reshape(tf.cast(inverse_matrix, tf.float32), [-1, 6])
    transforms = tf.concat([m, tf.zeros([tf.shape(m)[0], 2], tf.float32)], axis=-1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms,
        output_shape=tf.constant([int(output_size[0]), int(output_size[1])], tf.int32),
        fill_value=tf.constant(fill_value, tf.float32), interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return out if batched else out[0]


def crop_image(image, center, scale, output_size, rotation=0.0):
    """Crops one person window from a numpy image with ``cv2.warpAffine``.

    For inference on images outside tf.data. Same geometry and interpolation
    as the training pipeline.

    Args:
        image: ``(H, W, C)`` uint8 or float numpy image.
        center: ``(2,)`` window center in pixels.
        scale: ``(2,)`` window size in pixels (see :func:`box_to_center_scale`).
        output_size: ``(height, width)`` of the crop.
        rotation: degrees.

    Returns:
        The ``(height, width, C)`` crop, same dtype as ``image``.

    Example:
    >>> img = np.zeros((100, 100, 3), np.uint8)
    >>> c, s = box_to_center_scale([20, 10, 30, 40], 192 / 256)
    >>> crop_image(img, c, s, (256, 192)).shape
    (256, 192, 3)
    """
    import cv2
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"`image` must be (H, W, C). Received: image.shape={image.shape}")
    m = get_affine_transform(center, scale, rotation, output_size)
    return cv2.warpAffine(image, m, (int(output_size[1]), int(output_size[0])),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)
