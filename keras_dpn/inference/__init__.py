"""Applications: pose estimation on images and videos, with any model file.

Modules: ``estimator`` (``PoseEstimator``: boxes in, keypoints out, with a Keras
model, a preset or an exported file), ``runtimes`` (TFLite / ONNX Runtime
sessions), ``detectors`` (person boxes), ``tracking`` (ids and smoothing across
frames), ``video`` (``predict_video``), ``visualize`` (skeletons, heatmaps, curves).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.inference.<module>``).
__getattr__ = _lazy_submodules(__name__)
