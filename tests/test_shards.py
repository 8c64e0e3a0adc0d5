"""Shard builder: record layout, skip counts, naming, atomic writes, the CLIs."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_dpn import data
from keras_dpn.data import shards as shards_lib


def _records(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_sample_build_layout_and_counts(tmp_path, sample_dir):
    ann_path = sample_dir / "coco/annotations/person_keypoints_sample.json"
    manifest = data.build_coco_shards(ann_path, sample_dir / "coco/images", str(tmp_path / "c"), 3,
                                      num_workers=1, progress=False, verbose=False)
    names = sorted(os.listdir(tmp_path))
    assert names == ["c-00000-of-00003.tfrecord", "c-00001-of-00003.tfrecord",
                     "c-00002-of-00003.tfrecord", "c-manifest.json"]
    assert manifest["records"] == 52 and manifest["people"] == 124
    assert {k: v["count"] for k, v in manifest["skipped"].items()} == {"crowd": 5, "no_keypoints": 69}
    assert json.load(open(tmp_path / "c-manifest.json"))["people"] == 124
    ann = json.load(open(ann_path))
    images = {i["id"]: i for i in ann["images"]}
    anns = {a["id"]: a for a in ann["annotations"]}
    seen = 0
    for shard in manifest["shards"]:
        recs = _records(str(tmp_path / shard["file"]))
        assert len(recs) == shard["records"]
        for ex in recs:
            f = ex.features.feature
            image = images[f["image/id"].int64_list.value[0]]
            raw = (sample_dir / "coco/images" / image["file_name"]).read_bytes()
            encoded = f["image/encoded"].bytes_list.value[0]
            assert encoded == raw  # stored as is, never re-encoded
            assert f["image/sha256"].bytes_list.value[0].decode() == hashlib.sha256(raw).hexdigest()
            assert f["image/filename"].bytes_list.value[0].decode() == image["file_name"]
            assert (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]) == \
                (image["height"], image["width"])
            ids = list(f["person/id"].int64_list.value)
            kps = np.array(f["person/keypoints"].float_list.value).reshape(len(ids), 17, 3)
            areas = np.array(f["person/area"].float_list.value)
            for n, pid in enumerate(ids):
                a = anns[pid]
                np.testing.assert_allclose(kps[n], np.array(a["keypoints"]).reshape(17, 3), atol=1e-3)
                np.testing.assert_allclose(areas[n], a["area"], rtol=1e-6)
                assert a["iscrowd"] == 0 and a["num_keypoints"] > 0
            assert list(f["person/iscrowd"].int64_list.value) == [0] * len(ids)
            assert len(f["person/center"].float_list.value) == 0
            seen += len(ids)
    assert seen == 124
    report = data.check_shards(str(tmp_path / "c-*.tfrecord"), dataset="coco", progress=False)
    assert report == {"records": 52, "people": 124, "problems": []}


def test_killed_build_leaves_nothing_that_looks_complete(tmp_path, sample_dir, monkeypatch):
    calls = {"n": 0}
    real = shards_lib._serialize

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards_lib, "_serialize", dying)
    with pytest.raises(KeyboardInterrupt):
        data.build_coco_shards(sample_dir / "coco/annotations/person_keypoints_sample.json",
                               sample_dir / "coco/images", str(tmp_path / "k"), 2, num_workers=1,
                               progress=False, verbose=False)
    # Shard 0 finished before the kill; shard 1 left no file and no manifest exists.
    assert sorted(os.listdir(tmp_path)) == ["k-00000-of-00002.tfrecord"]
    with pytest.raises(ValueError, match="Incomplete shard set|missing"):
        data.build_dataset(str(tmp_path / "k-*.tfrecord"))


def test_num_shards_and_workers_validated(tmp_path, sample_dir):
    args = (sample_dir / "mpii/valid_sample.json", sample_dir / "mpii/images", str(tmp_path / "m"))
    with pytest.raises(ValueError, match="num_shards=6"):
        data.build_mpii_shards(*args, 6, progress=False, verbose=False)
    with pytest.raises(ValueError, match="num_shards=0"):
        data.build_mpii_shards(*args, 0, progress=False, verbose=False)


def test_cli_in_process(tmp_path, capsys):
    from keras_dpn.data.cli import main
    assert main("mpii", ["--output", str(tmp_path / "mpii"), "--no-progress"]) == 0
    assert "5 people" in capsys.readouterr().out
    assert os.path.exists(tmp_path / "mpii-00000-of-00001.tfrecord")
    assert main("mpii", ["--annotations", str(tmp_path / "none.json"),
                         "--output", str(tmp_path / "x")]) == 2
    assert "error: The annotation file does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_parallel_build(tmp_path):
    """The COCO CLI with two worker processes (spawned; each imports TensorFlow)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    code = ("import sys; from keras_dpn.data import shards; shards.MIN_IMAGES_PER_WORKER = 1; "
            "from keras_dpn.data.cli import main; sys.exit(main('coco', sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "--output", str(tmp_path / "p" / "coco"),
                          "--num-shards", "4", "--num-workers", "2", "--no-progress"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "124 people" in out.stdout and "crowd" in out.stdout
    manifest = json.load(open(tmp_path / "p" / "coco-manifest.json"))
    assert manifest["people"] == 124 and len(manifest["shards"]) == 4
    report = data.check_shards(str(tmp_path / "p" / "coco-*.tfrecord"), progress=False)
    assert report == {"records": 52, "people": 124, "problems": []}
    out = subprocess.run([sys.executable, "tfrecords/build_mpii.py", "--output",
                          str(tmp_path / "p" / "mpii"), "--no-progress"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]


def test_cli_spec_json(tmp_path):
    from keras_dpn.data.cli import load_spec
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({
        "name": "tri5", "names": ["a", "l", "r", "l2", "r2"], "flip_pairs": [[1, 2], [3, 4]],
        "skeleton": [[0, 1], [0, 2]], "sigmas": [0.05] * 5, "upper_body": [0, 1, 2],
        "lower_body": [3, 4]}))
    spec = load_spec(str(path))
    assert spec.num_keypoints == 5 and spec.flip_pairs == ((1, 2), (3, 4))
    assert load_spec("mpii").num_keypoints == 16


SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                      "data", "coco")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is not in a fresh clone")
@pytest.mark.parametrize("subset,people,crowd", [("coco_mini", 68, 1), ("tiny_coco", 46, 4)])
def test_shared_real_subsets(tmp_path, subset, people, crowd):
    """The larger real COCO subsets next to the repository (counts from their README)."""
    root = os.path.join(SHARED, subset)
    manifest = data.build_coco_shards(os.path.join(root, "annotations", "person_keypoints_val2017.json"),
                                      os.path.join(root, "val2017"), str(tmp_path / subset), 2,
                                      num_workers=1, progress=False, verbose=False)
    assert manifest["people"] == people and manifest["skipped"]["crowd"]["count"] == crowd
    ds = data.build_dataset(str(tmp_path / f"{subset}-*.tfrecord"), batch_size=8, seed=0)
    images, heatmaps, weights = next(iter(ds))
    assert heatmaps.shape == (8, 64, 48, 17)
