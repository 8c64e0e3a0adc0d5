"""Keras callbacks: COCO keypoint AP and MPII PCKh in the epoch logs.

:class:`COCOEvaluationCallback` predicts the evaluation dataset (with the flip
test), runs the COCO evaluation and writes ``val_AP``, ``val_AP50``,
``val_AP75``, ``val_APm``, ``val_APl`` and ``val_AR`` into the epoch logs, so
that every callback *after it* sees them: ``ModelCheckpoint(monitor="val_AP",
mode="max")``, ``EarlyStopping(monitor="val_AP", mode="max")``, TensorBoard
(which draws them under its validation run as ``epoch_AP`` ...), CSVLogger and
the ``History`` that ``model.fit`` returns. :class:`MPIIEvaluationCallback`
does the same with ``val_PCKh`` and ``val_PCKh_0.1``.

**Order matters.** Keras calls ``on_epoch_end`` of the callbacks in the order
of the ``callbacks=[...]`` list, all with the same logs dict; list these
callbacks *before* ModelCheckpoint, EarlyStopping, TensorBoard and CSVLogger.
Listed after them, those run before ``val_AP`` exists and warn that the
monitored metric is not available. (``History`` and the progress bar are
appended by Keras at the end, so they always see it.)

**Pass ``mode="max"``** to ModelCheckpoint / EarlyStopping / ReduceLROnPlateau
on ``val_AP``: with ``mode="auto"`` Keras 3 cannot infer the direction of a
metric that is not one of the model's compiled metrics, and raises a
``ValueError`` at the end of the first epoch.

**A diverged model stops the run.** Predictions that are NaN or infinite
(the evaluation refuses to score them, see
:class:`~keras_dpn.evaluation.NonFinitePredictionError`) raise
:class:`keras_dpn.training.trainer.TrainingDivergedError` from ``on_epoch_end``,
naming the epoch, how many predictions and which images: ``fit`` stops there,
before the callbacks listed after this one (checkpoints) see the epoch. The
training loss can stay finite while the evaluation diverges (BatchNorm moving
statistics are not part of the loss), so this is the only place it shows.
"""

import os

import keras
import numpy as np

from keras_dpn.evaluation import mpii
from keras_dpn.evaluation.coco import METRIC_NAMES, COCOEvaluator
from keras_dpn.evaluation.predict import NonFinitePredictionError, predict_keypoints
from keras_dpn.core.keypoints import COCO_17, MPII_16, get_keypoint_spec
from keras_dpn.training.trainer import TrainingDivergedError

DEFAULT_LOGGED = ("AP", "AP50", "AP75", "APm", "APl", "AR")


class _PeriodicEvaluation(keras.callbacks.Callback):
    """Runs ``evaluate(epoch)`` every ``every`` epochs and the last one; logs its metrics."""

    main_metric = None

    def __init__(self, eval_dataset, every, keypoint_spec, codec, flip_test, logged, prefix,
                 steps, verbose):
        super().__init__()
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"`every` must be a positive integer. Received: every={every!r}")
        if eval_dataset is None:
            raise ValueError("`eval_dataset` is required. Received: eval_dataset=None")
        self.eval_dataset = eval_dataset
        self.every = every
        self.keypoint_spec = get_keypoint_spec(keypoint_spec)
        self.codec = codec
        self.flip_test = flip_test
        self.logged = tuple(logged)
        self.prefix = prefix
        self.steps = steps
        self.verbose = verbose
        self.history = []
        self.best = float("-inf")
        self.last_file = None

    def _due(self, epoch):
        last = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def evaluate(self, epoch=None):
        raise NotImplementedError

    def on_epoch_end(self, epoch, logs=None):
        if not self._due(epoch):
            return
        try:
            stats = self.evaluate(epoch)
        except NonFinitePredictionError as e:
            if self.model is not None:
                self.model.stop_training = True
            raise TrainingDivergedError(
                f"Training diverged: the evaluation after epoch {epoch + 1} got non-finite "
                f"predictions. {e}") from e
        self.history.append((epoch, stats))
        self.best = max(self.best, stats[self.main_metric])
        if logs is not None:
            for name in self.logged:
                logs[self.prefix + name] = stats[name]
        if self.verbose:
            where = f" -> {self.last_file}" if self.last_file else ""
            summary = " - ".join(f"{self.prefix}{k}: {stats[k]:.4f}" for k in self.logged)
            print(f"Epoch {epoch + 1}: {summary}{where}", flush=True)


