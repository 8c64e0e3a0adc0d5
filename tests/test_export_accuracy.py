"""COCO AP of every exported file (`keras_dpn.deploy.export_eval`, `keras-dpn export --evaluate`).

An untrained model scores AP 0 on the real labels, where every format
"agrees". So the default-suite tests relabel sample images with the Keras
model's own predictions: there the Keras model scores AP 1, and a file scores
what it keeps of the Keras model (a file that decodes, crops or normalizes
differently falls far below). An error that every format shares, the Keras
row included, is invisible here: `test_export_ground_truth.py` scores every
format of a model that memorized the sample against the sample's real labels.
The slow tests use a trained model on the real labels and run
`benchmarks/export_accuracy.py`.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import deploy_helpers as dh
from keras_dpn.cli import main as cli
from keras_dpn.deploy import export
from keras_dpn.deploy import export_eval

IMAGES = os.path.join(dh.ROOT, "sample_data", "coco", "images")
NUM_IMAGES = 10


def _self_labelled(model, path, num_images=NUM_IMAGES):
    """The sample's first images, each person's keypoints replaced by the model's prediction.

    Boxes are the shard builder's (``clean_person``), as the evaluation must use.
    """
    from keras_dpn.data.shards import SkipCounter, clean_person
    from keras_dpn.inference.estimator import PoseEstimator, read_image
    with open(dh.ANNOTATIONS) as f:
        coco = json.load(f)
    estimator = PoseEstimator(model)
    images, annotations = [], []
    for image in coco["images"]:
        people = [a for a in coco["annotations"] if a["image_id"] == image["id"]
                  and not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
        if not people:
            continue
        pixels = read_image(os.path.join(IMAGES, image["file_name"]))
        h, w = pixels.shape[:2]
        boxes = [clean_person(dict(p, keypoints=np.asarray(p["keypoints"]).reshape(-1, 3)),
                               h, w, SkipCounter(), "")["bbox"] for p in people]
        for person, found in zip(people, estimator.predict(pixels, boxes)):
            kp = np.asarray(found["keypoints"], np.float64).copy()
            kp[:, 2] = 2
            annotations.append(dict(person, keypoints=kp.reshape(-1).tolist(), num_keypoints=17))
        images.append(image)
        if len(images) == num_images:
            break
    with open(path, "w") as f:
        json.dump(dict(coco, images=images, annotations=annotations), f)
    return str(path), sum(1 for _ in annotations)


@pytest.fixture(scope="module")
def relabelled(exported, tmp_path_factory):
    model, folder, _ = exported
    path, people = _self_labelled(model, tmp_path_factory.mktemp("relabel") / "self.json")
    return model, folder, path, people


def _rows(rows):
    return {(r["format"], r["flip_test"]): r for r in rows}


def test_cli_evaluate_prints_the_table(relabelled, tmp_path, capsys):
    """`--evaluate` after an export: Keras AP 1 on its own labels, fp32 the same, int8 rows."""
    _, folder, annotations, people = relabelled
    code = cli.main(["export", os.path.join(folder, "model.keras"), "--out-dir", str(tmp_path),
                     "--name", "e", "--formats", "tflite_fp32", "tflite_int8",
                     "--evaluate", annotations, IMAGES])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.load(open(tmp_path / "e" / export_eval.REPORT_FILE))
    rows = _rows(report["rows"])
    assert set(rows) == {("keras", False), ("tflite_fp32", False), ("tflite_int8", False)}
    assert report["people"] == people and report["boxes"] == "ground truth"
    keras_ap = rows["keras", False]["AP"]
    assert keras_ap >= 0.95, rows["keras", False]
    fp32 = rows["tflite_fp32", False]
    assert abs(fp32["AP"] - keras_ap) <= 1e-3 and fp32["ap_drop"] == pytest.approx(
        keras_ap - fp32["AP"])
    int8 = rows["tflite_int8", False]
    assert 0.0 <= int8["AP"] <= 1.0 and int8["size_mb"] < 0.5 * fp32["size_mb"]
    assert rows["keras", False]["file"] == "model.keras"
    # The printed table is the report's.
    table = export_eval.format_table(report["rows"])
    assert table in out and "| tflite_int8 | model_int8.tflite |" in out


def test_every_float_file_and_the_flip_test(relabelled):
    """The shared export's float files equal Keras with the flip test; the keypoints file
    is evaluated without it, against Keras without; a broken file is a row, not a crash."""
    model, folder, annotations, _ = relabelled
    data = export_eval.evaluation_set(annotations, IMAGES)
    files = export_eval._export_files(folder)
    broken = os.path.join(os.path.dirname(annotations), "broken.tflite")
    with open(broken, "wb") as f:
        f.write(b"not a flatbuffer")
    files["tflite_fp16"] = broken
    rows = _rows(export_eval.evaluate_export(files, data, model=model, flip_test=True,
                                             verbose=False))
    assert ("tflite_keypoints", True) not in rows
    keras_flip, keras_plain = rows["keras", True]["AP"], rows["keras", False]["AP"]
    assert keras_plain >= 0.95 and keras_flip < keras_plain  # labels made without the flip
    for fmt in ("saved_model", "onnx", "tflite_fp32"):
        assert abs(rows[fmt, True]["AP"] - keras_flip) <= 1e-3, rows[fmt, True]
    assert abs(rows["tflite_keypoints", False]["ap_drop"]) <= 1e-3
    for fmt in ("tflite_int8_dynamic", "tflite_int8"):
        assert 0.0 <= rows[fmt, True]["AP"] <= 1.0
    assert "AP" not in rows["tflite_fp16", True] and rows["tflite_fp16", True]["error"]
    assert "failed:" in export_eval.format_table(list(rows.values()))


@pytest.mark.parametrize("case", ["no_annotations", "not_json", "no_images_dir",
                                  "images_elsewhere", "no_detections", "option_alone",
                                  "max_images_zero"])
def test_bad_evaluation_input_rejected_before_the_export(case, tmp_path, capsys):
    ann = dh.ANNOTATIONS
    empty = tmp_path / "empty"
    empty.mkdir()
    not_json = tmp_path / "x.json"
    not_json.write_text("{not json")
    extra = {"no_annotations": ["--evaluate", str(tmp_path / "nope.json"), IMAGES],
             "not_json": ["--evaluate", str(not_json), IMAGES],
             "no_images_dir": ["--evaluate", ann, str(tmp_path / "nope")],
             "images_elsewhere": ["--evaluate", ann, str(empty)],
             "no_detections": ["--evaluate", ann, IMAGES, "--eval-detections",
                               str(tmp_path / "d.json")],
             "option_alone": ["--eval-max-images", "3"],
             "max_images_zero": ["--evaluate", ann, IMAGES, "--eval-max-images", "0"]}[case]
    out = tmp_path / "out"
    code = cli.main(["export", "DPN1_32", "--input-size", "128", "96", "--out-dir", str(out),
                     "--formats", "tflite_fp32", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("keras-dpn export: error: ")
    assert "Received" in err
    assert not out.exists()  # nothing written: the check comes first


def test_export_model_checks_evaluate_before_writing(tmp_path):
    import keras_dpn
    model = keras_dpn.DPN1_32(input_shape=(64, 48, 3))
    for evaluate in [(str(tmp_path / "nope.json"), IMAGES), "just_a_path.json"]:
        with pytest.raises(ValueError, match="Received: (annotation_file|evaluate)="):
            export.export_model(model, tmp_path / "out", formats="tflite_fp32",
                                evaluate=evaluate, verbose=False)
        assert not (tmp_path / "out").exists()
    data = export_eval.evaluation_set(dh.ANNOTATIONS, IMAGES, max_images=3)
    assert data.num_images == 3 and data.image_ids == [im["image_id"] for im in data.images][:3]
    mpii = export_eval.EvaluationSet(data.annotation_file, data.image_dir, keras_dpn.MPII_16,
                                     data.images, data.image_ids)
    with pytest.raises(ValueError, match="the model for 'coco'"):
        export.export_model(model, tmp_path / "out", formats="tflite_fp32", evaluate=mpii,
                            verbose=False)
    assert not (tmp_path / "out").exists()


def test_detection_boxes(exported, tmp_path):
    detections = os.path.join(dh.ROOT, "sample_data", "coco", "annotations",
                              "person_detections_sample.json")
    data = export_eval.evaluation_set(dh.ANNOTATIONS, IMAGES, detections=detections,
                                      score_threshold=0.5)
    # The file covers 4 images of the sample; the AP is still over all 52 images.
    assert len(data.images) == 4 and data.image_ids is None
    assert all(len(im["boxes"]) == len(im["scores"]) and min(im["scores"]) >= 0.5
               for im in data.images)
    # Boxes outside the image or under 1 px (PoseEstimator refuses those) are skipped.
    with open(detections) as f:
        rows = [d for d in json.load(f) if d["image_id"] == 785 and d["score"] >= 0.5]
    bad = [dict(rows[0], bbox=[-500, -500, 10, 10]), dict(rows[0], bbox=[5, 5, 0, 40]),
           dict(rows[0], bbox=[5, 5, 0.5, 40])]
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(rows + bad))
    data = export_eval.evaluation_set(dh.ANNOTATIONS, IMAGES, detections=mixed)
    result = export_eval.evaluate_file(exported[0], data, verbose=False)
    assert result["people"] == len(rows) and 0.0 <= result["AP"] <= 1.0
    wrong_split = tmp_path / "other.json"
    wrong_split.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                        "bbox": [0, 0, 10, 10]}]))
    with pytest.raises(ValueError, match="another split"):
        export_eval.evaluation_set(dh.ANNOTATIONS, IMAGES, detections=wrong_split)


@pytest.mark.slow
def test_script_end_to_end_on_a_trained_model(tmp_path, trained_tiny):
    """`benchmarks/export_accuracy.py` on the trained tiny model and the real labels; its
    boxes and Keras AP are the recipe evaluation's (shards -> build_dataset -> predict_coco)."""
    model, path = trained_tiny
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, os.path.join(dh.ROOT, "benchmarks",
                                                        "export_accuracy.py"),
                           "--model-file", path, "--no-qat", "--json", str(out)],
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(out))
    rows = _rows(report["rows"])
    assert set(f for f, _ in rows) == set(export_eval.EVALUATED) - {"tflite_qat", "tflite_pruned"}
    keras_ap = rows["keras", False]["AP"]
    for fmt in ("saved_model", "onnx", "tflite_fp32", "tflite_keypoints"):
        assert abs(rows[fmt, False]["AP"] - keras_ap) <= 2e-3, rows[fmt, False]
    assert "| tflite_int8 | model_int8.tflite |" in proc.stdout

    from keras_dpn.core import transforms
    from keras_dpn.data import build_coco_shards, build_dataset
    from keras_dpn.evaluation import COCOEvaluator, predict_coco
    from keras_dpn.inference.estimator import read_image
    build_coco_shards(dh.ANNOTATIONS, IMAGES, str(tmp_path / "shards" / "s"), 1, verbose=False,
                      progress=False)
    ds = build_dataset(str(tmp_path / "shards" / "s-*.tfrecord"), training=False, batch_size=32,
                       input_size=dh.INPUT_SIZE, heatmap_size=dh.HEATMAP_SIZE)
    results = predict_coco(model, ds, flip_test=False, verbose=0)
    # The same people in the same crop windows as the recipe's evaluation.
    data = export_eval.evaluation_set(dh.ANNOTATIONS, IMAGES)
    windows = []
    for item in data.images:
        boxes, _ = data.person_boxes(item, read_image(item["path"]).shape)
        c, s = transforms.box_to_center_scale(boxes, dh.INPUT_SIZE[1] / dh.INPUT_SIZE[0])
        windows += [(item["image_id"], *ci, *si) for ci, si in zip(c, s)]
    recipe = [(r["image_id"], *r["center"], *r["scale"]) for r in results]
    np.testing.assert_allclose(np.array(sorted(windows)), np.array(sorted(recipe)), atol=1e-3)
    evaluator = COCOEvaluator(dh.ANNOTATIONS)
    evaluator.add_results(results)
    recipe_ap = evaluator.evaluate()["AP"]
    # Not to the digit: both decode JPEGs with the accurate IDCT, but only PoseEstimator's
    # crops are rounded to uint8 (< 0.5 grey levels apart, tests/test_data.py).
    assert keras_ap > 0.05 and abs(keras_ap - recipe_ap) <= 0.01, (keras_ap, recipe_ap)
