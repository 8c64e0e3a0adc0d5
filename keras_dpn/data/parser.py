"""Per-image train / eval transforms on decoded records (the "parser").

Training follows the HRNet reference's ``JointsDataset.__getitem__`` for
every person of an image:

1. center/scale from the box (input aspect ratio, x1.25 padding) or, for
   MPII, from the annotation;
2. the random half body, scale, rotation and flip of
   :mod:`keras_dpn.data.augment` (the rule is written there once; this module
   runs its TensorFlow executor, :class:`~keras_dpn.data.augment.TFAugment`);
3. **one** bilinear warp per person (crop, zoom, rotation and flip at once,
   ``cv2.warpAffine`` on the uint8 image as the reference does), the joints
   moved by the same matrix, Gaussian targets from
   :class:`keras_dpn.core.codec.HeatmapCodec`.

What differs from the reference is mostly the cost:

* the JPEG of an image is decoded **once for all its people**, and only the
  part that their crop windows cover (``tf.image.decode_and_crop_jpeg``:
  rows below the windows are never decoded, columns beside them skip the
  inverse DCT); the crops are the reference's to uint8 rounding;
* when every window reads at least ``2 r`` source pixels per crop pixel
  (``dct_min_zoom=2``), the JPEG is decoded at 1/r size (r = 2, 4, 8) by
  libjpeg's DCT scaling, so big people are not decoded at full size to be
  shrunk. Those crops are smoother than the reference's point-sampled
  bilinear (2.7-5.7 grey levels of mean difference on the bundled sample at
  64x48 and 128x96; at 256x192 no COCO-sized image needs it);
  ``dct_min_zoom=0`` turns it off;
* JPEGs are decoded with libjpeg's accurate integer IDCT, as OpenCV (and so
  ``PoseEstimator`` and the deployed app) decodes them: TensorFlow's default
  fast IDCT differs by 1.2 grey levels on average (up to 14) on the sample;
* the warp runs in OpenCV through ``tf.numpy_function``: TensorFlow's
  ``ImageProjectiveTransformV3`` costs 5-7 times more CPU per crop.

Random numbers come from stateless ops seeded per image, so a fixed ``seed``
gives the same augmentation whatever the parallelism.
"""

import atexit
import threading
import time

import cv2
import numpy as np

from keras_dpn.core import transforms
from keras_dpn.core.optional import tf_data as tf
from keras_dpn.core.codec import HeatmapCodec
from keras_dpn.core.keypoints import get_keypoint_spec
from keras_dpn.data.augment import TFAugment

# libjpeg decodes at 1/1, 1/2, 1/4 or 1/8 of full size through its DCT.
DCT_RATIOS = (1, 2, 4, 8)


def _is_jpeg(encoded):
    return tf.equal(tf.strings.substr(encoded, 0, 2), b"\xff\xd8")


def image_shape(encoded):
    """``(height, width)`` int32 of an encoded image, from the JPEG header alone.

    Other formats a shard may hold (a PNG written by another tool) are
    decoded to find out.
    """
    shape = tf.cond(_is_jpeg(encoded),
                    lambda: tf.image.extract_jpeg_shape(encoded)[:2],
                    lambda: tf.shape(tf.io.decode_jpeg(encoded, channels=3))[:2])
    return tf.cast(shape, tf.int32)


def _window_corners(inverse, output_size):
    """Source-pixel positions of the four crop corners, ``(..., 4, 2)``."""
    oh, ow = (float(v) for v in output_size)
    corners = tf.constant([[0.0, 0.0], [ow - 1.0, 0.0], [0.0, oh - 1.0], [ow - 1.0, oh - 1.0]])
    return transforms.affine_transform_points_tf(corners, inverse)


