"""Person boxes for top-down pose estimation: detectors, detection files, box ops.

A top-down estimator needs one box per person. :class:`~keras_dpn.PoseEstimator`
and ``keras-dpn predict`` take them from, in this order:

1. explicit boxes (``predict(image, boxes=...)``, ``boxes=[]`` means nobody);
2. a COCO detection-results file (:class:`DetectionFile`, ``--boxes``);
3. a detector: any callable that follows the interface below, or a
   detection model file (``.onnx`` / ``.tflite``) read by :class:`ModelDetector`;
4. the whole image as one box, with a printed warning.

**The detector interface.** A detector is a callable
``detector(image) -> (boxes, scores)`` where ``image`` is an RGB uint8
``(H, W, 3)`` array, ``boxes`` an ``(N, 4)`` array of ``x, y, width, height``
in image pixels and ``scores`` an ``(N,)`` array (higher is more confident).
Anything else (another shape, NaN or infinite values, a box narrower or lower
than 1 pixel or outside the image) raises a ``ValueError`` that names the detector.

**Detection model files.** :class:`ModelDetector` runs an ONNX (ONNX Runtime)
or TFLite (LiteRT) detection model and turns its outputs into the interface
above; a few arguments describe the output layout (which output holds the
boxes, the scores and the classes, the box format, normalized or pixel
coordinates, the person class id), and it applies a score threshold and NMS.
:func:`describe_model` prints a file's inputs and outputs to find them.

Example:
>>> import numpy as np
>>> def detector(image):  # one fixed box: the documented interface
...     return np.array([[10.0, 20.0, 50.0, 100.0]]), np.array([0.9])
>>> boxes, scores = get_detector(detector)(np.zeros((240, 320, 3), np.uint8))
>>> boxes.tolist(), scores.shape
([[10.0, 20.0, 50.0, 100.0]], (1,))
"""

import json
import os

import numpy as np

from keras_dpn.inference import runtimes

BOX_FORMATS = ("xyxy", "yxyx", "xywh", "cxcywh")
DETECTOR_SUFFIXES = (".onnx", ".tflite")


# ---------------------------------------------------------------------------
# Box operations (numpy; boxes are x, y, width, height unless said otherwise)
# ---------------------------------------------------------------------------

