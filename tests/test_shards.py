"""Shard builder: record layout, skip counts, naming, atomic writes, the CLIs."""

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fault_helpers import mount_tmpfs  # noqa: F401
from keras_dpn import data
from keras_dpn.data import shards as shards_lib
from repo_scripts import load_script


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
    # Shard 0 had finished in the staging folder, which went with the build.
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="No shard files match"):
        data.build_dataset(str(tmp_path / "k-*.tfrecord"))


def test_rebuild_removes_what_an_interrupted_build_left(tmp_path, sample_dir, caplog):
    """A rebuild never mixes with an earlier build: unfinished .partial files, shards
    without a manifest, shards of another count and the staging folder of a build killed
    with -9 go; other prefixes and a running build's staging folder stay."""
    ann = sample_dir / "coco/annotations/person_keypoints_sample.json"
    build = lambda n, **kw: data.build_coco_shards(  # noqa: E731
        ann, sample_dir / "coco/images", str(tmp_path / "c"), n, num_workers=1,
        progress=False, verbose=False, **kw)
    build(3)
    os.remove(tmp_path / "c-manifest.json")  # killed before the manifest (0.1.0's layout)
    left = [".c-00001-of-00003.partial-ab_9xyz0.tfrecord", ".c-manifest.partial-k2j4h6g8.json"]
    keep = ["c2-00000-of-00001.tfrecord", "other-00000-of-00003.tfrecord", "c-notes.txt"]
    for name in left + keep:
        (tmp_path / name).write_bytes(b"x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale, running = f".c-shards.partial-{dead}-abcd_123", ".c-shards.partial-1-abcd_123"
    for name in (stale, running):
        (tmp_path / name).mkdir()
        (tmp_path / name / "c-00000-of-00001.tfrecord").write_bytes(b"x")
    assert sorted(os.path.basename(p) for p in shards_lib.build_leftovers(str(tmp_path / "c"))) \
        == sorted(left + [f"c-0000{i}-of-00003.tfrecord" for i in range(3)] + [stale, running])
    with caplog.at_level("WARNING", logger="keras_dpn.data"):
        manifest = build(2)
    assert "Removed 6 file(s) that an interrupted build" in caplog.text
    assert "(2 unfinished .partial, 1 staging folder(s))" in caplog.text
    assert sorted(os.listdir(tmp_path)) == sorted(
        keep + [running, "c-00000-of-00002.tfrecord", "c-00001-of-00002.tfrecord",
                "c-manifest.json"])
    ds = data.build_dataset(str(tmp_path / "c-*.tfrecord"), training=False, batch_size=200)
    assert sum(int(b[0].shape[0]) for b in ds) == manifest["people"] == 124
    # Replacing a finished build is no news.
    caplog.clear()
    with caplog.at_level("WARNING", logger="keras_dpn.data"):
        build(2, overwrite=True)
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
        # The shards are written in a staging folder beside the prefix.
        while not any(".partial-" in n for _, _, files in os.walk(out) for n in files):
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
        names = [n for _, _, files in os.walk(out) for n in files]
        assert "c-manifest.json" not in names
        # A writer removes its unfinished shard when it stops (one killed cannot, but the
        # build it fails then removes its staging folder).
        assert not [n for n in names if ".partial-" in n], names
        # A build killed with -9 leaves its staging folder (finished shards), never a
        # shard in the output folder itself.
        assert [n for n in os.listdir(out) if not n.startswith(".c-shards.partial-")] == []
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


def _tiny_coco(folder, n=4, size=(120, 160), seed=0, visible=2.0, name="ann.json"):
    """``n`` noise JPEGs (about 40 KB each) with one person each, in COCO format:
    ``(annotation path, image folder)``."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    h, w = size
    ann = {"images": [], "annotations": [],
           "categories": [{"id": 1, "name": "person", "keypoints": [str(j) for j in range(17)]}]}
    for i in range(n):
        cv2.imwrite(str(images / f"{i}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ann["images"].append({"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w})
        kp = np.column_stack([rng.uniform(20, w - 20, 17), rng.uniform(20, h - 20, 17),
                              np.full(17, visible)])
        ann["annotations"].append({"id": 100 + i, "image_id": i + 1, "category_id": 1,
                                   "iscrowd": 0, "bbox": [10.0, 10.0, w - 20.0, h - 20.0],
                                   "area": (w - 20.0) * (h - 20.0),
                                   "keypoints": kp.reshape(-1).tolist(), "num_keypoints": 17})
    path = folder / name
    path.write_text(json.dumps(ann))
    return path, images


def _snapshot(folder):
    """Every entry of ``folder`` (hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else "<folder>" for p in sorted(folder.iterdir())}


def _cli(kind, *argv):
    from keras_dpn.data.cli import main
    return main(kind, [str(a) for a in argv] + ["--no-progress"])


def test_rebuild_never_destroys_a_good_set(tmp_path, monkeypatch, capsys):
    """A complete set is replaced only with --overwrite, whatever --num-shards, and only
    by a complete new set: a rebuild that fails or is killed leaves it byte for byte."""
    ann, images = _tiny_coco(tmp_path / "src")
    empty, _ = _tiny_coco(tmp_path / "src", visible=0.0, name="empty.json")
    out = tmp_path / "out"
    build = lambda path, n, **kw: data.build_coco_shards(  # noqa: E731
        path, images, str(out / "c"), n, num_workers=1, progress=False, verbose=False, **kw)
    build(ann, 2)
    before = _snapshot(out)
    assert sorted(before) == ["c-00000-of-00002.tfrecord", "c-00001-of-00002.tfrecord",
                              "c-manifest.json"]
    for n, more in ((2, ""), (3, "; this build writes 3")):
        with pytest.raises(FileExistsError) as info:
            build(ann, n)
        assert str(info.value) == (
            f"{out / 'c'} already holds a complete shard set (3 files: 2 shard(s) of 2 and the "
            f"manifest{more}); nothing was written. Pass overwrite=True (--overwrite) to replace "
            f"it once the new set is complete. Received: output_prefix={str(out / 'c')!r}")
    capsys.readouterr()
    assert _cli("coco", "--annotations", ann, "--images", images, "--output", out / "c",
                "--num-shards", 3) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'c'} already holds a complete")
    assert _snapshot(out) == before

    with pytest.raises(ValueError, match=r"^Empty result: no usable person in 4 images"):
        build(empty, 3, overwrite=True)
    assert _snapshot(out) == before

    calls = {"n": 0}
    real = shards_lib._serialize

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(shards_lib, "_serialize", dying)
        with pytest.raises(KeyboardInterrupt):
            build(ann, 3, overwrite=True)
    assert calls["n"] == 3 and _snapshot(out) == before

    assert _cli("coco", "--annotations", ann, "--images", images, "--output", out / "c",
                "--num-shards", 3, "--overwrite") == 0
    assert sorted(os.listdir(out)) == [f"c-0000{i}-of-00003.tfrecord" for i in range(3)] + \
        ["c-manifest.json"]
    assert json.loads((out / "c-manifest.json").read_text())["num_shards"] == 3
    report = data.check_shards(str(out / "c-*.tfrecord"), dataset="coco", progress=False)
    assert report == {"records": 4, "people": 4, "problems": []}


