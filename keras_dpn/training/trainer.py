"""The training loop: :class:`Trainer` builds, restores, trains and checkpoints a model.

:class:`Trainer` builds the model inside the strategy's scope, restores the
last checkpoint (refusing one written for another architecture before
anything is touched), trains, checkpoints every epoch, keeps the best
checkpoint by ``val_AP`` and stops cleanly on a NaN loss. What it runs on
lives beside it, each usable alone:

* :mod:`keras_dpn.training.strategies` -- :func:`get_strategy` (``"mirrored"``,
  ``"multi_worker"``, ``"default"``), :func:`is_chief`;
* :mod:`keras_dpn.training.reproducibility` -- seeds, deterministic ops, the
  reference head initialization;
* :mod:`keras_dpn.training.precision` -- mixed precision policies;
* :mod:`keras_dpn.training.schedules` -- :class:`EpochPiecewiseSchedule`, the
  paper's step schedule in epochs, computed from the optimizer's step counter
  (a resumed run gets exactly the learning rate of the uninterrupted one);
* :mod:`keras_dpn.training.checkpoints` -- the epoch checkpoints, ``state.json``
  and the best weights;
* :mod:`keras_dpn.training.run_callbacks` -- NaN guard, ``history.csv``,
  TensorBoard scalars, the epoch checkpoint;
* :mod:`keras_dpn.training.run_folder` -- the run folder's file names,
  ``run_config.json``, its lock.

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
:class:`~keras_dpn.training.strategies.KerasDistribution` (``"mirrored"``:
``keras.distribution.DataParallel`` over the local devices on JAX, one device
on PyTorch; ``"multi_worker"`` is TensorFlow-only), and the epoch checkpoints
are Keras ``.weights.h5`` files, which hold the optimizer's variables as well
as the model's. The training data may be a ``tf.data.Dataset`` (Keras feeds it
to every backend when TensorFlow is installed) or a ``keras.utils.PyDataset``
such as :class:`keras_dpn.data.PersonCrops` (no TensorFlow needed).

Output folder layout (everything written atomically; a kill at any moment
leaves the previous epoch's checkpoint intact)::

    OUTPUT/
      checkpoints/ckpt-N.*, checkpoints/checkpoint   last epochs (tf.train.Checkpoint)
      checkpoints/ckpt-N.weights.h5   instead, on JAX / PyTorch (model + optimizer)
      checkpoints/state.json    architecture fingerprint, epoch, step, best score
      best.weights.h5, best.json   weights of the best epoch by ``monitor``
      logs/                     TensorBoard event files
      history.csv               one row per epoch (loss, lr, val_AP, ...)
      run_config.json           builder arguments, keypoint set, data, settings (keras_dpn.hub.publish)
      .lock                     held while a run trains (keras_dpn.training.run_folder)

One run owns the folder (``.lock``), ``resume`` refuses settings that differ
from ``run_config.json``, a deterministic resume continues the input order
bit-identically, and a failed write (full disk) ends the run in one line with
``history.csv`` listing only checkpointed epochs: docs/run-folder.md.

Example:
>>> import tempfile, numpy as np, tensorflow as tf, keras_dpn
>>> from keras_dpn.training.trainer import Trainer
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
import os
import sys

import keras

from keras_dpn.core import optional as _optional
from keras_dpn.training import run_folder
from keras_dpn.training.checkpoints import RunCheckpoints, writing
from keras_dpn.training.precision import precision_policy, resolve_precision
from keras_dpn.training.reproducibility import configure_reproducibility
from keras_dpn.training.run_callbacks import (EpochCheckpoint, HistoryCSV, NaNGuard,
                                              ScalarSummaries)
from keras_dpn.training.schedules import EpochPiecewiseSchedule, learning_rate_at
from keras_dpn.training.strategies import get_strategy, is_chief, is_multi_worker

# The commands, benchmarks and tests reach these through this module
# (`from keras_dpn.training import trainer as training`); they live where named.
from keras_dpn.training.checkpoints import ArchitectureMismatchError  # noqa: F401 (raised by fit)
from keras_dpn.training.run_folder import RunFolderWriteError  # noqa: F401 (raised by fit)
from keras_dpn.training.run_folder import (  # noqa: F401
    BEST_WEIGHTS, CHECKPOINT_DIR, HISTORY_CSV, LOG_DIR, RUN_CONFIG, read_state, record_run)

# Imported on first use: the JAX / PyTorch path needs no TensorFlow.
tf = _optional.LazyModule("tensorflow", "TensorFlow training (the tf.distribute loop)")

LOOPS = ("auto", "fit", "custom")


class TrainingDivergedError(RuntimeError):
    """Raised when the loss becomes NaN or infinite.

    The last good checkpoint is left on disk untouched and restored into the
    model before this is raised.
    """


def _is_tf_dataset(dataset):
    # Checked without importing TensorFlow: a tf.data.Dataset exists only if it is imported.
    tf_module = sys.modules.get("tensorflow")
    return tf_module is not None and isinstance(dataset, tf_module.data.Dataset)


def _check_arguments(output_dir, epochs, steps_per_epoch, loop, jit_compile, monitor_mode,
                     seed, deterministic):
    """The :class:`Trainer` arguments it can check alone, before any strategy or seed."""
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
    if jit_compile not in (True, False, "auto"):
        raise ValueError(
            "`jit_compile` must be True, False or 'auto'. "
            f"Received: jit_compile={jit_compile!r}")
    if deterministic and seed is None:
        raise ValueError(
            "Deterministic mode needs a seed. "
            f"Received: seed={seed!r}, deterministic={deterministic!r}")


class Trainer:
    """Trains a heatmap model with checkpoints, resume, best-model tracking and a NaN guard.

    Args:
        model_fn: zero-argument callable returning an uncompiled Keras model.
            Called inside the strategy's scope and the precision policy.
        output_dir: folder for checkpoints, logs, history and best weights.
        strategy: a name for :func:`get_strategy` or a strategy object.
        loss: a Keras loss (default ``keras_dpn.training.losses.JointsMSE()``). It is
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
            (what ``keras-dpn publish`` reads; :mod:`keras_dpn.hub.publish`).
    """

    def __init__(self, model_fn, output_dir, strategy="mirrored", loss=None,
                 learning_rate=1e-3, lr_boundaries=(90, 120), lr_factor=0.1, epochs=140,
                 steps_per_epoch=None, jit_compile=False, mixed_precision=False, loop="auto",
                 monitor="val_AP", monitor_mode="max", max_to_keep=3, tensorboard=True,
                 verbose=1, seed=None, deterministic=False, run_info=None):
        _check_arguments(output_dir, epochs, steps_per_epoch, loop, jit_compile,
                         monitor_mode, seed, deterministic)
        self.output_dir = os.path.abspath(os.fspath(output_dir))
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
        if self.loop == "custom" and self.backend != "tensorflow":
            _optional.require_tensorflow_backend(
                "loop='custom' (the tf.distribute training loop)",
                hint="Use loop='auto' or 'fit'.")
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
        self.checkpoints = None  # RunCheckpoints, once fit() builds the model
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
        from keras_dpn.training.losses import JointsMSE  # the data pipeline's target convention
        return JointsMSE()

    def _build(self, steps_per_epoch):
        """Model, optimizer (built, so its slots exist before a restore) and checkpoints."""
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
            # Inside the scope: the epoch and best-score variables are the strategy's.
            self.checkpoints = RunCheckpoints(
                self.model, self.optimizer, self.output_dir, self._save_dir(), self.max_to_keep,
                monitor=self.monitor, monitor_mode=self.monitor_mode, chief=self.chief)

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
        latest = self.checkpoints.latest(state)
        if latest is None:
            return 0
        if not resume:
            epoch = state["epoch"] if state else "?"
            raise FileExistsError(
                f"{self.output_dir} already holds a training run (checkpoint after epoch "
                f"{epoch}). Resume it (resume=True, --resume) or choose another output folder; "
                "nothing was written.")
        self.checkpoints.check_architecture(latest, state)
        self._check_resume_settings()
        epoch = self.checkpoints.restore(latest, state)
        if self.verbose and self.chief:
            print(f"Resumed from {latest}: {epoch} epoch(s) done, optimizer step "
                  f"{int(self.optimizer.iterations.numpy())}, "
                  f"lr {learning_rate_at(self.optimizer):g}.")
        return epoch

    def _check_resume_settings(self):
        """Refuses settings that differ from the run's ``run_config.json`` (see
        :data:`keras_dpn.training.run_folder.RESUME_MAY_CHANGE`), before anything is written."""
        path = os.path.join(self.output_dir, RUN_CONFIG)
        if not os.path.isfile(path):
            return  # a run of keras-dpn 0.1, or a worker that does not see the chief's files
        recorded = run_folder.read_run_config(self.output_dir)
        run_folder.check_resume_settings(recorded, run_folder.run_record(trainer=self),
                                         self.output_dir)

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
                (:class:`keras_dpn.training.run_folder.RunFolderLockedError`).
            keras_dpn.training.run_folder.ResumeSettingsError: ``resume`` with settings
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
        train_dataset = self._continue_data(train_dataset, initial_epoch, steps, is_tf_data)
        guard = NaNGuard(self.optimizer)
        cbs = self._callbacks(callbacks, guard, initial_epoch)
        os.makedirs(self.output_dir, exist_ok=True)
        if self.chief:
            # The builder arguments `keras-dpn publish` rebuilds the model from.
            with writing(os.path.join(self.output_dir, RUN_CONFIG), "the run's settings"):
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

    def _continue_data(self, train_dataset, initial_epoch, steps, is_tf_data):
        """The training data, endless and positioned where epoch ``initial_epoch`` starts."""
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
        return train_dataset

    def _callbacks(self, callbacks, guard, initial_epoch):
        """The user's callbacks between the run's own (:mod:`keras_dpn.training.run_callbacks`)."""
        cbs = list(callbacks)
        history = None
        if self.chief:
            history = HistoryCSV(os.path.join(self.output_dir, HISTORY_CSV), initial_epoch,
                                 read_state(self.output_dir))
            if self.tensorboard and _optional.is_installed("tensorflow"):
                cbs.append(ScalarSummaries(os.path.join(self.output_dir, LOG_DIR)))
            elif self.tensorboard and self.verbose:
                print("TensorBoard logs need TensorFlow (not installed): skipped; "
                      f"{HISTORY_CSV} has the same values.")
        # Guard first (stops at the bad batch), checkpoint last (sees val_AP).
        # history.csv is written by the checkpoint callback, after the checkpoint.
        return [guard] + cbs + [EpochCheckpoint(self.checkpoints, guard, history)]

    def _diverged(self, where, reason=None):
        latest = self.checkpoints.restore_newest(read_state(self.output_dir))
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
