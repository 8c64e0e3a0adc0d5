"""The exact rewrites inside Bottleneck: padding-only taps left out, BN folded at inference.

Every expectation comes from an independent reference: a plain
``keras.layers.Conv2D`` / ``keras.ops.conv`` with the same kernel and the
layer's own BatchNormalization run on its output, and a brute-force count of
the taps that reach inside the map.
"""

import os

import keras
import numpy as np
import pytest

from keras_dpn.models.layers import (Bottleneck, DilationPyramidModule, _Conv2D,
                                     reachable_taps)


def x_(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def randomize_bn(layer, seed=1):
    """Moving statistics and affine terms far from the identity, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        if v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.3, 3.0, v.shape))
        elif v.path.endswith(("moving_mean", "beta")):
            v.assign(rng.normal(0.0, 0.5, v.shape))
        elif v.path.endswith("gamma"):
            v.assign(rng.uniform(0.3, 2.0, v.shape))


def brute_force_taps(k, d, size):
    """Taps of one axis that some output position reads inside the map through."""
    centre = (k - 1) // 2
    return [j for j in range(k)
            if any(0 <= y + (j - centre) * d < size for y in range(size))]


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 12, 24, 32])
@pytest.mark.parametrize("d", [1, 2, 3, 4, 7, 8, 16, 23, 24, 25, 32, 33])
def test_reachable_taps_match_a_brute_force_count(k, size, d):
    start, stop, dilation = reachable_taps(k, d, size)
    kept = brute_force_taps(k, d, size)
    assert list(range(start, stop)) == kept
    assert dilation == (d if len(kept) > 1 else 1)


def test_reachable_taps_keep_everything_when_unknown_or_even():
    assert reachable_taps(3, 32, None) == (0, 3, 32)
    assert reachable_taps(4, 32, 8) == (0, 4, 32)


# (H, W, dilation): dilation equal to, one less than and larger than each side,
# both sides or one only (a 1x3 or 3x1 conv is left).
MAP_CASES = [
    (8, 8, 8), (8, 8, 7), (8, 8, 9), (32, 24, 32), (32, 24, 16), (32, 24, 24),
    (32, 24, 23), (32, 24, 25), (6, 16, 6), (6, 16, 5), (16, 6, 7), (5, 4, 1), (1, 1, 2),
]


@pytest.mark.parametrize("h,w,d", MAP_CASES)
@pytest.mark.parametrize("k", [3, 5])
def test_conv_equals_a_plain_dilated_conv(h, w, d, k):
    conv = _Conv2D(6, k, padding="same", dilation_rate=d, use_bias=False)
    plain = keras.layers.Conv2D(6, k, padding="same", dilation_rate=d, use_bias=False)
    x = x_((2, h, w, 5))
    conv.build(x.shape)
    plain.build(x.shape)
    plain.kernel.assign(conv.kernel)
    np.testing.assert_allclose(conv(x), plain(x), rtol=1e-5, atol=1e-5)


def test_kernel_gradient_equals_the_plain_conv():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow backend only")
    x = tf.constant(x_((2, 32, 24, 4)))
    conv = _Conv2D(4, 3, padding="same", dilation_rate=24, use_bias=False)
    conv.build(x.shape)
    grads = []
    for fn in (conv, lambda v: keras.ops.conv(v, conv.kernel, padding="same",
                                              dilation_rate=24)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fn(x) ** 2)
        grads.append(tape.gradient(loss, conv.kernel.value).numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-4)
    # Dilation 24 on a width of 24: the left and right columns of taps read
    # only padding, so their gradient was zero before the rewrite too.
    assert np.abs(grads[1][:, [0, 2]]).max() == 0
    assert np.abs(grads[1][[0, 2], 1]).min() > 0


def plain_bottleneck(block, x, training=False):
    """The bottleneck as separate conv and BN calls, no tap left out."""
    def conv(layer, v):
        return keras.ops.conv(v, layer.kernel, strides=layer.strides, padding="same",
                              dilation_rate=layer.dilation_rate)
    y = keras.ops.relu(block.bn1(conv(block.conv1, x), training=training))
    y = keras.ops.relu(block.bn2(conv(block.conv2, y), training=training))
    y = block.bn3(conv(block.conv3, y), training=training)
    shortcut = x
    if block.shortcut_conv is not None:
        shortcut = block.shortcut_bn(conv(block.shortcut_conv, x), training=training)
    return keras.ops.relu(y + shortcut)


@pytest.mark.parametrize("shape,dilation,strides", [
    ((2, 8, 6, 16), 8, 1), ((2, 8, 6, 16), 7, 1), ((2, 8, 6, 16), 4, 1),
    ((2, 8, 6, 8), 1, 2), ((2, 8, 6, 8), 1, 1),
])
def test_bottleneck_inference_equals_separate_conv_and_bn(shape, dilation, strides):
    block = Bottleneck(4, dilation_rate=dilation, strides=strides)
    x = x_(shape)
    block.build(x.shape)
    randomize_bn(block)
    expected = plain_bottleneck(block, x)
    np.testing.assert_allclose(block(x, training=False), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(block(x), expected, rtol=1e-4, atol=1e-4)


def test_bottleneck_training_uses_batch_statistics_and_frozen_bn_folds():
    block = Bottleneck(4, dilation_rate=8)
    x = x_((4, 8, 6, 16))
    block.build(x.shape)
    randomize_bn(block)
    saved = [v.numpy() for v in block.weights]
    expected = plain_bottleneck(block, x, training=True)
    # The reference updated the moving statistics: start the layer from the same state.
    for v, value in zip(block.weights, saved):
        v.assign(value)
    np.testing.assert_allclose(block(x, training=True), expected, rtol=1e-4, atol=1e-4)
    for v, value in zip(block.weights, saved):
        v.assign(value)
    for bn in (block.bn1, block.bn2, block.bn3):
        bn.trainable = False
    expected = plain_bottleneck(block, x, training=True)
    np.testing.assert_allclose(block(x, training=True), expected, rtol=1e-4, atol=1e-4)


def test_dpm_from_config_at_other_sizes_and_keras_round_trip(tmp_path):
    dpm = DilationPyramidModule(4, num_blocks=4)  # dilations 8, 4, 2, 1
    model = keras.Sequential([keras.Input((8, 6, 16)), dpm])
    randomize_bn(model)
    path = os.path.join(tmp_path, "dpm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = x_((2, 8, 6, 16))
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-5, atol=1e-5)

    # The same config and weights at sizes where other taps reach the map.
    again = DilationPyramidModule.from_config(dpm.get_config())
    again.build((None, 20, 17, 16))
    again.set_weights(dpm.get_weights())
    for shape in [(1, 20, 17, 16), (1, 3, 9, 16), (1, 8, 6, 16)]:
        y = x_(shape, seed=2)
        expected = y
        for block in dpm.blocks:
            expected = plain_bottleneck(block, expected)
        np.testing.assert_allclose(again(y), expected, rtol=1e-4, atol=1e-4)


def test_dynamic_spatial_shape_traced_once_is_correct_at_any_size():
    tf = pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow backend only")
    block = Bottleneck(4, dilation_rate=8)
    block.build((None, None, None, 16))
    randomize_bn(block)
    # Unknown H and W in the trace: every tap is kept, and the result is right at any size.
    fn = tf.function(lambda v: block(v, training=False),
                     input_signature=[tf.TensorSpec((None, None, None, 16), "float32")])
    for shape in [(1, 8, 6, 16), (1, 20, 17, 16)]:
        x = x_(shape)
        np.testing.assert_allclose(fn(x), plain_bottleneck(block, x), rtol=1e-4, atol=1e-4)