def test_full_disk_is_one_line_and_keeps_the_old_set(tmp_path, mount_tmpfs, capsys):
    """A disk with room for one set: the first build fits, a rebuild (which needs room for
    both until the swap) fails on TensorFlow's ENOSPC with one line; the old set stays and
    nothing of the rebuild is left."""
    ann, images = _tiny_coco(tmp_path / "src")
    probe = data.build_coco_shards(ann, images, str(tmp_path / "probe" / "c"), 2, num_workers=1,
                                   progress=False, verbose=False)
    set_bytes = sum(s["bytes"] for s in probe["shards"])
    assert set_bytes > 50_000  # pages (4 KiB) are small beside it
    disk = mount_tmpfs("disk", f"size={(set_bytes * 3 // 2) // 4096 * 4096 + 3 * 4096}")
    assert _cli("coco", "--annotations", ann, "--images", images, "--output", disk / "c",
                "--num-shards", 2) == 0
    before = _snapshot(disk)
    capsys.readouterr()
    assert _cli("coco", "--annotations", ann, "--images", images, "--output", disk / "c",
                "--num-shards", 2, "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: Cannot write shard c-0000") and err[0].endswith(
        f": No space left on device; nothing of this build was kept (an existing set is "
        f"untouched). Received: output_prefix={str(disk / 'c')!r}"), err[0]
    assert _snapshot(disk) == before