def box_iou(a, b):
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` xywh boxes -> ``(N, M)``.

    Example:
    >>> box_iou([[0, 0, 10, 10]], [[5, 0, 10, 10], [20, 20, 5, 5]]).round(3).tolist()
    [[0.333, 0.0]]
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes, scores, iou_threshold):
    """Greedy non-maximum suppression; returns kept indices, best score first.

    Args:
        boxes: ``(N, 4)`` xywh boxes.
        scores: ``(N,)`` scores.
        iou_threshold: a box overlapping a kept, better one by more than this
            is dropped.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(boxes, boxes)
    keep = []
    suppressed = np.zeros(len(scores), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, np.int64)


def convert_boxes(boxes, box_format, normalized=False, size=None):
    """Boxes in a detector's layout -> ``(N, 4)`` xywh in that frame's pixels.

    Args:
        boxes: ``(N, 4)`` array.
        box_format: ``"xyxy"`` (corners), ``"yxyx"`` (corners, TF Object
            Detection API / TFLite SSD order), ``"xywh"`` (corner and size)
            or ``"cxcywh"`` (center and size, YOLO).
        normalized: coordinates are fractions of the frame size.
        size: ``(height, width)`` of the frame; needed when ``normalized``.

    Example:
    >>> convert_boxes([[0.1, 0.2, 0.5, 0.6]], "yxyx", True, (100, 200)).tolist()
    [[40.0, 10.0, 80.0, 40.0]]
    """
    if box_format not in BOX_FORMATS:
        raise ValueError(f"`box_format` must be one of {BOX_FORMATS}. "
                         f"Received: box_format={box_format!r}")
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if box_format == "yxyx":
        b = b[:, [1, 0, 3, 2]]
    if normalized:
        if size is None:
            raise ValueError("Normalized boxes need the frame `size` (height, width). "
                             "Received: size=None")
        h, w = size
        b = b * np.array([w, h, w, h], np.float64)
    if box_format in ("xyxy", "yxyx"):
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    if box_format == "cxcywh":
        return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 2], b[:, 3]], axis=1)
    return b


def clip_boxes(boxes, image_shape):
    """Clips ``(N, 4)`` xywh boxes to an image; returns the boxes and a mask of usable ones.

    Usable: at least 1 pixel wide and high inside the image, the smallest box
    that :class:`keras_dpn.PoseEstimator` crops.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    height, width = image_shape[:2]
    x0 = np.clip(b[:, 0], 0, width)
    y0 = np.clip(b[:, 1], 0, height)
    x1 = np.clip(b[:, 0] + b[:, 2], 0, width)
    y1 = np.clip(b[:, 1] + b[:, 3], 0, height)
    clipped = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    return clipped, (clipped[:, 2] >= 1) & (clipped[:, 3] >= 1)


# ---------------------------------------------------------------------------
# Checking what a detector returned
# ---------------------------------------------------------------------------

def check_detections(boxes, scores, image_shape, source="the detector"):
    """Validates a detector's ``(boxes, scores)``; returns float32 copies.

    Args:
        boxes: ``(N, 4)`` xywh boxes in image pixels (``[]`` for nobody).
        scores: ``(N,)`` scores, or None for all ones.
        image_shape: the image's shape (for the outside-the-image check).
        source: how to name the detector in error messages.

    Raises:
        ValueError: wrong shape, a NaN or infinite value, a box narrower or
            lower than 1 pixel or entirely outside the image.
    """
    try:
        boxes = np.asarray(boxes, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source} returned boxes that are not a numeric (N, 4) array. "
                         f"Received: boxes={boxes!r}") from e
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{source} must return (N, 4) boxes as x, y, width, height. "
                         f"Received: boxes with shape {boxes.shape!r}")
    n = len(boxes)
    if scores is None:
        scores = np.ones(n, np.float64)
    try:
        scores = np.asarray(scores, np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source} returned scores that are not a numeric (N,) array. "
                         f"Received: scores={scores!r}") from e
    if scores.shape[0] != n:
        raise ValueError(f"{source} must return one score per box ({n}). "
                         f"Received: scores with shape {scores.shape!r}")
    for name, values in (("boxes", boxes), ("scores", scores)):
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{source} returned a NaN or infinite value in {name}[{i}]. "
                             f"Received: {name}[{i}]={values[i].tolist()!r}")
    height, width = image_shape[:2]
    for i, (x, y, w, h) in enumerate(boxes):
        if not (w >= 1 and h >= 1):  # a sub-pixel box holds no person (PoseEstimator refuses it)
            raise ValueError(f"{source} returned degenerate box {i} (width and height must be "
                             f"at least 1 pixel). Received: boxes[{i}]={boxes[i].tolist()!r}")
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            raise ValueError(f"{source} returned box {i} outside the {width}x{height} image. "
                             f"Received: boxes[{i}]={boxes[i].tolist()!r}")
    return boxes.astype(np.float32), scores.astype(np.float32)


class CallableDetector:
    """Wraps a user callable ``image -> (boxes, scores)`` and checks its answers."""

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise ValueError(f"`detector` must be callable. Received: detector={fn!r}")
        self.fn = fn
        self.name = name or f"detector {getattr(fn, '__name__', type(fn).__name__)!r}"

    def __call__(self, image):
        out = self.fn(image)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise ValueError(f"The {self.name} must return a pair (boxes (N, 4), scores (N,)). "
                             f"Received: {type(out).__name__}"
                             f"{' of length %d' % len(out) if hasattr(out, '__len__') else ''}")
        return check_detections(out[0], out[1], np.shape(image), f"The {self.name}")

    def __repr__(self):
        return f"CallableDetector({self.name})"


# ---------------------------------------------------------------------------
# COCO detection-results files
# ---------------------------------------------------------------------------

def check_score_threshold(value, name="score_threshold"):
    """``value`` as a float in [0, 1]; a one-line ``ValueError`` otherwise.

    A NaN threshold compares false with every score: it kept every detection.
    """
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}")
    return threshold


class DetectionFile:
    """Person boxes from a COCO detection-results JSON file, read once.

    Every entry is checked when the file is read (``bbox`` of four finite
    numbers, a finite ``score``), so a broken file fails before any frame is
    processed, naming the file and the entry.

    Args:
        file: path of a JSON list of ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}`` (e.g.
            ``COCO_val2017_detections_AP_H_56_person.json``), or that list.
        score_threshold: keep detections with ``score >= score_threshold``.
        category_id: 1 (person) in COCO.

    Example:
    >>> dets = DetectionFile("sample_data/coco/annotations/person_detections_sample.json", 0.5)
    >>> boxes, scores = dets.lookup(785)
    >>> boxes.shape
    (1, 4)
    """

    def __init__(self, file, score_threshold=0.0, category_id=1):
        if isinstance(file, (str, os.PathLike)):
            self.name = os.fspath(file)
            try:
                with open(file) as f:
                    detections = json.load(f)
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"Could not read a COCO detection-results JSON file. "
                                 f"Received: file={self.name!r} ({e})") from e
        else:
            self.name = "<list>"
            detections = file
        if not isinstance(detections, list):
            raise ValueError("A detection-results file holds a JSON list of "
                             "{image_id, category_id, bbox, score}. "
                             f"Received: file={self.name!r} with a top-level "
                             f"{type(detections).__name__}")
        self.score_threshold = check_score_threshold(score_threshold)
        self._by_image = {}
        for i, d in enumerate(detections):
            if not isinstance(d, dict) or "bbox" not in d or "image_id" not in d:
                raise ValueError(f"Detection {i} of {self.name!r} needs `image_id` and `bbox`. "
                                 f"Received: {d!r}")
            try:
                bbox = np.asarray(d["bbox"], np.float64)
                score = float(d.get("score", 1.0))
            except (TypeError, ValueError) as e:
                raise ValueError(f"Detection {i} of {self.name!r} has a non-numeric bbox or "
                                 f"score. Received: {d!r}") from e
            if bbox.shape != (4,) or not np.all(np.isfinite(bbox)) or not np.isfinite(score):
                raise ValueError(f"Detection {i} of {self.name!r} needs a bbox of 4 finite "
                                 f"numbers and a finite score. Received: {d!r}")
            if d.get("category_id", category_id) != category_id or score < score_threshold:
                continue
            self._by_image.setdefault(d["image_id"], []).append((score, bbox))

    def lookup(self, image_id):
        """``(boxes (N, 4) float32, scores (N,) float32)`` of one image, best first."""
        rows = sorted(self._by_image.get(image_id, []), key=lambda r: -r[0])
        boxes = np.asarray([r[1] for r in rows], np.float32).reshape(-1, 4)
        return boxes, np.asarray([r[0] for r in rows], np.float32)

    def __repr__(self):
        return f"DetectionFile({self.name!r}, score_threshold={self.score_threshold})"


# ---------------------------------------------------------------------------
# Detection model files: ONNX Runtime or LiteRT, with a described output layout
# ---------------------------------------------------------------------------

def _onnx_type_name(onnx_type):
    # "tensor(float)" -> "float32": the numpy names TFLite reports too.
    name = onnx_type[len("tensor("):-1] if onnx_type.startswith("tensor(") else onnx_type
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


class _ONNXRunner:
    def __init__(self, path, num_threads):
        self._sess = runtimes.onnx_session(path, num_threads, "an ONNX detector", "detector")
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"Expected a detector with one image input. Received: {path!r} "
                             f"with inputs {[i.name for i in inputs]}")
        self._input = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.input_dtype = np.uint8 if "uint8" in inputs[0].type else np.float32
        self.outputs = [(o.name, list(o.shape), _onnx_type_name(o.type))
                        for o in self._sess.get_outputs()]

    def run(self, x):
        return self._sess.run(None, {self._input: x})


class _TFLiteRunner:
    def __init__(self, path, num_threads):
        self._interp = runtimes.tflite_interpreter(path, num_threads, "a TFLite detector",
                                                   "detector")
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"Expected a detector with one image input. Received: {path!r} "
                             f"with {len(inputs)} inputs")
        self._in = inputs[0]
        self._outs = self._interp.get_output_details()
        self.input_shape = [int(s) for s in self._in["shape"]]
        self.input_dtype = self._in["dtype"]
        self.outputs = [(o["name"], [int(s) for s in o["shape"]], np.dtype(o["dtype"]).name)
                        for o in self._outs]

    def run(self, x):
        if self.input_dtype not in (np.float32, np.uint8):
            x = runtimes.quantize(x, self._in)
        self._interp.set_tensor(self._in["index"], x.astype(self.input_dtype))
        self._interp.invoke()
        return [runtimes.dequantize(self._interp.get_tensor(o["index"]), o) for o in self._outs]


def _open_runner(path, num_threads=None):
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"A detector model must be a path to a {DETECTOR_SUFFIXES} file. "
                         f"Received: detector={path!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Detector file not found. Received: detector={path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        return _ONNXRunner(path, num_threads)
    if suffix == ".tflite":
        return _TFLiteRunner(path, num_threads)
    raise ValueError(f"A detector model must be one of {DETECTOR_SUFFIXES}. "
                     f"Received: detector={path!r}")


def _describe(runner):
    lines = [f"  input: shape {runner.input_shape}, {np.dtype(runner.input_dtype).name}"]
    lines += [f"  output {i}: {name!r} shape {shape} {dtype}"
              for i, (name, shape, dtype) in enumerate(runner.outputs)]
    return "\n".join(lines)


def describe_model(path):
    """The inputs and outputs of a detection model file, to fill in its layout.

    Returns:
        A multi-line string: the input shape and dtype, then one line per
        output with its index, name, shape and dtype.
    """
    return f"{os.fspath(path)}:\n{_describe(_open_runner(path))}"


class ModelDetector:
    """Runs an ONNX or TFLite person detector; answers in the detector interface.

    The image is resized to the model input (stretched, or letterboxed: scaled
    to fit and centred on grey padding), scaled to ``input_range`` (a uint8
    input gets the pixels as they are), fed in NHWC or NCHW (whichever axis
    holds 3 channels), and the chosen outputs are read as below. The batch
    axis (size 1) is dropped from every output.

    Args:
        path: ``.onnx`` or ``.tflite`` file.
        box_format: layout of the boxes output, one of ``"xyxy"``, ``"yxyx"``
            (TF Object Detection API, TFLite SSD), ``"xywh"``, ``"cxcywh"``
            (YOLO).
        normalized: box coordinates are fractions of the model input size
            (True) or model-input pixels (False).
        boxes_output: index or name of the ``(N, 4)`` boxes output.
        scores_output: index or name of the scores output: ``(N,)`` (one score
            per box), or ``(N, C)`` class scores of which column
            ``person_class`` is used.
        classes_output: optional index or name of an ``(N,)`` class-id output;
            only rows equal to ``person_class`` are kept.
        count_output: optional index or name of a scalar output with the
            number of valid rows (TFLite SSD's ``num_detections``).
        person_class: class id (or score column) of "person" (0 in the COCO
            80-class order used by YOLO and TFLite SSD).
        score_threshold: keep boxes scoring at least this.
        nms_iou: IoU above which a lower-scoring box is suppressed; None for a
            model that already applies NMS.
        max_detections: keep at most this many boxes (best first).
        input_range: ``(low, high)`` that 0 and 255 map to for a float input.
        letterbox: keep the aspect ratio when resizing.
        num_threads: ONNX Runtime / LiteRT CPU threads.

    Example, with the test suite's tiny detector (``tests/data/detector``: it scores
    16x16 windows of a 64x64 input by redness, so a red square is a "person"; the
    package ships no detection model):

    >>> import numpy as np
    >>> det = ModelDetector("tests/data/detector/tiny_detector.tflite", box_format="cxcywh",
    ...                     normalized=False, boxes_output=0, classes_output=1,
    ...                     scores_output=2, nms_iou=0.3)
    >>> image = np.zeros((128, 128, 3), np.uint8)
    >>> image[32:64, 64:96, 0] = 255  # red
    >>> boxes, scores = det(image)  # (N, 4) x, y, w, h in image pixels
    >>> boxes.round(1).tolist(), scores.round(2).tolist()
    ([[64.0, 32.0, 32.0, 32.0]], [1.0])

    The layout of a TFLite SSD MobileNet (not run: a download):

    >>> det = ModelDetector("ssd_mobilenet.tflite", box_format="yxyx",  # doctest: +SKIP
    ...                     boxes_output=0, classes_output=1, scores_output=2,
    ...                     count_output=3, nms_iou=None)
    """

    def __init__(self, path, box_format="xyxy", normalized=True, boxes_output=0,
                 scores_output=1, classes_output=None, count_output=None, person_class=0,
                 score_threshold=0.5, nms_iou=0.5, max_detections=100,
                 input_range=(0.0, 1.0), letterbox=False, num_threads=None):
        if box_format not in BOX_FORMATS:
            raise ValueError(f"`box_format` must be one of {BOX_FORMATS}. "
                             f"Received: box_format={box_format!r}")
        if nms_iou is not None and not 0 < nms_iou <= 1:
            raise ValueError(f"`nms_iou` must be in (0, 1] or None. Received: nms_iou={nms_iou!r}")
        if len(tuple(input_range)) != 2:
            raise ValueError(f"`input_range` must be (low, high). "
                             f"Received: input_range={input_range!r}")
        self.path = os.fspath(path)
        self._runner = _open_runner(path, num_threads)
        shape = self._runner.input_shape
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(f"Expected a detector with a (1, H, W, 3) or (1, 3, H, W) image "
                             f"input. Received: {self.path!r}\n{_describe(self._runner)}")
        self.channels_first = shape[1] == 3 and shape[3] != 3
        hw = shape[2:4] if self.channels_first else shape[1:3]
        if not all(isinstance(s, (int, np.integer)) and s > 0 for s in hw):
            raise ValueError(f"Expected a detector with a fixed input size. "
                             f"Received: {self.path!r}\n{_describe(self._runner)}")
        self.input_size = (int(hw[0]), int(hw[1]))
        self.box_format = box_format
        self.normalized = bool(normalized)
        self.layout = dict(boxes=boxes_output, scores=scores_output, classes=classes_output,
                           count=count_output)
        for role, spec in self.layout.items():
            if spec is not None:
                self._output_index(role, spec)  # fail now, not on the first frame
        self.person_class = int(person_class)
        self.score_threshold = check_score_threshold(score_threshold)
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.input_range = tuple(float(v) for v in input_range)
        self.letterbox = bool(letterbox)

    def __repr__(self):
        return f"ModelDetector({self.path!r}, box_format={self.box_format!r})"

    def describe(self):
        """The model's inputs and outputs (see :func:`describe_model`)."""
        return f"{self.path}:\n{_describe(self._runner)}"

    def _output_index(self, role, spec):
        names = [o[0] for o in self._runner.outputs]
        if isinstance(spec, str) and not spec.isdigit():
            if spec in names:
                return names.index(spec)
        else:
            i = int(spec)
            if 0 <= i < len(names):
                return i
        raise ValueError(f"`{role}_output` names no output of the detector. "
                         f"Received: {role}_output={spec!r} for {self.describe()}")

    def _prepare(self, image):
        """Image -> (model input, affine from model-input pixels to image pixels)."""
        import cv2
        height, width = image.shape[:2]
        in_h, in_w = self.input_size
        if self.letterbox:
            scale = min(in_w / width, in_h / height)
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
            canvas = np.full((in_h, in_w, 3), 114, np.uint8)
            ox, oy = (in_w - new_w) // 2, (in_h - new_h) // 2
            canvas[oy:oy + new_h, ox:ox + new_w] = resized
            sx, sy = new_w / width, new_h / height
        else:
            canvas = cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_AREA)
            ox = oy = 0
            sx, sy = in_w / width, in_h / height
        x = canvas[None]
        if self._runner.input_dtype != np.uint8:
            low, high = self.input_range
            x = x.astype(np.float32) * ((high - low) / 255.0) + low
        if self.channels_first:
            x = np.transpose(x, (0, 3, 1, 2))
        return np.ascontiguousarray(x), (ox, oy, sx, sy)

    def _output(self, outputs, role, n=None):
        """The output of one role with its batch axis (of size 1) dropped."""
        i = self._output_index(role, self.layout[role])
        y = np.asarray(outputs[i])
        while y.ndim > 2 and y.shape[0] == 1:
            y = y[0]
        if n is not None and y.shape == (1, n):
            y = y[0]
        return i, y

    def _malformed(self, what):
        return ValueError(f"The detector {self.path!r} returned malformed outputs: {what}. "
                          f"Check its layout arguments against:\n{self.describe()}")

    def __call__(self, image):
        """``image`` RGB uint8 ``(H, W, 3)`` -> ``(boxes (N, 4) xywh pixels, scores (N,))``."""
        image = np.asarray(image)
        x, (ox, oy, sx, sy) = self._prepare(image)
        outputs = self._runner.run(x)
        bi, boxes = self._output(outputs, "boxes")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise self._malformed(f"output {bi} (boxes) has shape {boxes.shape}, expected (N, 4)")
        n = len(boxes)
        si, scores = self._output(outputs, "scores", n)
        if scores.ndim == 2 and scores.shape[0] == n:
            if not 0 <= self.person_class < scores.shape[1]:
                raise self._malformed(f"person_class={self.person_class} is not a column of the "
                                      f"(N, {scores.shape[1]}) scores output {si}")
            scores = scores[:, self.person_class]
        if scores.shape != (n,):
            raise self._malformed(f"output {si} (scores) has shape {np.shape(outputs[si])}, "
                                  f"expected (N,) or (N, classes) with N={n} boxes")
        keep = np.ones(n, bool)
        if self.layout["classes"] is not None:
            ci, classes = self._output(outputs, "classes", n)
            if classes.shape != (n,):
                raise self._malformed(f"output {ci} (classes) has shape "
                                      f"{np.shape(outputs[ci])}, expected (N,) with N={n}")
            keep &= np.rint(classes).astype(np.int64) == self.person_class
        if self.layout["count"] is not None:
            _, count = self._output(outputs, "count")
            count = count.reshape(-1)
            if count.size != 1 or not np.isfinite(count[0]):
                raise self._malformed(f"the count output holds {count.tolist()!r}")
            keep &= np.arange(n) < int(count[0])
        keep &= scores >= self.score_threshold
        boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
        for name, values in (("boxes", boxes), ("scores", scores)):
            if not np.all(np.isfinite(values)):
                raise self._malformed(f"NaN or infinite values in the {name} kept")
        boxes = convert_boxes(boxes, self.box_format, self.normalized, self.input_size)
        # Model-input pixels -> image pixels (undo the letterbox offset and scale).
        boxes = (boxes - np.array([ox, oy, 0, 0])) / np.array([sx, sy, sx, sy])
        boxes, usable = clip_boxes(boxes, image.shape)  # sub-pixel boxes hold no person
        boxes, scores = boxes[usable], scores[usable]
        if self.nms_iou is not None and len(boxes):
            order = nms(boxes, scores, self.nms_iou)
        else:
            order = np.argsort(-scores, kind="stable")
        order = order[:self.max_detections] if self.max_detections else order
        return boxes[order].astype(np.float32), scores[order].astype(np.float32)


def get_detector(detector, **layout):
    """A detector argument -> a callable in the detector interface, or None.

    Args:
        detector: None; a callable ``image -> (boxes, scores)``; a
            :class:`ModelDetector`; or a ``.onnx`` / ``.tflite`` path (read
            with :class:`ModelDetector` and ``layout``).
        **layout: :class:`ModelDetector` arguments, for a path only.
    """
    if detector is None:
        if layout:
            raise ValueError(f"Detector layout arguments need a detector file. "
                             f"Received: {sorted(layout)} with detector=None")
        return None
    if isinstance(detector, (str, os.PathLike)):
        return ModelDetector(detector, **layout)
    if layout:
        raise ValueError(f"Layout arguments apply to a detector file only. "
                         f"Received: {sorted(layout)} with detector={detector!r}")
    if isinstance(detector, (ModelDetector, CallableDetector)):
        return detector
    if callable(detector):
        return CallableDetector(detector)
    raise ValueError("`detector` must be a callable image -> (boxes, scores), a "
                     f"ModelDetector or a {DETECTOR_SUFFIXES} path. Received: detector={detector!r}")
