"""The training augmentation, written once: its settings, its sampling rule, two executors.

:class:`AugmentConfig` holds the settings (the HRNet reference recipe by
default, with the DPN paper's factors) and checks them. The rule that turns
them into crops is written once, over an array namespace (``ops``), in
:class:`Augment`, for every person of a batch:

1. half body: when more than ``half_body_min_joints`` joints are labelled and
   a uniform draw is below ``half_body_prob``, the window becomes one around
   the upper or the lower body joints (x1.5, input aspect ratio); the upper
   body when a standard normal draw is below 0.5 (the reference's
   ``np.random.randn() < 0.5``: probability 0.69) and it has more than 2
   joints, or when the lower body has 2 or fewer;
2. scale: ``s *= clip(N(1, sf), 1 - sf, 1 + sf)``;
3. rotation: ``clip(N(0, rf), -2 rf, 2 rf)`` degrees when a uniform draw is at
   most ``rotation_prob``, else 0;
4. flip: when a uniform draw is below ``flip_prob``; the image flip
   ``x -> W - 1 - x`` is folded into the crop matrix (one warp) and the
   left / right joints swap.

The crop matrices are :mod:`keras_dpn.core.transforms`' (numpy three-point
construction, TensorFlow closed form), the flip composed into them here.
The random numbers come in as a :class:`Draws` (six per person); the two
executors differ only in where the draws come from and whose arrays the rule
runs on: :class:`TFAugment` (stateless TensorFlow ops seeded per image,
inside tf.data; :class:`keras_dpn.data.PersonParser`) and
:class:`NumpyAugment` (a ``numpy.random.Generator``;
:class:`keras_dpn.data.PersonCrops`, no TensorFlow). Fed the same draws they
give the same windows, flips, half-body choices and matrices
(``tests/test_augment_agreement.py``).

Example:
>>> import numpy as np
>>> from keras_dpn.data.augment import AugmentConfig, NumpyAugment
>>> aug = NumpyAugment(AugmentConfig(rotation_prob=0.0), "coco", input_size=(64, 48))
>>> joints, visible = np.zeros((1, 17, 2)), np.zeros((1, 17))
>>> draws = aug.draws(np.random.default_rng(0), (1,))
>>> sample = aug.sample(draws, joints, visible, [[100.0, 100.0]], [[60.0, 80.0]])
>>> sample.rotation.tolist(), bool(sample.half_body[0])
([0.0], False)
"""

import dataclasses
import math
import numbers
from typing import NamedTuple, Optional

import numpy as np

from keras_dpn.core import transforms
from keras_dpn.core.keypoints import get_keypoint_spec

# The reference's half-body window: 1.5 times the joints' extent.
HALF_BODY_PADDING = 1.5
# The reference takes the upper body when np.random.randn() < 0.5.
UPPER_BODY_THRESHOLD = 0.5


