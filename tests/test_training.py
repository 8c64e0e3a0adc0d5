"""keras_dpn.training.trainer: schedule, strategies, checkpoint/resume, NaN guard, best model.

A tiny DPN (one DPM, 32x32 input, 3 joints) on synthetic data keeps each
training run to a few seconds on two CPU cores.
"""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dpn
from fault_helpers import snapshot
from keras_dpn.training import trainer as training
from keras_dpn.training.checkpoints import ArchitectureMismatchError
from keras_dpn.training.schedules import EpochPiecewiseSchedule
from keras_dpn.training.trainer import Trainer, TrainingDivergedError

STEPS = 2


def _dataset(n=8, batch=4, k=3, size=32):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, size, size, 3)).astype("float32")
    heatmaps = rng.uniform(size=(n, size // 4, size // 4, k)).astype("float32")
    weights = np.ones((n, k), "float32")
    return tf.data.Dataset.from_tensor_slices((images, heatmaps, weights)).batch(batch)


def _model(num_modules=1, width=32):
    return keras_dpn.DPN(num_modules=num_modules, width=width, num_keypoints=3,
                         input_shape=(32, 32, 3))


def _trainer(out, epochs=2, loop="fit", model_fn=_model, **kwargs):
    kwargs.setdefault("lr_boundaries", (1,))
    return Trainer(model_fn, output_dir=out, strategy="default", epochs=epochs,
                   steps_per_epoch=STEPS, loop=loop, verbose=0, seed=3, **kwargs)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _history(out):
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))




class _Raise(keras.callbacks.Callback):
    """Simulates a kill: raises in the middle of epoch ``epoch``."""

    def __init__(self, epoch):
        super().__init__()
        self.target = epoch
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.target and batch == 0:
            raise KeyboardInterrupt("simulated kill")


def test_schedule_is_a_function_of_the_step():
    s = EpochPiecewiseSchedule(1e-3, steps_per_epoch=5, boundaries=(90, 120))
    lrs = [float(s(e * 5)) for e in (0, 89, 90, 119, 120, 139)]
    np.testing.assert_allclose(lrs, [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)
    again = EpochPiecewiseSchedule.from_config(s.get_config())
    assert float(again(90 * 5 - 1)) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EpochPiecewiseSchedule(1e-3, steps_per_epoch=0)
    with pytest.raises(ValueError, match="boundaries"):
        EpochPiecewiseSchedule(1e-3, 5, boundaries=(120, 90))


def test_strategy_factory_and_argument_errors(tmp_path, monkeypatch):
    assert training.get_strategy("default") is tf.distribute.get_strategy()
    mirrored = training.get_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert training.is_chief(mirrored)
    with pytest.raises(ValueError, match="strategy='horovod'"):
        training.get_strategy("horovod")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        training.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(ValueError, match="'cluster' and 'task'"):
        training.get_strategy("multi_worker")
    with pytest.raises(ValueError, match="loop='fast'"):
        Trainer(_model, output_dir=tmp_path, loop="fast")
    with pytest.raises(ValueError, match="epochs=0"):
        Trainer(_model, output_dir=tmp_path, epochs=0)
    with pytest.raises(ValueError, match="deterministic=True"):
        Trainer(_model, output_dir=tmp_path, deterministic=True)
    with pytest.raises(ValueError, match="mixed_precision='fp8'"):
        Trainer(_model, output_dir=tmp_path, mixed_precision="fp8")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Trainer(_model, output_dir=tmp_path, strategy="default", verbose=0).fit(
            _dataset().repeat())


# The custom loop's resume also runs in the default suite, in test_multiworker.py.
@pytest.mark.parametrize("loop", ["fit", pytest.param("custom", marks=pytest.mark.slow)])
def test_kill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, loop):
    straight = _trainer(str(tmp_path / "straight"), epochs=3, loop=loop)
    straight.fit(_dataset())

    out = str(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        _trainer(out, epochs=3, loop=loop).fit(_dataset(), callbacks=[_Raise(epoch=2)])
    state = training.read_state(out)
    assert state["epoch"] == 2 and state["step"] == 2 * STEPS
    assert [r["epoch"] for r in _history(out)] == ["1", "2"]  # 1-based, as best.json

    resumed = _trainer(out, epochs=3, loop=loop)
    history = resumed.fit(_dataset(), resume=True)
    assert history["epoch"] == [2]  # no epoch lost, none run twice
    assert int(resumed.optimizer.iterations.numpy()) == 3 * STEPS
    rows = _history(out)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    # Same schedule: 1e-3 in epoch 0, x0.1 from epoch 1 on, also after resuming.
    np.testing.assert_allclose([float(r["lr"]) for r in rows], [1e-3, 1e-4, 1e-4], rtol=1e-6)
    # Every weight, BN moving statistics of layers nested in lists included.
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    assert training.read_state(out)["epoch"] == 3
    assert os.listdir(os.path.join(out, "logs", "train"))

    # A finished run resumed again has nothing left to do.
    assert _trainer(out, epochs=3, loop=loop).fit(_dataset(), resume=True) == {"epoch": []}


class _PoisonLoss(keras.losses.Loss):
    """Mean squared error that turns NaN once ``poisoned`` is set."""

    def __init__(self):
        super().__init__(name="poison")
        self.poisoned = tf.Variable(0.0, trainable=False)

    def call(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_pred - y_true), axis=(1, 2, 3))

    def __call__(self, y_true, y_pred, sample_weight=None):
        return super().__call__(y_true, y_pred) / (1.0 - self.poisoned)


