"""Deployment exports: SavedModel, TFLite (fp32 / fp16 / int8), ONNX.

One call writes every deployable form of a heatmap model into one folder,
atomically (a temporary folder renamed at the end, see
:func:`keras_dpn.core.io_utils.atomic_directory`)::

    saved_models/<name>/
        metadata.json              input size, normalization, keypoints, files
        model.keras                the source Keras model (QAT / pruning read it)
        saved_model/               TF Serving: signatures `serving_default`, `keypoints`
        model_fp32.tflite          heatmaps, float32
        model_fp16.tflite          heatmaps, float16 weights
        model_int8_dynamic.tflite  heatmaps, int8 weights, float activations
        model_int8.tflite          heatmaps, full-integer (int8 in / int8 out)
        keypoints_fp32.tflite      uint8 RGB crop in, (K, 3) keypoints out
        model.onnx                 heatmaps, ONNX opset >= 17, dynamic batch
        gpu_compatibility.txt      LiteRT GPU-delegate report per .tflite file

:func:`export_model` runs three steps, each callable alone: :func:`plan_export`
checks every argument and gathers what the writers need (nothing is written
before it passes), :func:`write_export` writes the folder with a loop over
:data:`WRITERS`, one function per format, and :func:`score_export` (with
``evaluate=``) scores the written files (:mod:`keras_dpn.deploy.export_eval`).
Keras writes what it can itself: the heatmap ``.tflite`` files come from
``model.export(format="litert")`` with a batch-1 input signature and the
converter options of :func:`keras_dpn.deploy.calibration.tflite_options`, and
``model.onnx`` from ``model.export(format="onnx")``. Two files are written by
hand, because Keras' exporters serve the model's ``call`` only: the SavedModel
(a second, ``keypoints`` signature) and ``keypoints_fp32.tflite`` (uint8
normalization and the heatmap decoder in the graph), both through
``keras.export.ExportArchive``.

Every TFLite file has a fixed batch of 1: with an unknown batch the converter
lowers each dilated convolution to SPACE_TO_BATCH_ND / CONV_2D /
BATCH_TO_SPACE_ND, which mobile GPU delegates reject; with a static batch it
stays a native dilated CONV_2D (checked on every file written). The TFLite
files are converted from a SavedModel (never ``from_concrete_functions``,
which silently writes a model that outputs NaN on this TF version).

Example:
>>> import keras_dpn, tempfile, os
>>> from keras_dpn.deploy import export
>>> model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
>>> with tempfile.TemporaryDirectory() as d:
...     files = export.export_model(model, os.path.join(d, "dpn1"), formats=("tflite_fp32",),
...                                 verbose=False)
...     print(sorted(os.listdir(os.path.join(d, "dpn1"))))
['gpu_compatibility.txt', 'metadata.json', 'model.keras', 'model_fp32.tflite']
"""

import contextlib
import dataclasses
import functools
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any, Optional

import numpy as np

from keras_dpn.core import optional as _optional
from keras_dpn.deploy import calibration
from keras_dpn.core import io_utils
from keras_dpn.core import transforms
from keras_dpn.deploy.calibration import TFLITE_QUANTIZATIONS  # noqa: F401  (public name)
from keras_dpn.core.codec import HeatmapCodec
from keras_dpn.core.keypoints import check_keypoint_count, get_keypoint_spec, keypoint_source

FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
           "tflite_int8", "tflite_keypoints", "onnx")

FILE_NAMES = {
    "saved_model": "saved_model",
    "tflite_fp32": "model_fp32.tflite",
    "tflite_fp16": "model_fp16.tflite",
    "tflite_int8_dynamic": "model_int8_dynamic.tflite",
    "tflite_int8": "model_int8.tflite",
    "tflite_keypoints": "keypoints_fp32.tflite",
    "onnx": "model.onnx",
    "tflite_qat": "model_qat_int8.tflite",
    "tflite_pruned": "model_pruned_int8.tflite",
}
# The ops that a fixed batch of 1 keeps out of the graph (see module docstring).
FORBIDDEN_TFLITE_OPS = ("SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")


