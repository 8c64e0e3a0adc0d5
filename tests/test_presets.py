"""Preset folders and archives: round trips, verification, safe unpacking, bad input.

Every test gets an empty registry and a private Keras cache (``KERAS_HOME`` in
``tmp_path``), so what a failure leaves in the cache can be listed.
"""

import io
import json
import os
import shutil
import tarfile
import zipfile

import keras
import numpy as np
import pytest

import keras_dpn
from download_helpers import _isolated_always, isolated, serve, sha256, tree  # noqa: F401
from keras_dpn.hub import presets
from keras_dpn.hub import weights as weights_lib

SHAPE = (64, 48, 3)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A seeded DPN1_32 (reversed schedule), its preset folder and both archives."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(7)
    model = keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed")
    x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype("float32")
    folder = root / "dpn1_rev"
    presets.save_preset(model, folder, metadata={"metrics": {"val_AP": 0.5}})
    tgz, tgz_sha = presets.archive_preset(folder)
    zipped, zip_sha = presets.archive_preset(folder, archive_format="zip")
    return dict(model=model, x=x, expected=keras.ops.convert_to_numpy(model(x)), root=root,
                folder=folder, tgz=tgz, tgz_sha=tgz_sha, zip=zipped, zip_sha=zip_sha)


def out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def copy_preset(made, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(made["folder"], dest)
    return dest


def rehash(folder):
    """Rewrites metadata.json's digests, as someone editing a preset by hand would."""
    meta = json.loads((folder / "metadata.json").read_text())
    meta["files"] = {rel: sha256(folder / rel) for rel in meta["files"]}
    (folder / "metadata.json").write_text(json.dumps(meta))


def test_preset_layout(made):
    folder = made["folder"]
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "metadata.json",
                                          "model.weights.h5"]
    config = json.loads((folder / "config.json").read_text())
    assert config["variant"] == "DPN1_32" and config["keypoints"] == "coco"
    assert config["arguments"] == {"input_shape": [64, 48, 3], "num_keypoints": 17,
                                   "resolution": "medium", "dilation_schedule": "reversed",
                                   "num_blocks": 6, "kernel_size": 3}
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["files"] == {rel: sha256(folder / rel)
                             for rel in ("README.md", "config.json", "model.weights.h5")}
    assert meta["keras_dpn_version"] == keras_dpn.__version__
    assert meta["parameter_count"] == made["model"].count_params()
    assert meta["keypoints"]["names"][0] == "nose" and meta["metrics"] == {"val_AP": 0.5}
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    card = (folder / "README.md").read_text()
    assert "| val_AP | 0.5000 |" in card and "`dilation_schedule` | `reversed`" in card


@pytest.mark.parametrize("kind", ["folder", "tgz", "zip"])
def test_round_trip(kind, made, isolated):
    source = str(made[kind])
    model = presets.from_preset(source)
    np.testing.assert_array_equal(out(model, made["x"]), made["expected"])
    assert weights_lib.builder_config(model) == weights_lib.builder_config(made["model"])
    if kind == "folder":
        # The builders take a preset as `weights` and check it against their arguments.
        model = keras_dpn.get_model("DPN1_32", input_shape=SHAPE, dilation_schedule="reversed",
                                    weights=source)
        np.testing.assert_array_equal(out(model, made["x"]), made["expected"])
    cached = tree(isolated / "presets")
    if kind == "folder":
        assert cached == []
    else:  # one verified folder, no partial leftovers
        assert len([p for p in cached if os.sep not in p]) == 1
        assert not any(".partial-" in p for p in cached)


def test_archives_are_reproducible(made, tmp_path):
    again, digest = presets.archive_preset(made["folder"], tmp_path / "again.tar.gz")
    assert digest == made["tgz_sha"] == sha256(again)
    with tarfile.open(made["tgz"]) as tf:
        assert sorted(m.name for m in tf) == [
            "dpn1_rev/README.md", "dpn1_rev/config.json", "dpn1_rev/metadata.json",
            "dpn1_rev/model.weights.h5"]


