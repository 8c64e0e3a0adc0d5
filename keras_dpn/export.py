"""Deployment exports: SavedModel, TFLite (fp32 / fp16 / int8), ONNX.

One call writes every deployable form of a heatmap model into one folder,
atomically (a temporary folder renamed at the end, see
:func:`keras_dpn.io_utils.atomic_directory`)::

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

Every TFLite file has a fixed batch of 1: with an unknown batch the converter
lowers each dilated convolution to SPACE_TO_BATCH_ND / CONV_2D /
BATCH_TO_SPACE_ND, which mobile GPU delegates reject; with a static batch it
stays a native dilated CONV_2D. The TFLite files are converted from a
SavedModel (never ``from_concrete_functions``, which silently writes a model
that outputs NaN on this TF version).

Example:
>>> import keras_dpn, tempfile, os
>>> from keras_dpn import export
>>> model = keras_dpn.DPN1_32(input_shape=(128, 96, 3))
>>> out = os.path.join(tempfile.mkdtemp(), "dpn1")
>>> files = export.export_model(model, out, formats=("tflite_fp32",),
...                             verbose=False)  # doctest: +SKIP
"""

import contextlib
import io
import json
import os
import re
import tempfile

import numpy as np

from keras_dpn import io_utils, transforms
from keras_dpn.codec import HeatmapCodec
from keras_dpn.keypoints import get_keypoint_spec

_MEAN = transforms.IMAGENET_MEAN
_STD = transforms.IMAGENET_STD

FORMATS = ("saved_model", "tflite_fp32", "tflite_fp16", "tflite_int8_dynamic",
           "tflite_int8", "tflite_keypoints", "onnx")
DEFAULT_FORMATS = FORMATS

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
TFLITE_QUANTIZATIONS = ("fp32", "fp16", "int8_dynamic", "int8")
# The ops that a fixed batch of 1 keeps out of the graph (see module docstring).
FORBIDDEN_TFLITE_OPS = ("SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND")

SAMPLE_ANNOTATIONS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "sample_data", "coco", "annotations", "person_keypoints_sample.json")


def _tf():
    import tensorflow as tf  # noqa: deferred so `import keras_dpn.export` stays cheap
    return tf


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


# ---------------------------------------------------------------------------
# In-graph preprocessing and decoding (the end-to-end TFLite model).
# ---------------------------------------------------------------------------

def normalize_uint8(images):
    """uint8 RGB ``(B, H, W, 3)`` -> the normalized float32 the models expect."""
    tf = _tf()
    x = tf.cast(images, tf.float32) / 255.0
    mean = tf.constant(_MEAN, tf.float32)
    std = tf.constant(_STD, tf.float32)
    return (x - mean) / std


def decode_heatmaps_graph(heatmaps, input_size):
    """Heatmaps -> ``(B, K, 3)`` keypoints in crop pixels, as TF ops.

    :meth:`keras_dpn.codec.HeatmapCodec.decode_tf` (argmax, quarter-pixel
    offset, non-positive maxima at (0, 0)), then a pure scale from heatmap to
    crop pixels: the crop and the heatmap cover the same window with the same
    center, so the inverse affine reduces to ``input / heatmap`` per axis.

    Args:
        heatmaps: ``(B, h, w, K)`` float tensor with static ``h, w``.
        input_size: ``(H, W)`` of the crop.

    Returns:
        ``(B, K, 3)`` float32: x, y in crop pixels and the heatmap maximum.
    """
    tf = _tf()
    h, w = int(heatmaps.shape[1]), int(heatmaps.shape[2])
    codec = HeatmapCodec(tuple(input_size), (h, w))
    coords, maxvals = codec.decode_tf(heatmaps)
    stride = tf.constant(codec.stride, tf.float32)  # (x, y)
    return tf.concat([coords * stride, maxvals[..., None]], axis=-1)