def model_io_shape(model):
    """Returns ``((H, W), (h, w), K)`` of a heatmap model.

    Raises:
        ValueError: if the model does not map ``(B, H, W, 3)`` images to
            ``(B, h, w, K)`` heatmaps with static sizes.
    """
    in_shape = tuple(model.input_shape)
    out_shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if (len(in_shape) != 4 or in_shape[-1] != 3 or None in in_shape[1:]
            or out_shape is None or len(out_shape) != 4 or None in out_shape[1:]):
        raise ValueError(
            "Expected a heatmap model mapping (B, H, W, 3) images to (B, h, w, K) "
            f"heatmaps with static sizes. Received: model with input_shape={in_shape!r}, "
            f"output_shape={model.output_shape!r}")
    return (in_shape[1], in_shape[2]), (out_shape[1], out_shape[2]), out_shape[3]


def _image_spec(model, batch_size, dtype="float32"):
    import tensorflow as tf
    (in_h, in_w), _, _ = model_io_shape(model)
    return tf.TensorSpec([batch_size, in_h, in_w, 3], dtype, name="image")


# ---------------------------------------------------------------------------
# In-graph decoding (the end-to-end TFLite model and the `keypoints` signature).
# ---------------------------------------------------------------------------

def decode_heatmaps_graph(heatmaps, input_size):
    """Heatmaps -> ``(B, K, 3)`` keypoints in crop pixels, as TF ops.

    :meth:`keras_dpn.core.codec.HeatmapCodec.decode_tf` (argmax, quarter-pixel
    offset, non-positive maxima at (0, 0)), then a pure scale from heatmap to
    crop pixels: the crop and the heatmap cover the same window with the same
    center, so the inverse affine reduces to ``input / heatmap`` per axis.

    Args:
        heatmaps: ``(B, h, w, K)`` float tensor with static ``h, w``.
        input_size: ``(H, W)`` of the crop.

    Returns:
        ``(B, K, 3)`` float32: x, y in crop pixels and the heatmap maximum.
    """
    import tensorflow as tf
    h, w = int(heatmaps.shape[1]), int(heatmaps.shape[2])
    codec = HeatmapCodec(tuple(input_size), (h, w))
    coords, maxvals = codec.decode_tf(heatmaps)
    stride = tf.constant(codec.stride, tf.float32)  # (x, y)
    return tf.concat([coords * stride, maxvals[..., None]], axis=-1)


def keypoint_model_function(model):
    """Wraps a heatmap model as ``uint8 crops (B, H, W, 3) -> keypoints (B, K, 3)``."""
    (in_h, in_w), _, _ = model_io_shape(model)

    def keypoints(image):
        heatmaps = model(transforms.normalize_image(image), training=False)
        return decode_heatmaps_graph(heatmaps, (in_h, in_w))

    return keypoints


# ---------------------------------------------------------------------------
# SavedModel
# ---------------------------------------------------------------------------

def write_saved_model(model, path, batch_size=None, keypoints_signature=True):
    """Writes a SavedModel with a documented ``serving_default`` signature.

    Signatures:
        ``serving_default``: input ``image`` float32 ``(B, H, W, 3)``, RGB
        scaled to [0, 1] then normalized with the ImageNet mean / std; output
        ``heatmaps`` float32 ``(B, H/4, W/4, K)``.
        ``keypoints`` (if ``keypoints_signature``): input ``image`` uint8
        ``(B, H, W, 3)`` RGB crop; output ``keypoints`` float32 ``(B, K, 3)``
        (x, y in crop pixels, score = heatmap maximum).

    Args:
        model: a heatmap ``keras.Model``.
        path: target folder (written directly; wrap in ``atomic_directory``).
        batch_size: None for a dynamic batch (TF Serving), 1 for TFLite.
        keypoints_signature: also add the ``keypoints`` signature.
    """
    import keras
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", lambda image: {"heatmaps": model(image, training=False)},
        input_signature=[_image_spec(model, batch_size)])
    if keypoints_signature:
        decode = keypoint_model_function(model)
        archive.add_endpoint(
            "keypoints", lambda image: {"keypoints": decode(image)},
            input_signature=[_image_spec(model, batch_size, "uint8")])
    archive.write_out(os.fspath(path), verbose=False)


