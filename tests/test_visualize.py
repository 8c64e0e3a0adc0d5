"""Drawing and the `keras-dpn predict` / `export` command."""

import os

import numpy as np
import pytest

import deploy_helpers as dh
from keras_dpn import COCO_17, MPII_16
from keras_dpn.cli import main as cli
from keras_dpn.inference import visualize

IMAGE = os.path.join(dh.ROOT, "sample_data", "coco", "images", "000000000785.jpg")
DETECTIONS = os.path.join(dh.ROOT, "sample_data", "coco", "annotations",
                          "person_detections_sample.json")
VIDEO = os.path.join(dh.ROOT, "tests", "data", "video", "street_5frames.mp4")


def _person():
    kp = np.zeros((17, 3), np.float32)
    kp[:, 0] = np.linspace(20, 80, 17)
    kp[:, 1] = np.linspace(10, 90, 17)
    kp[:, 2] = 1.0
    return kp


def test_draw_skeleton_uses_spec_colors():
    image = np.zeros((100, 100, 3), np.uint8)
    out = visualize.draw_skeleton(image, _person(), "coco", radius=2, thickness=1)
    assert image.max() == 0  # input untouched
    colors = {tuple(c) for c in out.reshape(-1, 3)}
    limb_colors = set(COCO_17.limb_colors())
    assert len(colors & limb_colors) >= 5


def test_draw_skeleton_threshold_and_formats():
    image = np.zeros((100, 100, 3), np.uint8)
    hidden = _person()
    hidden[:, 2] = 0.1
    assert visualize.draw_skeleton(image, hidden, score_threshold=0.3).max() == 0
    people = [dict(keypoints=_person()), dict(keypoints=_person() + [5, 0, 0])]
    assert visualize.draw_skeleton(image, people).max() > 0
    assert visualize.draw_skeleton(image, []).max() == 0
    mpii = np.ones((16, 3), np.float32) * 50
    assert visualize.draw_skeleton(image, mpii, MPII_16).max() > 0
    with pytest.raises(ValueError, match="17 joints"):
        visualize.draw_skeleton(image, mpii, "coco")
    with pytest.raises(ValueError, match="RGB"):
        visualize.draw_skeleton(np.zeros((0, 5, 3), np.uint8), _person())


def test_draw_skeleton_labels():
    image = np.zeros((100, 100, 3), np.uint8)
    people = [dict(keypoints=_person())]
    plain = visualize.draw_skeleton(image, people)
    labelled = visualize.draw_skeleton(image, people, labels=["id 7"],
                                       boxes=[[20, 40, 60, 50]])
    # Light text just above the box, where the skeleton draws nothing light.
    def light(image):
        return int((image[26:40, 20:50] > 200).all(-1).sum())
    assert light(labelled) > 5 and light(plain) == 0
    with pytest.raises(ValueError, match="one entry per person"):
        visualize.draw_skeleton(image, people, labels=["a", "b"])


def test_draw_heatmaps_grid():
    crop = np.full((32, 24, 3), 128, np.uint8)
    hm = np.zeros((8, 6, 17), np.float32)
    hm[4, 3, :] = 1.0
    grid = visualize.draw_heatmaps(crop, hm, "coco", columns=6)
    assert grid.shape == (3 * 32, 6 * 24, 3)
    with pytest.raises(ValueError, match="heatmaps"):
        visualize.draw_heatmaps(crop, hm[..., :5], "coco")


def test_cli_predict_image_with_boxes(exported, tmp_path):
    _, folder, _ = exported
    out = tmp_path / "pose.png"
    rc = cli.main(["predict", IMAGE, "--model", os.path.join(folder, "model_fp32.tflite"),
                   "--boxes", DETECTIONS, "--box-threshold", "0.3", "--out", str(out)])
    assert rc == 0
    import cv2
    drawn = cv2.imread(str(out))
    assert drawn.shape == cv2.imread(IMAGE).shape
    # An existing output is refused (and left alone) unless --overwrite.
    before = out.read_bytes()
    assert cli.main(["predict", IMAGE, "--model", os.path.join(folder, "model.onnx"),
                     "--out", str(out)]) == 2
    assert out.read_bytes() == before
    assert cli.main(["predict", IMAGE, "--model", os.path.join(folder, "model.onnx"),
                     "--out", str(out), "--overwrite"]) == 0


def test_cli_predict_video(exported, tmp_path):
    _, folder, _ = exported
    out = tmp_path / "pose.mp4"
    rc = cli.main(["predict", VIDEO, "--model", os.path.join(folder, "keypoints_fp32.tflite"),
                   "--out", str(out)])
    assert rc == 0
    import cv2
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 5


def test_cli_bad_inputs_leave_no_files(exported, tmp_path, capsys):
    _, folder, _ = exported
    model = os.path.join(folder, "model_fp32.tflite")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert cli.main(["predict", str(broken), "--model", model,
                     "--out", str(tmp_path / "o.png")]) == 2
    assert "decode" in capsys.readouterr().err
    assert cli.main(["predict", IMAGE, "--model", model, "--out", str(tmp_path / "o.mp4")]) == 2
    assert cli.main(["predict", IMAGE, "--model", str(broken), "--out",
                     str(tmp_path / "o.png")]) == 2
    assert sorted(os.listdir(tmp_path)) == ["broken.jpg"]


def test_cli_export_refuses_existing(exported, tmp_path, capsys):
    _, folder, _ = exported
    parent = os.path.dirname(folder)
    rc = cli.main(["export", os.path.join(folder, "model.keras"), "--name",
                   os.path.basename(folder), "--out-dir", parent, "--formats", "onnx"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["export", "NotAModel", "--out-dir", str(tmp_path)]) == 2
    assert os.listdir(tmp_path) == []


def test_plot_history_draws_loss_and_metric(tmp_path):
    import cv2

    from keras_dpn.inference import visualize
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss,lr,val_AP\n0,0.02,0.001,0.0\n1,0.01,0.001,0.25\n"
                        "2,0.005,0.001,\n")
    out = visualize.plot_history(str(csv_path), str(tmp_path / "curves.png"), metrics=("val_AP",))
    image = cv2.imread(out)
    assert image is not None and image.shape == (360, 640, 3)
    assert image.std() > 5  # something was drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "history.csv"]


def test_plot_history_bad_input(tmp_path):
    from keras_dpn.inference import visualize
    with pytest.raises(ValueError, match="No training history"):
        visualize.plot_history(str(tmp_path / "missing.csv"), str(tmp_path / "c.png"))
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,lr\n")
    with pytest.raises(ValueError, match="no rows or no `loss`"):
        visualize.plot_history(str(empty), str(tmp_path / "c.png"))
    assert not (tmp_path / "c.png").exists()
