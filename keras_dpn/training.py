"""Distributed training: strategies, one training loop, checkpoints that survive a kill.

The pieces a recipe needs, each usable alone:

* :func:`get_strategy` -- ``"mirrored"`` (all local GPUs, or the CPU),
  ``"multi_worker"`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``) or
  ``"default"`` (no distribution).
* :class:`EpochPiecewiseSchedule` -- the paper's step schedule expressed in
  epochs but computed from the optimizer's step counter, so a resumed run
  gets exactly the learning rate the uninterrupted run would have had.
* :func:`configure_reproducibility` and :func:`precision_policy` -- seed,
  deterministic ops, mixed precision.
* :class:`Trainer` -- builds the model inside the strategy's scope, restores
  the last checkpoint (refusing one written for another architecture before
  anything is touched), trains, checkpoints every epoch, keeps the best
  checkpoint by ``val_AP`` and stops cleanly on a NaN loss.

Why two loops: Keras 3 ``model.fit`` fails under
``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). On one machine the
trainer uses ``model.fit`` (so every Keras callback behaves exactly as users
expect); under the multi-worker strategy it runs a custom loop
(``strategy.run`` + ``strategy.reduce`` over an
``experimental_distribute_dataset``) that drives the same callbacks through a
``keras.callbacks.CallbackList``. ``loop="custom"`` forces the custom loop
anywhere, which is how it is tested on one machine.

**Backends.** On TensorFlow, the above. On JAX and PyTorch (``KERAS_BACKEND``)
the trainer runs one loop, ``model.fit``, with the same callbacks, NaN guard,
best weights and history; :func:`get_strategy` returns a
:class:`KerasDistribution` (``"mirrored"``: ``keras.distribution.DataParallel``
over the local devices on JAX, one device on PyTorch; ``"multi_worker"`` is
TensorFlow-only), and the epoch checkpoints are Keras ``.weights.h5`` files,
which hold the optimizer's variables as well as the model's. The training data
may be a ``tf.data.Dataset`` (Keras feeds it to every backend when TensorFlow
is installed) or a ``keras.utils.PyDataset`` such as
:class:`keras_dpn.data.PersonCrops` (no TensorFlow needed).

Output folder layout (everything written atomically; a kill at any moment
leaves the previous epoch's checkpoint intact)::

    OUTPUT/
      checkpoints/ckpt-N.*, checkpoints/checkpoint   last epochs (tf.train.Checkpoint)
      checkpoints/ckpt-N.weights.h5   instead, on JAX / PyTorch (model + optimizer)
      checkpoints/state.json    architecture fingerprint, epoch, step, best score
      best.weights.h5, best.json   weights of the best epoch by ``monitor``
      logs/                     TensorBoard event files
      history.csv               one row per epoch (loss, lr, val_AP, ...)
      run_config.json           builder arguments, keypoint set, data, settings (keras_dpn.publish)
      .lock                     held while a run trains (keras_dpn.run_folder)

One run owns the folder (``.lock``), ``resume`` refuses settings that differ
from ``run_config.json``, a deterministic resume continues the input order
bit-identically, and a failed write (full disk) ends the run in one line with
``history.csv`` listing only checkpointed epochs: docs/run-folder.md.

Example:
>>> import tempfile, numpy as np, tensorflow as tf, keras_dpn
>>> from keras_dpn.training import Trainer
>>> x = np.zeros((4, 64, 48, 3), "float32")
>>> y = np.zeros((4, 16, 12, 17), "float32")
>>> w = np.ones((4, 17), "float32")
>>> ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(2)
>>> with tempfile.TemporaryDirectory() as output_dir:
...     trainer = Trainer(lambda: keras_dpn.DPN(num_modules=1, input_shape=(64, 48, 3)),
...                       output_dir=output_dir, strategy="default", epochs=1,
...                       steps_per_epoch=2, verbose=0)
...     history = trainer.fit(ds)
>>> history["epoch"]
[0]
"""

import contextlib
import json
import math
import os
import re
import shutil
import sys

import keras
import numpy as np

from keras_dpn import _optional, run_folder
# Mixed precision and the run folder's files are shared with keras-dpn publish
# (keras_dpn.publish), which imports them from there, not from here.
from keras_dpn.precision import PRECISIONS, precision_policy, resolve_precision  # noqa: F401
from keras_dpn.run_folder import RunFolderWriteError  # noqa: F401 (raised here, named here)
from keras_dpn.run_folder import (  # noqa: F401
    BEST_JSON, BEST_WEIGHTS, CHECKPOINT_DIR, HISTORY_CSV, LOG_DIR, RUN_CONFIG, STATE_FILE,
    architecture_fingerprint, read_state, record_run)
from keras_dpn.io_utils import atomic_file, atomic_path

# Imported on first use: the JAX / PyTorch path needs no TensorFlow.
tf = _optional.LazyModule("tensorflow", "TensorFlow training (tf.distribute strategies, "
                          "tf.train checkpoints, TensorBoard logs)")

STRATEGIES = ("mirrored", "multi_worker", "default")
LOOPS = ("auto", "fit", "custom")

# keras-dpn 0.1.0 checkpointed `model.weights` as a flat list under this key.
LEGACY_WEIGHTS_KEY = "weights"


class TrainingDivergedError(RuntimeError):
    """Raised when the loss becomes NaN or infinite.

    The last good checkpoint is left on disk untouched and restored into the
    model before this is raised.
    """


class ArchitectureMismatchError(ValueError):
    """Raised when a checkpoint was written for a different model."""




# ---------------------------------------------------------------------------
# Strategy, precision, reproducibility.


def _on_tensorflow():
    return keras.backend.backend() == "tensorflow"


