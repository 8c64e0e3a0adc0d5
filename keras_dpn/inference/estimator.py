"""Top-down pose inference on images: :class:`PoseEstimator`.

One class runs any deployed form of a heatmap model (a Keras model, a
``.keras`` file, a SavedModel folder, a ``.tflite`` or an ``.onnx`` file) with
the same pre- and post-processing: each person box becomes a crop
(:mod:`keras_dpn.core.transforms`, HRNet geometry), the crops go through the model
in batches (one at a time for TFLite, whose files have a fixed batch of 1),
and the heatmaps are decoded to image pixels by
:class:`keras_dpn.core.codec.HeatmapCodec`. The optional flip test averages the
heatmaps of the mirrored crop (flipped back with the keypoint set's flip
pairs and the reference's one-pixel shift).

ONNX Runtime and LiteRT are imported only when such a file is loaded.

Example:
>>> import keras_dpn, numpy as np
>>> est = keras_dpn.PoseEstimator(keras_dpn.DPN1_32(input_shape=(128, 96, 3)))
>>> people = est.predict(np.zeros((240, 320, 3), np.uint8))
>>> people[0]["keypoints"].shape
(17, 3)
"""

import os
import warnings

import numpy as np

from keras_dpn.core import optional as _optional
from keras_dpn.inference import runtimes
from keras_dpn.core import transforms
from keras_dpn.core.codec import HeatmapCodec, merge_flip
from keras_dpn.inference.detectors import DetectionFile, clip_boxes, get_detector
from keras_dpn.core.keypoints import check_keypoint_count, get_keypoint_spec, keypoint_source

MODEL_SUFFIXES = (".keras", ".tflite", ".onnx")
# What an export folder (keras_dpn.deploy.export) runs, best first: the float models
# (a SavedModel needs TensorFlow), then the smaller, less exact TFLite files;
# the end-to-end keypoints file last (it cannot be flip-tested).
EXPORT_FOLDER_ORDER = ("saved_model", "model.keras", "model.onnx", "model_fp32.tflite",
                       "model_fp16.tflite", "model_int8_dynamic.tflite",
                       "model_qat_int8.tflite", "model_int8.tflite",
                       "model_pruned_int8.tflite", "keypoints_fp32.tflite")
EXPORT_METADATA = "metadata.json"
# Smallest box side (pixels) that is cropped: a narrower box holds no person.
MIN_BOX_SIZE = 1.0

WHOLE_IMAGE_WARNING = (
    "No person boxes and no detector: the whole image is used as one person box. That suits "
    "a photo of one person who fills it; otherwise pass boxes (or a COCO detection file) "
    "or a detector.")


# ---------------------------------------------------------------------------
# Images and boxes
# ---------------------------------------------------------------------------

def read_image(image):
    """A path or an array -> RGB uint8 ``(H, W, 3)``.

    Args:
        image: a file path (anything OpenCV decodes; a 16-bit file, e.g. a
            16-bit PNG, is converted to 8 bits by its top 8 bits, with a
            ``UserWarning`` that says so) or an ``(H, W)``, ``(H, W, 1)``,
            ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA) array: uint8, float in
            [0, 1] (or [0, 255]), or integers in [0, 255].

    Raises:
        ValueError: the file cannot be decoded, the image is empty, holds NaN
            or infinite values, or is a 16-bit array (its range is unknown:
            12-bit data is common) or otherwise out of range, which is never
            rescaled implicitly.
    """
    if isinstance(image, (str, os.PathLike)):
        import cv2
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"Image file not found. Received: image={path!r}")
        # ANYDEPTH keeps 16 bits: IMREAD_COLOR alone scaled them to 8 without a word.
        bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        if bgr is not None and bgr.dtype == np.uint16:
            warnings.warn(f"{path} is a 16-bit image: converted to 8 bits (value >> 8, the "
                          f"file format's full 16-bit range).", stacklevel=2)
            bgr = (bgr >> 8).astype(np.uint8)
        elif bgr is not None and bgr.dtype != np.uint8:
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)  # float formats (EXR, HDR): OpenCV's 8 bits
        if bgr is None:
            raise ValueError(
                f"Could not decode the image file (not an image, or a format OpenCV "
                f"cannot read). Received: image={path!r}")
        image = bgr[..., ::-1]
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"`image` must be (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA. "
            f"Received: image with shape {array.shape!r}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`image` is empty. Received: image with shape {array.shape!r}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    return np.ascontiguousarray(array)


