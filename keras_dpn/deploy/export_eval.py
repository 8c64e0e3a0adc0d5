"""COCO AP of every exported file: what each format, int8 above all, costs.

A quantized pose model can lose most of its accuracy while its file looks
fine; heatmap differences do not say how much AP that is. This module runs
the Keras model and every file of an export (:func:`keras_dpn.deploy.export.export_model`)
through :class:`keras_dpn.PoseEstimator`, exactly as they are deployed (crop,
the file's runtime, heatmap decoding), on the people of a COCO keypoint
annotation file, and evaluates each with
:class:`keras_dpn.evaluation.COCOEvaluator` (rescoring, OKS-NMS 0.9,
pycocotools). One row per file: its size, AP, AP50, AP75, AR, the AP drop
against the Keras model, and the latency of one model call on one crop.

* **Person boxes**: the annotation file's ground truth by default, taken as
  the shard builder takes them (crowd regions and people without labelled
  keypoints left out, boxes clipped as the reference's ``clean_bbox``), so
  the Keras row equals the training recipe's ``val_AP`` for the same weights;
  or a COCO detection-results file (box scores enter the rescoring).
* **Flip test**: off by default, as ``PoseEstimator`` and the deployed files
  run; ``flip_test=True`` averages with the mirrored crop as
  ``PoseEstimator(flip_test=True)`` does (flipped back with the keypoint set's
  pairs, shifted one pixel). The end-to-end keypoints file returns keypoints,
  not heatmaps, so it is always evaluated without, against the Keras model
  without.

Example:
>>> from keras_dpn.deploy import export_eval
>>> data = export_eval.evaluation_set("sample_data/coco/annotations/person_keypoints_sample.json",
...                                   "sample_data/coco/images")
>>> data.num_images, data.num_people
(52, 124)
>>> # An untrained tiny model exported to one format, on the first 3 images (AP near 0:
>>> # the rows, not the accuracy; an export folder such as "saved_models/dpn4_32" works too).
>>> import os, tempfile, keras_dpn
>>> from keras_dpn.deploy.export import export_model
>>> first3 = export_eval.evaluation_set(
...     "sample_data/coco/annotations/person_keypoints_sample.json", "sample_data/coco/images",
...     max_images=3)
>>> with tempfile.TemporaryDirectory() as d:
...     files = export_model(keras_dpn.DPN1_32(input_shape=(64, 48, 3)), os.path.join(d, "e"),
...                          formats="tflite_fp32", verbose=False)
...     rows = export_eval.evaluate_export(files, first3, verbose=False)
>>> [(row["format"], row["file"], 0 <= row["AP"] <= 1) for row in rows]
[('keras', 'model.keras', True), ('tflite_fp32', 'model_fp32.tflite', True)]
>>> print(export_eval.format_table(rows))  # doctest: +ELLIPSIS
| format | file | ...
"""

import dataclasses
import json
import os
import time
from typing import Optional

import numpy as np

from keras_dpn.core import io_utils
from keras_dpn.core import transforms
from keras_dpn.core.keypoints import KeypointSpec, get_keypoint_spec

#: The rows of :func:`evaluate_export`, in this order (those present).
EVALUATED = ("keras", "saved_model", "onnx", "tflite_fp32", "tflite_fp16",
             "tflite_int8_dynamic", "tflite_int8", "tflite_qat", "tflite_pruned",
             "tflite_keypoints")
REPORT_FILE = "accuracy.json"