class KerasDistribution:
    """The strategy of the JAX and PyTorch backends: what the trainer needs of one.

    ``scope()``, ``num_replicas_in_sync`` and ``cluster_resolver``, like a
    ``tf.distribute.Strategy``, over an optional ``keras.distribution``
    (``DataParallel`` on JAX), so recipes treat both alike.

    Args:
        distribution: a ``keras.distribution.Distribution`` or None (one device).
    """

    cluster_resolver = None

    def __init__(self, distribution=None):
        self.distribution = distribution

    @property
    def num_replicas_in_sync(self):
        if self.distribution is None:
            return 1
        return int(np.prod(self.distribution.device_mesh.shape))

    def scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()

    def __repr__(self):
        return f"KerasDistribution({self.distribution!r})"


def _keras_strategy(name):
    """:func:`get_strategy` on the JAX and PyTorch backends."""
    backend = keras.backend.backend()
    if name == "multi_worker":
        _optional.require_tensorflow_backend(
            "strategy='multi_worker' (tf.distribute's MultiWorkerMirroredStrategy)",
            hint="On JAX use --strategy mirrored (all local devices).")
    if name == "mirrored" and backend == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            return KerasDistribution(keras.distribution.DataParallel(devices=devices))
    # PyTorch: Keras' torch trainer runs on one device (the GPU when there is one).
    return KerasDistribution(None)


def get_strategy(name="mirrored"):
    """Returns a ``tf.distribute.Strategy`` (TensorFlow backend) by name.

    On the JAX and PyTorch backends it returns a :class:`KerasDistribution`
    instead: ``"mirrored"`` is ``keras.distribution.DataParallel`` over all
    local devices on JAX (one device when there is only one) and one device on
    PyTorch; ``"default"`` is one device; ``"multi_worker"`` needs TensorFlow.

    Args:
        name: ``"mirrored"`` (``MirroredStrategy`` over all local GPUs, or the
            CPU when there are none), ``"multi_worker"``
            (``MultiWorkerMirroredStrategy``; the cluster comes from the
            ``TF_CONFIG`` environment variable) or ``"default"`` (the no-op
            default strategy). A ``tf.distribute.Strategy`` passes through.

    Returns:
        The strategy.

    Raises:
        ValueError: unknown name, or ``TF_CONFIG`` that is not valid JSON or
            names no cluster.

    Call it for ``"multi_worker"`` before any other TensorFlow work (datasets,
    seeding, models): the strategy configures collective ops, which the TF
    runtime accepts only before it starts.
    """
    if isinstance(name, KerasDistribution):
        return name
    if not _on_tensorflow():
        if not isinstance(name, str):
            raise ValueError(
                f"On the {keras.backend.backend()} backend `strategy` must be a name "
                f"{STRATEGIES} or a KerasDistribution. Received: strategy={name!r}")
        if name not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
        return _keras_strategy(name)
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        # With no GPU, MirroredStrategy() already falls back to the CPU; naming
        # it keeps the one-replica case explicit in logs.
        return tf.distribute.MirroredStrategy(None if gpus else ["/cpu:0"])
    raw = os.environ.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON ({e}). Received: TF_CONFIG={raw!r}")
        if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
            raise ValueError(
                "TF_CONFIG must hold 'cluster' and 'task' entries, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                f'"task": {{"type": "worker", "index": 0}}}}. Received: TF_CONFIG={raw!r}')
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def is_multi_worker(strategy):
    if isinstance(strategy, KerasDistribution) or "tensorflow" not in sys.modules:
        return False
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def configure_reproducibility(seed=None, deterministic=False):
    """Seeds Python, NumPy, the backend and Keras; optionally makes ops deterministic.

    Args:
        seed: int or None. Required when ``deterministic`` is True.
        deterministic: TensorFlow: ``tf.config.experimental.enable_op_determinism``
            (slower; some GPU ops then raise instead of running
            non-deterministically); PyTorch:
            ``torch.use_deterministic_algorithms(True)``; JAX: adds
            ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``, which takes
            effect only if JAX has not started its GPU backend yet (the CPU
            is deterministic already). Process-wide; cannot be undone.

    Create a ``MultiWorkerMirroredStrategy`` *before* calling this: seeding
    initializes the TF runtime, after which collective ops can no longer be
    configured ("Collective ops must be configured at program startup").
    :class:`Trainer` (``seed=``) does it in that order.
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int. Received: seed={seed!r}")
        keras.utils.set_random_seed(seed)
    if deterministic:
        if seed is None:
            raise ValueError(
                "Deterministic mode needs a seed (random ops would differ run to run). "
                f"Received: seed={seed!r}, deterministic={deterministic!r}")
        backend = keras.backend.backend()
        if backend == "tensorflow":
            tf.config.experimental.enable_op_determinism()
        elif backend == "torch":
            import torch
            torch.use_deterministic_algorithms(True)
        elif backend == "jax" and "--xla_gpu_deterministic_ops" not in os.environ.get(
                "XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_gpu_deterministic_ops=true").strip()


def reference_head_init(model, layer_name="heatmaps", stddev=1e-3, seed=None):
    """Re-initializes the heatmap head as the HRNet reference: N(0, 0.001), bias 0.

    Targets are zero almost everywhere; a head that starts near zero skips
    the epochs a Glorot head spends unlearning an O(1) offset. The builders
    already start their heads this way (``head_initializer="reference"``,
    the default); this redraws the head of an existing model, e.g. one built
    with another initializer, with a NumPy ``seed``. Not for pretrained weights.

    Args:
        model: a heatmap model with a conv layer named ``layer_name``.
        layer_name: name of the final 1x1 conv.
        stddev: standard deviation of the kernel.
        seed: NumPy seed of the draw.

    Returns:
        ``model``.
    """
    try:
        head = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"The model has no layer {layer_name!r} to initialize. "
            f"Received: layer_name={layer_name!r}") from None
    rng = np.random.default_rng(seed)
    new = []
    for w in head.get_weights():
        new.append(rng.normal(0.0, stddev, w.shape).astype(w.dtype) if w.ndim > 1
                   else np.zeros_like(w))
    head.set_weights(new)
    return model


# ---------------------------------------------------------------------------
# Learning-rate schedule.


@keras.saving.register_keras_serializable(package="keras_dpn")
class EpochPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate with boundaries in epochs.

    ``lr(step) = initial * factor ** (number of boundaries <= step // steps_per_epoch)``.
    The rate depends only on the optimizer's step counter, which the
    checkpoint restores, so a resumed run follows the same schedule.

    Args:
        initial_learning_rate: rate of the first epochs (paper: 1e-3).
        steps_per_epoch: optimizer steps per epoch.
        boundaries: epochs (0-based) at which the rate is multiplied by
            ``factor`` (paper: 90 and 120).
        factor: multiplier per boundary (paper: 0.1).

    Example:
    >>> s = EpochPiecewiseSchedule(1e-3, steps_per_epoch=10, boundaries=(2, 3))
    >>> [round(float(s(i)), 6) for i in (0, 19, 20, 30)]
    [0.001, 0.001, 0.0001, 1e-05]
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, boundaries=(90, 120), factor=0.1):
        if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
            raise ValueError(
                "`steps_per_epoch` must be a positive int. "
                f"Received: steps_per_epoch={steps_per_epoch!r}")
        if list(boundaries) != sorted(boundaries) or any(b < 0 for b in boundaries):
            raise ValueError(
                f"`boundaries` must be increasing epochs >= 0. Received: boundaries={boundaries!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)

    def __call__(self, step):
        epoch = keras.ops.floor_divide(keras.ops.cast(step, "int32"), self.steps_per_epoch)
        drops = keras.ops.zeros((), "float32")
        for boundary in self.boundaries:
            drops = drops + keras.ops.cast(keras.ops.greater_equal(epoch, boundary), "float32")
        return self.initial_learning_rate * keras.ops.power(self.factor, drops)

    def get_config(self):
        return dict(initial_learning_rate=self.initial_learning_rate,
                    steps_per_epoch=self.steps_per_epoch,
                    boundaries=list(self.boundaries), factor=self.factor)


def learning_rate_at(optimizer):
    """The optimizer's current learning rate as a Python float."""
    lr = optimizer.learning_rate
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        lr = optimizer.inner_optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


# ---------------------------------------------------------------------------
# Checkpoint bookkeeping.


def _write_json(path, obj):
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


@contextlib.contextmanager
def _writing(path, what):
    """Turns an I/O failure of the block (``OSError``, or TensorFlow's error for a
    checkpoint or summary write) into one :class:`RunFolderWriteError` line."""
    # A failing h5py write frees its objects while the error unwinds, and each
    # prints an "Exception ignored" traceback about the same full disk (13 of
    # them for one .weights.h5; Cython prints them through sys.excepthook, then
    # sys.unraisablehook): held here, shown only if the block did not fail so.
    held, hook, excepthook = [], sys.unraisablehook, sys.excepthook
    sys.unraisablehook = held.append
    sys.excepthook = lambda *exc_info: held.append(exc_info)
    reason = None
    try:
        try:
            yield
        except RunFolderWriteError:
            raise
        except Exception as e:
            tf_module = sys.modules.get("tensorflow")
            errno = getattr(e, "errno", None) if isinstance(e, OSError) else None
            if isinstance(e, OSError):
                # h5py's text spans lines (time, buffer, offsets): the errno says it all.
                reason = os.strerror(errno) if errno else str(e).splitlines()[0]
            elif tf_module is not None and isinstance(e, tf_module.errors.OpError):
                # "{{function_node ...}} /path/x.tempstate123; No space left on device [Op:SaveV2]"
                found = re.search(r";\s*([^;]+?)\s*(?:\[Op:\w+\])?\s*$", e.message or "")
                reason = found.group(1) if found else type(e).__name__
            else:
                raise
            # Free the failed writer's objects now, while their complaints are held.
            import traceback
            traceback.clear_frames(e.__traceback__)
        if reason is not None:
            import gc
            gc.collect()
            _close_h5_files(path)
    finally:
        sys.unraisablehook, sys.excepthook = hook, excepthook
        if reason is None:
            for unraisable in held:
                if isinstance(unraisable, tuple):
                    excepthook(*unraisable)
                else:
                    hook(unraisable)
    if reason is None:
        return
    error = RunFolderWriteError(
        f"Could not write {what} to {path} ({reason}). The newest complete checkpoint "
        "is kept and history.csv lists only checkpointed epochs: free space or make the "
        "folder writable, then resume (--resume).")
    error.errno = errno
    raise error


def _close_h5_files(folder):
    """Closes HDF5 files under ``folder`` that a failed write left open.

    Their flush fails again at every close attempt, and at interpreter exit
    h5py prints a traceback for each; closed here while the complaints are held.
    """
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            name = fid.name.decode() if isinstance(fid.name, bytes) else str(fid.name)
            if name.startswith(os.fspath(folder)):
                h5py.File(fid).close()  # closes every object of the file, then the file
        except Exception:
            pass


def _all_finite(model):
    return all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in model.trainable_weights)