def _to_uint8(array):
    # Clipping used to hide both a NaN image and a 16-bit one (mostly white):
    # each is now an error that says what to do.
    if array.dtype in (np.uint16, np.int16):
        raise ValueError(
            f"16-bit images are not rescaled implicitly: convert to uint8 (e.g. "
            f"`(image >> 8).astype(np.uint8)` for full-range 16-bit) or to float in [0, 1]. "
            f"Received: image with dtype {array.dtype.name} and values up to {array.max()}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(f"`image` holds {int(bad.sum())} NaN or infinite values. "
                             f"Received: image with dtype {array.dtype.name}")
        low, high = float(array.min()), float(array.max())
        if high <= 1.0 and low >= 0.0:
            array = array * 255.0
        elif low < 0.0 or high > 255.0:
            raise ValueError(f"A float image must hold values in [0, 1] or [0, 255]. "
                             f"Received: image with values in [{low:g}, {high:g}]")
        return np.rint(array).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        array = array.astype(np.int64)
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"An integer image must hold values in [0, 255]. "
                             f"Received: image with values in [{array.min()}, {array.max()}]")
        return array.astype(np.uint8)
    raise ValueError(f"`image` must be a uint8, integer or float array. "
                     f"Received: image with dtype {array.dtype!r}")


def validate_boxes(boxes, image_shape):
    """Checks ``(N, 4)`` xywh boxes against an image; returns them clipped.

    An empty list gives ``(0, 4)`` boxes (nobody in the image).

    Raises:
        ValueError: a box is not finite, is narrower or lower than one pixel
            (a 1e-9 px box used to return a confident person with every joint
            at one point), or covers less than one pixel of the image in
            width or height.
    """
    try:
        boxes = np.asarray(boxes, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`boxes` must be a numeric (N, 4) array. Received: boxes={boxes!r}") from e
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"`boxes` must be (N, 4) as x, y, width, height. "
                         f"Received: boxes with shape {boxes.shape!r}")
    height, width = image_shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        if not np.all(np.isfinite([x, y, w, h])):
            raise ValueError(f"Box {i} is not finite. Received: boxes[{i}]={boxes[i].tolist()!r}")
        if not (w >= MIN_BOX_SIZE and h >= MIN_BOX_SIZE):
            raise ValueError(f"Box {i} is degenerate (width and height must be at least "
                             f"{MIN_BOX_SIZE:g} pixel). Received: boxes[{i}]={boxes[i].tolist()!r}")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(
                f"Box {i} lies outside the {width}x{height} image. "
                f"Received: boxes[{i}]={boxes[i].tolist()!r}")
    clipped = clip_boxes(boxes, image_shape)[0]
    inside = np.minimum(clipped[:, 2], clipped[:, 3])
    if np.any(inside < MIN_BOX_SIZE):
        i = int(np.argmax(inside < MIN_BOX_SIZE))
        raise ValueError(
            f"Box {i} covers less than {MIN_BOX_SIZE:g} pixel of the {width}x{height} image in "
            f"width or height. Received: boxes[{i}]={boxes[i].tolist()!r}")
    return clipped.astype(np.float32)


def boxes_from_detections(file, image_id, score_threshold=0.0, category_id=1,
                          return_scores=False):
    """Person boxes of one image from a COCO detection-results file.

    Args:
        file: JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` (the COCO results format, e.g.
            ``COCO_val2017_detections_AP_H_56_person.json``), or that list.
        image_id: which image.
        score_threshold: keep detections with ``score >= score_threshold``.
        category_id: 1 (person) in COCO.
        return_scores: also return the detection scores.

    Returns:
        ``(N, 4)`` float32 xywh boxes, highest score first (and ``(N,)``
        scores if ``return_scores``). To look up many images (video frames),
        read the file once with :class:`keras_dpn.inference.detectors.DetectionFile`.

    Example:
    >>> boxes = boxes_from_detections(
    ...     "sample_data/coco/annotations/person_detections_sample.json", 785, 0.5)
    >>> boxes.shape
    (1, 4)
    """
    boxes, scores = DetectionFile(file, score_threshold, category_id).lookup(image_id)
    return (boxes, scores) if return_scores else boxes


# ---------------------------------------------------------------------------
# Backends: one small adapter per file kind
# ---------------------------------------------------------------------------

