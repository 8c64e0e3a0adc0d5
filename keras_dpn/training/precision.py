"""Mixed precision: the dtype policy a model is built (and trained) in.

Shared by the Trainer (:mod:`keras_dpn.training.trainer`), the recipe's float32
rebuild and ``keras-dpn publish``, which rebuilds a run's model in float32.
"""

import contextlib

import keras

from keras_dpn.core import optional as _optional

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def resolve_precision(precision):
    """Maps ``True``/``False``/a policy name to a Keras dtype policy name.

    ``True`` picks ``mixed_float16`` on a GPU and ``mixed_bfloat16`` on a CPU
    (bfloat16 needs no loss scaling and is fast on AVX-512 BF16 CPUs), on
    every backend.
    """
    if precision in (None, False):
        return "float32"
    if precision is True:
        return "mixed_float16" if _optional.has_gpu() else "mixed_bfloat16"
    if precision not in PRECISIONS:
        raise ValueError(
            f"`mixed_precision` must be a bool or one of {PRECISIONS}. "
            f"Received: mixed_precision={precision!r}")
    return precision


@contextlib.contextmanager
def precision_policy(precision):
    """Sets the global Keras dtype policy for the block, then restores it.

    Layers keep the policy they were built with, so building the model inside
    this block is enough; the rest of the process is left as it was.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(resolve_precision(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
