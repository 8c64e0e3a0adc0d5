"""COCO keypoint evaluation (OKS AP with pycocotools), as the top-down reference.

The evaluator collects one prediction per person box while the model runs
(:meth:`COCOEvaluator.update`, per batch), and evaluates once at the end
(:meth:`COCOEvaluator.evaluate`):

1. **rescoring**: each person's score becomes the box score times the mean of
   its keypoint scores above ``vis_threshold`` (0.2); 0 when none is above;
2. **OKS-NMS** per image at ``nms_threshold`` (0.9), with the keypoint set's
   OKS sigmas and the crop area (``scale_w * scale_h``, pixels) as the object
   area, as the reference does;
3. the results JSON is written atomically (``output_dir/results_name``);
4. pycocotools ``COCOeval(..., "keypoints")`` gives AP, AP50, AP75, APm, APl,
   AR, AR50, AR75, ARm, ARl.

:meth:`COCOEvaluator.evaluate_results` runs step 4 alone on a ready list of
COCO results, and gives exactly what pycocotools gives when called directly.

Bad input:

* results for image ids that are not in the annotation file: ``ValueError``
  naming them (pycocotools only says "Results do not correspond to current
  coco set");
* a result without ``image_id``, ``category_id``, ``keypoints`` or ``score``,
  an image id that is not an int (``"785"``, ``785.0``: pycocotools fails on
  them after the results file is written), a ``category_id`` other than the
  evaluated one (it would score AP 0.0 without a word), keypoints of the
  wrong length or that are not numbers, a score that is not a number: a
  one-line ``ValueError`` naming the result, before anything is written;
* a regular file where ``output_dir`` (or a folder above it) should be, or a
  folder that refuses new files: a ``ValueError`` naming it, when the
  evaluator is created;
* no results at all: a ``UserWarning`` and every metric 0.0 (the results JSON
  is still written, empty), so a monitor such as
  ``ModelCheckpoint(monitor="val_AP")`` keeps working; an empty *dataset* is
  an error earlier, in :func:`keras_dpn.evaluation.predict_coco`;
* NaN or infinite keypoints, scores, centers or scales:
  :class:`~keras_dpn.evaluation.NonFinitePredictionError` (a ``ValueError``)
  naming how many and on which images, raised by :meth:`COCOEvaluator.update`
  and :meth:`COCOEvaluator.evaluate_results` before anything is written.
  (pycocotools would score them: keypoints that are all NaN match every
  ground truth, AP 1.0.)
"""

import contextlib
import io
import json
import os
import warnings

import numpy as np

from keras_dpn.evaluation.predict import check_finite
from keras_dpn.core.io_utils import atomic_file, check_output_folder
from keras_dpn.core.keypoints import COCO_17, get_keypoint_spec

METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def _quiet(verbose):
    """pycocotools prints as it goes; keep stdout clean unless asked."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return _is_int(value) or isinstance(value, (float, np.floating))


def _short(value, limit=120):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def rescore(keypoints, box_scores, vis_threshold=0.2):
    """Box score times the mean keypoint score over keypoints above ``vis_threshold``.

    Args:
        keypoints: ``(N, K, 3)`` with the keypoint scores in the last column.
        box_scores: ``(N,)`` person box scores.
        vis_threshold: keypoint scores at or below it are left out of the mean.

    Returns:
        float64 ``(N,)``; 0 for a person with no keypoint above the threshold.

    Example:
    >>> kp = np.zeros((1, 3, 3)); kp[0, :, 2] = [0.9, 0.1, 0.5]
    >>> rescore(kp, [0.8]).round(4).tolist()
    [0.56]
    """
    kp = np.asarray(keypoints, np.float64)
    s = kp[..., 2]
    above = s > vis_threshold
    n = above.sum(axis=-1)
    mean = np.where(n > 0, (s * above).sum(axis=-1) / np.maximum(n, 1), 0.0)
    return mean * np.asarray(box_scores, np.float64).reshape(-1)


def oks_iou(keypoints, others, area, other_areas, sigmas, vis_threshold=None):
    """Object keypoint similarity of one pose with each of ``others``.

    The COCO OKS with the mean of the two objects' areas as the scale. With
    ``vis_threshold``, only joints whose score is above it in both poses
    count (the reference's intent; it is off for OKS-NMS by default).

    Args:
        keypoints: ``(K, 3)`` (x, y, score).
        others: ``(M, K, 3)``.
        area: area of ``keypoints``' object.
        other_areas: ``(M,)``.
        sigmas: ``(K,)`` OKS sigmas.
        vis_threshold: optional keypoint score threshold.

    Returns:
        float64 ``(M,)`` in [0, 1].

    Example:
    >>> k = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 1.0]])
    >>> oks_iou(k, k[None], 100.0, [100.0], [0.1, 0.1]).tolist()
    [1.0]
    """
    g = np.asarray(keypoints, np.float64)
    d = np.asarray(others, np.float64).reshape(-1, g.shape[0], 3)
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    scale = (area + np.asarray(other_areas, np.float64).reshape(-1)) / 2.0 + np.spacing(1)
    sq = (d[..., 0] - g[:, 0]) ** 2 + (d[..., 1] - g[:, 1]) ** 2
    e = sq / variances / scale[:, None] / 2.0
    if vis_threshold is None:
        return np.exp(-e).mean(axis=-1)
    use = (g[:, 2] > vis_threshold)[None, :] & (d[..., 2] > vis_threshold)
    n = use.sum(axis=-1)
    return np.where(n > 0, (np.exp(-e) * use).sum(axis=-1) / np.maximum(n, 1), 0.0)


def oks_nms(keypoints, scores, areas, threshold=0.9, sigmas=COCO_17.sigmas,
            vis_threshold=None):
    """Greedy non-maximum suppression by OKS (one image's poses).

    Takes the best-scored pose, drops every remaining pose whose OKS with it
    is above ``threshold``, and repeats.

    Args:
        keypoints: ``(N, K, 3)`` poses in image pixels.
        scores: ``(N,)`` pose scores.
        areas: ``(N,)`` object areas (pixels squared).
        threshold: OKS above which a lower-scored pose is suppressed.
        sigmas: ``(K,)`` OKS sigmas.
        vis_threshold: see :func:`oks_iou`.

    Returns:
        Indices of the kept poses, best first.

    Example:
    >>> k = np.zeros((3, 2, 3)); k[2, :, :2] = 50.0
    >>> oks_nms(k, [0.5, 0.9, 0.7], [100.0] * 3, sigmas=[0.1, 0.1])
    [1, 2]
    """
    kp = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    areas = np.asarray(areas, np.float64).reshape(-1)
    # Every pair's OKS at once (an image has tens of boxes), then the greedy
    # pass over it: one numpy call per image instead of one per kept pose.
    ovr = _pairwise_oks(kp, areas, sigmas, vis_threshold)
    suppressed = np.zeros(len(scores), bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= ~(ovr[i] <= threshold)
    return keep


def _pairwise_oks(kp, areas, sigmas, vis_threshold=None):
    """``(N, N)`` matrix of :func:`oks_iou` of every pose with every pose (same arithmetic)."""
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    scale = (areas[:, None] + areas[None, :]) / 2.0 + np.spacing(1)
    sq = ((kp[None, :, :, 0] - kp[:, None, :, 0]) ** 2
          + (kp[None, :, :, 1] - kp[:, None, :, 1]) ** 2)
    e = sq / variances / scale[..., None] / 2.0
    if vis_threshold is None:
        return np.exp(-e).mean(axis=-1)
    use = (kp[:, None, :, 2] > vis_threshold) & (kp[None, :, :, 2] > vis_threshold)
    n = use.sum(axis=-1)
    return np.where(n > 0, (np.exp(-e) * use).sum(axis=-1) / np.maximum(n, 1), 0.0)


def load_results(path):
    """Reads a COCO keypoint results JSON file (a list of result dicts).

    Raises:
        ValueError: the file is missing, not JSON (the error names the file,
            line and column) or not a list.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"The results file is not valid JSON: {e.msg} at line {e.lineno}, "
                         f"column {e.colno}. Received: results={path!r}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"Could not read the results file ({getattr(e, 'strerror', None) or e})."
                         f" Received: results={path!r}") from None
    if not isinstance(results, list):
        raise ValueError(f"A results file holds a JSON list of results. Received: results="
                         f"{path!r} with a top-level {type(results).__name__}")
    return results