def decode_window(encoded, inverse, output_size, dct_min_zoom=2.0):
    """Decodes only the part of a JPEG that some crops read.

    Args:
        encoded: scalar string tensor, the image file's bytes.
        inverse: ``(P, 2, 3)`` crop -> source-pixel matrices, one per crop.
        output_size: python ``(height, width)`` of the crops.
        dct_min_zoom: a DCT-scaled decode at ratio ``r`` is used when every
            crop reads at least ``r * dct_min_zoom`` source pixels per crop
            pixel (0: never).

    Returns:
        ``(window, to_window)``: the decoded part, uint8 ``(h, w, 3)``, and
        the ``(2, 3)`` matrix from source pixels to window pixels (a scale by
        ``1 / r`` and a shift). ``to_window`` composed with ``inverse`` is
        what the warp reads. A window wholly outside the image (or non-finite
        matrices) decodes nothing and returns a 1x1 black window: the crops
        are then all fill, as a warp of the full image would give.
    """
    inverse = tf.cast(inverse, tf.float32)
    is_jpeg = _is_jpeg(encoded)
    src = tf.reshape(_window_corners(inverse, output_size), [-1, 2])
    zoom = tf.sqrt(tf.abs(inverse[:, 0, 0] * inverse[:, 1, 1] - inverse[:, 0, 1] * inverse[:, 1, 0]))
    min_zoom = tf.reduce_min(tf.concat([zoom, tf.constant([np.inf], tf.float32)], 0))
    finite = tf.reduce_all(tf.math.is_finite(src))
    if dct_min_zoom > 0:
        level = tf.add_n([tf.cast(min_zoom >= r * dct_min_zoom, tf.int32) for r in DCT_RATIOS[1:]])
    else:
        level = tf.constant(0, tf.int32)
    level = tf.where(is_jpeg & finite, level, 0)

    def jpeg_branch(r):
        def branch():
            hw = tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.float32)
            rf = float(r)
            # Pixel i of the 1/r decode covers source pixels [r i, r i + r):
            # its centre is at r i + (r - 1) / 2.
            scaled = (src - (rf - 1.0) / 2.0) / rf
            size = tf.math.ceil(hw[::-1] / rf)
            # Bilinear reads pixels floor(x) and floor(x) + 1; one more pixel
            # on each side absorbs float rounding of the corner positions.
            lo = tf.clip_by_value(tf.floor(tf.reduce_min(scaled, 0)) - 1.0, 0.0, size)
            hi = tf.clip_by_value(tf.floor(tf.reduce_max(scaled, 0)) + 3.0, 0.0, size)
            inside = finite & tf.reduce_all(hi > lo)
            lo = tf.where(inside, lo, 0.0)
            hi = tf.where(inside, hi, 1.0)
            lo_i, hi_i = tf.cast(lo, tf.int32), tf.cast(hi, tf.int32)
            window = tf.cond(
                inside,
                lambda: tf.image.decode_and_crop_jpeg(
                    encoded, tf.stack([lo_i[1], lo_i[0], hi_i[1] - lo_i[1], hi_i[0] - lo_i[0]]),
                    channels=3, ratio=r, dct_method="INTEGER_ACCURATE"),
                lambda: tf.zeros([1, 1, 3], tf.uint8))
            shift = -(rf - 1.0) / (2.0 * rf)
            to_window = tf.stack([tf.stack([1.0 / rf, 0.0, shift - lo[0]]),
                                  tf.stack([0.0, 1.0 / rf, shift - lo[1]])])
            return window, to_window
        return branch

    def other_format():
        # Not a JPEG (decode_jpeg also reads PNG and GIF): the full image.
        image = tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")
        return image, tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    branches = [jpeg_branch(r) for r in DCT_RATIOS]
    return tf.cond(is_jpeg, lambda: tf.switch_case(level, branches), other_format)


