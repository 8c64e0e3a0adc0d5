"""Person boxes: box ops, the ONNX / TFLite detector adapter, detection files, and
where PoseEstimator takes its boxes from."""

import json
import os
import warnings

import numpy as np
import pytest

import synthetic_pose as sp
from keras_dpn.inference import detectors
from keras_dpn.inference.detectors import (DetectionFile, ModelDetector, box_iou, convert_boxes,
                                 describe_model, get_detector, nms)

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX = os.path.join(HERE, "data", "detector", "tiny_detector.onnx")
TFLITE = os.path.join(HERE, "data", "detector", "tiny_detector.tflite")
TFLITE_LAYOUT = dict(box_format="cxcywh", normalized=False, boxes_output=0,
                     classes_output=1, scores_output=2)


def _scene(shape=(256, 320)):
    """A red "person" covering one detector window exactly, and a green "other" object.

    The detector sees the image at 64x64: a window is 16x16 model pixels at
    stride 8, so 80x64 image pixels at a stride of 40x32 for 320x256.
    """
    image = np.zeros(shape + (3,), np.uint8)
    image[96:160, 80:160] = (255, 0, 0)
    image[0:64, 240:320] = (0, 255, 0)
    return image


# ---------------------------------------------------------------------------
# Box operations
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", detectors.BOX_FORMATS)
def test_convert_boxes_every_format(fmt):
    xywh = np.array([[10.0, 20.0, 30.0, 60.0], [0.0, 5.0, 100.0, 50.0]])
    x, y, w, h = xywh.T
    layout = dict(xyxy=[x, y, x + w, y + h], yxyx=[y, x, y + h, x + w], xywh=[x, y, w, h],
                  cxcywh=[x + w / 2, y + h / 2, w, h])[fmt]
    np.testing.assert_allclose(convert_boxes(np.stack(layout, 1), fmt), xywh)
    size = (200.0, 400.0)  # (height, width)
    norm = np.stack(layout, 1) / [size[1], size[0], size[1], size[0]] if fmt != "yxyx" else \
        np.stack(layout, 1) / [size[0], size[1], size[0], size[1]]
    np.testing.assert_allclose(convert_boxes(norm, fmt, True, size), xywh)


def test_iou_and_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]])
    iou = box_iou(boxes, boxes)
    np.testing.assert_allclose(iou[0, 1], 90 / 110)
    assert iou[0, 2] == 0 and iou[0, 3] == 1
    keep = nms(boxes, [0.5, 0.9, 0.3, 0.1], 0.5)
    assert keep.tolist() == [1, 2]
    assert nms(boxes, [0.5, 0.9, 0.3, 0.1], 0.95).tolist() == [1, 0, 2]


# ---------------------------------------------------------------------------
# The ONNX / TFLite adapter
# ---------------------------------------------------------------------------

def test_describe_model_lists_the_layout():
    text = describe_model(ONNX)
    assert "output 0: 'boxes' shape [1, 49, 4]" in text
    assert "output 1: 'scores' shape [1, 49, 2] float32" in text
    assert "uint8" in describe_model(TFLITE)


@pytest.mark.parametrize("path, layout", [(ONNX, {}), (TFLITE, TFLITE_LAYOUT)])
def test_model_detector_finds_the_red_person(path, layout):
    det = ModelDetector(path, score_threshold=0.3, nms_iou=0.3, **layout)
    boxes, scores = det(_scene())
    # Only the window that the red rectangle fills; its half-overlapping
    # neighbours (score 0.5) fall to NMS, the green object is another class.
    np.testing.assert_allclose(boxes, [[80, 96, 80, 64]], atol=1e-3)
    np.testing.assert_allclose(scores, [1.0], atol=1e-3)