def _number(name, value, low, high=None, high_open=False):
    """``value`` as a float within ``[low, high]`` (or ``[low, high)``), or a one-line error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
    above = value > high or (high_open and value == high) if high is not None else False
    if value < low or above:
        bound = "" if high is None else f", {high}{')' if high_open else ']'}"
        where = f"in [{low}{bound}" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {where}. Received: {name}={value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation's settings (the HRNet reference recipe by default).

    Defaults: the reference's ``JointsDataset`` rules with the DPN paper's
    factors (+-30 % scale, rotation factor 40; the reference's COCO configs
    use 0.35 and 45). :meth:`off` is no augmentation at all.

    Args:
        scale_factor: scale augmentation, ``clip(N(1, sf), 1 - sf, 1 + sf)``;
            in [0, 1) (0: none).
        rotation_factor: standard deviation of the rotation in degrees,
            clipped at twice that.
        rotation_prob: probability of rotating at all, in [0, 1].
        flip_prob: probability of a horizontal flip, in [0, 1] (0: never).
        half_body_prob: probability of a half-body window, in [0, 1]; None:
            0.3, or 0 for MPII (the reference's configs).
        half_body_min_joints: half body needs *more* labelled joints than this.

    Example:
    >>> AugmentConfig(flip_prob=0.0).resolved("mpii").half_body_prob
    0.0
    >>> AugmentConfig(flip_prob=2)
    Traceback (most recent call last):
    ValueError: `flip_prob` must be in [0, 1]. Received: flip_prob=2
    """

    scale_factor: float = 0.3
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: Optional[float] = None
    half_body_min_joints: int = 8

    def __post_init__(self):
        checked = {
            "scale_factor": _number("scale_factor", self.scale_factor, 0, 1, high_open=True),
            "rotation_factor": _number("rotation_factor", self.rotation_factor, 0),
            "rotation_prob": _number("rotation_prob", self.rotation_prob, 0, 1),
            "flip_prob": _number("flip_prob", self.flip_prob, 0, 1),
        }
        if self.half_body_prob is not None:
            checked["half_body_prob"] = _number("half_body_prob", self.half_body_prob, 0, 1)
        n = self.half_body_min_joints
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError("`half_body_min_joints` must be an int >= 0. "
                             f"Received: half_body_min_joints={n!r}")
        checked["half_body_min_joints"] = int(n)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def off(cls):
        """No augmentation: the box crops, unflipped."""
        return cls(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0)

    @property
    def is_off(self):
        """True when no person is ever changed (every probability and the scale factor 0)."""
        return (self.scale_factor == 0 and self.rotation_prob == 0 and self.flip_prob == 0
                and self.half_body_prob == 0)

    def resolved(self, dataset):
        """This config with ``half_body_prob`` filled in for a keypoint set (None: 0.3, MPII 0)."""
        if self.half_body_prob is not None:
            return self
        spec = get_keypoint_spec(dataset)
        return dataclasses.replace(self, half_body_prob=0.0 if spec.name == "mpii" else 0.3)


def resolve_augment(augment, dataset):
    """The :class:`AugmentConfig` an ``augment=`` argument means, resolved for ``dataset``.

    Args:
        augment: an :class:`AugmentConfig`; True (the reference recipe,
            ``AugmentConfig()``); None or False (none, :meth:`AugmentConfig.off`).
        dataset: the keypoint set (name or ``KeypointSpec``).

    Returns:
        :class:`AugmentConfig` with ``half_body_prob`` set.
    """
    if augment is None or augment is False:
        return AugmentConfig.off()
    if augment is True:
        augment = AugmentConfig()
    if not isinstance(augment, AugmentConfig):
        raise ValueError("`augment` must be a keras_dpn.data.AugmentConfig, True (the reference "
                         f"recipe) or None (no augmentation). Received: augment={augment!r}")
    return augment.resolved(dataset)


def reject_loose_settings(kwargs, function):
    """A one-line ``TypeError`` for an augmentation setting passed on its own (the old signature).

    Args:
        kwargs: the keyword arguments ``function`` did not name.
        function: its name, for the message.
    """
    fields = [f.name for f in dataclasses.fields(AugmentConfig)]
    for name in kwargs:
        if name in fields:
            raise TypeError(f"{function}() takes the augmentation as one argument: "
                            f"augment=AugmentConfig({name}=...) (keras_dpn.data.AugmentConfig). "
                            f"Received: {name}={kwargs[name]!r}")


class Draws(NamedTuple):
    """The random numbers of one draw, each of the people's shape.

    ``half_body``, ``rotate`` and ``flip`` are uniform in [0, 1); ``upper``,
    ``scale`` and ``rotation`` standard normal. :class:`TFAugment` draws them
    in this order from one stateless seed split six ways.
    """

    half_body: object
    upper: object
    scale: object
    rotate: object
    rotation: object
    flip: object


UNIFORM_DRAWS = ("half_body", "rotate", "flip")


