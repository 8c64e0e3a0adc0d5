"""QAT and pruning (tfmot, in a subprocess) ending in batch-1 full-integer TFLite files.

tfmot switches tf.keras to tf_keras for the whole process, so nothing here
imports keras_dpn.deploy.qat's training code in the test process: everything goes
through ``python -m keras_dpn.deploy.qat``.
"""

import gzip
import json
import os
import sys

import numpy as np
import pytest

import deploy_helpers as dh


def test_cli_validates_arguments(tmp_path, capsys):
    # Validation happens before TensorFlow / tfmot are imported, so calling
    # main() in this process is safe.
    from keras_dpn.deploy import qat
    with pytest.raises(SystemExit) as info:
        qat.main(["--model", "m.keras", "--out", str(tmp_path / "x.txt")])
    assert info.value.code == 2
    assert "--out must end with .tflite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        qat.main(["--model", "m.keras", "--out", str(tmp_path / "x.tflite"), "--sparsity", "1.5"])
    assert os.listdir(tmp_path) == []
    assert "tensorflow_model_optimization" not in sys.modules


def test_plan_refuses_a_model_that_is_not_one_path():
    # The rebuild reads the layers in order; a branch would be dropped silently.
    import keras

    from keras_dpn.deploy import qat
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 1, name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, name="b")(inputs)
    model = keras.Model(inputs, keras.layers.Add(name="sum")([a, b]))
    with pytest.raises(ValueError, match="layer 'b' does not take the previous"):
        qat._plan(model)


def test_plan_expands_every_dpm_block():
    import keras_dpn
    from keras_dpn.deploy import qat
    steps = qat._plan(keras_dpn.DPN2_32(input_shape=(64, 48, 3)))
    convs = [cfg["name"] for kind, cfg, _ in steps if kind == "conv"]
    # stem, 3 + 1 projection in conv1, conv2_0, 2 DPMs x 6 blocks x 3, head.
    assert len(convs) == 1 + 3 * 3 + 1 + 1 + 2 * 6 * 3 + 1
    assert [c for c in convs if c.startswith("dpm2_")][:3] == [
        "dpm2_block1_d32_conv1", "dpm2_block1_d32_conv2", "dpm2_block1_d32_conv3"]


def test_run_subprocess_rejects_mode():
    from keras_dpn.deploy import qat
    with pytest.raises(ValueError, match="mode"):
        qat.run_subprocess("m.keras", "o.tflite", mode="distill")


@pytest.mark.slow
def test_qat_and_pruning_trained(tmp_path, trained_tiny):
    """Keypoint error of QAT / pruned int8 against Keras on a briefly trained model."""
    from keras_dpn.deploy import export
    from keras_dpn.core.codec import HeatmapCodec
    from keras_dpn.inference.estimator import PoseEstimator
    from keras_dpn.core.transforms import normalize_image
    model, _ = trained_tiny
    crops, _, _, _ = dh.sample_training_set()
    files = export.export_model(model, tmp_path / "q", formats=("tflite_int8",),
                                representative_data=crops, qat=True, prune=True,
                                qat_kwargs=dict(epochs=3), verbose=False)
    crops = crops[:dh.TRAIN_PEOPLE]  # where the model has learned peaks
    codec = HeatmapCodec((128, 96), (32, 24))
    ref = codec.decode(np.asarray(model.predict(normalize_image(crops), verbose=0)))[0] * 4
    errors = {}
    for fmt in ("tflite_int8", "tflite_qat", "tflite_pruned"):
        content = open(files[fmt], "rb").read()
        assert not set(export.tflite_ops(content)) & set(export.FORBIDDEN_TFLITE_OPS), fmt
        est = PoseEstimator(files[fmt])
        errors[fmt] = dh.mean_keypoint_error(codec.decode(est.predict_heatmaps(crops))[0] * 4,
                                             ref)
    qat_report = json.load(open(os.path.join(tmp_path, "q", "model_qat_int8.json")))
    prune_report = json.load(open(os.path.join(tmp_path, "q", "model_pruned_int8.json")))
    print("mean keypoint error vs Keras (px at 128x96):", errors)
    print("prune sparsity", prune_report["sparsity"], "gzip bytes", prune_report["tflite_gzip_bytes"])
    assert qat_report["rebuild_max_abs_diff"] < 1e-3
    assert prune_report["sparsity"] > 0.45
    # Sparse weights compress: the point of pruning for download size.
    int8_gzip = len(gzip.compress(open(files["tflite_int8"], "rb").read()))
    assert prune_report["tflite_gzip_bytes"] < 0.85 * int8_gzip
    assert errors["tflite_qat"] < 4.0
    # Measured ~14 px: 50 % pruning of a 2-minute model with 3 epochs of
    # recovery is destructive; the bound only guards against a broken file.
    assert errors["tflite_pruned"] < 30.0
