"""The Dilation Pyramid Net family: one builder and its registered variants.

Architecture (paper Table I, input 256x192):

=========  ==========================================  ===========
stage      width 32                                    width 64
=========  ==========================================  ===========
stem       7x7/2 conv 64, BN, ReLU, 3x3/2 max-pool      same
conv1      3 bottlenecks 64-64-256 (64x48)              same
conv2      1x1/2 conv 256->128 + BN + ReLU (32x24)      4 bottlenecks 128-128-512
                                                        (first /2), 1x1 conv 512->256
conv3      ``num_modules`` DPMs, bottleneck 32 -> 128   DPMs, 64 -> 256
head       x2 bilinear upsample, 1x1 conv -> K heatmaps at 64x48
=========  ==========================================  ===========

``resolution="high"`` drops the stride of conv2 (Table IV): the DPMs run at
64x48 and the head needs no upsampling.
"""

import keras

from keras_dpn.models.layers import DATA_FORMAT, Bottleneck, DilationPyramidModule, dilation_rates
from keras_dpn.models.common import check_arguments, conv_bn, finish, heatmap_head, model_input
from keras_dpn.models.registry import register_model

RESOLUTIONS = ("medium", "high")


def output_stride(resolution="medium"):
    """Input pixels per feature pixel at the DPMs."""
    return 8 if resolution == "medium" else 4


def DPN(num_modules=4, width=32, resolution="medium", dilation_schedule="pyramid",
        num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
        include_top=True, weights=None, num_blocks=6, kernel_size=3,
        head_initializer="reference", name=None, dtype=None):
    """Builds a Dilation Pyramid Net.

    Args:
        num_modules: number of Dilation Pyramid Modules (1-4 in the paper).
        width: DPM bottleneck width, 32 or 64.
        resolution: ``"medium"`` (DPMs at 1/8 of the input, the paper's
            default) or ``"high"`` (DPMs at 1/4, Table IV).
        dilation_schedule: ``"pyramid"`` (DPM), ``"reversed"`` (RDPM) or an int
            (constant dilation; 1 is a plain convolution stack).
        num_keypoints: heatmap channels.
        input_shape: ``(H, W, 3)``; H and W multiples of the output stride.
        input_tensor: optional Keras tensor to build on.
        include_top: if False, the model outputs the last DPM's feature map
            (with ``weights``, the full model is loaded and cut after the DPMs).
        weights: None, a registered tag (``"coco"``, ``"mpii"``) or a path to a
            ``.weights.h5`` / ``.keras`` file.
        num_blocks: bottlenecks per DPM (N=6 in the paper).
        kernel_size: size of the dilated convs.
        head_initializer: kernel initializer of the 1x1 heatmap conv:
            ``"reference"`` (N(0, 0.001) with a zero bias, as the HRNet
            recipe; what training from scratch wants) or any Keras
            initializer, e.g. ``"glorot_uniform"`` (Keras' default) to opt
            out. Irrelevant with ``weights``.
        name: model name; defaults to ``DPN{num_modules}_{width}``.
        dtype: dtype or dtype policy for every layer and for the model itself
            (``model.dtype_policy``, so ``compile`` adds loss scaling under
            ``"mixed_float16"``); None: the global policy. The heatmap output
            stays float32 under any policy.

    Returns:
        A functional ``keras.Model`` (:class:`keras_dpn.models.common.PoseModel`)
        mapping ``(B, H, W, 3)`` images to ``(B, H/4, W/4, num_keypoints)``
        heatmaps. Always channels-last: a global
        ``keras.config.set_image_data_format("channels_first")`` changes nothing.

    Example:
    >>> model = DPN(num_modules=1, width=32)
    >>> model.output_shape
    (None, 64, 48, 17)
    """
    if isinstance(num_modules, bool) or not isinstance(num_modules, int) or num_modules < 1:
        raise ValueError(
            f"`num_modules` must be a positive int. Received: num_modules={num_modules!r}")
    if width not in (32, 64):
        raise ValueError(f"`width` must be 32 or 64. Received: width={width!r}")
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"`resolution` must be one of {RESOLUTIONS}. Received: resolution={resolution!r}")
    dilation_rates(num_blocks, dilation_schedule)  # validates both
    # Weights are registered per architecture, whatever the user names the model.
    arch = f"DPN{num_modules}_{width}"
    input_shape = check_arguments(arch, num_keypoints, weights, input_shape, input_tensor,
                                  output_stride(resolution), head_initializer)

    inputs, model_inputs = model_input(input_shape, input_tensor)
    x = conv_bn(inputs, 64, 7, 2, "stem", dtype)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", data_format=DATA_FORMAT,
                                  name="stem_pool", dtype=dtype)(x)
    for i in range(3):
        x = Bottleneck(64, name=f"conv1_block{i + 1}", dtype=dtype)(x)

    conv2_stride = 2 if resolution == "medium" else 1
    if width == 32:
        x = conv_bn(x, 128, 1, conv2_stride, "conv2_0", dtype)
    else:
        for i in range(4):
            x = Bottleneck(128, strides=conv2_stride if i == 0 else 1,
                           name=f"conv2_block{i + 1}", dtype=dtype)(x)
        x = conv_bn(x, 256, 1, 1, "conv2_out", dtype)

    for i in range(num_modules):
        x = DilationPyramidModule(width, num_blocks=num_blocks,
                                  dilation_schedule=dilation_schedule,
                                  kernel_size=kernel_size, name=f"dpm{i + 1}",
                                  dtype=dtype)(x)

    def head(features):
        return heatmap_head(features, num_keypoints, dtype, upsample=resolution == "medium",
                            head_initializer=head_initializer)

    return finish(model_inputs, x, head, include_top=include_top, weights=weights, arch=arch,
                  name=name or arch, num_keypoints=num_keypoints, input_shape=input_shape,
                  config=dict(resolution=resolution, dilation_schedule=dilation_schedule,
                              num_blocks=num_blocks, kernel_size=kernel_size), dtype=dtype)


