"""The small shared pieces every concern builds on (the bottom layer; imports nothing above).

Modules: ``keypoints`` (keypoint sets as data: names, flip pairs, skeleton, OKS
sigmas, colours; the keypoint-set JSON format), ``codec`` (``HeatmapCodec``, the one
owner of the target format: encode and decode), ``transforms`` (box to
centre/scale, affine warps), ``io_utils`` (atomic files and folders, checked
paths), ``errors`` (the one-line command-line error), ``optional`` (optional
dependencies and lazy names), ``assets`` (files shipped in the package).
"""

from keras_dpn.core.optional import lazy_submodules as _lazy_submodules

# Each module on first use (``keras_dpn.core.assets``).
__getattr__ = _lazy_submodules(__name__)
