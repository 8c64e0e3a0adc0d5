"""The gradients the training loops apply, and the loss they log, do not depend on the replica count.

Keras losses called inside ``strategy.run`` already divide by
``num_replicas_in_sync``; a loop that divides again trains with gradients
1/N too small (and, if it divides the logged loss too, logs a loss N times
too small). The check compares the gradient each loop actually applied with
the gradient of the same loss on the whole batch computed without any
strategy. To read the applied gradient, the Trainer's Adam is replaced by
plain SGD with learning rate 1 (Adam's first step is ``lr * g / |g|``, blind
to a factor on ``g``): the weight change is then exactly minus the applied
gradient. Two logical CPUs make a real 2-replica ``MirroredStrategy``; they
must be configured before TF starts, so the check runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r'''
import json, os, sys, tempfile
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np


class PlainSGD(keras.optimizers.SGD):
    """Stands in for the Trainer's Adam: the update is -lr x the applied gradient."""

    def __init__(self, learning_rate, **kwargs):
        super().__init__(learning_rate=learning_rate)


keras.optimizers.Adam = PlainSGD
from keras_dpn.training import trainer as training
from keras_dpn.training.losses import JointsMSE

rng = np.random.default_rng(0)
images = rng.normal(size=(8, 16, 16, 3)).astype("float32")
heatmaps = rng.uniform(size=(8, 16, 16, 4)).astype("float32")
weights = rng.uniform(0.5, 1.5, size=(8, 4)).astype("float32")

def model_fn():
    # No BatchNormalization: per-replica batch statistics would legitimately
    # differ from whole-batch ones.
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    return keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))

# The reference: the gradient of the loss on the whole batch, no strategy.
model = model_fn()
start = [v.numpy() for v in model.trainable_variables]
with tf.GradientTape() as tape:
    ref_loss = JointsMSE()(heatmaps, model(images), sample_weight=weights)
reference = [g.numpy() for g in tape.gradient(ref_loss, model.trainable_variables)]

class Grab(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.loss = float(logs["loss"])

out = {"reference": {"loss": float(ref_loss), "norm": float(np.sqrt(sum((g ** 2).sum() for g in reference)))}}
runs = (("custom_one", tf.distribute.OneDeviceStrategy("/cpu:0"), "custom"),
        ("custom_two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "custom"),
        ("fit_two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "fit"))
for name, strategy, loop in runs:
    ds = tf.data.Dataset.from_tensor_slices((images, heatmaps, weights)).batch(8)
    grab = Grab()
    trainer = training.Trainer(model_fn, tempfile.mkdtemp(), strategy=strategy, loop=loop,
                               learning_rate=1.0, epochs=1, steps_per_epoch=1,
                               tensorboard=False, verbose=0, monitor="loss", monitor_mode="min")
    trainer.fit(ds, callbacks=[grab])
    applied = [s - v.numpy() for s, v in zip(start, trainer.model.trainable_variables)]
    flat_applied = np.concatenate([a.ravel() for a in applied])
    flat_ref = np.concatenate([r.ravel() for r in reference])
    out[name] = {"replicas": strategy.num_replicas_in_sync, "loss": grab.loss,
                 "optimizer": type(trainer.optimizer).__name__,
                 # Least-squares factor between applied and reference gradient (1 when right,
                 # 1/N for the double division) and what is left after it.
                 "factor": float(flat_applied @ flat_ref / (flat_ref @ flat_ref)),
                 "max_abs_error": float(np.abs(flat_applied - flat_ref).max())}
print("RESULT " + json.dumps(out))
'''


def test_applied_gradients_and_loss_are_independent_of_replica_count():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    ref = result.pop("reference")
    assert ref["norm"] > 1e-3  # a gradient worth comparing
    assert result["custom_one"]["replicas"] == 1
    assert result["custom_two"]["replicas"] == result["fit_two"]["replicas"] == 2
    for name, run in result.items():
        # SGD really was in use, else the weight change is not the gradient.
        assert run["optimizer"] in ("PlainSGD", "LossScaleOptimizer"), (name, run)
        # One step from identical weights on the identical global batch.
        assert run["factor"] == pytest.approx(1.0, abs=1e-4), (name, run)
        assert run["max_abs_error"] <= 1e-5 * max(1.0, ref["norm"]), (name, run)
        assert run["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, run)
    assert np.isfinite(ref["loss"])