# The registered variants (paper Tables II and IV; GMACs at 256x192). Each
# takes :func:`DPN`'s arguments except ``num_modules`` and ``width``.


@register_model
def DPN1_32(**kwargs):
    """One width-32 Dilation Pyramid Module. Arguments as :func:`DPN`.

    Example:
    >>> DPN1_32().output_shape
    (None, 64, 48, 17)
    """
    return DPN(num_modules=1, width=32, **kwargs)


@register_model
def DPN2_32(**kwargs):
    """Two width-32 Dilation Pyramid Modules. Arguments as :func:`DPN`."""
    return DPN(num_modules=2, width=32, **kwargs)


@register_model
def DPN3_32(**kwargs):
    """Three width-32 Dilation Pyramid Modules. Arguments as :func:`DPN`."""
    return DPN(num_modules=3, width=32, **kwargs)


@register_model(paper_params=0.7, paper_gmacs=1.1, source="Table II")
def DPN4_32(**kwargs):
    """Four width-32 Dilation Pyramid Modules, the paper's main model. Arguments as :func:`DPN`.

    Example:
    >>> model = DPN4_32()
    >>> model.output_shape
    (None, 64, 48, 17)
    """
    return DPN(num_modules=4, width=32, **kwargs)


@register_model(paper_gmacs=2.1, paper_gmacs_high=6.0, source="Table IV")
def DPN1_64(**kwargs):
    """One width-64 Dilation Pyramid Module. Arguments as :func:`DPN`."""
    return DPN(num_modules=1, width=64, **kwargs)


@register_model(paper_gmacs=2.4, paper_gmacs_high=7.2, source="Table IV")
def DPN2_64(**kwargs):
    """Two width-64 Dilation Pyramid Modules. Arguments as :func:`DPN`."""
    return DPN(num_modules=2, width=64, **kwargs)


@register_model(paper_gmacs=2.7, paper_gmacs_high=8.4, source="Table IV")
def DPN3_64(**kwargs):
    """Three width-64 Dilation Pyramid Modules. Arguments as :func:`DPN`."""
    return DPN(num_modules=3, width=64, **kwargs)


@register_model(paper_params=3.3, paper_gmacs=3.0, paper_gmacs_high=9.6, source="Tables II, IV")
def DPN4_64(**kwargs):
    """Four width-64 Dilation Pyramid Modules. Arguments as :func:`DPN`."""
    return DPN(num_modules=4, width=64, **kwargs)
