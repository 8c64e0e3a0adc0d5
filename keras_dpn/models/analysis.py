"""Model analysis: multiply-accumulate counts and gradient receptive fields.

:func:`count_macs` counts the multiply-accumulates of every convolution and
dense layer, including those nested inside composite layers (``Bottleneck``,
``DilationPyramidModule``): it runs the model once on a zero batch of one
image and records the input and output shape of each such layer as it is
called. Batch norm, activations, additions and upsampling are not counted (the
convention of the HRNet and DPN papers' GFLOPs, which are MACs).

:func:`receptive_field` measures, by the gradient of one output position
with respect to the input, which input positions reach it.

Example:
>>> import keras
>>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same")])
>>> count_macs(model)  # 8*8 positions x 3*3*3 inputs x 4 filters
6912
"""

import dataclasses
import functools
from typing import Dict, Tuple

import keras
import numpy as np


def _spatial(shape):
    return int(np.prod([int(s) for s in shape[1:-1]]))


def layer_macs(layer, input_shape, output_shape):
    """MACs of one call of a leaf layer for one image (0 for uncounted layers).

    Args:
        layer: a Keras layer.
        input_shape: its input shape, batch first, channels last.
        output_shape: its output shape.
    """
    # Keras 3 keeps these four classes apart (none subclasses Conv2D).
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return _spatial(input_shape) * kh * kw * int(input_shape[-1]) * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1) or 1
        return _spatial(output_shape) * kh * kw * (int(input_shape[-1]) // groups) * layer.filters
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return _spatial(output_shape) * kh * kw * int(input_shape[-1]) * layer.depth_multiplier
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw = layer.kernel_size
        c_in = int(input_shape[-1])
        mid = c_in * layer.depth_multiplier
        return _spatial(output_shape) * (kh * kw * mid + mid * layer.filters)
    if isinstance(layer, keras.layers.Dense):
        positions = int(np.prod([int(s) for s in input_shape[1:-1]] or [1]))
        return positions * int(input_shape[-1]) * layer.units
    return 0


_COUNTED = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv2D, keras.layers.Dense)


def _leaf_layers(model):
    seen = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, _COUNTED):
            seen[id(layer)] = layer
    return list(seen.values())


def _first_tensor(value):
    while isinstance(value, (list, tuple)):
        value = value[0]
    return value


def count_macs(model, input_shape=None, by_layer=False):
    """Multiply-accumulates of one forward pass of one image.

    Every ``Conv2D`` (dilated and strided included), ``Conv2DTranspose``,
    ``DepthwiseConv2D``, ``SeparableConv2D`` and ``Dense`` call is counted, at
    any nesting depth; a layer called twice counts twice.

    Args:
        model: a built Keras model (or layer with a known input shape).
        input_shape: ``(H, W, C)`` to count at; defaults to the model's.
        by_layer: also return a dict ``{layer path: MACs}``.

    Returns:
        The total as an int, or ``(total, per_layer)`` with ``by_layer=True``.

    Example:
    >>> import keras_dpn
    >>> macs = count_macs(keras_dpn.DPN1_32(input_shape=(64, 48, 3)))
    >>> macs > 0
    True
    """
    if input_shape is None:
        input_shape = tuple(model.input_shape[1:])
    if any(s is None for s in input_shape):
        raise ValueError(
            f"count_macs needs a fully defined input shape. Received: input_shape={input_shape!r}")
    paths = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        # Flatten order puts parents first: the first path seen is the full one.
        for sub in layer._flatten_layers(include_self=False, recursive=False):
            paths.setdefault(id(sub), f"{paths.get(id(layer), layer.name)}/{sub.name}")
        paths.setdefault(id(layer), layer.name)

    counts: Dict[str, int] = {}
    patched = []

    def record(layer, original, *args, **kwargs):
        out = original(*args, **kwargs)
        x = _first_tensor(args[0] if args else next(iter(kwargs.values())))
        key = paths.get(id(layer), layer.name)
        counts[key] = counts.get(key, 0) + layer_macs(layer, tuple(x.shape),
                                                      tuple(_first_tensor(out).shape))
        return out

    try:
        for layer in _leaf_layers(model):
            # An instance attribute shadows the class's `call` for this run only.
            patched.append(layer)
            layer.call = functools.partial(record, layer, layer.call)
        model(np.zeros((1,) + tuple(input_shape), "float32"), training=False)
    finally:
        for layer in patched:
            del layer.call
    total = int(sum(counts.values()))
    return (total, counts) if by_layer else total


@dataclasses.dataclass
class ReceptiveField:
    """Which input positions reach one output position.

    Attributes:
        mask: ``(H, W)`` bool, True where the gradient is non-zero.
        gradient: ``(H, W)`` float, |gradient| summed over input channels.
        position: the output ``(row, col)`` measured.
        input_position: the centre ``(row, col)`` of the reached input box.
        extent: ``(rows, cols)``: span from the first to the last reached
            position along the column and the row through ``input_position``.
        count: ``(rows, cols)``: reached positions on those two lines.
        has_holes: True when some position inside the reached bounding box is
            not reached (the gridding of constant dilation).
    """

    mask: np.ndarray
    gradient: np.ndarray
    position: Tuple[int, int]
    input_position: Tuple[int, int]
    extent: Tuple[int, int]
    count: Tuple[int, int]
    has_holes: bool


