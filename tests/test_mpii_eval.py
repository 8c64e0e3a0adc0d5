"""MPII PCKh reproduces the published validation scores of reference predictions."""

import re

import numpy as np
import pytest

from keras_dpn.evaluation import mpii


@pytest.fixture(scope="module")
def gt(test_data_dir):
    return mpii.load_ground_truth(test_data_dir / "mpii" / "gt_valid.mat")


@pytest.fixture(scope="module")
def pred_dir(test_data_dir):
    return test_data_dir / "mpii" / "reference_preds"


def test_ground_truth_layout(gt):
    assert gt["joints"].shape == (2958, 16, 2)
    assert gt["headboxes"].shape == (2958, 2, 2)
    assert gt["joint_names"][:3] == ["rank", "rkne", "rhip"]


def test_tompson_published_pckh(gt, pred_dir):
    # Tompson et al. CVPR'15, MPII validation: PCKh@0.5 mean 82.34.
    res = mpii.pckh(mpii.load_predictions(pred_dir / "tompson.h5"), gt, one_based=True)
    assert abs(res.mean[0.5] - 82.34) < 0.01
    assert 0.1 in res.per_joint and res.mean[0.1] < res.mean[0.5]


# bearpaw/pytorch-pose README, PCKh@0.5 "(last)" rows: Head, Shoulder, Elbow,
# Wrist, Hip, Knee, Ankle, Mean (that repository's mean is unweighted).
BEARPAW = {
    "bearpaw-hg_s2_b1.mat": (95.80, 94.57, 88.12, 83.31, 86.24, 80.88, 77.44, 86.76),
    "bearpaw-hg_s8_b1.mat": (96.79, 95.19, 90.08, 85.32, 87.48, 84.26, 80.73, 88.64),
}


