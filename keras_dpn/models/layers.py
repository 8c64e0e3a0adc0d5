"""Layers of the Dilation Pyramid Net (and the HRNet peer).

:class:`Bottleneck` is the ResNet bottleneck (1x1 reduce, 3x3, 1x1 expand,
residual add) with an optional dilation on the 3x3 conv; the ResNet stages and
the Dilation Pyramid Module are both built from it.

:class:`DilationPyramidModule` stacks ``num_blocks`` bottlenecks whose 3x3
convolutions have dilations ``2**(N-1), ..., 2, 1`` (the paper's DPM). Because
each rate halves, the union of sampled offsets covers every integer in
``[-(2**N - 1), 2**N - 1]``: a dense receptive field of ``(k-1)(2**N-1)+1``
positions per axis with no gridding holes, at unchanged resolution.

:class:`BasicBlock` is the two-conv ResNet block of HRNet's branches.

Their convolutions leave out the taps that can only read padding (a dilation
at least the map's size: :func:`reachable_taps`), and a bottleneck folds each
BN into its conv where BN uses moving statistics. Both are exact rewrites of
the same variables, for CPU speed (docs/guide/efficiency.md).

Only Keras layers and ``keras.ops`` are used, so the layers run on the
TensorFlow, JAX and PyTorch backends. Every layer here is channels-last
(``(B, H, W, C)``) whatever ``keras.config.image_data_format()`` says.
"""

import keras

from keras_dpn.core import optional

BN_EPSILON = 1e-5
# PyTorch's default momentum 0.1 corresponds to Keras momentum 0.9; the HRNet
# and DPN recipes were tuned with it.
BN_MOMENTUM = 0.9
# Fixed, not read from keras.config.image_data_format(): BN (axis=-1), the
# input checks and the weights files all assume channels-last, and a global
# "channels_first" would otherwise build another model without a word.
DATA_FORMAT = "channels_last"


