"""The heatmap codec: the one place that knows the target format.

``HeatmapCodec.encode`` turns crop keypoints into Gaussian heatmaps and target
weights; ``decode`` turns predicted heatmaps back into keypoints. Both follow
the HRNet reference (``JointsDataset.generate_target``, ``core/inference.py``
of leoxiaobin/deep-high-resolution-net.pytorch), written here from its
description:

* **encode**: joint ``(x, y)`` in crop-input pixels lands on heatmap pixel
  ``mu = int(x / stride + 0.5)`` (rounded, so the Gaussian is centred on an
  integer pixel); a Gaussian of ``sigma`` is drawn in a ``6 sigma + 1`` square
  around ``mu``; the target weight is 0 for invisible joints and for joints
  whose square lies wholly outside the heatmap.
* **decode**: per channel argmax; the location moves a quarter pixel toward
  the higher of its two neighbours along x and along y; the result goes
  through the inverse of the crop's affine transform to image pixels.
* **flip test**: :func:`flip_back` mirrors a heatmap of the flipped image,
  swaps left/right channels and shifts it one pixel right, as the reference
  does (``TEST.SHIFT_HEATMAP``) to undo the half-pixel flip misalignment.

``unbiased=True`` centres the Gaussian on the exact sub-pixel location
instead (the "unbiased" encoding of mmpose's ``MSRAHeatmap``). The rounded
reference encoding cannot round-trip better than half a heatmap pixel (2
input pixels at stride 4), since the quantization is symmetric and the
quarter offset sees equal neighbours; the unbiased encoding with the quarter
offset round-trips within a quarter heatmap pixel (1 input pixel).

Example:
>>> codec = HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0)
>>> hm, w = codec.encode(np.array([[100.0, 60.0]]), np.array([1]))
>>> hm.shape, w.tolist()
((64, 48, 1), [1.0])
>>> coords, maxvals = codec.decode(hm[None])
>>> (coords[0] * codec.stride).tolist()
[[100.0, 60.0]]
"""

import numpy as np

from keras_dpn.core import optional as _optional
from keras_dpn.core import transforms


def _tf():
    return _optional.tensorflow("HeatmapCodec's TensorFlow methods (encode_tf, decode_tf, "
                                "decode_to_image_tf: tf.data and exported graphs)")


def _pair(value, name):
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be (height, width). Received: {name}={value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"`{name}` must be positive. Received: {name}={value!r}")
    return h, w