class Sample(NamedTuple):
    """The augmentation of each person: window, rotation (degrees), flip, half-body choice."""

    center: object
    scale: object
    rotation: object
    flip: object
    half_body: object


class _NumpyOps:
    """The array operations the rule uses, on numpy arrays (float64)."""

    where = staticmethod(np.where)
    clip = staticmethod(np.clip)
    sum = staticmethod(np.sum)
    min = staticmethod(np.min)
    max = staticmethod(np.max)
    maximum = staticmethod(np.maximum)
    stack = staticmethod(np.stack)
    cos = staticmethod(np.cos)
    sin = staticmethod(np.sin)

    @staticmethod
    def float(x):
        return np.asarray(x, np.float64)

    @staticmethod
    def bool(x):
        return np.asarray(x, bool)

    @staticmethod
    def take_joints(x, index):
        """``x[..., index[..., k], ...]`` along the joint axis (-2 of joints, -1 of flags)."""
        if x.ndim == index.ndim:
            return np.take_along_axis(x, index, axis=-1)
        return np.take_along_axis(x, index[..., None], axis=-2)


class _TFOps:
    """The same operations with TensorFlow (float32), for tf.data graphs."""

    def __init__(self):
        from keras_dpn.core.optional import tf_data as tf
        self.tf = tf
        self.where = tf.where
        self.clip = tf.clip_by_value
        self.sum = tf.reduce_sum
        self.min = tf.reduce_min
        self.max = tf.reduce_max
        self.maximum = tf.maximum
        self.stack = tf.stack
        self.cos = tf.cos
        self.sin = tf.sin

    def float(self, x):
        return self.tf.cast(x, self.tf.float32)

    def bool(self, x):
        return self.tf.cast(x, self.tf.bool)

    def take_joints(self, x, index):
        return self.tf.gather(x, index, batch_dims=index.shape.rank - 1)


