"""Distribution strategies: which devices and workers a run trains on.

* :func:`get_strategy` -- ``"mirrored"`` (all local GPUs, or the CPU),
  ``"multi_worker"`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``) or
  ``"default"`` (no distribution); a ``tf.distribute.Strategy`` on the
  TensorFlow backend, a :class:`KerasDistribution` on JAX and PyTorch.
* :func:`is_chief` -- the worker that writes the run folder.
* :func:`is_multi_worker` -- the strategy under which Keras 3 ``model.fit``
  fails (keras-team/keras#20585), so the Trainer runs its custom loop.

Example:
>>> from keras_dpn.training.strategies import get_strategy, is_chief
>>> strategy = get_strategy("default")
>>> strategy.num_replicas_in_sync, is_chief(strategy)
(1, True)
"""

import contextlib
import json
import os
import sys

import keras
import numpy as np

from keras_dpn.core import optional as _optional

# Imported on first use: the JAX / PyTorch path needs no TensorFlow.
tf = _optional.LazyModule("tensorflow", "TensorFlow training (tf.distribute strategies)")

STRATEGIES = ("mirrored", "multi_worker", "default")


def on_tensorflow():
    """True when Keras runs on the TensorFlow backend (tf.distribute, tf.train checkpoints)."""
    return keras.backend.backend() == "tensorflow"


class KerasDistribution:
    """The strategy of the JAX and PyTorch backends: what the trainer needs of one.

    ``scope()``, ``num_replicas_in_sync`` and ``cluster_resolver``, like a
    ``tf.distribute.Strategy``, over an optional ``keras.distribution``
    (``DataParallel`` on JAX), so recipes treat both alike.

    Args:
        distribution: a ``keras.distribution.Distribution`` or None (one device).
    """

    cluster_resolver = None

    def __init__(self, distribution=None):
        self.distribution = distribution

    @property
    def num_replicas_in_sync(self):
        if self.distribution is None:
            return 1
        return int(np.prod(self.distribution.device_mesh.shape))

    def scope(self):
        return self.distribution.scope() if self.distribution else contextlib.nullcontext()

    def __repr__(self):
        return f"KerasDistribution({self.distribution!r})"


def _keras_strategy(name):
    """:func:`get_strategy` on the JAX and PyTorch backends."""
    backend = keras.backend.backend()
    if name == "multi_worker":
        _optional.require_tensorflow_backend(
            "strategy='multi_worker' (tf.distribute's MultiWorkerMirroredStrategy)",
            hint="On JAX use --strategy mirrored (all local devices).")
    if name == "mirrored" and backend == "jax":
        devices = keras.distribution.list_devices()
        if len(devices) > 1:
            return KerasDistribution(keras.distribution.DataParallel(devices=devices))
    # PyTorch: Keras' torch trainer runs on one device (the GPU when there is one).
    return KerasDistribution(None)


def get_strategy(name="mirrored"):
    """Returns a ``tf.distribute.Strategy`` (TensorFlow backend) by name.

    On the JAX and PyTorch backends it returns a :class:`KerasDistribution`
    instead: ``"mirrored"`` is ``keras.distribution.DataParallel`` over all
    local devices on JAX (one device when there is only one) and one device on
    PyTorch; ``"default"`` is one device; ``"multi_worker"`` needs TensorFlow.

    Args:
        name: ``"mirrored"`` (``MirroredStrategy`` over all local GPUs, or the
            CPU when there are none), ``"multi_worker"``
            (``MultiWorkerMirroredStrategy``; the cluster comes from the
            ``TF_CONFIG`` environment variable) or ``"default"`` (the no-op
            default strategy). A ``tf.distribute.Strategy`` passes through.

    Returns:
        The strategy.

    Raises:
        ValueError: unknown name, or ``TF_CONFIG`` that is not valid JSON or
            names no cluster.

    Call it for ``"multi_worker"`` before any other TensorFlow work (datasets,
    seeding, models): the strategy configures collective ops, which the TF
    runtime accepts only before it starts.
    """
    if isinstance(name, KerasDistribution):
        return name
    if not on_tensorflow():
        if not isinstance(name, str):
            raise ValueError(
                f"On the {keras.backend.backend()} backend `strategy` must be a name "
                f"{STRATEGIES} or a KerasDistribution. Received: strategy={name!r}")
        if name not in STRATEGIES:
            raise ValueError(
                f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
        return _keras_strategy(name)
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        # With no GPU, MirroredStrategy() already falls back to the CPU; naming
        # it keeps the one-replica case explicit in logs.
        return tf.distribute.MirroredStrategy(None if gpus else ["/cpu:0"])
    raw = os.environ.get("TF_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON ({e}). Received: TF_CONFIG={raw!r}")
        if not isinstance(config, dict) or "cluster" not in config or "task" not in config:
            raise ValueError(
                "TF_CONFIG must hold 'cluster' and 'task' entries, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                f'"task": {{"type": "worker", "index": 0}}}}. Received: TF_CONFIG={raw!r}')
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not is_multi_worker(strategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def is_multi_worker(strategy):
    """True for a ``MultiWorkerMirroredStrategy`` (checked without importing TensorFlow)."""
    if isinstance(strategy, KerasDistribution) or "tensorflow" not in sys.modules:
        return False
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
