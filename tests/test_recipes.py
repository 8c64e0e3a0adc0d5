"""recipes/train_coco.py and train_mpii.py: end to end on the sample, resume, bad input.

The default-suite runs use a tiny variant (DPN1_32 at 64x48) through the real
recipe code: sample shards, tf.data pipeline, Trainer, COCO AP / PCKh
callbacks. The no-argument run and the overfit proof are ``slow``.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "recipes"))

import train_coco  # noqa: E402

TINY = ["--model", "DPN1_32", "--input-size", "64", "48", "--batch-size", "4",
        "--steps-per-epoch", "2", "--strategy", "default", "--export-formats", "--verbose", "0"]


def _rows(out):
    with open(os.path.join(out, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_coco_recipe_on_the_sample_then_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_coco.main(TINY + ["--epochs", "1", "--seed", "0", "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "SAMPLE SMOKE RUN" in printed and "Outputs:" in printed and out in printed
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["0"]
    assert 0.0 <= float(rows[0]["val_AP"]) <= 1.0
    assert os.path.exists(os.path.join(out, "best.weights.h5"))
    assert os.path.exists(os.path.join(out, "eval", "keypoints_val_results_001.json"))

    # Resume after the first epoch: exactly one more epoch, same lr schedule.
    assert train_coco.main(TINY + ["--epochs", "2", "--output", out, "--resume"]) == 0
    capsys.readouterr()
    assert [r["epoch"] for r in _rows(out)] == ["0", "1"]
    state = json.load(open(os.path.join(out, "checkpoints", "state.json")))
    assert state["epoch"] == 2 and state["step"] == 4
    # Without --resume the run folder is refused.
    assert train_coco.main(TINY + ["--epochs", "3", "--output", out]) == 2
    assert "--resume" in capsys.readouterr().err


def _sample_pattern(dataset):
    return train_coco._sample_shards(dataset)


@pytest.mark.parametrize("case", ["missing_shards", "partial_args", "keypoint_count",
                                  "foreign_detections", "missing_annotations",
                                  "resume_without_output", "unknown_model"])
def test_bad_input_fails_before_training(tmp_path, capsys, case):
    coco = _sample_pattern("coco")
    ann = train_coco.SAMPLE["coco"]["annotations"]
    out = str(tmp_path / "run")
    data = ["--train-shards", coco, "--val-shards", coco, "--annotations", ann]
    foreign = tmp_path / "detections_of_other_images.json"
    foreign.write_text(json.dumps([{"image_id": 999999999, "category_id": 1,
                                    "bbox": [10, 10, 50, 100], "score": 0.9}]))
    argv, expected = {
        "missing_shards": (["--train-shards", str(tmp_path / "none-*.tfrecord"),
                            "--val-shards", coco, "--annotations", ann], "No shard files match"),
        "partial_args": (["--train-shards", coco], "needs --val-shards, --annotations"),
        "keypoint_count": (["--train-shards", _sample_pattern("mpii"), "--val-shards", coco,
                            "--annotations", ann], "16 keypoints"),
        "foreign_detections": (data + ["--detections", str(foreign)], "not in the shards"),
        "missing_annotations": (["--train-shards", coco, "--val-shards", coco,
                                 "--annotations", str(tmp_path / "nope.json")], "not a file"),
        "resume_without_output": (["--resume"], "--resume continues the run in --output"),
        "unknown_model": (data + ["--model", "ResNet50"], "Unknown --model"),
    }[case]
    if case != "resume_without_output":
        argv = argv + ["--output", out]
    assert train_coco.main(TINY + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert not os.path.exists(out), "nothing may be written on bad input"


def test_mpii_recipe_on_the_sample(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["--model", "DPN1_32", "--input-size", "64", "64", "--batch-size", "2",
            "--steps-per-epoch", "1", "--epochs", "1", "--strategy", "default",
            "--export-formats", "--verbose", "0", "--output", out]
    assert train_coco.main(argv, dataset="mpii") == 0
    rows = _rows(out)
    assert "val_PCKh" in rows[0] and 0.0 <= float(rows[0]["val_PCKh"]) <= 100.0


@pytest.mark.slow
def test_no_argument_sample_run_finishes_and_exports(tmp_path):
    """`python recipes/train_coco.py` as the README shows it (a few minutes)."""
    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "recipes", "train_coco.py"),
                           "--output", out], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Outputs:" in proc.stdout
    assert len(_rows(out)) == train_coco.SAMPLE_RUN["epochs"]
    assert os.path.isdir(os.path.join(out, "export", "saved_model"))


@pytest.mark.slow
def test_overfit_sample_reaches_ap_0_8(tmp_path):
    """The proof of issue 4 item 7 (about 20-60 minutes on 2 CPU cores)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "overfit_sample.py"),
                           "--output", str(tmp_path / "overfit")], capture_output=True,
                          text=True, timeout=3 * 3600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[overfit] PASS" in proc.stdout