class Augment:
    """The sampling rule and the crop geometry over an array namespace (see the module doc).

    Use an executor: :class:`NumpyAugment` or :class:`TFAugment`.

    Args:
        config: :class:`AugmentConfig`, True or None (see :func:`resolve_augment`).
        dataset: the keypoint set (name or ``KeypointSpec``): flip pairs and
            the upper / lower body joints.
        input_size: ``(height, width)`` of the crops.
        ops: the array namespace the rule runs on (``where``, ``clip``,
            ``sum``, ...: numpy's or TensorFlow's, given by the executor).
    """

    def __init__(self, config, dataset, input_size, ops):
        self.spec = get_keypoint_spec(dataset)
        self.config = resolve_augment(config, self.spec)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.aspect_ratio = self.input_size[1] / self.input_size[0]
        self.ops = ops
        k = self.spec.num_keypoints
        self._upper = np.zeros(k, bool)
        self._upper[list(self.spec.upper_body)] = True
        self._lower = np.zeros(k, bool)
        self._lower[list(self.spec.lower_body)] = True
        self._flip_index = np.asarray(self.spec.flip_index, np.int32)
        self._identity_index = np.arange(k, dtype=np.int32)

    def _crop_matrices(self, center, scale, rotation):
        """``(crop, inverse)`` ``(..., 2, 3)`` matrices of the windows (the executor's own)."""
        raise NotImplementedError

    def _half_body(self, joints, visible, upper_draw):
        """Windows around the upper or lower body joints, and whether there is one."""
        o = self.ops
        up = visible & self._upper
        lo = visible & self._lower
        n_up = o.sum(o.float(up), -1)
        n_lo = o.sum(o.float(lo), -1)
        take_upper = ((upper_draw < UPPER_BODY_THRESHOLD) & (n_up > 2)) | ~(n_lo > 2)
        sel = o.where(take_upper[..., None], up, lo)
        n_sel = o.sum(o.float(sel), -1)
        mean = o.sum(joints * o.float(sel)[..., None], -2) / o.maximum(n_sel, 1.0)[..., None]
        big = 1e9  # stands in for the unselected joints in the min / max
        lo_pt = o.min(o.where(sel[..., None], joints, big), -2)
        hi_pt = o.max(o.where(sel[..., None], joints, -big), -2)
        w = hi_pt[..., 0] - lo_pt[..., 0]
        h = hi_pt[..., 1] - lo_pt[..., 1]
        ar = self.aspect_ratio
        wide = w > ar * h
        size = o.stack([o.where(wide, w, h * ar), o.where(wide, w / ar, h)], -1)
        return mean, size * HALF_BODY_PADDING, n_sel >= 2

    def sample(self, draws, joints, visible, center, scale):
        """The augmentation of each person for given draws.

        Args:
            draws: :class:`Draws`, each of the people's shape ``(...)``.
            joints: ``(..., K, 2)`` image pixels; visible: ``(..., K)`` (> 0: labelled).
            center, scale: ``(..., 2)`` the box windows in image pixels.

        Returns:
            :class:`Sample`: ``center``, ``scale`` ``(..., 2)`` (in the
            *unflipped* image), ``rotation`` ``(...)`` degrees, ``flip`` and
            ``half_body`` ``(...)`` bool.
        """
        o, cfg = self.ops, self.config
        joints, visible = o.float(joints), o.float(visible)
        center, scale = o.float(center), o.float(scale)
        draws = Draws(*(o.float(d) for d in draws))
        labelled = visible > 0
        if cfg.half_body_prob > 0:
            n_labelled = o.sum(o.float(labelled), -1)
            hb_center, hb_scale, hb_ok = self._half_body(joints, labelled, draws.upper)
            half = ((n_labelled > cfg.half_body_min_joints)
                    & (draws.half_body < cfg.half_body_prob) & hb_ok)
            center = o.where(half[..., None], hb_center, center)
            scale = o.where(half[..., None], hb_scale, scale)
        else:
            half = draws.half_body < 0  # all False, of the people's shape
        sf, rf = cfg.scale_factor, cfg.rotation_factor
        scale = scale * o.clip(draws.scale * sf + 1.0, 1.0 - sf, 1.0 + sf)[..., None]
        rotation = o.where(draws.rotate <= cfg.rotation_prob,
                           o.clip(draws.rotation * rf, -2.0 * rf, 2.0 * rf), 0.0)
        flip = draws.flip < cfg.flip_prob
        return Sample(center, scale, rotation, flip, half)

    def matrices(self, center, scale, rotation, flip, image_width):
        """Image -> crop (``forward``) and crop -> image (``inverse``) matrices.

        The reference flips the image, mirrors the joints and the center,
        then crops: here the flip ``x -> W - 1 - x`` is composed into the
        crop matrix, so one warp does both. The crop matrices themselves are
        :mod:`keras_dpn.core.transforms`' (the reference's three-point
        construction in numpy, its closed form in TensorFlow, tested equal
        there): without a flip the numpy crop is bit for bit the evaluation
        crop of :func:`~keras_dpn.core.transforms.crop_image`.

        Args:
            center, scale: ``(..., 2)`` windows in the *unflipped* image.
            rotation: ``(...)`` degrees; flip: ``(...)`` bool.
            image_width: the image's width in pixels.

        Returns:
            ``(forward, inverse)``, each ``(..., 2, 3)``.
        """
        o = self.ops
        center, scale, rotation = o.float(center), o.float(scale), o.float(rotation)
        flip = o.bool(flip)
        last = o.float(image_width) - 1.0
        mirrored = o.stack([o.where(flip, last - center[..., 0], center[..., 0]),
                            center[..., 1]], -1)
        crop, crop_inv = self._crop_matrices(mirrored, scale, rotation)
        # The flip f(x, y) = (s x + m, y): s = -1 and m = W - 1 when flipped,
        # else the identity (then the products below are exact: the crop as is).
        s = o.where(flip, -1.0, 1.0)
        m = o.where(flip, last, 0.0)
        forward = o.stack([o.stack([crop[..., 0, 0] * s, crop[..., 0, 1],
                                    crop[..., 0, 0] * m + crop[..., 0, 2]], -1),
                           o.stack([crop[..., 1, 0] * s, crop[..., 1, 1],
                                    crop[..., 1, 0] * m + crop[..., 1, 2]], -1)], -2)
        inverse = o.stack([s[..., None] * crop_inv[..., 0, :]
                           + o.stack([0.0 * m, 0.0 * m, m], -1), crop_inv[..., 1, :]], -2)
        return forward, inverse

    def crop_joints(self, joints, visible, forward, flip):
        """Joints moved into the crop, left / right swapped where flipped.

        Args:
            joints: ``(..., K, 2)`` image pixels; visible: ``(..., K)``.
            forward: ``(..., 2, 3)`` image -> crop matrices; flip: ``(...)`` bool.

        Returns:
            ``(joints (..., K, 2) crop pixels, visible (..., K))``.
        """
        o = self.ops
        joints, visible, forward = o.float(joints), o.float(visible), o.float(forward)
        x, y = joints[..., 0], joints[..., 1]
        f = forward[..., None, :, :]
        moved = o.stack([f[..., 0, 0] * x + f[..., 0, 1] * y + f[..., 0, 2],
                         f[..., 1, 0] * x + f[..., 1, 1] * y + f[..., 1, 2]], -1)
        index = o.where(o.bool(flip)[..., None], self._flip_index, self._identity_index)
        return o.take_joints(moved, index), o.take_joints(visible, index)


