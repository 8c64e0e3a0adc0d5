"""Checks that run in a child process on one Keras backend, for tests/test_backends.py.

Keras picks its backend once, when it is imported, so each backend gets its
own process that runs every check and writes what it measured to JSON; the
tests assert on that (and compare it with the TensorFlow backend in their
own process)::

    KERAS_BACKEND=jax python tests/backend_checks.py OUT_DIR [--no-tensorflow] [--checks a b]

``--no-tensorflow`` puts ``None`` into ``sys.modules["tensorflow"]`` before
anything else: every ``import tensorflow`` then raises ``ImportError``, as in
an environment without it. A check that fails records its traceback instead
of stopping the others.
"""

import argparse
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TEST_COCO = os.path.join(HERE, "data", "coco", "test_coco.json")
SAMPLE_COCO = (os.path.join(REPO, "sample_data", "coco", "annotations",
                            "person_keypoints_sample.json"),
               os.path.join(REPO, "sample_data", "coco", "images"))
# What an environment without TensorFlow lacks (protobuf comes with it).
NOT_WITHOUT_TENSORFLOW = ("tensorflow", "google.protobuf")
# Small inputs: every check compiles its own steps, which dominates the time.
DPN_INPUT = (64, 48, 3)
HRNET_INPUT = (64, 64, 3)
EVAL_INPUT, EVAL_HEATMAP = (256, 192), (64, 48)


# ---------------------------------------------------------------------------
# Shared inputs (the test process builds the same ones for the TF side).


def loss_inputs():
    """Seeded heatmaps, targets and weights; batch == heatmap width on purpose."""
    import numpy as np
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(4, 5, 4, 3)).astype("float32")
    target = rng.normal(size=(4, 5, 4, 3)).astype("float32")
    weight = np.array([[1, 0, 1.5], [1, 1, 1], [0, 0, 1.2], [1, 1, 0]], "float32")
    # One peak per (sample, joint), predicted exactly (half of them) or up to 2
    # pixels off; some targets empty (not counted).
    peaks_true = np.zeros((6, 16, 12, 4), "float32")
    peaks_pred = rng.normal(scale=0.01, size=peaks_true.shape).astype("float32")
    for b in range(6):
        for k in range(4):
            y, x = rng.integers(2, 14), rng.integers(2, 10)
            if rng.uniform() > 0.2:
                peaks_true[b, y, x, k] = 1.0
            dy, dx = rng.integers(-2, 3, size=2) * (rng.uniform() < 0.5)
            peaks_pred[b, np.clip(y + dy, 0, 15), np.clip(x + dx, 0, 11), k] = 1.0
    return pred, target, weight, peaks_true, peaks_pred


def loss_values():
    """JointsMSE and HeatmapPCK on :func:`loss_inputs`, on the current backend."""
    import keras

    from keras_dpn.training.losses import JointsMSE
    from keras_dpn.training.metrics import HeatmapPCK
    pred, target, weight, peaks_true, peaks_pred = loss_inputs()
    mse = JointsMSE()
    pck = HeatmapPCK()
    pck.update_state(peaks_true[:3], peaks_pred[:3])
    pck_first = float(pck.result())
    pck.update_state(peaks_true[3:], peaks_pred[3:])
    return {
        "mse_weighted": float(mse(target, pred, sample_weight=weight)),
        "mse_weight_b_k_1": float(mse(target, pred, sample_weight=weight[..., None])),
        "mse_unweighted": float(JointsMSE(use_target_weight=False)(target, pred)),
        "mse_bfloat16_pred": float(mse(target, keras.ops.cast(pred, "bfloat16"),
                                       sample_weight=weight)),
        "pck_first_batch": pck_first,
        "pck_running": float(pck.result()),
    }


def eval_people():
    """Ground-truth heatmaps of tests/data/coco/test_coco.json's people, and their meta.

    The heatmaps are the "images" of an identity model, so that the evaluation
    path (decoding, inverse affine, COCO AP) is checked on its own.
    """
    import numpy as np

    from keras_dpn.core import transforms
    from keras_dpn.core.codec import HeatmapCodec
    codec = HeatmapCodec(EVAL_INPUT, EVAL_HEATMAP)
    with open(TEST_COCO) as f:
        people = [a for a in json.load(f)["annotations"] if a["num_keypoints"] > 0]
    center, scale = transforms.box_to_center_scale([a["bbox"] for a in people],
                                                   EVAL_INPUT[1] / EVAL_INPUT[0])
    maps, weights = [], []
    for person, c, s in zip(people, center, scale):
        kp = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)
        to_crop = transforms.get_affine_transform(c, s, 0.0, EVAL_INPUT)
        m, w = codec.encode(transforms.affine_transform_points(kp[:, :2], to_crop), kp[:, 2] > 0)
        maps.append(m)
        weights.append(w)
    meta = {"image_id": np.array([a["image_id"] for a in people], np.int64),
            "center": center, "scale": scale, "score": np.ones(len(people), np.float32)}
    return codec, np.stack(maps), np.stack(weights), meta