class _Backend:
    """``run(float32 normalized crops (N, H, W, 3)) -> heatmaps (N, h, w, K)``."""

    kind = "?"
    input_size = None   # (H, W)
    output_shape = None  # (h, w, K) or (K, 3) for an end-to-end keypoint model
    end_to_end = False
    max_batch = None


class _KerasBackend(_Backend):
    kind = "keras"

    def __init__(self, model, input_size):
        self.model = model
        in_shape = tuple(model.input_shape)
        if len(in_shape) != 4 or in_shape[-1] != 3:
            raise ValueError(f"Expected a model with (B, H, W, 3) input. "
                             f"Received: model with input_shape={in_shape!r}")
        fixed = in_shape[1:3]
        if None in fixed:
            if input_size is None:
                raise ValueError("The model accepts any input size: pass `input_size=(H, W)`. "
                                 "Received: input_size=None")
            self.input_size = tuple(input_size)
        else:
            self.input_size = tuple(int(s) for s in fixed)
        out = model.compute_output_shape((1,) + self.input_size + (3,))
        if isinstance(out, list) or len(out) != 4:
            raise ValueError(f"Expected a heatmap model with one (B, h, w, K) output. "
                             f"Received: output shape {out!r}")
        self.output_shape = tuple(int(s) for s in out[1:])
        self._fn = None

    def run(self, x):
        if _optional.backend() != "tensorflow":
            # JAX / PyTorch: Keras' compiled predict step (jitted on JAX).
            import keras
            return keras.ops.convert_to_numpy(self.model.predict_on_batch(x)).astype(np.float32)
        import tensorflow as tf
        if self._fn is None:
            model = self.model
            self._fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        return np.asarray(self._fn(tf.constant(x)), np.float32)


class _SavedModelBackend(_Backend):
    kind = "saved_model"

    def __init__(self, path):
        tf = _optional.tensorflow("Loading a SavedModel (use the .keras, .onnx or .tflite file "
                                  "of the export instead)")
        try:
            loaded = tf.saved_model.load(path)
        except Exception as e:  # noqa: BLE001 - TF raises many kinds here
            raise ValueError(f"Could not load a SavedModel. Received: model_or_path={path!r} "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"The SavedModel has no `serving_default` signature. "
                             f"Received: model_or_path={path!r}")
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures["serving_default"]
        (spec,) = self._fn.structured_input_signature[1].values()
        self._input_name = list(self._fn.structured_input_signature[1])[0]
        shape = spec.shape.as_list()
        if len(shape) != 4 or None in shape[1:3] or spec.dtype != tf.float32:
            raise ValueError(f"`serving_default` must take float32 (B, H, W, 3) images. "
                             f"Received: {spec!r}")
        self.input_size = (shape[1], shape[2])
        self.max_batch = shape[0]
        out = list(self._fn.structured_outputs.values())[0]
        self._output_name = list(self._fn.structured_outputs)[0]
        self.output_shape = tuple(out.shape.as_list()[1:])

    def run(self, x):
        import tensorflow as tf
        return self._fn(**{self._input_name: tf.constant(x)})[self._output_name].numpy()


class _TFLiteBackend(_Backend):
    kind = "tflite"
    max_batch = 1

    def __init__(self, path, num_threads=None):
        self._interp = runtimes.tflite_interpreter(path, num_threads)
        inputs = self._interp.get_input_details()
        outputs = self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"Expected one input and one output. Received: {path!r} with "
                             f"{len(inputs)} inputs and {len(outputs)} outputs")
        self._in, self._out = inputs[0], outputs[0]
        shape = [int(s) for s in self._in["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"Expected a (1, H, W, 3) input. Received: {path!r} with input "
                             f"shape {shape}")
        self.input_size = (shape[1], shape[2])
        self.output_shape = tuple(int(s) for s in self._out["shape"][1:])
        # The end-to-end file: uint8 crop in, (K, 3) keypoints out.
        self.end_to_end = self._in["dtype"] == np.uint8 and len(self.output_shape) == 2

    def run(self, x):
        out = []
        for item in x:
            self._interp.set_tensor(self._in["index"], self._quantize(item[None]))
            self._interp.invoke()
            out.append(self._dequantize(self._interp.get_tensor(self._out["index"])))
        return np.concatenate(out, axis=0)

    def _quantize(self, x):
        dtype = self._in["dtype"]
        if dtype == np.float32 or dtype == np.uint8 and self.end_to_end:
            return x.astype(dtype)
        return runtimes.quantize(x, self._in)

    def _dequantize(self, y):
        return runtimes.dequantize(y, self._out)


class _ONNXBackend(_Backend):
    kind = "onnx"

    def __init__(self, path, num_threads=None):
        self._sess = runtimes.onnx_session(path, num_threads)
        (inp,) = self._sess.get_inputs()
        shape = inp.shape
        if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]):
            raise ValueError(f"Expected a (B, H, W, 3) input with static H, W. "
                             f"Received: {path!r} with input shape {shape}")
        self._input_name = inp.name
        self.input_size = (shape[1], shape[2])
        self.max_batch = shape[0] if isinstance(shape[0], int) else None
        self.output_shape = tuple(self._sess.get_outputs()[0].shape[1:])

    def run(self, x):
        return self._sess.run(None, {self._input_name: x.astype(np.float32)})[0]