class _ExitGuard:
    """Keeps a live iterator from hanging the interpreter at exit.

    The warp runs Python (``tf.numpy_function``) in tf.data's threads. When a
    script ends with an iterator still prefetching, Python's finalization
    stops any thread that asks for the GIL, so a warp call started then never
    returns and the iterator's destructor waits for it forever. At ``atexit``
    (before finalization) this guard raises a flag that the graph reads
    before each call, so no new call starts, and lets the calls already in
    Python finish; crops made after that are black, and nobody reads them.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._table = None
        self._count_lock = threading.Lock()
        self.in_flight = 0

    def enter(self):
        with self._count_lock:
            self.in_flight += 1

    def leave(self):
        with self._count_lock:
            self.in_flight -= 1

    def closing(self):
        """Scalar bool tensor: True once the interpreter is exiting."""
        with self._lock:
            if self._table is None:
                with tf.init_scope(), tf.device("/CPU:0"):
                    # A lookup table, not a tf.Variable: a variable made
                    # under a distribution strategy's scope would be mirrored.
                    self._table = tf.lookup.experimental.MutableHashTable(
                        tf.string, tf.int64, default_value=0, name="keras_dpn_exit_guard")
                atexit.register(self.close)
        return self._table.lookup(tf.constant("closing")) > 0

    def close(self, timeout=5.0):
        self._table.insert(tf.constant(["closing"]), tf.constant([1], tf.int64))
        # A call may be between the flag check and the GIL: wait until none
        # has been in Python for a while (sleep releases the GIL to them).
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 5 and time.monotonic() < deadline:
            quiet = quiet + 1 if self.in_flight == 0 else 0
            time.sleep(0.01)


_EXIT_GUARD = _ExitGuard()


def _warp_crops(image, matrices, out_h, out_w):
    """numpy side of :func:`warp_crops`: one ``cv2.warpAffine`` per crop."""
    _EXIT_GUARD.enter()
    try:
        out = np.zeros((matrices.shape[0], int(out_h), int(out_w), 3), np.uint8)
        for i, m in enumerate(matrices.astype(np.float64)):
            if np.isfinite(m).all():
                cv2.warpAffine(image, m, (int(out_w), int(out_h)), dst=out[i],
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return out
    finally:
        _EXIT_GUARD.leave()


def warp_crops(image, inverse, output_size):
    """Bilinear crops of one uint8 image, ``cv2.warpAffine`` in tf.data.

    OpenCV's warp is the reference's, and costs a fifth to a seventh of the
    CPU time of TensorFlow's ``ImageProjectiveTransformV3`` per crop.

    Args:
        image: uint8 ``(H, W, 3)`` tensor.
        inverse: ``(P, 2, 3)`` crop -> image-pixel matrices.
        output_size: python ``(height, width)``.

    Returns:
        uint8 ``(P, height, width, 3)``; pixels read from outside the image
        are 0, blended at the border as ``cv2.BORDER_CONSTANT`` does.
    """
    out_h, out_w = int(output_size[0]), int(output_size[1])
    inverse = tf.cast(inverse, tf.float32)

    def warp():
        return tf.numpy_function(_warp_crops, [image, inverse, out_h, out_w], tf.uint8,
                                 stateful=False)

    def black():
        return tf.zeros([tf.shape(inverse)[0], out_h, out_w, 3], tf.uint8)

    out = tf.cond(_EXIT_GUARD.closing(), black, warp)
    out.set_shape([inverse.shape[0], out_h, out_w, 3])
    return out


class PersonParser:
    """Turns the people of one image record into network examples.

    Args:
        dataset: ``"coco"``, ``"mpii"`` or a ``KeypointSpec``.
        input_size: ``(height, width)`` of the crop.
        heatmap_size: ``(height, width)`` of the targets.
        sigma: Gaussian sigma in heatmap pixels.
        augment: the training augmentation: a
            :class:`~keras_dpn.data.augment.AugmentConfig`, True (the
            reference recipe) or None / False (none).
        padding: box padding (1.25).
        use_joint_weights: multiply target weights by the spec's joint weights.
        unbiased_encoding: sub-pixel Gaussian centres (see the codec).
        dct_min_zoom: see :func:`decode_window` (2: decode at 1/r size only
            while each crop still reads 2 or more decoded pixels per crop
            pixel; 0 turns DCT scaling off).
    """

    def __init__(self, dataset="coco", input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0,
                 augment=True, padding=1.25, use_joint_weights=False, unbiased_encoding=False,
                 dct_min_zoom=2.0):
        self.spec = get_keypoint_spec(dataset)
        self.codec = HeatmapCodec(input_size, heatmap_size, sigma, unbiased=unbiased_encoding)
        self.input_size = self.codec.input_size
        self.aspect_ratio = self.input_size[1] / self.input_size[0]
        # The augmentation's settings, its rule and its TensorFlow draws.
        self.augment = TFAugment(augment, self.spec, self.input_size)
        if not (np.isfinite(dct_min_zoom) and dct_min_zoom >= 0):
            raise ValueError(f"`dct_min_zoom` must be a finite number >= 0 (0: no DCT scaling). "
                             f"Received: dct_min_zoom={dct_min_zoom!r}")
        self.padding = float(padding)
        self.dct_min_zoom = float(dct_min_zoom)
        k = self.spec.num_keypoints
        self._joint_weights = tf.constant(self.spec.weights if use_joint_weights else np.ones(k),
                                          tf.float32)
        # (x / 255 - mean) / std as one multiply-add with crop-sized
        # constants: TensorFlow's broadcast of a (3,) vector over the pixels
        # costs more than the warp.
        mean = np.asarray(transforms.IMAGENET_MEAN, np.float32)
        std = np.asarray(transforms.IMAGENET_STD, np.float32)
        shape = self.input_size + (3,)
        self._norm_scale = tf.constant(np.broadcast_to(1.0 / (255.0 * std), shape))
        self._norm_shift = tf.constant(np.broadcast_to(-mean / std, shape))

    # ----------------------------------------------------------------- helpers
    def center_scale(self, person):
        """Crop windows of a person dict: stored (MPII) or from the box (leading axes kept)."""
        c_box, s_box = transforms.box_to_center_scale_tf(person["bbox"], self.aspect_ratio,
                                                         self.padding)
        has = tf.cast(person["has_center"], tf.bool)[..., None]
        return tf.where(has, person["center"], c_box), tf.where(has, person["scale"], s_box)

    # ------------------------------------------------------------------ train
    def sample_augmentation(self, joints, vis, center, scale, seed, draws=None):
        """Draws the reference's random crop parameters, per person.

        Args:
            joints: ``(..., K, 2)`` image pixels; vis: ``(..., K)`` in {0, 1}.
            center, scale: ``(..., 2)`` windows from :meth:`center_scale`.
            seed: int ``(2,)`` stateless seed (one for all the people given).
            draws: a :class:`~keras_dpn.data.augment.Draws` to use instead of
                the seed's (tests feed both executors the same numbers).

        Returns:
            ``(center (..., 2), scale (..., 2), rotation_degrees (...), flip (...))``.
        """
        if draws is None:
            draws = self.augment.draws(seed, tf.shape(center)[:-1])
        sample = self.augment.sample(draws, joints, vis, center, scale)
        return sample.center, sample.scale, sample.rotation, sample.flip

    def crop_geometry(self, joints, vis, center, scale, rotation, flip, image_width):
        """Crop matrices and crop-space joints of people of one image.

        Args:
            joints: ``(..., K, 2)`` image pixels; vis: ``(..., K)``.
            center, scale: ``(..., 2)`` windows in the *unflipped* image.
            rotation: ``(...)`` degrees; flip: ``(...)`` bool.
            image_width: the image's width in pixels.

        Returns:
            ``(joints (..., K, 2) crop pixels, vis (..., K), inverse (..., 2, 3))``
            with left/right swapped where flipped; ``inverse`` maps crop
            pixels to image pixels.
        """
        forward, inverse = self.augment.matrices(center, scale, rotation, flip, image_width)
        joints, vis = self.augment.crop_joints(joints, vis, forward, flip)
        return joints, vis, inverse

    def normalize(self, crops):
        """uint8 crops ``(..., H, W, 3)`` -> float32 ImageNet-normalized."""
        return tf.cast(crops, tf.float32) * self._norm_scale + self._norm_shift

    def targets(self, crops, joints, vis):
        """Normalized images, Gaussian heatmaps and target weights (leading axes kept).

        Args:
            crops: uint8 ``(..., H, W, 3)``.
            joints: ``(..., K, 2)`` crop pixels; vis: ``(..., K)``.

        Returns:
            ``(images float32 (..., H, W, 3), heatmaps (..., h, w, K), target_weight (..., K))``.
        """
        heatmaps, weight = self.codec.encode_tf(joints, vis)
        return self.normalize(crops), heatmaps, weight * self._joint_weights

    def crop_image(self, encoded, inverse):
        """uint8 crops ``(P, H, W, 3)`` of an encoded image, decoding only their windows."""
        window, to_window = decode_window(encoded, inverse, self.input_size, self.dct_min_zoom)
        return warp_crops(window, transforms.compose_affine_tf(to_window, inverse),
                          self.input_size)

    def transform(self, image, joints, vis, center, scale, rotation, flip):
        """Crops and targets of one person from a *decoded* image.

        The geometry the pipeline applies, without the windowed decode (for
        tests and for images already in memory).

        Args:
            image: ``(H, W, 3)`` uint8 tensor.
            joints: ``(K, 2)`` image pixels; vis: ``(K,)``.
            center, scale: ``(2,)`` window in the *unflipped* image.
            rotation: degrees; flip: bool.

        Returns:
            ``(image (H, W, 3) float32 normalized, heatmaps (h, w, K), target_weight (K,))``.
        """
        image = tf.convert_to_tensor(image, tf.uint8)
        joints, vis, inverse = self.crop_geometry(
            tf.cast(joints, tf.float32), tf.cast(vis, tf.float32), tf.cast(center, tf.float32),
            tf.cast(scale, tf.float32), tf.cast(rotation, tf.float32), flip, tf.shape(image)[1])
        crops = warp_crops(image, inverse[None], self.input_size)[0]
        return self.targets(crops, joints, vis)

    def parse_record_train(self, record, seed):
        """Augmented uint8 crops of every person of one image record.

        The image is decoded once, and only the union of the windows.

        Args:
            record: dict of :func:`keras_dpn.data.decode_example` (``encoded``,
                ``bbox`` (P, 4), ``keypoints`` (P, K, 3), ``center``/``scale``
                (P, 2), ``has_center`` (P,)).
            seed: int ``(2,)`` stateless seed of this record.

        Returns:
            dict of per-person tensors: ``crop`` uint8 ``(P, H, W, 3)``,
            ``joints`` float32 ``(P, K, 2)`` in crop pixels, ``visible``
            float32 ``(P, K)``; :meth:`targets` finishes them (after shuffling
            and batching).
        """
        kp = tf.cast(record["keypoints"], tf.float32)
        joints, vis = kp[..., :2], tf.minimum(kp[..., 2], 1.0)
        center, scale = self.center_scale(record)
        center, scale, rotation, flip = self.sample_augmentation(joints, vis, center, scale, seed)
        width = image_shape(record["encoded"])[1]
        joints, vis, inverse = self.crop_geometry(joints, vis, center, scale, rotation, flip, width)
        return {"crop": self.crop_image(record["encoded"], inverse), "joints": joints,
                "visible": vis}

    # ------------------------------------------------------------------- eval
    def parse_record_eval(self, people):
        """Unaugmented uint8 crops of every person (box) of one image, and their meta.

        Args:
            people: dict with ``encoded`` (scalar), ``image_id`` (scalar) and,
                per person, ``bbox`` (P, 4), ``score`` (P,), ``keypoints``
                (P, K, 3), ``center``/``scale`` (P, 2), ``has_center`` (P,),
                ``person_id`` (P,).

        Returns:
            ``(crops uint8 (P, H, W, 3), meta)`` with meta ``image_id`` int64
            (P,), ``center`` float32 (P, 2), ``scale`` float32 (P, 2),
            ``score`` float32 (P,), ``bbox`` float32 (P, 4), ``person_id``
            int64 (P,) (-1 for detections), ``keypoints`` float32 (P, K, 3)
            (ground truth; zeros for detections).
        """
        center, scale = self.center_scale(people)
        p = tf.shape(center)[0]
        inverse = transforms.get_affine_transform_tf(center, scale, tf.zeros([p]),
                                                     self.input_size, inverse=True)
        crops = self.crop_image(people["encoded"], inverse)
        meta = {"image_id": tf.fill([p], tf.cast(people["image_id"], tf.int64)),
                "center": center, "scale": scale,
                "score": tf.cast(people["score"], tf.float32),
                "bbox": tf.cast(people["bbox"], tf.float32),
                "person_id": tf.cast(people["person_id"], tf.int64),
                "keypoints": tf.cast(people["keypoints"], tf.float32)}
        return crops, meta
