"""Dtype policies of the built models, through the registry: the model's own
policy (what `compile` reads to add loss scaling), every layer's, variable and
output dtypes; the policy through `from_config` and `.keras`; loss scaling
under `fit` on TensorFlow and JAX (docs/models.md).

Kept apart from tests/test_models.py so that the two files run side by side
(pytest-xdist hands out whole files). Small inputs as there.
"""

import copy
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


def small_shape(variant):
    return (64, 64, 3) if "HRNet" in variant else (64, 48, 3)


def images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch,) + shape).astype("float32")


POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16")


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("variant", sorted(MODELS))
def test_dtype_policy_reaches_model_layers_variables_and_outputs(variant, policy):
    shape = small_shape(variant)
    model = MODELS[variant](input_shape=shape, dtype=policy)
    expected = keras.dtype_policies.get(policy)
    assert keras.config.dtype_policy().name == "float32"  # the global one untouched
    # The model's own policy is what `compile` reads to add loss scaling.
    assert model.dtype_policy.name == policy
    layers = [l for l in model._flatten_layers(include_self=False, recursive=True)
              if not isinstance(l, keras.layers.InputLayer)]
    assert len(layers) > len(model.layers)  # the blocks' own sublayers too
    for layer in layers:
        assert layer.dtype_policy.name == ("float32" if layer.name == "heatmaps_fp32"
                                           else policy), layer.name
    assert {v.dtype for v in model.weights} == {expected.variable_dtype}
    for layer in model.layers[1:]:
        assert layer.output.dtype == ("float32" if layer.name == "heatmaps_fp32"
                                      else expected.compute_dtype), layer.name
    out = model(images(shape, batch=1), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"  # as documented
    model.compile(optimizer="adam", loss="mse")
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")


@pytest.mark.parametrize("variant", ["DPN1_32", "HRNetW32"])
def test_dtype_policy_without_top(variant, tmp_path):
    shape = small_shape(variant)
    model = MODELS[variant](input_shape=shape, include_top=False, dtype="mixed_float16")
    assert model.dtype_policy.name == "mixed_float16"
    assert model.output.dtype == "float16"  # the features, in the compute dtype
    if variant == "DPN1_32":
        # With weights: the full model is loaded, then cut after the DPMs.
        path = tmp_path / "full.weights.h5"
        MODELS[variant](input_shape=shape).save_weights(path)
        cut = MODELS[variant](input_shape=shape, include_top=False, weights=str(path),
                              dtype="mixed_float16")
        assert cut.dtype_policy.name == "mixed_float16"
        assert {v.dtype for v in cut.weights} == {"float32"}


def test_policy_survives_from_config_and_keras_file(tmp_path):
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 3), dtype="mixed_float16")
    config = model.get_config()
    clone = type(model).from_config(copy.deepcopy(config))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for other in (clone, loaded):
        assert other.dtype_policy.name == "mixed_float16"
        assert other.get_layer("dpm1").compute_dtype == "float16"
        other.compile(optimizer="adam", loss="mse")
        assert isinstance(other.optimizer, keras.optimizers.LossScaleOptimizer)
    assert clone.get_config() == config


def test_fit_under_mixed_float16_scales_the_loss():
    keras.utils.set_random_seed(0)
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 3), dtype="mixed_float16")
    # Eager: tracing the float16 step takes longer than the two steps run here.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras_dpn.training.losses.JointsMSE(),
                  run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 64, 48, 3)).astype("float32")
    y = rng.uniform(size=(4, 16, 12, 17)).astype("float32")
    w = np.ones((4, 17), "float32")
    history = model.fit(x, y, sample_weight=w, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert int(model.optimizer.iterations) == 2
    assert {v.dtype for v in model.trainable_weights} == {"float32"}


def test_mixed_float16_loss_scaling_on_jax():
    pytest.importorskip("jax")
    # Keras picks its backend at import: JAX needs its own process.
    code = textwrap.dedent("""
        import copy, json
        import keras
        import numpy as np
        import keras_dpn
        model = keras_dpn.DPN4_32(input_shape=(64, 48, 3), dtype="mixed_float16")
        model.compile(optimizer="adam", loss="mse")
        small = keras_dpn.DPN1_32(input_shape=(64, 48, 3), dtype="mixed_float16")
        clone = type(small).from_config(copy.deepcopy(small.get_config()))
        small.compile(optimizer="adam", loss="mse")
        rng = np.random.default_rng(0)
        history = small.fit(rng.normal(size=(2, 64, 48, 3)).astype("float32"),
                            rng.uniform(size=(2, 16, 12, 17)).astype("float32"),
                            batch_size=2, epochs=1, verbose=0)
        print(json.dumps({"backend": keras.backend.backend(),
                          "policy": model.dtype_policy.name,
                          "optimizer": type(model.optimizer).__name__,
                          "clone_policy": clone.dtype_policy.name,
                          "fit_optimizer": type(small.optimizer).__name__,
                          "loss": history.history["loss"][0],
                          "steps": int(small.optimizer.iterations)}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, KERAS_BACKEND="jax"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert np.isfinite(result.pop("loss"))
    assert result == {"backend": "jax", "policy": "mixed_float16",
                      "optimizer": "LossScaleOptimizer", "clone_policy": "mixed_float16",
                      "fit_optimizer": "LossScaleOptimizer", "steps": 1}
