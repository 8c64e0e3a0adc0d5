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

from keras_dpn.models.layers import (DATA_FORMAT, BasicBlock, Bottleneck, DilationPyramidModule,
                              dilation_rates)
from keras_dpn.models.common import check_arguments, conv_bn, finish, heatmap_head, model_input
from keras_dpn.models.registry import register_model

# Input pixels per pixel of the lowest-resolution branch: inputs must be
# multiples of it so that the upsampled branches line up in the fuse layers.
HRNET_STRIDE = 32

# (num_modules, num_blocks per branch, branch channels) of stages 2-4, W32.
HRNET_W32_STAGES = (
    (1, 4, (32, 64)),
    (4, 4, (32, 64, 128)),
    (3, 4, (32, 64, 128, 256)),
)


def _transition(branches, channels, name, dtype):
    """Adapts the previous stage's branches and adds one new, halved branch."""
    out = []
    for i, c in enumerate(channels):
        if i < len(branches):
            x = branches[i]
            if x.shape[-1] != c:
                x = conv_bn(x, c, 3, 1, f"{name}_b{i}", dtype)
            out.append(x)
        else:
            out.append(conv_bn(branches[-1], c, 3, 2, f"{name}_b{i}", dtype))
    return out


def _fuse(branches, channels, num_outputs, name, dtype):
    outputs = []
    for i in range(num_outputs):
        terms = []
        for j, x in enumerate(branches):
            prefix = f"{name}_{j}to{i}"
            if j > i:
                x = conv_bn(x, channels[i], 1, 1, prefix, dtype, relu=False)
                # Nearest, as in the reference; the sizes are exact multiples.
                x = keras.layers.UpSampling2D(2 ** (j - i), interpolation="nearest",
                                              data_format=DATA_FORMAT, name=f"{prefix}_up",
                                              dtype=dtype)(x)
            elif j < i:
                for k in range(i - j):
                    last = k == i - j - 1
                    x = conv_bn(x, channels[i] if last else channels[j], 3, 2,
                                 f"{prefix}_down{k + 1}", dtype, relu=not last)
            terms.append(x)
        x = keras.layers.Add(name=f"{name}_sum{i}", dtype=dtype)(terms)
        outputs.append(keras.layers.ReLU(name=f"{name}_relu{i}", dtype=dtype)(x))
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
    x = conv_bn(inputs, 64, 3, 2, "stem1", dtype)
    x = conv_bn(x, 64, 3, 2, "stem2", dtype)
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


@register_model(paper_params=28.5, paper_gmacs=7.1, source="Table VI")
def HRNetW32(num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
             include_top=True, weights=None, head_initializer="reference", name=None,
             dtype=None):
    """HRNet-W32 for top-down pose estimation (heatmaps at 1/4 of the input).

    Args:
        num_keypoints: heatmap channels.
        input_shape: ``(H, W, 3)``; H and W multiples of 32.
        input_tensor: optional Keras tensor to build on.
        include_top: if False, the model outputs the 32-channel 1/4 branch.
        weights: None, a registered tag or a path to a ``.weights.h5`` /
            ``.keras`` file.
        head_initializer: ``"reference"`` (N(0, 0.001)) or a Keras
            initializer, see :func:`keras_dpn.models.DPN`.
        name: model name; defaults to ``"HRNetW32"``.
        dtype: dtype or dtype policy for every layer and for the model itself
            (``model.dtype_policy``, so ``compile`` adds loss scaling under
            ``"mixed_float16"``); None: the global policy. The heatmap output
            stays float32 under any policy.

    Returns:
        A functional ``keras.Model`` (:class:`keras_dpn.models.common.PoseModel`):
        ``(B, H, W, 3)`` images to ``(B, H/4, W/4, num_keypoints)`` heatmaps.
        Always channels-last: a global
        ``keras.config.set_image_data_format("channels_first")`` changes nothing.

    Example:
    >>> model = HRNetW32(input_shape=(128, 96, 3))
    >>> model.output_shape
    (None, 32, 24, 17)
    """
    arch = "HRNetW32"
    input_shape = check_arguments(arch, num_keypoints, weights, input_shape, input_tensor,
                                  HRNET_STRIDE, head_initializer)
    inputs, model_inputs = model_input(input_shape, input_tensor)

    def head(features):
        return heatmap_head(features, num_keypoints, dtype, head_initializer=head_initializer)

    return finish(model_inputs, hrnet_backbone(inputs, dtype=dtype), head,
                  include_top=include_top, weights=weights, arch=arch, name=name or arch,
                  num_keypoints=num_keypoints, input_shape=input_shape, dtype=dtype)


@register_model(paper_params=29.5, paper_gmacs=7.8, source="Table VI")
def DPN2_HRNet(num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
               include_top=True, weights=None, dilation_schedule="pyramid",
               head_initializer="reference", name=None, dtype=None):
    """HRNet-W32 with two Dilation Pyramid Modules before the head (Table VI).

    The 1/4 branch goes through a 1x1/2 conv to 256 channels, two width-64
    DPMs at 1/8 of the input, x2 bilinear upsampling and the 1x1 heatmap conv.

    Args:
        dilation_schedule: of the two DPMs, see
            :func:`keras_dpn.models.layers.dilation_rates`.
        The others as :func:`HRNetW32`, except that with ``include_top=False``
        the model outputs the last DPM's feature map (256 channels at 1/8) and
        ``name`` defaults to ``"DPN2_HRNet"``.

    Returns:
        A functional ``keras.Model`` (:class:`keras_dpn.models.common.PoseModel`):
        ``(B, H, W, 3)`` images to ``(B, H/4, W/4, num_keypoints)`` heatmaps,
        channels-last whatever the global image data format.

    Example:
    >>> model = DPN2_HRNet(input_shape=(128, 96, 3))
    >>> model.output_shape
    (None, 32, 24, 17)
    """
    arch = "DPN2_HRNet"
    dilation_rates(6, dilation_schedule)  # validates
    input_shape = check_arguments(arch, num_keypoints, weights, input_shape, input_tensor,
                                  HRNET_STRIDE, head_initializer)
    inputs, model_inputs = model_input(input_shape, input_tensor)
    x = hrnet_backbone(inputs, dtype=dtype)
    x = conv_bn(x, 256, 1, 2, "dpm_in", dtype)
    for i in range(2):
        x = DilationPyramidModule(64, dilation_schedule=dilation_schedule,
                                  name=f"dpm{i + 1}", dtype=dtype)(x)

    def head(features):
        return heatmap_head(features, num_keypoints, dtype, upsample=True,
                            head_initializer=head_initializer)

    return finish(model_inputs, x, head, include_top=include_top, weights=weights, arch=arch,
                  name=name or arch, num_keypoints=num_keypoints, input_shape=input_shape,
                  config=dict(dilation_schedule=dilation_schedule), dtype=dtype)