# ---------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------

def write_tflite(model, path, quantization="fp32", representative_data=None):
    """Writes a batch-1 heatmap ``.tflite`` with Keras' LiteRT exporter.

    Args:
        model: a heatmap ``keras.Model``.
        path: the ``.tflite`` file to write.
        quantization: one of :data:`keras_dpn.deploy.calibration.TFLITE_QUANTIZATIONS`.
        representative_data: normalized float32 crops for ``"int8"``.
    """
    model.export(os.fspath(path), format="litert", verbose=False,
                 input_signature=[_image_spec(model, 1)],
                 **calibration.tflite_options(quantization, representative_data))


def convert_tflite(saved_model_dir, quantization="fp32", representative_data=None,
                   signature_key="serving_default"):
    """Converts one signature of a batch-1 SavedModel to TFLite bytes.

    For graphs that are not a Keras model's ``call`` (the end-to-end
    keypoints file); heatmap models go through :func:`write_tflite`.

    Args:
        saved_model_dir: a SavedModel written with ``batch_size=1``.
        quantization: ``"fp32"``, ``"fp16"``, ``"int8_dynamic"`` or ``"int8"``
            (see :func:`keras_dpn.deploy.calibration.tflite_options`).
        representative_data: normalized float32 ``(N, H, W, 3)`` crops for
            ``"int8"``.
        signature_key: which signature to convert.

    Returns:
        The ``.tflite`` bytes.
    """
    import tensorflow as tf
    options = calibration.tflite_options(quantization, representative_data)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=[signature_key])
    return calibration.apply_tflite_options(converter, options).convert()


def analyze_tflite(model_content):
    """Returns the text of ``tf.lite.experimental.Analyzer`` with the GPU check."""
    import tensorflow as tf
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=model_content,
                                              gpu_compatibility=True)
    return buffer.getvalue()


def tflite_ops(model_content):
    """Sorted list of the distinct builtin op names in a TFLite flatbuffer.

    Example (not run: needs an exported file; ``tests/test_export.py`` checks every file's ops):

    >>> tflite_ops(open("model_fp32.tflite", "rb").read())  # doctest: +SKIP
    ['ADD', 'CONV_2D', 'MAX_POOL_2D', 'RESIZE_BILINEAR']
    """
    return ops_from_report(analyze_tflite(model_content))


def ops_from_report(report):
    """The distinct op names listed in an Analyzer report."""
    return sorted(set(re.findall(r"Op#\d+ (\w+)\(", report)))


def gpu_compatible(report):
    """True if an Analyzer report says the model is GPU-delegate compatible."""
    return "looks compatible with GPU delegate" in report


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------