def eval_batches(maps, meta, batch=4):
    return [(maps[i:i + batch], {k: v[i:i + batch] for k, v in meta.items()})
            for i in range(0, len(maps), batch)]


def identity_model():
    import keras
    import numpy as np
    inputs = keras.Input(EVAL_HEATMAP + (17,))
    eye = np.eye(17, dtype="float32").reshape(1, 1, 17, 17)
    out = keras.layers.Conv2D(17, 1, use_bias=False, name="head",
                              kernel_initializer=keras.initializers.Constant(eye))(inputs)
    return keras.Model(inputs, out)


def blur_model():
    """A fixed 3x3 conv (numpy-seeded weights): smooth heatmaps with clear, untied peaks."""
    import keras
    import numpy as np
    inputs = keras.Input(EVAL_HEATMAP + (17,))
    conv = keras.layers.Conv2D(17, 3, padding="same", name="blur")
    model = keras.Model(inputs, conv(inputs))
    rng = np.random.default_rng(1)
    kernel = np.abs(rng.normal(size=(3, 3, 17, 17))).astype("float32") * 0.1
    kernel[1, 1] += np.eye(17, dtype="float32")
    conv.set_weights([kernel, np.zeros(17, "float32")])
    return model


def tiny_hrnet():
    """The HRNet family (stem, bottlenecks, transitions, fuse, basic blocks) with two
    small stages: the registered HRNet-W32 takes minutes to compile on a CPU."""
    import keras

    from keras_dpn.models import common, hrnet
    inputs = keras.Input(HRNET_INPUT)
    features = hrnet.hrnet_backbone(inputs, stages=((1, 1, (8, 16)), (1, 1, (8, 16, 32))))
    return keras.Model(inputs, common.heatmap_head(features, 17, None), name="tiny_hrnet")


# ---------------------------------------------------------------------------
# The checks. Each returns a JSON-able dict.


def check_environment(out_dir):
    import keras

    import keras_dpn
    from keras_dpn.training import trainer as training
    result = {"backend": keras.backend.backend(),
              "tensorflow_loaded": sorted(m for m, v in sys.modules.items()
                                          if m.split(".")[0] == "tensorflow" and v is not None),
              "mirrored_replicas": training.get_strategy("mirrored").num_replicas_in_sync}
    # Every module of the package imports, or names what it needs in one line.
    import importlib
    import pkgutil
    result["module_errors"] = {}
    for info in pkgutil.walk_packages(keras_dpn.__path__, "keras_dpn."):
        try:
            importlib.import_module(info.name)
        except Exception as e:  # noqa: BLE001 - recorded
            result["module_errors"][info.name] = f"{type(e).__name__}: {e}"
    for name, call in (("build_dataset", lambda: keras_dpn.build_dataset),
                       ("export", lambda: keras_dpn.deploy.export.export_model(
                           keras_dpn.DPN(num_modules=1, input_shape=DPN_INPUT), out_dir)),
                       ("multi_worker", lambda: training.get_strategy("multi_worker")),
                       ("custom_loop", lambda: training.Trainer(
                           lambda: None, out_dir, strategy="default", loop="custom"))):
        try:
            call()
            result[f"{name}_error"] = None
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            result[f"{name}_error"] = f"{type(e).__name__}: {e}"
    return result