class COCOEvaluationCallback(_PeriodicEvaluation):
    """Evaluates COCO keypoint AP every ``every`` epochs and logs ``val_AP`` etc.

    Args:
        eval_dataset: ``(images, meta)`` batches of person crops, e.g.
            ``keras_dpn.data.build_dataset(pattern, training=False)``;
            ``meta`` holds ``image_id``, ``center``, ``scale`` and ``score``.
        annotation_file: COCO keypoint ground truth of the same images.
        every: evaluate after every ``every``-th epoch (1: each epoch). The
            last epoch of ``fit`` is always evaluated. On other epochs the
            logs carry no ``val_AP`` (monitors skip those epochs with a
            warning).
        keypoint_spec: keypoint set (flip pairs, OKS sigmas).
        codec: :class:`~keras_dpn.core.codec.HeatmapCodec`; by default built from
            the model's input and output sizes.
        flip_test: average with the flipped input's heatmaps (reference).
        output_dir: where the results JSON is written (atomically); ``None``
            writes none. Usually the training log folder.
        results_name: file name in ``output_dir``; ``{epoch}`` (1-based) is
            filled in, so ``"results_{epoch:03d}.json"`` keeps one per
            evaluation while the default overwrites the last.
        prefix: prefix of the log keys.
        logged: which metrics go into the logs (of ``AP, AP50, AP75, APm,
            APl, AR, AR50, AR75, ARm, ARl``).
        rescore, vis_threshold, nms_threshold: see
            :class:`~keras_dpn.evaluation.COCOEvaluator`.
        steps: evaluate only this many batches: a quick subset. The AP is
            then computed on the images those batches cover (pycocotools'
            ``imgIds``), not on the whole annotation file, where every image
            left out would count its people as missed. (Batches follow the
            dataset's order; the last image may be cut.)
        verbose: 1 shows a progress bar while predicting and a summary line.

    Attributes:
        history: list of ``(epoch, metrics dict)`` of every evaluation.
        best: best AP so far (``-inf`` before the first evaluation).

    Example:
    >>> import os, tempfile, keras, keras_dpn
    >>> pattern = sample_shards()  # the bundled sample's shards (build_coco_shards)
    >>> size = dict(input_size=(64, 48), verbose=False)
    >>> train_ds = keras_dpn.data.build_dataset(pattern, batch_size=8, **size)
    >>> val_ds = keras_dpn.data.build_dataset(pattern, training=False, batch_size=32, **size)
    >>> model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
    >>> model.compile(optimizer="adam", loss=keras_dpn.JointsMSE())
    >>> with tempfile.TemporaryDirectory() as logs:
    ...     cb = COCOEvaluationCallback(
    ...         val_ds, "sample_data/coco/annotations/person_keypoints_sample.json",
    ...         output_dir=logs, verbose=0)
    ...     history = model.fit(train_ds, epochs=1, steps_per_epoch=2, shuffle=False,
    ...                         verbose=0, callbacks=[
    ...         cb,  # first: the callbacks below read val_AP from the logs
    ...         keras.callbacks.ModelCheckpoint(os.path.join(logs, "best.keras"),
    ...                                         monitor="val_AP", mode="max",
    ...                                         save_best_only=True)])
    ...     print(sorted(os.listdir(logs)))
    ['best.keras', 'keypoints_val_results.json']
    >>> 0.0 <= history.history["val_AP"][0] <= 1.0
    True
    """

    main_metric = "AP"

    def __init__(self, eval_dataset, annotation_file, every=1, keypoint_spec=COCO_17,
                 codec=None, flip_test=True, output_dir=None,
                 results_name="keypoints_val_results.json", prefix="val_",
                 logged=DEFAULT_LOGGED, rescore=True, vis_threshold=0.2, nms_threshold=0.9,
                 steps=None, verbose=1):
        unknown = [m for m in logged if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(
                f"`logged` may name only {list(METRIC_NAMES)}. Received: logged={logged!r}")
        super().__init__(eval_dataset, every, keypoint_spec, codec, flip_test, logged, prefix,
                         steps, verbose)
        self.results_name = results_name
        # Built now so that a wrong annotation path fails before training starts.
        self.evaluator = COCOEvaluator(annotation_file, keypoint_spec=self.keypoint_spec,
                                       output_dir=output_dir, rescore=rescore,
                                       vis_threshold=vis_threshold, nms_threshold=nms_threshold)

    def evaluate(self, epoch=None):
        """Runs prediction and COCO evaluation now; returns the metrics dict.

        Raises:
            NonFinitePredictionError: NaN or infinite predictions (called by
                ``fit``, this becomes a ``TrainingDivergedError``).
        """
        out = predict_keypoints(self.model, self.eval_dataset, codec=self.codec,
                                keypoint_spec=self.keypoint_spec, flip_test=self.flip_test,
                                steps=self.steps, verbose=self.verbose)
        self.evaluator.reset()
        self.evaluator.results_name = self.results_name.format(epoch=(epoch or 0) + 1)
        # Arrays straight into the evaluator: no per-person dicts (104k at COCO scale).
        self.evaluator.update(out["image_id"], out["keypoints"], out["center"], out["scale"],
                              out["score"])
        stats = self.evaluator.evaluate(
            image_ids=None if self.steps is None else np.unique(out["image_id"]))
        self.last_file = self.evaluator.results_file
        return stats


class MPIIEvaluationCallback(_PeriodicEvaluation):
    """Evaluates MPII PCKh every ``every`` epochs and logs ``val_PCKh`` and ``val_PCKh_0.1``.

    The values are percentages, the standard mean without pelvis and thorax
    (see :mod:`keras_dpn.evaluation.mpii`). The evaluation dataset's meta
    ``person_id`` gives each prediction's row of the ground truth, so a part
    of the validation split (the bundled sample) is scored on its own rows;
    without ``person_id`` the predictions must cover the whole split in order.

    Args:
        eval_dataset: MPII ``(images, meta)`` batches
            (``build_dataset(..., dataset="mpii", training=False)``).
        ground_truth_file: ``gt_valid.mat``.
        every: evaluate after every ``every``-th epoch, and the last one.
        keypoint_spec: the 16-joint MPII spec (flip pairs).
        codec, flip_test, steps, verbose: as :class:`COCOEvaluationCallback`.
        output_dir: where the predictions go as a ``.mat`` (key ``preds``,
            1-based, rows sorted by ``person_id``; key ``person_id`` too);
            ``None`` writes none.
        results_name: file name in ``output_dir`` (``{epoch}`` is filled in).
        prefix: prefix of the log keys.

    Example, on the 5 people of the bundled MPII sample against the validation ground
    truth that the tests keep (``tests/data/mpii/gt_valid.mat``); one training step, so
    the PCKh is near 0:

    >>> import os, tempfile, keras, keras_dpn
    >>> from keras_dpn.data import build_dataset, build_mpii_shards
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = build_mpii_shards("sample_data/mpii/valid_sample.json", "sample_data/mpii/images",
    ...                           os.path.join(d, "mpii"), 1, progress=False, verbose=False)
    ...     size = dict(dataset="mpii", input_size=(64, 48), verbose=False)
    ...     train_ds = build_dataset(os.path.join(d, "mpii-*.tfrecord"), batch_size=4, **size)
    ...     val_ds = build_dataset(os.path.join(d, "mpii-*.tfrecord"), training=False,
    ...                            batch_size=8, **size)
    ...     model = keras_dpn.DPN1_32(input_shape=(64, 48, 3), num_keypoints=16)
    ...     model.compile(optimizer="adam", loss=keras_dpn.JointsMSE())
    ...     cb = MPIIEvaluationCallback(val_ds, "tests/data/mpii/gt_valid.mat", output_dir=d,
    ...                                 verbose=0)
    ...     best = keras.callbacks.ModelCheckpoint(os.path.join(d, "best.keras"),
    ...                                            monitor="val_PCKh", mode="max",
    ...                                            save_best_only=True)
    ...     # cb first: the checkpoint reads val_PCKh from the logs.
    ...     history = model.fit(train_ds, epochs=1, steps_per_epoch=1, shuffle=False,
    ...                         verbose=0, callbacks=[cb, best])
    ...     print(sorted(n for n in os.listdir(d) if not n.startswith("mpii")))
    ['best.keras', 'pred_valid.mat']
    >>> sorted(history.history), 0.0 <= history.history["val_PCKh"][0] <= 100.0
    (['loss', 'val_PCKh', 'val_PCKh_0.1'], True)
    """

    main_metric = "PCKh"

    def __init__(self, eval_dataset, ground_truth_file, every=1, keypoint_spec=MPII_16,
                 codec=None, flip_test=True, output_dir=None, results_name="pred_valid.mat",
                 prefix="val_", steps=None, verbose=1):
        super().__init__(eval_dataset, every, keypoint_spec, codec, flip_test,
                         ("PCKh", "PCKh_0.1"), prefix, steps, verbose)
        # Loaded now: a wrong path fails before training starts.
        self.ground_truth = mpii.load_ground_truth(ground_truth_file)
        n_gt = len(self.ground_truth["joint_names"])
        if self.keypoint_spec.num_keypoints != n_gt:
            raise ValueError(
                f"The ground truth has {n_gt} joints but the keypoint spec "
                f"{self.keypoint_spec.name!r} has {self.keypoint_spec.num_keypoints}. "
                f"Received: keypoint_spec={self.keypoint_spec.name!r}")
        self.output_dir = output_dir
        self.results_name = results_name
        self.result = None

    def evaluate(self, epoch=None):
        """Runs prediction and PCKh now; returns ``{"PCKh": ..., "PCKh_0.1": ...}``."""
        out = predict_keypoints(self.model, self.eval_dataset, codec=self.codec,
                                keypoint_spec=self.keypoint_spec, flip_test=self.flip_test,
                                steps=self.steps, verbose=self.verbose)
        preds, rows = out["keypoints"][..., :2], out.get("person_id")
        if rows is not None:
            order = np.argsort(rows, kind="stable")
            preds, rows = preds[order], rows[order]
        self.result = mpii.pckh(preds, self.ground_truth, thresholds=(0.5, 0.1), indices=rows)
        if self.output_dir is not None:
            path = os.path.join(self.output_dir, self.results_name.format(epoch=(epoch or 0) + 1))
            mpii.save_predictions(path, preds, person_id=rows)
            self.last_file = path
        return {"PCKh": self.result.mean[0.5], "PCKh_0.1": self.result.mean[0.1]}
