"""Bottleneck, BasicBlock, DilationPyramidModule and dilation_rates."""

import keras
import numpy as np
import pytest

from keras_dpn.models.layers import (BasicBlock, Bottleneck, DilationPyramidModule,
                              dilation_rates)


def x_(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("n,schedule,expected", [
    (6, "pyramid", (32, 16, 8, 4, 2, 1)),
    (6, "reversed", (1, 2, 4, 8, 16, 32)),
    (3, "pyramid", (4, 2, 1)),
    (4, 2, (2, 2, 2, 2)),
    (2, 1, (1, 1)),
    (1, "pyramid", (1,)),
])
def test_dilation_rates(n, schedule, expected):
    assert dilation_rates(n, schedule) == expected


@pytest.mark.parametrize("n,schedule,arg", [
    (6, "spiral", "dilation_schedule"), (6, 0, "dilation_schedule"),
    (6, True, "dilation_schedule"), (6, 2.0, "dilation_schedule"),
    (0, "pyramid", "num_blocks"), (2.5, "pyramid", "num_blocks"),
])
def test_dilation_rates_bad_input(n, schedule, arg):
    with pytest.raises(ValueError, match=f"Received: {arg}="):
        dilation_rates(n, schedule)


def test_bottleneck_identity_and_projection():
    block = Bottleneck(4, name="b")
    y = block(x_((1, 8, 6, 16)))
    assert y.shape == (1, 8, 6, 16)
    assert block.shortcut_conv is None  # identity shortcut: no extra weights
    assert block.count_params() == (16 * 4 + 9 * 4 * 4 + 4 * 16) + 4 * (4 + 4 + 16)

    block = Bottleneck(4, strides=2, name="down")
    y = block(x_((1, 8, 6, 8)))
    assert y.shape == (1, 4, 3, 16)
    assert block.shortcut_conv.strides == (2, 2)
    assert np.all(keras.ops.convert_to_numpy(y) >= 0)  # ends in a ReLU


def test_bottleneck_rejects_stride_with_dilation():
    with pytest.raises(ValueError, match="strides=2, dilation_rate=2"):
        Bottleneck(4, strides=2, dilation_rate=2)


def test_basic_block():
    block = BasicBlock(8)
    assert block(x_((2, 6, 4, 8))).shape == (2, 6, 4, 8)
    assert block.shortcut_conv is None
    assert block.count_params() == 2 * 9 * 8 * 8 + 2 * 4 * 8
    down = BasicBlock(16, strides=2)
    assert down(x_((1, 6, 4, 8))).shape == (1, 3, 2, 16)
    assert down.shortcut_conv is not None


@pytest.mark.parametrize("schedule", ["pyramid", "reversed", 2, 1])
def test_dpm_shapes_and_rates(schedule):
    dpm = DilationPyramidModule(4, dilation_schedule=schedule, name="dpm")
    assert dpm(x_((1, 16, 12, 16))).shape == (1, 16, 12, 16)
    rates = dilation_rates(6, schedule)
    assert [b.dilation_rate for b in dpm.blocks] == list(rates)
    assert [b.name for b in dpm.blocks][0] == f"block1_d{rates[0]}"
    # Width 4, six identity blocks: every block has the same parameters.
    per_block = 16 * 4 + 9 * 4 * 4 + 4 * 16 + 4 * (4 + 4 + 16)
    assert dpm.count_params() == 6 * per_block


def test_dpm_projects_mismatching_input_in_first_block_only():
    dpm = DilationPyramidModule(4, num_blocks=3)
    assert dpm(x_((1, 8, 8, 32))).shape == (1, 8, 8, 16)
    assert dpm.blocks[0].shortcut_conv is not None
    assert all(b.shortcut_conv is None for b in dpm.blocks[1:])


@pytest.mark.parametrize("kwargs,arg", [
    (dict(filters=0), "filters"), (dict(filters=4, kernel_size=4), "kernel_size"),
    (dict(filters=4, dilation_schedule="x"), "dilation_schedule"),
    (dict(filters=4, num_blocks=0), "num_blocks"),
])
def test_dpm_bad_input(kwargs, arg):
    with pytest.raises(ValueError, match=f"Received: {arg}="):
        DilationPyramidModule(**kwargs)


@pytest.mark.parametrize("layer,shape", [
    (Bottleneck(4, strides=2, name="b"), (1, 8, 6, 8)),
    (BasicBlock(8, name="bb"), (1, 6, 4, 8)),
    (DilationPyramidModule(2, num_blocks=3, dilation_schedule="reversed", kernel_size=5,
                           name="dpm"), (1, 8, 8, 8)),
])
def test_layer_config_and_keras_round_trip(layer, shape, tmp_path):
    x = x_(shape)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    expected = keras.ops.convert_to_numpy(model(x))
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    path = tmp_path / "layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.layers[0]) is type(layer)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)), expected)


def test_dpm_mixed_precision_dtype():
    dpm = DilationPyramidModule(2, num_blocks=2, dtype="mixed_float16")
    y = dpm(x_((1, 8, 8, 8)))
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert dpm.blocks[0].conv1.variable_dtype == "float32"


def test_dpm_blocks_are_in_the_tensorflow_object_graph(tmp_path):
    import tensorflow as tf

    from keras_dpn.hub import weights as weights_lib
    model = keras.Sequential([keras.Input((8, 8, 16)),
                              DilationPyramidModule(4, num_blocks=3, name="dpm")])
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
    # Every variable, BN moving statistics of the blocks included.
    assert len(saved) == len(model.weights) == 3 * (3 + 3 * 4)
    # Keras' own layout is the one of earlier releases (blocks under `blocks/`),
    # so .weights.h5 / .keras files written before still load.
    layout = weights_lib.model_layout(model)
    assert len(layout) == len(model.weights)
    assert all("/blocks/bottleneck" in key for key in layout), sorted(layout)[:3]


@pytest.mark.parametrize("make,shape", [
    (lambda: Bottleneck(4, strides=2), (1, 8, 6, 8)),
    (lambda: BasicBlock(8, strides=2), (1, 6, 4, 4)),
    (lambda: DilationPyramidModule(2, num_blocks=3), (1, 8, 8, 8)),
])
def test_layers_stay_channels_last_under_global_channels_first(make, shape):
    x = x_(shape)
    reference = make()
    expected = keras.ops.convert_to_numpy(reference(x))
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        layer = make()
        out = layer(x)
        assert out.shape == expected.shape
        assert [v.shape for v in layer.weights] == [v.shape for v in reference.weights]
        for sublayer in layer._flatten_layers(include_self=False, recursive=True):
            assert getattr(sublayer, "data_format", "channels_last") == "channels_last"
            assert getattr(sublayer, "axis", -1) == -1  # BN: the channels axis
        layer.set_weights(reference.get_weights())
        out = keras.ops.convert_to_numpy(layer(x))
    finally:
        keras.config.set_image_data_format(previous)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
