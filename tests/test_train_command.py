"""`keras-dpn train` with a custom keypoint set: the set survives every step.

The default-run test trains a tiny model (DPN1_32 at 64x48, two steps) on a
5-joint set with asymmetric flip pairs, made from the bundled sample by the
worked example's script (docs/examples/make_keypoint_subset.py), through the
console command in a child process; the set written to a file at the start is
compared with what the shards, the run, the export, predict, publish and
``PoseEstimator.from_preset`` hold. The worked example of
docs/custom_keypoints.md end to end and the wheel install are ``slow``.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_IMAGES = os.path.join(REPO, "sample_data", "coco", "images")
SAMPLE_CLIP = os.path.join(REPO, "sample_data", "video", "basketball_426x240_40frames.mp4")
# left_shoulder, left_elbow, nose, right_shoulder, right_elbow: flip pairs (0, 3), (1, 4),
# the nose (2) has no partner.
ARMS5 = ["5", "7", "0", "6", "8"]


def _example_script():
    where = os.path.join(REPO, "docs", "examples", "make_keypoint_subset.py")
    loader = importlib.util.spec_from_file_location("make_keypoint_subset", where)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _command(args, cwd, timeout=900):
    """`python -m keras_dpn.cli.main ...` in a child process (as the console script runs it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-m", "keras_dpn.cli.main", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def _make_set(tmp_path, name="arms5", joints=ARMS5):
    """The worked example's files, then the set's sigmas and colours made its own (so that
    nothing can pass by falling back to COCO's values). Returns (set file, its dict, ann)."""
    _example_script().main(["--name", name, "--joints", *joints, "--out", str(tmp_path)])
    spec_file = tmp_path / f"{name}_keypoints.json"
    written = json.loads(spec_file.read_text())
    k = len(written["names"])
    written["sigmas"] = [round(0.05 + 0.01 * i, 3) for i in range(k)]
    written["colors"] = [[200, 30 * i % 256, 90] for i in range(len(written["skeleton"]))]
    spec_file.write_text(json.dumps(written, indent=1))
    return spec_file, written, tmp_path / f"{name}_annotations.json"


def test_custom_set_survives_train_export_predict_publish(tmp_path):
    import keras_dpn
    from keras_dpn import data
    from keras_dpn.cli import main as cli
    from keras_dpn.core.keypoints import KeypointSpec

    spec_file, written, ann = _make_set(tmp_path)
    assert written["flip_pairs"] == [[0, 3], [1, 4]]  # joint 2 unpaired: asymmetric
    expected = KeypointSpec.from_dict(json.loads(spec_file.read_text()))

    # Shards: the manifest records the whole set.
    data.build_coco_shards(str(ann), SAMPLE_IMAGES, str(tmp_path / "shards" / "arms5"), 1,
                           dataset=str(spec_file), num_workers=1, progress=False,
                           verbose=False)
    manifest = json.loads((tmp_path / "shards" / "arms5-manifest.json").read_text())
    assert manifest["keypoints"] == written

    # keras-dpn train: the head gets 5 joints; the run records the set as data.
    run = tmp_path / "run"
    pattern = str(tmp_path / "shards" / "arms5-*.tfrecord")
    printed = _command(["train", "--keypoints", spec_file, "--train-shards", pattern,
                        "--val-shards", pattern, "--annotations", ann, "--model", "DPN1_32",
                        "--input-size", "64", "48", "--batch-size", "4", "--epochs", "1",
                        "--steps-per-epoch", "2", "--strategy", "default", "--seed", "0",
                        "--export-formats", "tflite_fp32", "--output", run, "--verbose", "2"],
                       cwd=tmp_path)
    assert "arms5 (5 joints)" in printed and "val_AP" in printed
    assert "\x1b[" not in printed  # --verbose 2: no progress-bar escape codes
    run_config = json.loads((run / "run_config.json").read_text())
    assert run_config["keypoints"] == written
    assert run_config["model"]["arguments"]["num_keypoints"] == 5  # the head

    # Export (the run's own): metadata carries the whole set.
    meta = json.loads((run / "export" / "metadata.json").read_text())
    assert meta["keypoints"] == written

    # predict: the exported file brings its own set (no --keypoints).
    out = tmp_path / "pose.png"
    assert cli.main(["predict", keras_dpn.core.assets.SAMPLE_IMAGE, "--model",
                     str(run / "export" / "model_fp32.tflite"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000

    # publish -> preset -> from_preset: the same set, sigmas and colours included.
    assert cli.main(["publish", str(run), "--name", "arms5_run", "--out-dir",
                     str(tmp_path / "presets"), "--url", "http://127.0.0.1:1/"]) == 0
    preset_meta = json.loads((tmp_path / "presets" / "arms5_run" / "metadata.json").read_text())
    assert preset_meta["keypoints"] == written
    estimator = keras_dpn.PoseEstimator.from_preset(str(tmp_path / "presets" / "arms5_run"))
    assert estimator.spec == expected
    assert list(estimator.spec.sigmas) == written["sigmas"]
    assert estimator.spec.flip_index.tolist() == [3, 4, 2, 0, 1]


def test_keypoint_set_must_match_the_shards(tmp_path, capsys):
    """--keypoints of another set than the shards': one line, before training."""
    from keras_dpn import data
    from keras_dpn.cli import train as train_command
    spec_file, _, ann = _make_set(tmp_path)
    data.build_coco_shards(str(ann), SAMPLE_IMAGES, str(tmp_path / "shards" / "arms5"), 1,
                           dataset=str(spec_file), num_workers=1, progress=False,
                           verbose=False)
    pattern = str(tmp_path / "shards" / "arms5-*.tfrecord")
    other = json.loads(spec_file.read_text())
    other["flip_pairs"] = [[0, 3]]
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other))
    base = ["--train-shards", pattern, "--val-shards", pattern, "--annotations", str(ann),
            "--model", "DPN1_32", "--input-size", "64", "48", "--strategy", "default",
            "--verbose", "0"]
    cases = [(["--keypoints", str(other_file)], "differ in `flip_pairs`"),
             (["--keypoints", "coco"], "differ in `name`"),
             (["--keypoints", str(tmp_path / "missing.json")], "--keypoints")]
    for extra, expected in cases:
        out = tmp_path / "run"
        assert train_command.main(base + extra + ["--output", str(out)], dataset=None) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert expected in err, err
        assert not out.exists()


def test_presets_choose_defaults(tmp_path):
    """keras-dpn train: the run preset from the data flags, and --preset."""
    from keras_dpn.cli import train as tc

    def resolve(argv):
        args = tc.build_parser(None).parse_args(argv + ["--output", str(tmp_path / "r")])
        return tc.resolve_config(args, None)

    ann = tc.SAMPLE["coco"]["annotations"]
    spec_file, _, _ = _make_set(tmp_path)
    sample = resolve([])
    assert (sample.preset, sample.dataset, tuple(sample.input_size)) == ("sample", "coco",
                                                                         (128, 96))
    assert sample.keypoint_spec.name == "coco" and sample.epochs == 50
    assert resolve(["--preset", "mpii_sample"]).input_size == (128, 128)
    data = ["--train-shards", "a", "--val-shards", "b", "--annotations", ann]
    coco = resolve(data)
    assert coco.preset == "coco" and coco.keypoint_spec is None and coco.epochs == 140
    custom = resolve(data + ["--keypoints", str(spec_file)])
    assert custom.preset == "custom" and custom.keypoint_spec.num_keypoints == 5
    assert custom.run_name == "arms5"
    mpii = resolve(["--train-shards", "a", "--val-shards", "b", "--ground-truth", ann])
    assert mpii.preset == "mpii" and tuple(mpii.input_size) == (256, 256)
    with pytest.raises(ValueError, match="--preset sample trains on the bundled sample"):
        resolve(data + ["--preset", "sample"])
    assert not (tmp_path / "r").exists()


def test_history_csv_counts_epochs_from_1(tmp_path):
    """history.csv numbers epochs as the log and best.json do (from 1); a 0.1 run's file
    (from 0) is renumbered when that run is resumed, and publish reads both."""
    from keras_dpn.hub import publish
    from keras_dpn.training import run_callbacks
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_AP\n0,0.5,0.1\n1,0.4,0.2\n2,0.3,\n")  # 0.1, killed in 3
    assert publish._last_evaluation(str(tmp_path))[0] == 2  # 1-based: the 2nd epoch
    history = run_callbacks.HistoryCSV(str(path), initial_epoch=2)  # resumed after 2 epochs
    history.on_epoch_end(2, {"loss": 0.25, "val_AP": 0.3})
    lines = path.read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "1", "2", "3"]
    assert lines[3] == "3,0.25,0.3"
    assert publish._last_evaluation(str(tmp_path)) == (3, {"val_AP": 0.3})


def _venv_with_wheel(tmp_path):
    """A wheel built from a copy of the repository's package files, installed in a fresh
    virtual environment (this interpreter's packages for TensorFlow & co.)."""
    source = tmp_path / "src"
    shutil.copytree(os.path.join(REPO, "keras_dpn"), source / "keras_dpn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    # What setup.py ships as the bundled samples.
    shutil.copytree(os.path.join(REPO, "sample_data"), source / "sample_data")
    shutil.copytree(os.path.join(REPO, "tests", "data", "mpii"),
                    source / "tests" / "data" / "mpii")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def call(cmd, cwd, timeout=900):
        proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc.stdout

    # setup.py directly: pip's legacy wheel path fails with this machine's setuptools 65
    # + wheel 0.48 ('NoneType' object has no attribute 'has_pure_modules').
    call([sys.executable, "setup.py", "-q", "bdist_wheel", "-d", tmp_path / "dist"], source)
    wheel = next((tmp_path / "dist").glob("keras_dpn-*.whl"))
    venv = tmp_path / "venv"
    call([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path)
    call([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir",
          "--disable-pip-version-check", wheel], tmp_path)
    shutil.rmtree(source)  # the installed copy must stand alone
    return venv, wheel, call


@pytest.mark.slow
def test_wheel_trains_the_sample_without_a_checkout(tmp_path):
    """`pip install keras_dpn-*.whl` in a fresh venv; `keras-dpn train` on the bundled sample
    from a folder with no checkout (about 1.5 minutes on 2 cores, build included)."""
    import zipfile
    venv, wheel, call = _venv_with_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "keras_dpn/core/assets/sample_data/coco/annotations/person_keypoints_sample.json" in names
    assert sum(n.startswith("keras_dpn/core/assets/sample_data/coco/images/") for n in names) == \
        len(os.listdir(SAMPLE_IMAGES))

    work = tmp_path / "work"
    work.mkdir()
    where = call([venv / "bin" / "python", "-c", "import keras_dpn.cli.train as t; "
                  "print(t.__file__); print(t.REPO)"], work).split()
    assert where[0].startswith(str(venv)) and where[1] == "None", where
    printed = call([venv / "bin" / "keras-dpn", "train", "--model", "DPN1_32", "--epochs", "1",
                    "--steps-per-epoch", "2", "--input-size", "64", "48", "--strategy",
                    "default", "--export-formats", "none", "--output", work / "run",
                    "--verbose", "2"], work)
    assert "SAMPLE RUN" in printed and "124 people" in printed and "Outputs:" in printed
    history = (work / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and history[1].startswith("1,")
    # The sample's shards went to the Keras cache (conftest: KERAS_HOME is temporary).
    assert os.listdir(os.path.join(os.environ["KERAS_HOME"], "keras_dpn", "sample_shards"))
    assert sorted(os.listdir(work)) == ["run"]


# docs/custom_keypoints.md's training flags: the sample run's schedule on the body12 set.
WORKED_EXAMPLE_TRAIN = ["--model", "DPN4_32", "--input-size", "128", "96", "--batch-size", "4",
                        "--epochs", "50", "--lr-epochs", "44", "--augment", "none",
                        "--mixed-precision"]


def worked_example(folder, train_flags=WORKED_EXAMPLE_TRAIN, model="DPN4_32", size=(128, 96)):
    """docs/custom_keypoints.md's commands in ``folder`` (a fresh clone's working folder);
    returns what the checks need."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def sh(*cmd, timeout=3600):
        proc = subprocess.run([str(c) for c in cmd], cwd=folder, env=env, text=True,
                              capture_output=True, timeout=timeout)
        assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc.stdout

    py, cli = sys.executable, [sys.executable, "-m", "keras_dpn.cli.main"]
    sh(py, os.path.join(REPO, "docs", "examples", "make_keypoint_subset.py"), "--out", "work")
    spec_file, ann = "work/body12_keypoints.json", "work/body12_annotations.json"
    sh(py, os.path.join(REPO, "tfrecords", "build_coco.py"), "--annotations", ann, "--images",
       SAMPLE_IMAGES, "--output", "work/shards/body12", "--num-shards", "2", "--keypoints",
       spec_file)
    pattern = "work/shards/body12-*.tfrecord"
    sh(*cli, "train", "--keypoints", spec_file, "--train-shards", pattern, "--val-shards",
       pattern, "--annotations", ann, *train_flags, "--export-formats", "saved_model",
       "tflite_fp32", "--output", "runs/body12", "--verbose", "2")
    sh(*cli, "export", model, "--weights", "runs/body12/best.weights.h5", "--input-size",
       *size, "--keypoints", spec_file, "--name", "body12", "--out-dir", "saved_models",
       "--formats", "saved_model", "tflite_fp32", "--evaluate", ann, SAMPLE_IMAGES)
    image = os.path.join(SAMPLE_IMAGES, "000000040083.jpg")
    boxes = os.path.join(REPO, "sample_data", "coco", "annotations",
                         "person_detections_sample.json")
    sh(*cli, "predict", image, "--model", "saved_models/body12/model_fp32.tflite", "--boxes",
       boxes, "--image-id", "40083", "--out", "pose.png")
    sh(*cli, "predict", SAMPLE_CLIP, "--model", "saved_models/body12", "--out", "clip_pose.mp4",
       "--max-frames", "10")
    url = "file://" + os.path.join(os.path.abspath(folder), "presets") + "/"
    sh(*cli, "publish", "runs/body12", "--name", "body12_sample", "--tag", "body12", "--url",
       url)
    return dict(folder=str(folder), spec_file=os.path.join(folder, spec_file),
                ann=os.path.join(folder, ann), run=os.path.join(folder, "runs", "body12"), image=image,
                exported=os.path.join(folder, "saved_models", "body12"),
                registry=os.path.join(folder, "presets", "body12_sample.registry.json"))


def check_worked_example(paths, model="DPN4_32", input_shape=(128, 96, 3)):
    import numpy as np

    import keras_dpn
    from keras_dpn.inference import visualize
    from keras_dpn.hub import weights
    from keras_dpn.core.keypoints import KeypointSpec

    written = json.loads(open(paths["spec_file"]).read())
    spec = KeypointSpec.from_dict(written)
    assert json.loads(open(os.path.join(paths["run"], "run_config.json")).read())[
        "keypoints"] == written
    assert json.loads(open(os.path.join(paths["exported"], "metadata.json")).read())[
        "keypoints"] == written
    frame = json.loads(open(os.path.join(paths["folder"], "clip_pose.jsonl")).readline())
    assert all(len(p["keypoints"]) == 12 for p in frame["people"]), frame

    # The TFLite file's keypoints are the Keras model's (same crops, same decoding).
    boxes = [a["bbox"] for a in json.loads(open(paths["ann"]).read())["annotations"]
             if a["image_id"] == 40083 and a["num_keypoints"] > 0]
    keras_model = keras_dpn.get_model(model, num_keypoints=12, input_shape=input_shape)
    keras_model.load_weights(os.path.join(paths["run"], "best.weights.h5"))
    want = keras_dpn.PoseEstimator(keras_model, keypoints=spec).predict(paths["image"],
                                                                        boxes=boxes)
    got = keras_dpn.PoseEstimator(os.path.join(paths["exported"], "model_fp32.tflite")).predict(
        paths["image"], boxes=boxes)
    assert len(want) == len(got) == len(boxes) >= 2
    for a, b in zip(want, got):
        np.testing.assert_allclose(a["keypoints"][:, :2], b["keypoints"][:, :2], atol=0.5)

    # Load by tag (the registry entry publish wrote; its URL is the archive's file:// path).
    entry = weights.load_registry(paths["registry"])[0]
    estimator = keras_dpn.PoseEstimator.from_preset(f"{entry.arch}.{entry.tag}")
    assert estimator.spec == spec and entry.tag == "body12"
    people = estimator.predict(paths["image"], boxes=boxes)
    image = keras_dpn.inference.estimator.read_image(paths["image"])
    own = visualize.draw_skeleton(image, people, spec=estimator.spec)
    coco_limbs = visualize.draw_skeleton(image, people, spec=dataclass_replace(
        estimator.spec, skeleton=((0, 1),), colors=()))
    assert not np.array_equal(own, coco_limbs)  # the set's own limbs are what is drawn


def dataclass_replace(spec, **changes):
    import dataclasses
    return dataclasses.replace(spec, **changes)


@pytest.mark.slow
def test_worked_example_custom_keypoints(tmp_path):
    """docs/custom_keypoints.md start to finish, commands only: make body12 from the sample,
    build shards, train until AP >= 0.5 on the training images, export, predict on an image
    and the bundled clip, publish, load by tag (8-10 minutes on 2 idle cores)."""
    import csv
    paths = worked_example(tmp_path)
    with open(os.path.join(paths["run"], "history.csv"), newline="") as f:
        ap = [float(r["val_AP"]) for r in csv.DictReader(f)]
    assert max(ap) >= 0.5 and ap[-1] > ap[0] + 0.3, ap
    check_worked_example(paths)