def write_onnx(model, path, opset=17):
    """Writes ONNX with Keras' exporter: input ``image`` (dynamic batch), output ``heatmaps``.

    Input ``image`` float32 ``(B, H, W, 3)`` normalized.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ValueError(f"`opset` must be an int >= 17. Received: opset={opset!r}")
    import onnx  # noqa: optional dependency (the `export` extra)
    path = os.fspath(path)
    model.export(path, format="onnx", verbose=False, opset_version=opset,
                 input_signature=[_image_spec(model, None)])
    # Keras names the output after the TF graph's tensor ("Identity:0"): give
    # it the name that the SavedModel signature and the docs use.
    graph = onnx.load(path)
    old = graph.graph.output[0].name
    for node in graph.graph.node:
        node.input[:] = ["heatmaps" if name == old else name for name in node.input]
        node.output[:] = ["heatmaps" if name == old else name for name in node.output]
    graph.graph.output[0].name = "heatmaps"
    onnx.save(graph, path)


# ---------------------------------------------------------------------------
# The writers and the one-call export
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class ExportJob:
    """What the writers of one :func:`export_model` call share.

    Attributes:
        model: the heatmap model.
        folder: the (temporary) export folder; ``model.keras`` is already in it.
        scratch: a temporary folder removed after the export.
        calibration: normalized float32 crops, or None when no format needs them.
        opset: ONNX opset.
        qat_kwargs: options of :func:`keras_dpn.deploy.qat.run_subprocess`.
    """

    model: Any
    folder: str
    scratch: str
    calibration: Optional[np.ndarray] = None
    opset: int = 17
    qat_kwargs: Optional[dict] = None
    output_dir: Optional[str] = None

    @property
    def model_path(self):
        return os.path.join(self.folder, "model.keras")

    def calibration_file(self):
        """The calibration crops as a ``.npy`` (for the QAT child process)."""
        path = os.path.join(self.scratch, "calibration.npy")
        if not os.path.exists(path):
            np.save(path, self.calibration)
        return path


def _write_saved_model(job, path):
    write_saved_model(job.model, path)


def _write_heatmap_tflite(quantization, job, path):
    write_tflite(job.model, path, quantization, job.calibration)


def _write_keypoints_tflite(job, path):
    # Keras' exporter converts `call` only; this file also holds the uint8
    # normalization and the decoder, so it goes through an ExportArchive.
    saved_model = os.path.join(job.scratch, "keypoints_batch1")
    write_saved_model(job.model, saved_model, batch_size=1)
    with open(path, "wb") as f:
        f.write(convert_tflite(saved_model, "fp32", signature_key="keypoints"))


def _write_onnx(job, path):
    write_onnx(job.model, path, opset=job.opset)


def _write_tfmot_tflite(mode, job, path):
    # tfmot switches tf.keras for the whole process: qat.py runs in a child,
    # and this import only brings its launcher.
    from keras_dpn.deploy import qat
    kwargs = dict(job.qat_kwargs or {})
    if job.output_dir is not None:
        # Beside the export folder: the folder being written goes on failure.
        kwargs.setdefault("log_path", f"{job.output_dir}.{mode}.log")
    qat.run_subprocess(job.model_path, path, job.calibration_file(), mode=mode, **kwargs)


#: Format -> ``writer(job, path)``; :func:`export_model` calls them in this order.
WRITERS = {
    "saved_model": _write_saved_model,
    "tflite_fp32": functools.partial(_write_heatmap_tflite, "fp32"),
    "tflite_fp16": functools.partial(_write_heatmap_tflite, "fp16"),
    "tflite_int8_dynamic": functools.partial(_write_heatmap_tflite, "int8_dynamic"),
    "tflite_int8": functools.partial(_write_heatmap_tflite, "int8"),
    "tflite_keypoints": _write_keypoints_tflite,
    "onnx": _write_onnx,
    "tflite_qat": functools.partial(_write_tfmot_tflite, "qat"),
    "tflite_pruned": functools.partial(_write_tfmot_tflite, "prune"),
}
_NEEDS_CALIBRATION = ("tflite_int8", "tflite_qat", "tflite_pruned")


def _check_tflite(fmt, path):
    """Analyzer report of a written ``.tflite``; refuses the ops GPU delegates reject."""
    with open(path, "rb") as f:
        report = analyze_tflite(f.read())
    bad = [op for op in FORBIDDEN_TFLITE_OPS if op in ops_from_report(report)]
    if bad:
        raise RuntimeError(f"{fmt}: the converter emitted {bad}; dilated convolutions would not "
                           "run natively on mobile GPU delegates.")
    return report


@dataclasses.dataclass
class ExportPlan:
    """What one export writes, checked before anything is (:func:`plan_export`).

    Attributes:
        model: the heatmap ``keras.Model``.
        output_dir: the absolute export folder.
        formats: the formats to write, in order (QAT / pruned files last).
        spec: the ``KeypointSpec`` recorded in ``metadata.json``, or None.
        input_size: ``(H, W)`` of the model's crops.
        heatmap_size: ``(h, w)`` of its heatmaps.
        num_keypoints: number of heatmaps.
        calibration: normalized float32 crops, or None when no format needs them.
        opset: ONNX opset.
        overwrite: replace an existing ``output_dir`` once the new one is complete.
        qat_kwargs: options of :func:`keras_dpn.deploy.qat.run_subprocess`.
        evaluation: the checked :class:`keras_dpn.deploy.export_eval.EvaluationSet`
            to score the files on, or None.
    """

    model: Any
    output_dir: str
    formats: tuple
    spec: Any
    input_size: tuple
    heatmap_size: tuple
    num_keypoints: int
    calibration: Optional[np.ndarray] = None
    opset: int = 17
    overwrite: bool = False
    qat_kwargs: Optional[dict] = None
    evaluation: Any = None


def export_model(model, output_dir, formats=FORMATS, keypoints=None,
                 representative_data=None, num_calibration_crops=64, opset=17,
                 overwrite=False, qat=False, prune=False, qat_kwargs=None, verbose=True,
                 evaluate=None, evaluate_flip_test=False):
    """Exports a heatmap model to every deployment format, atomically.

    Args:
        model: a heatmap ``keras.Model`` (e.g. ``keras_dpn.DPN4_32()``) or a
            path to a ``.keras`` file.
        output_dir: the export folder, e.g. ``saved_models/dpn4_32_coco``.
        formats: a subset of :data:`FORMATS`.
        keypoints: keypoint set: a name, a keypoint-set ``.json`` file, a
            dict or a ``KeypointSpec``, stored whole in ``metadata.json``
            (``KeypointSpec.to_dict``); defaults to ``"coco"`` for 17
            heatmaps and ``"mpii"`` for 16.
        representative_data: uint8 RGB crops ``(N, H, W, 3)`` calibrating the
            full-integer files; defaults to the person crops that ship with
            the package (:func:`keras_dpn.deploy.calibration.default_crops`).
        num_calibration_crops: how many default crops.
        opset: ONNX opset (>= 17).
        overwrite: replace an existing ``output_dir`` (only once the new
            export is complete); if False an existing folder raises
            ``FileExistsError`` before anything is written.
        qat: also run quantization-aware training (``keras_dpn.deploy.qat``, in a
            subprocess) and write ``model_qat_int8.tflite``.
        prune: also run pruning + int8 conversion (subprocess) and write
            ``model_pruned_int8.tflite``.
        qat_kwargs: extra options for :func:`keras_dpn.deploy.qat.run_subprocess`.
        verbose: print one line per file (and the accuracy table).
        evaluate: ``(annotation_file, image_dir)`` of COCO keypoint data, or
            a :class:`keras_dpn.deploy.export_eval.EvaluationSet` (detection boxes,
            a subset of the images): once the export is complete, the COCO
            AP of the Keras model and of every file through
            :class:`keras_dpn.PoseEstimator`, with each file's AP drop, size
            and latency, printed as a table and written to
            ``output_dir/accuracy.json`` (:func:`keras_dpn.deploy.export_eval.evaluate_export`).
            Checked before anything is written.
        evaluate_flip_test: evaluate with ``PoseEstimator``'s flip test.

    Returns:
        A dict ``format -> final path`` (``"keras"`` for ``model.keras``;
        ``"accuracy"`` for ``accuracy.json`` when ``evaluate`` is given).

    Raises:
        ValueError: for a bad argument (an evaluation file or folder that is
            missing or unreadable too), before anything is written.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.

    Example (not run: every format of the full-size model takes minutes; the module's
    example exports a tiny one):

    >>> import keras_dpn
    >>> from keras_dpn.deploy.export import export_model
    >>> model = keras_dpn.DPN4_32()
    >>> export_model(model, "saved_models/dpn4_32")  # doctest: +SKIP
    """
    plan = plan_export(model, output_dir, formats=formats, keypoints=keypoints,
                       representative_data=representative_data,
                       num_calibration_crops=num_calibration_crops, opset=opset,
                       overwrite=overwrite, qat=qat, prune=prune, qat_kwargs=qat_kwargs,
                       evaluate=evaluate)
    files = write_export(plan, verbose=verbose)
    if plan.evaluation is not None:
        # After the export is in place: a file that fails its evaluation is a
        # row of the table, and the export stays for the user to inspect.
        files["accuracy"] = score_export(files, plan.evaluation, plan.output_dir,
                                         model=plan.model, flip_test=evaluate_flip_test,
                                         verbose=verbose)
    return files


def plan_export(model, output_dir, formats=FORMATS, keypoints=None, representative_data=None,
                num_calibration_crops=64, opset=17, overwrite=False, qat=False, prune=False,
                qat_kwargs=None, evaluate=None):
    """Checks every argument of :func:`export_model` and gathers what the writers need.

    Nothing is written: a bad argument, an output folder that would be
    refused, or an evaluation set that cannot be read fails here, in one line.
    The calibration crops are prepared here (for the int8, QAT and pruned
    files). Warns when the model's keypoint set is unknown (``metadata.json``
    then records none).

    Args:
        model, output_dir, formats, keypoints, representative_data,
        num_calibration_crops, opset, overwrite, qat, prune, qat_kwargs,
        evaluate: as for :func:`export_model`.

    Returns:
        An :class:`ExportPlan`.

    Raises:
        ValueError: for a bad argument, before anything is written.
        FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    import keras
    if isinstance(model, (str, os.PathLike)):
        from keras_dpn.inference.estimator import load_keras_file  # one-line errors for damaged files
        model = load_keras_file(model, arg_name="model")
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model or a .keras path. Received: model={model!r}")
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"`formats` must be a non-empty subset of {FORMATS}. "
                         f"Received: formats={formats!r}")
    formats += (("tflite_qat",) if qat else ()) + (("tflite_pruned",) if prune else ())
    if qat or prune:
        _check_qat_kwargs(qat_kwargs)
    if "onnx" in formats and (isinstance(opset, bool) or not isinstance(opset, int)
                              or opset < 17):
        raise ValueError(f"`opset` must be an int >= 17. Received: opset={opset!r}")
    # Every writer traces the model into a TensorFlow graph.
    _optional.tensorflow("Exporting SavedModel / TFLite / ONNX files (keras_dpn.deploy.export)")
    _optional.require_tensorflow_backend(
        "Exporting SavedModel / TFLite / ONNX files",
        hint="Save a .keras file (model.save) and export it in a TensorFlow process: "
             "KERAS_BACKEND=tensorflow keras-dpn export MODEL.keras ...")
    input_size, heatmap_size, num_k = model_io_shape(model)
    if keypoints is None:
        keypoints = {17: "coco", 16: "mpii"}.get(num_k)
    spec = get_keypoint_spec(keypoints) if keypoints is not None else None
    if spec is not None:
        check_keypoint_count(spec, num_k, f"the model {model.name!r} (heatmaps)",
                             keypoint_source(keypoints))
    else:
        import warnings
        # stacklevel 3: the caller of export_model, which calls this.
        warnings.warn(f"The model predicts {num_k} keypoints and no keypoint set was given: "
                      "metadata.json records none, so `keras-dpn predict` will need "
                      "--keypoints. Pass keypoints= (--keypoints FILE.json).", stacklevel=3)
    evaluation = None
    if evaluate is not None:
        from keras_dpn.deploy import export_eval
        if spec is None:
            raise ValueError(f"Evaluating needs the keypoint set of the model's {num_k} "
                             f"heatmaps. Received: keypoints=None")
        evaluation = export_eval.as_evaluation_set(evaluate, spec)
    calib = None
    if any(f in _NEEDS_CALIBRATION for f in formats):
        calib = calibration.calibration_data(representative_data, input_size,
                                             num_calibration_crops)
    output_dir = os.path.abspath(os.fspath(output_dir))
    _check_output_dir(output_dir, overwrite)
    return ExportPlan(model, output_dir, formats, spec, input_size, heatmap_size, num_k,
                      calibration=calib, opset=opset, overwrite=overwrite,
                      qat_kwargs=qat_kwargs, evaluation=evaluation)


