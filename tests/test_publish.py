"""From a training run to a release: run_config.json, `keras-dpn publish`, serve, register, load.

The default tests publish a tiny Trainer run (DPN1_32 at 64x48, two steps on
synthetic batches, best epoch by loss); the slow test publishes a run of the
recipe on the bundled sample, with its evaluation and its TFLite export.
"""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest

import keras_dpn
from download_helpers import _isolated_always, isolated, serve, sha256, tree  # noqa: F401
from keras_dpn import cli, presets, publish
from keras_dpn import weights as weights_lib

SHAPE = (64, 48, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(REPO, "sample_data", "coco", "images", "000000000785.jpg")
BOXES = [[280.8, 44.0, 218.7, 346.7], [100.0, 60.0, 120.0, 300.0]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny Trainer run: ``(run folder, reference model with its best weights)``."""
    import tensorflow as tf

    from keras_dpn.training import Trainer

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4,) + SHAPE).astype("float32")
    y = rng.uniform(0, 0.1, (4, 16, 12, 17)).astype("float32")
    w = np.ones((4, 17), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(2)
    trainer = Trainer(lambda: keras_dpn.DPN1_32(input_shape=SHAPE), output_dir=run_dir,
                      strategy="default", epochs=1, steps_per_epoch=2, monitor="loss",
                      monitor_mode="min", tensorboard=False, verbose=0, seed=1,
                      run_info={"keypoints": "coco",
                                "dataset": {"name": "synthetic", "sample": False}})
    trainer.fit(ds)
    reference = keras_dpn.DPN1_32(input_shape=SHAPE)
    reference.load_weights(run_dir / "best.weights.h5")
    return run_dir, reference


def copy_run(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run[0], dest)
    return dest


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_trainer_records_the_run(run):
    config = json.loads((run[0] / "run_config.json").read_text())
    assert config["model"] == {
        "variant": "DPN1_32",
        "arguments": {"input_shape": [64, 48, 3], "num_keypoints": 17, "resolution": "medium",
                      "dilation_schedule": "pyramid", "num_blocks": 6, "kernel_size": 3}}
    state = json.loads((run[0] / "checkpoints" / "state.json").read_text())
    assert config["architecture"] == state["architecture"]
    assert config["keypoints"] == "coco" and config["dataset"]["name"] == "synthetic"
    assert config["training"]["epochs"] == 1 and config["training"]["monitor"] == "loss"


def test_publish_serve_register_load_by_tag_predict(run, tmp_path, isolated, capsys):
    run_dir, reference = run
    out_dir = tmp_path / "releases"
    rc = cli.main(["publish", str(run_dir), "--name", "tiny_synthetic", "--out-dir",
                   str(out_dir), "--tag", "tiny"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert sorted(os.listdir(out_dir)) == ["tiny_synthetic", "tiny_synthetic.registry.json",
                                           "tiny_synthetic.tar.gz"]
    digest = sha256(out_dir / "tiny_synthetic.tar.gz")
    assert f"sha256   {digest}" in printed and "keras_dpn.weights.register(" in printed
    assert "url='https://YOUR-HOST/tiny_synthetic.tar.gz'" in printed
    # The run's best weights, without the optimizer state its file also holds.
    import h5py
    with h5py.File(out_dir / "tiny_synthetic" / "model.weights.h5", "r") as f:
        assert "optimizer" not in f and "layers" in f
    meta = json.loads((out_dir / "tiny_synthetic" / "metadata.json").read_text())
    assert meta["training"]["dataset"]["name"] == "synthetic"
    assert meta["training"]["best_epoch"] == 1 and meta["tag"] == "tiny"

    # Serve the archive, register the printed entry with the real URL, load by tag.
    entry = json.loads((out_dir / "tiny_synthetic.registry.json").read_text())[0]
    assert entry["sha256"] == digest and entry["config"]["dilation_schedule"] == "pyramid"
    with serve(out_dir) as url:
        entry["url"] = f"{url}/tiny_synthetic.tar.gz"
        (tmp_path / "registry.json").write_text(json.dumps([entry]))
        weights_lib.load_registry(tmp_path / "registry.json")
        model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="tiny")
        estimator = keras_dpn.PoseEstimator.from_preset("DPN1_32.tiny")
    x = np.random.default_rng(3).normal(size=(1,) + SHAPE).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)),
                                  keras.ops.convert_to_numpy(reference(x)))
    people = estimator.predict(IMAGE, boxes=BOXES)
    expected = keras_dpn.PoseEstimator(reference).predict(IMAGE, boxes=BOXES)
    for got, want in zip(people, expected):
        np.testing.assert_array_equal(got["keypoints"], want["keypoints"])
    # The run's weights matter: an untrained model predicts other heatmaps.
    fresh = keras_dpn.PoseEstimator(keras_dpn.DPN1_32(input_shape=SHAPE))
    crops = estimator.crop(IMAGE, BOXES)[0]
    assert np.abs(estimator.predict_heatmaps(crops) - fresh.predict_heatmaps(crops)).max() > 1e-4
    # In the cache: the verified archive and its unpacked folder, nothing partial.
    cached = tree(isolated)
    assert "DPN1_32_tiny.tar.gz" in cached
    assert not any(".partial-" in p for p in cached)


def test_publish_reads_the_export_folder_and_its_table(run, tmp_path):
    run_dir = copy_run(run, tmp_path)
    export = run_dir / "export"
    export.mkdir()
    (export / "model_fp32.tflite").write_bytes(b"stand-in")
    (export / "metadata.json").write_text(json.dumps({
        "input_size": [64, 48], "num_keypoints": 17, "keypoints": {"name": "coco"},
        "files": {"tflite_fp32": "model_fp32.tflite"}}))
    # The report `keras-dpn export --evaluate` writes (export_eval.write_report).
    from keras_dpn import export_eval
    export_eval.write_report(
        str(export / "accuracy.json"),
        [{"format": "keras", "file": "(in memory)", "flip_test": False, "AP": 0.26},
         {"format": "tflite_fp32", "file": "model_fp32.tflite", "size_mb": 0.1,
          "flip_test": False, "AP": 0.25, "ap_drop": 0.01},
         {"format": "tflite_int8", "file": "model_int8.tflite", "flip_test": False,
          "error": "broken"}],
        export_eval.EvaluationSet("ann.json", "images", keras_dpn.keypoints.COCO_17, [], [],
                                  "ground truth"))
    result = publish.publish_run(run_dir, "with_export", out_dir=tmp_path / "out")
    preset = presets.get_preset(result["preset"])
    assert preset.metadata["formats"] == {
        "keras": {"AP": 0.26, "flip_test": False},
        "tflite_fp32": {"AP": 0.25, "ap_drop": 0.01, "size_mb": 0.1, "flip_test": False}}
    assert preset.export_files == {"tflite_fp32": os.path.join(preset.path, "export",
                                                               "model_fp32.tflite")}
    assert "| tflite_fp32 | 0.2500 |" in open(os.path.join(preset.path, "README.md")).read()
    assert result["entry"]["tag"] == "synthetic"  # the run's dataset name


def _keypoints_mpii(run_dir):
    edit_json(run_dir / "run_config.json", lambda c: c.update(keypoints="mpii"))


def _reversed(run_dir):
    edit_json(run_dir / "run_config.json",
              lambda c: c["model"]["arguments"].update(dilation_schedule="reversed"))


def _other_variant(run_dir):
    edit_json(run_dir / "run_config.json", lambda c: c["model"].update(variant="DPN2_32"))


def _unknown_variant(run_dir):
    edit_json(run_dir / "run_config.json", lambda c: c["model"].update(variant="DPN9_32"))


def _export_size(run_dir):
    (run_dir / "export").mkdir()
    (run_dir / "export" / "metadata.json").write_text(json.dumps(
        {"input_size": [128, 96], "num_keypoints": 17, "keypoints": {"name": "coco"}}))


def _weights_of_other_model(run_dir):
    keras_dpn.DPN2_32(input_shape=SHAPE).save_weights(run_dir / "best.weights.h5")


def _no_config(run_dir):
    (run_dir / "run_config.json").unlink()


def _no_best(run_dir):
    (run_dir / "best.weights.h5").unlink()


@pytest.mark.parametrize("damage,message", [
    (_keypoints_mpii, r"Inconsistent keypoint set: run_config\.json says 'mpii' \(16 joints\) "
                      r"but the model has num_keypoints=17"),
    (_reversed, r"Inconsistent architecture: run_config\.json records DPN1_32 with 152 weights"),
    (_other_variant, r"Inconsistent architecture: run_config\.json records DPN1_32"),
    (_unknown_variant, r"names a model this keras-dpn cannot build: Unknown model name"),
    (_export_size, r"Inconsistent input size: the export folder's models take \[128, 96\], the "
                   r"run's model \[64, 48\]"),
    (_weights_of_other_model, r"Inconsistent architecture: The weights file does not match"),
    (_no_config, r"holds no run_config\.json"),
    (_no_best, r"no weights to publish"),
])
def test_inconsistent_run_is_refused_and_nothing_written(damage, message, run, tmp_path):
    run_dir = copy_run(run, tmp_path)
    damage(run_dir)
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        publish.publish_run(run_dir, "x", out_dir=out_dir)
    assert tree(out_dir) == []
    assert cli.main(["publish", str(run_dir), "--name", "x", "--out-dir", str(out_dir)]) == 2
    assert tree(out_dir) == []


def test_bad_name_and_existing_release(run, tmp_path):
    with pytest.raises(ValueError, match=r"Received: name='\.\./x'"):
        publish.publish_run(run[0], "../x", out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"Received: tag='a\.b'"):
        publish.publish_run(run[0], "x", out_dir=tmp_path, tag="a.b")
    first = publish.publish_run(run[0], "x", out_dir=tmp_path / "out")
    before = {p: sha256(tmp_path / "out" / p) for p in tree(tmp_path / "out")
              if os.path.isfile(tmp_path / "out" / p)}
    with pytest.raises(FileExistsError, match="already exists"):
        publish.publish_run(run[0], "x", out_dir=tmp_path / "out")
    assert {p: sha256(tmp_path / "out" / p) for p in before} == before
    assert first["entry"]["sha256"] == sha256(first["archive"])
    again = publish.publish_run(run[0], "x", out_dir=tmp_path / "out", overwrite=True)
    assert again["sha256"] == sha256(again["archive"])
    assert not any(".partial-" in p or ".old-" in p for p in tree(tmp_path / "out"))


@pytest.mark.slow
def test_recipe_run_to_release_on_the_sample(tmp_path, isolated):
    """The recipe on the sample (tiny model, one short epoch, COCO AP, fp32 TFLite export)
    -> publish -> served archive -> register -> load by tag -> same keypoints."""
    sys.path.insert(0, os.path.join(REPO, "recipes"))
    try:
        import train_coco
    finally:
        sys.path.pop(0)
    run_dir = tmp_path / "run"
    rc = train_coco.main(["--model", "DPN1_32", "--input-size", "64", "48", "--epochs", "1",
                          "--steps-per-epoch", "3", "--batch-size", "4", "--no-mixed-precision",
                          "--export-formats", "tflite_fp32", "--shards-dir",
                          str(tmp_path / "shards"), "--output", str(run_dir), "--verbose", "0"])
    assert rc == 0
    out_dir = tmp_path / "releases"
    assert cli.main(["publish", str(run_dir), "--name", "sample_run", "--out-dir",
                     str(out_dir), "--url", "http://127.0.0.1:1/"]) == 0
    preset = presets.get_preset(str(out_dir / "sample_run"))
    assert preset.metadata["training"]["dataset"]["name"] == "coco_sample"
    assert "val_AP" in preset.metadata["metrics"] and "memorization" in \
        preset.metadata["metrics_note"]
    assert "tflite_fp32" in preset.export_files
    entry = json.loads((out_dir / "sample_run.registry.json").read_text())[0]
    assert entry["tag"] == "coco_sample" and entry["url"] == \
        "http://127.0.0.1:1/sample_run.tar.gz"
    with serve(out_dir) as url:
        entry["url"] = f"{url}/sample_run.tar.gz"
        weights_lib.register(**entry)
        keras_est = keras_dpn.PoseEstimator.from_preset("DPN1_32.coco_sample")
        lite_est = keras_dpn.PoseEstimator.from_preset("DPN1_32.coco_sample",
                                                       format="tflite_fp32")
    reference = keras_dpn.DPN1_32(input_shape=SHAPE)
    reference.load_weights(run_dir / "best.weights.h5")
    want = keras_dpn.PoseEstimator(reference).predict(IMAGE, boxes=BOXES)
    for got, ref in zip(keras_est.predict(IMAGE, boxes=BOXES), want):
        np.testing.assert_array_equal(got["keypoints"], ref["keypoints"])
    run_lite = keras_dpn.PoseEstimator(str(run_dir / "export" / "model_fp32.tflite"))
    for got, ref in zip(lite_est.predict(IMAGE, boxes=BOXES),
                        run_lite.predict(IMAGE, boxes=BOXES)):
        np.testing.assert_array_equal(got["keypoints"], ref["keypoints"])
