"""The Dilation Pyramid Net family: one builder, variants as data.

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

from keras_dpn import weights as weights_lib
from keras_dpn.layers import (BN_EPSILON, BN_MOMENTUM, Bottleneck,
                              DilationPyramidModule, dilation_rates)

RESOLUTIONS = ("medium", "high")

# Registered variants: name -> builder arguments. Tables II-V of the paper.
DPN_SPECS = {
    f"DPN{m}_{w}": dict(num_modules=m, width=w) for m in (1, 2, 3, 4) for w in (32, 64)
}


def output_stride(resolution="medium"):
    """Input pixels per feature pixel at the DPMs."""
    return 8 if resolution == "medium" else 4


def _conv_bn_relu(x, filters, kernel_size, strides, name, dtype):
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                            use_bias=False, kernel_initializer="he_normal",
                            name=f"{name}_conv", dtype=dtype)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{name}_bn", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)


def validate_input_shape(input_shape, stride, weights, arg_name="input_shape"):
    """Checks ``(H, W, C)`` against the network stride; returns it as a tuple."""
    if input_shape is None or len(tuple(input_shape)) != 3:
        raise ValueError(
            f"`{arg_name}` must be (height, width, channels). Received: {arg_name}={input_shape!r}")
    h, w, c = tuple(input_shape)
    for size, axis in ((h, "height"), (w, "width")):
        if size is not None and (not isinstance(size, int) or size < stride or size % stride):
            raise ValueError(
                f"`{arg_name}` {axis} must be a positive multiple of the network stride "
                f"{stride}. Received: {arg_name}={tuple(input_shape)!r}")
    if weights is not None and c != 3:
        raise ValueError(
            "Pretrained weights need 3 input channels (RGB). Received: "
            f"{arg_name}={tuple(input_shape)!r} with weights={weights!r}")
    return (h, w, c)


def _model_input(input_shape, input_tensor, dtype):
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="image"), None
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape, name="image"), input_tensor
    return input_tensor, input_tensor


def DPN(num_modules=4, width=32, resolution="medium", dilation_schedule="pyramid",
        num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
        include_top=True, weights=None, num_blocks=6, kernel_size=3,
        name=None, dtype=None):
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
        name: model name; defaults to ``DPN{num_modules}_{width}``.
        dtype: dtype or dtype policy for every layer; the heatmap output stays
            float32 under mixed precision.

    Returns:
        A functional ``keras.Model`` mapping ``(B, H, W, 3)`` images to
        ``(B, H/4, W/4, num_keypoints)`` heatmaps.

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
    if isinstance(num_keypoints, bool) or not isinstance(num_keypoints, int) or num_keypoints < 1:
        raise ValueError(
            f"`num_keypoints` must be an int >= 1. Received: num_keypoints={num_keypoints!r}")
    # Weights are registered per architecture, whatever the user names the model.
    arch = f"DPN{num_modules}_{width}"
    name = name or arch
    weights_lib.validate_weights_argument(arch, weights)
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    stride = output_stride(resolution)
    input_shape = validate_input_shape(input_shape, stride, weights)

    inputs, user_tensor = _model_input(input_shape, input_tensor, dtype)
    x = _conv_bn_relu(inputs, 64, 7, 2, "stem", dtype)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool", dtype=dtype)(x)
    for i in range(3):
        x = Bottleneck(64, name=f"conv1_block{i + 1}", dtype=dtype)(x)

    conv2_stride = 2 if resolution == "medium" else 1
    if width == 32:
        x = _conv_bn_relu(x, 128, 1, conv2_stride, "conv2_0", dtype)
    else:
        for i in range(4):
            x = Bottleneck(128, strides=conv2_stride if i == 0 else 1,
                           name=f"conv2_block{i + 1}", dtype=dtype)(x)
        x = _conv_bn_relu(x, 256, 1, 1, "conv2_out", dtype)

    for i in range(num_modules):
        x = DilationPyramidModule(width, num_blocks=num_blocks,
                                  dilation_schedule=dilation_schedule,
                                  kernel_size=kernel_size, name=f"dpm{i + 1}",
                                  dtype=dtype)(x)
    features = x
    model_inputs = user_tensor if user_tensor is not None else inputs
    if not include_top and weights is None:
        return keras.Model(model_inputs, features, name=name)
    # Weights files always hold the head: with include_top=False the full model
    # is loaded and the feature extractor cut out of it (the layers are shared).
    if resolution == "medium":
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name="upsample",
                                      dtype=dtype)(x)
    x = keras.layers.Conv2D(num_keypoints, 1, padding="same", name="heatmaps",
                            dtype=dtype)(x)
    # Heatmap values are small; keep the loss and the argmax in float32.
    x = keras.layers.Activation("linear", dtype="float32", name="heatmaps_fp32")(x)
    model = keras.Model(model_inputs, x, name=name)
    if weights is not None:
        weights_lib.load_weights(model, weights, arch=arch, num_keypoints=num_keypoints,
                                 input_shape=input_shape)
    if not include_top:
        return keras.Model(model_inputs, features, name=name)
    return model


def _make_constructor(variant):
    spec = DPN_SPECS[variant]

    def constructor(num_keypoints=17, input_shape=(256, 192, 3), input_tensor=None,
                    include_top=True, weights=None, resolution="medium",
                    dilation_schedule="pyramid", name=None, dtype=None):
        return DPN(num_keypoints=num_keypoints, input_shape=input_shape,
                   input_tensor=input_tensor, include_top=include_top, weights=weights,
                   resolution=resolution, dilation_schedule=dilation_schedule,
                   name=name or variant, dtype=dtype, **spec)

    constructor.__name__ = variant
    constructor.__qualname__ = variant
    constructor.__doc__ = (
        f"{variant}: {spec['num_modules']} Dilation Pyramid Module(s) of width "
        f"{spec['width']}. Arguments as :func:`DPN`.\n\n"
        f"Example:\n>>> model = {variant}()\n>>> model.output_shape\n(None, 64, 48, 17)\n")
    return constructor


DPN1_32 = _make_constructor("DPN1_32")
DPN2_32 = _make_constructor("DPN2_32")
DPN3_32 = _make_constructor("DPN3_32")
DPN4_32 = _make_constructor("DPN4_32")
DPN1_64 = _make_constructor("DPN1_64")
DPN2_64 = _make_constructor("DPN2_64")
DPN3_64 = _make_constructor("DPN3_64")
DPN4_64 = _make_constructor("DPN4_64")