def write_export(plan, verbose=True):
    """Writes the export folder of an :class:`ExportPlan`, atomically.

    ``model.keras``, one file per format (:data:`WRITERS`, each ``.tflite``
    checked for the ops GPU delegates reject), ``gpu_compatibility.txt`` and
    ``metadata.json``, in a temporary folder renamed to ``plan.output_dir``
    at the end.

    Args:
        plan: from :func:`plan_export`.
        verbose: print one line per file.

    Returns:
        A dict ``format -> final path`` (``"keras"`` for ``model.keras``).
    """
    written = {"keras": "model.keras"}
    tflite_reports = {}
    with _export_folder(plan.output_dir, plan.overwrite) as (tmp, scratch):
        job = ExportJob(plan.model, tmp, scratch, plan.calibration, plan.opset,
                        plan.qat_kwargs, plan.output_dir)
        plan.model.save(job.model_path)
        for fmt in plan.formats:
            name = FILE_NAMES[fmt]
            path = os.path.join(tmp, name)
            WRITERS[fmt](job, path)
            written[fmt] = name
            note = ""
            if name.endswith(".tflite"):
                tflite_reports[name] = _check_tflite(fmt, path)
                verdict = "ok" if gpu_compatible(tflite_reports[name]) else "NOT compatible"
                note = f" ({os.path.getsize(path) / 1e6:.2f} MB, GPU delegate: {verdict})"
            if verbose:
                print(f"{fmt:<19} -> {os.path.join(plan.output_dir, name)}{note}", flush=True)
        if tflite_reports:
            _write_gpu_report(os.path.join(tmp, "gpu_compatibility.txt"), tflite_reports)
        _write_metadata(os.path.join(tmp, "metadata.json"), plan, tmp, written)
    return {k: os.path.join(plan.output_dir, v) for k, v in written.items()}