def _is_finite(value):
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _is_tf_dataset(dataset):
    # Checked without importing TensorFlow: a tf.data.Dataset exists only if it is imported.
    tf_module = sys.modules.get("tensorflow")
    return tf_module is not None and isinstance(dataset, tf_module.data.Dataset)


class _Scalar:
    """A Python number with the ``numpy()`` / ``assign()`` of the tf.Variable it stands for."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value

    def assign(self, value):
        self.value = value


WEIGHTS_CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


class _WeightsCheckpoints:
    """Epoch checkpoints of the JAX and PyTorch backends: ``ckpt-N.weights.h5``.

    A compiled model's ``.weights.h5`` holds its variables and its
    optimizer's (Adam moments, step counter), on every backend. Each file is
    written atomically, then ``state.json`` names it (with the epoch and the
    best score): a kill between the two leaves the previous state naming a
    complete file. The newest ``max_to_keep`` files are kept.
    """

    def __init__(self, model, directory, max_to_keep):
        self.model = model
        self.directory = directory
        self.max_to_keep = max(1, int(max_to_keep or 1))

    def latest(self, state):
        """The file ``state.json`` names, or None when there is no state."""
        if not state or not state.get("checkpoint"):
            return None
        path = os.path.join(self.directory, state["checkpoint"])
        if not WEIGHTS_CHECKPOINT_RE.match(state["checkpoint"]):
            raise ValueError(
                f"The checkpoint in {self.directory} was written by the "
                f"{state.get('backend', 'tensorflow')} backend ({state['checkpoint']}, a "
                "tf.train.Checkpoint); resume it with KERAS_BACKEND=tensorflow, or start a new "
                "run from its best.weights.h5 (--weights). Received: KERAS_BACKEND="
                f"{keras.backend.backend()!r}")
        if not os.path.isfile(path):
            raise ValueError(f"state.json names a checkpoint that is missing. Received: {path!r}")
        return path

    def save(self, checkpoint_number):
        path = os.path.join(self.directory, f"ckpt-{checkpoint_number}.weights.h5")
        with atomic_path(path) as tmp:
            self.model.save_weights(tmp)
        return path

    def restore(self, path):
        self.model.load_weights(path)

    def prune(self):
        numbered = sorted((int(m.group(1)), name) for name in os.listdir(self.directory)
                          for m in [WEIGHTS_CHECKPOINT_RE.match(name)] if m)
        for _, name in numbered[:-self.max_to_keep]:
            os.remove(os.path.join(self.directory, name))


class _NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and remembers where.

    Runs first among the callbacks, so it also puts the learning rate into
    the epoch logs for the history, TensorBoard and checkpoint callbacks.
    """

    def __init__(self, optimizer):
        super().__init__()
        self.tripped_at = None
        self._optimizer = optimizer

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        # The rate used for this epoch's steps (read before they advance the counter).
        self._lr = learning_rate_at(self._optimizer)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self._lr

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _is_finite(loss):
            self.tripped_at = (self._epoch, batch)
            self.model.stop_training = True


