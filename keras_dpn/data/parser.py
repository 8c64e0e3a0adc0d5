"""Per-person train / eval transforms on decoded records (the "parser").

Training follows the HRNet reference's ``JointsDataset.__getitem__``:

1. center/scale from the box (input aspect ratio, x1.25 padding) or, for
   MPII, from the annotation;
2. half-body (probability 0.3 when more than 8 joints are labelled): the
   window is replaced by one around the upper or the lower body joints
   (x1.5), chosen at random;
3. scale ``s *= clip(N(1, 0.3), 0.7, 1.3)`` (the paper's +-30%);
4. rotation ``clip(N(0, 40), -80, 80)`` degrees with probability 0.6 (the
   paper's "+-40 degrees" is the reference's rotation factor 40, a standard
   deviation clipped at twice that);
5. horizontal flip with probability 0.5: the image flip ``x -> W - 1 - x`` is
   folded into the crop matrix and left/right joints swap channels;
6. **one** warp per person with ``tf.raw_ops.ImageProjectiveTransformV3``
   (crop, zoom, rotation and flip at once), the joints moved by the same
   matrix, Gaussian targets from :class:`keras_dpn.codec.HeatmapCodec`.

Random numbers come from stateless ops seeded per element, so a fixed
``seed`` gives the same augmentation whatever the parallelism.
"""

import numpy as np
import tensorflow as tf

from keras_dpn import transforms
from keras_dpn.codec import HeatmapCodec
from keras_dpn.keypoints import get_keypoint_spec


