"""The builder arguments a model records: what its variable shapes do not tell.

Builders leave ``{"variant": ..., "arguments": {...}}`` on the model
(:func:`attach_builder_config`); runs, presets and the weights registry read
it (:func:`builder_config`) and compare it with what weights were trained
with (:func:`check_builder_config`), because a ``resolution="high"`` or a
``dilation_schedule="reversed"`` DPN has the shapes of the default one.
"""

import inspect
import json

# The package keras_dpn.models, always imported before this module, has
# registered the variants by then.
from keras_dpn.models.registry import model_info

# Builder arguments that the weights' variable shapes do not reveal, or that a
# registry entry records besides input size and keypoint count: they change
# strides or dilation rates, not shapes, so only the recorded values keep
# weights out of a model built otherwise.
ARCHITECTURE_ARGS = ("resolution", "dilation_schedule", "num_blocks", "kernel_size")
# The attribute under which builders leave their arguments on the model.
_BUILDER_ATTR = "_keras_dpn_builder"


def builder_defaults(arch):
    """Default values of the architecture arguments a variant takes.

    A registered variant either lists its arguments (``HRNetW32``) or is a
    one-line call of its family's builder with ``**kwargs`` (``DPN4_32`` ->
    ``DPN``): then the builder it calls gives them.

    Returns:
        ``{name: default}`` for the :data:`ARCHITECTURE_ARGS` the variant takes.
    """
    fn = model_info(arch, arg_name="arch").constructor
    params = dict(inspect.signature(fn).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for name in fn.__code__.co_names:
            target = fn.__globals__.get(name)
            if inspect.isfunction(target) and target is not fn:
                params = {**inspect.signature(target).parameters, **params}
                break
    return {k: params[k].default for k in ARCHITECTURE_ARGS
            if k in params and params[k].default is not inspect.Parameter.empty}


def _jsonable(value):
    return json.loads(json.dumps(value))


def complete_config(arch, config, arg_name="config"):
    """``config`` checked against the variant's arguments and completed with its defaults.

    Raises:
        ValueError: an argument the variant does not take, naming ``arg_name``.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"`{arg_name}` must be a dict of builder arguments. "
                         f"Received: {arg_name}={config!r}")
    defaults = builder_defaults(arch)
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(
            f"{arch} takes no architecture argument {unknown} (its arguments: "
            f"{sorted(defaults) or 'none'}). Received: {arg_name}={config!r}")
    return _jsonable({**defaults, **config})


def attach_builder_config(model, arch, num_keypoints, input_shape, config=None):
    """Leaves the builder's arguments on ``model`` (read by :func:`builder_config`).

    Kept outside Keras' attribute tracking, so saving, checkpoints and exports
    do not see it.
    """
    value = {"variant": arch,
             "arguments": _jsonable({"input_shape": list(input_shape),
                                     "num_keypoints": num_keypoints, **(config or {})})}
    object.__setattr__(model, _BUILDER_ATTR, value)
    return model


def builder_config(model):
    """``{"variant": ..., "arguments": {...}}`` of a model built by a keras_dpn builder.

    The arguments are the ones :func:`keras_dpn.get_model` rebuilds the model
    from (input shape, keypoint count, resolution, dilation schedule, ...).
    None for any other model (e.g. one loaded from a ``.keras`` file).

    Example:
    >>> import keras_dpn
    >>> cfg = builder_config(keras_dpn.DPN1_32(input_shape=(64, 48, 3), resolution="high"))
    >>> cfg["variant"], cfg["arguments"]["resolution"], cfg["arguments"]["input_shape"]
    ('DPN1_32', 'high', [64, 48, 3])
    """
    value = getattr(model, _BUILDER_ATTR, None)
    return None if value is None else json.loads(json.dumps(value))


def check_builder_config(source, arch, arguments, model_arch, model_config, received):
    """Raises when weights trained as ``arch(**arguments)`` do not fit the model.

    Args:
        source: how the weights are named in the message, e.g. ``"'DPN4_64.coco'"``.
        arch, arguments: what the weights were trained with.
        model_arch: the model's variant.
        model_config: the model's architecture arguments (None: unknown, only
            the variant is compared).
        received: the ``weights`` argument, for the message.
    """
    if arch != model_arch:
        raise ValueError(
            f"The weights {source} belong to {arch}, not {model_arch}. Build "
            f"keras_dpn.{arch}(...) instead, or use keras_dpn.hub.presets.from_preset. "
            f"Received: weights={received!r}")
    if model_config is None:
        return
    defaults = builder_defaults(arch)
    expected = _jsonable({**defaults, **{k: v for k, v in arguments.items()
                                         if k in ARCHITECTURE_ARGS}})
    actual = _jsonable({**defaults, **model_config})
    differ = [k for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    if differ:
        trained = ", ".join(f"{k}={expected.get(k)!r}" for k in differ)
        built = ", ".join(f"{k}={actual.get(k)!r}" for k in differ)
        raise ValueError(
            f"The weights {source} were trained with {arch}({trained}) but the model is built "
            f"with {built}: same shapes, other strides or dilations, so they would load and "
            f"predict nonsense. Build keras_dpn.{arch}({trained}, weights=...). "
            f"Received: weights={received!r}")