def test_builder_refuses_a_preset_built_otherwise(made):
    with pytest.raises(ValueError, match=r"trained with DPN1_32\(dilation_schedule='reversed'\) "
                                         r"but the model is built with dilation_schedule="
                                         r"'pyramid'"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights=str(made["folder"]))
    with pytest.raises(ValueError, match=r"belong to DPN1_32, not DPN2_32"):
        keras_dpn.DPN2_32(input_shape=SHAPE, weights=str(made["folder"]))
    with pytest.raises(ValueError, match=r"head for 17 keypoints.*Received: num_keypoints=16"):
        keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed", num_keypoints=16,
                          weights=str(made["folder"]))


def test_estimator_from_preset_and_keypoint_set(made):
    est = keras_dpn.PoseEstimator.from_preset(str(made["tgz"]))
    assert est.spec.name == "coco" and est.input_size == (64, 48)
    crops = (np.random.default_rng(2).uniform(0, 255, (2, 64, 48, 3))).astype(np.uint8)
    reference = keras_dpn.PoseEstimator(made["model"])
    np.testing.assert_allclose(est.predict_heatmaps(crops), reference.predict_heatmaps(crops),
                               rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"trained for the keypoint set 'coco' \(17 joints\), "
                                         r"not 'mpii' \(16 joints\).*Received: keypoints='mpii'"):
        keras_dpn.PoseEstimator.from_preset(str(made["folder"]), keypoints="mpii")
    with pytest.raises(ValueError, match=r"carries no 'tflite_fp32' file.*none \(no export"):
        keras_dpn.PoseEstimator.from_preset(str(made["folder"]), format="tflite_fp32")