def keypoint_model_function(model):
    """Wraps a heatmap model as ``uint8 crops (B, H, W, 3) -> keypoints (B, K, 3)``."""
    (in_h, in_w), _, _ = model_io_shape(model)

    def keypoints(image):
        heatmaps = model(normalize_uint8(image), training=False)
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
    tf = _tf()
    (in_h, in_w), _, _ = model_io_shape(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda image: {"heatmaps": model(image, training=False)},
        input_signature=[tf.TensorSpec([batch_size, in_h, in_w, 3], tf.float32, name="image")])
    if keypoints_signature:
        decode = keypoint_model_function(model)
        archive.add_endpoint(
            "keypoints", lambda image: {"keypoints": decode(image)},
            input_signature=[tf.TensorSpec([batch_size, in_h, in_w, 3], tf.uint8,
                                           name="image")])
    archive.write_out(os.fspath(path), verbose=False)


# ---------------------------------------------------------------------------
# TFLite
# ---------------------------------------------------------------------------

def convert_tflite(saved_model_dir, quantization="fp32", representative_data=None,
                   signature_key="serving_default"):
    """Converts a batch-1 SavedModel signature to a TFLite flatbuffer.

    Args:
        saved_model_dir: a SavedModel written with ``batch_size=1``.
        quantization: ``"fp32"``, ``"fp16"`` (float16 weights),
            ``"int8_dynamic"`` (int8 weights, float activations) or
            ``"int8"`` (full integer: int8 weights, activations, input and
            output; needs ``representative_data``).
        representative_data: float32 ``(N, H, W, 3)`` normalized crops used to
            calibrate activation ranges for ``"int8"``.
        signature_key: which signature to convert.

    Returns:
        The ``.tflite`` bytes.
    """
    tf = _tf()
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {TFLITE_QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}")
    if quantization == "int8" and (representative_data is None or len(representative_data) == 0):
        raise ValueError(
            "Full-integer quantization needs representative crops. Received: "
            f"representative_data={representative_data!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        os.fspath(saved_model_dir), signature_keys=[signature_key])
    if quantization == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8_dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        data = np.asarray(representative_data, np.float32)

        def dataset():
            for crop in data:
                yield [crop[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def analyze_tflite(model_content):
    """Returns the text of ``tf.lite.experimental.Analyzer`` with the GPU check."""
    tf = _tf()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        tf.lite.experimental.Analyzer.analyze(model_content=model_content,
                                              gpu_compatibility=True)
    return buffer.getvalue()


def tflite_ops(model_content):
    """Sorted list of the distinct builtin op names in a TFLite flatbuffer.

    Example:
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
    """Converts a heatmap model to ONNX (tf2onnx) with a dynamic batch.

    Input ``image`` float32 ``(B, H, W, 3)`` normalized; output ``heatmaps``.
    """
    if not isinstance(opset, int) or opset < 17:
        raise ValueError(f"`opset` must be an int >= 17. Received: opset={opset!r}")
    import tf2onnx  # noqa: optional dependency (the `export` extra)
    tf = _tf()
    (in_h, in_w), _, _ = model_io_shape(model)
    fn = tf.function(lambda image: {"heatmaps": model(image, training=False)})
    spec = [tf.TensorSpec([None, in_h, in_w, 3], tf.float32, name="image")]
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset,
                                  output_path=os.fspath(path))


# ---------------------------------------------------------------------------
# Representative data
# ---------------------------------------------------------------------------

def sample_crops(input_size, max_crops=64, annotations=SAMPLE_ANNOTATIONS, min_keypoints=1):
    """Real person crops from the bundled COCO sample, as uint8 RGB.

    Args:
        input_size: ``(H, W)`` of the crops.
        max_crops: how many people at most (first ones in file order).
        annotations: a COCO keypoints annotation file; images are read from
            ``../images/`` next to it.
        min_keypoints: skip people with fewer labelled keypoints.

    Returns:
        A tuple ``(crops uint8 (N, H, W, 3), records)`` where each record is a
        dict with ``image_id``, ``bbox``, ``center``, ``scale``.
    """
    import cv2

    with open(annotations) as f:
        coco = json.load(f)
    image_dir = os.path.join(os.path.dirname(os.path.dirname(annotations)), "images")
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    h, w = input_size
    crops, records, cache = [], [], {}
    for ann in coco["annotations"]:
        if len(crops) >= max_crops:
            break
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) < min_keypoints:
            continue
        bx, by, bw, bh = ann["bbox"]
        if bw < 1 or bh < 1:
            continue
        image_id = ann["image_id"]
        if image_id not in cache:
            bgr = cv2.imread(os.path.join(image_dir, files[image_id]), cv2.IMREAD_COLOR)
            cache = {image_id: cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)}
        center, scale = transforms.box_to_center_scale(ann["bbox"], w / h)
        crop = transforms.crop_image(cache[image_id], center, scale, (h, w))
        crops.append(np.asarray(crop, np.uint8))
        records.append(dict(image_id=image_id, bbox=list(ann["bbox"]),
                            center=np.asarray(center, np.float32).tolist(),
                            scale=np.asarray(scale, np.float32).tolist()))
    return np.stack(crops), records


def normalize_numpy(crops_uint8):
    """uint8 RGB crops -> normalized float32 (the Keras model's input)."""
    x = np.asarray(crops_uint8, np.float32) / 255.0
    return ((x - np.asarray(_MEAN, np.float32)) / np.asarray(_STD, np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------
# The one-call export
# ---------------------------------------------------------------------------

def _log(verbose, message):
    if verbose:
        print(message, flush=True)


def export_model(model, output_dir, formats=DEFAULT_FORMATS, keypoints=None,
                 representative_data=None, num_calibration_crops=64, opset=17,
                 overwrite=False, qat=False, prune=False, qat_kwargs=None, verbose=True):
    """Exports a heatmap model to every deployment format, atomically.

    Args:
        model: a heatmap ``keras.Model`` (e.g. ``keras_dpn.DPN4_32()``) or a
            path to a ``.keras`` file.
        output_dir: the export folder, e.g. ``saved_models/dpn4_32_coco``.
        formats: a subset of :data:`FORMATS`.
        keypoints: keypoint set name or ``KeypointSpec`` (stored in
            ``metadata.json``); defaults to ``"coco"`` for 17 heatmaps and
            ``"mpii"`` for 16.
        representative_data: uint8 RGB crops ``(N, H, W, 3)`` calibrating the
            full-integer model; defaults to real crops of the COCO sample.
        num_calibration_crops: how many sample crops when defaulted.
        opset: ONNX opset (>= 17).
        overwrite: replace an existing ``output_dir`` (only once the new
            export is complete); if False an existing folder raises
            ``FileExistsError`` before anything is written.
        qat: also run quantization-aware training (``keras_dpn.qat``, in a
            subprocess) and write ``model_qat_int8.tflite``.
        prune: also run pruning + int8 conversion (subprocess) and write
            ``model_pruned_int8.tflite``.
        qat_kwargs: extra options for :func:`keras_dpn.qat.run_subprocess`.
        verbose: print one line per file.

    Returns:
        A dict ``format -> final path``.

    Example:
    >>> import keras_dpn
    >>> from keras_dpn.export import export_model
    >>> model = keras_dpn.DPN4_32()
    >>> export_model(model, "saved_models/dpn4_32")  # doctest: +SKIP
    """
    import keras
    if isinstance(model, (str, os.PathLike)):
        model = keras.saving.load_model(os.fspath(model), compile=False)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model or a .keras path. Received: model={model!r}")
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"`formats` must be a non-empty subset of {FORMATS}. "
                         f"Received: formats={formats!r}")
    (in_h, in_w), (hm_h, hm_w), num_k = model_io_shape(model)
    if keypoints is None:
        keypoints = {17: "coco", 16: "mpii"}.get(num_k)
    spec = get_keypoint_spec(keypoints) if keypoints is not None else None
    if spec is not None and spec.num_keypoints != num_k:
        raise ValueError(
            f"The model outputs {num_k} heatmaps but keypoint set {spec.name!r} has "
            f"{spec.num_keypoints}. Received: keypoints={keypoints!r}")
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.exists(output_dir) and not overwrite:
        raise FileExistsError(
            f"Output folder already exists: {output_dir}. Pass overwrite=True "
            "(--overwrite on the command line) to replace it.")

    calib = None
    if "tflite_int8" in formats or qat or prune:
        if representative_data is None:
            representative_data, _ = sample_crops((in_h, in_w), num_calibration_crops)
        calib = np.asarray(representative_data)
        if calib.ndim != 4 or calib.shape[1:] != (in_h, in_w, 3):
            raise ValueError(
                f"`representative_data` must be uint8 crops of shape (N, {in_h}, {in_w}, 3). "
                f"Received: representative_data with shape {calib.shape!r}")
        calib = normalize_numpy(calib) if calib.dtype == np.uint8 else calib.astype(np.float32)

    written = {}
    reports = []
    with io_utils.atomic_directory(output_dir, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix="keras_dpn_export_") as scratch:
        model_path = os.path.join(tmp, "model.keras")
        model.save(model_path)
        written["keras"] = "model.keras"
        if "saved_model" in formats:
            write_saved_model(model, os.path.join(tmp, FILE_NAMES["saved_model"]))
            written["saved_model"] = FILE_NAMES["saved_model"]
            _log(verbose, f"saved_model        -> {output_dir}/saved_model")
        tflite_formats = [f for f in formats if f.startswith("tflite_")]
        if tflite_formats:
            batch1 = os.path.join(scratch, "batch1")
            write_saved_model(model, batch1, batch_size=1,
                              keypoints_signature="tflite_keypoints" in formats)
        for fmt in tflite_formats:
            if fmt == "tflite_keypoints":
                content = convert_tflite(batch1, "fp32", signature_key="keypoints")
            else:
                content = convert_tflite(batch1, fmt[len("tflite_"):], calib)
            report = analyze_tflite(content)
            ops = ops_from_report(report)
            bad = [op for op in FORBIDDEN_TFLITE_OPS if op in ops]
            if bad:
                raise RuntimeError(
                    f"{fmt}: the converter emitted {bad}; dilated convolutions would not "
                    "run natively on mobile GPU delegates.")
            name = FILE_NAMES[fmt]
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
            reports.append((name, report))
            written[fmt] = name
            _log(verbose, f"{fmt:<18} -> {output_dir}/{name} ({len(content) / 1e6:.2f} MB, "
                          f"GPU delegate: {'ok' if gpu_compatible(report) else 'NOT compatible'})")
        if "onnx" in formats:
            write_onnx(model, os.path.join(tmp, FILE_NAMES["onnx"]), opset=opset)
            written["onnx"] = FILE_NAMES["onnx"]
            _log(verbose, f"onnx               -> {output_dir}/model.onnx (opset {opset})")
        if qat or prune:
            from keras_dpn import qat as qat_lib  # only spawns a subprocess
            calib_path = os.path.join(scratch, "calibration.npy")
            np.save(calib_path, calib)
            for mode, enabled in (("qat", qat), ("prune", prune)):
                if not enabled:
                    continue
                fmt = "tflite_qat" if mode == "qat" else "tflite_pruned"
                name = FILE_NAMES[fmt]
                qat_lib.run_subprocess(model_path, os.path.join(tmp, name), calib_path,
                                       mode=mode, **(qat_kwargs or {}))
                with open(os.path.join(tmp, name), "rb") as f:
                    reports.append((name, analyze_tflite(f.read())))
                written[fmt] = name
                _log(verbose, f"{fmt:<18} -> {output_dir}/{name}")
        if reports:
            with open(os.path.join(tmp, "gpu_compatibility.txt"), "w") as f:
                for name, report in reports:
                    verdict = "compatible" if gpu_compatible(report) else "NOT compatible"
                    f.write(f"==== {name}: GPU delegate {verdict}\n")
                    f.write(_gpu_section(report) + "\n\n")
        metadata = dict(
            model_name=model.name,
            input_size=[in_h, in_w],
            heatmap_size=[hm_h, hm_w],
            num_keypoints=num_k,
            keypoints=None if spec is None else dict(
                name=spec.name, names=list(spec.names),
                skeleton=[list(p) for p in spec.skeleton],
                flip_pairs=[list(p) for p in spec.flip_pairs]),
            normalization=dict(mean=list(_MEAN), std=list(_STD), scale=1 / 255.0,
                               layout="NHWC RGB"),
            files={k: v for k, v in written.items()},
            tflite=_tflite_io(tmp, written),
        )
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
    return {k: os.path.join(output_dir, v) for k, v in written.items()}


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
    for fmt, name in written.items():
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