def score_export(files, evaluation, output_dir, model=None, flip_test=False, verbose=True):
    """COCO AP of every exported file, written to ``output_dir/accuracy.json``.

    :func:`keras_dpn.deploy.export_eval.evaluate_export` (a file that fails
    is a row of the table), then its report, and the table printed.

    Args:
        files: ``format -> path``, as :func:`write_export` returns.
        evaluation: a :class:`keras_dpn.deploy.export_eval.EvaluationSet`.
        output_dir: the export folder (the report goes there).
        model: the in-memory Keras model (scored as ``"keras"``), or None.
        flip_test: evaluate with ``PoseEstimator``'s flip test.
        verbose: print progress and the table.

    Returns:
        The path of ``accuracy.json``.
    """
    from keras_dpn.deploy import export_eval
    rows = export_eval.evaluate_export(files, evaluation, model=model, flip_test=flip_test,
                                       verbose=verbose)
    report = export_eval.write_report(os.path.join(output_dir, export_eval.REPORT_FILE), rows,
                                      evaluation, flip_test=bool(flip_test))
    if verbose:
        print(f"\nCOCO AP through PoseEstimator: {evaluation.describe()}, flip test "
              f"{'on' if flip_test else 'off'}\n{export_eval.format_table(rows)}", flush=True)
    return report


