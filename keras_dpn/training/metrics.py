"""Training-time metrics on heatmaps.

:class:`HeatmapPCK` is the heatmap accuracy that the HRNet / SimpleBaseline
reference prints during training (``lib/core/evaluate.py: accuracy``): the
argmax of each predicted heatmap is compared with the argmax of the target
heatmap; a joint counts as correct when the distance, normalized by a tenth of
the heatmap size, is below 0.5. It is a cheap proxy to watch while training;
the numbers to publish come from :mod:`keras_dpn.evaluation`.
"""

import keras
from keras import ops


def _argmax_coords(heatmaps):
    """Integer (x, y) of each channel's maximum and the maximum, for (B, h, w, K) maps."""
    shape = ops.shape(heatmaps)
    width = shape[2]
    flat = ops.reshape(heatmaps, (shape[0], -1, shape[3]))  # (B, h*w, K)
    idx = ops.argmax(flat, axis=1)
    maxval = ops.max(flat, axis=1)
    x = ops.cast(idx % width, "float32")
    y = ops.cast(idx // width, "float32")
    return x, y, maxval


@keras.saving.register_keras_serializable(package="keras_dpn")
class HeatmapPCK(keras.metrics.Metric):
    """PCK of heatmap argmaxes, as the reference's training accuracy.

    For each sample and joint, the integer argmax of the prediction (set to
    ``(0, 0)`` where the prediction's maximum is not positive) is compared with
    the argmax of the target. Joints whose target argmax is not beyond pixel 1
    in both x and y (empty target heatmaps: invisible or dropped joints) are
    not counted. The distance is normalized by ``(h / 10, w / 10)`` for
    ``(x, y)`` (the reference pairs x with the height and y with the width;
    kept so that numbers match it) and compared with ``threshold``.

    Per batch, the accuracy of every joint with at least one counted sample is
    computed and their mean is the batch accuracy, exactly as the reference;
    across batches the metric keeps the reference's running average weighted
    by the number of such joints. ``sample_weight`` is ignored: the targets
    already tell which joints count.

    Args:
        threshold: normalized distance below which a joint is correct.
        name: metric name.
        dtype: dtype of the metric's variables.

    Example:
    >>> import numpy as np
    >>> t = np.zeros((1, 64, 48, 2), "float32"); t[0, 20, 10, 0] = 1; t[0, 30, 30, 1] = 1
    >>> p = np.zeros_like(t); p[0, 20, 12, 0] = 1; p[0, 40, 30, 1] = 1
    >>> m = HeatmapPCK()
    >>> m.update_state(t, p)
    >>> float(m.result())  # joint 0: 2 / 6.4 < 0.5; joint 1: 10 / 4.8 > 0.5
    0.5
    """

    def __init__(self, threshold=0.5, name="pck", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if not threshold > 0:
            raise ValueError(f"`threshold` must be positive. Received: threshold={threshold!r}")
        self.threshold = float(threshold)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        if len(y_pred.shape) != 4:
            raise ValueError(
                "HeatmapPCK expects heatmaps of shape (batch, height, width, joints). "
                f"Received: y_pred.shape={tuple(y_pred.shape)}")
        shape = ops.shape(y_pred)
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        px, py, pmax = _argmax_coords(y_pred)
        tx, ty, _ = _argmax_coords(y_true)
        # The reference zeroes predictions whose peak is not positive.
        found = ops.cast(pmax > 0, "float32")
        px, py = px * found, py * found
        valid = ops.logical_and(tx > 1, ty > 1)
        dist = ops.sqrt(ops.square((px - tx) / (h / 10.0)) + ops.square((py - ty) / (w / 10.0)))
        valid_f = ops.cast(valid, "float32")
        correct = ops.cast(dist < self.threshold, "float32") * valid_f
        n_valid = ops.sum(valid_f, axis=0)  # (K,)
        n_correct = ops.sum(correct, axis=0)
        has = ops.cast(n_valid > 0, "float32")
        per_joint = ops.divide_no_nan(n_correct, n_valid)
        # Reference: avg_acc = mean over joints with a valid sample, cnt = their
        # number, meter.update(avg_acc, cnt) -> total += sum of those accuracies.
        self.total.assign_add(ops.cast(ops.sum(per_joint * has), self.dtype))
        self.count.assign_add(ops.cast(ops.sum(has), self.dtype))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(threshold=self.threshold)
        return config
