"""MAC counting against hand-computed numbers; gradient receptive fields."""

import keras
import numpy as np
import pytest

from keras_dpn.models.analysis import count_macs, layer_macs, receptive_field
from keras_dpn.models.layers import Bottleneck, DilationPyramidModule


def seq(input_shape, *layers):
    return keras.Sequential([keras.Input(input_shape), *layers])


@pytest.mark.parametrize("layer,input_shape,expected", [
    # 8*8 outputs x 3*3*3 inputs x 4 filters
    (keras.layers.Conv2D(4, 3, padding="same"), (8, 8, 3), 64 * 27 * 4),
    # dilation changes the field, not the work
    (keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2), (8, 8, 3), 64 * 27 * 4),
    # stride 2: 4x4 outputs
    (keras.layers.Conv2D(4, 3, strides=2, padding="same"), (8, 8, 3), 16 * 27 * 4),
    # valid padding: 6x6 outputs
    (keras.layers.Conv2D(2, 3, padding="valid"), (8, 8, 3), 36 * 27 * 2),
    # grouped: each filter sees 4 / 2 channels
    (keras.layers.Conv2D(6, 1, groups=2), (5, 5, 4), 25 * 2 * 6),
    (keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (8, 8, 3),
     64 * 9 * 3 * 2),
    (keras.layers.SeparableConv2D(5, 3, padding="same"), (4, 4, 3), 16 * (9 * 3 + 3 * 5)),
    (keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same"), (4, 4, 3), 16 * 9 * 3 * 2),
    (keras.layers.Dense(5), (10,), 50),
    (keras.layers.Dense(5), (4, 10), 4 * 10 * 5),
])
def test_leaf_layers(layer, input_shape, expected):
    assert count_macs(seq(input_shape, layer)) == expected


def test_uncounted_layers_are_zero():
    model = seq((8, 8, 4), keras.layers.BatchNormalization(), keras.layers.ReLU(),
                keras.layers.UpSampling2D(2, interpolation="bilinear"),
                keras.layers.MaxPooling2D())
    assert count_macs(model) == 0
    assert layer_macs(keras.layers.ReLU(), (1, 4), (1, 4)) == 0


def test_nested_bottleneck():
    # Identity block on 8x8x16, width 4: 1x1 16->4, 3x3 4->4, 1x1 4->16.
    assert count_macs(seq((8, 8, 16), Bottleneck(4))) == 64 * (16 * 4 + 9 * 4 * 4 + 4 * 16)
    # Projection + stride 2 on 8x8x8: conv1 at 8x8, conv2/conv3/shortcut at 4x4.
    expected = 64 * 8 * 4 + 16 * 9 * 4 * 4 + 16 * 4 * 16 + 16 * 8 * 16
    total, per_layer = count_macs(seq((8, 8, 8), Bottleneck(4, strides=2, name="b")),
                                  by_layer=True)
    assert total == expected == 7424
    assert per_layer["b/shortcut_conv"] == 16 * 8 * 16
    assert per_layer["b/conv2"] == 16 * 9 * 4 * 4


def test_nested_dpm_and_depth_two_paths():
    # Three identity blocks of width 2 on 8x8x8: 64 * (8*2 + 9*2*2 + 2*8) each.
    dpm = DilationPyramidModule(2, num_blocks=3, name="dpm")
    total, per_layer = count_macs(seq((8, 8, 8), dpm), by_layer=True)
    assert total == 3 * 64 * 68 == 13056
    assert per_layer["dpm/block1_d4/conv2"] == 64 * 9 * 2 * 2
    assert len(per_layer) == 9


def test_shared_layer_counts_every_call():
    conv = keras.layers.Conv2D(3, 1, name="shared")
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, conv(conv(inputs)))
    assert count_macs(model) == 2 * 16 * 3 * 3


