"""From a training run to a release: run_config.json, `keras-dpn publish`, serve, register, load.

The default tests publish a tiny Trainer run (DPN1_32 at 64x48, two steps on
synthetic batches, best epoch by loss); the slow test publishes a run of the
recipe on the bundled sample, with its evaluation and its TFLite export.
"""

import json
import os
import re
import shutil

import keras
import numpy as np
import pytest

import keras_dpn
from download_helpers import _isolated_always, isolated, serve, sha256, tree  # noqa: F401
from fault_helpers import mount_tmpfs  # noqa: F401
from keras_dpn.cli import main as cli
from keras_dpn.hub import presets
from keras_dpn.hub import publish
from keras_dpn.hub import weights as weights_lib
from repo_scripts import load_script

SHAPE = (64, 48, 3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(REPO, "sample_data", "coco", "images", "000000000785.jpg")
BOXES = [[280.8, 44.0, 218.7, 346.7], [100.0, 60.0, 120.0, 300.0]]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny Trainer run: ``(run folder, reference model with its best weights)``."""
    import tensorflow as tf

    from keras_dpn.training.trainer import Trainer

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
    # The whole set as data (run_info gave its name).
    assert config["keypoints"] == keras_dpn.COCO_17.to_dict()
    assert config["dataset"]["name"] == "synthetic"
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
    assert f"sha256   {digest}" in printed and "keras_dpn.hub.weights.register(" in printed
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
    assert len(people) == len(expected) == len(BOXES)
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
    from keras_dpn.deploy import export_eval
    export_eval.write_report(
        str(export / "accuracy.json"),
        [{"format": "keras", "file": "(in memory)", "flip_test": False, "AP": 0.26},
         {"format": "tflite_fp32", "file": "model_fp32.tflite", "size_mb": 0.1,
          "flip_test": False, "AP": 0.25, "ap_drop": 0.01},
         {"format": "tflite_int8", "file": "model_int8.tflite", "flip_test": False,
          "error": "broken"}],
        export_eval.EvaluationSet("ann.json", "images", keras_dpn.core.keypoints.COCO_17, [], [],
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
    train_coco = load_script("recipes/train_coco.py")
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
    got_people = keras_est.predict(IMAGE, boxes=BOXES)
    assert len(got_people) == len(want) == len(BOXES)
    for got, ref in zip(got_people, want):
        np.testing.assert_array_equal(got["keypoints"], ref["keypoints"])
    run_lite = keras_dpn.PoseEstimator(str(run_dir / "export" / "model_fp32.tflite"))
    lite_people, run_people = (lite_est.predict(IMAGE, boxes=BOXES),
                               run_lite.predict(IMAGE, boxes=BOXES))
    assert len(lite_people) == len(run_people) == len(BOXES)
    for got, ref in zip(lite_people, run_people):
        np.testing.assert_array_equal(got["keypoints"], ref["keypoints"])


# A 17-joint set of its own: COCO's joints with wider sigmas and no face limbs.
WIDE17 = dict(keras_dpn.COCO_17.to_dict(), name="wide17",
              sigmas=[2 * s for s in keras_dpn.COCO_17.sigmas],
              skeleton=[list(p) for p in keras_dpn.COCO_17.skeleton[:12]], colors=[])


@pytest.mark.parametrize("recorded", ["dict", "coco_name"])
def test_publish_reads_the_keypoint_set_run_config_records(run, tmp_path, recorded):
    run_dir = copy_run(run, tmp_path)
    value = WIDE17 if recorded == "dict" else "coco"  # "coco": a run of keras-dpn 0.1
    edit_json(run_dir / "run_config.json", lambda c: c.update(keypoints=value))
    out = publish.publish_run(run_dir, "wide", out_dir=tmp_path / "rel")
    preset = presets.get_preset(out["preset"])
    expected = keras_dpn.KeypointSpec.from_dict(WIDE17) if recorded == "dict" \
        else keras_dpn.COCO_17
    assert preset.keypoint_spec() == expected
    assert out["entry"]["keypoints"] == expected.name
    estimator = keras_dpn.PoseEstimator.from_preset(out["preset"])
    assert estimator.spec == expected
    if recorded == "dict":
        assert estimator.spec.sigmas == tuple(WIDE17["sigmas"])  # not COCO's
    # The card lists the sigmas AP is measured with.
    card = (tmp_path / "rel" / "wide" / "README.md").read_text()
    assert f"| 16 | right_ankle | left_ankle | {expected.sigmas[16]:g} |" in card


@pytest.mark.parametrize("value,message", [
    ("KeypointSpec(name='body12', ...)", "does not record its fields"),
    (["coco"], "records no keypoint set"),
    (dict(WIDE17, sigmas=[0.0] * 17), "run_config.json `keypoints`: `sigmas` entry 0"),
    (dict(WIDE17, names=WIDE17["names"][:12], sigmas=WIDE17["sigmas"][:12]), "12 joints"),
])
def test_publish_refuses_a_bad_recorded_keypoint_set(run, tmp_path, value, message):
    run_dir = copy_run(run, tmp_path)
    edit_json(run_dir / "run_config.json", lambda c: c.update(keypoints=value))
    with pytest.raises(ValueError) as info:
        publish.publish_run(run_dir, "bad", out_dir=tmp_path / "rel")
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "rel").exists() or os.listdir(tmp_path / "rel") == []


@pytest.mark.parametrize("keypoints", ["coco", keras_dpn.COCO_17, "dict", "file"])
def test_record_run_stores_the_set_as_data(tmp_path, keypoints):
    if keypoints == "dict":
        keypoints = WIDE17
    elif keypoints == "file":
        keypoints = str(tmp_path / "wide17.json")
        (tmp_path / "wide17.json").write_text(json.dumps(WIDE17))
    model = keras_dpn.DPN1_32(input_shape=SHAPE)
    record = publish.record_run(tmp_path / "r", model=model, keypoints=keypoints)
    on_disk = json.loads((tmp_path / "r" / "run_config.json").read_text())["keypoints"]
    assert on_disk == record["keypoints"]
    assert keras_dpn.KeypointSpec.from_dict(on_disk) == keras_dpn.get_keypoint_spec(keypoints)
    with pytest.raises(ValueError, match="the model's head has 17"):
        publish.record_run(tmp_path / "r2", model=model, keypoints="mpii")


@pytest.mark.parametrize("url", ["not a url", "https://", "ftp://example.org/x.tar.gz",
                                 "https://example.org/x.zip", "file://relative/x.tar.gz",
                                 "https://example.org:port/x.tar.gz"])
def test_bad_url_is_refused_before_anything_is_written(url, run, tmp_path, capsys):
    out_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"`url` must .*Received: url="):
        publish.publish_run(run[0], "x", out_dir=out_dir, url=url)
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir", str(out_dir),
                     "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-dpn publish: error: `url` must")
    assert tree(tmp_path) == []


def test_folder_url_names_the_archive(run, tmp_path):
    done = publish.publish_run(run[0], "x", out_dir=tmp_path, url="https://example.org/rel/")
    assert done["entry"]["url"] == "https://example.org/rel/x.tar.gz"


def test_rerun_after_a_killed_publish_cleans_up_and_completes(run, tmp_path):
    from fault_helpers import dead_token

    out = tmp_path / "out"
    first = publish.publish_run(run[0], "x", out_dir=out)
    # What a kill -9 left: with keras-dpn 0.1 a complete preset folder without archive
    # or registry file; now a staging folder and a half archive of the dead process.
    os.remove(first["archive"])
    os.remove(first["registry_file"])
    token = dead_token()
    stage = out / f".x.partial-{token}"
    shutil.copytree(first["preset"], stage / "x")
    (out / f".x.partial-{token}.tar.gz").write_bytes(b"half")
    (out / f".x.partial-{token}.registry.json").write_text("[")
    (out / ".y.partial-p00001zz").mkdir()  # another release's: not this rerun's business
    again = publish.publish_run(run[0], "x", out_dir=out)  # no --overwrite needed
    assert sorted(tree(out)) == sorted(
        [".y.partial-p00001zz", "x", "x.registry.json", "x.tar.gz"]
        + [f"x/{p}" for p in tree(first["preset"])])
    assert again["sha256"] == sha256(again["archive"])
    assert json.loads(open(again["registry_file"]).read())[0]["sha256"] == again["sha256"]
    # A complete release is still refused without --overwrite.
    with pytest.raises(FileExistsError, match="already exists"):
        publish.publish_run(run[0], "x", out_dir=out)


def test_overwrite_onto_a_folder_at_the_archive_is_refused_first(run, tmp_path, capsys):
    from fault_helpers import snapshot

    out = tmp_path / "out"
    publish.publish_run(run[0], "x", out_dir=out)
    os.remove(out / "x.tar.gz")
    (out / "x.tar.gz").mkdir()
    before = snapshot(out)
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir", str(out),
                     "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "A folder stands where the release's file goes" in err
    assert f"Received: {out / 'x.tar.gz'}" in err
    assert snapshot(out) == before and os.path.isdir(out / "x.tar.gz")
    # A file where the out folder goes.
    (tmp_path / "file").write_text("mine")
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir",
                     str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err


def test_read_only_and_full_disk_are_one_line(run, tmp_path, mount_tmpfs, capsys):
    from fault_helpers import snapshot

    read_only = mount_tmpfs("ro", "ro,size=1m")
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir",
                     str(read_only / "presets")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and str(read_only) in err
    # A disk with room for the release once: a second one (--overwrite keeps the
    # first until the new one is complete) fills it.
    probe = publish.publish_run(run[0], "x", out_dir=tmp_path / "probe")
    size = sum(len(v) for v in snapshot(tmp_path / "probe").values())
    disk = mount_tmpfs("disk", f"size={(size * 3 // 2) // 4096 * 4096 + 8 * 4096}")
    assert probe["sha256"]
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir", str(disk)]) == 0
    capsys.readouterr()
    before = snapshot(disk)
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir", str(disk),
                     "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Not enough free space" in err and str(disk) in err
    assert snapshot(disk) == before  # the first release whole, nothing of the second


def test_full_disk_without_a_mount_is_one_line(run, tmp_path, monkeypatch, capsys):
    """Where no tmpfs can be mounted: the archive writer fails with ENOSPC."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))

    monkeypatch.setattr(presets, "archive_preset", full)
    out = tmp_path / "out"
    assert cli.main(["publish", str(run[0]), "--name", "x", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"keras-dpn publish: error: [Errno 28] Cannot write the release 'x' into {out}: "
        "No space left on device")
    assert tree(out) == []


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "history.csv").write_text("epoch,loss,val_AP\n1,0.5,0.1\nabc,0.4,0.2\n"),
     r"history\.csv line 3: `epoch` must be a whole number, found 'abc'"),
    (lambda d: (d / "best.json").write_text("[1, 2]"),
     r"holds a JSON list, not an object; nothing was written\. Received: .*best\.json$"),
    (lambda d: (d / "best.json").write_text("{\"epoch\": 1,"),
     r"cannot be read as JSON \(Expecting property name .*line 1 column 13 .*best\.json$"),
])
def test_damaged_run_files_are_one_line_naming_the_file(damage, message, run, tmp_path, capsys):
    run_dir = copy_run(run, tmp_path)
    damage(run_dir)
    out = tmp_path / "out"
    assert cli.main(["publish", str(run_dir), "--name", "x", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and re.search(message, err), err
    assert tree(out) == []
