"""One harness for every registered variant, plus the builders' contracts.

Small inputs keep it fast: DPN variants at 64x48 (stride 8), the HRNet ones at
64x64 (stride 32). Parameter counts do not depend on the input size.
"""

import json

import keras
import numpy as np
import pytest

import keras_dpn
from keras_dpn.models import MODELS, model_info

HRNETS = tuple(name for name in MODELS if "HRNet" in name)

# Trainable parameters of one paper DPM: six bottlenecks of width w with
# identity shortcuts on 4w channels, 1x1 (4w -> w), 3x3 (w -> w), 1x1 (w -> 4w),
# and BN gamma/beta on w + w + 4w channels.
def dpm_params(width):
    return 6 * (4 * width * width + 9 * width * width + width * 4 * width + 2 * 6 * width)


def paper_params(variant):
    """Trainable parameters the paper gives or implies, and the tolerance on them.

    The paper (Tables II, VI) reports DPN4_32, DPN4_64, HRNet-W32 and
    DPN2_HRNet in millions; README.md states that ours are within 2 % of it.
    The other DPN variants differ from DPN4_{w} by whole DPMs, so their
    expectation is the paper's DPN4_{w} minus those DPMs, with the same
    absolute tolerance (2 % of the paper's DPN4_{w}).
    """
    info = model_info(variant)
    if info.paper_params is not None:
        expected = info.paper_params * 1e6
        return expected, 0.02 * expected
    num_modules, width = int(variant[3]), int(variant.split("_")[1])
    anchor = model_info(f"DPN4_{width}").paper_params * 1e6
    return anchor - (4 - num_modules) * dpm_params(width), 0.02 * anchor


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


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


def test_registry_is_the_one_list_of_variants():
    # The paper's variants (Tables II, IV, VI) at least.
    assert {"DPN1_32", "DPN2_32", "DPN3_32", "DPN4_32", "DPN1_64", "DPN2_64", "DPN3_64",
            "DPN4_64", "HRNetW32", "DPN2_HRNet"} <= set(MODELS)
    for name, constructor in MODELS.items():
        # Declared once, with `def NAME(`: the package namespace reads the registry.
        assert constructor.__name__ == name
        assert getattr(keras_dpn, name) is constructor
        assert getattr(keras_dpn.models, name) is constructor
        assert constructor.__doc__


@pytest.mark.parametrize("name", ["Trainer", "dpn4_32", "DPN", "", "DPN5_32", None])
def test_get_model_unknown_name_lists_the_registered_ones(name):
    with pytest.raises(ValueError) as info:
        keras_dpn.get_model(name)
    message = str(info.value)
    assert "\n" not in message and f"Received: name={name!r}" in message
    assert all(variant in message for variant in MODELS)
    if name == "dpn4_32":
        assert "Did you mean DPN4_32?" in message


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_parameters_match_the_paper(variant):
    expected, tolerance = paper_params(variant)
    assert abs(trainable(built(variant)) - expected) <= tolerance, (
        trainable(built(variant)), expected)


@pytest.mark.parametrize("width", [32, 64])
def test_each_dpm_adds_exactly_one_paper_dpm(width):
    counts = [trainable(built(f"DPN{m}_{width}")) for m in (1, 2, 3, 4)]
    assert np.diff(counts).tolist() == [dpm_params(width)] * 3


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_variant_harness(variant, tmp_path):
    model = built(variant)
    shape = small_shape(variant)
    assert model.name == variant
    assert model.output_shape == (None, shape[0] // 4, shape[1] // 4, 17)
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
    assert model.count_params() == built("DPN2_64").count_params()
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
    (keras_dpn.DPN4_32, dict(head_initializer="tiny"), "head_initializer"),
    (keras_dpn.HRNetW32, dict(head_initializer=None), "head_initializer"),
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


def test_head_starts_as_the_reference_unless_opted_out():
    for variant in ("DPN1_32", "HRNetW32"):
        kernel, bias = built(variant).get_layer("heatmaps").get_weights()
        # N(0, 0.001): the HRNet recipe's init, what model.fit from scratch wants.
        assert 0.0008 < kernel.std() < 0.0012 and abs(kernel.mean()) < 2e-4
        assert not bias.any()
    keras.utils.set_random_seed(0)
    glorot = keras_dpn.DPN1_32(input_shape=(64, 48, 3), head_initializer="glorot_uniform")
    kernel = glorot.get_layer("heatmaps").get_weights()[0]
    limit = np.sqrt(6.0 / (128 + 17))  # fan_in 128 (DPM width 32 x 4), fan_out 17
    assert kernel.std() > 0.1 and np.abs(kernel).max() <= limit
    # The recipes' explicit re-initialization still works on any head.
    from keras_dpn.training import reference_head_init
    reference_head_init(glorot, seed=0)
    assert glorot.get_layer("heatmaps").get_weights()[0].std() < 0.0012


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
