"""predict_coco and COCOEvaluationCallback with model.fit, ModelCheckpoint and EarlyStopping.

The evaluation data is built from the ground truth of tests/data/coco/test_coco.json:
each person's keypoints are mapped into its crop and encoded as heatmaps, and
those heatmaps are the model's "images". An identity model then predicts the
ground truth, so the whole path (crop geometry, decoding, inverse affine,
COCO evaluation, logs) must give an AP close to 1.
"""

import csv
import json

import numpy as np
import pytest

import keras
import tensorflow as tf

from keras_dpn.core import transforms
from keras_dpn.training.callbacks import COCOEvaluationCallback
from keras_dpn.core.codec import HeatmapCodec, flip_back
from keras_dpn.evaluation import predict_coco
from keras_dpn.core.keypoints import COCO_17
from keras_dpn.training.losses import JointsMSE

INPUT, HEATMAP = (256, 192), (64, 48)


@pytest.fixture(scope="module")
def ann_file(test_data_dir):
    return test_data_dir / "coco" / "test_coco.json"


@pytest.fixture(scope="module")
def codec():
    return HeatmapCodec(INPUT, HEATMAP, sigma=2.0)


@pytest.fixture(scope="module")
def crops(ann_file, codec):
    """Ground-truth heatmaps per annotated person and the eval metadata."""
    with open(ann_file) as f:
        anns = [a for a in json.load(f)["annotations"] if a["num_keypoints"] > 0]
    center, scale = transforms.box_to_center_scale(
        np.array([a["bbox"] for a in anns]), aspect_ratio=INPUT[1] / INPUT[0])
    heatmaps, weights = [], []
    for a, c, s in zip(anns, center, scale):
        kp = np.array(a["keypoints"], np.float64).reshape(17, 3)
        m = transforms.get_affine_transform(c, s, 0.0, INPUT)
        hm, w = codec.encode(transforms.affine_transform_points(kp[:, :2], m), kp[:, 2] > 0)
        heatmaps.append(hm)
        weights.append(w)
    meta = {"image_id": np.array([a["image_id"] for a in anns], np.int64),
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "score": np.ones(len(anns), np.float32)}
    return np.stack(heatmaps).astype(np.float32), np.stack(weights), meta


def eval_dataset(crops, batch=4):
    heatmaps, _, meta = crops
    return tf.data.Dataset.from_tensor_slices((heatmaps, meta)).batch(batch)


def train_dataset(crops):
    heatmaps, weights, _ = crops
    return tf.data.Dataset.from_tensor_slices((heatmaps, heatmaps, weights)).batch(8)


def identity_model():
    inputs = keras.Input(HEATMAP + (17,))
    eye = np.eye(17, dtype="float32").reshape(1, 1, 17, 17)
    outputs = keras.layers.Conv2D(17, 1, use_bias=False, name="head",
                                  kernel_initializer=keras.initializers.Constant(eye))(inputs)
    model = keras.Model(inputs, outputs)
    # A zero learning rate keeps the identity through fit.
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=JointsMSE())
    return model


def test_predict_coco_ground_truth_round_trip(crops, codec, ann_file):
    from keras_dpn.evaluation import COCOEvaluator
    results = predict_coco(identity_model(), eval_dataset(crops), codec=codec,
                           flip_test=False, verbose=0)
    assert len(results) == len(crops[0])
    assert {"image_id", "category_id", "keypoints", "score", "center", "scale"} <= set(results[0])
    ev = COCOEvaluator(ann_file)
    ev.add_results(results)
    assert ev.evaluate()["AP"] > 0.9


def test_predict_coco_flip_test_matches_numpy(crops, codec):
    heatmaps, _, meta = crops
    keras.utils.set_random_seed(0)
    inputs = keras.Input(HEATMAP + (17,))
    model = keras.Model(inputs, keras.layers.Conv2D(17, 3, padding="same")(inputs))
    results = predict_coco(model, eval_dataset(crops, batch=5), codec=codec,
                           keypoint_spec=COCO_17, flip_test=True, verbose=0)
    out = model.predict(heatmaps, verbose=0)
    out_flipped = model.predict(heatmaps[:, :, ::-1], verbose=0)
    merged = 0.5 * (out + flip_back(out_flipped, COCO_17.flip_index, shift=True))
    expected = codec.decode_to_image(merged, meta["center"], meta["scale"])
    got = np.array([r["keypoints"] for r in results]).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_predict_coco_bad_input(crops, codec):
    empty = eval_dataset(crops).take(0)
    with pytest.raises(ValueError, match="no batch"):
        predict_coco(identity_model(), empty, codec=codec, verbose=0)
    with pytest.raises(ValueError, match="17 joints|16 joints"):
        predict_coco(identity_model(), eval_dataset(crops), codec=codec,
                     keypoint_spec="mpii", verbose=0, flip_test=False)