def _write_gpu_report(path, tflite_reports):
    """``gpu_compatibility.txt``: each ``.tflite`` file's GPU-delegate verdict and complaints."""
    with open(path, "w") as f:
        for name, report in tflite_reports.items():
            verdict = "compatible" if gpu_compatible(report) else "NOT compatible"
            f.write(f"==== {name}: GPU delegate {verdict}\n")
            f.write(_gpu_section(report) + "\n\n")


def _write_metadata(path, plan, folder, written):
    """``metadata.json``: what a reader of the folder needs to run its files."""
    metadata = dict(
        model_name=plan.model.name,
        input_size=list(plan.input_size),
        heatmap_size=list(plan.heatmap_size),
        num_keypoints=plan.num_keypoints,
        # The whole set (KeypointSpec.to_dict): PoseEstimator and
        # `keras-dpn predict` take it from here, sigmas for AP included.
        keypoints=None if plan.spec is None else plan.spec.to_dict(),
        normalization=dict(mean=list(transforms.IMAGENET_MEAN),
                           std=list(transforms.IMAGENET_STD), scale=1 / 255.0,
                           layout="NHWC RGB"),
        files=dict(written),
        tflite=_tflite_io(folder, written),
    )
    with open(path, "w") as f:
        json.dump(metadata, f, indent=2)