class _PoisonAt(keras.callbacks.Callback):
    def __init__(self, loss, epoch):
        super().__init__()
        self.loss, self.epoch = loss, epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.loss.poisoned.assign(1.0)  # loss / 0 -> inf, gradients NaN


# Both loops in the default run: model.fit is the loop the recipes and `keras-dpn train` use.
@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, loop):
    out = str(tmp_path)
    loss = _PoisonLoss()
    trainer = _trainer(out, epochs=4, loop=loop, loss=loss)
    with pytest.raises(TrainingDivergedError, match=r"epoch 3.*ckpt-2 is untouched"):
        trainer.fit(_dataset(), callbacks=[_PoisonAt(loss, epoch=2)])
    state = training.read_state(out)
    assert state["epoch"] == 2
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-2")
    # The model holds the good weights again, and so does the checkpoint.
    assert all(np.isfinite(w).all() for w in _weights(trainer.model))
    reader = tf.train.load_checkpoint(os.path.join(out, "checkpoints", "ckpt-2"))
    # Model weights and optimizer state (trainable weights sit under the optimizer's path).
    for name in reader.get_variable_to_shape_map():
        if name.startswith(("model/", "optimizer/")) and name.endswith("VARIABLE_VALUE"):
            assert np.isfinite(reader.get_tensor(name)).all(), name
    rows = _history(out)
    assert [r["epoch"] for r in rows[:2]] == ["1", "2"]
    # model.fit still ends the epoch for other callbacks: the diverged epoch
    # may be logged, with its non-finite loss (a resume drops that row).
    assert all(not np.isfinite(float(r["loss"])) for r in rows[2:])