class COCOEvaluator:
    """Collects top-down predictions per batch; evaluates COCO keypoint AP once.

    Args:
        annotation_file: COCO keypoint annotation JSON (ground truth).
        keypoint_spec: a :class:`~keras_dpn.core.keypoints.KeypointSpec` or its
            name; its sigmas drive OKS-NMS and, when they differ from the
            COCO ones, pycocotools' OKS too.
        output_dir: where the results JSON goes (next to the training logs);
            ``None`` writes nothing.
        results_name: file name of the results JSON in ``output_dir``.
        rescore: multiply box scores by the mean confident keypoint score.
        vis_threshold: keypoint score threshold of the rescoring.
        nms_threshold: OKS-NMS threshold; ``None`` turns OKS-NMS off.
        nms_vis_threshold: keypoint score threshold inside OKS-NMS (``None``:
            every joint counts, as the reference).
        category_id: COCO category of the results (1, person).
        verbose: print pycocotools' summary table.

    Example:
    >>> import json
    >>> preds = json.load(open("tests/data/coco/example_coco_preds.json"))  # 73 people
    >>> ev = COCOEvaluator("tests/data/coco/test_coco.json")
    >>> for batch in (preds[:32], preds[32:]):  # per batch: ids, (B, K, 3), centers, scales, scores
    ...     ev.update([p["image_id"] for p in batch],
    ...               np.array([p["keypoints"] for p in batch]).reshape(-1, 17, 3),
    ...               [p["center"] for p in batch],
    ...               [np.multiply(p["scale"], 200.0) for p in batch],  # file: pixels / 200
    ...               [p["score"] for p in batch])
    >>> round(ev.evaluate()["AP"], 4)
    0.8609
    """

    def __init__(self, annotation_file, keypoint_spec=COCO_17, output_dir=None,
                 results_name="keypoints_results.json", rescore=True, vis_threshold=0.2,
                 nms_threshold=0.9, nms_vis_threshold=None, category_id=1, verbose=False):
        annotation_file = os.fspath(annotation_file)
        if not os.path.isfile(annotation_file):
            raise ValueError(
                "`annotation_file` must be an existing COCO annotation JSON. "
                f"Received: annotation_file={annotation_file!r}")
        if nms_threshold is not None and not 0.0 < nms_threshold <= 1.0:
            raise ValueError("`nms_threshold` must be in (0, 1] or None. "
                             f"Received: nms_threshold={nms_threshold!r}")
        self.annotation_file = annotation_file
        self.keypoint_spec = get_keypoint_spec(keypoint_spec)
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        if self.output_dir is not None:
            check_output_folder(self.output_dir, "output_dir")
        self.results_name = results_name
        self.rescore = bool(rescore)
        self.vis_threshold = float(vis_threshold)
        self.nms_threshold = nms_threshold
        self.nms_vis_threshold = nms_vis_threshold
        self.category_id = int(category_id)
        self.verbose = verbose
        self.results_file = None
        self._coco = None
        self.reset()

    @property
    def coco(self):
        """The ground truth as a pycocotools ``COCO`` (loaded on first use)."""
        if self._coco is None:
            from pycocotools.coco import COCO
            try:
                with _quiet(self.verbose):
                    coco = COCO(self.annotation_file)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"Could not read the COCO annotation JSON ({e}). "
                                 f"Received: annotation_file={self.annotation_file!r}") from None
            self._coco = coco
            self._check_keypoint_count()
        return self._coco

    def _check_keypoint_count(self):
        cats = self._coco.loadCats(self._coco.getCatIds()) if self._coco.getCatIds() else []
        for cat in cats:
            if cat["id"] == self.category_id and "keypoints" in cat:
                if len(cat["keypoints"]) != self.keypoint_spec.num_keypoints:
                    raise ValueError(
                        f"The annotation file's category {self.category_id} has "
                        f"{len(cat['keypoints'])} keypoints but the keypoint spec "
                        f"{self.keypoint_spec.name!r} has {self.keypoint_spec.num_keypoints}. "
                        f"Received: annotation_file={self.annotation_file!r}")

    def reset(self):
        """Forgets every collected prediction."""
        self._image_ids, self._keypoints = [], []
        self._centers, self._scales, self._scores = [], [], []

    def __len__(self):
        return int(sum(len(x) for x in self._image_ids))

    def update(self, image_ids, keypoints, centers, scales, scores):
        """Adds one batch of per-box predictions.

        Args:
            image_ids: ``(B,)`` COCO image ids.
            keypoints: ``(B, K, 3)`` (x, y, score) in original image pixels.
            centers: ``(B, 2)`` crop centers (pixels).
            scales: ``(B, 2)`` crop sizes (pixels; their product is the area
                used by OKS-NMS).
            scores: ``(B,)`` person box scores (1 for ground-truth boxes).
        """
        ids = np.asarray(image_ids).reshape(-1).astype(np.int64)
        kp = np.asarray(keypoints, np.float64)
        k = self.keypoint_spec.num_keypoints
        b = ids.shape[0]
        if kp.shape != (b, k, 3):
            raise ValueError(
                f"`keypoints` must be (batch, {k}, 3) for the {self.keypoint_spec.name!r} "
                f"keypoint spec with batch {b}. Received: keypoints.shape={kp.shape}")
        centers = np.asarray(centers, np.float64).reshape(b, 2)
        scales = np.asarray(scales, np.float64).reshape(b, 2)
        scores = np.asarray(scores, np.float64).reshape(b)
        check_finite(ids, kp, scores, what="predictions given to COCOEvaluator",
                     centers=centers, scales=scales)
        self._image_ids.append(ids)
        self._keypoints.append(kp)
        self._centers.append(centers)
        self._scales.append(scales)
        self._scores.append(scores)

    def add_results(self, results):
        """Adds predictions given as COCO-style dicts (the output of ``predict_coco``).

        Each dict needs ``image_id``, ``keypoints`` (flat ``3K`` list),
        ``score`` (the box score), ``center`` and ``scale`` (pixels).
        """
        if not results:
            return
        k = self.keypoint_spec.num_keypoints
        self.update([r["image_id"] for r in results],
                    np.array([np.asarray(r["keypoints"], np.float64).reshape(k, 3)
                              for r in results]),
                    [r["center"] for r in results], [r["scale"] for r in results],
                    [r["score"] for r in results])

    def postprocess(self):
        """Rescoring and OKS-NMS of everything collected -> list of COCO results."""
        if not self._image_ids:
            return []
        ids = np.concatenate(self._image_ids)
        kp = np.concatenate(self._keypoints)
        centers = np.concatenate(self._centers)
        scales = np.concatenate(self._scales)
        box_scores = np.concatenate(self._scores)
        scores = rescore(kp, box_scores, self.vis_threshold) if self.rescore else box_scores
        areas = scales[:, 0] * scales[:, 1]
        # Group the predictions by image once (a scan per image is quadratic:
        # 5k images x 104k boxes at COCO scale); images in first-seen order,
        # each image's predictions in collection order.
        by_image = np.argsort(ids, kind="stable")
        unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        # Python lists once for all (one tolist per value costs seconds at COCO scale).
        kp_list, center_list = kp.reshape(len(kp), -1).tolist(), centers.tolist()
        scale_list, score_list = scales.tolist(), np.asarray(scores, np.float64).tolist()
        results = []
        for g in np.argsort(first, kind="stable"):
            image_id = int(unique[g])
            idx = by_image[starts[g]:starts[g] + counts[g]]
            if self.nms_threshold is not None:
                keep = oks_nms(kp[idx], scores[idx], areas[idx], self.nms_threshold,
                               self.keypoint_spec.sigmas, self.nms_vis_threshold)
                idx = idx[keep]
            for i in idx.tolist():
                results.append({
                    "image_id": image_id,
                    "category_id": self.category_id,
                    "keypoints": kp_list[i],
                    "score": score_list[i],
                    "center": center_list[i],
                    "scale": scale_list[i],
                })
        return results

    def evaluate(self, image_ids=None):
        """Rescoring, OKS-NMS, results JSON and pycocotools AP of everything collected.

        Args:
            image_ids: see :meth:`evaluate_results`.

        Returns:
            dict with ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl``
            (floats in [0, 1]).
        """
        return self.evaluate_results(self.postprocess(), image_ids=image_ids)

    def _validate(self, results):
        """One-line ``ValueError`` for anything pycocotools would crash on or score silently."""
        k = self.keypoint_spec.num_keypoints
        needed = ("image_id", "category_id", "keypoints", "score")
        for i, r in enumerate(results):
            if not isinstance(r, dict) or any(key not in r for key in needed):
                missing = [key for key in needed if key not in r] if isinstance(r, dict) \
                    else list(needed)
                raise ValueError(
                    f"Result {i} has no {', '.join(missing)} (each result is a dict with "
                    f"{', '.join(needed)}). Received: {_short(r)}")
            # pycocotools matches ids with ==, so "785" or 785.5 slips past a
            # set lookup and fails inside loadRes after the file is written.
            if not _is_int(r["image_id"]):
                raise ValueError(
                    f"Result {i}'s `image_id` must be an integer, as in the annotation file. "
                    f"Received: image_id={r['image_id']!r}")
            if not _is_number(r["score"]):
                raise ValueError(f"Result {i}'s `score` must be a number. "
                                 f"Received: score={r['score']!r}")
        known = set(self.coco.getImgIds())
        ids = {int(r["image_id"]) for r in results}
        unknown = sorted(ids - known)
        if unknown:
            shown = ", ".join(str(i) for i in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"{len(unknown)} image id(s) in the predictions or detections are not in the "
                f"annotation file {self.annotation_file!r}: {shown}{more}. Are the boxes "
                "(detection file) for another split? Received: image_ids=" + repr(unknown[:10]))
        # Results of another category match no ground truth: AP 0.0 without a word.
        categories = self.coco.getCatIds()
        if categories and self.category_id not in categories:
            raise ValueError(
                f"The annotation file {self.annotation_file!r} has no category "
                f"{self.category_id} (its categories: {categories}). "
                f"Received: category_id={self.category_id}")
        other = [r["category_id"] for r in results if r["category_id"] != self.category_id]
        if other:
            raise ValueError(
                f"{len(other)} of {len(results)} results have a `category_id` other than the "
                f"evaluated category {self.category_id} (they would match no ground truth: "
                f"AP 0). Received: category_id={other[0]!r}")
        for i, r in enumerate(results):
            kp = r["keypoints"]
            if not isinstance(kp, (list, tuple, np.ndarray)) or len(kp) != 3 * k:
                got = f"len(keypoints)={len(kp)}" if hasattr(kp, "__len__") \
                    else f"keypoints={kp!r}"
                raise ValueError(
                    f"Each result needs {3 * k} keypoint values ({k} joints of "
                    f"{self.keypoint_spec.name!r}). Received: {got} "
                    f"for image_id={r['image_id']!r}")
        if results:
            # Without a dtype, one string or null among the numbers shows in the kind
            # (np.float64 would parse "0.5" silently).
            kp = np.array([r["keypoints"] for r in results])
            if kp.dtype.kind not in "iuf":
                bad = next(i for i, r in enumerate(results)
                           if np.asarray(r["keypoints"]).dtype.kind not in "iuf")
                raise ValueError(
                    f"Every result's `keypoints` must be numbers. Received: result {bad} "
                    f"(image_id={results[bad]['image_id']!r}) with keypoints of type "
                    f"{np.asarray(results[bad]['keypoints']).dtype.name}")
            scores = np.array([r["score"] for r in results], np.float64)
            check_finite([r["image_id"] for r in results], kp.astype(np.float64), scores,
                         what="results")

    def write_results(self, results):
        """Writes ``results`` to ``output_dir/results_name`` atomically; returns the path."""
        if self.output_dir is None:
            return None
        path = os.path.join(self.output_dir, self.results_name)
        try:
            with atomic_file(path, "w") as f:
                # allow_nan=False: bare NaN is not JSON; nothing non-finite gets here.
                json.dump(results, f, allow_nan=False)
        except OSError as e:
            raise ValueError(f"Could not write the results JSON ({e.strerror or e}). "
                             f"Received: path={path!r}") from None
        self.results_file = path
        return path

    def evaluate_results(self, results, image_ids=None):
        """pycocotools keypoint evaluation of a ready list of COCO results.

        No rescoring or NMS: the same numbers as calling pycocotools directly
        with these results. They are written to the results JSON first (when
        ``output_dir`` is set).

        Args:
            results: list of dicts with ``image_id`` (int), ``category_id``
                (the evaluator's), ``keypoints`` (flat ``3K`` numbers) and
                ``score`` (a number), or the path of a JSON file of them.
            image_ids: evaluate on these images only (pycocotools'
                ``params.imgIds``), e.g. the images a quick subset of the
                validation set covered; ``None``: every image of the
                annotation file, so an image without predictions counts its
                people as missed (the standard protocol).

        Returns:
            dict of the ten COCO keypoint metrics.

        Raises:
            ValueError: a result without one of the four fields; an image id
                that is not an int (``"785"``, ``785.0``) or not in the
                annotation file; another ``category_id`` (it would score AP
                0); keypoints of the wrong length or not numbers; a score that
                is not a number; a results file that is not JSON (naming the
                file, line and column); ``NonFinitePredictionError`` (a
                ``ValueError``) for NaN or infinite keypoints or scores,
                naming how many and their image ids. Nothing is written then.
        """
        if isinstance(results, (str, os.PathLike)):
            results = load_results(results)
        results = list(results)
        self._validate(results)
        if image_ids is not None:
            image_ids = sorted({int(i) for i in np.asarray(image_ids).reshape(-1)})
            unknown = sorted(set(image_ids) - set(self.coco.getImgIds()))
            if unknown or not image_ids:
                raise ValueError(
                    "`image_ids` must be a non-empty subset of the annotation file's images. "
                    f"Received: image_ids with {len(unknown)} unknown (e.g. {unknown[:5]})")
        self.write_results(results)
        if not results:
            warnings.warn(
                "COCO evaluation got no predictions; every metric is reported as 0.0. "
                f"(annotation_file={self.annotation_file!r})", stacklevel=2)
            return {name: 0.0 for name in METRIC_NAMES}
        from pycocotools.cocoeval import COCOeval
        with _quiet(self.verbose):
            # loadRes adds and overwrites top-level keys (area, bbox, id) in
            # the dicts it is given: hand it copies so the caller's results stay
            # intact (shallow ones: a deep copy of 104k results costs seconds).
            detections = self.coco.loadRes([dict(r) for r in results])
            coco_eval = COCOeval(self.coco, detections, "keypoints")
            sigmas = np.asarray(self.keypoint_spec.sigmas, np.float64)
            # Keep pycocotools' own array for COCO so results match it bit for bit.
            if sigmas.shape != coco_eval.params.kpt_oks_sigmas.shape or not np.allclose(
                    sigmas, coco_eval.params.kpt_oks_sigmas):
                coco_eval.params.kpt_oks_sigmas = sigmas
            coco_eval.params.useSegm = None
            if image_ids is not None:
                coco_eval.params.imgIds = image_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.coco_eval = coco_eval
        return {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats)}