class PersonParser:
    """Turns one person (image bytes + box + joints) into a network example.

    Args:
        dataset: ``"coco"``, ``"mpii"`` or a ``KeypointSpec``.
        input_size: ``(height, width)`` of the crop.
        heatmap_size: ``(height, width)`` of the targets.
        sigma: Gaussian sigma in heatmap pixels.
        scale_factor: scale augmentation (0.3: +-30%).
        rotation_factor: rotation standard deviation in degrees (40).
        rotation_prob: probability of rotating at all (0.6).
        flip_prob: probability of a horizontal flip (0.5; 0 disables).
        half_body_prob: probability of half-body crops (None: 0.3, or 0 for
            MPII as in the reference configs).
        half_body_min_joints: half-body needs more labelled joints than this.
        padding: box padding (1.25).
        use_joint_weights: multiply target weights by the spec's joint weights.
        unbiased_encoding: sub-pixel Gaussian centres (see the codec).
    """

    def __init__(self, dataset="coco", input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0,
                 scale_factor=0.3, rotation_factor=40.0, rotation_prob=0.6, flip_prob=0.5,
                 half_body_prob=None, half_body_min_joints=8, padding=1.25,
                 use_joint_weights=False, unbiased_encoding=False):
        self.spec = get_keypoint_spec(dataset)
        self.codec = HeatmapCodec(input_size, heatmap_size, sigma, unbiased=unbiased_encoding)
        self.input_size = self.codec.input_size
        self.aspect_ratio = self.input_size[1] / self.input_size[0]
        if not 0 <= scale_factor < 1:
            raise ValueError(f"`scale_factor` must be in [0, 1). Received: scale_factor={scale_factor!r}")
        for name, value in (("rotation_prob", rotation_prob), ("flip_prob", flip_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"`{name}` must be in [0, 1]. Received: {name}={value!r}")
        if half_body_prob is None:
            half_body_prob = 0.0 if self.spec.name == "mpii" else 0.3
        if not 0 <= half_body_prob <= 1:
            raise ValueError(f"`half_body_prob` must be in [0, 1]. "
                             f"Received: half_body_prob={half_body_prob!r}")
        if not rotation_factor >= 0:
            raise ValueError(f"`rotation_factor` must be >= 0. Received: rotation_factor={rotation_factor!r}")
        self.scale_factor = float(scale_factor)
        self.rotation_factor = float(rotation_factor)
        self.rotation_prob = float(rotation_prob)
        self.flip_prob = float(flip_prob)
        self.half_body_prob = float(half_body_prob)
        self.half_body_min_joints = int(half_body_min_joints)
        self.padding = float(padding)
        k = self.spec.num_keypoints
        self._flip_index = tf.constant(self.spec.flip_index, tf.int32)
        upper = np.zeros(k, bool)
        upper[list(self.spec.upper_body)] = True
        lower = np.zeros(k, bool)
        lower[list(self.spec.lower_body)] = True
        self._upper = tf.constant(upper)
        self._lower = tf.constant(lower)
        self._joint_weights = tf.constant(self.spec.weights if use_joint_weights else np.ones(k),
                                          tf.float32)

    # ----------------------------------------------------------------- helpers
    def center_scale(self, person):
        """Crop window of a person dict: stored (MPII) or from the box."""
        c_box, s_box = transforms.box_to_center_scale_tf(person["bbox"], self.aspect_ratio,
                                                         self.padding)
        has = person["has_center"]
        return tf.where(has, person["center"], c_box), tf.where(has, person["scale"], s_box)

    def _half_body(self, joints, vis, u_choice):
        """Window around the upper or lower body joints (the reference's rule)."""
        visible = vis > 0
        up = visible & self._upper
        lo = visible & self._lower
        n_up = tf.reduce_sum(tf.cast(up, tf.int32))
        n_lo = tf.reduce_sum(tf.cast(lo, tf.int32))
        take_upper = ((u_choice < 0.5) & (n_up > 2)) | ~(n_lo > 2)
        sel = tf.where(take_upper, up, lo)
        n_sel = tf.reduce_sum(tf.cast(sel, tf.float32))
        w_sel = tf.cast(sel, tf.float32)[:, None]
        mean = tf.reduce_sum(joints * w_sel, 0) / tf.maximum(n_sel, 1.0)
        big = 1e9
        lo_pt = tf.reduce_min(tf.where(sel[:, None], joints, big), 0)
        hi_pt = tf.reduce_max(tf.where(sel[:, None], joints, -big), 0)
        w = hi_pt[0] - lo_pt[0]
        h = hi_pt[1] - lo_pt[1]
        ar = self.aspect_ratio
        w2 = tf.where(w > ar * h, w, h * ar)
        h2 = tf.where(w > ar * h, w / ar, h)
        return mean, tf.stack([w2, h2]) * 1.5, n_sel >= 2

    # ------------------------------------------------------------------ train
    def sample_augmentation(self, joints, vis, center, scale, seed):
        """Draws the reference's random crop parameters for one person.

        Args:
            joints: ``(K, 2)`` image pixels; vis: ``(K,)`` in {0, 1}.
            center, scale: ``(2,)`` window from :meth:`center_scale`.
            seed: int ``(2,)`` stateless seed.

        Returns:
            ``(center, scale, rotation_degrees, flip)`` tensors.
        """
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
        uni = lambda i: tf.random.stateless_uniform([], seeds[i])  # noqa: E731
        normal = lambda i: tf.random.stateless_normal([], seeds[i])  # noqa: E731
        if self.half_body_prob > 0:
            n_vis = tf.reduce_sum(tf.cast(vis > 0, tf.int32))
            hb_center, hb_scale, hb_ok = self._half_body(joints, vis, uni(1))
            use = (n_vis > self.half_body_min_joints) & (uni(0) < self.half_body_prob) & hb_ok
            center = tf.where(use, hb_center, center)
            scale = tf.where(use, hb_scale, scale)
        sf, rf = self.scale_factor, self.rotation_factor
        scale = scale * tf.clip_by_value(normal(2) * sf + 1.0, 1.0 - sf, 1.0 + sf)
        rotation = tf.where(uni(3) <= self.rotation_prob,
                            tf.clip_by_value(normal(4) * rf, -2.0 * rf, 2.0 * rf), 0.0)
        flip = uni(5) < self.flip_prob
        return center, scale, rotation, flip

    def transform(self, image, joints, vis, center, scale, rotation, flip):
        """One warp of the image and the same matrix on the joints; targets.

        Args:
            image: ``(H, W, 3)`` uint8 tensor.
            joints: ``(K, 2)`` image pixels; vis: ``(K,)``.
            center, scale: ``(2,)`` window in the *unflipped* image.
            rotation: degrees; flip: bool.

        Returns:
            ``(image (H, W, 3) float32 normalized, heatmaps (h, w, K), target_weight (K,))``.
        """
        img_w = tf.cast(tf.shape(image)[1], tf.float32)
        # The reference flips the image, mirrors the joints (x -> W - 1 - x),
        # swaps left/right and mirrors the center; the crop matrix of the
        # flipped image composed with the flip matrix does all of it in one warp.
        center = tf.where(flip, tf.stack([img_w - 1.0 - center[0], center[1]]), center)
        crop = transforms.get_affine_transform_tf(center, scale, rotation, self.input_size)
        crop_inv = transforms.get_affine_transform_tf(center, scale, rotation, self.input_size,
                                                      inverse=True)
        identity = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        pre = tf.where(flip, transforms.flip_matrix_tf(img_w), identity)
        forward = transforms.compose_affine_tf(crop, pre)
        inverse = transforms.compose_affine_tf(pre, crop_inv)  # the flip is its own inverse
        joints = transforms.affine_transform_points_tf(joints, forward)
        perm = tf.where(flip, self._flip_index, tf.range(self.spec.num_keypoints))
        joints = tf.gather(joints, perm)
        vis = tf.gather(vis, perm)
        crop_img = transforms.warp_image_tf(image, inverse, self.input_size)
        crop_img = transforms.normalize_image(crop_img / 255.0)
        crop_img.set_shape(self.input_size + (3,))
        heatmaps, weight = self.codec.encode_tf(joints, vis)
        return crop_img, heatmaps, weight * self._joint_weights

    def parse_train(self, person, seed):
        """One training example: decode, sample augmentation, warp, encode.

        Args:
            person: dict with ``encoded``, ``bbox`` (4,), ``keypoints`` (K, 3),
                ``center``/``scale`` (2,), ``has_center`` ().
            seed: int ``(2,)`` stateless seed.

        Returns:
            ``(image (H, W, 3) float32 normalized, heatmaps (h, w, K), target_weight (K,))``.
        """
        image = tf.io.decode_jpeg(person["encoded"], channels=3)
        kp = tf.cast(person["keypoints"], tf.float32)
        joints, vis = kp[:, :2], tf.minimum(kp[:, 2], 1.0)
        center, scale = self.center_scale(person)
        center, scale, rotation, flip = self.sample_augmentation(joints, vis, center, scale, seed)
        return self.transform(image, joints, vis, center, scale, rotation, flip)

    # ------------------------------------------------------------------- eval
    def parse_eval(self, person):
        """One evaluation example: the crop and its meta (no augmentation).

        Returns:
            ``(image (H, W, 3) float32, meta)`` with meta ``image_id`` int64 (),
            ``center`` float32 (2,), ``scale`` float32 (2,), ``score`` float32 (),
            ``bbox`` float32 (4,), ``person_id`` int64 () (-1 for detections),
            ``keypoints`` float32 (K, 3) (ground truth; zeros for detections).
        """
        image = tf.io.decode_jpeg(person["encoded"], channels=3)
        center, scale = self.center_scale(person)
        inverse = transforms.get_affine_transform_tf(center, scale, 0.0, self.input_size,
                                                     inverse=True)
        crop_img = transforms.normalize_image(
            transforms.warp_image_tf(image, inverse, self.input_size) / 255.0)
        crop_img.set_shape(self.input_size + (3,))
        meta = {"image_id": person["image_id"], "center": center, "scale": scale,
                "score": tf.cast(person["score"], tf.float32),
                "bbox": tf.cast(person["bbox"], tf.float32),
                "person_id": person["person_id"],
                "keypoints": tf.cast(person["keypoints"], tf.float32)}
        return crop_img, meta