class HeatmapCodec:
    """Gaussian heatmap targets and argmax decoding of the top-down recipe.

    Args:
        input_size: ``(height, width)`` of the network input crop.
        heatmap_size: ``(height, width)`` of the predicted heatmaps.
        sigma: Gaussian standard deviation in heatmap pixels (2 at 64x48).
        unbiased: centre the Gaussian on the exact sub-pixel location instead
            of the rounded pixel (not the reference; see the module notes).

    Example:
    >>> codec = HeatmapCodec((256, 256), (64, 64), sigma=2.0)
    >>> codec.stride.tolist()
    [4.0, 4.0]
    """

    def __init__(self, input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0,
                 unbiased=False):
        self.input_size = _pair(input_size, "input_size")
        self.heatmap_size = _pair(heatmap_size, "heatmap_size")
        if not sigma > 0:
            raise ValueError(f"`sigma` must be positive. Received: sigma={sigma!r}")
        self.sigma = float(sigma)
        self.unbiased = bool(unbiased)

    def get_config(self):
        return dict(input_size=self.input_size, heatmap_size=self.heatmap_size,
                    sigma=self.sigma, unbiased=self.unbiased)

    def __repr__(self):
        return (f"HeatmapCodec(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
                f"sigma={self.sigma}, unbiased={self.unbiased})")

    @property
    def stride(self):
        """Input pixels per heatmap pixel as ``(x, y)``."""
        return np.array([self.input_size[1] / self.heatmap_size[1],
                         self.input_size[0] / self.heatmap_size[0]], np.float32)

    # ------------------------------------------------------------------ encode
    def encode(self, keypoints, visible):
        """Keypoints in crop-input pixels -> Gaussian heatmaps and target weights.

        Args:
            keypoints: ``(K, 2)`` joint ``(x, y)`` in network-input pixels.
            visible: ``(K,)``; a joint counts as visible when > 0.5 (COCO
                visibility flags should be clipped to 1 first).

        Returns:
            ``heatmaps`` float32 ``(h, w, K)`` and ``target_weight`` float32 ``(K,)``.

        Example:
        >>> codec = HeatmapCodec()
        >>> _, w = codec.encode([[10.0, 10.0], [-40.0, 10.0]], [1, 1])
        >>> w.tolist()
        [1.0, 0.0]
        """
        kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
        vis = np.asarray(visible, np.float64).reshape(-1)
        if vis.shape[0] != kp.shape[0]:
            raise ValueError(
                f"`visible` needs one entry per keypoint ({kp.shape[0]}). "
                f"Received: visible.shape={np.shape(visible)}")
        hm_h, hm_w = self.heatmap_size
        stride = self.stride.astype(np.float64)
        tmp = self.sigma * 3
        weight = (vis > 0.5).astype(np.float32)
        xs = np.arange(hm_w, dtype=np.float64)
        ys = np.arange(hm_h, dtype=np.float64)
        if self.unbiased:
            mu = kp / stride
            ul = mu - tmp
            br = mu + tmp + 1
        else:
            # int() of the reference truncates toward zero; so does astype(int).
            mu = (kp / stride + 0.5).astype(np.int64).astype(np.float64)
            ul = (mu - tmp).astype(np.int64).astype(np.float64)
            br = (mu + tmp + 1).astype(np.int64).astype(np.float64)
        outside = (ul[:, 0] >= hm_w) | (ul[:, 1] >= hm_h) | (br[:, 0] < 0) | (br[:, 1] < 0)
        weight[outside] = 0.0
        if self.unbiased:
            # Whole-map Gaussian around the sub-pixel location.
            dx2 = (xs[None, :] - mu[:, :1]) ** 2
            dy2 = (ys[None, :] - mu[:, 1:]) ** 2
            mask_x = np.ones_like(dx2, bool)
            mask_y = np.ones_like(dy2, bool)
        else:
            # The reference pastes a (2 tmp + 1)^2 patch whose centre index is
            # size // 2, placed at ``ul``; this reproduces it exactly, also for
            # a non-integer 3 sigma.
            size = 2 * tmp + 1
            n = int(np.ceil(size))
            x0 = size // 2
            ix = xs[None, :] - ul[:, :1]
            iy = ys[None, :] - ul[:, 1:]
            mask_x = (ix >= 0) & (ix < n) & (xs[None, :] < br[:, :1])
            mask_y = (iy >= 0) & (iy < n) & (ys[None, :] < br[:, 1:])
            dx2 = (ix - x0) ** 2
            dy2 = (iy - x0) ** 2
        g = np.exp(-(dx2[:, None, :] + dy2[:, :, None]) / (2 * self.sigma ** 2))
        g = g * (mask_x[:, None, :] & mask_y[:, :, None])
        g = g * (weight > 0.5)[:, None, None]
        return np.transpose(g, (1, 2, 0)).astype(np.float32), weight

    def encode_tf(self, keypoints, visible):
        """TensorFlow :meth:`encode` for tf.data; leading batch axes allowed.

        Args:
            keypoints: ``(..., K, 2)`` tensor in network-input pixels.
            visible: ``(..., K)`` tensor.

        Returns:
            ``heatmaps`` ``(..., h, w, K)`` and ``target_weight`` ``(..., K)``, float32.
        """
        tf = _tf()
        kp = tf.cast(keypoints, tf.float32)
        vis = tf.cast(visible, tf.float32)
        hm_h, hm_w = self.heatmap_size
        sx, sy = (float(s) for s in self.stride)
        tmp = self.sigma * 3
        x, y = kp[..., 0] / sx, kp[..., 1] / sy
        xs = tf.range(hm_w, dtype=tf.float32)
        ys = tf.range(hm_h, dtype=tf.float32)
        if self.unbiased:
            mux, muy = x, y
            ulx, uly, brx, bry = mux - tmp, muy - tmp, mux + tmp + 1, muy + tmp + 1
        else:
            trunc = lambda v: tf.cast(tf.cast(v, tf.int32), tf.float32)  # noqa: E731
            # Clip before the int cast: far-off joints (e.g. 1e12) would
            # overflow int32; anything past +-1e6 is outside either way.
            mux = trunc(tf.clip_by_value(x + 0.5, -1e6, 1e6))
            muy = trunc(tf.clip_by_value(y + 0.5, -1e6, 1e6))
            ulx, uly = trunc(mux - tmp), trunc(muy - tmp)
            brx, bry = trunc(mux + tmp + 1), trunc(muy + tmp + 1)
        inside = ~((ulx >= hm_w) | (uly >= hm_h) | (brx < 0) | (bry < 0))
        weight = tf.cast(vis > 0.5, tf.float32) * tf.cast(inside, tf.float32)
        two_s2 = 2.0 * self.sigma ** 2
        # (..., W, K) and (..., H, K): the 2-D Gaussian is separable.
        if self.unbiased:
            gx = tf.exp(-tf.square(xs[:, None] - mux[..., None, :]) / two_s2)
            gy = tf.exp(-tf.square(ys[:, None] - muy[..., None, :]) / two_s2)
        else:
            size = 2 * tmp + 1
            n = float(np.ceil(size))
            x0 = float(size // 2)
            ix = xs[:, None] - ulx[..., None, :]
            iy = ys[:, None] - uly[..., None, :]
            mx = (ix >= 0) & (ix < n) & (xs[:, None] < brx[..., None, :])
            my = (iy >= 0) & (iy < n) & (ys[:, None] < bry[..., None, :])
            gx = tf.exp(-tf.square(ix - x0) / two_s2) * tf.cast(mx, tf.float32)
            gy = tf.exp(-tf.square(iy - x0) / two_s2) * tf.cast(my, tf.float32)
        gx = gx * weight[..., None, :]
        heatmaps = gy[..., :, None, :] * gx[..., None, :, :]
        return heatmaps, weight

    # ------------------------------------------------------------------ decode
    def decode(self, heatmaps):
        """Heatmaps -> keypoints in heatmap pixels (argmax + quarter offset).

        Args:
            heatmaps: ``(B, h, w, K)`` (or ``(h, w, K)``) numpy array.

        Returns:
            ``coords`` float32 ``(B, K, 2)`` as ``(x, y)`` heatmap pixels and
            ``maxvals`` float32 ``(B, K)``. Channels whose maximum is not
            positive decode to ``(0, 0)``, as in the reference.

        Example:
        >>> hm = np.zeros((1, 8, 8, 1), np.float32); hm[0, 3, 4, 0] = 1; hm[0, 3, 5, 0] = .5
        >>> HeatmapCodec((32, 32), (8, 8)).decode(hm)[0].tolist()
        [[[4.25, 3.0]]]
        """
        hm = np.asarray(heatmaps, np.float32)
        squeeze = hm.ndim == 3
        if squeeze:
            hm = hm[None]
        if hm.ndim != 4:
            raise ValueError(f"`heatmaps` must be (B, h, w, K). Received: heatmaps.shape={hm.shape}")
        b, h, w, k = hm.shape
        flat = np.transpose(hm, (0, 3, 1, 2)).reshape(b, k, h * w)
        idx = np.argmax(flat, axis=-1)
        maxvals = np.take_along_axis(flat, idx[..., None], axis=-1)[..., 0]
        px = (idx % w).astype(np.int64)
        py = (idx // w).astype(np.int64)
        positive = maxvals > 0
        px = np.where(positive, px, 0)
        py = np.where(positive, py, 0)
        # The reference's interior test is strict on both sides: 1 < p < size - 1.
        ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
        bi = np.arange(b)[:, None]
        ki = np.arange(k)[None, :]
        cx = np.clip(px, 1, w - 2)
        cy = np.clip(py, 1, h - 2)
        dx = hm[bi, py, np.minimum(cx + 1, w - 1), ki] - hm[bi, py, np.maximum(cx - 1, 0), ki]
        dy = hm[bi, np.minimum(cy + 1, h - 1), px, ki] - hm[bi, np.maximum(cy - 1, 0), px, ki]
        coords = np.stack([px, py], axis=-1).astype(np.float32)
        offset = np.stack([np.sign(dx), np.sign(dy)], axis=-1) * 0.25
        coords = coords + np.where(ok[..., None], offset, 0.0).astype(np.float32)
        if squeeze:
            return coords[0], maxvals[0]
        return coords, maxvals

    def decode_tf(self, heatmaps):
        """TensorFlow :meth:`decode` (for exported graphs); same results.

        Args:
            heatmaps: ``(B, h, w, K)`` tensor.

        Returns:
            ``coords`` ``(B, K, 2)`` and ``maxvals`` ``(B, K)`` float32 tensors.
        """
        tf = _tf()
        hm = tf.cast(heatmaps, tf.float32)
        shape = tf.shape(hm)
        b, h, w, k = shape[0], shape[1], shape[2], shape[3]
        flat = tf.reshape(tf.transpose(hm, [0, 3, 1, 2]), [b, k, h * w])
        idx = tf.argmax(flat, axis=-1, output_type=tf.int32)
        maxvals = tf.reduce_max(flat, axis=-1)
        positive = maxvals > 0
        px = tf.where(positive, idx % w, 0)
        py = tf.where(positive, idx // w, 0)
        ok = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)

        def value_at(yy, xx):
            yy = tf.clip_by_value(yy, 0, h - 1)
            xx = tf.clip_by_value(xx, 0, w - 1)
            return tf.gather(flat, yy * w + xx, batch_dims=2)

        dx = value_at(py, px + 1) - value_at(py, px - 1)
        dy = value_at(py + 1, px) - value_at(py - 1, px)
        coords = tf.cast(tf.stack([px, py], axis=-1), tf.float32)
        offset = tf.stack([tf.sign(dx), tf.sign(dy)], axis=-1) * 0.25
        coords = coords + tf.where(ok[..., None], offset, tf.zeros_like(offset))
        return coords, maxvals

    def decode_to_image(self, heatmaps, center, scale, rotation=None):
        """Heatmaps -> ``(x, y, score)`` keypoints in original image pixels.

        Decodes with :meth:`decode`, then maps heatmap pixels through the
        inverse of the crop's affine transform built for the heatmap size (the
        reference's ``transform_preds``).

        Args:
            heatmaps: ``(B, h, w, K)`` numpy array.
            center: ``(B, 2)`` crop centers in image pixels.
            scale: ``(B, 2)`` crop sizes in image pixels.
            rotation: optional ``(B,)`` degrees (0 at test time).

        Returns:
            float32 ``(B, K, 3)``: image ``x``, ``y`` and the heatmap maximum.

        Example:
        >>> codec = HeatmapCodec()
        >>> hm, _ = codec.encode([[96.0, 128.0]], [1])
        >>> codec.decode_to_image(hm[None], [[500.0, 300.0]], [[150.0, 200.0]]).round(2).tolist()
        [[[500.0, 300.0, 1.0]]]
        """
        coords, maxvals = self.decode(heatmaps)
        if coords.ndim == 2:
            coords, maxvals = coords[None], maxvals[None]
        center = np.asarray(center, np.float64).reshape(-1, 2)
        scale = np.asarray(scale, np.float64).reshape(-1, 2)
        b = coords.shape[0]
        if center.shape[0] != b or scale.shape[0] != b:
            raise ValueError(
                f"`center` and `scale` need one row per heatmap ({b}). "
                f"Received: center.shape={center.shape}, scale.shape={scale.shape}")
        rotation = np.zeros(b) if rotation is None else np.asarray(rotation, np.float64).reshape(b)
        out = np.zeros(coords.shape[:2] + (3,), np.float32)
        for i in range(b):
            inv = transforms.get_affine_transform(center[i], scale[i], rotation[i],
                                                  self.heatmap_size, inverse=True)
            out[i, :, :2] = transforms.affine_transform_points(coords[i], inv)
        out[..., 2] = maxvals
        return out

    def decode_to_image_tf(self, heatmaps, center, scale):
        """TensorFlow :meth:`decode_to_image` (rotation 0), for exported graphs."""
        tf = _tf()
        coords, maxvals = self.decode_tf(heatmaps)
        inv = transforms.get_affine_transform_tf(center, scale, tf.zeros(tf.shape(center)[:-1]),
                                                 self.heatmap_size, inverse=True)
        xy = transforms.affine_transform_points_tf(coords, inv)
        return tf.concat([xy, maxvals[..., None]], axis=-1)


def flip_back(heatmaps, flip_index, shift=True):
    """Heatmaps of a horizontally flipped input -> heatmaps of the original.

    Mirrors the width axis, swaps left/right channels (``flip_index[j]`` is the
    partner of joint ``j``, e.g. ``KeypointSpec.flip_index``) and, with
    ``shift``, moves the result one pixel right (column 0 kept), as the
    reference does before averaging with the unflipped output.

    Args:
        heatmaps: ``(B, h, w, K)`` TensorFlow tensor, or anything numpy reads
            (numpy, JAX or CPU PyTorch arrays).
        flip_index: ``(K,)`` channel permutation.
        shift: apply the reference's one-pixel shift.

    Returns:
        A tensor for a TensorFlow tensor, else a numpy array; same shape.

    Example:
    >>> hm = np.zeros((1, 4, 6, 2), np.float32); hm[0, 1, 1, 0] = 1
    >>> out = flip_back(hm, [1, 0])
    >>> np.argwhere(out[0] == 1).tolist()
    [[1, 5, 1]]
    """
    flip_index = np.asarray(flip_index, np.int64).reshape(-1)
    if not transforms.is_tf_tensor(heatmaps):
        heatmaps = np.asarray(heatmaps)
        if heatmaps.ndim != 4 or heatmaps.shape[-1] != flip_index.shape[0]:
            raise ValueError(
                f"`heatmaps` must be (B, h, w, K) with K == len(flip_index) "
                f"({flip_index.shape[0]}). Received: heatmaps.shape={heatmaps.shape}")
        out = heatmaps[:, :, ::-1, :][..., flip_index]
        if shift:
            out = np.concatenate([out[:, :, :1], out[:, :, :-1]], axis=2)
        return np.ascontiguousarray(out)
    tf = _tf()
    out = tf.gather(tf.reverse(heatmaps, axis=[2]), flip_index, axis=-1)
    if shift:
        out = tf.concat([out[:, :, :1], out[:, :, :-1]], axis=2)
    return out


def merge_flip(heatmaps, flipped_heatmaps, flip_index, shift=True):
    """Average of the heatmaps and the flipped-back heatmaps of the flipped input."""
    return (heatmaps + flip_back(flipped_heatmaps, flip_index, shift=shift)) * 0.5
