"""JointsMSE and HeatmapPCK against numpy transcriptions of the reference."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from keras_dpn.training.losses import JointsMSE
from keras_dpn.training.metrics import HeatmapPCK


def reference_joints_mse(pred, target, weight, use_target_weight=True):
    """The reference loop: per joint 0.5 * MSE(pred * w, target * w), averaged over joints."""
    k = pred.shape[-1]
    loss = 0.0
    for j in range(k):
        p, t = pred[..., j].reshape(len(pred), -1), target[..., j].reshape(len(pred), -1)
        if use_target_weight:
            w = weight[:, j:j + 1]
            p, t = p * w, t * w
        loss += 0.5 * np.mean((p - t) ** 2)
    return loss / k


def reference_accuracy(output, target, thr=0.5):
    """numpy transcription of the reference `accuracy` (channels-last input)."""
    def max_preds(h):
        b, hh, ww, k = h.shape
        flat = h.transpose(0, 3, 1, 2).reshape(b, k, -1)
        idx = flat.argmax(2)
        maxval = flat.max(2)
        preds = np.stack([idx % ww, idx // ww], -1).astype(np.float32)
        return preds * (maxval > 0)[..., None]

    b, h, w, k = output.shape
    pred, targ = max_preds(output), max_preds(target)
    norm = np.array([h, w], np.float32) / 10
    accs = []
    for j in range(k):
        dists = []
        for n in range(b):
            if targ[n, j, 0] > 1 and targ[n, j, 1] > 1:
                dists.append(np.linalg.norm(pred[n, j] / norm - targ[n, j] / norm))
        if dists:
            accs.append(np.mean(np.array(dists) < thr))
    return np.mean(accs) if accs else 0.0, len(accs)


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    # Batch == heatmap width on purpose: a (B, K) weight broadcast against
    # (B, h, w, K) would line up with the width axis without any error.
    pred = rng.normal(size=(4, 5, 4, 3)).astype("float32")
    target = rng.normal(size=(4, 5, 4, 3)).astype("float32")
    weight = np.array([[1, 0, 1.5], [1, 1, 1], [0, 0, 1.2], [1, 1, 0]], "float32")
    return pred, target, weight


def test_joints_mse_matches_reference(tensors):
    pred, target, weight = tensors
    got = float(JointsMSE()(target, pred, sample_weight=weight))
    np.testing.assert_allclose(got, reference_joints_mse(pred, target, weight), rtol=1e-6)
    # (B, K, 1) weights, the PyTorch layout, give the same value.
    got3 = float(JointsMSE()(target, pred, sample_weight=weight[..., None]))
    np.testing.assert_allclose(got3, got, rtol=1e-6)


def test_joints_mse_without_weights(tensors):
    pred, target, weight = tensors
    ref = reference_joints_mse(pred, target, None, use_target_weight=False)
    np.testing.assert_allclose(float(JointsMSE()(target, pred)), ref, rtol=1e-6)
    np.testing.assert_allclose(
        float(JointsMSE(use_target_weight=False)(target, pred, sample_weight=weight)), ref,
        rtol=1e-6)


def test_joints_mse_rejects_bad_weight_shape(tensors):
    pred, target, weight = tensors
    with pytest.raises(ValueError, match="sample_weight.shape"):
        JointsMSE()(target, pred, sample_weight=weight[:, :2])
    with pytest.raises(ValueError, match="use_target_weight"):
        JointsMSE(use_target_weight="yes")


def test_joints_mse_config_round_trip():
    loss = JointsMSE(use_target_weight=False, name="l")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, JointsMSE) and again.use_target_weight is False


def _tiny_model(k):
    inputs = keras.Input((5, 4, 3))
    outputs = keras.layers.Conv2D(k, 1, name="head")(inputs)
    return keras.Model(inputs, outputs)


def test_fit_reads_target_weight_as_sample_weight(tensors):
    pred, target, weight = tensors
    keras.utils.set_random_seed(1)
    images = np.random.default_rng(1).normal(size=(4, 5, 4, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((images, target, weight)).batch(4)
    model = _tiny_model(3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=JointsMSE(),
                  metrics=[HeatmapPCK()])
    before = model.predict(images, verbose=0)
    # The loss Keras reports on the (images, heatmaps, target_weight) batch
    # is the reference value: the weights were applied per (sample, joint).
    logs = model.evaluate(ds, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], reference_joints_mse(before, target, weight),
                               rtol=1e-5)
    history = model.fit(ds, epochs=15, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert "pck" in history.history


def test_heatmap_pck_matches_reference():
    rng = np.random.default_rng(3)
    b, h, w, k = 6, 16, 12, 4
    target = np.zeros((b, h, w, k), "float32")
    for n in range(b):
        for j in range(k):
            if (n + j) % 5:  # some empty targets
                target[n, rng.integers(0, h), rng.integers(0, w), j] = 1.0
    target[0, 1, 5, 0] = 0  # argmax at y <= 1: not counted
    target[0, 1, 5, 0] = 2.0
    output = target + rng.normal(scale=0.6, size=target.shape).astype("float32")
    output[1, ..., 2] = -1.0  # no positive peak: predicted at (0, 0)
    m = HeatmapPCK()
    m.update_state(target, output)
    ref, cnt = reference_accuracy(output, target)
    np.testing.assert_allclose(float(m.result()), ref, rtol=1e-6)
    # Across batches: the reference's running average weighted by joint count.
    output2 = np.roll(output, 1, axis=0)
    m.update_state(target, output2)
    ref2, cnt2 = reference_accuracy(output2, target)
    np.testing.assert_allclose(float(m.result()), (ref * cnt + ref2 * cnt2) / (cnt + cnt2),
                               rtol=1e-6)
    m.reset_state()
    assert float(m.result()) == 0.0