class _HistoryCSV(keras.callbacks.Callback):
    """``history.csv``: one row per finished epoch, rewritten atomically.

    Epochs are numbered from 1, as the progress log, ``best.json`` and
    ``state.json`` count them. Rows after the resume point (written by a run
    killed before its checkpoint) are dropped, so no epoch appears twice.
    Columns are the union of all keys seen (``val_AP`` may appear every k
    epochs).
    """

    def __init__(self, path, initial_epoch, state=None):
        super().__init__()
        self._path = path
        self._rows = []
        if os.path.exists(path):
            import csv
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            # Runs of keras-dpn 0.1 numbered their rows from 0: renumber them.
            shift = 1 if rows and int(rows[0]["epoch"]) == 0 else 0
            for r in rows:
                r["epoch"] = int(r["epoch"]) + shift
            self._rows = [r for r in rows if r["epoch"] <= initial_epoch]
        # The row follows the checkpoint: a run killed between the two left the
        # epoch out, and state.json holds its logs.
        if (initial_epoch and state and state.get("epoch") == initial_epoch
                and all(r["epoch"] != initial_epoch for r in self._rows)):
            self._rows.append({"epoch": initial_epoch, **(state.get("logs") or {})})

    def on_epoch_end(self, epoch, logs=None):
        import csv
        row = {"epoch": epoch + 1}
        row.update({k: (float(v) if _is_finite(v) else v) for k, v in (logs or {}).items()})
        self._rows.append(row)
        keys = ["epoch"] + sorted({k for r in self._rows for k in r} - {"epoch"})
        with atomic_file(self._path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=keys, restval="")
            writer.writeheader()
            writer.writerows(self._rows)


