"""Top-down prediction over an evaluation dataset, with the flip test.

:func:`predict_keypoints` runs a heatmap model over the person crops of an
evaluation dataset (batches ``(images, meta)`` as built by
``keras_dpn.data.build_dataset(..., training=False)``), decodes each crop's
heatmaps to keypoints in original image pixels, and returns them as arrays in
dataset order (MPII PCKh reads these); :func:`predict_coco` returns one
COCO-style result per crop, ready for :class:`~keras_dpn.evaluation.COCOEvaluator`.

Flip test (the reference's ``TEST.FLIP_TEST`` with ``SHIFT_HEATMAP``): the
mirrored crops go through the model in the same batch as the crops, their
heatmaps are mirrored back with the left/right channels swapped and shifted
one pixel right (:func:`keras_dpn.core.codec.flip_back`), and the two heatmaps are
averaged before decoding.

Non-finite predictions (NaN or infinite keypoints or box scores; NaN heatmaps
decode to NaN scores: the mark of a diverged model) raise
:class:`NonFinitePredictionError` at the first batch that holds them, so no
metric is ever computed from them.
"""

import weakref

import numpy as np

from keras_dpn.core.codec import HeatmapCodec, merge_flip
from keras_dpn.core.keypoints import COCO_17, get_keypoint_spec

# One traced inference function per (model, flip settings): the evaluation
# callback calls predict_coco every epoch and must not retrace each time.
_INFER_CACHE = weakref.WeakKeyDictionary()


class NonFinitePredictionError(ValueError):
    """Predictions hold NaN or infinite values (usually a diverged model).

    A ``ValueError``: evaluation refuses them instead of scoring them. During
    training, the evaluation callbacks turn it into
    :class:`keras_dpn.training.trainer.TrainingDivergedError`.
    """


def check_finite(image_ids, keypoints, scores=None, what="predictions", id_name="image id(s)",
                 **extra):
    """Raises :class:`NonFinitePredictionError` if any prediction is not finite.

    Args:
        image_ids: ``(N,)`` image ids (or MPII ground-truth rows), named in the error.
        keypoints: ``(N, ...)`` per-prediction values (x, y, score).
        scores: optional ``(N,)`` per-prediction scores.
        what: how the error names the predictions.
        id_name: how the error names ``image_ids``.
        **extra: further ``(N, ...)`` arrays that must be finite (centers, scales).

    Example:
    >>> check_finite([7, 8], [[1.0, 2.0], [np.nan, 0.0]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    keras_dpn.evaluation.predict.NonFinitePredictionError: 1 of 2 predictions hold NaN ... image id(s) 8. ...
    """
    ids = np.asarray(image_ids).reshape(-1)
    n = ids.shape[0]
    bad = np.zeros(n, bool)
    fields = []
    named = {"keypoints": keypoints, "scores": scores, **extra}
    for name, values in named.items():
        if values is None:
            continue
        v = np.asarray(values, np.float64).reshape(n, -1)
        wrong = ~np.isfinite(v).all(axis=1)
        if wrong.any():
            fields.append(name)
            bad |= wrong
    if not bad.any():
        return
    bad_ids = list(dict.fromkeys(ids[bad].tolist()))
    shown = ", ".join(str(i) for i in bad_ids[:10])
    if len(bad_ids) > 10:
        shown += f" and {len(bad_ids) - 10} more"
    raise NonFinitePredictionError(
        f"{int(bad.sum())} of {n} {what} hold NaN or infinite values on {id_name} {shown}. "
        "The model has diverged (or its input is broken); no score is computed from "
        f"non-finite predictions. Received: non-finite {' and '.join(fields)}.")


def codec_for_model(model, sigma=2.0):
    """A :class:`~keras_dpn.core.codec.HeatmapCodec` matching the model's input and output sizes."""
    in_shape, out_shape = model.input_shape, model.output_shape
    if isinstance(out_shape, list):
        out_shape = out_shape[-1]
    if None in tuple(in_shape[1:3]) or None in tuple(out_shape[1:3]):
        raise ValueError(
            "Cannot infer the codec from a model with unknown spatial sizes; pass "
            f"`codec=HeatmapCodec(...)`. Received: model.input_shape={in_shape}, "
            f"model.output_shape={out_shape}")
    return HeatmapCodec(input_size=in_shape[1:3], heatmap_size=out_shape[1:3], sigma=sigma)