def test_checkpoint_is_the_model_object_graph(tmp_path):
    out = str(tmp_path)
    trainer = _trainer(out, epochs=1, model_fn=lambda: _model(num_modules=2))
    trainer.fit(_dataset())
    path = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(path)]
    # The DPM blocks are nodes of the model's graph (their BN statistics with them),
    # not a flat list of weights.
    assert any("/_block6/bn3/moving_variance/" in n for n in names)
    assert not any(n.startswith("weights/") for n in names)
    # The plain TF way reads every weight back into a fresh model.
    model = _model(num_modules=2)
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    for a, b in zip(model.weights, trainer.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_checkpoint_of_the_flat_list_layout_still_resumes(tmp_path):
    """keras-dpn 0.1.0 checkpointed `model.weights` as a flat list; such runs resume."""
    straight = _trainer(str(tmp_path / "straight"), epochs=2)
    straight.fit(_dataset())

    out = str(tmp_path / "old")
    first = _trainer(out, epochs=1)
    first.fit(_dataset())
    ckpt_dir = os.path.join(out, "checkpoints")
    for name in os.listdir(ckpt_dir):
        if name.startswith("ckpt-") or name == "checkpoint":
            os.remove(os.path.join(ckpt_dir, name))
    legacy = tf.train.Checkpoint(weights=list(first.model.weights), optimizer=first.optimizer,
                                 epoch=first.checkpoints.epoch_var,
                                 best=first.checkpoints.best_var)
    tf.train.CheckpointManager(legacy, ckpt_dir, max_to_keep=3).save(checkpoint_number=1)
    assert any(n.startswith("weights/") for n, _ in
               tf.train.list_variables(tf.train.latest_checkpoint(ckpt_dir)))

    resumed = _trainer(out, epochs=2)
    assert resumed.fit(_dataset(), resume=True)["epoch"] == [1]
    for a, b in zip(straight.model.weights, resumed.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # The next checkpoint is written as the model's object graph.
    latest = tf.train.latest_checkpoint(ckpt_dir)
    assert latest.endswith("ckpt-2")
    assert not any(n.startswith("weights/") for n, _ in tf.train.list_variables(latest))


def test_best_checkpoint_and_refusals_leave_the_run_untouched(tmp_path):
    out = str(tmp_path)
    scores = [0.1, 0.5, 0.3]
    snapshots = {}

    class FakeAP(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_AP"] = scores[epoch]
            snapshots[epoch] = _weights(self.model)

    _trainer(out, epochs=3).fit(_dataset(), callbacks=[FakeAP()])
    best = json.load(open(os.path.join(out, "best.json")))
    assert best["epoch"] == 2 and best["val_AP"] == pytest.approx(0.5)
    assert training.read_state(out)["best"] == pytest.approx(0.5)
    model = _model()
    model.load_weights(os.path.join(out, "best.weights.h5"))
    for a, b in zip(_weights(model), snapshots[1]):
        np.testing.assert_array_equal(a, b)
    assert [float(r["val_AP"]) for r in _history(out)] == scores

    # Another architecture, or a new run into the same folder: clear errors
    # and not one byte changed.
    before = snapshot(out)
    wider = _trainer(out, epochs=4, model_fn=lambda: _model(num_modules=2))
    with pytest.raises(ArchitectureMismatchError,
                       match="another architecture.*nothing was written"):
        wider.fit(_dataset(), resume=True)
    with pytest.raises(FileExistsError, match="resume=True"):
        _trainer(out, epochs=4).fit(_dataset())
    assert snapshot(out) == before


@pytest.mark.slow
def test_custom_loop_with_mixed_bfloat16(tmp_path):
    trainer = _trainer(str(tmp_path), epochs=1, loop="custom", mixed_precision="mixed_bfloat16")
    history = trainer.fit(_dataset())
    assert np.isfinite(history["loss"]).all()
    assert trainer.model.get_layer("heatmaps").compute_dtype == "bfloat16"
    assert trainer.model.output.dtype == "float32"
    # The global policy is left as it was.
    assert keras.config.dtype_policy().name == "float32"


def test_fit_on_tf_data_does_not_warn_about_shuffle(tmp_path):
    # build_dataset shuffles; Keras 3.15 warns on every fit(tf.data) with shuffle=True.
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(str(tmp_path), epochs=1).fit(_dataset())
    assert not [w for w in caught if "shuffle" in str(w.message)], \
        [str(w.message) for w in caught]
