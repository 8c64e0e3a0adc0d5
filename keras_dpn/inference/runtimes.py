"""ONNX Runtime sessions and LiteRT interpreters, opened with errors that name the file.

Shared by the pose backends (:mod:`keras_dpn.inference.estimator`) and the detector
adapter (:mod:`keras_dpn.inference.detectors`). Both runtimes are imported only when a
file of their kind is opened.
"""

import numpy as np


def _first_line(error):
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def onnx_session(path, num_threads=None, what="an ONNX model", argument="model_or_path"):
    """An ``onnxruntime.InferenceSession`` on the CPU, or a ``ValueError`` naming ``path``."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
        raise ValueError(f"Could not load {what}. Received: {argument}={path!r} "
                         f"({_first_line(e)})") from e


def tflite_interpreter(path, num_threads=None, what="a TFLite model", argument="model_or_path"):
    """An allocated LiteRT ``Interpreter``, or a ``ValueError`` naming ``path``."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=path, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"Could not load {what}. Received: {argument}={path!r} "
                         f"({_first_line(e)})") from e
    return interpreter


def quantize(x, details):
    """Float array -> the integer dtype of a LiteRT tensor (its scale and zero point)."""
    dtype = details["dtype"]
    scale, zero = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(y, details):
    """A LiteRT output -> float32 (integer outputs through their scale and zero point)."""
    if details["dtype"] == np.float32 or not details["quantization"][0]:
        return np.asarray(y, np.float32)
    scale, zero = details["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