def _family_check(model, batch, tmp_path):
    import keras
    import numpy as np

    import keras_dpn
    from keras_dpn.models.analysis import count_macs
    shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch,) + shape).astype("float32")
    out = keras.ops.convert_to_numpy(model(x, training=False))
    y = rng.uniform(size=out.shape).astype("float32") * 0.1
    w = np.ones((batch, out.shape[-1]), "float32")
    model.compile(keras.optimizers.Adam(1e-3), keras_dpn.JointsMSE(),
                  metrics=[keras_dpn.HeatmapPCK()])
    start = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    history = model.fit(x, y, sample_weight=w, batch_size=batch, epochs=1, verbose=0)
    moved = max(float(np.abs(keras.ops.convert_to_numpy(v) - s).max())
                for v, s in zip(model.trainable_weights, start))
    path = os.path.join(tmp_path, f"{model.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    before = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    after = keras.ops.convert_to_numpy(loaded.predict_on_batch(x))
    return {"output_shape": list(out.shape), "loss": history.history["loss"], "moved": moved,
            "output_dtype": keras.backend.standardize_dtype(out.dtype),
            "pck": history.history["pck"], "params": model.count_params(),
            "loaded_params": loaded.count_params(),
            "round_trip_max_diff": float(np.abs(before - after).max()),
            "macs": count_macs(model)}


def check_families(out_dir):
    """The DPN family in mixed_bfloat16, the HRNet family in float32 (one build each:
    building and compiling dominate the time)."""
    import keras

    import keras_dpn
    from keras_dpn.training import trainer as training
    keras.utils.set_random_seed(0)
    with training.precision_policy("mixed_bfloat16"):
        dpn = keras_dpn.DPN(num_modules=1, input_shape=DPN_INPUT)
    result = {"dpn": _family_check(dpn, 2, out_dir),
              "hrnet": _family_check(tiny_hrnet(), 2, out_dir)}
    result["dpn"]["policies"] = sorted({layer.dtype_policy.name for layer in dpn.layers})
    return result


def check_compiled(out_dir):
    """``jit_compile=True``: XLA on JAX (the default there), ``torch.compile`` on PyTorch."""
    import keras
    import numpy as np

    import keras_dpn
    x = np.random.default_rng(0).normal(size=(2,) + DPN_INPUT).astype("float32")
    model = keras_dpn.DPN(num_modules=1, input_shape=DPN_INPUT)
    out = model(x)
    model.compile(keras.optimizers.Adam(1e-3), keras_dpn.JointsMSE(), jit_compile=True)
    losses = [float(model.train_on_batch(x, np.zeros(tuple(out.shape), "float32"),
                                         sample_weight=np.ones((2, 17), "float32")))
              for _ in range(3)]
    return {"losses": losses}


def check_losses(out_dir):
    return loss_values()


def check_evaluation(out_dir):
    """COCOEvaluationCallback in model.fit, and the flip test of predict_coco."""
    import keras
    import numpy as np

    from keras_dpn.training.callbacks import COCOEvaluationCallback
    from keras_dpn.evaluation import predict_coco
    from keras_dpn.training.losses import JointsMSE
    codec, maps, weights, meta = eval_people()
    model = identity_model()
    model.compile(keras.optimizers.SGD(0.0), JointsMSE())  # the identity stays
    cb = COCOEvaluationCallback(eval_batches(maps, meta), TEST_COCO, codec=codec,
                                flip_test=False, output_dir=out_dir, verbose=0)
    history = model.fit(maps, maps, sample_weight=weights, batch_size=7, epochs=1, verbose=0,
                        callbacks=[cb])
    flipped = predict_coco(blur_model(), eval_batches(maps, meta, batch=5), codec=codec,
                           flip_test=True, verbose=0)
    return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
            "results_file": os.path.exists(os.path.join(out_dir, "keypoints_val_results.json")),
            "flip_keypoints": np.array([r["keypoints"] for r in flipped]).tolist()}


def check_trainer(out_dir):
    """Trainer on PersonCrops (no tf.data): best weights by val_AP, and resume after a stop.

    Every epoch is the same single batch of all 124 sample people (no
    augmentation, no shuffling), so a run stopped after epoch 1 and resumed
    must end with the weights of the uninterrupted run.
    """
    import keras
    import numpy as np

    import keras_dpn
    from keras_dpn.training import trainer as training
    from keras_dpn.data import PersonCrops
    kwargs = dict(input_size=DPN_INPUT[:2], heatmap_size=(16, 12), seed=0)
    train = PersonCrops(*SAMPLE_COCO, batch_size=124, shuffle=False, augment=None, **kwargs)
    evaluation = PersonCrops(*SAMPLE_COCO, training=False, batch_size=124, **kwargs)

    def model_fn():
        return keras_dpn.DPN(num_modules=1, input_shape=DPN_INPUT)

    def run(folder, epochs, resume=False):
        cb = keras_dpn.COCOEvaluationCallback(evaluation, SAMPLE_COCO[0], flip_test=True,
                                              verbose=0)
        trainer = training.Trainer(model_fn, os.path.join(out_dir, folder), strategy="mirrored",
                                   epochs=epochs, seed=0, verbose=0, learning_rate=1e-3)
        history = trainer.fit(train, callbacks=[cb], resume=resume)
        return trainer, history

    straight, history = run("straight", 2)
    _, first = run("resumed", 1)
    resumed, second = run("resumed", 2, resume=True)
    a = [keras.ops.convert_to_numpy(v) for v in straight.model.weights]
    b = [keras.ops.convert_to_numpy(v) for v in resumed.model.weights]
    start = [keras.ops.convert_to_numpy(v) for v in model_fn().weights]
    folder = os.path.join(out_dir, "resumed")
    return {"history": {k: [float(x) for x in v] for k, v in history.items()},
            "resumed_epochs": second["epoch"], "first_epochs": first["epoch"],
            "max_weight_diff": float(max(np.abs(x - y).max() for x, y in zip(a, b))),
            "moved_from_init": float(max(np.abs(x - y).max() for x, y in zip(a, start))),
            "checkpoints": sorted(os.listdir(os.path.join(folder, "checkpoints"))),
            "state": training.read_state(folder),
            "best_weights": os.path.exists(os.path.join(folder, training.BEST_WEIGHTS)),
            "num_batches": [len(train), len(evaluation)]}