@pytest.mark.parametrize("name", sorted(BEARPAW))
def test_bearpaw_published_table(gt, pred_dir, name):
    res = mpii.evaluate_file(pred_dir / name, gt)
    g = res.grouped(0.5)
    got = [g[k] for k in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")]
    got.append(res.mean_unweighted[0.5])
    np.testing.assert_allclose(got, BEARPAW[name], atol=0.005 + 1e-9)


def test_newell_and_layouts(gt, pred_dir):
    # newell.h5 is stored (N, 16, 2), tompson.h5 (2, 16, N): both load as (N, 16, 2).
    assert mpii.load_predictions(pred_dir / "newell.h5").shape == (2958, 16, 2)
    assert mpii.load_predictions(pred_dir / "tompson.h5").shape == (2958, 16, 2)
    res = mpii.evaluate_file(pred_dir / "newell.h5", gt)
    assert round(res.mean[0.5], 2) == 88.43


def test_zero_based_predictions_and_mat_round_trip(gt, pred_dir, tmp_path):
    one_based = mpii.load_predictions(pred_dir / "bearpaw-hg_s1_b1.mat")
    ref = mpii.pckh(one_based, gt, one_based=True)
    # This package's 0-based keypoints: shifted by +1 inside pckh.
    zero = mpii.pckh(one_based - 1.0, gt)
    assert zero.mean == ref.mean
    # save_predictions writes the 1-based convention that published files use.
    path = mpii.save_predictions(tmp_path / "preds.mat", one_based - 1.0)
    np.testing.assert_allclose(mpii.load_predictions(path), one_based)
    table = ref.table("hg_s1")
    assert "Head" in table and "@0.5" in table and "@0.1" in table
    assert len(ref.joint_table().splitlines()) == 17


def test_bad_inputs(gt, pred_dir, tmp_path):
    preds = mpii.load_predictions(pred_dir / "newell.h5")
    with pytest.raises(ValueError, match="2958"):
        mpii.pckh(preds[:100], gt)
    with pytest.raises(ValueError, match="Received: path="):
        mpii.load_predictions(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="Received: path="):
        mpii.load_ground_truth(tmp_path / "missing.mat")
    # Non-finite predictions are an error naming the rows (they used to count as
    # misses, which gave a diverged model a score).
    from keras_dpn.evaluation import NonFinitePredictionError
    nan = preds.copy()
    nan[[3, 70], 9] = np.nan
    nan[100, 2, 1] = np.inf
    with pytest.raises(NonFinitePredictionError,
                       match=r"^3 of 2958 MPII predictions .* ground-truth row\(s\) 3, 70, 100\."):
        mpii.pckh(nan, gt, one_based=True)
    with pytest.raises(ValueError, match=r"1 of 2 MPII .* row\(s\) 70\."):
        mpii.pckh(nan[[4, 70]], gt, indices=[4, 70])  # a part of the split: rows named


def test_cli_prints_table(test_data_dir, pred_dir, capsys):
    mpii.main([str(test_data_dir / "mpii" / "gt_valid.mat"), str(pred_dir / "tompson.h5")])
    out = capsys.readouterr().out
    assert "tompson" in out and "82.34" in out


def test_cli_errors_are_one_line(test_data_dir, pred_dir, tmp_path, capsys):
    """Every error of ``python -m keras_dpn.evaluation.mpii`` is one line and exit
    status 2 (they were tracebacks; a text file as the .mat was scipy's MatReadError)."""
    gt_file = str(test_data_dir / "mpii" / "gt_valid.mat")
    text_mat = tmp_path / "notes.mat"
    text_mat.write_text("not a MATLAB file\n")
    text_h5 = tmp_path / "notes.h5"
    text_h5.write_text("not an HDF5 file\n")
    (tmp_path / "preds.txt").write_text("1 2 3\n")
    cases = [
        ([str(text_mat), str(pred_dir / "tompson.h5")],
         r"Not a readable MATLAB \.mat file \(.*\)\. Received: path='.*notes\.mat'"),
        ([gt_file, str(text_mat)], r"Not a readable MATLAB \.mat file.*notes\.mat"),
        ([gt_file, str(text_h5)], r"Not a readable HDF5 file \(.*\)\. Received: path='.*notes\.h5'"),
        ([gt_file, str(tmp_path / "missing.h5")], r"Prediction file not found.*missing\.h5"),
        ([str(tmp_path / "missing.mat"), str(pred_dir / "tompson.h5")],
         r"ground truth file not found.*missing\.mat"),
        ([gt_file, str(pred_dir / "tompson.h5"), str(tmp_path / "preds.txt")],
         r"must be \.mat or \.h5.*preds\.txt"),
    ]
    for argv, pattern in cases:
        assert mpii.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("python -m keras_dpn.evaluation.mpii: error: "), err
        assert re.search(pattern, err), (pattern, err)


@pytest.fixture(scope="module")
def mpii_sample_shards(sample_dir, tmp_path_factory):
    from keras_dpn.data import build_mpii_shards
    out = tmp_path_factory.mktemp("mpii_shards")
    build_mpii_shards(sample_dir / "mpii" / "valid_sample.json", sample_dir / "mpii" / "images",
                      str(out / "mpii"), 1, num_workers=1, progress=False, verbose=False)
    return str(out / "mpii-*")


def test_sample_ground_truth_through_pipeline_scores_100(gt, mpii_sample_shards):
    """The data pipeline's 0-based keypoints, +1 in pckh, land on gt_valid.mat's 1-based ones."""
    from keras_dpn.data import build_dataset
    ds = build_dataset(mpii_sample_shards, dataset="mpii", training=False, batch_size=8,
                       input_size=(64, 64), heatmap_size=(16, 16), verbose=False)
    kp, rows = [], []
    for _, meta in ds:
        kp.append(meta["keypoints"].numpy())
        rows.append(meta["person_id"].numpy())
    kp, rows = np.concatenate(kp), np.concatenate(rows)
    assert sorted(rows.tolist()) == [0, 1, 2, 3, 4]
    res = mpii.pckh(kp[..., :2], gt, indices=rows, thresholds=(0.5, 0.1, 0.01))
    assert res.num_people == 5
    assert res.mean[0.01] == 100.0
    # Forgetting the 0/1-based shift is visible at a tight threshold.
    assert mpii.pckh(kp[..., :2], gt, indices=rows, one_based=True,
                     thresholds=(0.01,)).mean[0.01] < 100.0


def test_mpii_callback_logs_pckh(gt, test_data_dir, mpii_sample_shards, tmp_path):
    import keras
    from keras_dpn.training.callbacks import MPIIEvaluationCallback
    from keras_dpn.data import build_dataset
    from keras_dpn.training.losses import JointsMSE
    kwargs = dict(dataset="mpii", batch_size=4, input_size=(64, 64), heatmap_size=(16, 16),
                  verbose=False)
    train = build_dataset(mpii_sample_shards, training=True, **kwargs)
    val = build_dataset(mpii_sample_shards, training=False, **kwargs)
    inputs = keras.Input((64, 64, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(16, 4, strides=4)(inputs))
    model.compile(optimizer="adam", loss=JointsMSE())
    cb = MPIIEvaluationCallback(val, test_data_dir / "mpii" / "gt_valid.mat",
                                output_dir=tmp_path, verbose=0)
    history = model.fit(train, epochs=1, verbose=0, shuffle=False, callbacks=[
        cb, keras.callbacks.ModelCheckpoint(str(tmp_path / "best.weights.h5"),
                                            monitor="val_PCKh", mode="max",
                                            save_best_only=True, save_weights_only=True)])
    assert 0.0 <= history.history["val_PCKh"][0] <= 100.0
    assert "val_PCKh_0.1" in history.history
    assert cb.result.num_people == 5
    assert (tmp_path / "best.weights.h5").exists()
    saved = mpii.load_predictions(tmp_path / "pred_valid.mat")
    assert saved.shape == (5, 16, 2)


def test_mpii_callback_stops_training_on_non_finite_predictions(test_data_dir, tmp_path):
    import keras
    import tensorflow as tf
    from keras_dpn.training.callbacks import MPIIEvaluationCallback
    from keras_dpn.training.losses import JointsMSE
    from keras_dpn.training.trainer import TrainingDivergedError
    n = 4
    images = np.zeros((n, 64, 64, 3), "float32")
    meta = {"image_id": np.array([11, 12, 13, 14], np.int64), "person_id": np.arange(n),
            "center": np.full((n, 2), 32.0, "float32"), "scale": np.full((n, 2), 64.0, "float32"),
            "score": np.ones(n, "float32")}
    val = tf.data.Dataset.from_tensor_slices((images, meta)).batch(n)
    train = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros((n, 16, 16, 16), "float32"), np.ones((n, 16), "float32"))).batch(n)
    inputs = keras.Input((64, 64, 3))
    nan = keras.initializers.Constant(float("nan"))
    model = keras.Model(inputs, keras.layers.Conv2D(16, 4, strides=4, kernel_initializer=nan)(inputs))
    model.compile(optimizer="adam", loss=JointsMSE())
    cb = MPIIEvaluationCallback(val, test_data_dir / "mpii" / "gt_valid.mat",
                                output_dir=tmp_path, verbose=0)
    with pytest.raises(TrainingDivergedError,
                       match=r"after epoch 1 .* 4 of 4 predictions of batch 1 .* "
                             r"image id\(s\) 11, 12, 13, 14\."):
        model.fit(train, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    assert cb.result is None and not (tmp_path / "pred_valid.mat").exists()