def _check_qat_kwargs(qat_kwargs):
    from keras_dpn.deploy import qat as qat_lib
    kwargs = dict(qat_kwargs or {})
    unknown = sorted(set(kwargs) - set(qat_lib.RUN_OPTIONS))
    if unknown:
        raise ValueError(f"`qat_kwargs` takes {list(qat_lib.RUN_OPTIONS)}. Received: unknown "
                         f"qat_kwargs {unknown}")
    qat_lib.check_options(**{k: v for k, v in kwargs.items()
                             if k not in ("report_path", "log_path")})


def _check_output_dir(output_dir, overwrite):
    """What :func:`keras_dpn.core.io_utils.atomic_directory` refuses, checked before the work."""
    io_utils.check_directory_target(output_dir, overwrite, f"output_dir={output_dir!r}")
    io_utils.check_output_folder(os.path.dirname(output_dir), "output_dir")


@contextlib.contextmanager
def _export_folder(output_dir, overwrite):
    """Yields ``(folder, scratch)``: the atomic export folder and a scratch folder beside it.

    The scratch folder is a ``.NAME.partial-*`` of this process, so a rerun
    removes it after a kill -9 (a system temporary folder would stay), and
    Python's temporary files (the converters', the QAT child's) go into it
    meanwhile. An I/O fault (full disk, read-only) becomes one line naming
    the export folder.
    """
    saved = tempfile.tempdir
    try:
        with io_utils.atomic_directory(output_dir, overwrite=overwrite) as tmp:
            scratch = io_utils.make_partial_directory(output_dir)
            tempfile.tempdir = scratch
            try:
                yield tmp, scratch
            finally:
                tempfile.tempdir = saved
                shutil.rmtree(scratch, ignore_errors=True)
    except (ValueError, FileExistsError):
        raise
    except Exception as e:
        # TensorFlow's and h5py's file errors carry the OS reason in their text only.
        if isinstance(e, OSError) or (type(e).__module__.startswith(("tensorflow", "h5py"))
                                      and io_utils.is_write_error(e)):
            raise io_utils.write_error(e, output_dir, "Cannot write the export") from e
        raise


def _gpu_section(report):
    # The op listing is long and the same for every file; keep the verdict and
    # the per-op GPU complaints.
    lines = [line for line in report.splitlines()
             if "GPU" in line or "gpu" in line or "not supported" in line.lower()]
    return "\n".join(lines) if lines else report


def _tflite_io(folder, written):
    """Input / output names, shapes, dtypes and quantization of each .tflite."""
    from ai_edge_litert.interpreter import Interpreter
    out = {}
    for name in written.values():
        if not name.endswith(".tflite"):
            continue
        interp = Interpreter(model_path=os.path.join(folder, name))

        def describe(d):
            scale, zero = d["quantization"]
            return dict(name=d["name"], shape=[int(s) for s in d["shape"]],
                        dtype=np.dtype(d["dtype"]).name,
                        quantization=dict(scale=float(scale), zero_point=int(zero)))

        out[name] = dict(inputs=[describe(d) for d in interp.get_input_details()],
                         outputs=[describe(d) for d in interp.get_output_details()])
    return out