def test_callback_logs_val_ap_for_checkpoint(crops, codec, ann_file, tmp_path):
    model = identity_model()
    cb = COCOEvaluationCallback(eval_dataset(crops), ann_file, codec=codec, flip_test=False,
                                output_dir=tmp_path, verbose=0)
    ckpt = tmp_path / "best.weights.h5"
    history = model.fit(train_dataset(crops), epochs=1, verbose=0, shuffle=False, callbacks=[
        cb,  # before the callbacks that read val_AP
        keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_AP", mode="max",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
    ])
    for key in ("val_AP", "val_AP50", "val_AP75", "val_APm", "val_APl", "val_AR"):
        assert key in history.history
    assert history.history["val_AP"][0] > 0.9
    assert ckpt.exists()
    assert (tmp_path / "keypoints_val_results.json").exists()
    with open(tmp_path / "log.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["val_AP"]) == pytest.approx(history.history["val_AP"][0])


def test_callback_steps_scores_the_images_it_covered(crops, codec, ann_file):
    # A quick subset (steps=1 of batch 3: the people of images 785 and 40083) is
    # scored on its own images; against every image of the annotation file, the
    # 9 people of the other two would count as missed.
    cb = COCOEvaluationCallback(eval_dataset(crops, batch=3), ann_file, codec=codec,
                                flip_test=False, steps=1, verbose=0)
    cb.set_model(identity_model())
    assert cb.evaluate()["AP"] > 0.9
    assert sorted(cb.evaluator.coco_eval.params.imgIds) == [785, 40083]
    assert cb.evaluator.evaluate()["AR"] < 0.3


def test_checkpoint_keeps_best_and_early_stopping(crops, codec, ann_file, tmp_path):
    model = identity_model()
    cb = COCOEvaluationCallback(eval_dataset(crops), ann_file, codec=codec, verbose=0)
    scripted = [0.1, 0.3, 0.4, 0.2, 0.5]
    # The AP sequence is scripted so that "best" is known; the real path is
    # covered by the test above.
    cb.evaluate = lambda epoch=None: {"AP": scripted[epoch], "AP50": 0.0, "AP75": 0.0,
                                      "APm": 0.0, "APl": 0.0, "AR": 0.0}
    history = model.fit(train_dataset(crops), epochs=5, verbose=0, shuffle=False, callbacks=[
        cb,
        keras.callbacks.ModelCheckpoint(str(tmp_path / "best_{epoch}.weights.h5"),
                                        monitor="val_AP", mode="max", save_best_only=True,
                                        save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_AP", mode="max", patience=1),
    ])
    assert history.history["val_AP"] == [0.1, 0.3, 0.4, 0.2]  # stopped after epoch 4
    saved = sorted(p.name for p in tmp_path.glob("best_*.weights.h5"))
    assert saved == ["best_1.weights.h5", "best_2.weights.h5", "best_3.weights.h5"]
    assert cb.best == 0.4


def test_every_k_epochs_and_last(crops, codec, ann_file):
    model = identity_model()
    cb = COCOEvaluationCallback(eval_dataset(crops), ann_file, codec=codec, every=2,
                                verbose=0)
    calls = []
    cb.evaluate = lambda epoch=None: calls.append(epoch) or {k: 0.5 for k in cb.logged}
    history = model.fit(train_dataset(crops), epochs=3, verbose=0, shuffle=False, callbacks=[cb])
    assert calls == [1, 2]  # every 2nd epoch, and the last one
    assert history.history["val_AP"] == [0.5, 0.5]


def test_callback_bad_arguments(crops, ann_file, tmp_path):
    with pytest.raises(ValueError, match="every"):
        COCOEvaluationCallback(eval_dataset(crops), ann_file, every=0)
    with pytest.raises(ValueError, match="logged"):
        COCOEvaluationCallback(eval_dataset(crops), ann_file, logged=("mAP",))
    with pytest.raises(ValueError, match="annotation_file"):
        COCOEvaluationCallback(eval_dataset(crops), tmp_path / "missing.json")


def test_codec_for_model():
    from keras_dpn.evaluation import codec_for_model
    inputs = keras.Input((256, 192, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(17, 4, strides=4)(inputs))
    codec = codec_for_model(model)
    assert codec.input_size == (256, 192) and codec.heatmap_size == (64, 48)
    with pytest.raises(ValueError, match="unknown spatial sizes"):
        codec_for_model(keras.Sequential([keras.Input((None, None, 3)),
                                          keras.layers.Conv2D(17, 1)]))


@pytest.fixture(scope="module")
def sample_shards(sample_dir, tmp_path_factory):
    from keras_dpn.data import build_coco_shards
    out = tmp_path_factory.mktemp("shards")
    build_coco_shards(sample_dir / "coco" / "annotations" / "person_keypoints_sample.json",
                      sample_dir / "coco" / "images", str(out / "sample"), 1, num_workers=1,
                      progress=False, verbose=False)
    return str(out / "sample-*")


def test_real_eval_batches(sample_dir, sample_shards):
    """The data pipeline's eval batches feed predict_coco and the evaluator as they are."""
    from keras_dpn.data import build_dataset
    from keras_dpn.evaluation import COCOEvaluator
    ann = sample_dir / "coco" / "annotations" / "person_keypoints_sample.json"
    ds = build_dataset(sample_shards, training=False, batch_size=32, input_size=(64, 48),
                       heatmap_size=(16, 12), verbose=False)
    # Ground-truth keypoints of the meta, collected per batch: AP 1.
    ev = COCOEvaluator(ann)
    for _, meta in ds:
        ev.update(meta["image_id"], meta["keypoints"], meta["center"], meta["scale"],
                  meta["score"])
    assert len(ev) == 124
    assert ev.evaluate()["AP"] == 1.0
    inputs = keras.Input((64, 48, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(17, 4, strides=4)(inputs))
    results = predict_coco(model, ds, steps=2, verbose=0)
    assert len(results) == 64
    ev.reset()
    ev.add_results(results)
    assert 0.0 <= ev.evaluate()["AP"] <= 1.0


def nan_model():
    """The identity model with NaN weights: what a diverged model predicts."""
    model = identity_model()
    head = model.get_layer("head")
    head.set_weights([np.full_like(head.get_weights()[0], np.nan)])
    return model


def test_predict_coco_refuses_non_finite_predictions(crops, codec):
    from keras_dpn.evaluation import NonFinitePredictionError
    ids = crops[2]["image_id"][:4].tolist()
    pattern = (r"^4 of 4 predictions of batch 1 \(people 1-4 of the dataset\) hold NaN or "
               r"infinite values on image id\(s\) " + ", ".join(map(str, dict.fromkeys(ids))))
    with pytest.raises(NonFinitePredictionError, match=pattern):
        predict_coco(nan_model(), eval_dataset(crops), codec=codec, flip_test=False, verbose=0)


def test_callback_stops_training_on_non_finite_predictions(crops, codec, ann_file, tmp_path):
    from keras_dpn.training.trainer import TrainingDivergedError
    model = nan_model()
    cb = COCOEvaluationCallback(eval_dataset(crops), ann_file, codec=codec, flip_test=False,
                                output_dir=tmp_path, verbose=0)
    ckpt = tmp_path / "best.weights.h5"
    with pytest.raises(TrainingDivergedError,
                       match=r"evaluation after epoch 1 got non-finite predictions\. 4 of 4 "
                             r"predictions of batch 1 .* image id\(s\) \d+"):
        model.fit(train_dataset(crops), epochs=2, verbose=0, shuffle=False, callbacks=[
            cb, keras.callbacks.ModelCheckpoint(str(ckpt), monitor="val_AP", mode="max",
                                                save_best_only=True, save_weights_only=True)])
    assert not ckpt.exists() and not (tmp_path / "keypoints_val_results.json").exists()
    assert cb.history == []


def test_trainer_restores_last_good_epoch_when_evaluation_diverges(crops, codec, ann_file,
                                                                    tmp_path):
    """Finite loss, NaN predictions (BatchNorm moving variance): the Trainer stops."""
    from keras_dpn.training import trainer as training

    def model_fn():
        inputs = keras.Input(HEATMAP + (17,))
        x = keras.layers.Conv2D(17, 1, name="head")(inputs)
        return keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))

    def poison(epoch, logs):
        if epoch == 1:  # the loss stays finite: training mode uses batch statistics
            bn = trainer.model.get_layer("bn")
            bn.moving_variance.assign(np.full((17,), np.nan, "float32"))

    cb = COCOEvaluationCallback(eval_dataset(crops), ann_file, codec=codec, flip_test=False,
                                verbose=0)
    trainer = training.Trainer(model_fn, tmp_path / "run", strategy="default", epochs=3,
                               steps_per_epoch=2, verbose=0, tensorboard=False)
    with pytest.raises(training.TrainingDivergedError,
                       match=r"after epoch 2 got non-finite .*/ckpt-1 is untouched and its "
                             r"weights were restored"):
        trainer.fit(train_dataset(crops),
                    callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=poison), cb])
    assert training.read_state(tmp_path / "run")["epoch"] == 1
    assert np.isfinite(trainer.model.get_layer("bn").moving_variance.numpy()).all()
    assert [epoch for epoch, _ in cb.history] == [0]