@pytest.mark.parametrize("damage,message", [
    ("missing_weights", r"Preset file missing: model\.weights\.h5"),
    ("missing_config", r"Preset file missing: config\.json"),
    ("altered_weights", r"Preset file model\.weights\.h5 was altered or truncated: its sha256 "
                        r"is [0-9a-f]{64}, metadata\.json records [0-9a-f]{64}"),
    ("truncated_weights", r"Preset file model\.weights\.h5 was altered or truncated"),
    ("altered_config", r"Preset file config\.json was altered or truncated"),
    ("unknown_variant", r"config\.json names an unknown variant: Unknown model name.*"
                        r"Received: variant='DPN9_32'"),
    ("foreign_argument", r"config\.json gives DPN1_32 arguments a preset cannot set: "
                         r"\['width'\]"),
    ("keypoint_count", r"config\.json is inconsistent: keypoint set 'mpii' has 16 joints but "
                       r"num_keypoints=17"),
    ("unlisted_weights", r"metadata\.json records no sha256 for model\.weights\.h5"),
    ("outside_path", r"names a file outside its folder: '\.\./x'"),
])
def test_damaged_preset_is_refused(damage, message, made, tmp_path):
    folder = copy_preset(made, tmp_path)
    weights_file = folder / "model.weights.h5"
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((folder / "metadata.json").read_text())
    if damage == "missing_weights":
        weights_file.unlink()
    elif damage == "missing_config":
        (folder / "config.json").unlink()
    elif damage == "altered_weights":
        data = bytearray(weights_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights_file.write_bytes(bytes(data))
    elif damage == "truncated_weights":
        weights_file.write_bytes(weights_file.read_bytes()[:1000])
    elif damage == "altered_config":
        config["arguments"]["dilation_schedule"] = "pyramid"
        (folder / "config.json").write_text(json.dumps(config))
    elif damage in ("unknown_variant", "foreign_argument", "keypoint_count"):
        if damage == "unknown_variant":
            config["variant"] = "DPN9_32"
        elif damage == "foreign_argument":
            config["arguments"]["width"] = 64
        else:
            config["keypoints"] = "mpii"
        (folder / "config.json").write_text(json.dumps(config))
        rehash(folder)
    elif damage == "unlisted_weights":
        del meta["files"]["model.weights.h5"]
        (folder / "metadata.json").write_text(json.dumps(meta))
    elif damage == "outside_path":
        meta["files"]["../x"] = "0" * 64
        (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message) as info:
        presets.from_preset(str(folder))
    assert f"Received: preset='{folder}'" in str(info.value)
    # The builders read the same checks.
    with pytest.raises(ValueError, match=message):
        keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed", weights=str(folder))


def _tar_with(path, members):
    """A .tar.gz whose members are ``(TarInfo, bytes or None)``."""
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is None:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _zip_with(path, members):
    """A .zip whose members are ``(ZipInfo, bytes)``."""
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _good_members(made):
    """The preset's own files, as ``(name, bytes)``."""
    return [(f"p/{name}", (made["folder"] / name).read_bytes())
            for name in sorted(os.listdir(made["folder"]))]


def _unsafe_archive(kind, made, path):
    good = _good_members(made)
    if kind == "tar_parent":
        return _tar_with(path / "a.tar.gz", [(tarfile.TarInfo(n), d) for n, d in good]
                         + [(tarfile.TarInfo("p/../../evil.txt"), b"x")])
    if kind == "tar_absolute":
        return _tar_with(path / "a.tar.gz", [(tarfile.TarInfo("/tmp/evil.txt"), b"x")]
                         + [(tarfile.TarInfo(n), d) for n, d in good])
    if kind == "tar_symlink":
        link = tarfile.TarInfo("p/model.weights.h5")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        return _tar_with(path / "a.tar.gz", [(tarfile.TarInfo(n), d) for n, d in good
                                             if not n.endswith(".h5")] + [(link, None)])
    if kind == "zip_parent":
        return _zip_with(path / "a.zip", [(zipfile.ZipInfo(n), d) for n, d in good]
                         + [(zipfile.ZipInfo("../evil.txt"), b"x")])
    if kind == "zip_symlink":
        link = zipfile.ZipInfo("p/model.weights.h5")
        link.external_attr = (0o120777 << 16)
        return _zip_with(path / "a.zip", [(zipfile.ZipInfo(n), d) for n, d in good
                                          if not n.endswith(".h5")] + [(link, b"/etc/passwd")])
    if kind == "truncated":
        data = open(made["tgz"], "rb").read()
        (path / "a.tar.gz").write_bytes(data[: len(data) // 2])
        return path / "a.tar.gz"
    if kind == "no_preset":
        return _tar_with(path / "a.tar.gz", [(tarfile.TarInfo("x/y/notes.txt"), b"x")])
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,message", [
    ("tar_parent", r"outside its folder: 'p/\.\./\.\./evil\.txt'"),
    ("tar_absolute", r"outside its folder: '/tmp/evil\.txt'"),
    ("tar_symlink", r"holds a link or special file \('p/model\.weights\.h5'\)"),
    ("zip_parent", r"outside its folder: '\.\./evil\.txt'"),
    ("zip_symlink", r"holds a link \('p/model\.weights\.h5'\)"),
    ("truncated", r"cannot be read \(truncated, or not a \.tar\.gz / \.zip\)"),
    ("no_preset", r"holds no preset: config\.json is neither"),
])
def test_unsafe_or_broken_archive_leaves_nothing(kind, message, made, tmp_path, isolated):
    work = tmp_path / "work"
    work.mkdir()
    archive = _unsafe_archive(kind, made, work)
    with pytest.raises(ValueError, match=message):
        presets.get_preset(str(archive))
    assert tree(isolated / "presets") == []  # no partial folder in the cache
    assert tree(work) == [archive.name]
    assert not any(p.endswith("evil.txt") for p in tree(tmp_path))


def test_damaged_cache_copy_is_unpacked_again(made, isolated):
    preset = presets.get_preset(str(made["tgz"]))
    weights_file = os.path.join(preset.path, "model.weights.h5")
    with open(weights_file, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 64)
    again = presets.get_preset(str(made["tgz"]))
    assert again.path == preset.path
    assert sha256(weights_file) == sha256(made["folder"] / "model.weights.h5")


def test_url_download_checks_sha256(made, isolated):
    with serve(made["root"]) as url:
        good = f"{url}/dpn1_rev.tar.gz#sha256={made['tgz_sha']}"
        model = presets.from_preset(good)
        np.testing.assert_array_equal(out(model, made["x"]), made["expected"])
        shutil.rmtree(isolated)
        with pytest.raises(ValueError, match=r"sha256 is [0-9a-f]{64}|Could not download"):
            presets.get_preset(f"{url}/dpn1_rev.tar.gz#sha256={'0' * 64}")
        assert tree(isolated) in ([], ["presets"])


def test_registered_archive_must_match_its_entry(made, isolated):
    with serve(made["root"]) as url:
        weights_lib.register("DPN1_32", "lie", url=f"{url}/dpn1_rev.tar.gz",
                             sha256=made["tgz_sha"], input_shape=(128, 96, 3), num_keypoints=17,
                             config={"dilation_schedule": "reversed"})
        with pytest.raises(ValueError, match=r"'DPN1_32\.lie' and the preset it downloads "
                                             r"disagree \(input_shape: entry \[128, 96, 3\], "
                                             r"preset \[64, 48, 3\]\)"):
            keras_dpn.PoseEstimator.from_preset("DPN1_32.lie")
        assert [p for p in tree(isolated) if p.endswith(".tar.gz")] == []
        # The refused preset is not left unpacked in the cache either (the docs
        # promise that a failure leaves nothing), through a builder's weights= too.
        assert tree(isolated / "presets") == []
        with pytest.raises(ValueError, match=r"disagree \(input_shape"):
            keras_dpn.DPN1_32(input_shape=(128, 96, 3), dilation_schedule="reversed",
                              weights="lie")
        assert tree(isolated / "presets") == [] and tree(isolated) == ["presets"]
        weights_lib.register("DPN1_32", "tampered", url=f"{url}/dpn1_rev.tar.gz",
                             sha256="0" * 64, input_shape=SHAPE, num_keypoints=17,
                             config={"dilation_schedule": "reversed"})
        with pytest.raises(ValueError, match="Could not fetch"):
            keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed",
                              weights="tampered")
        assert tree(isolated) == ["presets"]


