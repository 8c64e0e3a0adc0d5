"""The epoch checkpoints of a run: written after every good epoch, restored on resume.

:class:`RunCheckpoints` is what the Trainer calls: one object per run over
either store,

* TensorFlow: ``checkpoints/ckpt-N.*`` (``tf.train.Checkpoint`` of the model's
  object graph, the optimizer, the epoch and the best score; checkpoints of
  keras-dpn 0.1.0, which held ``model.weights`` as a flat list, still read);
* JAX / PyTorch: ``checkpoints/ckpt-N.weights.h5`` (:class:`WeightsCheckpoints`:
  a compiled model's ``.weights.h5`` holds the optimizer's variables too),

plus ``checkpoints/state.json`` (architecture fingerprint, epoch, step, best
score: :func:`keras_dpn.training.run_folder.read_state` reads it) and the best
epoch's ``best.weights.h5`` / ``best.json``. Every file is written
atomically, and a failed write (full disk, read-only folder) is one
:class:`~keras_dpn.training.run_folder.RunFolderWriteError` line
(:func:`writing`), with the newest complete checkpoint kept.
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

from keras_dpn.core import optional as _optional
from keras_dpn.core.io_utils import atomic_file, atomic_path
from keras_dpn.training.run_folder import (
    BEST_JSON, BEST_WEIGHTS, CHECKPOINT_DIR, STATE_FILE, RunFolderWriteError,
    architecture_fingerprint)

# Imported on first use: the JAX / PyTorch checkpoints need no TensorFlow.
tf = _optional.LazyModule("tensorflow", "TensorFlow training (tf.train checkpoints)")

# keras-dpn 0.1.0 checkpointed `model.weights` as a flat list under this key.
LEGACY_WEIGHTS_KEY = "weights"
WEIGHTS_CHECKPOINT_RE = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


class ArchitectureMismatchError(ValueError):
    """Raised when a checkpoint was written for a different model."""


def is_finite(value):
    """False only for a number that is NaN or infinite (anything else is not a loss)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def all_finite(model):
    """True when every trainable weight of ``model`` is finite."""
    return all(np.isfinite(keras.ops.convert_to_numpy(v)).all() for v in model.trainable_weights)


def write_json(path, obj):
    """Writes ``obj`` as indented, sorted JSON, atomically."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


@contextlib.contextmanager
def writing(path, what):
    """Turns an I/O failure of the block (``OSError``, or TensorFlow's error for a
    checkpoint or summary write) into one :class:`RunFolderWriteError` line.

    Args:
        path: the file or folder written (named in the error; HDF5 files left
            open under it are closed).
        what: what the block writes, e.g. ``"the checkpoint of epoch 3"``.
    """
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


class _Scalar:
    """A Python number with the ``numpy()`` / ``assign()`` of the tf.Variable it stands for."""

    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value

    def assign(self, value):
        self.value = value


class WeightsCheckpoints:
    """Epoch checkpoints of the JAX and PyTorch backends: ``ckpt-N.weights.h5``.

    A compiled model's ``.weights.h5`` holds its variables and its
    optimizer's (Adam moments, step counter), on every backend. Each file is
    written atomically, then ``state.json`` names it (with the epoch and the
    best score): a kill between the two leaves the previous state naming a
    complete file. The newest ``max_to_keep`` files are kept.

    Args:
        model: the compiled model.
        directory: the checkpoint folder.
        max_to_keep: how many files :meth:`prune` keeps (at least 1).
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


