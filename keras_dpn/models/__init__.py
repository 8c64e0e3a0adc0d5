"""Model builders: the DPN family and the HRNet peer, and the registry of their variants.

``MODELS`` maps every registered variant name to its constructor (see
:mod:`keras_dpn.models.registry`); all take the same arguments
(``num_keypoints``, ``input_shape``, ``input_tensor``, ``include_top``,
``weights``, ``head_initializer``, ``name``, ``dtype``).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules
# Importing the family modules registers their variants.
from keras_dpn.models import dpn, hrnet
from keras_dpn.models.dpn import DPN
from keras_dpn.models.registry import MODELS, ModelInfo, get_model, model_info, register_model

# Other modules (``keras_dpn.models.analysis``) on first use.
__getattr__ = _lazy_submodules(__name__)

# Every registered constructor, by name (``keras_dpn.models.DPN4_32``, ...).
globals().update(MODELS)

__all__ = ["DPN", "MODELS", "ModelInfo", "get_model", "model_info", "register_model",
           *MODELS]
