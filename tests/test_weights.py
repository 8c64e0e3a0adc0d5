"""The weights registry and the real download path, served on 127.0.0.1 only.

A ``http.server`` in a thread serves files made here; ``KERAS_HOME`` points at
``tmp_path`` so the cache folder can be inspected after every failure.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

import keras_dpn
from download_helpers import closed_port as _closed_port
from download_helpers import _isolated_always, isolated, serve, sha256  # noqa: F401
from keras_dpn.hub import weights as weights_lib

SHAPE = (64, 48, 3)
# Taken at import, before the autouse fixture swaps in an empty registry.
SHIPPED = dict(weights_lib._REGISTRY)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files of DPN1_32 (17 and 16 keypoints) and DPN2_32, plus outputs."""
    root = tmp_path_factory.mktemp("served")
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(0).normal(size=(2,) + SHAPE).astype("float32")
    source = keras_dpn.DPN1_32(input_shape=SHAPE)
    source.save_weights(root / "dpn1_32.weights.h5")
    source.save(root / "dpn1_32.keras")
    keras_dpn.DPN1_32(input_shape=SHAPE, num_keypoints=16).save_weights(
        root / "dpn1_32_k16.weights.h5")
    keras_dpn.DPN2_32(input_shape=SHAPE).save_weights(root / "dpn2_32.weights.h5")
    data = (root / "dpn1_32.weights.h5").read_bytes()
    (root / "truncated.weights.h5").write_bytes(data[: len(data) // 2])
    return dict(root=root, x=x, expected=keras.ops.convert_to_numpy(source(x)),
                features=keras.ops.convert_to_numpy(
                    keras.Model(source.input, source.get_layer("dpm1").output)(x)))


@pytest.fixture(scope="module")
def server(files):
    with serve(files["root"]) as url:
        yield url


def cache_files(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_registry_ships_empty():
    # The real module-level registry: no invented releases.
    assert SHIPPED == {}


def test_register_get_and_list():
    entry = weights_lib.register("DPN4_32", "mine", url="http://127.0.0.1:1/w.weights.h5",
                                 sha256="A" * 64, input_shape=(256, 192, 3), num_keypoints=17,
                                 metrics={"coco_val_AP": 0.5})
    assert weights_lib.get_entry("DPN4_32.mine") is entry
    assert entry.sha256 == "a" * 64 and entry.keypoints == "coco"
    assert entry.cache_file_name == "DPN4_32_mine.weights.h5"
    assert "ImageNet" in entry.preprocessing
    assert weights_lib.list_entries() == ["DPN4_32.mine"]
    assert weights_lib.list_entries("HRNetW32") == []
    with pytest.raises(ValueError, match="already registered"):
        weights_lib.register("DPN4_32", "mine", url="https://example.org/w.weights.h5",
                             sha256="a" * 64,
                             input_shape=(256, 192, 3), num_keypoints=17)
    with pytest.raises(ValueError, match="Received: key='DPN4_32.coco'"):
        weights_lib.get_entry("DPN4_32.coco")


@pytest.mark.parametrize("kwargs,arg", [
    (dict(sha256="abc"), "sha256"), (dict(num_keypoints=0), "num_keypoints"),
    (dict(url=""), "url"), (dict(input_shape=(256, 192)), "input_shape"),
    (dict(url="not a url"), "url"), (dict(url="https:///no-host.tar.gz"), "url"),
    (dict(url="ftp://example.org/w.weights.h5"), "url"), (dict(url="file://relative"), "url"),
])
def test_register_validates(kwargs, arg):
    args = dict(arch="DPN4_32", tag="t", url="http://127.0.0.1:1/w.weights.h5",
                sha256="0" * 64, input_shape=(256, 192, 3), num_keypoints=17)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"Received: {arg}="):
        weights_lib.register(**args)


def test_coco_without_release_is_a_clear_error():
    with pytest.raises(ValueError) as info:
        keras_dpn.DPN4_32(weights="coco")
    message = str(info.value)
    assert "No release of `DPN4_32.coco` is registered" in message
    assert "keras_dpn.hub.weights.register('DPN4_32', 'coco', url=" in message
    assert "or of a preset" in message
    assert "Received: weights='coco'" in message


def test_unknown_string():
    with pytest.raises(ValueError, match="Received: weights='imagenet'"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="imagenet")
    with pytest.raises(ValueError, match="file not found"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="missing/dpn.weights.h5")


def test_local_files_load_directly(files):
    for name in ("dpn1_32.weights.h5", "dpn1_32.keras"):
        model = keras_dpn.DPN1_32(input_shape=SHAPE, weights=str(files["root"] / name))
        np.testing.assert_array_equal(out(model, files["x"]), files["expected"])


def test_local_file_include_top_false(files):
    model = keras_dpn.DPN1_32(input_shape=SHAPE, include_top=False,
                              weights=str(files["root"] / "dpn1_32.weights.h5"))
    assert model.output_shape == (None, 8, 6, 128)
    np.testing.assert_array_equal(out(model, files["x"]), files["features"])


def test_local_file_of_other_architecture(files):
    with pytest.raises(ValueError, match="does not match the DPN2_32 architecture"):
        keras_dpn.DPN2_32(input_shape=SHAPE, weights=str(files["root"] / "dpn1_32.weights.h5"))


def test_local_file_of_other_keypoint_count(files):
    with pytest.raises(ValueError, match="head for 16 keypoints.*num_keypoints=17"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights=str(files["root"] / "dpn1_32_k16.weights.h5"))


def test_download_with_correct_hash(files, server, isolated):
    path = files["root"] / "dpn1_32.weights.h5"
    weights_lib.register("DPN1_32", "test", url=f"{server}/dpn1_32.weights.h5",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")
    np.testing.assert_array_equal(out(model, files["x"]), files["expected"])
    assert cache_files(isolated) == ["DPN1_32_test.weights.h5"]
    assert sha256(isolated / "DPN1_32_test.weights.h5") == sha256(path)
    # A second build uses the verified cache (the server is not needed).
    weights_lib.register("DPN1_32", "test", url="http://127.0.0.1:9/gone", overwrite=True,
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")
    np.testing.assert_array_equal(out(model, files["x"]), files["expected"])


def test_download_dot_keras_file(files, server, isolated):
    path = files["root"] / "dpn1_32.keras"
    weights_lib.register("DPN1_32", "k", url=f"{server}/dpn1_32.keras",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="k")
    np.testing.assert_array_equal(out(model, files["x"]), files["expected"])
    assert cache_files(isolated) == ["DPN1_32_k.keras"]


@pytest.mark.parametrize("case", ["wrong_hash", "truncated_file", "short_read", "unreachable"])
def test_download_failures_leave_nothing(case, files, server, isolated):
    good = sha256(files["root"] / "dpn1_32.weights.h5")
    url, digest = {
        "wrong_hash": (f"{server}/dpn1_32.weights.h5", "0" * 64),
        # The server holds a cut file: its hash is not the registered one.
        "truncated_file": (f"{server}/truncated.weights.h5", good),
        # The connection ends before Content-Length bytes arrived.
        "short_read": (f"{server}/short/dpn1_32.weights.h5", good),
        "unreachable": (f"http://127.0.0.1:{_closed_port()}/dpn1_32.weights.h5", good),
    }[case]
    weights_lib.register("DPN1_32", "test", url=url, sha256=digest, input_shape=SHAPE,
                         num_keypoints=17)
    with pytest.raises(ValueError, match=r"Could not fetch the weights 'DPN1_32\.test'"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")
    assert cache_files(isolated) == []


def test_download_of_other_architecture(files, server, isolated):
    path = files["root"] / "dpn1_32.weights.h5"
    weights_lib.register("DPN2_32", "test", url=f"{server}/dpn1_32.weights.h5",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    with pytest.raises(ValueError, match="does not match the DPN2_32 architecture"):
        keras_dpn.DPN2_32(input_shape=SHAPE, weights="test")
    assert cache_files(isolated) == []


def test_download_of_other_keypoint_count(files, server, isolated):
    path = files["root"] / "dpn1_32_k16.weights.h5"
    # The entry wrongly claims 17 keypoints: the file check catches it.
    weights_lib.register("DPN1_32", "test", url=f"{server}/dpn1_32_k16.weights.h5",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    with pytest.raises(ValueError, match="head for 16 keypoints"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")
    assert cache_files(isolated) == []
    # An honest entry is refused before any download when the counts differ.
    weights_lib.register("DPN1_32", "mpii", url=f"{server}/dpn1_32_k16.weights.h5",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=16,
                         keypoints="mpii")
    with pytest.raises(ValueError, match="num_keypoints=16.*Received: num_keypoints=17"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="mpii")
    assert cache_files(isolated) == []
    model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="mpii", num_keypoints=16)
    assert model.output_shape[-1] == 16


def test_stale_cache_file_is_replaced(files, server, isolated):
    path = files["root"] / "dpn1_32.weights.h5"
    os.makedirs(isolated)
    shutil.copy(files["root"] / "truncated.weights.h5", isolated / "DPN1_32_test.weights.h5")
    weights_lib.register("DPN1_32", "test", url=f"{server}/dpn1_32.weights.h5",
                         sha256=sha256(path), input_shape=SHAPE, num_keypoints=17)
    model = keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")
    np.testing.assert_array_equal(out(model, files["x"]), files["expected"])
    assert sha256(isolated / "DPN1_32_test.weights.h5") == sha256(path)


def test_other_input_size_warns(files, server):
    path = files["root"] / "dpn1_32.weights.h5"
    weights_lib.register("DPN1_32", "test", url=f"{server}/dpn1_32.weights.h5",
                         sha256=sha256(path), input_shape=(256, 192, 3), num_keypoints=17)
    with pytest.warns(UserWarning, match="trained at input_shape"):
        keras_dpn.DPN1_32(input_shape=SHAPE, weights="test")


# -- builder arguments: what the shapes do not tell --------------------------------------


def test_builders_record_their_arguments():
    model = keras_dpn.get_model("DPN1_32", input_shape=SHAPE, dilation_schedule="reversed")
    assert weights_lib.builder_config(model) == {
        "variant": "DPN1_32",
        "arguments": {"input_shape": [64, 48, 3], "num_keypoints": 17, "resolution": "medium",
                      "dilation_schedule": "reversed", "num_blocks": 6, "kernel_size": 3}}
    # The record is invisible to Keras: the weights file layout is the default one's.
    assert weights_lib.model_layout(model) == weights_lib.model_layout(
        keras_dpn.DPN1_32(input_shape=SHAPE))


def test_builder_defaults_follow_the_family_builder():
    assert weights_lib.builder_defaults("DPN4_64") == {
        "resolution": "medium", "dilation_schedule": "pyramid", "num_blocks": 6,
        "kernel_size": 3}
    assert weights_lib.builder_defaults("DPN2_HRNet") == {"dilation_schedule": "pyramid"}
    assert weights_lib.builder_defaults("HRNetW32") == {}


def test_register_completes_and_checks_the_config():
    entry = weights_lib.register("DPN4_64", "hi", url="http://127.0.0.1:1/w.weights.h5",
                                 sha256="0" * 64, input_shape=(256, 192, 3), num_keypoints=17,
                                 config={"resolution": "high"})
    assert entry.config == {"resolution": "high", "dilation_schedule": "pyramid",
                            "num_blocks": 6, "kernel_size": 3}
    with pytest.raises(ValueError, match=r"HRNetW32 takes no architecture argument "
                                         r"\['resolution'\].*Received: config="):
        weights_lib.register("HRNetW32", "x", url="http://127.0.0.1:1/w.weights.h5",
                             sha256="0" * 64, input_shape=(256, 192, 3), num_keypoints=17,
                             config={"resolution": "high"})
    with pytest.raises(ValueError, match=r"Unknown model name.*Received: arch='DPN9_32'"):
        weights_lib.register("DPN9_32", "x", url="http://127.0.0.1:1/w.weights.h5",
                             sha256="0" * 64, input_shape=(256, 192, 3), num_keypoints=17)


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """Weights of a resolution="high" DPN1_64 and of a reversed-schedule DPN1_32."""
    root = tmp_path_factory.mktemp("variants")
    keras.utils.set_random_seed(5)
    x = np.random.default_rng(1).normal(size=(1,) + SHAPE).astype("float32")
    high = keras_dpn.DPN1_64(input_shape=SHAPE, resolution="high")
    high.save_weights(root / "high.weights.h5")
    rev = keras_dpn.DPN1_32(input_shape=SHAPE, dilation_schedule="reversed")
    rev.save_weights(root / "rev.weights.h5")
    return dict(root=root, x=x, high=out(high, x), rev=out(rev, x))


@pytest.mark.parametrize("arch,config,built,good", [
    ("DPN1_64", {"resolution": "high"}, {}, {"resolution": "high"}),
    ("DPN1_32", {"dilation_schedule": "reversed"}, {}, {"dilation_schedule": "reversed"}),
    # An entry without a config records the defaults: a reversed model refuses it.
    ("DPN1_32", None, {"dilation_schedule": "reversed"}, {}),
])
def test_weights_never_load_into_a_model_built_otherwise(arch, config, built, good, variants,
                                                         isolated):
    name = "high.weights.h5" if arch == "DPN1_64" else "rev.weights.h5"
    path = variants["root"] / name
    with serve(variants["root"]) as url:
        weights_lib.register(arch, "t", url=f"{url}/{name}", sha256=sha256(path),
                             input_shape=SHAPE, num_keypoints=17, config=config)
        # Same shapes, so only the recorded arguments stop it; refused before any download.
        with pytest.raises(ValueError, match=rf"trained with {arch}\(.*but the model is built "
                                             r"with .*Received: weights='t'"):
            keras_dpn.get_model(arch, input_shape=SHAPE, weights="t", **built)
        assert cache_files(isolated) == []
        model = keras_dpn.get_model(arch, input_shape=SHAPE, weights="t", **good)
    if config is not None:
        key = "high" if arch == "DPN1_64" else "rev"
        np.testing.assert_array_equal(out(model, variants["x"]), variants[key])


def test_load_registry_file(tmp_path):
    entries = [dict(arch="DPN1_32", tag="a", url="http://127.0.0.1:1/a.tar.gz", sha256="1" * 64,
                    input_shape=[64, 48, 3], num_keypoints=17, config={"num_blocks": 6}),
               dict(arch="DPN1_32", tag="b", url="http://127.0.0.1:1/b.weights.h5",
                    sha256="2" * 64, input_shape=[64, 48, 3], num_keypoints=16,
                    keypoints="mpii")]
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(entries))
    done = weights_lib.load_registry(path)
    assert [e.key for e in done] == ["DPN1_32.a", "DPN1_32.b"]
    assert weights_lib.get_entry("DPN1_32.a").is_archive
    assert not weights_lib.get_entry("DPN1_32.b").is_archive
    # A bad entry registers nothing, and the message names the file and the entry.
    weights_lib.unregister("DPN1_32.a")
    weights_lib.unregister("DPN1_32.b")
    entries[1]["config"] = {"resolution": "ultra", "width": 3}
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"Entry 1 of the registry file is invalid.*width.*"
                                         r"Received: path="):
        weights_lib.load_registry(path)
    assert weights_lib.list_entries() == []


@pytest.mark.parametrize("change,message", [
    (dict(input_shape="abc"), r"`input_shape` must be \(height, width, 3\) of positive integers"
                              r"\. Received: input_shape='abc'"),
    (dict(input_shape=["64", "48", "3"]), r"Received: input_shape=\['64', '48', '3'\]"),
    (dict(metrics=[[1, 2, 3]]), r"`metrics` must be a dict\. Received: metrics=\[\[1, 2, 3\]\]"),
    (dict(file_name="../x.weights.h5"), r"`file_name` must be a plain file name"),
    (dict(url="not a url"), r"`url` must be an http://, https:// or file:// URL"),
    ("[{\"arch\": 1,}", r"Cannot read the registry file \(Expecting property name .*: line 1 "
                        r"column 13 \(char 12\)\)"),
])
def test_registry_file_errors_name_the_entry_and_the_file(change, message, tmp_path):
    path = tmp_path / "r.registry.json"
    if isinstance(change, str):
        path.write_text(change)
    else:
        entry = dict(arch="DPN1_32", tag="t", url="https://example.org/x.tar.gz",
                     sha256="0" * 64, input_shape=[64, 48, 3], num_keypoints=17)
        path.write_text(json.dumps([dict(entry, **change)]))
    with pytest.raises(ValueError, match=message) as info:
        weights_lib.load_registry(path)
    assert "\n" not in str(info.value) and str(info.value).endswith(f"Received: path={str(path)!r}")
    assert weights_lib.list_entries() == []