def test_read_only_folder_and_files_in_the_way(tmp_path, mount_tmpfs, capsys):
    """One line naming the path, before anything is read or written."""
    ann, images = _tiny_coco(tmp_path / "src", n=1)
    (tmp_path / "file").write_text("x")
    (tmp_path / "d" / "c-manifest.json").mkdir(parents=True)
    cases = [(tmp_path / "file" / "c", f"Cannot write into {tmp_path / 'file'}: "
                                       f"{tmp_path / 'file'} is a file, not a folder."),
             (tmp_path / "file" / "sub" / "c", f"{tmp_path / 'file'} is a file, not a folder."),
             (tmp_path / "d" / "c", "A folder stands where the build writes a file: "
                                    f"{tmp_path / 'd' / 'c-manifest.json'}; it is left as it is."),
             (str(tmp_path / "d") + os.sep, "`output_prefix` must end in a file name prefix")]
    for prefix, expected in cases:
        assert _cli("coco", "--annotations", ann, "--images", images, "--output", prefix,
                    "--num-shards", 1) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and err[0].endswith(
            f"Received: output_prefix={str(prefix)!r}"), (err, expected)
    assert sorted(os.listdir(tmp_path / "d")) == ["c-manifest.json"]
    read_only = mount_tmpfs("ro", "ro,size=64k")
    for prefix in (read_only / "c", read_only / "sub" / "c"):
        assert _cli("coco", "--annotations", ann, "--images", images, "--output", prefix,
                    "--num-shards", 1) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0] == (
            f"error: Cannot write into {prefix.parent}: {read_only} refuses new files "
            f"(Read-only file system). Received: output_prefix={str(prefix)!r}"), err


