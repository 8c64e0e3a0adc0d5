"""The custom loop's loss and gradients do not depend on the replica count.

Keras losses called inside ``strategy.run`` already divide by
``num_replicas_in_sync``; a loop that divides again trains with gradients
1/N too small and logs a loss N times too small. Two logical CPUs make a real
2-replica ``MirroredStrategy``; they must be configured before TF starts, so
the check runs in a subprocess.
"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import json, os, sys, tempfile
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras_dpn import training

rng = np.random.default_rng(0)
images = rng.normal(size=(8, 16, 16, 3)).astype("float32")
heatmaps = rng.uniform(size=(8, 16, 16, 4)).astype("float32")
weights = np.ones((8, 4), "float32")

def model_fn():
    # No BatchNormalization: per-replica batch statistics would legitimately
    # differ from whole-batch ones.
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    return keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))

class Grab(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.loss = float(logs["loss"])

out = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    ds = tf.data.Dataset.from_tensor_slices((images, heatmaps, weights)).batch(8)
    grab = Grab()
    trainer = training.Trainer(model_fn, tempfile.mkdtemp(), strategy=strategy, loop="custom",
                               epochs=1, steps_per_epoch=1, tensorboard=False, verbose=0,
                               monitor="loss", monitor_mode="min")
    trainer.fit(ds, callbacks=[grab])
    out[name] = {"replicas": strategy.num_replicas_in_sync, "loss": grab.loss}
print("RESULT " + json.dumps(out))
'''


def test_custom_loop_loss_is_independent_of_replica_count():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=240, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["two"]["replicas"] == 2 and result["one"]["replicas"] == 1
    # One step from identical weights on the identical global batch.
    assert result["two"]["loss"] == pytest.approx(result["one"]["loss"], rel=1e-5)