class NumpyAugment(Augment):
    """The numpy executor (``PersonCrops``): draws from a ``numpy.random.Generator``, float64."""

    def __init__(self, config, dataset, input_size):
        super().__init__(config, dataset, input_size, _NumpyOps())

    def _crop_matrices(self, center, scale, rotation):
        shape = rotation.shape
        center, scale = center.reshape(-1, 2), scale.reshape(-1, 2)
        pairs = [(transforms.get_affine_transform(c, s, r, self.input_size),
                  transforms.get_affine_transform(c, s, r, self.input_size, inverse=True))
                 for c, s, r in zip(center, scale, rotation.reshape(-1))]
        return tuple(np.stack([p[i] for p in pairs]).reshape(shape + (2, 3)) if pairs
                     else np.zeros(shape + (2, 3)) for i in range(2))

    @staticmethod
    def draws(rng, shape):
        """Six draws per person from ``rng`` (every field drawn whatever the config).

        Drawing all of them, in a fixed order, keeps a person's numbers
        independent of the settings and of which branches the rule takes.
        """
        return Draws(*(rng.uniform(size=shape) if name in UNIFORM_DRAWS
                       else rng.standard_normal(shape) for name in Draws._fields))


class TFAugment(Augment):
    """The TensorFlow executor (``PersonParser``, inside tf.data): stateless draws, float32."""

    def __init__(self, config, dataset, input_size):
        super().__init__(config, dataset, input_size, _TFOps())

    def _crop_matrices(self, center, scale, rotation):
        return (transforms.get_affine_transform_tf(center, scale, rotation, self.input_size),
                transforms.get_affine_transform_tf(center, scale, rotation, self.input_size,
                                                   inverse=True))

    def draws(self, seed, shape):
        """Six draws per person from an int ``(2,)`` stateless seed (split six ways).

        The same ``seed`` gives the same numbers whatever the parallelism.
        """
        tf = self.ops.tf
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
        return Draws(*(tf.random.stateless_uniform(shape, seeds[i]) if name in UNIFORM_DRAWS
                       else tf.random.stateless_normal(shape, seeds[i])
                       for i, name in enumerate(Draws._fields)))
