"""Evaluation: COCO keypoint AP (pycocotools), MPII PCKh, and the prediction loop.

Names are imported on first use, so that ``python -m keras_dpn.evaluation.mpii``
runs cleanly and pycocotools loads only when COCO evaluation is asked for.

>>> from keras_dpn.evaluation import COCOEvaluator, predict_coco, pckh
"""

import importlib

_EXPORTS = {
    "coco": ("METRIC_NAMES", "COCOEvaluator", "load_results", "oks_iou", "oks_nms", "rescore"),
    "mpii": ("PCKhResult", "load_ground_truth", "load_predictions", "pckh", "save_predictions",
             "evaluate_file"),
    "predict": ("NonFinitePredictionError", "check_finite", "codec_for_model", "predict_coco",
                "predict_keypoints"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE) + sorted(_EXPORTS)


def __getattr__(name):
    if name in _WHERE:
        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    if name in _EXPORTS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