def test_http_url_without_sha256_needs_an_opt_in(made, isolated, monkeypatch):
    monkeypatch.delenv(presets.ALLOW_UNVERIFIED_ENV, raising=False)
    with serve(made["root"]) as url:
        bare = f"{url}/dpn1_rev.tar.gz"
        for source in (bare, f"{bare}#sha256=abc"):
            with pytest.raises(ValueError, match=r"^(An http\(s\) preset URL needs the "
                               r"archive's sha256|A preset URL ends in #sha256=).*Received: "
                               r"preset='http://127"):
                presets.get_preset(source)
        with pytest.raises(ValueError, match="allow_unverified=True"):
            keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed", weights=bare)
        assert tree(isolated) == []  # refused before anything was downloaded
        with pytest.warns(UserWarning, match=f"its sha256 is {made['tgz_sha']}: pin it with "
                                             f"{bare}#sha256={made['tgz_sha']}"):
            model = presets.from_preset(bare, allow_unverified=True)
        np.testing.assert_array_equal(out(model, made["x"]), made["expected"])
        monkeypatch.setenv(presets.ALLOW_UNVERIFIED_ENV, "1")  # for a builder's weights=
        with pytest.warns(UserWarning, match="unverified"):
            keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed", weights=bare)
    # A file:// URL is a local file: no digest needed.
    monkeypatch.delenv(presets.ALLOW_UNVERIFIED_ENV)
    assert presets.get_preset(f"file://{made['tgz']}").variant == "DPN1_32"


def test_export_allow_unverified_flag(made, tmp_path, monkeypatch, capsys):
    from keras_dpn.cli import main as cli

    monkeypatch.setenv(presets.ALLOW_UNVERIFIED_ENV, "0")  # restored after the test
    with serve(made["root"]) as url:
        argv = ["export", "DPN1_32", "--input-size", "64", "48", "--weights",
                f"{url}/dpn1_rev.tar.gz", "--formats", "onnx", "--out-dir", str(tmp_path / "o")]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs the archive's sha256" in err
        # Allowed: downloaded, then refused for what it is (a reversed-schedule preset).
        with pytest.warns(UserWarning, match="unverified"):
            assert cli.main(argv + ["--allow-unverified"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "dilation_schedule='reversed'" in err
    assert not (tmp_path / "o").exists()
