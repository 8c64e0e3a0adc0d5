"""Child process of tests/test_run_folder.py (a fresh TensorFlow for each use).

``python run_folder_child.py hold OUTPUT`` trains a tiny DPN into OUTPUT and
blocks inside the first epoch until the file OUTPUT.release appears (it
writes OUTPUT.started once it holds the run folder's lock).

``python run_folder_child.py full OUTPUT`` trains a tiny DPN (with a fake
``val_AP``, so best weights are written too) into OUTPUT, a folder on a full
file system, and prints the error as the commands do (exit status 2).

``python run_folder_child.py resume ROOT`` runs, with ``--deterministic
--seed 1`` as the recipe does (tf.data pipeline with the reference
augmentation, shuffling, model.fit): an uninterrupted 3-epoch run, a run
stopped in epoch 2 (after the checkpoint of epoch 1) and its resume to 3
epochs; writes ROOT/result.npz with both runs' history losses and final weights.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_dpn  # noqa: E402
from keras_dpn import data  # noqa: E402
from keras_dpn.training.trainer import Trainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "sample_data", "coco")
STEPS = 3


def _model():
    return keras_dpn.get_model("DPN1_32", input_shape=(64, 48, 3))


def _shards(root, num_images=4):
    """Shards of the first ``num_images`` sample images that hold labelled people."""
    with open(os.path.join(SAMPLE, "annotations", "person_keypoints_sample.json")) as f:
        ann = json.load(f)
    labelled = {a["image_id"] for a in ann["annotations"] if a.get("num_keypoints", 0) > 0}
    images = [im for im in ann["images"] if im["id"] in labelled][:num_images]
    ids = {im["id"] for im in images}
    ann = dict(ann, images=images, annotations=[a for a in ann["annotations"]
                                                 if a["image_id"] in ids])
    path = os.path.join(root, "subset.json")
    with open(path, "w") as f:
        json.dump(ann, f)
    prefix = os.path.join(root, "shards", "sub")
    data.build_coco_shards(path, os.path.join(SAMPLE, "images"), prefix, 1, progress=False,
                           verbose=False)
    return prefix + "-*.tfrecord"


def _dataset(pattern):
    # As the recipe: built before the Trainer seeds the process (so reset here).
    tf.random.set_seed(1)
    return data.build_dataset(pattern, training=True, batch_size=2, input_size=(64, 48),
                              heatmap_size=(16, 12), repeat=True, seed=1, deterministic=True,
                              verbose=False)


def _trainer(out, epochs):
    return Trainer(_model, output_dir=out, strategy="default", epochs=epochs,
                   steps_per_epoch=STEPS, verbose=0, seed=1, deterministic=True,
                   tensorboard=False)


class _StopIn(keras.callbacks.Callback):
    """Raises in the first batch of epoch ``epoch`` (0-based): a kill after its checkpoint."""

    def __init__(self, epoch):
        super().__init__()
        self.target, self.epoch = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.target:
            raise KeyboardInterrupt("stopped")


class _Hold(keras.callbacks.Callback):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def on_train_batch_end(self, batch, logs=None):
        open(self.out + ".started", "w").close()
        deadline = time.time() + 300
        while not os.path.exists(self.out + ".release") and time.time() < deadline:
            time.sleep(0.1)
        raise SystemExit(0)


def _losses(out):
    import csv
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def main(mode, path):
    if mode == "hold":
        x = np.zeros((4, 64, 48, 3), "float32")
        y = np.zeros((4, 16, 12, 17), "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones((4, 17), "float32"))).batch(2)
        t = Trainer(_model, output_dir=path, strategy="default", epochs=1, steps_per_epoch=2,
                    verbose=0, tensorboard=False)
        t.fit(ds, callbacks=[_Hold(path)])
        return
    if mode == "full":
        from keras_dpn.training.trainer import RunFolderWriteError

        class FakeAP(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs["val_AP"] = 0.1 * (epoch + 1)

        x = np.zeros((4, 64, 48, 3), "float32")
        y = np.zeros((4, 16, 12, 17), "float32")
        ds = tf.data.Dataset.from_tensor_slices((x, y, np.ones((4, 17), "float32"))).batch(2)
        t = Trainer(_model, output_dir=path, strategy="default", epochs=3, steps_per_epoch=2,
                    verbose=0)
        try:
            t.fit(ds, callbacks=[FakeAP()])
        except RunFolderWriteError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    pattern = _shards(path)
    straight = os.path.join(path, "straight")
    straight_run = _trainer(straight, 3)
    straight_run.fit(_dataset(pattern))
    stopped = os.path.join(path, "stopped")
    try:
        _trainer(stopped, 3).fit(_dataset(pattern), callbacks=[_StopIn(1)])
    except KeyboardInterrupt:
        pass
    assert len(_losses(stopped)) == 1, _losses(stopped)
    resumed = _trainer(stopped, 3)
    resumed.fit(_dataset(pattern), resume=True)
    result = {"straight_loss": _losses(straight), "resumed_loss": _losses(stopped)}
    for name, t in (("straight", straight_run), ("resumed", resumed)):
        for i, w in enumerate(t.model.weights + t.optimizer.variables):
            result[f"{name}/{i}"] = keras.ops.convert_to_numpy(w)
    np.savez(os.path.join(path, "result.npz"), **result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
