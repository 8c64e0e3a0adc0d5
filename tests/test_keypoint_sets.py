"""A keypoint-set file through every command: shards, export, predict, presets, AP, drawing.

The set is ``docs/examples/body12.json`` (COCO's joints 5-16, its own
skeleton and colours, COCO's sigmas for those joints) on an untrained
DPN1_32 at 64x48; the checks compare with the file's own values, read
independently of the package.
"""

import json
import math
import os

import cv2
import numpy as np
import pytest

import keras_dpn
from keras_dpn.cli import main as cli
from keras_dpn.hub import presets
from keras_dpn.inference import visualize
from keras_dpn.core.keypoints import COCO_17, KeypointSpec, get_keypoint_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY12 = os.path.join(REPO, "docs", "examples", "body12.json")
IMAGE = os.path.join(REPO, "keras_dpn", "core", "assets", "sample_person.jpg")
SHAPE = (64, 48, 3)


def _file_fields():
    with open(BODY12) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``keras-dpn export DPN1_32 --keypoints body12.json``: ``(folder, what it printed)``."""
    import contextlib
    import io
    out = tmp_path_factory.mktemp("exports")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli.main(["export", "DPN1_32", "--input-size", "64", "48", "--keypoints", BODY12,
                       "--formats", "tflite_fp32", "onnx", "--out-dir", str(out),
                       "--name", "b12"])
    assert rc == 0
    return out / "b12", printed.getvalue()


@pytest.fixture
def body12_export(exported):
    return exported[0]


def test_export_metadata_carries_the_whole_set(body12_export, capsys):
    meta = json.loads((body12_export / "metadata.json").read_text())
    assert meta["keypoints"] == _file_fields()  # every field, sigmas and half bodies included
    assert meta["num_keypoints"] == 12
    assert meta["tflite"]["model_fp32.tflite"]["outputs"][0]["shape"] == [1, 16, 12, 12]


def test_export_says_what_it_wrote(exported):
    folder, out = exported
    # Two formats asked: two counted, the other files named (it used to say "3 files").
    assert "Exported 2 format(s) (tflite_fp32, onnx)" in out
    assert "model.keras" in out and "metadata.json" in out and "gpu_compatibility.txt" in out
    written = sorted(os.listdir(folder))
    assert written == ["gpu_compatibility.txt", "metadata.json", "model.keras", "model.onnx",
                       "model_fp32.tflite"]


def test_export_of_a_keras_file_keeps_its_set_and_checks_counts(body12_export, tmp_path,
                                                                  capsys):
    model = str(body12_export / "model.keras")
    assert cli.main(["export", model, "--formats", "tflite_fp32", "--out-dir", str(tmp_path),
                     "--name", "again"]) == 0
    meta = json.loads((tmp_path / "again" / "metadata.json").read_text())
    assert meta["keypoints"] == _file_fields()
    capsys.readouterr()
    assert cli.main(["export", model, "--keypoints", "coco", "--out-dir", str(tmp_path),
                     "--name", "wrong"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'coco'" in err and "17 joints" in err and "has 12" in err
    assert not (tmp_path / "wrong").exists()


def test_export_refuses_a_bad_set_file_before_building(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(_file_fields(), flip_pairs=[[0, 1], [1, 2]])))
    assert cli.main(["export", "DPN1_32", "--keypoints", str(bad), "--out-dir",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "`flip_pairs`" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["folder", "model_fp32.tflite", "model.keras"])
def test_predict_takes_the_set_from_the_export(body12_export, tmp_path, model, capsys):
    path = str(body12_export) if model == "folder" else str(body12_export / model)
    estimator = keras_dpn.PoseEstimator(path)
    assert estimator.spec == KeypointSpec.from_dict(_file_fields())
    out = tmp_path / "pose.png"
    assert cli.main(["predict", IMAGE, "--model", path, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "1 person(s)" in printed
    if model == "folder":  # no SavedModel in it: the Keras file, said so
        assert f"Model: {body12_export / 'model.keras'}" in printed


def test_predict_keypoints_overrides_and_counts_are_checked(body12_export, tmp_path, capsys):
    # The same set from the file: accepted.
    assert cli.main(["predict", IMAGE, "--model", str(body12_export / "model_fp32.tflite"),
                     "--keypoints", BODY12, "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    assert cli.main(["predict", IMAGE, "--model", str(body12_export / "model_fp32.tflite"),
                     "--keypoints", "coco", "--out", str(tmp_path / "b.png")]) == 2
    # After the whole-image warning (no boxes given), one error line.
    err = [line for line in capsys.readouterr().err.splitlines() if "warning:" not in line]
    assert len(err) == 1 and "Keypoint count mismatch" in err[0]
    err = err[0]
    assert "'coco'" in err and "17 joints" in err and "has 12" in err
    assert not (tmp_path / "b.png").exists()


def test_export_folder_without_saved_model_or_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="none of the files of an export folder"):
        keras_dpn.PoseEstimator(str(tmp_path / "empty"))


def test_preset_round_trips_the_set_with_sigmas(body12_export, tmp_path):
    model = keras_dpn.DPN1_32(input_shape=SHAPE, num_keypoints=12)
    presets.save_preset(model, tmp_path / "b12", keypoints=BODY12,
                        export_dir=str(body12_export))
    preset = presets.get_preset(str(tmp_path / "b12"))
    expected = KeypointSpec.from_dict(_file_fields())
    assert preset.keypoint_spec() == expected
    assert preset.keypoint_spec().sigmas == tuple(_file_fields()["sigmas"])
    for fmt in (None, "tflite_fp32"):
        estimator = keras_dpn.PoseEstimator.from_preset(str(tmp_path / "b12"), format=fmt)
        assert estimator.spec == expected
    # `keras-dpn predict --model PRESET` brings the preset's set too.
    assert cli.main(["predict", IMAGE, "--model", str(tmp_path / "b12"), "--out",
                     str(tmp_path / "p.png")]) == 0
    card = (tmp_path / "b12" / "README.md").read_text()
    assert "| 0 | l_shoulder | r_shoulder | 0.079 |" in card
    with pytest.raises(ValueError, match="Keypoint count mismatch.*'coco'.*17 joints"):
        presets.save_preset(model, tmp_path / "wrong", keypoints="coco")


def test_drawing_uses_the_sets_skeleton_and_colours():
    fields = _file_fields()
    spec = get_keypoint_spec(BODY12)
    limb = 7  # [0, 1]: shoulder to shoulder
    a, b = fields["skeleton"][limb]
    kp = np.zeros((12, 3), np.float32)
    kp[a], kp[b] = (20, 50, 1.0), (180, 50, 1.0)  # only this limb's joints are seen
    image = visualize.draw_skeleton(np.zeros((100, 200, 3), np.uint8), kp, spec,
                                    thickness=5, radius=2)
    assert tuple(image[50, 100]) == tuple(fields["colors"][limb])
    # COCO's set draws no limb between its joints 0 and 1 of that name... its own colours:
    coco = visualize.draw_skeleton(np.zeros((100, 200, 3), np.uint8),
                                   np.zeros((17, 3), np.float32) + [[20, 50, 1.0]], COCO_17)
    assert tuple(coco[50, 100]) == (0, 0, 0)


# ------------------------------------------------------------------ AP with the set's sigmas


def _one_person_annotation(tmp_path, k):
    joints = np.stack([np.linspace(20, 80, k), np.linspace(30, 90, k)], 1)
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 200, "width": 200}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                           "bbox": [0, 0, 100, 100], "area": 10000.0, "num_keypoints": k,
                           "keypoints": np.concatenate([joints, np.full((k, 1), 2)], 1)
                           .reshape(-1).tolist()}],
          "categories": [{"id": 1, "name": "person", "keypoints": [f"j{i}" for i in range(k)]}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return str(path), joints


def test_ap_is_computed_with_the_sets_own_sigmas(tmp_path):
    from keras_dpn.evaluation import COCOEvaluator
    k = 4
    ann, joints = _one_person_annotation(tmp_path, k)
    moved = joints + [3.0, 4.0]  # every joint 5 px off
    results = [{"image_id": 1, "category_id": 1, "score": 1.0,
                "keypoints": np.concatenate([moved, np.ones((k, 1))], 1).reshape(-1).tolist()}]

    def by_hand(sigma):
        # pycocotools' OKS: mean over joints of exp(-d^2 / (2 * area * (2 sigma)^2)); one
        # person and one result: AP is the share of the thresholds 0.50:0.05:0.95 it meets.
        oks = math.exp(-25.0 / (2 * 10000.0 * (2 * sigma) ** 2))
        return sum(oks >= t for t in np.linspace(0.5, 0.95, 10)) / 10

    fields = {"names": ["a", "b", "c", "d"], "flip_pairs": [], "skeleton": [[0, 1]]}
    found = {}
    for sigma in (0.025, 0.1):
        path = tmp_path / f"s{sigma}.json"
        path.write_text(json.dumps(dict(fields, name=f"s{sigma}", sigmas=[sigma] * k)))
        found[sigma] = COCOEvaluator(ann, keypoint_spec=str(path)).evaluate_results(results)["AP"]
        assert found[sigma] == pytest.approx(by_hand(sigma), abs=1e-6)
    assert found[0.025] == pytest.approx(0.3, abs=1e-6) and found[0.1] == pytest.approx(1.0)


def test_training_callback_evaluates_with_the_sets_sigmas(tmp_path):
    ann, _ = _one_person_annotation(tmp_path, 12)
    callback = keras_dpn.COCOEvaluationCallback([], ann, keypoint_spec=BODY12)
    assert callback.evaluator.keypoint_spec.sigmas == tuple(_file_fields()["sigmas"])


# ---------------------------------------------------------------------------- shards


def _tiny_coco(tmp_path, k):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((120, 160, 3), 90, np.uint8))
    kp = np.stack([np.linspace(60, 100, k), np.linspace(30, 90, k), np.full(k, 2.0)], 1)
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "height": 120, "width": 160}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                            "bbox": [50, 20, 60, 80], "area": 4800.0, "num_keypoints": k,
                            "keypoints": kp.reshape(-1).tolist()}],
           "categories": [{"id": 1, "name": "person", "keypoints": [f"j{i}" for i in range(k)]}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return str(tmp_path / "ann.json"), str(images)


def test_shard_builder_records_the_whole_set(tmp_path, capsys):
    from keras_dpn import data
    from keras_dpn.data.cli import main
    ann, images = _tiny_coco(tmp_path, 12)
    prefix = str(tmp_path / "s" / "b12")
    assert main("coco", ["--annotations", ann, "--images", images, "--output", prefix,
                         "--num-shards", "1", "--num-workers", "1", "--no-progress",
                         "--keypoints", BODY12]) == 0
    manifest = json.loads(open(prefix + "-manifest.json").read())
    assert manifest["keypoints"] == _file_fields() and manifest["num_keypoints"] == 12
    pattern = prefix + "-*.tfrecord"
    assert data.shard_keypoint_spec(pattern) == get_keypoint_spec(BODY12)
    # No dataset=: the shards' own set.
    _, heatmaps, weights = next(iter(data.build_dataset(pattern, batch_size=1,
                                                        input_size=(64, 48))))
    assert heatmaps.shape == (1, 16, 12, 12)
    # Joint weights of the file (training's use_joint_weights default may be off): 12 of them.
    assert weights.shape == (1, 12)
    with pytest.raises(ValueError) as info:
        data.build_dataset(pattern, dataset="coco", batch_size=1)
    message = str(info.value)
    assert "Keypoint count mismatch" in message and "hold 12 keypoints" in message
    assert "'coco' has 17" in message and prefix + "-manifest.json" in message
    # --dataset stays as the old name of --keypoints.
    capsys.readouterr()
    assert main("coco", ["--annotations", ann, "--images", images, "--output",
                         str(tmp_path / "s2" / "x"), "--num-shards", "1", "--num-workers", "1",
                         "--no-progress", "--dataset", "coco"]) == 2
    assert "3 x 17 = 51" in capsys.readouterr().err


def test_shard_builder_refuses_a_bad_set_file_first(tmp_path, capsys):
    from keras_dpn.data.cli import main
    ann, images = _tiny_coco(tmp_path, 12)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(_file_fields(), sigmas=[0.079] * 11)))
    assert main("coco", ["--annotations", ann, "--images", images, "--output",
                         str(tmp_path / "s" / "x"), "--keypoints", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "`sigmas` has 11 entries" in err
    assert not (tmp_path / "s").exists()


def test_build_script_help_does_not_start_tensorflow():
    import subprocess
    import sys
    import time
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-X", "importtime", "tfrecords/build_coco.py",
                          "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--keypoints SET" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()
                if line.startswith("import time:")}
    assert "argparse" in imported  # the listing is read right
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "keras_dpn")}
    assert time.monotonic() - start < 5


def test_export_without_a_set_for_an_unknown_count_warns(tmp_path):
    from keras_dpn.deploy import export
    model = keras_dpn.DPN1_32(input_shape=SHAPE, num_keypoints=5)
    with pytest.warns(UserWarning, match="predicts 5 keypoints and no keypoint set was given"):
        export.export_model(model, tmp_path / "k5", formats=("tflite_fp32",), verbose=False)
    assert json.loads((tmp_path / "k5" / "metadata.json").read_text())["keypoints"] is None
    with pytest.raises(ValueError, match="predicts 5 keypoints and no metadata.json beside it "
                                         "records its keypoint set"):
        keras_dpn.PoseEstimator(str(tmp_path / "k5" / "model_fp32.tflite"))