@dataclasses.dataclass
class EvaluationSet:
    """The images and person boxes an export is evaluated on (see :func:`evaluation_set`).

    Attributes:
        annotation_file: COCO keypoint ground truth.
        image_dir: folder of its images.
        spec: the keypoint set.
        images: per image a dict with ``image_id``, ``path`` and either
            ``people`` (ground-truth annotations) or ``boxes`` / ``scores``
            (detections).
        image_ids: the images the AP is computed over (every image of the
            annotation file, or the first ``max_images``).
        boxes: ``"ground truth"`` or the detection file's path.
    """

    annotation_file: str
    image_dir: str
    spec: KeypointSpec
    images: list
    image_ids: Optional[list]
    boxes: str = "ground truth"

    @property
    def num_images(self):
        return len(self.image_ids) if self.image_ids is not None else len(self.images)

    @property
    def num_people(self):
        return sum(len(im["people"]) if "people" in im else len(im["boxes"])
                   for im in self.images)

    def person_boxes(self, item, image_shape):
        """``(boxes (N, 4), scores (N,))`` of one image: the shard builder's, or detections."""
        if "boxes" in item:
            # A detection outside the image or under 1 px would stop PoseEstimator: skip it.
            from keras_dpn.inference.detectors import clip_boxes
            _, inside = clip_boxes(item["boxes"], image_shape)
            return item["boxes"][inside], item["scores"][inside]
        from keras_dpn.data.shards import SkipCounter, clean_person
        height, width = image_shape[:2]
        skips = SkipCounter()
        kept = [clean_person(p, height, width, skips, "") for p in item["people"]]
        boxes = np.array([p["bbox"] for p in kept if p is not None], np.float32).reshape(-1, 4)
        from keras_dpn.inference.detectors import clip_boxes
        _, usable = clip_boxes(boxes, image_shape)  # PoseEstimator refuses boxes under 1 px
        return boxes[usable], np.ones(int(usable.sum()), np.float32)

    def describe(self):
        return (f"{self.num_people} people on {self.num_images} images of "
                f"{os.path.basename(self.annotation_file)}, boxes: {self.boxes}")


def evaluation_set(annotation_file, image_dir, keypoints="coco", detections=None,
                   score_threshold=0.0, max_images=None):
    """Reads and checks what an evaluation needs, before any long step.

    Args:
        annotation_file: COCO keypoint annotation JSON.
        image_dir: folder holding its images.
        keypoints: keypoint set name or :class:`~keras_dpn.KeypointSpec`.
        detections: optional COCO detection-results JSON: person boxes and
            scores instead of the ground-truth boxes.
        score_threshold: keep detections scoring at least this.
        max_images: evaluate on the first N images of the annotation file
            only (the AP then covers those images); None: all.

    Returns:
        An :class:`EvaluationSet`.

    Raises:
        ValueError: a missing or unreadable file or folder, an annotation file
            for another keypoint set, images missing from ``image_dir``, no
            person to evaluate; one line naming the argument.
    """
    from keras_dpn.data.coco import read_coco
    spec = get_keypoint_spec(keypoints)
    annotation_file = os.fspath(annotation_file)
    image_dir = os.fspath(image_dir)
    if not os.path.isfile(annotation_file):
        raise ValueError(f"The evaluation annotation file does not exist. "
                         f"Received: annotation_file={annotation_file!r}")
    if not os.path.isdir(image_dir):
        raise ValueError(f"The evaluation image folder does not exist. "
                         f"Received: image_dir={image_dir!r}")
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                   or max_images < 1):
        raise ValueError(f"`max_images` must be a positive int or None. "
                         f"Received: max_images={max_images!r}")
    try:
        entries, _ = read_coco(annotation_file, image_dir, dataset=spec)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"Not a COCO keypoint annotation file for {spec.name!r} "
                         f"({str(e).splitlines()[0][:200]}). "
                         f"Received: annotation_file={annotation_file!r}") from None
    if max_images is not None:
        entries = entries[:max_images]
    image_ids = [e["image_id"] for e in entries] if max_images is not None else None
    images = []
    if detections is None:
        images = [dict(image_id=e["image_id"], path=e["path"], people=e["people"])
                  for e in entries if e["people"]]
        source = "ground truth"
    else:
        from keras_dpn.inference.detectors import DetectionFile
        detections = os.fspath(detections)
        if not os.path.isfile(detections):
            raise ValueError(f"The evaluation detection file does not exist. "
                             f"Received: detections={detections!r}")
        found = DetectionFile(detections, score_threshold)
        for e in entries:
            boxes, scores = found.lookup(e["image_id"])
            if len(boxes):
                images.append(dict(image_id=e["image_id"], path=e["path"], boxes=boxes,
                                   scores=scores))
        source = f"{os.path.basename(detections)} (score >= {score_threshold:g})"
    if not images:
        what = ("detections (a file for another split?)" if detections is not None
                else "person with labelled keypoints")
        raise ValueError(f"No {what} on the {len(entries)} evaluated image(s) of the annotation "
                         f"file. Received: annotation_file={annotation_file!r}")
    missing = [im["path"] for im in images if not os.path.isfile(im["path"])]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(images)} images to evaluate are not in the "
                         f"image folder (e.g. {os.path.basename(missing[0])!r}). "
                         f"Received: image_dir={image_dir!r}")
    return EvaluationSet(annotation_file, image_dir, spec, images, image_ids, source)