def _infer_fn(model, flip_index, flip_test, shift_heatmap):
    import keras
    if keras.backend.backend() != "tensorflow":
        return _infer_fn_numpy(model, flip_index, flip_test, shift_heatmap)
    import tensorflow as tf

    key = (None if flip_index is None else tuple(int(i) for i in flip_index),
           bool(flip_test), bool(shift_heatmap))
    per_model = _INFER_CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]

    # A weak reference: the cache entry must not keep its own key alive.
    model_ref = weakref.ref(model)

    def heatmaps_of(x):
        out = model_ref()(x, training=False)
        if isinstance(out, (list, tuple)):
            out = out[-1]  # multi-stage models: the last stage is the prediction
        return tf.cast(out, tf.float32)

    @tf.function(reduce_retracing=True)
    def infer(images):
        if not flip_test:
            return heatmaps_of(images)
        n = tf.shape(images)[0]
        both = heatmaps_of(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
        return merge_flip(both[:n], both[n:], flip_index, shift=shift_heatmap)

    per_model[key] = infer
    return infer


def _infer_fn_numpy(model, flip_index, flip_test, shift_heatmap):
    """JAX / PyTorch: Keras' compiled predict step on numpy crops, the flip merged in numpy."""
    import keras

    def infer(images):
        x = _numpy(images).astype(np.float32)
        n = len(x)
        if flip_test:
            x = np.concatenate([x, x[:, :, ::-1]], axis=0)
        out = model.predict_on_batch(x)
        if isinstance(out, (list, tuple)):
            out = out[-1]  # multi-stage models: the last stage is the prediction
        out = keras.ops.convert_to_numpy(out).astype(np.float32)
        if not flip_test:
            return out
        return merge_flip(out[:n], out[n:], flip_index, shift=shift_heatmap)

    return infer


def _numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def predict_keypoints(model, dataset, codec=None, keypoint_spec=COCO_17, flip_test=True,
                      shift_heatmap=True, steps=None, verbose=1):
    """Predicts keypoints in original image pixels for every crop of an evaluation dataset.

    Args:
        model: Keras model mapping ``(B, H, W, 3)`` crops to ``(B, h, w, K)``
            heatmaps.
        dataset: iterable (e.g. ``tf.data.Dataset``) of ``(images, meta)``
            batches; ``meta`` is a dict with ``image_id (B,)``, ``center (B, 2)``
            and ``scale (B, 2)`` (crop size in pixels), optionally ``score (B,)``
            (box score; 1 for ground-truth boxes) and ``person_id (B,)``.
        codec: the :class:`~keras_dpn.core.codec.HeatmapCodec`; by default one
            built from the model's input and output sizes.
        keypoint_spec: keypoint set (flip pairs for the flip test).
        flip_test: average with the mirrored crops' flipped-back heatmaps.
        shift_heatmap: shift the flipped-back heatmap one pixel, as the
            reference.
        steps: stop after this many batches (``None``: the whole dataset).
        verbose: 1 shows a progress bar, 2 one line when done.

    Returns:
        dict of numpy arrays in dataset order: ``keypoints`` float32
        ``(N, K, 3)`` (x, y, heatmap maximum; 0-based image pixels),
        ``image_id`` int64 ``(N,)``, ``center`` and ``scale`` ``(N, 2)``,
        ``score`` ``(N,)`` and, when the meta has it, ``person_id`` ``(N,)``.

    Raises:
        ValueError: if the dataset yields no batch, or the model's heatmaps
            do not have one channel per joint of ``keypoint_spec``.
        NonFinitePredictionError: (a ``ValueError``) at the first batch
            whose keypoints or box scores are NaN or infinite; it names how
            many and their image ids.

    Example, on the 5 people of the bundled MPII sample (an untrained tiny model: the
    shapes, not the accuracy):

    >>> import os, tempfile, keras_dpn
    >>> from keras_dpn.data import build_dataset, build_mpii_shards
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = build_mpii_shards("sample_data/mpii/valid_sample.json", "sample_data/mpii/images",
    ...                           os.path.join(d, "mpii"), 1, progress=False, verbose=False)
    ...     ds = build_dataset(os.path.join(d, "mpii-*.tfrecord"), dataset="mpii",
    ...                        training=False, batch_size=4, input_size=(64, 48), verbose=False)
    ...     model = keras_dpn.DPN1_32(input_shape=(64, 48, 3), num_keypoints=16)
    ...     out = predict_keypoints(model, ds, keypoint_spec="mpii", verbose=0)
    >>> out["keypoints"].shape, out["person_id"].shape
    ((5, 16, 3), (5,))
    """
    import keras

    spec = get_keypoint_spec(keypoint_spec)
    codec = codec_for_model(model) if codec is None else codec
    flip_index = spec.flip_index if flip_test else None
    infer = _infer_fn(model, flip_index, flip_test, shift_heatmap)

    target = steps
    if target is None and hasattr(dataset, "cardinality"):
        card = int(dataset.cardinality())
        target = card if card >= 0 else None  # -1 infinite, -2 unknown
    # verbose=2 (as in fit): one line at the end, no progress-bar escape codes.
    progbar = (keras.utils.Progbar(target, unit_name="batch", stateful_metrics=["people"],
                                   verbose=2 if verbose == 2 else 1)
               if verbose else None)

    parts = {k: [] for k in ("keypoints", "image_id", "center", "scale", "score", "person_id")}
    n_batches = n_people = 0
    for batch in dataset:
        if steps is not None and n_batches >= steps:
            break
        images, meta = batch[0], batch[1]
        heatmaps = _numpy(infer(images))
        if heatmaps.shape[-1] != spec.num_keypoints:
            raise ValueError(
                f"The model predicts {heatmaps.shape[-1]} heatmaps but the keypoint spec "
                f"{spec.name!r} has {spec.num_keypoints} joints. "
                f"Received: keypoint_spec={spec.name!r}")
        centers = _numpy(meta["center"]).reshape(-1, 2)
        scales = _numpy(meta["scale"]).reshape(-1, 2)
        image_ids = _numpy(meta["image_id"]).reshape(-1).astype(np.int64)
        b = len(image_ids)
        keypoints = codec.decode_to_image(heatmaps, centers, scales)
        scores = (_numpy(meta["score"]).reshape(-1) if "score" in meta
                  else np.ones(b, np.float32))
        # Checked per batch: a diverged model fails at its first batch, not
        # after predicting a whole validation set.
        check_finite(image_ids, keypoints, scores,
                     what=f"predictions of batch {n_batches + 1} (people {n_people + 1}-"
                          f"{n_people + b} of the dataset)")
        parts["keypoints"].append(keypoints)
        parts["image_id"].append(image_ids)
        parts["center"].append(centers)
        parts["scale"].append(scales)
        parts["score"].append(scores)
        if "person_id" in meta:
            parts["person_id"].append(_numpy(meta["person_id"]).reshape(-1).astype(np.int64))
        n_batches += 1
        n_people += b
        if progbar is not None:
            progbar.update(n_batches, values=[("people", n_people)], finalize=False)
    if progbar is not None:
        progbar.update(n_batches, values=[("people", n_people)], finalize=True)
    if n_batches == 0:
        raise ValueError(
            "The evaluation dataset yielded no batch: check its file pattern and that "
            f"its shards are not empty. Received: dataset={dataset!r}")
    if len(parts["person_id"]) != n_batches:
        del parts["person_id"]
    return {k: np.concatenate(v) for k, v in parts.items()}


def predict_coco(model, dataset, codec=None, keypoint_spec=COCO_17, flip_test=True,
                 shift_heatmap=True, steps=None, verbose=1, category_id=1):
    """Predicts every person crop of an evaluation dataset as COCO results.

    Runs :func:`predict_keypoints` (same arguments) and formats its output.

    Returns:
        List of dicts, one per crop: ``image_id``, ``category_id``,
        ``keypoints`` (flat ``[x, y, score] * K`` in image pixels),
        ``score`` (the box score, before any rescoring), ``center``, ``scale``.

    Raises:
        ValueError: if the dataset yields no batch, or the model's heatmaps
            do not have one channel per joint of ``keypoint_spec``.
        NonFinitePredictionError: (a ``ValueError``) at the first batch
            whose keypoints or box scores are NaN or infinite; it names how
            many and their image ids.

    Example:
    >>> import keras_dpn
    >>> from keras_dpn.evaluation import COCOEvaluator
    >>> pattern = sample_shards()  # the bundled sample's shards (build_coco_shards)
    >>> ds = keras_dpn.data.build_dataset(pattern, training=False, batch_size=32,
    ...                                   input_size=(64, 48), verbose=False)
    >>> model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))  # untrained: AP about 0
    >>> results = predict_coco(model, ds, verbose=0)
    >>> len(results), sorted(results[0])
    (124, ['category_id', 'center', 'image_id', 'keypoints', 'scale', 'score'])
    >>> ev = COCOEvaluator("sample_data/coco/annotations/person_keypoints_sample.json")
    >>> ev.add_results(results)
    >>> 0.0 <= ev.evaluate()["AP"] <= 1.0
    True
    """
    out = predict_keypoints(model, dataset, codec=codec, keypoint_spec=keypoint_spec,
                            flip_test=flip_test, shift_heatmap=shift_heatmap, steps=steps,
                            verbose=verbose)
    n = len(out["image_id"])
    # One tolist per array, not per person (104k people at COCO scale).
    kp = out["keypoints"].astype(np.float64).reshape(n, -1).tolist()
    centers = out["center"].astype(np.float64).tolist()
    scales = out["scale"].astype(np.float64).tolist()
    scores = out["score"].astype(np.float64).tolist()
    return [{"image_id": image_id, "category_id": int(category_id), "keypoints": kp[i],
             "score": scores[i], "center": centers[i], "scale": scales[i]}
            for i, image_id in enumerate(out["image_id"].tolist())]