def _set_positive_weights(model):
    """Conv kernels 1/fan_in, dense 1/fan_in, biases 0, BN the identity."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            for var in layer.weights:
                name = var.path.split("/")[-1]
                value = 1.0 if name in ("gamma", "moving_variance") else 0.0
                var.assign(np.full(var.shape, value, "float32"))
        elif isinstance(layer, _COUNTED):
            for var in layer.weights:
                shape = tuple(var.shape)
                if len(shape) <= 1:
                    var.assign(np.zeros(shape, "float32"))
                else:
                    fan_in = int(np.prod(shape[:-1]))
                    var.assign(np.full(shape, 1.0 / fan_in, "float32"))


def _input_gradient(fn, x):
    """Gradient of the scalar ``fn(x)`` with respect to the numpy input ``x``, as numpy."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return tape.gradient(value, x).numpy()
    if backend == "jax":
        import jax
        # The layer's variables are read as constants: only the input is differentiated.
        return np.asarray(jax.grad(fn)(jax.numpy.asarray(x)))
    if backend == "torch":
        import torch
        leaf = torch.tensor(x, requires_grad=True)
        fn(leaf).backward()
        return leaf.grad.detach().cpu().numpy()
    raise NotImplementedError(
        "receptive_field needs the gradient of the TensorFlow, JAX or PyTorch backend. "
        f"Received: KERAS_BACKEND={backend!r}")


def receptive_field(model_or_layer, input_shape, position=None, positive_weights=True,
                    threshold=0.0):
    """Measures the receptive field of one output position by its gradient.

    The output at ``position`` (summed over channels) is differentiated with
    respect to an all-ones input; input positions with a non-zero gradient
    reach it. With ``positive_weights=True`` (default) every kernel is set to
    ``1/fan_in`` and every BN to the identity for the measurement, so that no
    ReLU is off and no gradient cancels; the original weights are restored
    afterwards.

    Runs on the TensorFlow (``tf.GradientTape``), JAX (``jax.grad``) and
    PyTorch (autograd) backends.

    Args:
        model_or_layer: a Keras model or layer mapping ``(B, H, W, C)`` to
            ``(B, h, w, K)``.
        input_shape: ``(H, W, C)`` of the probe input.
        position: output ``(row, col)``; defaults to the centre.
        positive_weights: see above.
        threshold: |gradient| above which a position counts as reached.

    Returns:
        A :class:`ReceptiveField`.

    Example:
    >>> import keras
    >>> conv = keras.layers.Conv2D(1, 3, dilation_rate=2, padding="same")
    >>> rf = receptive_field(conv, (9, 9, 1))
    >>> rf.extent, rf.count, rf.has_holes
    ((5, 5), (3, 3), True)
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels). "
            f"Received: input_shape={input_shape!r}")
    x = np.ones((1,) + input_shape, np.float32)
    if not model_or_layer.built:
        model_or_layer(x)
    saved = [np.array(keras.ops.convert_to_numpy(w)) for w in model_or_layer.weights]
    try:
        if positive_weights:
            _set_positive_weights(model_or_layer)
        y = _first_tensor(model_or_layer(x, training=False))
        h, w = int(y.shape[1]), int(y.shape[2])
        if position is None:
            position = (h // 2, w // 2)
        r, c = position
        if not (0 <= r < h and 0 <= c < w):
            raise ValueError(
                f"`position` must lie inside the {h}x{w} output. "
                f"Received: position={position!r}")

        def target(inputs):
            out = _first_tensor(model_or_layer(inputs, training=False))
            return keras.ops.sum(keras.ops.cast(out[0, r, c, :], "float32"))

        grad = _input_gradient(target, x)
    finally:
        for var, value in zip(model_or_layer.weights, saved):
            var.assign(value)
    gradient = np.abs(grad[0]).sum(axis=-1)
    mask = gradient > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size:
        # The centre of the reached box: with stride and "same" padding the
        # field is not centred on r * stride.
        ir, ic = (rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2
    else:
        ir, ic = r * (input_shape[0] // h), c * (input_shape[1] // w)
    row_line, col_line = mask[ir, :], mask[:, ic]

    def span(line):
        idx = np.flatnonzero(line)
        return int(idx[-1] - idx[0] + 1) if idx.size else 0

    has_holes = bool(rows.size) and not mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    return ReceptiveField(mask=mask, gradient=gradient, position=(int(r), int(c)),
                          input_position=(int(ir), int(ic)),
                          extent=(span(col_line), span(row_line)),
                          count=(int(col_line.sum()), int(row_line.sum())),
                          has_holes=bool(has_holes))