def test_model_detector_threshold_nms_class_and_letterbox():
    boxes, scores = ModelDetector(ONNX, score_threshold=0.3, nms_iou=None)(_scene())
    assert len(boxes) == 5 and scores[0] == pytest.approx(1.0)
    np.testing.assert_allclose(np.sort(scores)[:4], 0.5, atol=1e-3)
    assert len(ModelDetector(ONNX, score_threshold=0.6, nms_iou=None)(_scene())[0]) == 1
    # Class 1 (green) through the score column, and through the classes output.
    green = [[240, 0, 80, 64]]
    np.testing.assert_allclose(ModelDetector(ONNX, person_class=1, nms_iou=0.3)(_scene())[0],
                               green, atol=1e-3)
    np.testing.assert_allclose(
        ModelDetector(TFLITE, person_class=1, nms_iou=0.3, **TFLITE_LAYOUT)(_scene())[0],
        green, atol=1e-3)
    # Letterbox: a 2:1 image is scaled by 0.2 and centred (16 model pixels on top).
    image = np.zeros((160, 320, 3), np.uint8)
    image[40:120, 80:160] = (255, 0, 0)
    boxes, _ = ModelDetector(ONNX, letterbox=True, nms_iou=0.3)(image)
    np.testing.assert_allclose(boxes, [[80, 40, 80, 80]], atol=1e-3)
    # Nobody: an empty answer of the right shapes.
    boxes, scores = ModelDetector(ONNX)(np.zeros((100, 100, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_model_detector_bad_layouts_and_files(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)scores_output=5.*output 1: 'scores'"):
        ModelDetector(ONNX, scores_output=5)
    with pytest.raises(ValueError, match="boxes_output='nope'"):
        ModelDetector(ONNX, boxes_output="nope")
    # The boxes output pointed at the (1, 49, 2) scores: malformed, named with the file.
    det = ModelDetector(ONNX, boxes_output=1, scores_output=0)
    with pytest.raises(ValueError, match=r"(?s)tiny_detector.onnx.*malformed.*\(N, 4\)"):
        det(_scene())
    det = ModelDetector(ONNX, person_class=7)
    with pytest.raises(ValueError, match="person_class=7"):
        det(_scene())
    with pytest.raises(ValueError, match="box_format"):
        ModelDetector(ONNX, box_format="ltrb")
    with pytest.raises(ValueError, match="not found"):
        ModelDetector(str(tmp_path / "missing.onnx"))
    for suffix, kind in ((".onnx", "an ONNX"), (".tflite", "a TFLite")):
        fake = tmp_path / f"fake{suffix}"
        fake.write_bytes(b"not a model")
        with pytest.raises(ValueError, match=f"Could not load {kind} detector.*fake"):
            ModelDetector(str(fake))
    with pytest.raises(ValueError, match=r"\.onnx"):
        ModelDetector(os.path.join(HERE, "data", "detector", "README.md"))


def _constant_onnx(path, boxes, scores):
    """An ONNX "detector" whose outputs are constants (ignores its 8x8 input)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, outputs = [], []
    for name, value in (("boxes", boxes), ("scores", scores)):
        value = np.asarray(value, np.float32)
        nodes.append(helper.make_node("Constant", [], [name],
                                      value=numpy_helper.from_array(value, name + "_value")))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, value.shape))
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 8, 3])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_model_detector_nan_output_is_an_error(tmp_path):
    path = _constant_onnx(str(tmp_path / "nan.onnx"), [[[0.1, 0.1, np.nan, 0.5]]], [[0.9]])
    with pytest.raises(ValueError, match=r"nan.onnx.*NaN or infinite values in the boxes"):
        ModelDetector(path)(np.zeros((50, 50, 3), np.uint8))
    path = _constant_onnx(str(tmp_path / "inf.onnx"), [[[0.1, 0.1, 0.5, 0.5]]], [[np.inf]])
    with pytest.raises(ValueError, match=r"inf.onnx.*NaN or infinite values in the scores"):
        ModelDetector(path)(np.zeros((50, 50, 3), np.uint8))
    # A NaN on a row below the score threshold is not kept, so not an error.
    path = _constant_onnx(str(tmp_path / "low.onnx"), [[[0.1, 0.1, 0.5, 0.5], [np.nan] * 4]],
                          [[0.9, 0.1]])
    boxes, _ = ModelDetector(path)(np.zeros((50, 50, 3), np.uint8))
    np.testing.assert_allclose(boxes, [[5, 5, 20, 20]], atol=1e-4)


# ---------------------------------------------------------------------------
# Callables and detection files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("answer, message", [
    (np.zeros((2, 4)), "must return a pair"),
    ((np.zeros((2, 3)), np.ones(2)), r"\(N, 4\)"),
    (([[0, 0, 10, 10]], [0.5, 0.4]), "one score per box"),
    (([[0, 0, np.nan, 10]], [0.5]), r"NaN or infinite value in boxes\[0\]"),
    (([[0, 0, 10, 10]], [np.inf]), r"NaN or infinite value in scores\[0\]"),
    (([[0, 0, 0, 10]], [0.5]), "degenerate box 0"),
    (([[0, 0, 10, 1e-9]], [0.5]), r"degenerate box 0 \(width and height must be at least 1 "),
    (([[500, 0, 10, 10]], [0.5]), "outside the 100x80 image"),
    ((["a", "b"], [1, 2]), "numeric"),
])
def test_callable_detector_malformed_answers(answer, message):
    def my_detector(image):
        return answer

    det = get_detector(my_detector)
    with pytest.raises(ValueError, match=message) as info:
        det(np.zeros((80, 100, 3), np.uint8))
    assert "my_detector" in str(info.value)


def test_callable_detector_empty_and_valid():
    det = get_detector(lambda image: ([], []))
    boxes, scores = det(np.zeros((80, 100, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    with pytest.raises(ValueError, match="callable"):
        get_detector(42)
    with pytest.raises(ValueError, match="detector file only"):
        get_detector(lambda image: ([], []), box_format="xyxy")


def test_detection_file_checks_every_entry(tmp_path):
    good = [dict(image_id=3, category_id=1, bbox=[1, 2, 3, 4], score=0.4),
            dict(image_id=3, category_id=1, bbox=[5, 6, 7, 8], score=0.9),
            dict(image_id=3, category_id=2, bbox=[5, 6, 7, 8], score=0.9),
            dict(image_id=4, category_id=1, bbox=[0, 0, 1, 1], score=0.1)]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(good))
    boxes, scores = DetectionFile(str(path), 0.2).lookup(3)
    np.testing.assert_allclose(boxes, [[5, 6, 7, 8], [1, 2, 3, 4]])
    np.testing.assert_allclose(scores, [0.9, 0.4])
    assert DetectionFile(str(path), 0.2).lookup(4)[0].shape == (0, 4)
    for bad, message in ((good + [dict(image_id=5, bbox=[1, 2, 3])], "Detection 4 of"),
                         (good + [dict(image_id=5, bbox=[1, 2, float("nan"), 4])], "finite"),
                         (good + [dict(image_id=5, bbox=[1, 2, 3, 4], score=float("inf"))],
                          "finite"),
                         (good + [dict(bbox=[1, 2, 3, 4])], "image_id"),
                         ({"not": "a list"}, "JSON list")):
        path.write_text(json.dumps(bad))  # json writes NaN / Infinity literals
        with pytest.raises(ValueError, match=message) as info:
            DetectionFile(str(path))
        assert "dets.json" in str(info.value)


# ---------------------------------------------------------------------------
# Where PoseEstimator takes its boxes from
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dot_estimator():
    from keras_dpn import PoseEstimator
    return PoseEstimator(sp.dot_model())


def _person_on_red(shape=(512, 640)):
    """A painted person on a red block that the tiny detector sees as a person."""
    image = np.zeros(shape + (3,), np.uint8)
    image[192:320, 160:320] = (255, 0, 0)  # one 160x128 window at 640x512
    joints = sp.skeleton((240, 256), 110)
    painted = sp.paint(shape, [joints])
    dots = painted[..., 1] > 0
    image[dots] = painted[dots]
    return image, joints


def test_estimator_boxes_order(dot_estimator):
    from keras_dpn import PoseEstimator
    image, joints = _person_on_red()
    # A detector file: the estimator finds the box, then the keypoints.
    est = PoseEstimator(dot_estimator.backend.model, detector=ONNX)
    (person,) = est.predict(image)
    np.testing.assert_allclose(person["box"], [160, 192, 160, 128], atol=1e-3)
    body = slice(5, 17)
    assert np.linalg.norm(person["keypoints"][body, :2] - joints[body], axis=1).max() < 6
    # Explicit boxes come first: the detector is not consulted ...
    calls = []

    def detector(img):
        calls.append(1)
        return np.array([[0, 0, 10, 10]], np.float32), np.array([0.5], np.float32)

    est = PoseEstimator(dot_estimator.backend.model, detector=detector)
    box = sp.person_box(joints)
    (person,) = est.predict(image, [box])
    np.testing.assert_allclose(person["box"], box, atol=1e-3)
    assert calls == []
    # ... and boxes=[] is nobody.
    assert est.predict(image, []) == [] and calls == []
    (person,) = est.predict(image)
    assert calls == [1] and person["score"] <= 0.5  # the detection score multiplies in
    # Without boxes or detector: the whole image, with a warning that says so.
    with pytest.warns(UserWarning, match="whole image is used as one person box"):
        (person,) = dot_estimator.predict(image)
    np.testing.assert_allclose(person["box"], [0, 0, 640, 512])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dot_estimator.predict(image, [box])  # no warning when boxes are given


def test_estimator_detector_errors(dot_estimator):
    from keras_dpn import PoseEstimator
    image, _ = _person_on_red()
    est = PoseEstimator(dot_estimator.backend.model,
                        detector=lambda img: (np.array([[0, 0, np.nan, 5]]), np.ones(1)))
    with pytest.raises(ValueError, match="NaN"):
        est.predict(image)
    est = PoseEstimator(dot_estimator.backend.model, detector=lambda img: ([], []))
    assert est.predict(image) == []
    with pytest.raises(ValueError, match="Detector file not found"):
        PoseEstimator(dot_estimator.backend.model, detector="missing.onnx")


def test_cli_image_with_a_detector(dot_estimator, tmp_path, capsys):
    import cv2

    from keras_dpn.cli import main as cli
    image, _ = _person_on_red()
    path = tmp_path / "person_1.png"
    cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    model = tmp_path / "dots.keras"
    dot_estimator.backend.model.save(model)
    out = tmp_path / "pose.png"
    rc = cli.main(["predict", str(path), "--model", str(model), "--out", str(out),
                   "--detector", ONNX, "--nms-iou", "0.3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "1 person(s)" in captured.out and "whole image" not in captured.err
    assert cv2.imread(str(out)).shape == image.shape
    # A layout that does not match the file: an error that shows the outputs, no file.
    rc = cli.main(["predict", str(path), "--model", str(model), "--out",
                   str(tmp_path / "bad.png"), "--detector", ONNX, "--detector-outputs", "1", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "malformed" in err and "output 0: 'boxes'" in err
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_tiny_detectors_regenerate(tmp_path):
    """The committed detector files are what their script writes (TF + tf2onnx, ~30 s)."""
    import subprocess
    import sys
    script = os.path.join(HERE, "data", "detector", "make_tiny_detector.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, layout in (("tiny_detector.onnx", {}), ("tiny_detector.tflite", TFLITE_LAYOUT)):
        new = ModelDetector(str(tmp_path / name), score_threshold=0.3, nms_iou=None, **layout)
        old = ModelDetector(os.path.join(HERE, "data", "detector", name), score_threshold=0.3,
                            nms_iou=None, **layout)
        for a, b in zip(new(_scene()), old(_scene())):
            np.testing.assert_allclose(a, b, atol=1e-5)