def dilation_rates(num_blocks, dilation_schedule="pyramid"):
    """Dilation of each block's 3x3 conv.

    Args:
        num_blocks: number of bottleneck blocks N (>= 1).
        dilation_schedule: ``"pyramid"`` (2**(N-i), i = 1..N: 32,16,8,4,2,1 for
            N=6, the paper's DPM), ``"reversed"`` (2**(i-1), the RDPM of Table V)
            or a positive int D (constant dilation; D=1 is a plain conv stack).

    Returns:
        A tuple of N ints.

    Example:
    >>> dilation_rates(6)
    (32, 16, 8, 4, 2, 1)
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(
            f"`num_blocks` must be a positive int. Received: num_blocks={num_blocks!r}")
    if isinstance(dilation_schedule, str):
        if dilation_schedule == "pyramid":
            return tuple(2 ** (num_blocks - i) for i in range(1, num_blocks + 1))
        if dilation_schedule == "reversed":
            return tuple(2 ** (i - 1) for i in range(1, num_blocks + 1))
    elif (isinstance(dilation_schedule, int) and not isinstance(dilation_schedule, bool)
          and dilation_schedule >= 1):
        return (dilation_schedule,) * num_blocks
    raise ValueError(
        "`dilation_schedule` must be 'pyramid', 'reversed' or a positive int. "
        f"Received: dilation_schedule={dilation_schedule!r}")


def _bn(name, dtype):
    return keras.layers.BatchNormalization(
        axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, dtype=dtype)


def _conv(filters, kernel_size, name, dtype, strides=1, dilation_rate=1):
    return _Conv2D(
        filters, kernel_size, strides=strides, padding="same", data_format=DATA_FORMAT,
        dilation_rate=dilation_rate, use_bias=False,
        kernel_initializer="he_normal", name=name, dtype=dtype)


def reachable_taps(kernel_size, dilation_rate, size):
    """The taps of a stride-1 ``"same"`` conv axis that can read inside the map.

    Tap ``j`` of a ``k``-tap axis reads ``(j - (k-1)/2) * d`` positions away
    from the output position. On a map of ``size`` positions an offset of
    ``size`` or more lands in the zero padding for every output position, so
    such taps multiply zeros only: dropping them, with the "same" padding of
    what is left, gives the same output (with a dilation of 1 once a single
    tap is left).

    Args:
        kernel_size: taps ``k`` along the axis.
        dilation_rate: dilation ``d`` along the axis.
        size: the map's size along the axis, or None when unknown.

    Returns:
        ``(start, stop, dilation)``: the taps ``start:stop`` to keep and the
        dilation to use with them; all taps for an even ``k`` or an unknown size.

    Example:
    >>> reachable_taps(3, 32, 32)  # DPN4_32's first DPM block at 256x192 input
    (1, 2, 1)
    >>> reachable_taps(3, 16, 24)
    (0, 3, 16)
    """
    if size is None or kernel_size % 2 == 0:
        return 0, kernel_size, dilation_rate
    centre = (kernel_size - 1) // 2
    reach = min(centre, (int(size) - 1) // dilation_rate)
    return centre - reach, centre + reach + 1, dilation_rate if reach else 1


class _Conv2D(keras.layers.Conv2D):
    """``Conv2D`` that skips the taps reading only padding and can take a BN fold.

    The same variables as ``keras.layers.Conv2D`` (weights files do not see
    the difference). Which taps are skipped (:func:`reachable_taps`) is
    decided at each call from the input's static shape, so a model built or
    traced at another size gets its own choice, and an unknown size keeps
    every tap.
    """

    def convolution_op(self, inputs, kernel):
        dilation = tuple(self.dilation_rate)
        if tuple(self.strides) == (1, 1) and self.padding == "same":
            (r0, r1, dh), (c0, c1, dw) = (
                reachable_taps(k, d, n)
                for k, d, n in zip(self.kernel_size, dilation, tuple(inputs.shape)[1:3]))
            if (r1 - r0, c1 - c0) != tuple(self.kernel_size):
                kernel = kernel[r0:r1, c0:c1]
            dilation = (dh, dw)
        return keras.ops.conv(inputs, kernel, strides=tuple(self.strides), padding=self.padding,
                              dilation_rate=dilation, data_format=self.data_format)

    def call(self, inputs, fold=None):
        """The convolution; with ``fold`` (a BN layer), BN of it on moving statistics.

        BN with moving statistics is a per-channel affine map, folded here
        into the conv: the kernel times ``gamma / sqrt(var + eps)``, plus a
        bias (in float32 whatever the dtype policy, as BN computes).
        """
        if fold is None:
            return super().call(inputs)
        scale = keras.ops.rsqrt(keras.ops.cast(fold.moving_variance, "float32") + fold.epsilon)
        if fold.gamma is not None:
            scale = scale * keras.ops.cast(fold.gamma, "float32")
        shift = -keras.ops.cast(fold.moving_mean, "float32") * scale
        if fold.beta is not None:
            shift = shift + keras.ops.cast(fold.beta, "float32")
        kernel = keras.ops.cast(keras.ops.cast(self.kernel, "float32") * scale, self.compute_dtype)
        outputs = self.convolution_op(inputs, kernel)
        return _bias_add(outputs, keras.ops.cast(shift, outputs.dtype))


def _bias_add(x, bias):
    if keras.backend.backend() == "tensorflow":
        # A BiasAdd op rather than AddV2: Grappler's arithmetic optimizer merges a
        # chain of AddV2 (bias, then the residual) into AddN, which keeps oneDNN
        # from fusing conv + bias + residual add + ReLU into one kernel.
        tf = optional.tensorflow("The TensorFlow backend")
        return tf.nn.bias_add(x, bias)
    return keras.ops.add(x, bias)


def _conv_bn(conv, bn, inputs, training):
    """``bn(conv(inputs))``; one convolution where BN uses its moving statistics.

    That is at inference and for a frozen BN (BN's own test for using them).
    An exact rewrite of the same variables, which stay in the conv and BN
    layers (and their weights files).
    """
    if training and bn.trainable:
        return bn(conv(inputs), training=training)
    return conv(inputs, fold=bn)


@keras.saving.register_keras_serializable(package="keras_dpn")
class Bottleneck(keras.layers.Layer):
    """ResNet bottleneck with an optionally dilated 3x3 conv.

    ``1x1 conv(filters) -> BN -> ReLU -> kxk conv(filters, stride, dilation) ->
    BN -> ReLU -> 1x1 conv(filters * expansion) -> BN -> (+ shortcut) -> ReLU``.
    The shortcut is the identity when shapes allow it, else a 1x1 conv + BN
    (ResNet "projection" shortcut, with the stride).

    Args:
        filters: bottleneck width.
        expansion: output channels are ``filters * expansion``.
        kernel_size: size of the middle conv.
        strides: stride of the middle conv (ResNet v1.5 places it there).
        dilation_rate: dilation of the middle conv.
    """

    def __init__(self, filters, expansion=4, kernel_size=3, strides=1,
                 dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.expansion = int(expansion)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.dilation_rate = int(dilation_rate)
        if self.strides > 1 and self.dilation_rate > 1:
            raise ValueError(
                "A Bottleneck cannot both stride and dilate. Received: "
                f"strides={strides}, dilation_rate={dilation_rate}")
        d = self.dtype_policy
        self.conv1 = _conv(self.filters, 1, "conv1", d)
        self.bn1 = _bn("bn1", d)
        self.conv2 = _conv(self.filters, self.kernel_size, "conv2", d,
                           strides=self.strides, dilation_rate=self.dilation_rate)
        self.bn2 = _bn("bn2", d)
        self.conv3 = _conv(self.filters * self.expansion, 1, "conv3", d)
        self.bn3 = _bn("bn3", d)
        self.shortcut_conv = None
        self.shortcut_bn = None

    def build(self, input_shape):
        in_channels = input_shape[-1]
        out_channels = self.filters * self.expansion
        if in_channels != out_channels or self.strides != 1:
            d = self.dtype_policy
            self.shortcut_conv = _conv(out_channels, 1, "shortcut_conv", d, strides=self.strides)
            self.shortcut_bn = _bn("shortcut_bn", d)
            self.shortcut_conv.build(input_shape)
            out_shape = self.shortcut_conv.compute_output_shape(input_shape)
            self.shortcut_bn.build(out_shape)
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(shape)
        self.conv2.build(shape)
        shape = self.conv2.compute_output_shape(shape)
        self.bn2.build(shape)
        self.conv3.build(shape)
        shape = self.conv3.compute_output_shape(shape)
        self.bn3.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = keras.ops.relu(_conv_bn(self.conv1, self.bn1, inputs, training))
        x = keras.ops.relu(_conv_bn(self.conv2, self.bn2, x, training))
        x = _conv_bn(self.conv3, self.bn3, x, training)
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = _conv_bn(self.shortcut_conv, self.shortcut_bn, inputs, training)
        return keras.ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        shape = list(self.conv2.compute_output_shape(
            self.conv1.compute_output_shape(input_shape)))
        shape[-1] = self.filters * self.expansion
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, expansion=self.expansion,
                      kernel_size=self.kernel_size, strides=self.strides,
                      dilation_rate=self.dilation_rate)
        return config


@keras.saving.register_keras_serializable(package="keras_dpn")
class BasicBlock(keras.layers.Layer):
    """ResNet basic block, the unit of HRNet's parallel branches.

    ``kxk conv(filters, stride) -> BN -> ReLU -> kxk conv(filters) -> BN ->
    (+ shortcut) -> ReLU``. The shortcut is the identity when shapes allow
    it, else a 1x1 conv + BN.

    Args:
        filters: output channels.
        kernel_size: size of both convs.
        strides: stride of the first conv.

    Example:
    >>> import numpy as np
    >>> tuple(BasicBlock(8)(np.zeros((1, 6, 4, 8), "float32")).shape)
    (1, 6, 4, 8)
    """

    def __init__(self, filters, kernel_size=3, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        d = self.dtype_policy
        self.conv1 = _conv(self.filters, self.kernel_size, "conv1", d, strides=self.strides)
        self.bn1 = _bn("bn1", d)
        self.conv2 = _conv(self.filters, self.kernel_size, "conv2", d)
        self.bn2 = _bn("bn2", d)
        self.shortcut_conv = None
        self.shortcut_bn = None

    def build(self, input_shape):
        if input_shape[-1] != self.filters or self.strides != 1:
            d = self.dtype_policy
            self.shortcut_conv = _conv(self.filters, 1, "shortcut_conv", d, strides=self.strides)
            self.shortcut_bn = _bn("shortcut_bn", d)
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(input_shape))
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(shape)
        self.conv2.build(shape)
        self.bn2.build(self.conv2.compute_output_shape(shape))
        self.built = True

    def call(self, inputs, training=None):
        x = keras.ops.relu(self.bn1(self.conv1(inputs), training=training))
        x = self.bn2(self.conv2(x), training=training)
        shortcut = inputs
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(inputs), training=training)
        return keras.ops.relu(x + shortcut)

    def compute_output_shape(self, input_shape):
        shape = list(self.conv1.compute_output_shape(input_shape))
        shape[-1] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      strides=self.strides)
        return config


@keras.saving.register_keras_serializable(package="keras_dpn")
class DilationPyramidModule(keras.layers.Layer):
    """The Dilation Pyramid Module (DPM): N residual bottlenecks whose 3x3
    dilations halve block by block.

    Input and output have the same spatial size and ``filters * expansion``
    channels (the identity adds need it; a mismatching input gets a projection
    in its first block only).

    Args:
        filters: bottleneck width (32 or 64 in the paper).
        num_blocks: N, the number of bottlenecks (6 in the paper).
        dilation_schedule: ``"pyramid"``, ``"reversed"`` or an int, see
            :func:`dilation_rates`.
        kernel_size: size k of the dilated convs; the receptive field per axis
            is ``(k-1)*sum(rates)+1`` (127 for the pyramid with k=3, N=6).
        expansion: output channels per bottleneck width (4).

    Example:
    >>> import numpy as np
    >>> dpm = DilationPyramidModule(filters=8, num_blocks=3)
    >>> tuple(dpm(np.zeros((1, 16, 12, 32), "float32")).shape)
    (1, 16, 12, 32)
    """

    def __init__(self, filters, num_blocks=6, dilation_schedule="pyramid",
                 kernel_size=3, expansion=4, **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        if kernel_size not in (1, 3, 5, 7):
            raise ValueError(
                f"`kernel_size` must be an odd int in 1..7. Received: kernel_size={kernel_size!r}")
        self.filters = filters
        self.num_blocks = num_blocks
        self.dilation_schedule = dilation_schedule
        self.kernel_size = kernel_size
        self.expansion = expansion
        self.rates = dilation_rates(num_blocks, dilation_schedule)
        self.blocks = [
            Bottleneck(filters, expansion=expansion, kernel_size=kernel_size,
                       dilation_rate=rate, name=f"block{i + 1}_d{rate}",
                       dtype=self.dtype_policy)
            for i, rate in enumerate(self.rates)
        ]
        # Keras tracks the list, but TensorFlow's object graph (tf.train.Checkpoint,
        # SavedModel) follows only attributes that hold a layer: give each block
        # one too. Private names are visited last by Keras' saving, so the
        # `.keras` / `.weights.h5` layout (under `blocks`) stays as it was.
        for i, block in enumerate(self.blocks):
            setattr(self, f"_block{i + 1}", block)

    def build(self, input_shape):
        shape = input_shape
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters * self.expansion,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, num_blocks=self.num_blocks,
                      dilation_schedule=self.dilation_schedule,
                      kernel_size=self.kernel_size, expansion=self.expansion)
        return config
