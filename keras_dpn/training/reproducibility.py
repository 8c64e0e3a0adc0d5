"""What a run starts from: seeds, deterministic ops, the reference head initialization.

* :func:`configure_reproducibility` -- seeds Python, NumPy, the backend and
  Keras; optionally makes the backend's ops deterministic.
* :func:`reference_head_init` -- redraws a model's heatmap head as the HRNet
  reference does, from a NumPy seed.

Example:
>>> import keras_dpn
>>> from keras_dpn.training.reproducibility import reference_head_init
>>> model = reference_head_init(keras_dpn.DPN(num_modules=1, input_shape=(64, 48, 3)), seed=0)
>>> float(abs(model.get_layer("heatmaps").get_weights()[1]).max())
0.0
"""

import os

import keras
import numpy as np

from keras_dpn.core import optional as _optional

# Imported on first use: seeding on JAX / PyTorch needs no TensorFlow.
tf = _optional.LazyModule("tensorflow", "Deterministic TensorFlow ops")


def configure_reproducibility(seed=None, deterministic=False):
    """Seeds Python, NumPy, the backend and Keras; optionally makes ops deterministic.

    Args:
        seed: int or None. Required when ``deterministic`` is True.
        deterministic: TensorFlow: ``tf.config.experimental.enable_op_determinism``
            (slower; some GPU ops then raise instead of running
            non-deterministically); PyTorch:
            ``torch.use_deterministic_algorithms(True)``; JAX: adds
            ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``, which takes
            effect only if JAX has not started its GPU backend yet (the CPU
            is deterministic already). Process-wide; cannot be undone.

    Create a ``MultiWorkerMirroredStrategy`` *before* calling this: seeding
    initializes the TF runtime, after which collective ops can no longer be
    configured ("Collective ops must be configured at program startup").
    :class:`keras_dpn.training.trainer.Trainer` (``seed=``) does it in that order.
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int. Received: seed={seed!r}")
        keras.utils.set_random_seed(seed)
    if deterministic:
        if seed is None:
            raise ValueError(
                "Deterministic mode needs a seed (random ops would differ run to run). "
                f"Received: seed={seed!r}, deterministic={deterministic!r}")
        backend = keras.backend.backend()
        if backend == "tensorflow":
            tf.config.experimental.enable_op_determinism()
        elif backend == "torch":
            import torch
            torch.use_deterministic_algorithms(True)
        elif backend == "jax" and "--xla_gpu_deterministic_ops" not in os.environ.get(
                "XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_gpu_deterministic_ops=true").strip()


def reference_head_init(model, layer_name="heatmaps", stddev=1e-3, seed=None):
    """Re-initializes the heatmap head as the HRNet reference: N(0, 0.001), bias 0.

    Targets are zero almost everywhere; a head that starts near zero skips
    the epochs a Glorot head spends unlearning an O(1) offset. The builders
    already start their heads this way (``head_initializer="reference"``,
    the default); this redraws the head of an existing model, e.g. one built
    with another initializer, with a NumPy ``seed``. Not for pretrained weights.

    Args:
        model: a heatmap model with a conv layer named ``layer_name``.
        layer_name: name of the final 1x1 conv.
        stddev: standard deviation of the kernel.
        seed: NumPy seed of the draw.

    Returns:
        ``model``.
    """
    try:
        head = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"The model has no layer {layer_name!r} to initialize. "
            f"Received: layer_name={layer_name!r}") from None
    rng = np.random.default_rng(seed)
    new = []
    for w in head.get_weights():
        new.append(rng.normal(0.0, stddev, w.shape).astype(w.dtype) if w.ndim > 1
                   else np.zeros_like(w))
    head.set_weights(new)
    return model