def load_keras_file(path, arg_name="model_or_path"):
    """``keras.saving.load_model(path, compile=False)`` with one-line errors naming ``path``.

    Keras reports a damaged or truncated ``.keras`` file as "File not found";
    this says what is wrong with it.

    Raises:
        ValueError: the file is missing, is not a zip archive, lacks the
            ``config.json`` of a ``.keras`` file, or fails to load.
    """
    import zipfile

    import keras

    # The custom layers are registered: the package root (keras_dpn/__init__.py),
    # always imported before this module, imports the layers and models.
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Model file not found. Received: {arg_name}={path!r}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"Not a valid .keras file: not a zip archive (damaged, truncated or "
                         f"another format) ({e}). Received: {arg_name}={path!r}") from None
    if "config.json" not in names:
        raise ValueError(f"Not a valid .keras file: the archive holds no config.json. "
                         f"Received: {arg_name}={path!r}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - zip, json and h5 errors alike
        raise ValueError(f"Could not load the .keras model (a damaged file, or layers this "
                         f"version does not know) ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}). Received: {arg_name}={path!r}") from e


def load_backend(model_or_path, input_size=None, num_threads=None):
    """Picks the adapter for a Keras model or a model path (see :class:`PoseEstimator`)."""
    import keras
    if isinstance(model_or_path, keras.Model):
        return _KerasBackend(model_or_path, input_size)
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError("`model_or_path` must be a keras.Model or a path to a .keras, "
                         ".tflite, .onnx file or a SavedModel folder. "
                         f"Received: model_or_path={model_or_path!r}")
    path = os.fspath(model_or_path)
    if not os.path.exists(path):
        raise ValueError(f"Model path not found. Received: model_or_path={path!r}")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return _SavedModelBackend(path)
        chosen = export_folder_model(path)
        if chosen is None:
            raise ValueError(f"The folder holds no saved_model.pb and none of the files of an "
                             f"export folder ({', '.join(EXPORT_FOLDER_ORDER[1:])}). "
                             f"Received: model_or_path={path!r}")
        return load_backend(chosen, input_size, num_threads)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".keras":
        return _KerasBackend(load_keras_file(path), input_size)
    if suffix == ".tflite":
        return _TFLiteBackend(path, num_threads)
    if suffix == ".onnx":
        return _ONNXBackend(path, num_threads)
    raise ValueError(f"Unknown model file kind: expected one of {MODEL_SUFFIXES} or a "
                     f"SavedModel folder. Received: model_or_path={path!r}")


def export_folder_model(folder):
    """The best model file of an export folder (:data:`EXPORT_FOLDER_ORDER`), or None.

    The SavedModel counts only where TensorFlow is installed.
    """
    for name in EXPORT_FOLDER_ORDER:
        path = os.path.join(folder, name)
        if name == "saved_model":
            if (os.path.isfile(os.path.join(path, "saved_model.pb"))
                    and _optional.is_installed("tensorflow")):
                return path
        elif os.path.isfile(path):
            return path
    return None


def recorded_keypoint_spec(model_or_path):
    """The keypoint set an export records for a model path: ``(spec, where)`` or None.

    An export folder, a file in one, or its ``saved_model/``: the folder's
    ``metadata.json`` (``keypoints``, written by :func:`keras_dpn.deploy.export.export_model`).

    Raises:
        ValueError: the ``metadata.json`` records an invalid set (naming it).
    """
    if not isinstance(model_or_path, (str, os.PathLike)):
        return None
    path = os.path.abspath(os.fspath(model_or_path))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.basename(folder) == "saved_model" and not os.path.isfile(
            os.path.join(folder, EXPORT_METADATA)):
        folder = os.path.dirname(folder)
    meta_path = os.path.join(folder, EXPORT_METADATA)
    if not os.path.isfile(meta_path):
        return None
    import json
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None  # not ours: the model's own count decides
    recorded = meta.get("keypoints") if isinstance(meta, dict) else None
    if not isinstance(recorded, dict) or "sigmas" not in recorded:
        return None  # exports of keras-dpn 0.1 record no sigmas (or no set at all)
    return get_keypoint_spec(recorded, source=f"{meta_path} `keypoints`"), f"from {meta_path}"


# ---------------------------------------------------------------------------
# PoseEstimator
# ---------------------------------------------------------------------------

class PoseEstimator:
    """Top-down pose estimation with any exported form of a heatmap model.

    Args:
        model_or_path: a ``keras.Model``, or a path to a ``.keras`` file, a
            SavedModel folder (or a ``keras_dpn.deploy.export`` folder), a ``.tflite``
            (heatmap or end-to-end keypoint model) or an ``.onnx`` file.
        keypoints: keypoint set: ``"coco"``, ``"mpii"``, a keypoint-set
            ``.json`` file, a dict or a :class:`~keras_dpn.KeypointSpec`; its
            joint count must match the model's heatmaps. None: the set the
            export's ``metadata.json`` records (an export folder or a file in
            one), else ``coco`` for 17 heatmaps and ``mpii`` for 16.
        input_size: ``(H, W)``; only needed for a Keras model that accepts any
            size. Fixed-size models must agree with it.
        flip_test: average with the heatmaps of the mirrored crop.
        batch_size: crops per model call (TFLite always runs one at a time).
        padding: box padding factor (1.25, the reference's).
        num_threads: CPU threads for TFLite / ONNX Runtime (None: runtime default).
        detector: where :meth:`predict` finds people when it gets no boxes: a
            callable ``image -> (boxes (N, 4) xywh pixels, scores (N,))``, a
            :class:`keras_dpn.inference.detectors.ModelDetector`, or a ``.onnx`` /
            ``.tflite`` detection model path (default layout of
            :class:`~keras_dpn.inference.detectors.ModelDetector`). None: the whole
            image is one person, with a warning.

    Example:
    >>> import keras_dpn, numpy as np
    >>> image = "sample_data/coco/images/000000000785.jpg"
    >>> model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))  # or a trained model / a file
    >>> est = keras_dpn.PoseEstimator(model)
    >>> people = est.predict(image, boxes=[[280.8, 44.0, 218.7, 346.7]])
    >>> people[0]["keypoints"].shape  # x, y, score in image pixels
    (17, 3)
    >>> def my_detector(image):  # any callable: image -> (boxes xywh (N, 4), scores (N,))
    ...     return np.array([[280.8, 44.0, 218.7, 346.7]]), np.array([0.99])
    >>> est = keras_dpn.PoseEstimator(model, detector=my_detector)
    >>> len(est.predict(image))  # boxes from my_detector(image)
    1

    An exported file runs the same way (written by ``keras-dpn export``, so
    not run here):

    >>> est = keras_dpn.PoseEstimator("saved_models/dpn4_32/model_fp32.tflite")  # doctest: +SKIP
    """

    def __init__(self, model_or_path, keypoints=None, input_size=None, flip_test=False,
                 batch_size=16, padding=transforms.DEFAULT_PADDING, num_threads=None,
                 detector=None):
        if input_size is not None:
            if len(tuple(input_size)) != 2 or min(input_size) < 1:
                raise ValueError(f"`input_size` must be (height, width). "
                                 f"Received: input_size={input_size!r}")
            input_size = tuple(int(s) for s in input_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
        if keypoints is not None:
            spec, spec_from = get_keypoint_spec(keypoints), keypoint_source(keypoints)
        else:
            spec, spec_from = recorded_keypoint_spec(model_or_path) or (None, None)
        self.detector = get_detector(detector)
        self.backend = load_backend(model_or_path, input_size, num_threads)
        if input_size is not None and tuple(self.backend.input_size) != input_size:
            raise ValueError(
                f"The model's input size is {tuple(self.backend.input_size)}. "
                f"Received: input_size={input_size!r}")
        self.input_size = tuple(int(s) for s in self.backend.input_size)
        num_k = self.backend.output_shape[0] if self.backend.end_to_end \
            else self.backend.output_shape[-1]
        if spec is None:
            if num_k not in (17, 16):
                raise ValueError(
                    f"The model predicts {num_k} keypoints and no metadata.json beside it "
                    "records its keypoint set: pass it (keypoints= / --keypoints FILE.json). "
                    f"Received: keypoints=None")
            spec, spec_from = get_keypoint_spec({17: "coco", 16: "mpii"}[num_k]), "by count"
        where = (os.fspath(model_or_path) if isinstance(model_or_path, (str, os.PathLike))
                 else getattr(model_or_path, "name", "model"))
        self.spec = check_keypoint_count(spec, num_k, f"the model {where}", spec_from)
        if self.backend.end_to_end and flip_test:
            raise ValueError("The end-to-end keypoint TFLite model returns keypoints, not "
                             "heatmaps, so it cannot be flip-tested. Received: flip_test=True")
        self.flip_test = bool(flip_test)
        self.batch_size = min(batch_size, self.backend.max_batch or batch_size)
        self.padding = float(padding)
        if not self.backend.end_to_end:
            h, w = self.backend.output_shape[:2]
            self.codec = HeatmapCodec(self.input_size, (int(h), int(w)))

    @classmethod
    def from_preset(cls, preset, keypoints=None, format=None, **kwargs):
        """An estimator for a preset (:mod:`keras_dpn.hub.presets`), verified before use.

        Args:
            preset: a preset folder, a ``.tar.gz`` / ``.zip`` of one, a URL of
                such an archive, or a registered ``"arch.tag"``.
            keypoints: the keypoint set you expect; another set than the
                preset's raises. Default: the preset's.
            format: None (the Keras model built from ``config.json``) or an
                exported format the preset carries, e.g. ``"tflite_fp32"``.
            **kwargs: the other :class:`PoseEstimator` arguments.

        Example:
        >>> import os, tempfile, keras_dpn
        >>> with tempfile.TemporaryDirectory() as d:  # a preset folder of your own
        ...     _ = keras_dpn.hub.presets.save_preset(
        ...         keras_dpn.DPN1_32(input_shape=(64, 48, 3)), os.path.join(d, "tiny"))
        ...     est = PoseEstimator.from_preset(os.path.join(d, "tiny"))
        >>> people = est.predict("sample_data/coco/images/000000000785.jpg",
        ...                      boxes=[[280.8, 44.0, 218.7, 346.7]])
        >>> people[0]["keypoints"].shape
        (17, 3)

        A registered ``"arch.tag"`` downloads its archive first (not run here):

        >>> est = PoseEstimator.from_preset("DPN4_32.coco")  # doctest: +SKIP
        """
        from keras_dpn.hub import presets
        model, spec = presets.estimator_model(preset, keypoints=keypoints, format=format)
        return cls(model, keypoints=spec, **kwargs)

    @property
    def kind(self):
        """``"keras"``, ``"saved_model"``, ``"tflite"`` or ``"onnx"``."""
        return self.backend.kind

    def crop(self, image, boxes=None):
        """Crops of the people: ``(uint8 crops (N, H, W, 3), centers, scales, boxes)``."""
        image = read_image(image)
        if boxes is None:
            boxes = [[0, 0, image.shape[1], image.shape[0]]]
        boxes = validate_boxes(boxes, image.shape)
        h, w = self.input_size
        centers, scales = transforms.box_to_center_scale(boxes, w / h, padding=self.padding)
        centers = centers.reshape(-1, 2)
        scales = scales.reshape(-1, 2)
        crops = np.stack([transforms.crop_image(image, c, s, (h, w))
                          for c, s in zip(centers, scales)]) if len(boxes) else \
            np.zeros((0, h, w, 3), np.uint8)
        return crops, centers, scales, boxes

    def predict_heatmaps(self, crops):
        """Heatmaps ``(N, h, w, K)`` of uint8 RGB crops, flip-tested if enabled."""
        if self.backend.end_to_end:
            raise ValueError("The end-to-end keypoint TFLite model has no heatmap output.")
        x = transforms.normalize_image(np.asarray(crops, np.uint8)).astype(np.float32)
        heatmaps = self._run(x)
        if self.flip_test:
            flipped = self._run(np.ascontiguousarray(x[:, :, ::-1]))
            heatmaps = merge_flip(heatmaps, flipped, self.spec.flip_index)
        return heatmaps

    def _run(self, x):
        out = [self.backend.run(x[i:i + self.batch_size])
               for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out, axis=0)

    def predict(self, image, boxes=None, box_scores=None):
        """Keypoints of every person in an image.

        The person boxes come from, in this order: ``boxes``; the estimator's
        ``detector``; the whole image (with a warning that says so).

        Args:
            image: RGB array or image path.
            boxes: ``(N, 4)`` person boxes ``x, y, width, height`` in image
                pixels (e.g. from :func:`boxes_from_detections`); ``[]``
                means nobody (an empty list is returned).
            box_scores: optional ``(N,)`` detection scores of ``boxes`` in
                [0, 1], multiplied into each person's score.

        Returns:
            A list with one dict per box: ``keypoints`` float32 ``(K, 3)`` (x,
            y in image pixels, heatmap score), ``box`` (the clipped xywh box)
            and ``score`` (mean keypoint score, times the box score if any).

        Raises:
            ValueError: undecodable, empty, NaN or 16-bit image; boxes that
                are NaN, infinite, narrower or lower than 1 pixel, or that
                cover less than 1 pixel of the image (degenerate boxes are
                refused, never skipped: the result has one entry per box);
                box scores (given or a detector's) that are NaN, infinite or
                outside [0, 1]; a detector that returns malformed boxes.
        """
        image = read_image(image)
        scores_from = "the argument"
        if boxes is None:
            if box_scores is not None:
                raise ValueError("`box_scores` belong to `boxes`. Received: box_scores with "
                                 "boxes=None")
            if self.detector is not None:
                boxes, box_scores = self.detector(image)
                scores_from = f"the detector's scores ({self.detector!r})"
            else:
                warnings.warn(WHOLE_IMAGE_WARNING, stacklevel=2)
                boxes = [[0, 0, image.shape[1], image.shape[0]]]
        boxes = validate_boxes(boxes, image.shape)
        box_scores = np.ones(len(boxes)) if box_scores is None else \
            np.asarray(box_scores, np.float64).reshape(-1)
        if box_scores.shape[0] != len(boxes):
            raise ValueError(f"`box_scores` needs one score per box ({len(boxes)}). "
                             f"Received: box_scores with {box_scores.shape[0]} entries")
        # Person scores are box score x mean joint score: a score of -1 or 1e6
        # would give people scored -1.43 or 1.4e6.
        bad = ~(np.isfinite(box_scores) & (box_scores >= 0.0) & (box_scores <= 1.0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"`box_scores` must be finite and in [0, 1] (probabilities; "
                             f"from {scores_from}). Received: "
                             f"box_scores[{i}]={box_scores[i].tolist()!r}")
        if len(boxes) == 0:
            return []
        crops, centers, scales, boxes = self.crop(image, boxes)
        if self.backend.end_to_end:
            keypoints = self._end_to_end(crops, centers, scales)
        else:
            heatmaps = self.predict_heatmaps(crops)
            keypoints = self.codec.decode_to_image(heatmaps, centers, scales)
        if not np.all(np.isfinite(keypoints)):
            raise ValueError(f"The {self.kind} model returned NaN or infinite values (a broken "
                             f"conversion?). Received: {np.size(keypoints)} keypoint values with "
                             f"{int((~np.isfinite(keypoints)).sum())} not finite")
        return [dict(keypoints=kp.astype(np.float32), box=box,
                     score=float(np.mean(kp[:, 2]) * s))
                for kp, box, s in zip(keypoints, boxes, box_scores)]

    def _end_to_end(self, crops, centers, scales):
        out = self._run(crops)  # (N, K, 3): x, y in crop pixels
        result = np.zeros_like(out, dtype=np.float32)
        for i in range(len(out)):
            inv = transforms.get_affine_transform(centers[i], scales[i], 0.0, self.input_size,
                                                  inverse=True)
            result[i, :, :2] = transforms.affine_transform_points(out[i, :, :2], inv)
            result[i, :, 2] = out[i, :, 2]
        return result
