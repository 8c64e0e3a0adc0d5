"""Heatmap losses.

:class:`JointsMSE` is the loss of the HRNet / SimpleBaseline reference: for
every joint, half the mean squared error between the predicted and the target
heatmap, both multiplied by the joint's target weight, averaged over joints
(and over the batch). It plugs into ``model.compile(loss=...)`` and reads the
per-joint target weights that the data pipeline yields as the third element of
each training batch, which Keras passes to the loss as ``sample_weight``.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dpn")
class JointsMSE(keras.losses.Loss):
    """Joints mean squared error with per-joint target weights.

    With heatmaps ``P`` and targets ``T`` of shape ``(B, h, w, K)`` and target
    weights ``W`` of shape ``(B, K)`` the value is::

        1/K * sum_k 0.5 * mean_{b, y, x} (W[b, k] * P[b, y, x, k] - W[b, k] * T[b, y, x, k]) ** 2

    which is exactly the reference's loss (note that the weight multiplies
    both sides, so it enters squared; with the usual 0/1 visibility weights
    this makes no difference, with the reference's per-joint weights such as
    1.5 for wrists it does).

    ``model.fit`` on ``(images, heatmaps, target_weight)`` batches hands the
    ``(B, K)`` target weights to this loss as ``sample_weight``. The loss
    reduces the pixels itself and applies the weights per ``(sample, joint)``,
    so Keras never broadcasts a ``(B, K)`` weight against a per-pixel loss
    (which lines the weight's axes up with the wrong heatmap axes: an error
    in most shapes, silently wrong in some). A weight of shape ``(B, K, 1)``
    (the PyTorch reference layout) is accepted as well; any other shape is an
    error.

    Like every Keras loss with a ``"sum_over_batch_size"`` reduction, inside
    ``strategy.run`` of a ``tf.distribute`` strategy the value comes out
    already divided by the number of replicas (Keras does this so that the
    summed gradients are the global mean); a custom training loop must not
    divide by the replica count again.

    Args:
        use_target_weight: if False, ``sample_weight`` is ignored and the loss
            is the plain ``0.5 * MSE`` over all pixels and joints.
        reduction: Keras loss reduction. The default,
            ``"sum_over_batch_size"``, averages over samples and joints.
        name: loss name.
        dtype: dtype of the loss computation; ``None`` means the Keras float
            type, so mixed-precision heatmaps are upcast before squaring.

    Example:
    >>> import numpy as np
    >>> loss = JointsMSE()
    >>> pred = np.zeros((2, 4, 4, 3), "float32")
    >>> target = np.ones((2, 4, 4, 3), "float32")
    >>> weight = np.array([[1, 1, 0], [1, 0, 0]], "float32")
    >>> round(float(loss(target, pred, sample_weight=weight)), 4)  # 0.5 * 3 / 6
    0.25
    """

    def __init__(self, use_target_weight=True, reduction="sum_over_batch_size",
                 name="joints_mse", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(use_target_weight, bool):
            raise ValueError(
                "`use_target_weight` must be a bool. "
                f"Received: use_target_weight={use_target_weight!r}")
        self.use_target_weight = use_target_weight

    def call(self, y_true, y_pred):
        """Per (sample, joint) loss, shape ``(B, K)``: 0.5 * pixel-mean of the squared error."""
        if len(y_pred.shape) != 4:
            raise ValueError(
                "JointsMSE expects heatmaps of shape (batch, height, width, joints). "
                f"Received: y_pred.shape={tuple(y_pred.shape)}")
        return 0.5 * ops.mean(ops.square(y_pred - y_true), axis=(1, 2))

    def __call__(self, y_true, y_pred, sample_weight=None):
        if not self.use_target_weight or sample_weight is None:
            return super().__call__(y_true, y_pred)
        weight = ops.convert_to_tensor(sample_weight, dtype=self.dtype)
        if len(weight.shape) == 3 and weight.shape[-1] == 1:
            weight = ops.squeeze(weight, axis=-1)
        k = y_pred.shape[-1]
        if len(weight.shape) != 2 or (weight.shape[-1] is not None and k is not None
                                      and weight.shape[-1] != k):
            raise ValueError(
                "JointsMSE expects target weights of shape (batch, joints) = "
                f"(B, {k}), or (B, {k}, 1). Received: "
                f"sample_weight.shape={tuple(weight.shape)}")
        # Both prediction and target are multiplied by the weight in the
        # reference, so the squared error scales with the weight squared.
        return super().__call__(y_true, y_pred, sample_weight=ops.square(weight))

    def get_config(self):
        config = super().get_config()
        config.update(use_target_weight=self.use_target_weight)
        return config