def test_counting_leaves_the_model_untouched():
    model = seq((8, 8, 16), Bottleneck(4))
    x = np.ones((1, 8, 8, 16), "float32")
    before = keras.ops.convert_to_numpy(model(x))
    count_macs(model)
    assert "call" not in vars(model.layers[0].conv1)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), before)


def test_count_at_other_input_shape_and_bad_shape():
    model = seq((None, None, 3), keras.layers.Conv2D(2, 1))
    assert count_macs(model, input_shape=(4, 5, 3)) == 20 * 3 * 2
    with pytest.raises(ValueError, match="input_shape="):
        count_macs(model)


def test_dpn4_32_matches_the_hand_count():
    import keras_dpn

    # Hand count at 256x192 (paper Table I), output positions x k*k*cin*cout of
    # every convolution; it rounds to the 1.1 GMACs of Table II.
    stem = 128 * 96 * 7 * 7 * 3 * 64
    at_64x48, at_32x24 = 64 * 48, 32 * 24
    conv1 = at_64x48 * ((64 * 64 + 9 * 64 * 64 + 64 * 256 + 64 * 256)  # + projection
                        + 2 * (256 * 64 + 9 * 64 * 64 + 64 * 256))
    conv2_0 = at_32x24 * 256 * 128  # 1x1, stride 2
    dpms = 4 * 6 * at_32x24 * (128 * 32 + 9 * 32 * 32 + 32 * 128)
    head = at_64x48 * 128 * 17  # after the x2 upsampling
    expected = stem + conv1 + conv2_0 + dpms + head
    assert expected == 1_122_631_680 and round(expected / 1e9, 1) == 1.1
    assert count_macs(keras_dpn.DPN4_32()) == expected


# Receptive fields. A DPM of width 2 (8 channels) measures the same field as a
# wide one; 144x144 holds the 127-wide field around the centre.
DPM_INPUT = (144, 144, 8)


def test_pyramid_dpm_reaches_127_without_holes():
    rf = receptive_field(DilationPyramidModule(2, num_blocks=6, kernel_size=3), DPM_INPUT)
    assert rf.extent == (127, 127) == rf.count
    assert not rf.has_holes
    assert rf.mask.sum() == 127 * 127  # dense square: (k-1)(2**N-1)+1 per axis


def test_constant_dilation_two_leaves_holes():
    rf = receptive_field(DilationPyramidModule(2, num_blocks=6, dilation_schedule=2),
                         DPM_INPUT)
    assert rf.extent == (25, 25)  # (k-1) * 2 * 6 + 1
    assert rf.count == (13, 13)   # only even offsets: gridding
    assert rf.has_holes


def test_reversed_schedule_reaches_the_same_extent():
    rf = receptive_field(DilationPyramidModule(2, num_blocks=6, dilation_schedule="reversed"),
                         DPM_INPUT)
    assert rf.extent == (127, 127)
    assert not rf.has_holes


def test_normal_convolution_and_kernel_size():
    rf = receptive_field(DilationPyramidModule(2, num_blocks=6, dilation_schedule=1), (32, 32, 8))
    assert rf.extent == (13, 13) and not rf.has_holes
    rf = receptive_field(DilationPyramidModule(2, num_blocks=3, kernel_size=5), (48, 48, 8))
    assert rf.extent == (4 * 7 + 1,) * 2 and not rf.has_holes


def test_receptive_field_restores_weights_and_handles_stride():
    model = seq((32, 32, 1), keras.layers.Conv2D(1, 3, strides=2, padding="same"),
                keras.layers.Conv2D(1, 3, strides=2, padding="same"))
    before = [np.array(w) for w in model.weights]
    rf = receptive_field(model, (32, 32, 1), position=(4, 4))
    assert rf.extent == (7, 7) and not rf.has_holes  # 1 + 2*(1 + 2)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(np.array(w), b)
    with pytest.raises(ValueError, match="position="):
        receptive_field(model, (32, 32, 1), position=(8, 0))
