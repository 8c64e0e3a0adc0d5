"""keras-dpn: the Dilation Pyramid Net for human pose estimation in Keras 3.

>>> import keras_dpn
>>> model = keras_dpn.DPN4_32()
>>> model.output_shape
(None, 64, 48, 17)

Runs on every Keras 3 backend (``KERAS_BACKEND=tensorflow|jax|torch``).
TensorFlow is needed only by the tf.data pipeline (``build_dataset``), the
SavedModel / TFLite exports and the ``tf.distribute`` training path; without
it ``import keras_dpn`` works and those fail with a one-line error naming the
install command (:mod:`keras_dpn.core.optional`).
"""

from keras_dpn._version import __version__

# The concerns, one subpackage each, top to bottom (imports point down only; the
# layers are checked by lint-imports, see DEVELOPERS.md "Layout"): cli, deploy,
# inference, hub, training, data | evaluation | models, core.
from keras_dpn import core, data, evaluation, hub, inference, models, training

# Models.
from keras_dpn.core.keypoints import COCO_17, MPII_16, KeypointSpec, get_keypoint_spec
from keras_dpn.models.layers import BasicBlock, Bottleneck, DilationPyramidModule
# DPN, MODELS, get_model and every registered variant (DPN1_32 ... DPN2_HRNet).
from keras_dpn.models import *  # noqa: F401,F403
# Plugs the `weights=` loader (tags, files, presets) into the builders.
from keras_dpn.hub import pretrained  # noqa: F401

# Targets and data. The tf.data pipeline (build_dataset) imports TensorFlow on
# first use; PersonCrops (OpenCV + numpy) trains on any backend without it.
from keras_dpn.core import optional as _optional
from keras_dpn.core.codec import HeatmapCodec, flip_back
from keras_dpn.data import AugmentConfig, PersonCrops

# Training and evaluation.
from keras_dpn.training.callbacks import COCOEvaluationCallback, MPIIEvaluationCallback
from keras_dpn.evaluation import COCOEvaluator, predict_coco
from keras_dpn.training.losses import JointsMSE
from keras_dpn.training.metrics import HeatmapPCK
from keras_dpn.training.strategies import get_strategy
from keras_dpn.training.trainer import Trainer

# Deployment: the estimator imports LiteRT / ONNX Runtime only when such a file
# is loaded. keras_dpn.deploy (export, calibration) is imported on first use
# (below): an application that only predicts never loads the exporters.
# deploy/qat.py (tfmot, tf_keras) is never imported here, since importing tfmot
# switches tf.keras for the whole process.
from keras_dpn.inference.estimator import PoseEstimator, boxes_from_detections

# keras_dpn.build_dataset: the data package's lazy name, resolved on first use;
# keras_dpn.deploy and keras_dpn.cli: the packages, imported on first use.
__getattr__, _LAZY = _optional.lazy_exports(
    __name__, {"data": ("build_dataset",), "deploy": (), "cli": ()})

# The public API: what `from keras_dpn import *` gives, and what the
# documentation describes. Submodules stay reachable as keras_dpn.<name>.
__all__ = [
    "__version__",
    # Models (DPN, MODELS, get_model, ... and every registered variant: models.__all__, below).
    "BasicBlock", "Bottleneck", "DilationPyramidModule",
    "KeypointSpec", "COCO_17", "MPII_16", "get_keypoint_spec",
    # Targets and data.
    "HeatmapCodec", "flip_back", "AugmentConfig", "PersonCrops", "build_dataset",
    # Training and evaluation.
    "Trainer", "get_strategy", "JointsMSE", "HeatmapPCK",
    "COCOEvaluationCallback", "MPIIEvaluationCallback", "COCOEvaluator", "predict_coco",
    # Deployment.
    "PoseEstimator", "boxes_from_detections",
]
# A separate statement, not a starred item: the API reference (griffe) reads
# `__all__` statically and expands `+= module.__all__` only.
__all__ += models.__all__
