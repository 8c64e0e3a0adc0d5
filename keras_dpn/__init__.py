"""keras-dpn: the Dilation Pyramid Net for human pose estimation in Keras 3.

>>> import keras_dpn
>>> model = keras_dpn.DPN4_32()
>>> model.output_shape
(None, 64, 48, 17)
"""

__version__ = "0.1.0"

# Models.
from keras_dpn import analysis, keypoints, layers, models, weights
from keras_dpn.keypoints import COCO_17, MPII_16, KeypointSpec, get_keypoint_spec
from keras_dpn.layers import BasicBlock, Bottleneck, DilationPyramidModule
from keras_dpn.models import (DPN, DPN1_32, DPN1_64, DPN2_32, DPN2_64, DPN3_32, DPN3_64,
                              DPN4_32, DPN4_64, MODELS, DPN2_HRNet, HRNetW32, get_model)

# Targets and data.
from keras_dpn import codec, data, transforms
from keras_dpn.codec import HeatmapCodec, flip_back
from keras_dpn.data import build_dataset

# Training and evaluation.
from keras_dpn import callbacks, evaluation, losses, metrics, training
from keras_dpn.callbacks import COCOEvaluationCallback, MPIIEvaluationCallback
from keras_dpn.evaluation import COCOEvaluator, predict_coco
from keras_dpn.losses import JointsMSE
from keras_dpn.metrics import HeatmapPCK
from keras_dpn.training import Trainer, get_strategy

# Deployment: inference.py imports LiteRT / ONNX Runtime only when such a file is
# loaded; export.py imports tf2onnx lazily; qat.py (tfmot, tf_keras) is never
# imported here, since importing tfmot switches tf.keras for the whole process.
from keras_dpn import export, inference
from keras_dpn.inference import PoseEstimator, boxes_from_detections
