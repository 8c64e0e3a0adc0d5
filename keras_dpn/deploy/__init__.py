"""Deployment: exported files (SavedModel, TFLite fp32 / fp16 / int8 / QAT, ONNX) and their scores.

Modules: ``export`` (``export_model``), ``export_eval`` (COCO AP of each exported
file), ``calibration`` (int8 calibration crops), ``qat`` (quantization-aware
training, in a child process: tfmot switches tf.keras for the whole process).
Imported on first use by ``keras_dpn``: applications that only predict never
load the exporters.
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.deploy.export``), as in every subpackage.
__getattr__ = _lazy_submodules(__name__)