class RunCheckpoints:
    """The checkpoints of one run: the epoch store, ``state.json`` and the best weights.

    Create it inside the strategy's scope, once the model is compiled and
    the optimizer built (its slots must exist before a restore).

    Args:
        model: the model being trained.
        optimizer: its (built) optimizer.
        output_dir: the run folder.
        save_dir: where this worker writes its checkpoints: the run's
            ``checkpoints/`` on the chief, a temporary copy on the other
            workers of a multi-worker run (every worker takes part in a save).
        max_to_keep: number of epoch checkpoints kept.
        monitor: epoch-log key that selects the best checkpoint.
        monitor_mode: ``"max"`` or ``"min"``.
        chief: whether this worker writes the run folder.
    """

    def __init__(self, model, optimizer, output_dir, save_dir, max_to_keep, monitor="val_AP",
                 monitor_mode="max", chief=True):
        self.model, self.optimizer = model, optimizer
        self.output_dir = output_dir
        self.directory = os.path.join(output_dir, CHECKPOINT_DIR)
        self.save_dir = save_dir
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.chief = chief
        self.backend = keras.backend.backend()
        self.tf_checkpoints = self.backend == "tensorflow"
        if not self.tf_checkpoints:
            # The epoch and best score live in state.json; the weights files
            # hold the model and the optimizer.
            self.epoch_var, self.best_var = _Scalar(0), _Scalar(np.nan)
            self._manager = WeightsCheckpoints(model, save_dir, max_to_keep)
            return
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_var = tf.Variable(np.nan, dtype=tf.float64, trainable=False, name="best")
        # The model's object graph: every layer, the DPM's blocks included
        # (they are attributes of the DPM, see models/layers.py), with its BN
        # moving statistics.
        self._checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                               epoch=self.epoch_var, best=self.best_var)
        self._manager = tf.train.CheckpointManager(self._checkpoint, save_dir,
                                                   max_to_keep=max_to_keep)

    @property
    def best_weights_path(self):
        return os.path.join(self.output_dir, BEST_WEIGHTS)

    # -- reading -----------------------------------------------------------------
    def latest(self, state):
        """Path of the newest complete checkpoint, or None.

        Args:
            state: the run's ``state.json`` (``read_state``), or None.
        """
        if self.tf_checkpoints:
            return tf.train.latest_checkpoint(self.directory)
        return self._manager.latest(state)

    def check_architecture(self, path, state):
        """Refuses a checkpoint written for another model, before anything is restored.

        Raises:
            ArchitectureMismatchError: the fingerprints differ.
        """
        expected = architecture_fingerprint(self.model)
        found = (state or {}).get("architecture")
        if found is None:
            found = self._fingerprint_from_checkpoint(path)
        if (found.get("sha256_16") != expected["sha256_16"]
                or found.get("num_weights") != expected["num_weights"]):
            raise ArchitectureMismatchError(
                f"The checkpoint in {self.directory} was written for another architecture: "
                f"{found.get('name')} with {found.get('num_weights')} weights "
                f"({found.get('num_params')} values), but the model is {expected['name']} with "
                f"{expected['num_weights']} weights ({expected['num_params']} values). Use the "
                "matching --model or another --output; nothing was written.")

    def restore(self, path, state):
        """Restores ``path`` into the model and optimizer; returns the epochs it had done."""
        if self.tf_checkpoints:
            status = self._checkpoint_for(path).restore(path)
            # Fails if any variable of the model (BN statistics included) or the
            # optimizer has no value in the checkpoint.
            status.assert_existing_objects_matched()
        else:
            self._manager.restore(path)
            # Keras only warns when it skips the optimizer's variables: check the step.
            step = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
            if step != int(state.get("step", step)):
                raise ValueError(
                    f"{path} did not restore the optimizer state (step {step}, state.json: "
                    f"{state['step']}); nothing was written. Received: output={self.output_dir!r}")
            self.epoch_var.assign(int(state["epoch"]))
            self.best_var.assign(np.nan if state.get("best") is None else float(state["best"]))
        return int(self.epoch_var.numpy())

    def restore_newest(self, state):
        """Puts the newest checkpoint's weights back (after a divergence); returns its path."""
        latest = self.latest(state)
        if latest is not None and self.tf_checkpoints:
            self._checkpoint_for(latest).restore(latest).expect_partial()
        elif latest is not None:
            self._manager.restore(latest)
        return latest

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
                                   optimizer=self.optimizer, epoch=self.epoch_var,
                                   best=self.best_var)

    def _fingerprint_from_checkpoint(self, path):
        prefix = f"{LEGACY_WEIGHTS_KEY}/" if self._legacy_layout(path) else "model/"
        shapes = [s for n, s in tf.train.list_variables(path)
                  if n.startswith(prefix) and n.endswith("VARIABLE_VALUE")]
        own = [tuple(v.shape) for v in self.model.weights]
        match = sorted(map(tuple, shapes)) == sorted(own)
        return {"name": "unknown", "num_weights": len(shapes),
                "num_params": int(sum(np.prod(s) for s in shapes)),
                "sha256_16": architecture_fingerprint(self.model)["sha256_16"] if match else "?"}

    # -- writing -----------------------------------------------------------------
    def save(self, epoch, logs):
        """Checkpoint after ``epoch`` (0-based) finished; best weights when improved.

        Raises:
            RunFolderWriteError: the folder cannot be written; the newest
                complete checkpoint is kept.
        """
        try:
            with writing(self.output_dir, f"the checkpoint of epoch {epoch + 1}"):
                self._save(epoch, logs)
        except RunFolderWriteError:
            # tf.train.Checkpoint writes into ckpt-N_temp/ first and leaves it on failure.
            for name in os.listdir(self.directory) if os.path.isdir(self.directory) else ():
                if name.endswith("_temp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
            raise

    def _save(self, epoch, logs):
        score = logs.get(self.monitor)
        improved = False
        if score is not None and is_finite(score):
            best = float(self.best_var.numpy())
            improved = math.isnan(best) or (score > best if self.monitor_mode == "max"
                                            else score < best)
        if improved and self.chief:
            # Best weights first: a kill before the checkpoint below re-runs this
            # epoch, which at worst rewrites the same file.
            with atomic_path(self.best_weights_path) as tmp:
                self.model.save_weights(tmp)
            write_json(os.path.join(self.output_dir, BEST_JSON),
                       {"epoch": epoch + 1, self.monitor: float(score),
                        "logs": {k: float(v) for k, v in logs.items() if is_finite(v)}})
        if improved:
            self.best_var.assign(float(score))
        self.epoch_var.assign(epoch + 1)
        path = self._manager.save(checkpoint_number=epoch + 1)
        if self.chief:
            write_json(os.path.join(self.directory, STATE_FILE), {
                "epoch": epoch + 1,
                "step": int(self.optimizer.iterations.numpy()),
                "checkpoint": os.path.basename(path),
                "best": None if math.isnan(float(self.best_var.numpy()))
                else float(self.best_var.numpy()),
                "monitor": self.monitor,
                "architecture": architecture_fingerprint(self.model),
                "backend": self.backend,
                "logs": {k: float(v) for k, v in logs.items() if is_finite(v)},
            })
            if not self.tf_checkpoints:
                # Only now: until state.json names the new file, the old ones are the state.
                self._manager.prune()
        else:
            shutil.rmtree(os.path.dirname(self.save_dir), ignore_errors=True)