class _ScalarSummaries(keras.callbacks.Callback):
    """Writes every numeric epoch-log value as a TensorBoard scalar.

    Keras' TensorBoard callback needs the ``tensorboard`` package for
    ``tf.summary.scalar``; ``tf.summary.write`` with the scalars plugin's
    metadata is core TensorFlow and produces the same event files, so logs
    are written whether or not that package is installed.
    """

    def __init__(self, log_dir):
        super().__init__()
        self._log_dir = log_dir
        self._writer = None
        from tensorflow.core.framework import summary_pb2
        self._metadata = summary_pb2.SummaryMetadata()
        self._metadata.plugin_data.plugin_name = "scalars"

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(os.path.join(self._log_dir, "train"))

    def on_epoch_end(self, epoch, logs=None):
        with _writing(self._log_dir, f"the TensorBoard logs of epoch {epoch + 1}"), \
                self._writer.as_default():
            for key, value in (logs or {}).items():
                if _is_finite(value):
                    tf.summary.write(f"epoch_{key}", tf.constant(float(value), tf.float32),
                                     step=epoch + 1, metadata=self._metadata)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves the run's state at the end of every good epoch.

    Skips the save (and leaves the previous checkpoint as the newest) when
    the guard tripped, the epoch loss is not finite or any weight is not
    finite, so NaN weights never replace good ones.
    """

    def __init__(self, trainer, guard, history=None):
        super().__init__()
        self._trainer = trainer
        self._guard = guard
        self._history = history

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        t = self._trainer
        if (self._guard.tripped_at is not None or not _is_finite(logs.get("loss"))
                or not _all_finite(self.model)):
            if self._guard.tripped_at is None:
                self._guard.tripped_at = (epoch, None)
            self.model.stop_training = True
            return
        try:
            with _writing(t.output_dir, f"the checkpoint of epoch {epoch + 1}"):
                t._save_epoch(epoch, logs)
        except RunFolderWriteError:
            # tf.train.Checkpoint writes into ckpt-N_temp/ first and leaves it on failure.
            for name in os.listdir(t.checkpoint_dir) if os.path.isdir(t.checkpoint_dir) else ():
                if name.endswith("_temp"):
                    shutil.rmtree(os.path.join(t.checkpoint_dir, name), ignore_errors=True)
            raise
        if self._history is not None:
            # After the checkpoint: history.csv never lists an epoch a resume would redo.
            with _writing(self._history._path, f"the history row of epoch {epoch + 1}"):
                self._history.on_epoch_end(epoch, logs)


class Trainer:
    """Trains a heatmap model with checkpoints, resume, best-model tracking and a NaN guard.

    Args:
        model_fn: zero-argument callable returning an uncompiled Keras model.
            Called inside the strategy's scope and the precision policy.
        output_dir: folder for checkpoints, logs, history and best weights.
        strategy: a name for :func:`get_strategy` or a strategy object.
        loss: a Keras loss (default ``keras_dpn.losses.JointsMSE()``). It is
            called as ``loss(heatmaps, predictions, sample_weight=target_weight)``
            and must return the mean over the (per-replica) batch.
        learning_rate: initial Adam learning rate.
        lr_boundaries: epochs at which the rate is multiplied by ``lr_factor``.
        lr_factor: see above.
        epochs: total number of epochs (a resumed run stops at the same epoch).
        steps_per_epoch: optimizer steps per epoch; derived from a finite
            dataset's cardinality when None.
        jit_compile: compile the training step: ``True`` (XLA on TensorFlow
            and JAX, ``torch.compile`` on PyTorch), ``False`` (TensorFlow:
            the oneDNN graph, faster than XLA on CPUs; JAX: op by op, for
            debugging only), or ``"auto"``: ``True`` on JAX, ``False``
            otherwise.
        mixed_precision: False, True or a Keras policy name (see
            :func:`resolve_precision`).
        loop: ``"auto"`` (``model.fit`` except under the multi-worker
            strategy), ``"fit"`` or ``"custom"`` (TensorFlow only). On JAX and
            PyTorch there is one loop, ``model.fit``.
        monitor: epoch-log key that selects the best checkpoint (written by an
            evaluation callback such as ``COCOEvaluationCallback``).
        monitor_mode: ``"max"`` or ``"min"``.
        max_to_keep: number of epoch checkpoints kept.
        tensorboard: write TensorBoard logs to ``OUTPUT/logs``.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        seed: seeds Python, NumPy, the backend and Keras once the strategy exists.
        deterministic: deterministic ops (needs ``seed``; see
            :func:`configure_reproducibility`).
        run_info: what the trainer cannot see (``keypoints``, ``dataset``,
            recipe settings), recorded with the model's builder arguments and
            these settings in ``OUTPUT/run_config.json`` when training starts
            (what ``keras-dpn publish`` reads; :mod:`keras_dpn.publish`).
    """

    def __init__(self, model_fn, output_dir, strategy="mirrored", loss=None,
                 learning_rate=1e-3, lr_boundaries=(90, 120), lr_factor=0.1, epochs=140,
                 steps_per_epoch=None, jit_compile=False, mixed_precision=False, loop="auto",
                 monitor="val_AP", monitor_mode="max", max_to_keep=3, tensorboard=True,
                 verbose=1, seed=None, deterministic=False, run_info=None):
        if loop not in LOOPS:
            raise ValueError(f"`loop` must be one of {LOOPS}. Received: loop={loop!r}")
        if monitor_mode not in ("max", "min"):
            raise ValueError(
                f"`monitor_mode` must be 'max' or 'min'. Received: monitor_mode={monitor_mode!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"`epochs` must be a positive int. Received: epochs={epochs!r}")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int)
                                            or steps_per_epoch < 1):
            raise ValueError(
                f"`steps_per_epoch` must be a positive int or None. "
                f"Received: steps_per_epoch={steps_per_epoch!r}")
        if output_dir is None or str(output_dir) == "":
            raise ValueError(f"`output_dir` is required. Received: output_dir={output_dir!r}")
        self.output_dir = os.path.abspath(os.fspath(output_dir))
        if deterministic and seed is None:
            raise ValueError(
                "Deterministic mode needs a seed. "
                f"Received: seed={seed!r}, deterministic={deterministic!r}")
        self.strategy = get_strategy(strategy)
        configure_reproducibility(seed, deterministic)
        self.chief = is_chief(self.strategy)
        self.precision = resolve_precision(mixed_precision)
        self.loop = loop
        if loop == "auto":
            self.loop = "custom" if is_multi_worker(self.strategy) else "fit"
        if self.loop == "fit" and is_multi_worker(self.strategy):
            raise ValueError(
                "Keras 3 `model.fit` does not work under MultiWorkerMirroredStrategy "
                "(keras-team/keras#20585); use loop='custom' or 'auto'. Received: loop='fit'")
        # TensorFlow: tf.train checkpoints (and the custom loop); JAX / PyTorch:
        # model.fit with .weights.h5 checkpoints.
        self.backend = keras.backend.backend()
        self._tf_checkpoints = self.backend == "tensorflow"
        if self.loop == "custom" and not self._tf_checkpoints:
            _optional.require_tensorflow_backend(
                "loop='custom' (the tf.distribute training loop)",
                hint="Use loop='auto' or 'fit'.")
        if jit_compile not in (True, False, "auto"):
            raise ValueError(
                "`jit_compile` must be True, False or 'auto'. "
                f"Received: jit_compile={jit_compile!r}")
        self.learning_rate = float(learning_rate)
        self.lr_boundaries = tuple(lr_boundaries)
        self.lr_factor = float(lr_factor)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.jit_compile = (self.backend == "jax") if jit_compile == "auto" else jit_compile
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.max_to_keep = max_to_keep
        self.tensorboard = tensorboard
        self.verbose = verbose
        self._loss = loss
        self._model_fn = model_fn
        self.run_info = dict(run_info or {})
        self.model = None
        self.optimizer = None
        self.seed, self.deterministic = seed, bool(deterministic)

    # -- paths ---------------------------------------------------------------
    @property
    def checkpoint_dir(self):
        return os.path.join(self.output_dir, CHECKPOINT_DIR)

    @property
    def best_weights_path(self):
        return os.path.join(self.output_dir, BEST_WEIGHTS)

    # -- setup ---------------------------------------------------------------
    def _resolve_loss(self):
        if self._loss is not None:
            return keras.losses.get(self._loss) if isinstance(self._loss, str) else self._loss
        from keras_dpn.losses import JointsMSE  # the data pipeline's target convention
        return JointsMSE()

    def _build(self, steps_per_epoch):
        """Model, optimizer (built, so its slots exist before a restore) and checkpoint."""
        with self.strategy.scope(), precision_policy(self.precision):
            self.model = self._model_fn()
            if not isinstance(self.model, keras.Model):
                raise ValueError(
                    f"`model_fn` must return a keras.Model. Received: {type(self.model).__name__}")
            schedule = EpochPiecewiseSchedule(self.learning_rate, steps_per_epoch,
                                              self.lr_boundaries, self.lr_factor)
            optimizer = keras.optimizers.Adam(schedule)
            self.loss = self._resolve_loss()
            if self.loop == "fit":
                self.model.compile(optimizer=optimizer, loss=self.loss,
                                   jit_compile=self.jit_compile)
                # compile() wraps the optimizer for loss scaling under mixed_float16.
                optimizer = self.model.optimizer
            elif self.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
            if not self._tf_checkpoints:
                # The epoch and best score live in state.json; the weights
                # files hold the model and the optimizer.
                self._epoch_var, self._best_var = _Scalar(0), _Scalar(np.nan)
                self._manager = _WeightsCheckpoints(self.model, self._save_dir(),
                                                    self.max_to_keep)
                return
            self._epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self._best_var = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best")
            # The model's object graph: every layer, the DPM's blocks included
            # (they are attributes of the DPM, see layers.py), with its BN
            # moving statistics.
            self._checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                                   epoch=self._epoch_var, best=self._best_var)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self._save_dir(), max_to_keep=self.max_to_keep)

    def _latest_checkpoint(self, state):
        """Path of the newest complete checkpoint, or None."""
        if self._tf_checkpoints:
            return tf.train.latest_checkpoint(self.checkpoint_dir)
        return self._manager.latest(state)

    def _save_dir(self):
        if self.chief:
            return self.checkpoint_dir
        # Every worker must take part in a save; only the chief's copy is kept.
        resolver = self.strategy.cluster_resolver
        return os.path.join(self.output_dir, f".tmp-{resolver.task_type}-{resolver.task_id}",
                            CHECKPOINT_DIR)

    def _restore(self, resume):
        """Restores the newest checkpoint, or checks that there is none to clobber.

        Returns the epoch to start from (0-based).
        """
        state = read_state(self.output_dir)
        latest = self._latest_checkpoint(state)
        if latest is None:
            return 0
        if not resume:
            epoch = state["epoch"] if state else "?"
            raise FileExistsError(
                f"{self.output_dir} already holds a training run (checkpoint after epoch "
                f"{epoch}). Resume it (resume=True, --resume) or choose another output folder; "
                "nothing was written.")
        expected = architecture_fingerprint(self.model)
        found = (state or {}).get("architecture")
        if found is None:
            found = self._fingerprint_from_checkpoint(latest)
        if (found.get("sha256_16") != expected["sha256_16"]
                or found.get("num_weights") != expected["num_weights"]):
            raise ArchitectureMismatchError(
                f"The checkpoint in {self.checkpoint_dir} was written for another architecture: "
                f"{found.get('name')} with {found.get('num_weights')} weights "
                f"({found.get('num_params')} values), but the model is {expected['name']} with "
                f"{expected['num_weights']} weights ({expected['num_params']} values). Use the "
                "matching --model or another --output; nothing was written.")
        self._check_resume_settings()
        if self._tf_checkpoints:
            status = self._checkpoint_for(latest).restore(latest)
            # Fails if any variable of the model (BN statistics included) or the
            # optimizer has no value in the checkpoint.
            status.assert_existing_objects_matched()
        else:
            self._manager.restore(latest)
            # Keras only warns when it skips the optimizer's variables: check the step.
            step = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
            if step != int(state.get("step", step)):
                raise ValueError(
                    f"{latest} did not restore the optimizer state (step {step}, state.json: "
                    f"{state['step']}); nothing was written. Received: output={self.output_dir!r}")
            self._epoch_var.assign(int(state["epoch"]))
            self._best_var.assign(np.nan if state.get("best") is None else float(state["best"]))
        epoch = int(self._epoch_var.numpy())
        if self.verbose and self.chief:
            print(f"Resumed from {latest}: {epoch} epoch(s) done, optimizer step "
                  f"{int(self.optimizer.iterations.numpy())}, "
                  f"lr {learning_rate_at(self.optimizer):g}.")
        return epoch

    def _check_resume_settings(self):
        """Refuses settings that differ from the run's ``run_config.json`` (see
        :data:`keras_dpn.run_folder.RESUME_MAY_CHANGE`), before anything is written."""
        path = os.path.join(self.output_dir, RUN_CONFIG)
        if not os.path.isfile(path):
            return  # a run of keras-dpn 0.1, or a worker that does not see the chief's files
        recorded = run_folder.read_run_config(self.output_dir)
        run_folder.check_resume_settings(recorded, run_folder.run_record(trainer=self),
                                         self.output_dir)

    @staticmethod
    def _legacy_layout(path):
        """True for a checkpoint of keras-dpn 0.1.0, which held the weights as a flat list."""
        return any(n.startswith(f"{LEGACY_WEIGHTS_KEY}/") for n, _ in tf.train.list_variables(path))

    def _checkpoint_for(self, path):
        """The ``tf.train.Checkpoint`` that reads ``path``.

        Checkpoints of keras-dpn 0.1.0 stored ``model.weights`` as a flat list
        (``weights/0``, ``weights/1``, ...); they are read through that list, whose
        order the architecture fingerprint guarantees. The next save uses the
        model's object graph.
        """
        if not self._legacy_layout(path):
            return self._checkpoint
        return tf.train.Checkpoint(**{LEGACY_WEIGHTS_KEY: list(self.model.weights)},
                                   optimizer=self.optimizer, epoch=self._epoch_var,
                                   best=self._best_var)

    def _fingerprint_from_checkpoint(self, path):
        prefix = f"{LEGACY_WEIGHTS_KEY}/" if self._legacy_layout(path) else "model/"
        shapes = [s for n, s in tf.train.list_variables(path)
                  if n.startswith(prefix) and n.endswith("VARIABLE_VALUE")]
        own = [tuple(v.shape) for v in self.model.weights]
        match = sorted(map(tuple, shapes)) == sorted(own)
        return {"name": "unknown", "num_weights": len(shapes),
                "num_params": int(sum(np.prod(s) for s in shapes)),
                "sha256_16": architecture_fingerprint(self.model)["sha256_16"] if match else "?"}

    # -- saving ----------------------------------------------------------------
    def _save_epoch(self, epoch, logs):
        """Checkpoint after ``epoch`` (0-based) finished; best weights when improved."""
        score = logs.get(self.monitor)
        improved = False
        if score is not None and _is_finite(score):
            best = float(self._best_var.numpy())
            improved = math.isnan(best) or (score > best if self.monitor_mode == "max"
                                            else score < best)
        if improved and self.chief:
            # Best weights first: a kill before the checkpoint below re-runs this
            # epoch, which at worst rewrites the same file.
            with atomic_path(self.best_weights_path) as tmp:
                self.model.save_weights(tmp)
            _write_json(os.path.join(self.output_dir, BEST_JSON),
                        {"epoch": epoch + 1, self.monitor: float(score),
                         "logs": {k: float(v) for k, v in logs.items() if _is_finite(v)}})
        if improved:
            self._best_var.assign(float(score))
        self._epoch_var.assign(epoch + 1)
        path = self._manager.save(checkpoint_number=epoch + 1)
        if self.chief:
            _write_json(os.path.join(self.checkpoint_dir, STATE_FILE), {
                "epoch": epoch + 1,
                "step": int(self.optimizer.iterations.numpy()),
                "checkpoint": os.path.basename(path),
                "best": None if math.isnan(float(self._best_var.numpy()))
                else float(self._best_var.numpy()),
                "monitor": self.monitor,
                "architecture": architecture_fingerprint(self.model),
                "backend": self.backend,
                "logs": {k: float(v) for k, v in logs.items() if _is_finite(v)},
            })
            if not self._tf_checkpoints:
                # Only now: until state.json names the new file, the old ones are the state.
                self._manager.prune()
        else:
            shutil.rmtree(os.path.dirname(self._save_dir()), ignore_errors=True)

    # -- training ----------------------------------------------------------------
    def _steps(self, dataset):
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        if _is_tf_dataset(dataset):
            n = int(dataset.cardinality())
        else:  # a PyDataset: its length in batches (None when it does not know)
            n = dataset.num_batches or -1
        if n <= 0:
            raise ValueError(
                "`steps_per_epoch` is required for a dataset of unknown or infinite length. "
                f"Received: steps_per_epoch=None with cardinality {n}")
        return n

    def fit(self, train_dataset, callbacks=(), resume=False):
        """Trains from the last checkpoint (if ``resume``) up to ``epochs``.

        Args:
            train_dataset: ``tf.data.Dataset`` or ``keras.utils.PyDataset``
                (e.g. :class:`keras_dpn.data.PersonCrops`) of global batches
                ``(images, heatmaps, target_weight)``. The custom loop needs
                a ``tf.data.Dataset``.
            callbacks: Keras callbacks (evaluation, early stopping, ...). They
                run before the checkpoint, so values they put in the epoch
                logs (``val_AP``) choose the best checkpoint.
            resume: continue the run in ``output_dir``. Without it, a folder
                that already holds a checkpoint is refused.

        Returns:
            A dict of per-epoch lists (``epoch``, ``loss``, ``lr``, callback
            values) for the epochs run in this call.

        Raises:
            TrainingDivergedError: on a NaN or infinite loss, or when a
                callback raises it (evaluation of non-finite predictions).
            ArchitectureMismatchError: the checkpoint is for another model.
            FileExistsError: ``output_dir`` holds a run and ``resume`` is False,
                or another live run holds its lock
                (:class:`keras_dpn.run_folder.RunFolderLockedError`).
            keras_dpn.run_folder.ResumeSettingsError: ``resume`` with settings
                that differ from the run's ``run_config.json``.
            RunFolderWriteError: the folder cannot be written (read-only, full
                disk); the newest complete checkpoint is kept.

        With ``deterministic=True``, a resume skips the batches of the
        finished epochs, so the data order continues where it stopped (the
        input pipeline's time for them; see docs/run-folder.md).
        """
        is_tf_data = _is_tf_dataset(train_dataset)
        if not is_tf_data and not isinstance(train_dataset, keras.utils.PyDataset):
            raise ValueError(
                "`train_dataset` must be a tf.data.Dataset or a keras.utils.PyDataset. "
                f"Received: train_dataset={type(train_dataset).__name__}")
        if not is_tf_data and self.loop == "custom":
            raise ValueError(
                "The custom (tf.distribute) loop needs a tf.data.Dataset. "
                f"Received: train_dataset={type(train_dataset).__name__}")
        steps = self._steps(train_dataset)
        # The chief owns the run folder from before its first write to the end
        # (exceptions included); the other workers write only their .tmp copies.
        lock = (run_folder.RunLock(self.output_dir, verbose=bool(self.verbose)) if self.chief
                else contextlib.nullcontext())
        with lock:
            return self._fit(train_dataset, callbacks, resume, steps, is_tf_data)

    def _fit(self, train_dataset, callbacks, resume, steps, is_tf_data):
        self._build(steps)
        initial_epoch = self._restore(resume)
        if initial_epoch >= self.epochs:
            if self.verbose and self.chief:
                print(f"Nothing to do: {initial_epoch} of {self.epochs} epochs already done.")
            return {"epoch": []}
        # A PyDataset restarts by itself every len(dataset) steps.
        if is_tf_data and train_dataset.cardinality() != tf.data.INFINITE_CARDINALITY:
            train_dataset = train_dataset.repeat()
        if is_tf_data and self.deterministic and initial_epoch:
            # The pipeline starts again from its seed: skipping the batches the
            # finished epochs consumed puts the data order, the shuffle buffer
            # and the augmentation draws where the uninterrupted run had them.
            # Costs the input pipeline's time for those batches (no model work).
            skipped = initial_epoch * steps
            if self.verbose and self.chief:
                print(f"Deterministic resume: replaying the input pipeline's first {skipped} "
                      f"batches ({initial_epoch} epoch(s)) to continue its order.", flush=True)
            train_dataset = train_dataset.skip(skipped)
        elif not is_tf_data and initial_epoch and callable(getattr(train_dataset, "set_epoch",
                                                                    None)):
            # A PyDataset whose order and draws are a function of its epoch
            # (PersonCrops): it continues where the uninterrupted run would be.
            train_dataset.set_epoch(initial_epoch)

        guard = _NaNGuard(self.optimizer)
        cbs = list(callbacks)
        history = None
        if self.chief:
            history = _HistoryCSV(os.path.join(self.output_dir, HISTORY_CSV), initial_epoch,
                                  read_state(self.output_dir))
            if self.tensorboard and _optional.is_installed("tensorflow"):
                cbs.append(_ScalarSummaries(os.path.join(self.output_dir, LOG_DIR)))
            elif self.tensorboard and self.verbose:
                print("TensorBoard logs need TensorFlow (not installed): skipped; "
                      f"{HISTORY_CSV} has the same values.")
        # Guard first (stops at the bad batch), checkpoint last (sees val_AP).
        # history.csv is written by the checkpoint callback, after the checkpoint.
        cbs = [guard] + cbs + [_EpochCheckpoint(self, guard, history)]
        os.makedirs(self.output_dir, exist_ok=True)
        if self.chief:
            # The builder arguments `keras-dpn publish` rebuilds the model from.
            with _writing(os.path.join(self.output_dir, RUN_CONFIG), "the run's settings"):
                record_run(self.output_dir, trainer=self)

        try:
            if self.loop == "fit":
                history = self.model.fit(train_dataset, epochs=self.epochs,
                                         steps_per_epoch=steps, initial_epoch=initial_epoch,
                                         callbacks=cbs, verbose=self.verbose,
                                         # tf.data shuffles itself (Keras warns otherwise).
                                         shuffle=not _is_tf_dataset(train_dataset))
                result = {"epoch": list(history.epoch), **history.history}
            else:
                result = self._custom_loop(train_dataset, steps, initial_epoch, cbs, guard)
        except TrainingDivergedError as e:
            # From a callback: the evaluation got non-finite predictions.
            self._diverged(None, reason=str(e))
        if guard.tripped_at is not None:
            self._diverged(guard.tripped_at)
        return result

    def _diverged(self, where, reason=None):
        latest = self._latest_checkpoint(read_state(self.output_dir))
        if latest is not None and self._tf_checkpoints:
            self._checkpoint_for(latest).restore(latest).expect_partial()
        elif latest is not None:
            self._manager.restore(latest)
        if reason is None:
            epoch, batch = where
            at = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
            reason = f"Training diverged: the loss became NaN or infinite at {at}."
        kept = (f"The last good checkpoint {latest} is untouched and its weights were "
                "restored into the model." if latest else "No checkpoint had been written yet.")
        raise TrainingDivergedError(
            f"{reason} {kept} Lower the "
            "learning rate, check the data for broken targets, or disable mixed precision, "
            "then resume.")

    def _custom_loop(self, dataset, steps, initial_epoch, cbs, guard):
        strategy, model, optimizer = self.strategy, self.model, self.optimizer
        loss_fn = self.loss
        replicas = strategy.num_replicas_in_sync
        scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def grads_of(images, heatmaps, weights):
            with tf.GradientTape() as tape:
                pred = model(images, training=True)
                # Inside a replica context Keras losses already divide by the
                # replica count, so the sum that apply_gradients all-reduces is
                # the global-batch mean. Regularization losses are not scaled
                # by Keras: divide them here.
                loss = loss_fn(heatmaps, pred, sample_weight=weights)
                total = loss
                if model.losses:
                    total = total + tf.add_n(model.losses) / replicas
                if scaled:
                    total = optimizer.scale_loss(total)
            return loss, tape.gradient(total, model.trainable_variables)

        if self.jit_compile:
            # The cross-replica all-reduce in apply_gradients cannot be
            # XLA-compiled; the forward and backward passes can.
            grads_of = tf.function(grads_of, jit_compile=True)

        def replica_step(images, heatmaps, weights):
            loss, grads = grads_of(images, heatmaps, weights)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        @tf.function
        def train_step(iterator):
            per_replica = strategy.run(replica_step, args=next(iterator))
            # Each replica's loss is already its share of the global mean.
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        callback_list = keras.callbacks.CallbackList(cbs, model=model, epochs=self.epochs,
                                                     steps=steps, verbose=0)
        model.stop_training = False
        history = {"epoch": []}
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, self.epochs):
            callback_list.on_epoch_begin(epoch)
            bar = keras.utils.Progbar(steps, verbose=self.verbose) if self.chief else None
            if bar is not None and self.verbose:
                print(f"Epoch {epoch + 1}/{self.epochs}")
            total = 0.0
            for step in range(steps):
                callback_list.on_train_batch_begin(step)
                loss = float(train_step(iterator))
                total += loss
                logs = {"loss": total / (step + 1)}
                callback_list.on_train_batch_end(step, logs)
                if bar is not None:
                    bar.update(step + 1, [("loss", loss)])
                if guard.tripped_at is not None:
                    break
            logs = {"loss": total / (step + 1)}
            if guard.tripped_at is None:
                callback_list.on_epoch_end(epoch, logs)
            if guard.tripped_at is not None:
                break
            history["epoch"].append(epoch)
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
            if model.stop_training:
                break
        callback_list.on_train_end()
        return history
