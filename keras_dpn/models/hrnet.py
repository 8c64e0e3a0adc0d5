"""HRNet-W32 (the pose-estimation reference design) and ``DPN2_HRNet``.

HRNet keeps a high-resolution branch through the whole network and adds
lower-resolution branches stage by stage, exchanging information between
them in *fuse* layers:

=========  ===============================================================
stem       3x3/2 conv 64, BN, ReLU, 3x3/2 conv 64, BN, ReLU (1/4)
stage 1    4 bottlenecks 64-64-256
stage 2    1 module,  branches 32/64 (1/4, 1/8), 4 basic blocks per branch
stage 3    4 modules, branches 32/64/128 (+1/16)
stage 4    3 modules, branches 32/64/128/256 (+1/32); the last module only
           outputs the 1/4 branch
head       1x1 conv 32 -> K heatmaps at 1/4
=========  ===============================================================

Fuse layer, output branch ``i`` from input branch ``j``: ``j > i``: 1x1 conv +
BN + nearest x2**(j-i) upsampling; ``j < i``: ``i - j`` 3x3/2 convs (BN, ReLU
between them); the terms are summed and passed through a ReLU.

``DPN2_HRNet`` (paper Table VI) stacks two Dilation Pyramid Modules before
the head. The paper does not say where they sit; its +1.0 M parameters and
+0.7 GMACs fit two width-64 DPMs at 1/8 of the input, so: 1x1/2 conv 32 -> 256
+ BN + ReLU on the 1/4 branch, two DPM(64), x2 bilinear upsampling, head.
"""

import keras

from keras_dpn import weights as weights_lib
from keras_dpn.layers import (BN_EPSILON, BN_MOMENTUM, BasicBlock, Bottleneck,
                              DilationPyramidModule, dilation_rates)
from keras_dpn.models.dpn import _model_input, validate_input_shape

# Input pixels per pixel of the lowest-resolution branch: inputs must be
# multiples of it so that the upsampled branches line up in the fuse layers.
HRNET_STRIDE = 32

# (num_modules, num_blocks per branch, branch channels) of stages 2-4, W32.
HRNET_W32_STAGES = (
    (1, 4, (32, 64)),
    (4, 4, (32, 64, 128)),
    (3, 4, (32, 64, 128, 256)),
)


def _conv(x, filters, kernel_size, strides, name, dtype):
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                               use_bias=False, kernel_initializer="he_normal",
                               name=name, dtype=dtype)(x)


def _bn(x, name, dtype):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                           name=name, dtype=dtype)(x)


def _relu(x, name, dtype):
    return keras.layers.ReLU(name=name, dtype=dtype)(x)


def _conv_bn(x, filters, kernel_size, strides, name, dtype, relu=True):
    x = _bn(_conv(x, filters, kernel_size, strides, f"{name}_conv", dtype), f"{name}_bn", dtype)
    return _relu(x, f"{name}_relu", dtype) if relu else x


def _transition(branches, channels, name, dtype):
    """Adapts the previous stage's branches and adds one new, halved branch."""
    out = []
    for i, c in enumerate(channels):
        if i < len(branches):
            x = branches[i]
            if x.shape[-1] != c:
                x = _conv_bn(x, c, 3, 1, f"{name}_b{i}", dtype)
            out.append(x)
        else:
            out.append(_conv_bn(branches[-1], c, 3, 2, f"{name}_b{i}", dtype))
    return out


def _fuse(branches, channels, num_outputs, name, dtype):
    outputs = []
    for i in range(num_outputs):
        terms = []
        for j, x in enumerate(branches):
            prefix = f"{name}_{j}to{i}"
            if j > i:
                x = _conv_bn(x, channels[i], 1, 1, prefix, dtype, relu=False)
                # Nearest, as in the reference; the sizes are exact multiples.
                x = keras.layers.UpSampling2D(2 ** (j - i), interpolation="nearest",
                                              name=f"{prefix}_up", dtype=dtype)(x)
            elif j < i:
                for k in range(i - j):
                    last = k == i - j - 1
                    x = _conv_bn(x, channels[i] if last else channels[j], 3, 2,
                                 f"{prefix}_down{k + 1}", dtype, relu=not last)
            terms.append(x)
        x = keras.layers.Add(name=f"{name}_sum{i}", dtype=dtype)(terms)
        outputs.append(_relu(x, f"{name}_relu{i}", dtype))
    return outputs


def _hrnet_module(branches, num_blocks, channels, multi_scale_output, name, dtype):
    branches = list(branches)
    for j, c in enumerate(channels):
        for k in range(num_blocks):
            branches[j] = BasicBlock(c, name=f"{name}_b{j}_block{k + 1}",
                                     dtype=dtype)(branches[j])
    if len(branches) == 1:
        return branches
    num_outputs = len(branches) if multi_scale_output else 1
    return _fuse(branches, channels, num_outputs, f"{name}_fuse", dtype)


def hrnet_backbone(inputs, stages=HRNET_W32_STAGES, dtype=None):
    """HRNet feature extractor: returns the 1/4 branch after the last stage."""
    x = _conv_bn(inputs, 64, 3, 2, "stem1", dtype)
    x = _conv_bn(x, 64, 3, 2, "stem2", dtype)
    for k in range(4):
        x = Bottleneck(64, name=f"stage1_block{k + 1}", dtype=dtype)(x)
    branches = [x]
    for s, (num_modules, num_blocks, channels) in enumerate(stages, start=2):
        branches = _transition(branches, channels, f"transition{s - 1}", dtype)
        for m in range(num_modules):
            # Pose HRNet only needs the 1/4 branch out of the very last module.
            last = s == len(stages) + 1 and m == num_modules - 1
            branches = _hrnet_module(branches, num_blocks, channels,
                                     multi_scale_output=not last,
                                     name=f"stage{s}_m{m + 1}", dtype=dtype)
    return branches[0]