def as_evaluation_set(evaluate, keypoints):
    """``(annotation_file, image_dir)`` or an :class:`EvaluationSet` -> a checked set."""
    if isinstance(evaluate, EvaluationSet):
        # The whole set: another set's sigmas would give another AP.
        spec = get_keypoint_spec(keypoints)
        if evaluate.spec != spec:
            same = " (same name, other fields)" if spec.name == evaluate.spec.name else ""
            raise ValueError(f"The evaluation set is for keypoint set {evaluate.spec.name!r}, "
                             f"the model for {spec.name!r}{same}. "
                             f"Received: evaluate={evaluate.describe()!r}")
        return evaluate
    if (isinstance(evaluate, (str, os.PathLike)) or not hasattr(evaluate, "__len__")
            or len(evaluate) != 2):
        raise ValueError("`evaluate` must be (annotation_file, image_dir) or an "
                         f"export_eval.EvaluationSet. Received: evaluate={evaluate!r}")
    return evaluation_set(evaluate[0], evaluate[1], keypoints=keypoints)


def _size_mb(path):
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
                   for f in fs) / 1e6
    return os.path.getsize(path) / 1e6


def _latency_ms(estimator, repeats=10):
    """Median time of one model call on one crop (the runtime alone, no pre/post-processing)."""
    h, w = estimator.input_size
    x = np.zeros((1, h, w, 3), np.uint8 if estimator.backend.end_to_end else np.float32)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        estimator.backend.run(x)
        if i >= 2:  # two warm-up calls
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def evaluate_file(model_or_path, data, flip_test=False, num_threads=None, evaluator=None,
                  verbose=True, desc=None):
    """COCO AP of one model or file through :class:`keras_dpn.PoseEstimator`.

    Args:
        model_or_path: anything ``PoseEstimator`` loads.
        data: an :class:`EvaluationSet`.
        flip_test: ``PoseEstimator``'s flip test.
        num_threads: TFLite / ONNX Runtime threads (None: the runtime's default).
        evaluator: a :class:`~keras_dpn.evaluation.COCOEvaluator` to reuse
            (its ground truth stays loaded); it is reset first.
        verbose: show a progress bar.
        desc: the progress bar's label.

    Returns:
        dict with the ten COCO metrics (``AP``, ``AP50``, ...), ``people``,
        ``latency_ms`` (median of one model call on one crop) and
        ``seconds`` (the whole evaluation).

    Raises:
        ValueError: the file cannot be loaded, or it returns NaN or infinite
            values (a broken conversion).
    """
    from tqdm.auto import tqdm

    from keras_dpn.evaluation.coco import COCOEvaluator
    from keras_dpn.inference.estimator import PoseEstimator, read_image
    if evaluator is None:
        evaluator = COCOEvaluator(data.annotation_file, data.spec)
    evaluator.reset()
    estimator = PoseEstimator(model_or_path, keypoints=data.spec, flip_test=flip_test,
                              num_threads=num_threads)
    h, w = estimator.input_size
    start = time.perf_counter()
    people = 0
    for item in tqdm(data.images, desc=desc, unit="image", disable=not verbose, leave=False):
        image = read_image(item["path"])
        boxes, scores = data.person_boxes(item, image.shape)
        if not len(boxes):
            continue
        found = estimator.predict(image, boxes, scores)
        kept = np.stack([p["box"] for p in found])
        # The crop window PoseEstimator used: its area drives OKS-NMS, as in training.
        centers, scales = transforms.box_to_center_scale(kept, w / h, estimator.padding)
        evaluator.update(np.full(len(found), item["image_id"]),
                         np.stack([p["keypoints"] for p in found]), centers, scales, scores)
        people += len(found)
    metrics = evaluator.evaluate(image_ids=data.image_ids)
    return dict(metrics, people=people, latency_ms=_latency_ms(estimator),
                seconds=time.perf_counter() - start)


def _export_files(files):
    """``format -> path`` of an export folder (its metadata.json) or of export_model's dict."""
    if isinstance(files, dict):
        return {k: os.fspath(v) for k, v in files.items()}
    folder = os.fspath(files)
    meta_path = os.path.join(folder, "metadata.json")
    if not os.path.isfile(meta_path):
        raise ValueError(f"Not an export folder (no metadata.json). Received: files={folder!r}")
    with open(meta_path) as f:
        names = json.load(f).get("files") or {}
    return {k: os.path.join(folder, v) for k, v in names.items()}


