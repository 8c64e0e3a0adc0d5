"""keras-dpn on the JAX and PyTorch backends, and without TensorFlow.

Keras chooses its backend when it is imported, so every backend runs
``tests/backend_checks.py`` once in a child process (with ``import
tensorflow`` made to fail) and the tests below read what it measured,
comparing with the TensorFlow backend of this process where a reference
exists. JAX is in the ``dev`` extra; the PyTorch runs skip unless ``torch``
is installed.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import backend_checks as checks
import keras_dpn
from keras_dpn.core import optional as _optional
from keras_dpn.models.analysis import count_macs
from keras_dpn.training import checkpoints
from repo_scripts import load_script

BACKENDS = ("jax", "torch")
RECIPE = os.path.join(checks.REPO, "recipes", "train_coco.py")


def run_checks(backend, out_dir, no_tensorflow=True, names=None, timeout=1800):
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, checks.__file__, str(out_dir)]
    cmd += ["--no-tensorflow"] if no_tensorflow else []
    cmd += ["--checks", *names] if names else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def skip_unless_installed(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (JAX: the dev extra; PyTorch: pip install torch)")


@pytest.fixture(scope="session", params=BACKENDS)
def backend_run(request, tmp_path_factory):
    """``(backend, out_dir, results)`` of the checks run once per backend without TensorFlow."""
    skip_unless_installed(request.param)
    out = tmp_path_factory.mktemp(f"{request.param}_checks")
    return request.param, out, run_checks(request.param, out)


def result(backend_run, name):
    value = backend_run[2][name]
    assert "error" not in value, value["error"]
    return value


# ---------------------------------------------------------------------------
# What the child processes measured.


def test_import_without_tensorflow(backend_run):
    backend, _, _ = backend_run
    env = result(backend_run, "environment")
    assert env["backend"] == backend
    assert env["tensorflow_loaded"] == []
    assert env["mirrored_replicas"] == 1
    install = 'Install it with: pip install "tensorflow==2.21.*"'
    # Every module imports, except tf.data ones, which say what they need.
    assert "keras_dpn.data.pipeline" in env["module_errors"]
    for name, message in env["module_errors"].items():
        assert name.startswith("keras_dpn.data."), (name, message)
        assert message.startswith("MissingDependencyError: The tf.data input pipeline")
        assert install in message
    # One line each: the feature, what is missing, the install command.
    for key, feature in (("build_dataset_error", "The tf.data input pipeline"),
                         ("export_error", "Exporting SavedModel / TFLite / ONNX")):
        message = env[key]
        assert message.startswith(f"MissingDependencyError: {feature}"), message
        assert install in message and "\n" not in message
    for key in ("multi_worker_error", "custom_loop_error"):
        assert env[key].startswith("ValueError:") and "KERAS_BACKEND=tensorflow" in env[key]


@pytest.mark.parametrize("family", ["dpn", "hrnet"])
def test_family_builds_trains_and_round_trips(backend_run, family):
    got = result(backend_run, "families")[family]
    model = (keras_dpn.DPN(num_modules=1, input_shape=checks.DPN_INPUT) if family == "dpn"
             else checks.tiny_hrnet())
    h, w = model.input_shape[1:3]
    assert got["output_shape"] == [2, h // 4, w // 4, 17]
    assert math.isfinite(got["loss"][0]) and got["moved"] > 0
    # The DPN trained in mixed_bfloat16; its heatmaps stay float32.
    assert got["output_dtype"] == "float32"
    if family == "dpn":
        assert "mixed_bfloat16" in got["policies"]
    # Same architecture as on TensorFlow: parameters and MACs.
    assert got["params"] == got["loaded_params"] == model.count_params()
    assert got["macs"] == count_macs(model)
    assert got["round_trip_max_diff"] <= 1e-6


def test_losses_and_metrics_match_tensorflow(backend_run):
    got = result(backend_run, "losses")
    expected = checks.loss_values()  # this process: the TensorFlow backend
    assert 0 < expected["pck_running"] < 1 and expected["pck_first_batch"] > 0
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_evaluation_callback_and_flip_test(backend_run):
    from keras_dpn.evaluation import predict_coco
    got = result(backend_run, "evaluation")
    # The identity model predicts the ground truth: COCO AP 1 through model.fit's callback.
    assert got["history"]["val_AP"][0] > 0.99 and got["results_file"]
    assert set(got["history"]) >= {f"val_{k}" for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")}
    codec, maps, _, meta = checks.eval_people()
    expected = predict_coco(checks.blur_model(), checks.eval_batches(maps, meta, batch=5),
                            codec=codec, flip_test=True, verbose=0)
    np.testing.assert_allclose(np.array(got["flip_keypoints"]),
                               np.array([r["keypoints"] for r in expected]), atol=1e-3)


def test_trainer_checkpoints_and_resume(backend_run):
    backend, _, _ = backend_run
    got = result(backend_run, "trainer")
    assert got["num_batches"] == [1, 1]
    # Stopped after epoch 1 and resumed: the weights of the uninterrupted run.
    assert got["first_epochs"] == [0] and got["resumed_epochs"] == [1]
    assert got["moved_from_init"] > 1e-3
    assert got["max_weight_diff"] < 1e-5
    assert got["checkpoints"] == ["ckpt-1.weights.h5", "ckpt-2.weights.h5", "state.json"]
    state = got["state"]
    assert (state["epoch"], state["step"], state["backend"]) == (2, 2, backend)
    assert state["best"] == pytest.approx(got["history"]["val_AP"][-1])
    assert got["best_weights"] and len(got["history"]["val_AP"]) == 2


def test_pose_estimator_on_a_keras_file(backend_run):
    _, out, _ = backend_run
    got = result(backend_run, "inference")
    assert got["kind"] == "keras"
    found = np.array(got["keypoints"])
    # Within a heatmap pixel (9 image pixels here) of where the dots were painted.
    np.testing.assert_allclose(found[..., :2], np.array(got["truth"]), atol=8.0)
    # The same .keras file on TensorFlow: the same keypoints.
    import synthetic_pose as sp
    people = [np.array(p) for p in got["truth"]]
    frame = sp.paint((400, 560), people)
    expected = keras_dpn.PoseEstimator(str(out / "dot_model.keras"), flip_test=False).predict(
        frame, boxes=np.stack([sp.person_box(p) for p in people]))
    np.testing.assert_allclose(found, np.stack([p["keypoints"] for p in expected]), atol=1e-3)
    assert got["receptive_field"] == [[5, 5], [3, 3], True]


def slow_check(backend, out_dir, name, **kwargs):
    """One of backend_checks.SLOW_CHECKS in its own child process."""
    skip_unless_installed(backend)
    got = run_checks(backend, out_dir, names=[name], **kwargs)[name]
    assert "error" not in got, got["error"]
    return got


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_training_step(backend, tmp_path):
    """jit_compile=True: XLA on JAX; torch.compile on PyTorch (minutes to compile on a CPU)."""
    got = slow_check(backend, tmp_path, "compiled")
    assert all(math.isfinite(v) for v in got["losses"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_on_tf_data_with_pck_and_coco_callback(backend, tmp_path):
    """model.fit(build_dataset(...)) with JointsMSE, HeatmapPCK and COCOEvaluationCallback."""
    history = slow_check(backend, tmp_path, "tf_data", no_tensorflow=False)["history"]
    assert math.isfinite(history["loss"][0]) and 0 <= history["pck"][0] <= 1
    assert 0 <= history["val_AP"][0] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_registered_variant_runs(backend, tmp_path):
    got = slow_check(backend, tmp_path, "registered")
    for name, (shape, finite) in got["shapes"].items():
        h, w = checks.HRNET_INPUT[:2] if "HRNet" in name else checks.DPN_INPUT[:2]
        assert shape == [1, h // 4, w // 4, 17] and finite, name
    assert set(got["shapes"]) == set(keras_dpn.MODELS)


# ---------------------------------------------------------------------------
# Backend selection and optional imports, in this process.


def test_missing_dependency_message_names_feature_and_install():
    with pytest.raises(_optional.MissingDependencyError) as info:
        _optional.require("no_such_module_xyz", "Reading .xyz files", "pip install xyz")
    assert isinstance(info.value, ImportError)
    assert str(info.value).startswith("Reading .xyz files needs no_such_module_xyz")
    assert str(info.value).endswith("Install it with: pip install xyz")
    lazy = _optional.LazyModule("no_such_module_xyz", "Drawing xyz")
    with pytest.raises(_optional.MissingDependencyError, match="Drawing xyz needs"):
        lazy.anything
    assert _optional.LazyModule("json", "Reading JSON").dumps([1]) == "[1]"


def test_backend_names_are_checked():
    with pytest.raises(ValueError, match=r"must be one of .*Received: backend='mxnet'"):
        _optional.check_backend_name("mxnet")
    assert _optional.check_backend_name("tensorflow") == "tensorflow"
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(keras.backend, "backend", lambda: "jax")
            _optional.require_tensorflow_backend("Feature X")


def test_tensorflow_checkpoint_on_another_backend_is_refused(tmp_path):
    store = checkpoints.WeightsCheckpoints(None, str(tmp_path), 3)
    assert store.latest(None) is None
    with pytest.raises(ValueError, match="resume it with KERAS_BACKEND=tensorflow"):
        store.latest({"checkpoint": "ckpt-3", "backend": "tensorflow"})
    with pytest.raises(ValueError, match="missing"):
        store.latest({"checkpoint": "ckpt-3.weights.h5"})


def test_recipe_backend_option(capsys):
    train_coco = load_script("recipes/train_coco.py")
    with pytest.raises(SystemExit) as info:  # argparse: unknown choice
        train_coco.main(["--backend", "mxnet"])
    err = capsys.readouterr().err
    # One line (docs/guide/backends.md), not argparse's usage block.
    assert info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("train_coco.py: error: argument --backend: invalid choice: 'mxnet'")
    # This process imported Keras on TensorFlow: another backend needs a new process.
    assert train_coco.main(["--backend", "jax", "--epochs", "1"]) == 2
    assert "Keras is already imported here with the tensorflow backend" in capsys.readouterr().err
    # A backend that is not installed: one line, before Keras is imported.
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            "sys.exit(runpy.run_path(%r)['main'](['--backend', 'torch']))" % RECIPE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --backend torch: torch is not installed (pip install "
                                   "torch). Received: backend='torch'")


# ---------------------------------------------------------------------------
# The benchmark scripts, on a tiny configuration.


def without_tensorflow_env(tmp_path, backend):
    """Environment of a child process in which `import tensorflow` fails (a sitecustomize)."""
    site = tmp_path / "no_tensorflow"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\nsys.modules.update(dict.fromkeys(%r))\n" % (checks.NOT_WITHOUT_TENSORFLOW,))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, KERAS_BACKEND=backend)


def test_gpu_benchmark_script_on_cpu_without_tensorflow(tmp_path):
    skip_unless_installed("jax")
    script = os.path.join(checks.REPO, "benchmarks", "gpu_benchmark.py")
    out = tmp_path / "gpu"
    cmd = [sys.executable, script, "--backend", "jax", "--allow-cpu", "--models", "DPN1_32",
           "--batch-sizes", "2", "--input-size", "64", "48", "--steps", "1",
           "--matmul-size", "256", "--out", str(out)]
    env = without_tensorflow_env(tmp_path, "jax")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "gpu_benchmark.json") as f:
        got = json.load(f)
    assert got["backend"] == "jax" and not got["tensorflow_imported"] and not got["skipped"]
    (row,) = got["rows"]
    assert (row["model"], row["batch_size"], row["mode"]) == ("DPN1_32", 2, "mixed_bfloat16")
    assert row["train_examples_per_s"] > 0 and row["inference_examples_per_s"] > 0
    assert row["gmacs_per_example"] == pytest.approx(
        count_macs(keras_dpn.DPN1_32(input_shape=(64, 48, 3))) / 1e9)
    assert "| DPN1_32 | 2 |" in (out / "gpu_benchmark.md").read_text()
    # Without a GPU and without --allow-cpu: a one-line refusal.
    proc = subprocess.run(cmd[:4] + ["--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "no GPU visible to jax" in proc.stderr


@pytest.mark.slow
def test_train_throughput_runs_every_installed_backend(tmp_path):
    script = os.path.join(checks.REPO, "benchmarks", "train_throughput.py")
    proc = subprocess.run([sys.executable, script, "--models", "DPN1_32", "--batch-size", "2",
                           "--input-size", "64", "48", "--steps", "1", "--max-seconds", "1",
                           "--json", str(tmp_path / "out.json")],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out.json") as f:
        results = json.load(f)["results"]
    installed = [b for b in ("tensorflow", "jax", "torch") if importlib.util.find_spec(b)]
    assert [r["backend"] for r in results] == installed
    for r in results:
        assert r["peak_fp32_gflops"] > 0
        assert {row["mode"] for row in r["rows"]} == {"float32", "mixed_bfloat16"}