def _validate_common(num_keypoints, weights, arch, input_shape, input_tensor):
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(
            f"`num_keypoints` must be an int >= 1. Received: num_keypoints={num_keypoints!r}")
    weights_lib.validate_weights_argument(arch, weights)
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    return validate_input_shape(input_shape, HRNET_STRIDE, weights)


def _finish(inputs, user_tensor, features, head, include_top, weights, arch, name,
            num_keypoints, input_shape):
    """Wraps the graph in a model and loads weights.

    Weights files always hold the head, so with ``include_top=False`` the full
    model is built, loaded, and the feature extractor is cut out of it.
    """
    model_inputs = user_tensor if user_tensor is not None else inputs
    if include_top or weights is not None:
        full = keras.Model(model_inputs, head(features), name=name)
        if weights is not None:
            weights_lib.load_weights(full, weights, arch=arch, num_keypoints=num_keypoints,
                                     input_shape=input_shape)
        if include_top:
            return full
    return keras.Model(model_inputs, features, name=name)


def _heatmap_head(num_keypoints, dtype, upsample=False):
    def head(x):
        if upsample:
            x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="upsample",
                                          dtype=dtype)(x)
        x = keras.layers.Conv2D(num_keypoints, 1, padding="same", name="heatmaps",
                                dtype=dtype)(x)
        # Heatmap values are small; keep the loss and the argmax in float32.
        return keras.layers.Activation("linear", dtype="float32", name="heatmaps_fp32")(x)
    return head


def HRNetW32(num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
             include_top=True, weights=None, name=None, dtype=None):
    """HRNet-W32 for top-down pose estimation (heatmaps at 1/4 of the input).

    Args:
        num_keypoints: heatmap channels.
        input_shape: ``(H, W, 3)``; H and W multiples of 32.
        input_tensor: optional Keras tensor to build on.
        include_top: if False, the model outputs the 32-channel 1/4 branch.
        weights: None, a registered tag or a path to a ``.weights.h5`` /
            ``.keras`` file.
        name: model name; defaults to ``"HRNetW32"``.
        dtype: dtype or dtype policy for every layer; the heatmap output stays
            float32 under mixed precision.

    Returns:
        A functional ``keras.Model``: ``(B, H, W, 3)`` images to
        ``(B, H/4, W/4, num_keypoints)`` heatmaps.

    Example:
    >>> model = HRNetW32(input_shape=(128, 96, 3))
    >>> model.output_shape
    (None, 32, 24, 17)
    """
    arch = "HRNetW32"
    name = name or arch
    input_shape = _validate_common(num_keypoints, weights, arch, input_shape, input_tensor)
    inputs, user_tensor = _model_input(input_shape, input_tensor, dtype)
    features = hrnet_backbone(inputs, dtype=dtype)
    return _finish(inputs, user_tensor, features, _heatmap_head(num_keypoints, dtype),
                   include_top, weights, arch, name, num_keypoints, input_shape)


def DPN2_HRNet(num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
               include_top=True, weights=None, dilation_schedule="pyramid",
               name=None, dtype=None):
    """HRNet-W32 with two Dilation Pyramid Modules before the head (Table VI).

    The 1/4 branch goes through a 1x1/2 conv to 256 channels, two width-64
    DPMs at 1/8 of the input, x2 bilinear upsampling and the 1x1 heatmap conv.

    Args:
        num_keypoints: heatmap channels.
        input_shape: ``(H, W, 3)``; H and W multiples of 32.
        input_tensor: optional Keras tensor to build on.
        include_top: if False, the model outputs the last DPM's feature map
            (256 channels at 1/8).
        weights: None, a registered tag or a path to a ``.weights.h5`` /
            ``.keras`` file.
        dilation_schedule: of the two DPMs, see
            :func:`keras_dpn.layers.dilation_rates`.
        name: model name; defaults to ``"DPN2_HRNet"``.
        dtype: dtype or dtype policy for every layer; the heatmap output stays
            float32 under mixed precision.

    Returns:
        A functional ``keras.Model``: ``(B, H, W, 3)`` images to
        ``(B, H/4, W/4, num_keypoints)`` heatmaps.

    Example:
    >>> model = DPN2_HRNet(input_shape=(128, 96, 3))
    >>> model.output_shape
    (None, 32, 24, 17)
    """
    arch = "DPN2_HRNet"
    name = name or arch
    dilation_rates(6, dilation_schedule)  # validates
    input_shape = _validate_common(num_keypoints, weights, arch, input_shape, input_tensor)
    inputs, user_tensor = _model_input(input_shape, input_tensor, dtype)
    x = hrnet_backbone(inputs, dtype=dtype)
    x = _conv_bn(x, 256, 1, 2, "dpm_in", dtype)
    for i in range(2):
        x = DilationPyramidModule(64, dilation_schedule=dilation_schedule,
                                  name=f"dpm{i + 1}", dtype=dtype)(x)
    return _finish(inputs, user_tensor, x, _heatmap_head(num_keypoints, dtype, upsample=True),
                   include_top, weights, arch, name, num_keypoints, input_shape)
