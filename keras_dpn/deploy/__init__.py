"""Deployment: exported files (SavedModel, TFLite fp32 / fp16 / int8 / QAT, ONNX) and their scores.

Modules: ``export`` (``export_model``), ``export_eval`` (COCO AP of each exported
file), ``calibration`` (int8 calibration crops), ``qat`` (quantization-aware
training, in a child process: tfmot switches tf.keras for the whole process).
Imported on first use by ``keras_dpn``: applications that only predict never
load the exporters.
"""

from keras_dpn.core import optional as _optional

# Each module on first use (``keras_dpn.deploy.export``), as the package root does.
__getattr__, _LAZY = _optional.lazy_exports(__name__, {
    "export": ("export_model",), "export_eval": (), "calibration": (), "qat": ()})
__all__ = _LAZY
