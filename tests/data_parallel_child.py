"""A few training steps of a tiny DPN under ``get_strategy("mirrored")`` on JAX, for
tests/test_data_parallel.py (run twice: with one and with two host devices)::

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
        python tests/data_parallel_child.py OUT_DIR

Writes ``OUT_DIR/result.json`` (devices, replicas, per-epoch losses) and
``OUT_DIR/weights.npz`` (every weight after training, in ``model.weights`` order).
"""

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 4
STEPS = 3


def main(out_dir):
    import keras

    import keras_dpn
    from keras_dpn.training import trainer as training
    from keras_dpn.training.losses import JointsMSE
    assert keras.backend.backend() == "jax", keras.backend.backend()
    keras.utils.set_random_seed(0)
    strategy = training.get_strategy("mirrored")
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    x = rng.normal(size=(n, 64, 48, 3)).astype("float32")
    y = rng.uniform(size=(n, 16, 12, 17)).astype("float32")
    w = rng.uniform(0.5, 1.5, size=(n, 17)).astype("float32")
    with strategy.scope():
        model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=JointsMSE())
    # One step per "epoch": Keras logs the loss of every step.
    history = model.fit(x, y, sample_weight=w, batch_size=GLOBAL_BATCH, epochs=STEPS,
                        steps_per_epoch=1, shuffle=False, verbose=0)
    layout = None
    if strategy.distribution is not None:
        layout = str(strategy.distribution.device_mesh.shape)
    np.savez(os.path.join(out_dir, "weights.npz"),
             *[keras.ops.convert_to_numpy(v) for v in model.weights])
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump({"devices": len(keras.distribution.list_devices()),
                   "replicas": strategy.num_replicas_in_sync, "mesh": layout,
                   "loss": [float(v) for v in history.history["loss"]]}, f)


if __name__ == "__main__":
    main(sys.argv[1])
