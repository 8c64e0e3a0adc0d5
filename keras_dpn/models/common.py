"""What the builders share: argument checks, input, conv-BN, heatmap head, weights cut.

The DPN and HRNet builders differ only in their feature extractors; they
take the same arguments, validate them here in the same order (before any
layer is built), and end in the same 1x1 heatmap head.
"""

import keras

from keras_dpn.core.keypoints import validate_num_keypoints
from keras_dpn.models.layers import BN_EPSILON, BN_MOMENTUM, DATA_FORMAT
from keras_dpn.models.config import attach_builder_config

# The HRNet reference draws the final layer's kernel from N(0, 0.001) with a
# zero bias: targets are zero almost everywhere, and a head that starts near
# zero skips the epochs a Glorot head spends unlearning an O(1) offset.
REFERENCE_HEAD_STDDEV = 1e-3

# Loading `weights` needs the registry, the download cache and presets, which
# sit above the models; keras_dpn.hub.pretrained plugs its functions in when the
# package is imported, so that no module here imports upwards.
_weights_loader = {}


def set_weights_loader(validate, load):
    """Installs what checks (``validate(arch, weights)``) and loads ``weights``.

    Called once by :mod:`keras_dpn.hub.pretrained` (see
    :func:`keras_dpn.hub.pretrained.validate_weights_argument` and
    :func:`keras_dpn.hub.pretrained.load_weights` for the signatures).
    """
    _weights_loader.update(validate=validate, load=load)


def _loader(step):
    if not _weights_loader:
        # Unreachable through `import keras_dpn`, which imports keras_dpn.hub.pretrained.
        raise RuntimeError("Pretrained weights need keras_dpn.hub.pretrained; import keras_dpn.")
    return _weights_loader[step]


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


def resolve_head_initializer(identifier):
    """The heatmap conv's kernel initializer: ``"reference"`` or any Keras initializer."""
    if isinstance(identifier, str) and identifier == "reference":
        return keras.initializers.RandomNormal(mean=0.0, stddev=REFERENCE_HEAD_STDDEV)
    try:
        initializer = keras.initializers.get(identifier)
    except (ValueError, TypeError):
        initializer = None
    if initializer is None:
        raise ValueError(
            "`head_initializer` must be 'reference' (N(0, 0.001), the HRNet recipe) or a Keras "
            f"initializer such as 'glorot_uniform'. Received: head_initializer={identifier!r}")
    return initializer


def check_arguments(arch, num_keypoints, weights, input_shape, input_tensor, stride,
                    head_initializer="reference"):
    """Validates the arguments every builder shares; returns the input shape.

    Raises:
        ValueError: naming the argument and what it received.
    """
    validate_num_keypoints(num_keypoints)
    resolve_head_initializer(head_initializer)
    if weights is not None:
        _loader("validate")(arch, weights)
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    return validate_input_shape(input_shape, stride, weights)


def model_input(input_shape, input_tensor):
    """``(graph input, model input)``: a new ``image`` input, or the user's tensor."""
    if input_tensor is None:
        inputs = keras.Input(shape=input_shape, name="image")
        return inputs, inputs
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape, name="image"), input_tensor
    return input_tensor, input_tensor


def conv_bn(x, filters, kernel_size, strides, name, dtype, relu=True):
    """``{name}_conv`` (no bias, He init) -> ``{name}_bn`` [-> ``{name}_relu``]."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                            data_format=DATA_FORMAT, use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv", dtype=dtype)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM,
                                        name=f"{name}_bn", dtype=dtype)(x)
    return keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x) if relu else x


def heatmap_head(x, num_keypoints, dtype, upsample=False, head_initializer="reference"):
    """[x2 bilinear ``upsample``] -> 1x1 conv ``heatmaps`` -> float32 ``heatmaps_fp32``."""
    if upsample:
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", data_format=DATA_FORMAT,
                                      name="upsample", dtype=dtype)(x)
    x = keras.layers.Conv2D(num_keypoints, 1, padding="same", data_format=DATA_FORMAT,
                            name="heatmaps",
                            kernel_initializer=resolve_head_initializer(head_initializer),
                            bias_initializer="zeros", dtype=dtype)(x)
    # Heatmap values are small; keep the loss and the argmax in float32.
    return keras.layers.Activation("linear", dtype="float32", name="heatmaps_fp32")(x)


@keras.saving.register_keras_serializable(package="keras_dpn")
class PoseModel(keras.Model):
    """The functional model every builder returns, with the ``dtype`` it was built with.

    A plain ``keras.Model(inputs, outputs)`` reports the global dtype policy
    whatever its layers use, and ``compile`` wraps the optimizer in a
    ``LossScaleOptimizer`` only when the *model's* policy is
    ``mixed_float16``. This subclass takes ``dtype`` and keeps it in its
    config, so ``type(model).from_config`` and ``.keras`` files keep the
    policy (as keras-hub's ``Backbone`` does; ``keras.models.clone_model``
    does not pass it on). Otherwise a functional model:
    ``PoseModel(inputs, outputs, name=..., dtype=...)``.

    Example:
    >>> import keras
    >>> x = keras.Input((8, 8, 3))
    >>> y = keras.layers.Conv2D(2, 1, dtype="mixed_float16")(x)
    >>> PoseModel(x, y, dtype="mixed_float16").dtype_policy.name
    'mixed_float16'
    """

    # `*args, **kwargs`: Keras treats a subclass with this signature as
    # functional (its graph config and `from_config`); anything narrower falls
    # back to the subclassed-model path, which cannot rebuild the graph.
    def __init__(self, *args, dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        if dtype is not None:
            self.dtype_policy = dtype

    def get_config(self):
        config = super().get_config()
        config["dtype"] = keras.dtype_policies.serialize(self.dtype_policy)
        return config


def finish(model_inputs, features, head, *, include_top, weights, arch, name, num_keypoints,
           input_shape, config=None, dtype=None):
    """Wraps the graph in a model, loads ``weights`` and applies ``include_top``.

    Weights files always hold the head, so with ``include_top=False`` and
    weights the full model is built and loaded, and the feature extractor
    (sharing its layers) is cut out of it.

    Args:
        model_inputs: the model's input tensor.
        features: the feature extractor's output.
        head: ``features -> heatmaps`` (called only when needed).
        config: the builder's architecture arguments (``resolution``,
            ``dilation_schedule``, ...): compared with those the weights were
            trained with, and left on the heatmap model for runs and presets
            (:func:`keras_dpn.models.config.builder_config`).
        dtype: the layers' dtype policy, reported by the model too (None: the
            global policy).
    """
    if not include_top and weights is None:
        return PoseModel(model_inputs, features, name=name, dtype=dtype)
    full = PoseModel(model_inputs, head(features), name=name, dtype=dtype)
    attach_builder_config(full, arch, num_keypoints, input_shape, config)
    if weights is not None:
        _loader("load")(full, weights, arch=arch, num_keypoints=num_keypoints,
                        input_shape=input_shape, config=config)
    if include_top:
        return full
    return PoseModel(model_inputs, features, name=name, dtype=dtype)
