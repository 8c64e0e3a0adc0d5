"""The learning-rate schedule of a run, computed from the optimizer's step counter.

:class:`EpochPiecewiseSchedule` is the paper's step schedule expressed in
epochs: the rate depends only on the optimizer's step counter, which the
checkpoint restores, so a resumed run gets exactly the learning rate the
uninterrupted run would have had. :func:`learning_rate_at` reads an
optimizer's current rate (through a loss-scale wrapper).
"""

import keras


@keras.saving.register_keras_serializable(package="keras_dpn")
class EpochPiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant learning rate with boundaries in epochs.

    ``lr(step) = initial * factor ** (number of boundaries <= step // steps_per_epoch)``.
    The rate depends only on the optimizer's step counter, which the
    checkpoint restores, so a resumed run follows the same schedule.

    Args:
        initial_learning_rate: rate of the first epochs (paper: 1e-3).
        steps_per_epoch: optimizer steps per epoch.
        boundaries: epochs (0-based) at which the rate is multiplied by
            ``factor`` (paper: 90 and 120).
        factor: multiplier per boundary (paper: 0.1).

    Example:
    >>> s = EpochPiecewiseSchedule(1e-3, steps_per_epoch=10, boundaries=(2, 3))
    >>> [round(float(s(i)), 6) for i in (0, 19, 20, 30)]
    [0.001, 0.001, 0.0001, 1e-05]
    """

    def __init__(self, initial_learning_rate, steps_per_epoch, boundaries=(90, 120), factor=0.1):
        if not (isinstance(steps_per_epoch, int) and steps_per_epoch >= 1):
            raise ValueError(
                "`steps_per_epoch` must be a positive int. "
                f"Received: steps_per_epoch={steps_per_epoch!r}")
        if list(boundaries) != sorted(boundaries) or any(b < 0 for b in boundaries):
            raise ValueError(
                f"`boundaries` must be increasing epochs >= 0. Received: boundaries={boundaries!r}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.steps_per_epoch = int(steps_per_epoch)
        self.boundaries = tuple(int(b) for b in boundaries)
        self.factor = float(factor)

    def __call__(self, step):
        epoch = keras.ops.floor_divide(keras.ops.cast(step, "int32"), self.steps_per_epoch)
        drops = keras.ops.zeros((), "float32")
        for boundary in self.boundaries:
            drops = drops + keras.ops.cast(keras.ops.greater_equal(epoch, boundary), "float32")
        return self.initial_learning_rate * keras.ops.power(self.factor, drops)

    def get_config(self):
        return dict(initial_learning_rate=self.initial_learning_rate,
                    steps_per_epoch=self.steps_per_epoch,
                    boundaries=list(self.boundaries), factor=self.factor)


def learning_rate_at(optimizer):
    """The optimizer's current learning rate as a Python float."""
    lr = optimizer.learning_rate
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        lr = optimizer.inner_optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
