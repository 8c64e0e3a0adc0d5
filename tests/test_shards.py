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


def test_rebuild_removes_what_an_interrupted_build_left(tmp_path, sample_dir, caplog):
    """A rebuild never mixes with an earlier build: unfinished .partial files, shards
    without a manifest and shards of another count go; other prefixes stay."""
    ann = sample_dir / "coco/annotations/person_keypoints_sample.json"
    build = lambda n: data.build_coco_shards(ann, sample_dir / "coco/images",  # noqa: E731
                                             str(tmp_path / "c"), n, num_workers=1,
                                             progress=False, verbose=False)
    build(3)
    os.remove(tmp_path / "c-manifest.json")  # killed before the manifest
    left = [".c-00001-of-00003.partial-ab_9xyz0.tfrecord", ".c-manifest.partial-k2j4h6g8.json"]
    keep = ["c2-00000-of-00001.tfrecord", "other-00000-of-00003.tfrecord", "c-notes.txt"]
    for name in left + keep:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(os.path.basename(p) for p in shards_lib.build_leftovers(str(tmp_path / "c"))) \
        == sorted(left + [f"c-0000{i}-of-00003.tfrecord" for i in range(3)])
    with caplog.at_level("WARNING", logger="keras_dpn.data"):
        manifest = build(2)
    assert "Removed 5 file(s) that an interrupted build" in caplog.text
    assert "(2 unfinished .partial)" in caplog.text
    assert sorted(os.listdir(tmp_path)) == sorted(
        keep + ["c-00000-of-00002.tfrecord", "c-00001-of-00002.tfrecord", "c-manifest.json"])
    ds = data.build_dataset(str(tmp_path / "c-*.tfrecord"), training=False, batch_size=200)
    assert sum(int(b[0].shape[0]) for b in ds) == manifest["people"] == 124
    # Replacing a finished build is no news.
    caplog.clear()
    with caplog.at_level("WARNING", logger="keras_dpn.data"):
        build(2)
    assert "interrupted" not in caplog.text


def _descendants(pid):
    """Process ids below ``pid`` (Linux /proc)."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
@pytest.mark.parametrize("victim", ["parent", "writer"])
def test_killed_parallel_build_takes_its_workers_along(tmp_path, sample_dir, victim):
    """SIGKILL a `--num-workers 2` build (or one of its writers) while the writers write:
    within seconds no process of the build is left (a killed writer fails the build with
    one line instead of hanging it), and a rerun writes a complete set that does not mix
    with what the killed build had finished."""
    import signal
    import time
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sample = json.load(open(sample_dir / "coco/annotations/person_keypoints_sample.json"))
    images, anns = [], []
    for r in range(6):  # 312 images: each worker spends seconds writing
        images += [dict(im, id=im["id"] * 10 + r) for im in sample["images"]]
        anns += [dict(a, id=a["id"] * 10 + r, image_id=a["image_id"] * 10 + r)
                 for a in sample["annotations"]]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(sample, images=images, annotations=anns)))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    build = subprocess.Popen(
        [sys.executable, "tfrecords/build_coco.py", "--annotations", str(ann), "--images",
         str(sample_dir / "coco/images"), "--output", str(out / "c"), "--num-shards", "8",
         "--num-workers", "2", "--no-progress"],
        cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = set()
    try:
        deadline = time.monotonic() + 600
        while not any(".partial-" in n for n in os.listdir(out)):
            assert build.poll() is None and time.monotonic() < deadline, "no shard was started"
            time.sleep(0.02)
        workers = _descendants(build.pid)
        writers = [p for p in workers if b"spawn_main" in open(f"/proc/{p}/cmdline", "rb").read()]
        assert len(writers) >= 2
        if victim == "parent":
            build.kill()
            build.wait()
        else:
            os.kill(max(writers), signal.SIGKILL)  # the last started: a writer
            err = build.communicate(timeout=60)[1]  # the old pool waited forever
            assert build.returncode == 2
            assert err.strip().splitlines()[-1].startswith(
                f"error: A shard writer process died while writing {out / 'c'}; no manifest")
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = sorted(p for p in workers if _alive(p))
        assert not survivors, f"processes of the killed build still run: {survivors}"
        names = os.listdir(out)
        assert "c-manifest.json" not in names
        # A writer removes its unfinished shard when it stops (one killed cannot).
        assert len([n for n in names if ".partial-" in n]) <= (victim == "writer"), names
    finally:
        if build.poll() is None:
            build.kill()
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    manifest = data.build_coco_shards(ann, sample_dir / "coco/images", str(out / "c"), 4,
                                      num_workers=1, progress=False, verbose=False)
    assert sorted(os.listdir(out)) == [f"c-0000{i}-of-00004.tfrecord" for i in range(4)] + \
        ["c-manifest.json"]
    report = data.check_shards(str(out / "c-*.tfrecord"), dataset="coco", progress=False,
                               decode_images=False)
    assert report == {"records": 312, "people": 6 * 124, "problems": []}
    assert manifest["people"] == 6 * 124


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


def test_coco_scale_simulation_has_the_requested_size(tmp_path, sample_dir):
    """benchmarks/coco_scale.py's COCO-sized files, at 1/200 of the size: the counts
    asked for, every people-carrying image a copy of a sample image, readable by the
    builder's reader."""
    sys.path.insert(0, str(sample_dir.parent / "benchmarks"))
    try:
        import coco_scale
    finally:
        sys.path.pop(0)
    ann = tmp_path / "train.json"
    images, people, mapping = coco_scale.make_annotations(str(ann), 592, 750)
    assert images == 592 and 750 <= people < 750 + 10  # whole sample images are added
    entries, _ = data.read_coco(ann, sample_dir / "coco/images")
    assert len(entries) == 592 and sum(len(e["people"]) for e in entries) == people
    assert {e["image_id"] for e in entries} == set(range(1, 593))
    assert all(os.path.isfile(e["path"]) for e in entries)
    with_people = [i for i, e in enumerate(entries) if e["people"]]
    assert 300 < len(with_people) < 330  # ~2.4 people per sample image
    assert with_people[-1] > 550  # spread over the ids, not packed at the start
    boxes = coco_scale.make_detections(str(tmp_path / "det.json"), mapping, str(ann), 521)
    dets = json.load(open(tmp_path / "det.json"))
    assert boxes == len(dets) == 521
    per_image = np.bincount([d["image_id"] for d in dets])[1:]
    assert per_image.min() >= 0 and per_image.max() - per_image.min() <= 1
    assert all(d["bbox"][2] > 0 and d["bbox"][3] > 0 for d in dets)
