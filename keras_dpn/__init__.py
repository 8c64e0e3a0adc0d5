"""keras-dpn: the Dilation Pyramid Net for human pose estimation in Keras 3.

>>> import keras_dpn
>>> model = keras_dpn.DPN4_32()
>>> model.output_shape
(None, 64, 48, 17)
"""

__version__ = "0.1.0"

from keras_dpn import keypoints, layers
from keras_dpn.keypoints import COCO_17, MPII_16, KeypointSpec, get_keypoint_spec
from keras_dpn.layers import Bottleneck, DilationPyramidModule
from keras_dpn.models import (DPN, DPN1_32, DPN1_64, DPN2_32, DPN2_64, DPN3_32,
                              DPN3_64, DPN4_32, DPN4_64)