def evaluate_export(files, data, model=None, flip_test=False, num_threads=None, verbose=True):
    """COCO AP of the Keras model and of every file of an export, through ``PoseEstimator``.

    Args:
        files: an export folder, or :func:`keras_dpn.deploy.export.export_model`'s
            ``format -> path`` dict.
        data: an :class:`EvaluationSet`, or ``(annotation_file, image_dir)``
            (ground-truth boxes, every image, the export's keypoint set: COCO).
        model: the Keras model of the ``keras`` row (default: the export's
            ``model.keras``).
        flip_test: evaluate with the flip test (the end-to-end keypoints file
            never is; its AP drop is against the Keras model without).
        num_threads: TFLite / ONNX Runtime threads.
        verbose: progress bars and one line per file.

    Returns:
        A list of row dicts in :data:`EVALUATED` order: ``format``, ``file``,
        ``size_mb``, ``flip_test``, the COCO metrics (``AP``, ``AP50``, ...),
        ``ap_drop`` (Keras AP minus this file's, with the same flip setting),
        ``latency_ms``, ``seconds``; a file that fails has ``error`` (its
        message) and no metrics. A ``keras`` row without the flip test is
        added when the keypoints file needs it as its reference.
    """
    from keras_dpn.evaluation.coco import COCOEvaluator
    paths = _export_files(files)
    if not isinstance(data, EvaluationSet):
        data = as_evaluation_set(data, "coco")
    evaluator = COCOEvaluator(data.annotation_file, data.spec)
    jobs = [(fmt, paths[fmt], flip_test and fmt != "tflite_keypoints")
            for fmt in EVALUATED if fmt in paths]
    if model is not None:  # the in-memory model, under the name of its saved copy if any
        jobs = [("keras", model, flip_test)] + [j for j in jobs if j[0] != "keras"]
    if flip_test and "tflite_keypoints" in paths:
        reference = model if model is not None else paths.get("keras")
        if reference is not None:
            jobs.insert(1, ("keras", reference, False))
    rows, reference_ap = [], {}
    for fmt, target, flip in jobs:
        named = target if isinstance(target, (str, os.PathLike)) else paths.get(fmt)
        row = dict(format=fmt, file=os.path.basename(named) if named else "(in memory)",
                   size_mb=_size_mb(named) if named else None, flip_test=flip)
        try:
            row.update(evaluate_file(target, data, flip, num_threads, evaluator, verbose,
                                     desc=f"{fmt}{' +flip' if flip else ''}"))
        except (ValueError, RuntimeError) as e:  # a broken file, a runtime that refuses it
            row["error"] = str(e).splitlines()[0]
        if fmt == "keras" and "AP" in row:
            reference_ap[flip] = row["AP"]
        if "AP" in row and flip in reference_ap:
            row["ap_drop"] = reference_ap[flip] - row["AP"]
        rows.append(row)
        if verbose:
            result = (f"AP {row['AP']:.4f}" if "AP" in row else f"FAILED: {row['error']}")
            print(f"{fmt:<19} {row['file']:<28} {result}", flush=True)
    return rows


def format_table(rows):
    """A markdown table of :func:`evaluate_export`'s rows."""
    lines = ["| format | file | MB | flip test | AP | AP drop | AP50 | AP75 | AR | ms / crop |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        size = "-" if r.get("size_mb") is None else f"{r['size_mb']:.2f}"
        flip = "yes" if r["flip_test"] else "no"
        if "AP" not in r:
            lines.append(f"| {r['format']} | {r['file']} | {size} | {flip} | "
                         f"failed: {r['error']} | | | | | |")
            continue
        drop = "-" if r["format"] == "keras" or "ap_drop" not in r else f"{r['ap_drop']:+.4f}"
        lines.append(f"| {r['format']} | {r['file']} | {size} | {flip} | {r['AP']:.4f} | {drop} "
                     f"| {r['AP50']:.4f} | {r['AP75']:.4f} | {r['AR']:.4f} "
                     f"| {r['latency_ms']:.1f} |")
    return "\n".join(lines)


def write_report(path, rows, data, **settings):
    """Writes the rows and what they were measured on as JSON, atomically; returns ``path``."""
    report = dict(
        annotation_file=os.path.abspath(data.annotation_file),
        image_dir=os.path.abspath(data.image_dir), boxes=data.boxes, keypoints=data.spec.name,
        images=data.num_images, people=data.num_people,
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **settings, rows=rows)
    with io_utils.atomic_file(path, "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    return path
