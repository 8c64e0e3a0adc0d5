"""`keras-dpn train` (keras_dpn/cli/train.py) and its wrappers recipes/train_coco.py and
train_mpii.py: end to end on the sample, resume, bad input.

The default-suite runs use a tiny variant (DPN1_32 at 64x48) through the real
command code: sample shards (built in a temporary folder with --shards-dir),
tf.data pipeline, Trainer, COCO AP / PCKh callbacks, export, the prediction
picture. The no-argument run and the learning proof are ``slow``.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

from keras_dpn.cli import train as train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["--model", "DPN1_32", "--input-size", "64", "48", "--batch-size", "4",
        "--steps-per-epoch", "2", "--strategy", "default", "--verbose", "0"]


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    """The sample shards (COCO and MPII), built once into a temporary folder."""
    folder = str(tmp_path_factory.mktemp("sample_shards"))
    for dataset in ("coco", "mpii"):
        train_command.sample_shards(dataset, folder)
    return folder


def _rows(out):
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_coco_recipe_on_the_sample_then_resume(tmp_path, capsys, shards_dir):
    out = str(tmp_path / "run")
    base = TINY + ["--shards-dir", shards_dir, "--output", out]
    # Mixed precision as in the sample run: the export must still be float32.
    assert train_command.main(base + ["--epochs", "1", "--seed", "0", "--mixed-precision",
                                   "--export-formats", "tflite_fp32"]) == 0
    printed = capsys.readouterr().out
    assert "SAMPLE RUN" in printed and "on the training images" in printed
    assert "Outputs:" in printed and out in printed
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["1"]  # 1-based, as the log and best.json
    assert 0.0 <= float(rows[0]["val_AP"]) <= 1.0
    for name in ("best.weights.h5", "curves.png", "export/model_fp32.tflite",
                 "eval/keypoints_val_results_001.json"):
        assert os.path.exists(os.path.join(out, name)), name
    # The picture: the exported TFLite file's predictions, drawn on the preview image.
    import cv2
    picture = cv2.imread(os.path.join(out, "prediction.jpg"))
    image_path, boxes = train_command._preview_people("coco")
    assert picture.shape == cv2.imread(image_path).shape and len(boxes) >= 2
    assert "prediction (model_fp32.tflite)" in printed

    # Resume after the first epoch: exactly one more epoch, same lr schedule.
    # (--resume refuses changed run settings: the seed comes again.)
    assert train_command.main(base + ["--epochs", "2", "--seed", "0", "--resume",
                                      "--export-formats"]) == 0
    capsys.readouterr()
    assert [r["epoch"] for r in _rows(out)] == ["1", "2"]
    state = json.load(open(os.path.join(out, "checkpoints", "state.json")))
    assert state["epoch"] == 2 and state["step"] == 4
    # Without --resume the run folder is refused.
    assert train_command.main(base + ["--epochs", "3", "--export-formats", "none"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_sample_run_defaults_and_export_formats(tmp_path):
    """The sample run's settings (see the recipe's docstring); --export-formats spellings."""
    out = str(tmp_path / "run")
    args = train_command.resolve_config(train_command.build_parser().parse_args(["--output", out]),
                                     "coco")
    assert args.sample and tuple(args.input_size) == (128, 96) and args.augment == "none"
    assert args.flip_test is False and args.mixed_precision is True
    assert args.export_formats == ("saved_model", "tflite_fp32")
    real = train_command.build_parser().parse_args(
        ["--train-shards", "a", "--val-shards", "b", "--annotations",
         train_command.SAMPLE["coco"]["annotations"], "--output", out])
    real = train_command.resolve_config(real, "coco")
    assert tuple(real.input_size) == (256, 192) and real.augment == "reference"
    assert real.flip_test is True and real.export_formats is None and real.epochs == 140
    assert not os.path.exists(out)
    # --help lists the export formats without importing TensorFlow; keep them equal.
    from keras_dpn.deploy import export
    assert train_command.EXPORT_FORMATS == tuple(export.FORMATS)
    for argv, expected in ((["--export-formats", "none"], ()), (["--export-formats"], ()),
                           (["--export-formats", "all"], None),
                           (["--export-formats", "onnx", "saved_model"], ("onnx", "saved_model"))):
        args = train_command.build_parser().parse_args(argv + ["--output", out])
        assert train_command.resolve_config(args, "coco").export_formats == expected, argv


@pytest.mark.parametrize("case", [
    "missing_shards", "missing_val_shards", "partial_args", "keypoint_count",
    "foreign_detections", "missing_annotations", "resume_without_output", "unknown_model",
    "export_format_typo", "export_none_and_more", "resume_missing_folder", "resume_empty_folder",
    "output_below_file", "output_is_file", "shards_dir_with_data", "shards_dir_below_file",
    "input_size", "lr_epochs", "weights_missing"])
def test_bad_input_fails_before_training(tmp_path, capsys, shards_dir, case):
    coco = os.path.join(shards_dir, "coco_sample-*.tfrecord")
    mpii = os.path.join(shards_dir, "mpii_sample-*.tfrecord")
    ann = train_command.SAMPLE["coco"]["annotations"]
    out = str(tmp_path / "run")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    data = ["--train-shards", coco, "--val-shards", coco, "--annotations", ann]
    sample = ["--shards-dir", shards_dir]
    foreign = tmp_path / "detections_of_other_images.json"
    foreign.write_text(json.dumps([{"image_id": 999999999, "category_id": 1,
                                    "bbox": [10, 10, 50, 100], "score": 0.9}]))
    argv, expected = {
        "missing_shards": (["--train-shards", str(tmp_path / "none-*.tfrecord"),
                            "--val-shards", coco, "--annotations", ann], "No shard files match"),
        "missing_val_shards": (["--train-shards", coco, "--val-shards",
                                str(tmp_path / "none-*.tfrecord"), "--annotations", ann],
                               "No shard files match"),
        "partial_args": (["--train-shards", coco], "needs --val-shards, --annotations"),
        "keypoint_count": (["--train-shards", mpii, "--val-shards", coco,
                            "--annotations", ann], "16 keypoints"),
        "foreign_detections": (data + ["--detections", str(foreign)], "not in the shards"),
        "missing_annotations": (["--train-shards", coco, "--val-shards", coco,
                                 "--annotations", str(tmp_path / "nope.json")], "not a file"),
        "resume_without_output": (sample + ["--resume"], "--resume continues the run in --output"),
        "unknown_model": (data + ["--model", "ResNet50"], "Unknown --model"),
        "export_format_typo": (sample + ["--export-formats", "saved_model", "tflite_fp23"],
                               "--export-formats takes formats of"),
        "export_none_and_more": (sample + ["--export-formats", "none", "onnx"],
                                 "'none' alone"),
        "resume_missing_folder": (sample + ["--resume"], "the folder does not exist"),
        "resume_empty_folder": (sample + ["--resume"], "holds no checkpoint"),
        "output_below_file": (sample, "is a file, not a folder"),
        "output_is_file": (sample, "--output is a file"),
        "shards_dir_with_data": (data + ["--shards-dir", str(tmp_path)], "--shards-dir is where"),
        "shards_dir_below_file": (["--shards-dir", str(a_file / "shards")],
                                  "--shards-dir cannot be created"),
        "input_size": (sample + ["--input-size", "100", "75"], "multiple of 4"),
        "lr_epochs": (sample + ["--lr-epochs", "30", "10"], "--lr-epochs must be increasing"),
        "weights_missing": (sample + ["--weights", str(tmp_path / "no.weights.h5")],
                            "--weights is not a file"),
    }[case]
    if case == "resume_empty_folder":
        out = str(empty)
    elif case == "output_below_file":
        out = str(a_file / "run")
    elif case == "output_is_file":
        out = str(a_file)
    if case != "resume_without_output":
        argv = argv + ["--output", out]
    before = sorted(os.listdir(tmp_path))
    assert train_command.main(TINY + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1, "one line"
    assert sorted(os.listdir(tmp_path)) == before, "nothing may be written on bad input"
    assert os.listdir(empty) == []


def test_mpii_recipe_on_the_sample(tmp_path, shards_dir):
    out = str(tmp_path / "run")
    argv = ["--model", "DPN1_32", "--input-size", "64", "64", "--batch-size", "2",
            "--steps-per-epoch", "1", "--epochs", "1", "--strategy", "default",
            "--export-formats", "none", "--verbose", "0", "--output", out,
            "--shards-dir", shards_dir]
    assert train_command.main(argv, dataset="mpii") == 0
    rows = _rows(out)
    assert "val_PCKh" in rows[0] and 0.0 <= float(rows[0]["val_PCKh"]) <= 100.0


# Per backend: the recipe's argument and what it leaves (only TensorFlow exports).
SAMPLE_RUN_BACKENDS = {
    "default": ([], ("export/saved_model", "export/model_fp32.tflite")),
    "jax": (["--backend", "jax"], ("export/DPN4_32.keras",)),
    "torch": (["--backend", "torch"], ("export/DPN4_32.keras",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(SAMPLE_RUN_BACKENDS))
def test_sample_run_learns_and_exports(tmp_path, backend):
    """`python recipes/train_coco.py [--backend jax|torch]` as docs/guide/backends.md shows it (7-9 minutes
    each on 2 cores); only the output and shard folders are moved into tmp_path."""
    import importlib.util
    if backend != "default" and importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    args, files = SAMPLE_RUN_BACKENDS[backend]
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "recipes", "train_coco.py"), *args,
                           "--output", out, "--shards-dir", str(tmp_path / "shards")],
                          capture_output=True, text=True, timeout=3600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Outputs:" in proc.stdout
    rows = _rows(out)
    assert len(rows) == train_command.RUN_PRESETS["sample"]["epochs"]
    ap = [float(r["val_AP"]) for r in rows]
    assert max(ap) >= 0.5 and ap[-1] > ap[len(ap) // 4] + 0.3, ap
    for name in ("curves.png", "prediction.jpg", *files):
        assert os.path.exists(os.path.join(out, name)), name


@pytest.mark.slow
def test_recipe_memorizes_the_sample_ap_0_8(tmp_path):
    """The learning proof through the recipe (benchmarks/learning_curves.py without
    augmentation; 30-60 minutes on 2 CPU cores)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "learning_curves.py"),
                           "--augment", "none", "--output", str(tmp_path / "curves"),
                           "--figure", str(tmp_path / "curves.png")],
                          capture_output=True, text=True, timeout=4 * 3600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[curves] PASS" in proc.stdout
    rows = json.load(open(tmp_path / "curves" / "learning_curves.json"))["runs"]["none"]
    assert max(r["val_AP"] for r in rows) >= 0.8