def check_inference(out_dir):
    """PoseEstimator on a .keras file (painted people, a hand-set model), receptive field."""
    import keras
    import numpy as np

    import keras_dpn
    from keras_dpn.models.analysis import receptive_field
    import synthetic_pose as sp  # `python tests/backend_checks.py` searches tests/ first
    people = [sp.skeleton((150, 200), 220), sp.skeleton((420, 230), 180)]
    frame = sp.paint((400, 560), people)
    boxes = np.stack([sp.person_box(p) for p in people])
    path = os.path.join(out_dir, "dot_model.keras")
    sp.dot_model().save(path)
    estimator = keras_dpn.PoseEstimator(path, flip_test=False)
    found = estimator.predict(frame, boxes=boxes)
    conv = keras.layers.Conv2D(1, 3, dilation_rate=2, padding="same")
    rf = receptive_field(conv, (9, 9, 1))
    return {"kind": estimator.kind, "truth": [p.tolist() for p in people],
            "keypoints": [p["keypoints"].tolist() for p in found],
            "receptive_field": [list(rf.extent), list(rf.count), bool(rf.has_holes)]}


def check_tf_data(out_dir):
    """model.fit(build_dataset(...)) with JointsMSE, HeatmapPCK and the COCO callback
    (tf.data feeds every backend when TensorFlow is installed)."""
    import keras

    import keras_dpn
    from keras_dpn import data
    prefix = os.path.join(out_dir, "shards", "coco_sample")
    data.build_coco_shards(*SAMPLE_COCO, prefix, 1, progress=False, verbose=False)
    pattern = prefix + "-*.tfrecord"
    size = dict(input_size=DPN_INPUT[:2], heatmap_size=(16, 12))
    train = data.build_dataset(pattern, training=True, batch_size=8, repeat=True, seed=0, **size)
    evaluation = data.build_dataset(pattern, training=False, batch_size=64, verbose=False,
                                    **size)
    model = keras_dpn.DPN(num_modules=1, input_shape=DPN_INPUT)
    model.compile(keras.optimizers.Adam(1e-3), keras_dpn.JointsMSE(),
                  metrics=[keras_dpn.HeatmapPCK()])
    cb = keras_dpn.COCOEvaluationCallback(evaluation, SAMPLE_COCO[0], verbose=0)
    history = model.fit(train, steps_per_epoch=2, epochs=1, callbacks=[cb], verbose=0)
    return {"history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}


def check_registered(out_dir):
    """Forward pass of every registered variant at a small input (slow on JAX: minutes)."""
    import keras
    import numpy as np

    import keras_dpn
    shapes = {}
    for name in keras_dpn.MODELS:
        shape = HRNET_INPUT if "HRNet" in name else DPN_INPUT
        model = keras_dpn.get_model(name, input_shape=shape)
        out = keras.ops.convert_to_numpy(model.predict_on_batch(np.zeros((1,) + shape, "float32")))
        shapes[name] = [list(out.shape), bool(np.isfinite(out).all())]
    return {"shapes": shapes}


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items()
          if name.startswith("check_")}
# Minutes on a 2-core CPU: run by the slow tests only.
SLOW_CHECKS = ("compiled", "tf_data", "registered")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--no-tensorflow", action="store_true")
    p.add_argument("--checks", nargs="*",
                   default=[c for c in CHECKS if c not in SLOW_CHECKS],
                   choices=sorted(CHECKS))
    args = p.parse_args(argv)
    if args.no_tensorflow:
        for name in NOT_WITHOUT_TENSORFLOW:
            sys.modules[name] = None
    os.makedirs(args.out_dir, exist_ok=True)
    results = {}
    for name in args.checks:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            results[name] = CHECKS[name](args.out_dir)
        except Exception:  # noqa: BLE001 - recorded for the test to show
            results[name] = {"error": traceback.format_exc()}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        results[name]["cpu_seconds"] = round(time.process_time() - cpu, 1)
        print(f"{name}: {results[name]['seconds']} s ({results[name]['cpu_seconds']} s CPU)",
              flush=True)
    with open(os.path.join(args.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