def test_write_faults_injected(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: TensorFlow's and Python's ENOSPC, injected, give the
    same one line, and the staging folder goes."""
    ann, images = _tiny_coco(tmp_path / "src", n=2)
    build = lambda: data.build_coco_shards(ann, images, str(tmp_path / "out" / "c"), 2,  # noqa: E731
                                           num_workers=1, progress=False, verbose=False)

    def tf_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, f"{tmp_path}/out/.c-00000-of-00002.partial-x.tfrecord; No space left on device")

    @contextlib.contextmanager
    def os_full(path, mode="wb"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        yield

    for target, fake, what in ((shards_lib, "_serialize", "shard c-00000-of-00002.tfrecord"),
                               (shards_lib.io_utils, "atomic_file", "the shards")):
        with monkeypatch.context() as m:
            m.setattr(target, fake, tf_full if fake == "_serialize" else os_full)
            with pytest.raises(shards_lib.ShardWriteError) as info:
                build()
        assert str(info.value) == (
            f"Cannot write {what} of {tmp_path / 'out' / 'c'}: No space left on device; nothing "
            "of this build was kept (an existing set is untouched). Received: "
            f"output_prefix={str(tmp_path / 'out' / 'c')!r}")
        assert os.listdir(tmp_path / "out") == []


def test_sigterm_handler_of_a_writer(monkeypatch):
    """A writer's first SIGTERM unwinds the open shard (its .partial file goes), a second
    one waits for that cleanup, and one that finds nothing open exits at once."""
    exits = []
    monkeypatch.setattr(shards_lib.os, "_exit", exits.append)
    monkeypatch.setattr(shards_lib, "_WRITER_STATE", "writing")
    with pytest.raises(SystemExit) as info:
        shards_lib._exit_on_sigterm(signal.SIGTERM, None)
    assert info.value.code == 128 + signal.SIGTERM and shards_lib._WRITER_STATE == "unwinding"
    assert shards_lib._exit_on_sigterm(signal.SIGTERM, None) is None and exits == []
    monkeypatch.setattr(shards_lib, "_WRITER_STATE", "idle")
    shards_lib._exit_on_sigterm(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_sigterm_in_a_finishing_writer_prints_nothing():
    """Before: a SIGTERM that reached a writer in its atexit callbacks (pool.terminate(), or
    the user's kill at the end) printed "Exception ignored in atexit callback ...
    SystemExit: 143" above the build's one-line error."""
    code = ("import atexit, os, signal, time\n"
            "from keras_dpn.data import shards\n"
            "signal.signal(signal.SIGTERM, shards._exit_on_sigterm)\n"
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="numpy")  # no TF: seconds
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert "Exception ignored" not in r.stderr and "SystemExit" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 128 + signal.SIGTERM


def test_parallel_writer_on_a_small_set(tmp_path, sample_dir, monkeypatch):
    """KERAS_DPN_MIN_IMAGES_PER_WORKER=1 puts the bundled sample (52 images, under the 100
    per worker of the default) through two writer processes: the same records in the same
    shards, in the same order, as the in-process build, and the same counts."""
    args = (sample_dir / "coco/annotations/person_keypoints_sample.json",
            sample_dir / "coco/images")
    kw = dict(progress=False, verbose=False)
    serial = data.build_coco_shards(*args, str(tmp_path / "serial" / "c"), 4, num_workers=2, **kw)
    monkeypatch.setenv("KERAS_DPN_MIN_IMAGES_PER_WORKER", "1")
    parallel = data.build_coco_shards(*args, str(tmp_path / "parallel" / "c"), 4, num_workers=2,
                                      **kw)
    assert serial["num_workers"] == 1 and parallel["num_workers"] == 2
    same = lambda m: {k: v for k, v in m.items() if k not in ("seconds", "num_workers")}  # noqa: E731
    assert same(parallel) == same(serial)
    assert parallel["people"] == 124 and len(parallel["shards"]) == 4
    for shard in serial["shards"]:
        a = _records(str(tmp_path / "serial" / shard["file"]))
        b = _records(str(tmp_path / "parallel" / shard["file"]))
        assert len(a) == len(b) == shard["records"] > 0
        assert a == b  # decoded Examples, compared field by field
    assert sum(len(_records(str(p))) for p in (tmp_path / "parallel").glob("c-*.tfrecord")) == 52
    monkeypatch.setenv("KERAS_DPN_MIN_IMAGES_PER_WORKER", "0")
    with pytest.raises(ValueError, match=r"^The environment variable KERAS_DPN_MIN_IMAGES_PER_"
                                         r"WORKER must be a positive integer. Received: '0'$"):
        data.build_coco_shards(*args, str(tmp_path / "x" / "c"), 4, **kw)


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
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_DPN_MIN_IMAGES_PER_WORKER="1")
    out = subprocess.run([sys.executable, "tfrecords/build_coco.py", "--output",
                          str(tmp_path / "p" / "coco"), "--num-shards", "4", "--num-workers", "2",
                          "--no-progress"],
                         cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "124 people" in out.stdout and "crowd" in out.stdout
    manifest = json.load(open(tmp_path / "p" / "coco-manifest.json"))
    assert manifest["people"] == 124 and len(manifest["shards"]) == 4
    assert manifest["num_workers"] == 2
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
    coco_scale = load_script("benchmarks/coco_scale.py")
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
