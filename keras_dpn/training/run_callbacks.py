"""The callbacks every :class:`keras_dpn.training.trainer.Trainer` run adds around the user's.

In the order the Trainer lists them:

* :class:`NaNGuard` (first) -- stops at the first non-finite batch loss and
  puts the epoch's learning rate into the logs;
* the user's callbacks (evaluation writes ``val_AP``);
* :class:`ScalarSummaries` -- TensorBoard event files through ``tf.summary``
  (the ``tensorboard`` package is not needed);
* :class:`EpochCheckpoint` (last) -- the epoch's checkpoint
  (:class:`keras_dpn.training.checkpoints.RunCheckpoints`), then its row of
  ``history.csv`` (:class:`HistoryCSV`), so the history never lists an epoch
  a resume would redo.
"""

import os

import keras

from keras_dpn.core import optional as _optional
from keras_dpn.core.io_utils import atomic_file
from keras_dpn.training.checkpoints import all_finite, is_finite, writing
from keras_dpn.training.schedules import learning_rate_at

# Imported on first use: only the TensorBoard logs need TensorFlow.
tf = _optional.LazyModule("tensorflow", "TensorBoard logs of a training run")


class NaNGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and remembers where.

    Runs first among the callbacks, so it also puts the learning rate into
    the epoch logs for the history, TensorBoard and checkpoint callbacks.

    Args:
        optimizer: the run's optimizer (its learning rate is logged as ``lr``).
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
        if loss is not None and not is_finite(loss):
            self.tripped_at = (self._epoch, batch)
            self.model.stop_training = True


class HistoryCSV(keras.callbacks.Callback):
    """``history.csv``: one row per finished epoch, rewritten atomically.

    Epochs are numbered from 1, as the progress log, ``best.json`` and
    ``state.json`` count them. Rows after the resume point (written by a run
    killed before its checkpoint) are dropped, so no epoch appears twice.
    Columns are the union of all keys seen (``val_AP`` may appear every k
    epochs).

    Args:
        path: the ``history.csv`` file (read when it exists).
        initial_epoch: epochs already done (0 for a new run).
        state: the run's ``state.json`` (``read_state``), or None.
    """

    def __init__(self, path, initial_epoch, state=None):
        super().__init__()
        self.path = path
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
        row.update({k: (float(v) if is_finite(v) else v) for k, v in (logs or {}).items()})
        self._rows.append(row)
        keys = ["epoch"] + sorted({k for r in self._rows for k in r} - {"epoch"})
        with atomic_file(self.path, "w") as f:
            writer = csv.DictWriter(f, fieldnames=keys, restval="")
            writer.writeheader()
            writer.writerows(self._rows)


class ScalarSummaries(keras.callbacks.Callback):
    """Writes every numeric epoch-log value as a TensorBoard scalar.

    Keras' TensorBoard callback needs the ``tensorboard`` package for
    ``tf.summary.scalar``; ``tf.summary.write`` with the scalars plugin's
    metadata is core TensorFlow and produces the same event files, so logs
    are written whether or not that package is installed.

    Args:
        log_dir: the run's ``logs/`` folder (the event files go to ``train/``).
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
        with writing(self._log_dir, f"the TensorBoard logs of epoch {epoch + 1}"), \
                self._writer.as_default():
            for key, value in (logs or {}).items():
                if is_finite(value):
                    tf.summary.write(f"epoch_{key}", tf.constant(float(value), tf.float32),
                                     step=epoch + 1, metadata=self._metadata)
            self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the run's state at the end of every good epoch, then its history row.

    Skips the save (and leaves the previous checkpoint as the newest) when
    the guard tripped, the epoch loss is not finite or any weight is not
    finite, so NaN weights never replace good ones.

    Args:
        checkpoints: the run's :class:`keras_dpn.training.checkpoints.RunCheckpoints`.
        guard: the run's :class:`NaNGuard`.
        history: the :class:`HistoryCSV` to write after the checkpoint (the
            chief's), or None.
    """

    def __init__(self, checkpoints, guard, history=None):
        super().__init__()
        self._checkpoints = checkpoints
        self._guard = guard
        self._history = history

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if (self._guard.tripped_at is not None or not is_finite(logs.get("loss"))
                or not all_finite(self.model)):
            if self._guard.tripped_at is None:
                self._guard.tripped_at = (epoch, None)
            self.model.stop_training = True
            return
        self._checkpoints.save(epoch, logs)
        if self._history is not None:
            # After the checkpoint: history.csv never lists an epoch a resume would redo.
            with writing(self._history.path, f"the history row of epoch {epoch + 1}"):
                self._history.on_epoch_end(epoch, logs)
