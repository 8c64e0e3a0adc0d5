"""One harness for every registered variant, plus the builders' contracts.

Small inputs keep it fast: DPN variants at 64x48 (stride 8), the HRNet ones at
64x64 (stride 32). Parameter counts do not depend on the input size.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_dpn
from keras_dpn.models import MODELS

# Exact keras `count_params()` (trainable + BN moving statistics), 17 keypoints.
PARAMS = {
    "DPN1_32": 372_817,
    "DPN2_32": 481_873,
    "DPN3_32": 590_929,
    "DPN4_32": 699_985,
    "DPN1_64": 2_018_513,
    "DPN2_64": 2_445_521,
    "DPN3_64": 2_872_529,
    "DPN4_64": 3_299_537,
    "HRNetW32": 28_590_449,
    "DPN2_HRNet": 29_457_489,
}
HRNETS = ("HRNetW32", "DPN2_HRNet")


def small_shape(variant):
    return (64, 64, 3) if variant in HRNETS else (64, 48, 3)


_CACHE = {}


def built(variant):
    """One model per variant for the whole module (HRNet builds take seconds)."""
    if variant not in _CACHE:
        keras.utils.set_random_seed(0)
        _CACHE[variant] = MODELS[variant](input_shape=small_shape(variant))
    return _CACHE[variant]


def images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch,) + shape).astype("float32")


@pytest.fixture
def restore_policy():
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def test_every_registered_variant_is_covered():
    assert set(PARAMS) == set(MODELS)
    for name in MODELS:
        assert getattr(keras_dpn, name) is MODELS[name]


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_variant_harness(variant, tmp_path):
    model = built(variant)
    shape = small_shape(variant)
    assert model.name == variant
    assert model.output_shape == (None, shape[0] // 4, shape[1] // 4, 17)
    assert model.count_params() == PARAMS[variant]
    x = images(shape)
    # Eager calls: predict() would trace a tf.function of every graph (slow).
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert expected.shape == (2, shape[0] // 4, shape[1] // 4, 17)
    assert expected.dtype == np.float32
    assert np.isfinite(expected).all()

    if variant not in HRNETS:
        # get_config / from_config: same graph; with the same weights, same output.
        # (HRNet's round trip is the load_model below: rebuilding it twice is slow.)
        clone = keras.Model.from_config(model.get_config())
        assert [l.name for l in clone.layers] == [l.name for l in model.layers]
        clone.set_weights(model.get_weights())
        np.testing.assert_allclose(clone(x, training=False), expected, rtol=0, atol=1e-6)
        del clone

    # .keras round trip (config through JSON, then weights): identical outputs.
    path = tmp_path / f"{variant}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    # JSON turns tuples into lists: compare the serialized forms.
    assert json.dumps(loaded.get_config(), sort_keys=True) == json.dumps(
        model.get_config(), sort_keys=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)),
                                  expected)


def test_default_model_matches_issue_example():
    model = keras_dpn.DPN4_32()
    assert model.input_shape == (None, 256, 192, 3)
    assert model(np.zeros((1, 256, 192, 3), "float32")).shape == (1, 64, 48, 17)


def test_hrnet_w32_matches_reference_design():
    # Trainable parameters of the reference pose HRNet-W32 (paper: 28.5 M).
    model = built("HRNetW32")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 28_536_113
    for name in ("stem1_conv", "stage1_block4", "transition3_b3_conv", "stage4_m3_fuse_3to0_up",
                 "heatmaps"):
        model.get_layer(name)  # every layer named; raises if missing
    # The last stage-4 module only fuses into the 1/4 branch.
    with pytest.raises(ValueError):
        model.get_layer("stage4_m3_fuse_sum1")


def test_dpn2_hrnet_dpms_run_at_one_eighth():
    model = built("DPN2_HRNet")
    assert model.get_layer("dpm1").output.shape[1:] == (8, 8, 256)
    assert model.get_layer("dpm2").rates == (32, 16, 8, 4, 2, 1)


@pytest.mark.parametrize("variant,features", [
    ("DPN4_32", (8, 6, 128)), ("DPN2_64", (8, 6, 256)),
    ("HRNetW32", (16, 16, 32)),
])
def test_include_top_false(variant, features):
    model = MODELS[variant](input_shape=small_shape(variant), include_top=False)
    assert model.output_shape[1:] == features
    names = [l.name for l in model.layers]
    assert "heatmaps" not in names


def test_high_resolution_keeps_dpms_at_quarter():
    model = keras_dpn.DPN2_64(input_shape=(64, 48, 3), resolution="high")
    assert model.get_layer("dpm2").output.shape[1:] == (16, 12, 256)
    assert "upsample" not in [l.name for l in model.layers]
    assert model.count_params() == PARAMS["DPN2_64"]
    # Stride 4 only: 36x28 is valid for "high" but not for "medium".
    assert keras_dpn.DPN1_32(input_shape=(36, 28, 3), resolution="high").output_shape == (
        None, 9, 7, 17)


def test_input_tensor_and_custom_keypoints():
    tensor = keras.Input((64, 48, 3), name="my_input")
    model = keras_dpn.DPN1_32(input_tensor=tensor, num_keypoints=16, name="mpii_net")
    assert model.name == "mpii_net"
    assert model.inputs[0] is tensor
    assert model.output_shape == (None, 16, 12, 16)


@pytest.mark.parametrize("ctor,kwargs,arg", [
    (keras_dpn.DPN4_32, dict(input_shape=(250, 192, 3)), "input_shape"),
    (keras_dpn.DPN4_32, dict(input_shape=(256, 190, 3)), "input_shape"),
    (keras_dpn.HRNetW32, dict(input_shape=(256, 200, 3)), "input_shape"),
    (keras_dpn.DPN2_HRNet, dict(input_shape=(240, 192, 3)), "input_shape"),
    (keras_dpn.DPN4_32, dict(input_shape=(256, 192)), "input_shape"),
    (keras_dpn.DPN4_32, dict(num_keypoints=0), "num_keypoints"),
    (keras_dpn.HRNetW32, dict(num_keypoints=-3), "num_keypoints"),
    (keras_dpn.DPN2_HRNet, dict(num_keypoints=1.5), "num_keypoints"),
    (keras_dpn.DPN4_32, dict(weights="imagenet"), "weights"),
    (keras_dpn.HRNetW32, dict(weights="imagenet"), "weights"),
    (keras_dpn.DPN4_32, dict(weights="/no/such/file.weights.h5"), "weights"),
    (keras_dpn.DPN4_32, dict(weights=3), "weights"),
    (keras_dpn.DPN4_32, dict(dilation_schedule="spiral"), "dilation_schedule"),
    (keras_dpn.DPN4_32, dict(dilation_schedule=0), "dilation_schedule"),
    (keras_dpn.DPN2_HRNet, dict(dilation_schedule="spiral"), "dilation_schedule"),
    (keras_dpn.DPN4_32, dict(resolution="low"), "resolution"),
])
def test_bad_input_names_the_argument(ctor, kwargs, arg):
    with pytest.raises(ValueError, match=f"{arg}=") as info:
        ctor(**kwargs)
    assert "Received" in str(info.value)


def test_channels_other_than_three_only_without_weights(tmp_path):
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 1))  # fine without weights
    assert model.input_shape == (None, 64, 48, 1)
    path = tmp_path / "w.weights.h5"
    keras_dpn.DPN1_32(input_shape=(64, 48, 3)).save_weights(path)
    for ctor in (keras_dpn.DPN1_32, keras_dpn.HRNetW32):
        with pytest.raises(ValueError, match="input_shape=.*weights="):
            ctor(input_shape=(64, 64, 4), weights=str(path))


def test_coco_weights_not_released():
    with pytest.raises(ValueError, match=r"No release of `DPN4_32\.coco` is registered") as info:
        keras_dpn.DPN4_32(weights="coco")
    message = str(info.value)
    assert "keras_dpn.weights.register(" in message and ".weights.h5" in message
    with pytest.raises(ValueError, match=r"`HRNetW32\.mpii`"):
        keras_dpn.HRNetW32(weights="mpii")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_float32_heatmaps(policy, restore_policy):
    keras.config.set_dtype_policy(policy)
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
    assert model.get_layer("dpm1").compute_dtype == policy.split("_")[1]
    out = model(images((64, 48, 3), batch=1))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert model.output.dtype == "float32"


def test_mixed_precision_hrnet_and_dtype_argument(restore_policy):
    model = keras_dpn.DPN2_HRNet(input_shape=(64, 64, 3), dtype="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # global untouched
    assert model.get_layer("stage4_m3_b0_block4").compute_dtype == "bfloat16"
    out = model(images((64, 64, 3), batch=1))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def _toy_data(n=4):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 64, 48, 3)).astype("float32")
    y = rng.uniform(size=(n, 16, 12, 17)).astype("float32")
    w = np.ones((n, 17), "float32")
    return x, y, w


def joints_mse(y_true, y_pred):
    # Per-joint loss (B, K), so that a (B, K) target_weight applies per joint.
    return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=(1, 2))


def test_fit_on_arrays_and_dataset():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
    # No XLA: compiling would take longer than the few steps run here.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=joints_mse, jit_compile=False)
    x, y, w = _toy_data()
    # Both fits feed (image, heatmaps, target_weight) batches of 4, the training
    # layout, so the traced train step is shared (tracing dominates the time).
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(4).repeat()
    history = model.fit(ds, steps_per_epoch=1, epochs=5, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    history = model.fit(x, y, sample_weight=w, batch_size=4, epochs=5, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_runs_on_another_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    code = textwrap.dedent("""
        import numpy as np, keras, keras_dpn
        assert keras.backend.backend() == "%s"
        for ctor, shape in ((keras_dpn.DPN1_32, (64, 48, 3)), (keras_dpn.DPN2_HRNet, (64, 64, 3))):
            model = ctor(input_shape=shape)
            out = keras.ops.convert_to_numpy(model(np.zeros((1,) + shape, "float32")))
            assert out.shape == (1, shape[0] // 4, shape[1] // 4, 17), out.shape
        print("ok")
    """ % backend)
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout
